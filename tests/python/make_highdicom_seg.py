"""Write a SEG with highdicom from the masks of a test manifest (see check_seg.py).

Usage: make_highdicom_seg.py MANIFEST.json OUT.dcm BINARY|FRACTIONAL [omit]

The Rust tests then read OUT.dcm with proxyseg's read_seg and compare with the masks. FRACTIONAL
masks are written as 0.75 inside and 0.25 outside, so thresholding at 0.5 gives the masks back.
"""

import json
import sys

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes


def main():
    manifest, out, seg_type = sys.argv[1], sys.argv[2], sys.argv[3]
    omit = len(sys.argv) > 4 and sys.argv[4] == "omit"
    with open(manifest) as f:
        m = json.load(f)
    keys, nseg, rows, cols = m["keys"], m["segments"], m["rows"], m["cols"]
    masks = np.fromfile(m["masks"], dtype=np.uint8).reshape(len(keys), nseg, rows, cols)
    sources = [pydicom.dcmread(p) for p in m["sources"]]
    by_uid = {s.SOPInstanceUID: s for s in sources}
    # highdicom wants the pixel array in the order of source_images (frames of one multi-frame
    # source, or one frame per single-frame source): the manifest keys are in that order.
    source_images = [by_uid[uid] for uid in dict.fromkeys(k["uid"] for k in keys)]
    array = np.moveaxis(masks, 1, -1)  # (frames, rows, cols, segments)
    if seg_type == "FRACTIONAL":
        array = np.where(array > 0, 0.75, 0.25).astype(np.float32)
        kind = hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        array = array.astype(bool)
        kind = hd.seg.SegmentationTypeValues.BINARY
    algorithm = hd.AlgorithmIdentificationSequence(
        name="highdicom test", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    names = ["Liver", "Spleen", "Kidney"]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=names[i],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=[codes.SCT.Liver, codes.SCT.Spleen, codes.SCT.Kidney][i],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i in range(nseg)
    ]
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=array,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=77,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="highdicom",
        manufacturer_model_name="test",
        software_versions=hd.__version__,
        device_serial_number="1",
        omit_empty_frames=omit,
    )
    seg.save_as(out)
    print("WROTE", out, seg.NumberOfFrames)


if __name__ == "__main__":
    main()
