"""Inputs for scripts/bench/decode/run: multi-frame objects large enough that holding every
frame shows in the peak RSS. Usage: gen.py OUT_DIR FRAMES."""

import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid


def dataset(rows, cols, frames, bits, syntax):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US Multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def cine(rows, cols, frames, bits, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    dtype = np.uint8 if bits == 8 else np.uint16
    top = 255 if bits == 8 else 4095
    out = np.empty((frames, rows, cols), dtype)
    for f in range(frames):
        blob = ((x - cols / 2 - 40 * np.sin(f / 9)) ** 2 + (y - rows / 2) ** 2) < (rows / 5) ** 2
        noise = rng.integers(0, top // 4, (rows, cols))
        out[f] = np.clip(noise + blob * (top // 2), 0, top).astype(dtype)
    return out


def main():
    out, frames = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, bits, syntax in [
        ("native8", 8, ExplicitVRLittleEndian),
        ("native16", 16, ExplicitVRLittleEndian),
        ("rle8", 8, RLELossless),
    ]:
        px = cine(512, 512, frames, bits)
        ds = dataset(512, 512, frames, bits, syntax)
        if syntax == RLELossless:
            ds.compress(RLELossless, px, encoding_plugin="pydicom")
        else:
            ds.PixelData = px.tobytes()
        ds.save_as(out / f"{name}.dcm", enforce_file_format=True)
        print(out / f"{name}.dcm")


if __name__ == "__main__":
    main()
