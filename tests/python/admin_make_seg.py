"""Write a BINARY DICOM SEG with highdicom for one single-frame source image, one segment per
square given as Y0,X0,SIDE (the admin SEG tests upload it as a support pair's masks).

Usage: admin_make_seg.py SOURCE.dcm OUT.dcm Y0,X0,SIDE [Y0,X0,SIDE ...]
"""

import sys

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes


def main():
    source, out, squares = sys.argv[1], sys.argv[2], sys.argv[3:]
    src = pydicom.dcmread(source)
    masks = np.zeros((1, src.Rows, src.Columns, len(squares)), dtype=bool)
    for k, spec in enumerate(squares):
        y0, x0, side = (int(v) for v in spec.split(","))
        masks[0, y0 : y0 + side, x0 : x0 + side, k] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="admin test", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    types = [codes.SCT.Liver, codes.SCT.Spleen, codes.SCT.Kidney]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=f"object {k + 1}",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=types[k % len(types)],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for k in range(len(squares))
    ]
    seg = hd.seg.Segmentation(
        source_images=[src],
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="highdicom",
        manufacturer_model_name="admin test",
        software_versions=hd.__version__,
        device_serial_number="1",
    )
    seg.save_as(out)
    print("WROTE", out)


if __name__ == "__main__":
    main()
