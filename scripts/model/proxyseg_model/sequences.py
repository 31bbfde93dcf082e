"""Image sequences made from one real still image and its masks (issue 15 item 3).

A cine loop or a sweep is the same anatomy seen through a moving probe: `make_sequence` moves a
still by a smooth random affine walk (translation, rotation, zoom: probe motion), adds speckle
that changes every frame (ultrasound) or sensor noise (fundus), and lets gain and contrast drift.
The masks move with the image (nearest neighbour), so every frame keeps an exact truth. These
sequences train and judge a memory mode against the same model frame by frame; the real stills
come from ../shared/data (never committed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Motion:
    """Per-frame step sizes of the random walk and its bounds (fractions of the image size,
    degrees, zoom factors), and the appearance changes."""
    shift_step: float = 0.012
    shift_max: float = 0.08
    angle_step: float = 1.0
    angle_max: float = 6.0
    zoom_step: float = 0.008
    zoom_max: float = 0.08
    speckle: float = 0.18      # std of the multiplicative speckle (ultrasound)
    noise: float = 3.0         # std of the additive noise, 0..255 scale
    gain_drift: float = 0.08   # amplitude of the gain's slow drift
    gamma_drift: float = 0.08  # amplitude of the contrast (gamma) drift


def _walk(rng, n: int, step: float, bound: float) -> np.ndarray:
    """A smooth walk from 0: cumulative Gaussian steps, clipped to +-bound."""
    v = np.zeros(n)
    for t in range(1, n):
        v[t] = np.clip(v[t - 1] + rng.normal(0, step), -bound, bound)
    return v


def _affine(h: int, w: int, dx: float, dy: float, angle: float, zoom: float):
    """PIL's inverse affine coefficients: output (x, y) samples input at A^-1 (x, y) for a
    rotation by `angle` degrees and a zoom about the centre, then a shift of (dx, dy) pixels."""
    a = np.deg2rad(angle)
    c, s = np.cos(a) / zoom, np.sin(a) / zoom
    cx, cy = w / 2, h / 2
    # input = R^-1 (output - centre - shift) + centre
    return (c, s, cx - c * (cx + dx) - s * (cy + dy), -s, c, cy + s * (cx + dx) - c * (cy + dy))


def make_sequence(display: np.ndarray, masks: np.ndarray, frames: int = 8, seed: int = 0,
                  ultrasound: bool = False, motion: Motion = Motion()) -> tuple[np.ndarray, np.ndarray]:
    """One still (H x W x 3 float32 0..255, masks K x H x W 0/1) -> frames F x H x W x 3 float32
    and masks F x K x H x W uint8, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    h, w = display.shape[:2]
    dx = _walk(rng, frames, motion.shift_step, motion.shift_max) * w
    dy = _walk(rng, frames, motion.shift_step, motion.shift_max) * h
    ang = _walk(rng, frames, motion.angle_step, motion.angle_max)
    zoom = 1 + _walk(rng, frames, motion.zoom_step, motion.zoom_max)
    phase = rng.uniform(0, 2 * np.pi, 2)
    out = np.zeros((frames, h, w, 3), np.float32)
    out_m = np.zeros((frames, masks.shape[0], h, w), np.uint8)
    img = Image.fromarray(np.clip(display, 0, 255).astype(np.uint8), "RGB")
    for t in range(frames):
        coef = _affine(h, w, dx[t], dy[t], ang[t], zoom[t])
        x = np.asarray(img.transform((w, h), Image.AFFINE, coef, resample=Image.BILINEAR), np.float32)
        for k in range(masks.shape[0]):
            m = Image.fromarray((masks[k] > 0).astype(np.uint8) * 255, "L")
            out_m[t, k] = np.asarray(m.transform((w, h), Image.AFFINE, coef, resample=Image.NEAREST)) > 127
        if ultrasound:
            x = x * rng.gamma(1 / motion.speckle ** 2, motion.speckle ** 2, (h, w, 1))
        x = x + rng.normal(0, motion.noise, x.shape)
        u = t / max(frames - 1, 1)
        gain = 1 + motion.gain_drift * np.sin(2 * np.pi * u + phase[0])
        gamma = 1 + motion.gamma_drift * np.sin(2 * np.pi * u + phase[1])
        out[t] = 255 * (np.clip(x * gain, 0, 255) / 255) ** gamma
    return out, out_m


def instability(masks: np.ndarray) -> float:
    """Mean 1 - Dice between consecutive frames' masks (F x H x W): how much a mask jumps."""
    vals = []
    for a, b in zip(masks[:-1], masks[1:]):
        s = a.astype(bool).sum() + b.astype(bool).sum()
        vals.append(0.0 if s == 0 else 1 - 2 * (a.astype(bool) & b.astype(bool)).sum() / s)
    return float(np.mean(vals)) if vals else 0.0
