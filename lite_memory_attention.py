"""Memory attention of the bundled model's memory mode: the frame's embeddings read the bank.

A small network of the project's own (LiteMedSAM stays frozen; issue 15 item 3), in the place
of SAM 2's memory attention, for LiteMedSAM + PPG. One cross-attention layer at the memory
grid (hm x wm, default 32 x 32 = 1024 query tokens, to keep 2 CPU cores within budget):

  queries   the raw image embeddings, pooled to the grid, projected 256 -> Dm, + a learned
            spatial position;
  keys      each valid slot's memory + the same spatial position + a learned temporal row
            (`frame_tpos`, M rows: SAM 2's convention, row M-1 = the conditioning frame 0,
            row age-1 = a recent frame `age` frames back), + one learned "no memory" key that
            is always valid and whose value is zero;
  values    each slot's memory, projected;
  output    heads recombined, a bias-free conv block Dm -> 256, upsampled to 64 x 64 and ADDED
            to the image embeddings: conditioned = embeddings + update.

Empty slots (`frame_valid` 0) get -1e9 on their attention logits: exp() of it is exactly 0 in
float32, so what an empty slot holds never changes the result. With no valid slot (frame 0)
the only key is the "no memory" one, its value is zero and every layer after the attention is
bias-free, so the update is exactly 0 and frame 0 equals the model frame by frame.

  image_embeddings 1 x 256 x 64 x 64, frame_memory K x M x Dm x hm x wm, frame_tpos i64 M,
  frame_valid f32 M -> conditioned_embeddings K x 256 x 64 x 64
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lite_memory_encoder import MEMORY_DIM, MEMORY_SIZE

MASKED = -1.0e9
FRAME_SLOTS = 7


class LiteMemoryAttention(nn.Module):
    """See the module docstring. Arguments: embed_dim C, dim Dm, size hm = wm, frame_slots M, heads."""

    def __init__(self, embed_dim: int = 256, dim: int = MEMORY_DIM, size: int = MEMORY_SIZE,
                 frame_slots: int = FRAME_SLOTS, heads: int = 4):
        super().__init__()
        self.dim, self.size, self.frame_slots, self.heads = dim, size, frame_slots, heads
        self.q_norm = nn.GroupNorm(1, embed_dim)
        self.q_proj = nn.Conv2d(embed_dim, dim, 1)
        self.pos = nn.Parameter(torch.randn(1, dim, size, size) * 0.02)
        self.tpos = nn.Parameter(torch.randn(frame_slots, dim) * 0.02)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.null_key = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.refine = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GELU(),
                                    nn.Conv2d(dim, embed_dim, 1, bias=False))
        nn.init.normal_(self.refine[2].weight, std=1e-3)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """K x N x Dm -> K x heads x N x Dm/heads."""
        k, n, _ = x.shape
        return x.reshape(k, n, self.heads, -1).transpose(1, 2)

    def queries(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """1 x C x h x w -> 1 x (hm*wm) x Dm."""
        q = self.q_proj(F.adaptive_avg_pool2d(self.q_norm(image_embeddings), self.size)) + self.pos
        return q.flatten(2).transpose(1, 2)

    def forward(self, image_embeddings, frame_memory, frame_tpos, frame_valid):
        """Returns conditioned_embeddings K x C x h x w (see the module docstring)."""
        k_obj, m = frame_memory.shape[0], frame_memory.shape[1]
        hw = self.size * self.size
        q = self.queries(image_embeddings).expand(k_obj, -1, -1)                         # K x HW x Dm
        mem = frame_memory.flatten(3).transpose(2, 3)                                    # K x M x HW x Dm
        pos = self.pos.flatten(2).transpose(1, 2)                                        # 1 x HW x Dm
        keys = mem + pos.unsqueeze(1) + self.tpos[frame_tpos].unsqueeze(1)              # K x M x HW x Dm
        keys = torch.cat([self.null_key.expand(k_obj, -1, -1), self.k_proj(keys.flatten(1, 2))], 1)
        values = torch.cat([torch.zeros_like(mem[:, 0, :1]), self.v_proj(mem.flatten(1, 2))], 1)
        valid = torch.cat([frame_valid.new_ones(1), frame_valid.repeat_interleave(hw)])
        bias = ((1.0 - valid) * MASKED).reshape(1, 1, 1, -1)
        qh, kh, vh = self._heads(q), self._heads(keys), self._heads(values)
        scores = qh @ kh.transpose(-1, -2) / (qh.shape[-1] ** 0.5) + bias
        out = (F.softmax(scores, dim=-1) @ vh).transpose(1, 2).flatten(2)               # K x HW x Dm
        out = self.out_proj(out).transpose(1, 2).reshape(k_obj, self.dim, self.size, self.size)
        update = self.refine(out)
        update = F.interpolate(update, size=image_embeddings.shape[-2:], mode="bilinear", align_corners=False)
        return image_embeddings + update
