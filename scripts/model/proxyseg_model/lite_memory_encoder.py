"""Memory encoder of the bundled model's memory mode: one frame's embeddings + mask -> memory.

A small network of the project's own (LiteMedSAM stays frozen; issue 15 item 3). It plays the
part of SAM 2's memory encoder for LiteMedSAM + PPG: the frame's raw image embeddings
(256 x 64 x 64) are projected to Dm channels and pooled to the memory grid, the decoder's mask
probability (sigmoid of the 256 x 256 logits) is brought to the same grid by strided
convolutions, and the two are fused by a residual conv block:

  image_embeddings 1 x 256 x 64 x 64, mask_logits K x 1 x 256 x 256 -> frame_memory K x Dm x hm x wm

Default Dm = 64 and hm = wm = 16 (every memory cell covers 16 x 16 input pixels).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MEMORY_DIM = 64
MEMORY_SIZE = 16


class MaskDownsampler(nn.Module):
    """K x 1 x L x L mask probability -> K x Dm x hm x wm (two strided convolutions)."""

    def __init__(self, dim: int, size_in: int = 256, size_out: int = MEMORY_SIZE):
        super().__init__()
        stride = size_in // size_out
        first = 4 if stride % 4 == 0 and stride > 4 else stride
        self.net = nn.Sequential(nn.Conv2d(1, 16, first, first), nn.GELU(),
                                 nn.Conv2d(16, dim, stride // first, stride // first))

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.net(mask)


class LiteMemoryEncoder(nn.Module):
    """image_embeddings + mask_logits -> frame_memory (see the module docstring).

    Arguments:
      embed_dim: C of the image embeddings (256); dim: Dm; size: hm = wm; low_res: the logits' side.
    """

    def __init__(self, embed_dim: int = 256, dim: int = MEMORY_DIM, size: int = MEMORY_SIZE, low_res: int = 256):
        super().__init__()
        self.dim, self.size = dim, size
        self.pix_proj = nn.Conv2d(embed_dim, dim, 1)
        self.mask_down = MaskDownsampler(dim, low_res, size)
        self.fuse = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1))
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, image_embeddings: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """1 x C x h x w, K x 1 x 4h x 4w -> K x Dm x hm x wm."""
        pix = self.pix_proj(F.adaptive_avg_pool2d(image_embeddings, self.size))  # 1 x Dm x hm x wm
        x = pix + self.mask_down(torch.sigmoid(mask_logits))                    # K x Dm x hm x wm
        return self.out(x + self.fuse(x))
