"""The ellipse of a region (`[[shape]] form = "ellipse"`): a least-squares ellipse through the
region's boundary pixels, filled. The reference of the Rust engine's `src/engine/ellipse.rs`,
operation for operation, so both give the same pixels.

Fit: Fitzgibbon, Pilu and Fisher's direct least-squares ellipse, in Halir and Flusser's
numerically stable form (the 6 x 6 generalised eigenproblem reduced to a 3 x 3 one).
- Points: the region's boundary pixels (a 4-neighbour outside the region or the image), less
  those on the image's own border (a cut, not the object's edge); (column, row) relative to the
  integer centre of their bounding box, scaled by a power of two >= their largest |coordinate|.
- The moment sums are exact integers; the power-of-two scale is exact in floating point; the
  3 x 3 solve (Cramer), the eigenvalues (the characteristic cubic) and the eigenvector (the
  largest cross product of two rows of M - lambda I) are a fixed sequence of double operations.
  The ellipse is the eigenvector with 4ac - b^2 > 0 (the smallest such eigenvalue on a tie).
- Fill: per row, the span between the roots of the conic in x (ceil of the smaller, floor of
  the larger, in pixel units).
fill_ellipse returns None when there is no ellipse to trust: fewer than 6 points, a singular
system, no eigenvector with 4ac - b^2 > 0 (or one with a coefficient that is not finite), or a
filled area outside [1/2, 2] x the region's.
"""
from __future__ import annotations

import math

import numpy as np

MIN_POINTS = 6
AREA_RANGE = (0.5, 2.0)


def boundary_points(mask: np.ndarray) -> list[tuple[int, int]]:
    """(column, row) of the region's boundary pixels in raster order, less the image border."""
    m = np.asarray(mask) != 0
    rows, cols = m.shape
    p = np.pad(m, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    b = m & ~inner
    b[0, :] = b[-1, :] = False
    b[:, 0] = b[:, -1] = False
    ys, xs = np.nonzero(b)
    return [(int(x), int(y)) for y, x in zip(ys, xs)]


def _solve3(a, b):
    """x with a x = b for a 3 x 3 `a` (rows) and 3 right-hand sides `b` (3 x 3, columns are the
    right-hand sides), by Cramer's rule; None when det(a) is 0."""
    det = (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
           - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
           + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))
    if det == 0.0 or not math.isfinite(det):
        return None
    # the adjugate's rows
    inv = [[(a[1][1] * a[2][2] - a[1][2] * a[2][1]) / det, (a[0][2] * a[2][1] - a[0][1] * a[2][2]) / det,
            (a[0][1] * a[1][2] - a[0][2] * a[1][1]) / det],
           [(a[1][2] * a[2][0] - a[1][0] * a[2][2]) / det, (a[0][0] * a[2][2] - a[0][2] * a[2][0]) / det,
            (a[0][2] * a[1][0] - a[0][0] * a[1][2]) / det],
           [(a[1][0] * a[2][1] - a[1][1] * a[2][0]) / det, (a[0][1] * a[2][0] - a[0][0] * a[2][1]) / det,
            (a[0][0] * a[1][1] - a[0][1] * a[1][0]) / det]]
    return _mul(inv, b)


def _mul(a, b):
    return [[a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j] for j in range(3)] for i in range(3)]


def _cubic_roots(c2: float, c1: float, c0: float) -> list[float]:
    """Real roots of t^3 + c2 t^2 + c1 t + c0, ascending (a double root once or twice)."""
    p = c1 - c2 * c2 / 3.0
    q = 2.0 * c2 * c2 * c2 / 27.0 - c2 * c1 / 3.0 + c0
    shift = -c2 / 3.0
    if p < 0.0:
        r = math.sqrt(-p / 3.0)
        arg = -q / (2.0 * r * r * r) if r > 0.0 else 0.0
        if -1.0 <= arg <= 1.0:
            phi = math.acos(arg)
            roots = [2.0 * r * math.cos((phi - 2.0 * math.pi * k) / 3.0) + shift for k in range(3)]
            return sorted(roots)
    # one real root (Cardano)
    d = q * q / 4.0 + p * p * p / 27.0
    sd = math.sqrt(d) if d > 0.0 else 0.0
    u, v = -q / 2.0 + sd, -q / 2.0 - sd
    return [math.copysign(abs(u) ** (1.0 / 3.0), u) + math.copysign(abs(v) ** (1.0 / 3.0), v) + shift]


def _eigenvector(m, lam: float):
    """A null vector of m - lam I: the largest cross product of two of its rows."""
    a = [[m[i][j] - (lam if i == j else 0.0) for j in range(3)] for i in range(3)]
    best, norm = None, 0.0
    for i, j in ((0, 1), (0, 2), (1, 2)):
        r, s = a[i], a[j]
        v = [r[1] * s[2] - r[2] * s[1], r[2] * s[0] - r[0] * s[2], r[0] * s[1] - r[1] * s[0]]
        n = v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
        if n > norm:
            best, norm = v, n
    return best


