"""Shape rules (`[[shape]]` in a manifest): objects that are one connected region.

The reference of the Rust engine's `src/engine/shape.rs`, step for step: a rule applies to an
object of a support set when its label is listed (case-insensitive) and every non-empty
support mask of the object, on the model grid (`prepare_mask`), is one 8-connected region; at
least one must be non-empty. The prediction of such an object keeps its largest region (the
first in raster order on a tie); holes are left as they are. Connected components are found
over horizontal runs with union-find, the root being the component's first run in raster
order, as in Rust.
"""
from __future__ import annotations

import numpy as np

from .preprocess import prepare_mask

# The shipped real bundle's rule (export.py writes it): anatomy that is one connected region.
# On the validation cases (evaluation.md, no_shape vs ppg) it took PSFHS's pubic symphysis from
# 85.2 to 87.0; vessels are not listed (a tree, often in pieces at the image's resolution).
SHIPPED = [{"objects": ["optic disc", "optic cup", "fetal head", "pubic symphysis"],
            "note": "one connected region each: the prediction keeps its largest region when the set's "
                    "own masks are one region (src/engine/shape.rs)"}]


def _runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of every run of non-zero pixels."""
    out = []
    m = mask != 0
    for r in range(m.shape[0]):
        row = np.concatenate(([False], m[r], [False])).astype(np.int8)
        d = np.diff(row)
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1
        out.extend((r, int(s), int(e)) for s, e in zip(starts, ends))
    return out


def _components(mask: np.ndarray) -> tuple[list, list[int]]:
    """Runs of the 8-connected non-zero regions and the root run of each (union-find, smallest
    index as root)."""
    runs = _runs(mask)
    parent = list(range(len(runs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reach = 1  # 8-connected: runs above that reach one column past the ends touch
    by_row: dict[int, list[int]] = {}
    for i, (r, _, _) in enumerate(runs):
        by_row.setdefault(r, []).append(i)
    for r, here in by_row.items():
        above = by_row.get(r - 1, [])
        j = 0
        for i in here:
            _, s, e = runs[i]
            while j < len(above) and runs[above[j]][2] + reach < s:
                j += 1
            k = j
            while k < len(above) and runs[above[k]][1] <= e + reach:
                a, b = find(i), find(above[k])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
    return runs, [find(i) for i in range(len(runs))]


def is_one_region(mask: np.ndarray) -> bool:
    """One 8-connected region (False when empty)."""
    _, roots = _components(mask)
    return bool(roots) and len(set(roots)) == 1


def keep_largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a binary mask (uint8 0/1)."""
    out = (np.asarray(mask) != 0).astype(np.uint8)
    runs, roots = _components(out)
    if not runs:
        return out
    size: dict[int, int] = {}
    for i, (_, s, e) in enumerate(runs):
        size[roots[i]] = size.get(roots[i], 0) + e - s + 1
    best = min(size, key=lambda r: (-size[r], r))
    for i, (r, s, e) in enumerate(runs):
        if roots[i] != best:
            out[r, s:e + 1] = 0
    return out


def region_objects(rules: list[dict], labels: list[str], masks: list[np.ndarray], S: int) -> list[bool]:
    """Per object: does a rule apply? `rules`: the manifest's [[shape]] tables; `masks`: one
    K x H x W array per support pair."""
    listed = {o.lower() for r in rules for o in r["objects"]}
    out = []
    for k, label in enumerate(labels):
        if label.lower() not in listed:
            out.append(False)
            continue
        seen, ok = False, True
        for m in masks:
            grid = (prepare_mask(m[k], S) > 0.5).astype(np.uint8)
            if not grid.any():
                continue
            if not is_one_region(grid):
                ok = False
                break
            seen = True
        out.append(ok and seen)
    return out


def apply(one_region: list[bool], masks: np.ndarray) -> np.ndarray:
    """K x H x W masks with the rule applied to the objects marked in `one_region`."""
    out = np.array(masks, dtype=np.uint8, copy=True)
    for k, s in enumerate(one_region):
        if s:
            out[k] = keep_largest_region(out[k])
    return out
