#!/usr/bin/env python3
"""Generates the synthetic ingest load and splits it into K shards.

Usage: gen.py OUT_DIR N_SMALL N_LARGE K [LARGE_FRAMES]

- N_SMALL CT Image Storage instances, 512x512x16 bit (0.5 MiB of pixels each), spread over a
  few series of one study per 100 instances.
- N_LARGE Multi-frame Grayscale Word Secondary Capture instances of LARGE_FRAMES (default 100)
  frames of 512x512x16 bit (50 MiB each).
- Explicit VR Little Endian, Part 10 files. Shard i gets every K-th file (large ones spread
  over the shards first), written as OUT_DIR/shard<i>.list (one path per line).
Prints a JSON summary (files, bytes) on stdout.
"""
import json
import os
import sys

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
MF_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; generate_uid adds a random suffix


def base(sop_class, study, series, number, patient):
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(prefix=ROOT)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = f"Bench^{patient}"
    ds.PatientID = f"BENCH{patient:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"ACC{patient:04d}"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows = 512
    ds.Columns = 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def save(ds, path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def main():
    out, n_small, n_large, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    frames = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1)
    # One 512x512 slice of noise; every instance gets a different offset of it.
    noise = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16)
    small, large = [], []
    study = series = None
    for i in range(n_small):
        if i % 100 == 0:
            study = generate_uid(prefix=ROOT)
        if i % 50 == 0:
            series = generate_uid(prefix=ROOT)
        ds = base(CT, study, series, i % 50 + 1, i // 100)
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = ((noise + i) & 0x0FFF).astype("<u2").tobytes()
        p = os.path.join(out, f"ct{i:05d}.dcm")
        save(ds, p)
        small.append(p)
    for j in range(n_large):
        study = generate_uid(prefix=ROOT)
        ds = base(MF_WORD_SC, study, generate_uid(prefix=ROOT), 1, 9000 + j)
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.NumberOfFrames = frames
        vol = np.empty((frames, 512, 512), dtype="<u2")
        for f in range(frames):
            vol[f] = (noise + f + 7 * j) & 0x0FFF
        ds.PixelData = vol.tobytes()
        p = os.path.join(out, f"mf{j:03d}.dcm")
        save(ds, p)
        large.append(p)
    shards = [[] for _ in range(k)]
    for idx, p in enumerate(large):
        shards[idx % k].append(p)
    for idx, p in enumerate(small):
        shards[(idx + len(large)) % k].append(p)
    for s, files in enumerate(shards):
        with open(os.path.join(out, f"shard{s}.list"), "w") as f:
            f.write("".join(x + "\n" for x in files))
    files = small + large
    print(json.dumps({"files": len(files), "bytes": sum(os.path.getsize(p) for p in files),
                      "small": len(small), "large": len(large)}))


if __name__ == "__main__":
    main()