def fit(points: list[tuple[int, int]]):
    """The conic (A, B, C, D, E, F) in scaled coordinates, its centre (cx, cy) and scale s
    (x = (column - cx) / s, y = (row - cy) / s), or None (see the module's docstring)."""
    if len(points) < MIN_POINTS:
        return None
    xs0 = [p[0] for p in points]
    ys0 = [p[1] for p in points]
    cx, cy = (min(xs0) + max(xs0)) // 2, (min(ys0) + max(ys0)) // 2
    ext = max(max(abs(x - cx) for x in xs0), max(abs(y - cy) for y in ys0), 1)
    s = 1
    while s < ext:
        s *= 2
    # exact sums of x^i y^j, i + j <= 4
    sums = {}
    for x0, y0 in points:
        x, y = x0 - cx, y0 - cy
        for i in range(5):
            for j in range(5 - i):
                sums[(i, j)] = sums.get((i, j), 0) + x ** i * y ** j
    f = {k: float(v) / float(s) ** (k[0] + k[1]) for k, v in sums.items()}
    # D1 = [x^2, xy, y^2], D2 = [x, y, 1]
    e1 = [(2, 0), (1, 1), (0, 2)]
    e2 = [(1, 0), (0, 1), (0, 0)]
    S1 = [[f[(a[0] + b[0], a[1] + b[1])] for b in e1] for a in e1]
    S2 = [[f[(a[0] + b[0], a[1] + b[1])] for b in e2] for a in e1]
    S3 = [[f[(a[0] + b[0], a[1] + b[1])] for b in e2] for a in e2]
    S2t = [[S2[j][i] for j in range(3)] for i in range(3)]
    T = _solve3(S3, S2t)
    if T is None:
        return None
    T = [[-v for v in row] for row in T]
    ST = _mul(S2, T)
    M = [[S1[i][j] + ST[i][j] for j in range(3)] for i in range(3)]
    Mr = [[M[2][j] / 2.0 for j in range(3)], [-M[1][j] for j in range(3)], [M[0][j] / 2.0 for j in range(3)]]
    tr = Mr[0][0] + Mr[1][1] + Mr[2][2]
    c1 = (Mr[0][0] * Mr[1][1] - Mr[0][1] * Mr[1][0]) + (Mr[0][0] * Mr[2][2] - Mr[0][2] * Mr[2][0]) \
        + (Mr[1][1] * Mr[2][2] - Mr[1][2] * Mr[2][1])
    det = (Mr[0][0] * (Mr[1][1] * Mr[2][2] - Mr[1][2] * Mr[2][1])
           - Mr[0][1] * (Mr[1][0] * Mr[2][2] - Mr[1][2] * Mr[2][0])
           + Mr[0][2] * (Mr[1][0] * Mr[2][1] - Mr[1][1] * Mr[2][0]))
    for lam in _cubic_roots(-tr, c1, -det):
        v = _eigenvector(Mr, lam)
        if v is None or not 4.0 * v[0] * v[2] - v[1] * v[1] > 0.0:  # a NaN fails it too
            continue
        rest = [T[i][0] * v[0] + T[i][1] * v[1] + T[i][2] * v[2] for i in range(3)]
        conic = (v[0], v[1], v[2], rest[0], rest[1], rest[2])
        if not all(math.isfinite(c) for c in conic):
            return None
        return conic, (cx, cy), s
    return None


def fill(conic, centre, s: int, rows: int, cols: int) -> np.ndarray:
    """The pixels whose centres are inside or on the conic (an ellipse), row by row."""
    A, B, C, D, E, F = conic
    cx, cy = centre
    out = np.zeros((rows, cols), np.uint8)
    for r in range(rows):
        y = float(r - cy) / float(s)
        b = B * y + D
        c = (C * y + E) * y + F
        disc = b * b - 4.0 * A * c
        if not (disc >= 0.0 and math.isfinite(disc)):
            continue
        root = math.sqrt(disc)
        x1, x2 = (-b - root) / (2.0 * A), (-b + root) / (2.0 * A)
        lo, hi = min(x1, x2) * s + cx, max(x1, x2) * s + cx
        a, z = max(math.ceil(lo), 0), min(math.floor(hi), cols - 1)
        if a <= z:
            out[r, a:z + 1] = 1
    return out


def fill_ellipse(region: np.ndarray) -> np.ndarray | None:
    """The filled least-squares ellipse of a region (uint8 0/1), or None (module docstring)."""
    region = np.asarray(region) != 0
    got = fit(boundary_points(region))
    if got is None:
        return None
    out = fill(*got, *region.shape)
    area, filled = int(region.sum()), int(out.sum())
    if not AREA_RANGE[0] * area <= filled <= AREA_RANGE[1] * area:
        return None
    return out
