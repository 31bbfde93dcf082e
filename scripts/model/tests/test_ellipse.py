"""ellipse.py, the reference of src/engine/ellipse.rs: the same cases as its Rust unit tests."""
import math

import numpy as np

from proxyseg_model import ellipse, shape


def mask(rows):
    return np.array([[c == "#" for c in r] for r in rows], np.uint8)


def text(m):
    return ["".join("#" if v else "." for v in r) for r in m]


def drawn(rows, cols, cy, cx, a, b, angle):
    """Pixels whose centre lies inside the ellipse (semi-axes a, b; angle in radians)."""
    y, x = np.mgrid[0:rows, 0:cols].astype(float)
    u = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
    v = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
    return ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.uint8)


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


BLOB = ["............", "....####....", "..#######...", ".#########..", ".##########.", ".#########..",
        "..#######...", "...####.....", "............"]
# Rust's unit test expects the same pixels (src/engine/ellipse.rs)
BLOB_ELLIPSE = ["............", "............", "...######...", "..########..", ".#########..", ".#########..",
                "..#######...", "............", "............"]


def test_the_fit_is_the_same_in_both_languages():
    assert text(ellipse.fill_ellipse(mask(BLOB))) == BLOB_ELLIPSE


def test_a_drawn_ellipse_comes_back():
    for cy, cx, a, b, angle in ((40.3, 52.6, 30, 14, 0.5), (60, 60, 45, 44, 0.0), (35.5, 70.2, 50, 9, 2.0)):
        e = drawn(120, 140, cy, cx, a, b, angle)
        got = ellipse.fill_ellipse(e)
        # the boundary pixels' centres lie up to a pixel inside the drawn outline
        assert dice(got, e) > 0.96, (cy, cx, a, b, angle, dice(got, e))
        assert (got <= shape.fill_convex(e)).all() or dice(got, e) > 0.99


def test_a_wavy_outline_is_smoothed_to_its_ellipse():
    y, x = np.mgrid[0:100, 0:100].astype(float)
    u, v = (x - 50.4) * math.cos(0.3) + (y - 49.7) * math.sin(0.3), -(x - 50.4) * math.sin(0.3) + (y - 49.7) * math.cos(0.3)
    theta = np.arctan2(v / 20, u / 30)
    wavy = (np.hypot(u / 30, v / 20) <= 1 + 0.12 * np.sin(6 * theta)).astype(np.uint8)
    e = drawn(100, 100, 49.7, 50.4, 30, 20, 0.3)
    got = ellipse.fill_ellipse(wavy)
    assert dice(got, e) > dice(wavy, e) + 0.02 and dice(got, e) > 0.96, (dice(got, e), dice(wavy, e))


def test_no_trusted_ellipse_gives_none():
    assert ellipse.fill_ellipse(mask(["....", ".##.", ".##.", "...."])) is None  # 4 boundary points
    line = np.zeros((20, 20), np.uint8)
    line[10, 2:18] = 1  # collinear points: no conic
    assert ellipse.fill_ellipse(line) is None
    ring = drawn(80, 80, 40, 40, 30, 30, 0) & (1 - drawn(80, 80, 40, 40, 26, 26, 0))
    got = ellipse.fill_ellipse(ring)  # an ellipse through both rims: area far from the ring's
    assert got is None or 0.5 * ring.sum() <= got.sum() <= 2 * ring.sum()
    assert ellipse.fill_ellipse(np.zeros((5, 5), np.uint8)) is None


def test_the_image_border_is_not_an_edge():
    e = drawn(60, 80, 30, -5, 30, 20, 0)  # cut by the left border
    pts = ellipse.boundary_points(e)
    assert pts and all(x > 0 for x, _ in pts)
    got = ellipse.fill_ellipse(e)
    assert got is not None and dice(got, e) > 0.95


def test_a_conic_that_is_not_finite_fills_nothing():
    for bad in (float("nan"), float("inf")):
        assert ellipse.fill((1.0, 0.0, 1.0, 0.0, 0.0, bad), (5, 5), 8, 10, 10).sum() == 0
    # a circle of radius 4 px (the Rust test's case)
    assert ellipse.fill((1.0, 0.0, 1.0, 0.0, 0.0, -0.25), (5, 5), 8, 10, 10).sum() == 49
