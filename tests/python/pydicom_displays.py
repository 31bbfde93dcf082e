#!/usr/bin/env python3
"""Display frames of DICOM files as the Python reference computes them (pydicom decoding,
proxyseg_model.preprocess.to_display), for tests/engine/engine_pixels.rs.

    pydicom_displays.py OUT_DIR FILE...   -> OUT_DIR/<name>.f32 (F x H x W x 3, little-endian)
                                             and one JSON line per file on stdout
"""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for cand in (os.environ.get("PROXYSEG_MODEL_PY"), ROOT / "scripts" / "model", Path("/work/main/scripts/model")):
    if cand and (Path(cand) / "proxyseg_model").is_dir():
        sys.path.insert(0, str(cand))
        break

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.pixels import apply_color_lut  # noqa: E402
from proxyseg_model.phantoms.dicom_io import dataset_displays  # noqa: E402


def displays(ds):
    pi = ds.PhotometricInterpretation
    if pi in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        arr = ds.pixel_array  # pydicom converts YBR to RGB
        nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
        return (arr[None] if nf == 1 else arr).astype(np.float32)
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(ds.pixel_array, ds)
        if rgb.dtype != np.uint8:
            rgb = rgb >> 8
        nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
        return (rgb[None] if nf == 1 else rgb).astype(np.float32)
    return dataset_displays(ds)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for f in sys.argv[2:]:
        ds = pydicom.dcmread(f)
        d = np.ascontiguousarray(displays(ds), dtype="<f4")
        name = Path(f).name + ".f32"
        (out / name).write_bytes(d.tobytes())
        print(json.dumps({"file": Path(f).name, "out": name, "shape": list(d.shape)}), flush=True)


if __name__ == "__main__":
    main()
