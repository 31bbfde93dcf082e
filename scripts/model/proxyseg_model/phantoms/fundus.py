"""Colour fundus photograph phantom: RGB, objects [optic disc, optic cup, vessels].

Circular field of view on black; orange-red retina with random colour, vignetting and an
illumination gradient; optic disc (bright yellowish ellipse, left or right) with a brighter
cup inside it (offset); a branching vessel tree from the disc with widths falling from ~5 to
~1.5 px; fovea, exudates and haemorrhages as distractors; blur and sensor noise.
"""
from __future__ import annotations

import numpy as np

from .common import blur, ellipse_field, grid, rng_for, segment_distance, smooth_noise

ROWS, COLS = 288, 320


def _vessel_tree(rng, cy, cx, rd, rows, cols, fov):
    """Random-walk branching tree; returns list of (p0, p1, width)."""
    segs = []
    side = 1 if cx < cols / 2 else -1  # vessels head towards the macula side (away from edge)
    stack = []
    for base in (-1.1, -0.55, 0.55, 1.1):
        ang = (0.0 if side > 0 else np.pi) + base + rng.normal(0, 0.15)
        ang_dir = np.array([np.sin(ang), np.cos(ang)])
        start = np.array([cy, cx]) + ang_dir * rd * 0.3
        stack.append((start, ang, rng.uniform(4.2, 5.6), 0))
    while stack:
        p, ang, w, depth = stack.pop()
        steps = int(rng.integers(10, 22))
        for _ in range(steps):
            ang += rng.normal(0, 0.18)
            step = rng.uniform(6, 10)
            q = p + step * np.array([np.sin(ang), np.cos(ang)])
            segs.append((p.copy(), q.copy(), w))
            p = q
            w = max(1.4, w * rng.uniform(0.965, 0.99))
            if not fov(p[0], p[1]):
                break
            if depth < 3 and rng.random() < 0.12:
                b_ang = ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
                stack.append((p.copy(), b_ang, max(1.4, w * rng.uniform(0.6, 0.8)), depth + 1))
                w = max(1.4, w * 0.85)
    return segs


