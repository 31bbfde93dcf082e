"""Time highdicom encoding the benchmark volume's SEG (see gen_volume.py).

Usage: highdicom_encode.py OUTDIR [omit]

Prints `key value` lines: build_s (hd.seg.Segmentation(...), which packs the bits and builds the
functional groups), write_s (save_as), frames, pixel_bytes. Writes OUTDIR/highdicom.dcm.
"""

import glob
import os
import sys
import time

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes


def main():
    out = sys.argv[1]
    omit = len(sys.argv) > 2 and sys.argv[2] == "omit"
    files = sorted(glob.glob(os.path.join(out, "src", "*.dcm")))
    sources = [pydicom.dcmread(f) for f in files]
    n = len(sources)
    masks = np.fromfile(os.path.join(out, "masks.bin"), dtype=np.uint8).reshape(n, 3, 512, 512)
    array = np.moveaxis(masks, 1, -1).astype(bool)  # (slices, rows, cols, segments)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="bench", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, (label, prop) in enumerate(
            [("Liver", codes.SCT.Liver), ("Spleen", codes.SCT.Spleen), ("Kidney", codes.SCT.Kidney)]
        )
    ]
    t0 = time.perf_counter()
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=77,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="highdicom",
        manufacturer_model_name="bench",
        software_versions=hd.__version__,
        device_serial_number="1",
        omit_empty_frames=omit,
    )
    t1 = time.perf_counter()
    path = os.path.join(out, "highdicom.dcm")
    seg.save_as(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    t2 = time.perf_counter()
    print("build_s", t1 - t0)
    print("write_s", t2 - t1)
    print("frames", int(seg.NumberOfFrames))
    print("pixel_bytes", len(seg.PixelData))
    print("file_bytes", os.path.getsize(path))


if __name__ == "__main__":
    main()
