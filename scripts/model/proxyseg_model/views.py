"""Resolution views: where the engine looks again at native resolution (the spec the Rust
engine reproduces; `src/engine/views.rs`).

A bundle's manifest lists `[[resolution]]` rules. Each names the objects it applies to and one
strategy:

  roi    a second pass on a square crop around an anchor object found by the first pass.
         Anchor mask bbox (inclusive, native pixels) x0..x1, y0..y1; side = round(max(x1-x0+1,
         y1-y0+1) * scale), clamped to [min_side, min(rows, cols)]; centre c = ((x0+x1+1)/2,
         (y0+y1+1)/2); origin = clamp(round(c - side/2), 0, dim - side) per axis. The support
         pairs are cropped by the same rule around their own anchor masks (so the ROI support
         context is computed once per support-set version, like the first one). The rule's
         objects take the ROI result inside the crop and background outside it. An empty
         anchor in the first pass leaves the first-pass result.
  tiles  a grid of `grid` x `grid` overlapping crops covering the image at higher resolution.
         Per axis of length L: tile t = min(L, ceil(L / grid * (1 + overlap))); origin of tile
         i = round(i * (L - t) / (grid - 1)) (0 when grid = 1). Support pairs give the tile at
         the same grid position, so tile (r, c) has its own support context. The rule's objects
         take the mean of the tiles' logits (each brought to its crop's native size) where
         tiles overlap, then > 0.

Crops are taken from display values (H x W x 3) and masks, then go through the usual
preprocessing (longest side to S, pad); crop logits go through the usual postprocess to the
crop's size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Rule:
    strategy: str                 # "roi" | "tiles"
    objects: list[str]            # labels (case-insensitive) the rule applies to
    anchor: str = ""              # roi: the object whose first-pass mask places the crop
    scale: float = 2.0            # roi: crop side / anchor bbox side
    min_side: int = 64            # roi: smallest crop side, native pixels
    grid: int = 2                 # tiles: grid x grid
    overlap: float = 0.125        # tiles: extra tile length, fraction of L / grid
    note: str = field(default="")

    def to_toml(self) -> dict:
        d = {"strategy": self.strategy, "objects": self.objects}
        if self.strategy == "roi":
            d.update(anchor=self.anchor, scale=self.scale, min_side=self.min_side)
        else:
            d.update(grid=self.grid, overlap=self.overlap)
        if self.note:
            d["note"] = self.note
        return d


Box = tuple[int, int, int]  # (y0, x0, side_or_h) -- crops are (y0, x0, h, w) below


def roi_crop(mask: np.ndarray, rule: Rule) -> tuple[int, int, int, int] | None:
    """Anchor mask H x W -> square crop (y0, x0, h, w), or None if the mask is empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    rows, cols = mask.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    side = int(round(max(x1 - x0 + 1, y1 - y0 + 1) * rule.scale))
    side = max(rule.min_side, min(side, min(rows, cols)))
    side = min(side, rows, cols)

    def origin(lo, hi, length):
        c = (lo + hi + 1) / 2.0
        return int(min(max(round(c - side / 2.0), 0), length - side))
    return origin(y0, y1, rows), origin(x0, x1, cols), side, side


def tile_crops(rows: int, cols: int, rule: Rule) -> list[tuple[int, int, int, int]]:
    """Tiles (y0, x0, h, w) in row-major grid order."""
    def axis(length):
        t = min(length, int(math.ceil(length / rule.grid * (1 + rule.overlap))))
        if rule.grid == 1:
            return [0], t
        return [int(round(i * (length - t) / (rule.grid - 1))) for i in range(rule.grid)], t
    ys, th = axis(rows)
    xs, tw = axis(cols)
    return [(y, x, th, tw) for y in ys for x in xs]


def crop(arr: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, x0, h, w = box
    return arr[y0:y0 + h, x0:x0 + w]


def object_indices(rule: Rule, labels: list[str]) -> list[int]:
    want = {o.lower() for o in rule.objects}
    return [i for i, label in enumerate(labels) if label.lower() in want]