def generate(seed: int, rows: int = ROWS, cols: int = COLS):
    """
    Returns dict: pixels uint8 [H,W,3] RGB; masks uint8 [1,3,H,W] (disc, cup, vessels);
    photometric "RGB"; window None.
    """
    rng = rng_for("fundus", seed)
    yy, xx = grid(rows, cols)
    fcy, fcx = rows / 2 + rng.normal(0, 3), cols / 2 + rng.normal(0, 3)
    frad = min(rows, cols) * rng.uniform(0.46, 0.5)
    fov_r = np.hypot(yy - fcy, xx - fcx) / frad
    fov = fov_r < 1.0

    def in_fov(y, x):
        return np.hypot(y - fcy, x - fcx) < frad * 0.97

    # retina background colour, vignetting and gradient
    base = np.array([rng.uniform(170, 225), rng.uniform(60, 110), rng.uniform(20, 50)])
    g_ang = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0.1, 0.3) * (((yy - fcy) * np.sin(g_ang) + (xx - fcx) * np.cos(g_ang)) / frad)
    vign = 1 - rng.uniform(0.25, 0.45) * fov_r ** 2
    tex = 1 + 0.07 * smooth_noise(rng, (rows, cols), 6) + 0.04 * smooth_noise(rng, (rows, cols), 1.5)
    img = base[None, None, :] * (grad * vign * tex)[..., None]

    # optic disc and cup
    side = rng.choice([-1, 1])
    cx = fcx + side * frad * rng.uniform(0.3, 0.55)
    cy = fcy + rng.normal(0, 0.12) * frad
    rd = frad * rng.uniform(0.13, 0.2)
    disc_r = ellipse_field(yy, xx, cy, cx, rd * rng.uniform(1.0, 1.15), rd, rng.uniform(-0.3, 0.3))
    ccy, ccx = cy + rng.normal(0, 0.12) * rd, cx + rng.normal(0, 0.12) * rd
    rc = rd * rng.uniform(0.4, 0.65)
    cup_r = ellipse_field(yy, xx, ccy, ccx, rc * rng.uniform(0.9, 1.2), rc, rng.uniform(-0.5, 0.5))
    disc_soft = np.clip(blur((disc_r < 1).astype(float), rd * 0.12), 0, 1)
    cup_soft = np.clip(blur((cup_r < 1).astype(float), rc * 0.25), 0, 1)
    disc_col = np.array([rng.uniform(40, 80), rng.uniform(60, 100), rng.uniform(30, 60)])
    cup_col = np.array([rng.uniform(15, 45), rng.uniform(25, 55), rng.uniform(20, 50)])
    img = img + disc_soft[..., None] * disc_col + cup_soft[..., None] * cup_col

    # fovea (dark spot on the other side) and distractors
    fy, fx = fcy + rng.normal(0, 0.05) * frad, fcx - side * frad * rng.uniform(0.1, 0.25)
    fov_dark = np.exp(-(((yy - fy) ** 2 + (xx - fx) ** 2) / (2 * (frad * 0.12) ** 2)))
    img = img * (1 - 0.3 * fov_dark)[..., None]
    for _ in range(int(rng.integers(0, 6))):  # exudates: small bright yellow blobs
        ey, ex = fcy + rng.uniform(-0.7, 0.7) * frad, fcx + rng.uniform(-0.7, 0.7) * frad
        er = rng.uniform(2, 6)
        blob = np.exp(-(((yy - ey) ** 2 + (xx - ex) ** 2) / (2 * er ** 2)))
        img = img + blob[..., None] * np.array([60, 70, 20])
    for _ in range(int(rng.integers(0, 5))):  # haemorrhages: dark red blobs
        ey, ex = fcy + rng.uniform(-0.7, 0.7) * frad, fcx + rng.uniform(-0.7, 0.7) * frad
        er = rng.uniform(2, 7)
        blob = np.exp(-(((yy - ey) ** 2 + (xx - ex) ** 2) / (2 * er ** 2)))
        img = img * (1 - 0.45 * blob)[..., None]

    # vessels
    segs = _vessel_tree(rng, cy, cx, rd, rows, cols, in_fov)
    dist_norm = np.full((rows, cols), np.inf)  # distance / half-width (< 1 inside a vessel)
    for p0, p1, w in segs:
        y0, y1 = int(max(0, min(p0[0], p1[0]) - w - 2)), int(min(rows, max(p0[0], p1[0]) + w + 3))
        x0, x1 = int(max(0, min(p0[1], p1[1]) - w - 2)), int(min(cols, max(p0[1], p1[1]) + w + 3))
        if y1 <= y0 or x1 <= x0:
            continue
        d = segment_distance(yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], p0, p1) / (w / 2)
        dist_norm[y0:y1, x0:x1] = np.minimum(dist_norm[y0:y1, x0:x1], d)
    vessel_mask = (dist_norm < 1.0) & fov
    profile = np.clip(1.25 - dist_norm * 0.9, 0, 1) * fov
    darkness = rng.uniform(0.35, 0.55)
    vcol = np.array([1 - darkness * 0.7, 1 - darkness, 1 - darkness * 0.8])
    img = img * (1 - profile[..., None] * (1 - vcol))

    # optics: blur, gamma, noise, FOV
    img = blur(img, rng.uniform(0.5, 1.0))
    img = img * rng.uniform(0.85, 1.15)
    img = img + rng.normal(0, rng.uniform(2, 5), img.shape)
    img = img * fov[..., None]
    pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    disc = (disc_r < 1) & fov
    cup = (cup_r < 1) & disc
    masks = np.stack([disc, cup, vessel_mask]).astype(np.uint8)[None]
    return {"family": "fundus", "pixels": pixels, "masks": masks, "photometric": "RGB", "window": None,
            "seed": int(seed)}
