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
    assert shape.object_forms(rules, labels, masks, 32) == ["region", None, None, None]
    assert shape.object_forms([], labels, masks, 32) == [None] * 4
    m = np.stack([boxes(8, [(0, 0, 3, 3), (6, 6, 7, 7)])] * 2)
    out = shape.apply(["region", None], m)
    assert (out[0] == boxes(8, [(0, 0, 3, 3)])).all() and (out[1] == m[1]).all()


def test_random_masks_keep_one_of_their_largest_regions():
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = (rng.random((40, 50)) < rng.choice([0.2, 0.4, 0.55])).astype(np.uint8)
        out = shape.keep_largest_region(m)
        assert shape.is_one_region(out) and (out <= m).all()
        rest = m & (1 - out)  # no other region of m is larger
        assert not rest.any() or shape.keep_largest_region(rest).sum() <= out.sum()


C = [".......", ".#####.", ".#.....", ".#....#", ".#.....", ".#####.", "......."]
CLOSED = [".......", ".#####.", ".#####.", ".#####.", ".#####.", ".#####.", "......."]


def test_fill_convex_fills_the_hull_of_the_pixel_centres():
    # the Rust unit test's cases (src/engine/shape_tests.rs), same expected pixels
    assert text(shape.fill_convex(shape.keep_largest_region(mask(C)))) == CLOSED
    assert text(shape.fill_convex(mask(["#....", ".....", ".....", "#...#"]))) == ["#....", "##...", "###..", "#####"]
    for rows in (["....", ".##.", "...."], ["...", ".#.", "..."], ["..", ".."]):
        assert text(shape.fill_convex(mask(rows))) == rows


def brute_in_hull(pts, p):
    """p in a triangle (or on a segment) of points of pts: inside their hull, no hull computed."""
    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    for i, a in enumerate(pts):
        for j in range(i, len(pts)):
            b = pts[j]
            if cross(a, b, p) == 0 and min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) \
                    and min(a[1], b[1]) <= p[1] <= max(a[1], b[1]):
                return True
            for c in pts[j + 1:]:
                d = (cross(a, b, p), cross(b, c, p), cross(c, a, p))
                if cross(a, b, c) != 0 and not (min(d) < 0 < max(d)):
                    return True
    return False


def test_fill_convex_agrees_with_triangles_of_the_pixels_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(60):
        m = (rng.random((rng.integers(1, 8), rng.integers(1, 8))) < rng.choice([0.05, 0.15, 0.3])).astype(np.uint8)
        pts = [(int(c), int(r)) for r, c in zip(*np.nonzero(m))]
        got = shape.fill_convex(m)
        for r in range(m.shape[0]):
            for c in range(m.shape[1]):
                assert bool(got[r, c]) == brute_in_hull(pts, (c, r)), (text(m), r, c)


def test_a_convex_rule_needs_convex_support_masks():
    rules = [{"objects": ["fetal head", "cup"]}, {"form": "convex", "objects": ["Fetal Head", "disc"]}]
    blob = boxes(64, [(10, 10, 40, 40)])
    ell = boxes(64, [(10, 10, 50, 20)]) | boxes(64, [(40, 10, 50, 50)])  # one region, half its hull
    masks = [np.stack([blob, blob, blob]), np.stack([blob, ell, blob])]
    assert shape.object_forms(rules, ["fetal head", "disc", "cup"], masks, 32) == ["convex", "region", "region"]
    out = shape.apply(["convex", "region", None], np.stack([mask(C)] * 3))
    assert text(out[0]) == CLOSED
    assert text(out[1]) == [r[:6] + "." for r in C]
    assert out[2].sum() == 14


def test_the_shipped_bundle_lists_its_one_region_objects():
    lite = Path(__file__).resolve().parents[3] / "models" / "litemedsam-ppg"
    rules = tomllib.loads((lite / "manifest.toml").read_text())["shape"]
    assert rules == shape.SHIPPED
    assert all("vessels" not in r["objects"] for r in rules)
    assert [r.get("form", "region") for r in rules] == ["region", "convex", "ellipse"]


def test_an_ellipse_rule_needs_convex_support_masks_and_wins_over_convex():
    rules = [{"form": "convex", "objects": ["cup", "disc"]}, {"form": "ellipse", "objects": ["Cup", "lesion"]}]
    blob = boxes(64, [(10, 10, 40, 40)])
    ell = boxes(64, [(10, 10, 50, 20)]) | boxes(64, [(40, 10, 50, 50)])  # one region, half its hull
    masks = [np.stack([blob, blob, ell]), np.stack([blob, blob, blob])]
    assert shape.object_forms(rules, ["cup", "disc", "lesion"], masks, 32) == ["ellipse", "convex", "region"]
    y, x = np.mgrid[0:40, 0:40]
    disc = (((x - 20) / 12.0) ** 2 + ((y - 18) / 8.0) ** 2 <= 1).astype(np.uint8)
    spur = disc.copy()
    spur[18, 30:38] = 1
    out = shape.apply(["ellipse", None], np.stack([spur, spur]))
    assert out[0][18, 34:].sum() == 0 and (out[1] == spur).all()
    # no ellipse to trust: the largest region stays
    tiny = np.stack([mask(["....", ".##.", ".##.", "...."])])
    assert (shape.apply(["ellipse"], tiny) == tiny).all()
