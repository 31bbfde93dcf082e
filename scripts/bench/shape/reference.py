"""The Python reference's side of the shape-rule benchmark (scripts/bench/shape/run): times
proxyseg_model.shape.keep_largest_region, then fill_convex and ellipse.fill_ellipse on the same
masks as the Rust example, and prints the same `name largest_ms convex_ms ellipse_ms convex_area
ellipse_area` lines.

    python reference.py DIR [REPEATS]
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "model"))
from proxyseg_model import ellipse, shape  # noqa: E402


def median_ms(m, repeats, f):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = f(m.copy())
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2], out


def main(d: Path, repeats: int) -> None:
    for line in (d / "index.txt").read_text().split("\n"):
        if not line.strip():
            continue
        name, rows, cols = line.split()
        m = np.fromfile(d / f"{name}.u8", dtype=np.uint8).reshape(int(rows), int(cols))
        largest_ms, region = median_ms(m, repeats, shape.keep_largest_region)
        convex_ms, filled = median_ms(region, repeats, shape.fill_convex)
        ellipse_ms, e = median_ms(region, repeats, ellipse.fill_ellipse)
        e = region if e is None else e
        print(f"{name} {largest_ms:.3f} {convex_ms:.3f} {ellipse_ms:.3f} {int(filled.sum())} {int(e.sum())}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5)
