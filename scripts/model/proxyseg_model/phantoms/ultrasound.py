"""Intrapartum transperineal ultrasound phantom: objects [pubic symphysis, fetal head].

Sector-shaped field of view (apex at the top), tissue layers with smooth echogenicity
variation, the fetal head as an ellipse with a bright skull rim and a midline echo, the pubic
symphysis as a small elongated echogenic structure upper-left; boundaries blurred, depth
attenuation, fully developed speckle (Rayleigh envelope of a correlated complex field), log
compression. Multi-frame cine: the probe moves (translation + small rotation of the scene
per frame) and the speckle partially decorrelates.
"""
from __future__ import annotations

import numpy as np

from .common import blur, ellipse_field, grid, rng_for, smooth_noise

ROWS, COLS = 256, 320


def _rotate(yy, xx, cy, cx, ang):
    c, s = np.cos(ang), np.sin(ang)
    dy, dx = yy - cy, xx - cx
    return cy + dy * c - dx * s, cx + dy * s + dx * c


def generate(seed: int, frames: int = 1, rows: int = ROWS, cols: int = COLS):
    """
    Returns dict: pixels uint8 [F,H,W] (MONOCHROME2); masks uint8 [F,2,H,W] (PS, FH);
    photometric "MONOCHROME2"; window None.
    """
    rng = rng_for("us", seed)
    yy0, xx0 = grid(rows, cols)
    apex_y, apex_x = -rows * 0.08, cols / 2 + rng.normal(0, 4)
    half = np.deg2rad(rng.uniform(36, 44))
    r_min, r_max = rows * 0.12, rows * rng.uniform(1.0, 1.06)
    ang = np.arctan2(xx0 - apex_x, yy0 - apex_y)
    rad = np.hypot(yy0 - apex_y, xx0 - apex_x)
    sector = (np.abs(ang) < half) & (rad > r_min) & (rad < r_max)

    # scene parameters (in scene coordinates; the probe motion moves the scene per frame)
    fh_cy, fh_cx = rows * rng.uniform(0.52, 0.7), cols * rng.uniform(0.45, 0.66)
    fh_ry, fh_rx = rows * rng.uniform(0.19, 0.27), cols * rng.uniform(0.17, 0.24)
    fh_ang = rng.uniform(-0.6, 0.6)
    ps_cy, ps_cx = rows * rng.uniform(0.22, 0.36), cols * rng.uniform(0.3, 0.42)
    ps_ry, ps_rx = rows * rng.uniform(0.035, 0.055), cols * rng.uniform(0.07, 0.11)
    ps_ang = rng.uniform(-0.5, 0.2)
    pad = 40
    bg_field = 0.32 + 0.1 * smooth_noise(rng, (rows + 2 * pad, cols + 2 * pad), 8)
    layer_f = rng.uniform(0.03, 0.06)
    layer_ph = rng.uniform(0, 2 * np.pi)
    fh_in = rng.uniform(0.12, 0.22)
    rim = rng.uniform(0.8, 1.0)
    ps_echo = rng.uniform(0.55, 0.75)
    atten = rng.uniform(0.5, 1.2)
    gain = rng.uniform(0.85, 1.15)
    drift = rng.normal(0, 2.0, size=2)
    rot_rate = rng.normal(0, 0.01)
    speckle_prev = None

    pix, msk = [], []
    for f in range(frames):
        off_y, off_x = drift * f
        yy, xx = _rotate(yy0 - off_y, xx0 - off_x, rows / 2, cols / 2, rot_rate * f)
        iy = np.clip(np.rint(yy + pad).astype(int), 0, rows + 2 * pad - 1)
        ix = np.clip(np.rint(xx + pad).astype(int), 0, cols + 2 * pad - 1)
        echo = bg_field[iy, ix] + 0.08 * np.sin(yy * layer_f * 2 * np.pi + layer_ph + 0.02 * xx)
        fh_r = ellipse_field(yy, xx, fh_cy, fh_cx, fh_ry, fh_rx, fh_ang)
        ps_r = ellipse_field(yy, xx, ps_cy, ps_cx, ps_ry, ps_rx, ps_ang)
        inside = fh_r < 1
        echo = np.where(inside, fh_in + 0.05 * bg_field[iy, ix], echo)
        echo = echo + rim * np.exp(-((fh_r - 0.95) / 0.045) ** 2)
        # midline echo of the fetal head
        c, s = np.cos(fh_ang), np.sin(fh_ang)
        u = (xx - fh_cx) * c + (yy - fh_cy) * s
        echo = echo + 0.25 * inside * np.exp(-(u / 2.0) ** 2)
        echo = np.where(ps_r < 1, ps_echo, echo) + 0.35 * np.exp(-((ps_r - 1.0) / 0.12) ** 2)
        echo = blur(echo, 2.0)
        depth = np.clip((rad - r_min) / (r_max - r_min), 0, 1)
        echo = echo * np.exp(-atten * depth) * gain
        # speckle: Rayleigh envelope of a correlated complex Gaussian field
        sp = np.hypot(blur(rng.standard_normal((rows, cols)), 0.8), blur(rng.standard_normal((rows, cols)), 0.8))
        sp = sp / sp.mean()
        if speckle_prev is not None:
            sp = 0.6 * speckle_prev + 0.4 * sp
        speckle_prev = sp
        env = echo * sp
        img = 255 * np.log1p(20 * np.clip(env, 0, None)) / np.log1p(20 * 1.6)
        img = np.where(sector, np.clip(img, 0, 255), 0)
        pix.append(np.rint(img).astype(np.uint8))
        msk.append(np.stack([(ps_r < 1) & sector, (fh_r < 1) & sector]).astype(np.uint8))
    return {"family": "us", "pixels": np.stack(pix), "masks": np.stack(msk), "photometric": "MONOCHROME2",
            "window": None, "seed": int(seed)}
