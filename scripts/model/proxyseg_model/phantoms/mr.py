"""T2-weighted prostate MR phantom: 16-bit slices, object [prostate].

Axial pelvis: body ellipse with a bright fat rim, muscle, obturator muscles, femoral heads,
bright bladder anterior, dark rectum posterior with a bright wall; the prostate as a lobulated
blob (radius = low-order Fourier series of the angle) with a darker transition zone and a
brighter peripheral-zone crescent, smooth texture; rendered 4x supersampled and area-averaged
(partial-volume edges); Rician noise. A volume of Z slices follows an ellipsoidal profile of
the gland along z.
"""
from __future__ import annotations

import numpy as np

from .common import downsample, ellipse_field, grid, rng_for, smooth_noise

ROWS, COLS = 160, 160
SS = 4


def generate(seed: int, slices: int = 1, rows: int = ROWS, cols: int = COLS, z_range=(-0.55, 0.55)):
    """
    Arguments:
      slices: number of slices; slice z positions span `z_range` of the gland half-length
        (single slice: a random z within the range).
    Returns dict: pixels uint16 [Z,H,W]; masks uint8 [Z,1,H,W]; photometric "MONOCHROME2";
      window (center, width); spacing (row, col, slice) in mm.
    """
    rng = rng_for("mr", seed)
    yy, xx = grid(rows, cols, SS)
    yy1, xx1 = grid(rows, cols)
    bcy, bcx = rows * 0.5 + rng.normal(0, 8), cols * 0.5 + rng.normal(0, 8)
    cy, cx = bcy + rows * rng.uniform(-0.02, 0.1), bcx + cols * rng.uniform(-0.07, 0.07)
    r0 = rows * rng.uniform(0.09, 0.15)
    a = rng.uniform(0, 0.12, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    elong = rng.uniform(0.75, 0.95)
    gain = rng.uniform(0.8, 1.2)
    sigma = rng.uniform(25, 45)
    body_ry, body_rx = rows * rng.uniform(0.34, 0.4), cols * rng.uniform(0.44, 0.48)
    tex_tz = smooth_noise(rng, (rows * SS, cols * SS), 6 * SS)
    tex_bg = smooth_noise(rng, (rows * SS, cols * SS), 10 * SS)
    bl_ry, bl_rx = r0 * rng.uniform(0.8, 1.3), r0 * rng.uniform(1.4, 2.0)
    if slices == 1:
        zs = [rng.uniform(*z_range)]
    else:
        zs = list(np.linspace(z_range[0], z_range[1], slices))

    pix, msk = [], []
    for z in zs:
        prof = np.sqrt(max(0.0, 1 - z ** 2))
        body = ellipse_field(yy, xx, bcy, bcx, body_ry, body_rx)
        img = np.where(body < 1, 650 + 120 * tex_bg, 0.0)
        img = img + 900 * np.exp(-((body - 0.96) / 0.04) ** 2) * (body < 1.02)  # fat rim
        for side in (-1, 1):  # femoral heads and obturator muscles
            fhr = ellipse_field(yy, xx, cy - r0 * 0.2, cx + side * cols * 0.3, r0 * 1.3, r0 * 1.3)
            img = np.where(fhr < 1, 380 + 300 * (fhr < 0.75), img)
            ob = ellipse_field(yy, xx, cy, cx + side * (r0 * 1.9), r0 * 1.3, r0 * 0.55)
            img = np.where(ob < 1, 480 + 40 * tex_bg, img)
        # bladder (anterior, bright) shrinks towards the apex
        bl = ellipse_field(yy, xx, cy - r0 * (1.1 + 0.8 * (z + 1)), cx, bl_ry * (0.6 + 0.4 * (1 - z)), bl_rx)
        img = np.where(bl < 1, 2300 + 100 * tex_bg, img)
        # rectum (posterior): bright wall, dark lumen
        rr = ellipse_field(yy, xx, cy + r0 * 1.55 * elong + r0 * 0.6, cx, r0 * 0.6, r0 * 0.8)
        img = np.where(rr < 1.25, 1100, img)
        img = np.where(rr < 0.85, 180, img)
        # prostate
        th = np.arctan2(yy - cy, xx - cx)
        rad = r0 * prof * (1 + a[0] * np.cos(th - ph[0]) + a[1] * np.cos(2 * th - ph[1]) + a[2] * np.cos(3 * th - ph[2]))
        rn = np.hypot((yy - cy) / elong, xx - cx) / np.maximum(rad, 1e-3)
        inside = rn < 1
        pz = np.clip((yy - cy) / (r0 * elong + 1e-6), 0, 1) * (rn > 0.45)  # posterior crescent
        prost = 560 + 120 * tex_tz + 500 * pz
        img = np.where(inside, prost, img)
        img = img + 180 * np.exp(-((rn - 1.0) / 0.06) ** 2) * (prof > 0)  # capsule
        img = downsample(img, SS) * gain
        inside_frac = downsample(inside.astype(np.float64), SS)
        # Rician noise
        n1, n2 = rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape)
        img = np.hypot(img + n1, n2)
        pix.append(np.clip(np.rint(img), 0, 4095).astype(np.uint16))
        msk.append((inside_frac >= 0.5).astype(np.uint8)[None])
    del yy1, xx1
    wc = float(np.rint(1100 * gain + rng.normal(0, 60)))
    ww = float(np.rint(2400 * gain + rng.normal(0, 120)))
    return {"family": "mr", "pixels": np.stack(pix), "masks": np.stack(msk), "photometric": "MONOCHROME2",
            "window": (wc, ww), "spacing": (0.6, 0.6, 3.6), "seed": int(seed)}
