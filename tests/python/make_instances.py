"""Writes N distinct CT instances (copies of pydicom's CT_small with fresh UIDs) into OUTDIR.

Usage: make_instances.py OUTDIR N [STUDIES]
"""
import os
import sys

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def main(outdir: str, n: int, studies: int = 1) -> None:
    os.makedirs(outdir, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    for i in range(n):
        ds = base.copy()
        s = i % studies
        ds.StudyInstanceUID = study_uids[s]
        ds.SeriesInstanceUID = series_uids[s]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.save_as(os.path.join(outdir, f"ct{i:05d}.dcm"), enforce_file_format=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
