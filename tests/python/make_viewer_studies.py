"""Write the three studies the viewer check sends to the daemon, into OUTDIR.

Usage: make_viewer_studies.py OUTDIR

From the bundled model's demo studies (models/phantom-tiny/demo-studies), each in a new study
(deterministic UIDs):
  fundus/image.dcm     the OP colour fundus photograph, unchanged
  us/cine.dcm          the US multi-frame cine (8 frames) with frames 3 and 6 black: the phantom
                       model finds no pubic symphysis there, so omit_empty_frames drops frames
  mr/slice-NN.dcm      the MR volume (8 slices with geometry) with slices 2 and 7 black: no
                       prostate there, so omit_empty_frames drops those slices
"""

import glob
import os
import shutil
import sys

import pydicom
from pydicom.uid import generate_uid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "models", "phantom-tiny", "demo-studies")
PREFIX = "1.2.826.0.1.3680043.10.1426."  # the private root of the test phantoms


def uid(name):
    return generate_uid(prefix=PREFIX, entropy_srcs=["viewer-check", name])


def renew(ds, study, name):
    ds.StudyInstanceUID = uid(f"{study}-study")
    ds.SeriesInstanceUID = uid(f"{study}-series")
    ds.SOPInstanceUID = uid(f"{study}-{name}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def main(out):
    os.makedirs(os.path.join(out, "fundus"), exist_ok=True)
    shutil.copy(os.path.join(DEMO, "fundus", "image.dcm"), os.path.join(out, "fundus", "image.dcm"))

    os.makedirs(os.path.join(out, "us"), exist_ok=True)
    ds = pydicom.dcmread(os.path.join(DEMO, "us", "cine.dcm"))
    frames = ds.pixel_array.copy()
    frames[[2, 5]] = 0
    ds.PixelData = frames.tobytes()
    renew(ds, "us", "cine")
    ds.save_as(os.path.join(out, "us", "cine.dcm"), enforce_file_format=True)

    os.makedirs(os.path.join(out, "mr"), exist_ok=True)
    for path in sorted(glob.glob(os.path.join(DEMO, "mr", "slice-*.dcm"))):
        name = os.path.basename(path)
        ds = pydicom.dcmread(path)
        if name in ("slice-02.dcm", "slice-07.dcm"):
            pixels = ds.pixel_array.copy()
            pixels[:] = 0
            ds.PixelData = pixels.tobytes()
        renew(ds, "mr", name)
        ds.save_as(os.path.join(out, "mr", name), enforce_file_format=True)


if __name__ == "__main__":
    main(sys.argv[1])
