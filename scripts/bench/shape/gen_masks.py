"""Masks for the shape-rule benchmark (scripts/bench/shape/run): what the engine's [[shape]]
rules see after a prediction, at the sizes the real data sets have. Each is an ellipse with a
bite out of one side (a skull missing its far side), a thin spur, and speckle islands.

    python gen_masks.py DIR   -> DIR/index.txt (name rows cols), DIR/<name>.u8
"""
import sys
from pathlib import Path

import numpy as np

# (name, rows, cols): the model grid, an HC18 frame, a 512 x 512 slice, a Drishti-GS fundus
SIZES = [("grid256", 256, 256), ("hc18_540x800", 540, 800), ("ct512", 512, 512),
         ("drishti_1755x2047", 1755, 2047)]


def mask(rows: int, cols: int, rng) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx, ry, rx = rows * 0.5, cols * 0.5, rows * 0.3, cols * 0.25
    m = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    m &= ~(((y - cy) / ry) ** 2 + ((x - cx - rx * 0.9) / (rx * 0.6)) ** 2 <= 1)  # the bite
    m[int(cy), int(cx):int(cx + rx * 1.5)] = True  # a one-pixel spur
    m |= rng.random((rows, cols)) < 0.002  # speckle islands
    return m.astype(np.uint8)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for name, rows, cols in SIZES:
        mask(rows, cols, rng).tofile(out / f"{name}.u8")
        lines.append(f"{name} {rows} {cols}")
    (out / "index.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
