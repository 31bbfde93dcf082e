"""shape.py, the reference of src/engine/shape.rs: the same cases as its Rust unit tests."""
import tomllib
from pathlib import Path

import numpy as np

from proxyseg_model import shape


def mask(rows):
    return np.array([[c == "#" for c in r] for r in rows], np.uint8)


def text(m):
    return ["".join("#" if v else "." for v in r) for r in m]


def test_one_region_means_one_eight_connected_region():
    assert shape.is_one_region(mask([".....", ".###.", ".###.", "....."]))
    assert shape.is_one_region(mask(["#...", ".#..", "..#.", "...#"]))
    assert not shape.is_one_region(mask(["##..", "....", "..##"]))
    assert shape.is_one_region(mask(["#####", "#...#", "#####"]))  # a ring: holes are left alone
    assert not shape.is_one_region(mask(["...", "..."]))


def test_keep_largest_region_drops_the_other_regions_only():
    m = shape.keep_largest_region(mask(["#.......", "..#####.", "..#..##.", "..#####.", "........", "......##"]))
    assert text(m) == ["........", "..#####.", "..#..##.", "..#####.", "........", "........"]
    assert text(shape.keep_largest_region(mask(["##...", ".....", "...##"]))) == ["##...", ".....", "....."]
    assert not shape.keep_largest_region(mask(["...", "..."])).any()


def boxes(size, bs):
    m = np.zeros((size, size), np.uint8)
    for r0, c0, r1, c1 in bs:
        m[r0:r1 + 1, c0:c1 + 1] = 1
    return m


def test_a_rule_applies_only_to_listed_objects_whose_support_masks_are_one_region():
    rules = [{"objects": ["Optic Disc", "lesion", "cup"]}]
    blob, two, empty = boxes(64, [(10, 10, 30, 30)]), boxes(64, [(5, 5, 15, 15), (40, 40, 50, 50)]), boxes(64, [])
    masks = [np.stack([blob, blob, blob, empty]), np.stack([blob, two, blob, empty]),
             np.stack([empty, blob, blob, empty])]
    labels = ["optic disc", "lesion", "vessels", "cup"]
    assert shape.region_objects(rules, labels, masks, 32) == [True, False, False, False]
    assert shape.region_objects([], labels, masks, 32) == [False] * 4
    m = np.stack([boxes(8, [(0, 0, 3, 3), (6, 6, 7, 7)])] * 2)
    out = shape.apply([True, False], m)
    assert (out[0] == boxes(8, [(0, 0, 3, 3)])).all() and (out[1] == m[1]).all()


def test_random_masks_keep_one_of_their_largest_regions():
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = (rng.random((40, 50)) < rng.choice([0.2, 0.4, 0.55])).astype(np.uint8)
        out = shape.keep_largest_region(m)
        assert shape.is_one_region(out) and (out <= m).all()
        rest = m & (1 - out)  # no other region of m is larger
        assert not rest.any() or shape.keep_largest_region(rest).sum() <= out.sum()


def test_the_shipped_bundle_lists_its_one_region_objects():
    lite = Path(__file__).resolve().parents[3] / "models" / "litemedsam-ppg"
    rules = tomllib.loads((lite / "manifest.toml").read_text())["shape"]
    assert rules == shape.SHIPPED
    assert "vessels" not in rules[0]["objects"]
