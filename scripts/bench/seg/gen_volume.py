"""Generate the benchmark input: a synthetic 512x512xN CT series (headers only, no pixel data:
neither SEG writer reads source pixels) and 3 segment masks, in OUTDIR.

Usage: gen_volume.py OUTDIR [SLICES]

Writes OUTDIR/src/slice_NNNN.dcm and OUTDIR/masks.bin (uint8, shape (slices, 3, 512, 512),
one byte per pixel, 0/1): three ellipsoids of different sizes, so some slices are empty for
some segments. Both proxyseg and highdicom encode exactly these masks.
"""

import os
import sys

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.10.1426.9."


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    rows = cols = 512
    os.makedirs(os.path.join(out, "src"), exist_ok=True)
    study = generate_uid(ROOT, ["bench-study"])
    series = generate_uid(ROOT, ["bench-series"])
    frame_of_ref = generate_uid(ROOT, ["bench-for"])
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = generate_uid(ROOT, [f"bench-{i}"])
        ds.PatientName = "Bench^Volume"
        ds.PatientID = "BENCH"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "BENCH"
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-200.0, -200.0, -300.0 + 1.25 * i]
        ds.PixelSpacing = [0.78125, 0.78125]
        ds.SliceThickness = 1.25
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(os.path.join(out, "src", f"slice_{i:04d}.dcm"), enforce_file_format=True)

    z, y, x = np.ogrid[0:n, 0:rows, 0:cols]
    masks = np.zeros((n, 3, rows, cols), np.uint8)
    for s, (cz, cy, cx, rz, ry, rx) in enumerate([
        (n * 0.5, 256, 200, n * 0.35, 150, 120),
        (n * 0.4, 300, 350, n * 0.15, 60, 70),
        (n * 0.7, 200, 300, n * 0.1, 40, 50),
    ]):
        inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        masks[:, s] = inside
    masks.tofile(os.path.join(out, "masks.bin"))
    print(f"wrote {n} slices and masks.bin ({masks.nbytes} bytes) in {out}")


if __name__ == "__main__":
    main()
