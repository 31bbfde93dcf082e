"""Pre- and postprocessing, implemented once. The Rust engine reproduces exactly this.

Pixels -> display values (per frame, float32, 0..255):
  1. decode with pydicom; apply the Modality LUT: x * RescaleSlope + RescaleIntercept
     (slope 1, intercept 0 when absent).
  2. RGB: used as is (0..255).
     MONOCHROME1/2: if WindowCenter/WindowWidth are present, the FIRST value of each, DICOM
     linear VOI function (PS3.3 C.11.2.1.2.1) onto [0, 255]:
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped to [0, 255]
        (w <= 1: y = 0 where x <= c - 0.5, else 255)
     else a percentile window per frame: lo, hi = numpy percentiles 0.5 and 99.5 (linear
     interpolation) of the frame's values, y = (x - lo) / (hi - lo) * 255 clipped
     (hi <= lo: y = 0). MONOCHROME1 then inverted: y = 255 - y. Replicated to 3 channels.
Display HWC -> model input [3, S, S] (float32 throughout):
  3. resize so the longest side is S: new_h = int(rows * S / max(rows, cols) + 0.5),
     new_w likewise; bilinear with half-pixel centres (torch F.interpolate, mode="bilinear",
     align_corners=False, antialias=False: src = (dst + 0.5) * in/out - 0.5, clamped at 0).
  4. normalise per channel: (x - pixel_mean) / pixel_std.
  5. zero-pad bottom and right to S x S (zero AFTER normalisation).
Masks: resized with the same bilinear geometry as float 0/1, thresholded >= 0.5, padded 0.
Postprocess: low-res logits K x 1 x 4h x 4w -> bilinear (align_corners=False) to S x S ->
  crop to new_h x new_w -> bilinear to rows x cols -> mask = logit > 0.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def voi_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI LUT function onto [0, 255] (float32)."""
    x = x.astype(np.float32)
    c, w = np.float32(center), np.float32(width)
    if w <= 1:
        return np.where(x <= c - np.float32(0.5), np.float32(0), np.float32(255)).astype(np.float32)
    y = ((x - (c - np.float32(0.5))) / (w - np.float32(1)) + np.float32(0.5)) * np.float32(255)
    return np.clip(y, 0, 255).astype(np.float32)


def percentile_window(x: np.ndarray) -> np.ndarray:
    """Percentile (0.5 %, 99.5 %) window onto [0, 255] (float32)."""
    x = x.astype(np.float32)
    lo, hi = np.percentile(x, [0.5, 99.5])
    lo, hi = np.float32(lo), np.float32(hi)
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo) * np.float32(255), 0, 255).astype(np.float32)


def to_display(frame: np.ndarray, photometric: str, slope: float = 1.0, intercept: float = 0.0,
               window: tuple[float, float] | None = None) -> np.ndarray:
    """One stored frame (H x W or H x W x 3) -> display H x W x 3 float32 in [0, 255]."""
    if photometric == "RGB":
        return frame.astype(np.float32)
    x = frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    y = voi_linear(x, *window) if window is not None else percentile_window(x)
    if photometric == "MONOCHROME1":
        y = np.float32(255) - y
    return np.repeat(y[..., None], 3, axis=-1)


def resized_size(rows: int, cols: int, S: int) -> tuple[int, int]:
    m = max(rows, cols)
    return int(rows * S / m + 0.5), int(cols * S / m + 0.5)


def prepare_image(display: np.ndarray, S: int, mean: np.ndarray = PIXEL_MEAN,
                  std: np.ndarray = PIXEL_STD) -> tuple[np.ndarray, tuple[int, int]]:
    """Display H x W x 3 float32 -> model input 3 x S x S float32, and the resized (h, w).

    `mean` / `std` are the bundle's manifest pixel_mean / pixel_std (0..255 scale)."""
    rows, cols = display.shape[:2]
    nh, nw = resized_size(rows, cols, S)
    t = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)[0]
    mean = torch.from_numpy(np.asarray(mean, dtype=np.float32))[:, None, None]
    t = (t - mean) / torch.from_numpy(np.asarray(std, dtype=np.float32))[:, None, None]
    out = torch.zeros(3, S, S, dtype=torch.float32)
    out[:, :nh, :nw] = t
    return out.numpy(), (nh, nw)


def prepare_mask(mask: np.ndarray, S: int) -> np.ndarray:
    """Binary mask H x W -> S x S float32 0/1 (bilinear, >= 0.5, zero-padded)."""
    rows, cols = mask.shape
    nh, nw = resized_size(rows, cols, S)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)[0, 0]
    out = torch.zeros(S, S, dtype=torch.float32)
    out[:nh, :nw] = (t >= 0.5).float()
    return out.numpy()


def postprocess(low_res_logits, resized_hw: tuple[int, int], orig_hw: tuple[int, int], S: int):
    """K x 1 x 4h x 4w logits -> (K x rows x cols uint8 masks, K x rows x cols float32 logits)."""
    t = torch.as_tensor(np.asarray(low_res_logits, dtype=np.float32))
    t = F.interpolate(t, size=(S, S), mode="bilinear", align_corners=False, antialias=False)
    t = t[:, :, : resized_hw[0], : resized_hw[1]]
    t = F.interpolate(t, size=tuple(orig_hw), mode="bilinear", align_corners=False, antialias=False)[:, 0]
    logits = t.numpy()
    return (logits > 0).astype(np.uint8), logits


def case_displays(case: dict) -> np.ndarray:
    """A phantom case (phantoms.*.generate) -> display frames F x H x W x 3 float32."""
    px = case["pixels"]
    if case["photometric"] == "RGB":
        return px[None].astype(np.float32) if px.ndim == 3 else px.astype(np.float32)
    return np.stack([to_display(f, case["photometric"], window=case["window"]) for f in px])
