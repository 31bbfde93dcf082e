"""Shared helpers: seeded RNG, separable Gaussian blur, smooth noise, shape rasterisers."""
from __future__ import annotations

import numpy as np

FAMILIES = ("fundus", "us", "mr")
OBJECTS = {"fundus": ["optic disc", "optic cup", "vessels"],
           "us": ["pubic symphysis", "fetal head"],
           "mr": ["prostate"]}


def rng_for(family: str, seed: int) -> np.random.Generator:
    """Independent stream per (family, seed)."""
    return np.random.default_rng([FAMILIES.index(family) + 1, int(seed)])


def gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(3 * sigma + 0.5))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D (or HxWxC) float array, reflect padding."""
    if sigma <= 0:
        return img
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    out = img.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for i, w in enumerate(k):
            sl = [slice(None)] * out.ndim
            sl[axis] = slice(i, i + n)
            acc += w * p[tuple(sl)]
        out = acc
    return out


def smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    n = blur(rng.standard_normal(shape), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


def grid(rows: int, cols: int, ss: int = 1):
    """Pixel-centre coordinates (y, x) in pixel units, optionally supersampled ss x ss."""
    y = (np.arange(rows * ss) + 0.5) / ss
    x = (np.arange(cols * ss) + 0.5) / ss
    return np.meshgrid(y, x, indexing="ij")


def ellipse_field(yy, xx, cy, cx, ry, rx, angle=0.0):
    """Normalised radius r (r < 1 inside) of an ellipse rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def downsample(a: np.ndarray, ss: int) -> np.ndarray:
    """Area-average a supersampled (ss x) array back to pixel resolution."""
    if ss == 1:
        return a
    h, w = a.shape[0] // ss, a.shape[1] // ss
    return a.reshape(h, ss, w, ss, *a.shape[2:]).mean(axis=(1, 3))


def segment_distance(yy, xx, p0, p1):
    """Distance from every pixel to the segment p0-p1 (points as (y, x))."""
    py, px = p0
    qy, qx = p1
    vy, vx = qy - py, qx - px
    l2 = vy * vy + vx * vx + 1e-12
    t = np.clip(((yy - py) * vy + (xx - px) * vx) / l2, 0, 1)
    return np.hypot(yy - (py + t * vy), xx - (px + t * vx))


def generate_case(family: str, seed: int, **kw):
    """Dispatch to a family generator (see each module's `generate`)."""
    if family == "fundus":
        from .fundus import generate
    elif family == "us":
        from .ultrasound import generate
    elif family == "mr":
        from .mr import generate
    else:
        raise ValueError(family)
    return generate(seed, **kw)
