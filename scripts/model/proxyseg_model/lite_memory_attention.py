"""Memory attention of the bundled model's memory mode: the frame's embeddings read the bank.

A small network of the project's own (LiteMedSAM stays frozen; issue 15 item 3), in the place
of SAM 2's memory attention, for LiteMedSAM + PPG. One cross-attention layer at the memory
queries on a 32 x 32 grid (1024 tokens) and keys on the memory grid (hm x wm, default 16 x 16 =
256 per slot, at most 7 x 256 = 1792), to keep 2 CPU cores within budget:

  queries   the raw image embeddings (group-normalised), pooled to 32 x 32, projected
            256 -> Dm, + a learned spatial position (Dm x 32 x 32);
  keys      each valid slot's memory + the same spatial position pooled to the memory grid
            + a learned temporal row
            (`frame_tpos`, M rows, SAM 2's convention: row M-1 = the conditioning frame 0,
            row age-1 = a recent frame `age` frames back), projected; + one learned "no memory"
            key that is always valid and whose value is zero;
  values    each slot's memory, projected;
  output    heads recombined, a bias-free conv block Dm -> 256, upsampled (bilinear) to
            64 x 64 and ADDED to the image embeddings: conditioned = embeddings + update.

Initialisation gives the attention a locality prior: the spatial position starts as a 2-D
sine table (every head sees x and y at 4 frequencies) with the key projection the identity and
a small query projection, so an untrained layer already reads the bank near the query's own
position (the earlier masks where the object was); training moves all of it.

Empty slots (`frame_valid` 0) get -1e9 on their attention logits: exp() of it is exactly 0 in
float32, so what an empty slot holds never changes the result. With no valid slot (frame 0)
the only key is the "no memory" one, its value is zero and every layer after the attention is
bias-free, so the update is exactly 0 and frame 0 equals the model frame by frame.

  image_embeddings 1 x 256 x 64 x 64, frame_memory K x M x Dm x hm x wm, frame_tpos i64 M,
  frame_valid f32 M -> conditioned_embeddings K x 256 x 64 x 64
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lite_memory_encoder import MEMORY_DIM, MEMORY_SIZE

MASKED = -1.0e9
FRAME_SLOTS = 7
QUERY_SIZE = 32


def sine_positions(dim: int, size: int, heads: int, amplitude: float = 2.0) -> torch.Tensor:
    """1 x dim x size x size: per head, sin/cos of x and of y at dim / heads / 4 frequencies
    (wavelengths 2, 1, 1/2, 1/4 of the image side), at the cell centres."""
    per = dim // heads // 4
    freqs = 2 * math.pi / (2.0 ** -torch.arange(per).float() * 2)
    c = (torch.arange(size).float() + 0.5) / size
    ang_y = c[:, None, None] * freqs                                      # size x 1 x per
    ang_x = c[None, :, None] * freqs                                      # 1 x size x per
    yy = torch.cat([torch.sin(ang_y), torch.cos(ang_y)], -1).expand(size, size, -1)
    xx = torch.cat([torch.sin(ang_x), torch.cos(ang_x)], -1).expand(size, size, -1)
    head = torch.cat([yy, xx], -1)                                        # size x size x 4 per
    pos = head.repeat(1, 1, heads)
    return amplitude * pos.permute(2, 0, 1).unsqueeze(0).contiguous()


class LiteMemoryAttention(nn.Module):
    """See the module docstring. Arguments: embed_dim C, dim Dm, size hm = wm, frame_slots M, heads."""

    def __init__(self, embed_dim: int = 256, dim: int = MEMORY_DIM, size: int = MEMORY_SIZE,
                 frame_slots: int = FRAME_SLOTS, heads: int = 4, query_size: int = QUERY_SIZE):
        super().__init__()
        self.dim, self.size, self.frame_slots, self.heads = dim, size, frame_slots, heads
        self.query_size = query_size
        self.q_norm = nn.GroupNorm(1, embed_dim)
        self.q_proj = nn.Conv2d(embed_dim, dim, 1)
        self.pos = nn.Parameter(sine_positions(dim, query_size, heads))
        self.tpos = nn.Parameter(torch.randn(frame_slots, dim) * 0.02)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.null_key = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.refine = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GELU(),
                                    nn.Conv2d(dim, embed_dim, 1, bias=False))
        nn.init.normal_(self.refine[2].weight, std=1e-3)
        with torch.no_grad():
            self.q_proj.weight.mul_(0.1)
            self.k_proj.weight.copy_(torch.eye(dim))
            self.k_proj.bias.zero_()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """K x N x Dm -> K x heads x N x Dm/heads."""
        k, n, _ = x.shape
        return x.reshape(k, n, self.heads, -1).transpose(1, 2)

    def queries(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """1 x C x h x w -> 1 x (32*32) x Dm."""
        q = self.q_proj(F.adaptive_avg_pool2d(self.q_norm(image_embeddings), self.query_size)) + self.pos
        return q.flatten(2).transpose(1, 2)

    def key_positions(self) -> torch.Tensor:
        """The query positions pooled to the memory grid: 1 x (hm*wm) x Dm."""
        return F.adaptive_avg_pool2d(self.pos, self.size).flatten(2).transpose(1, 2)

    def update(self, image_embeddings, frame_memory, frame_tpos, frame_valid) -> torch.Tensor:
        """The additive update K x C x h x w (0 where no slot is valid)."""
        k_obj = frame_memory.shape[0]
        hw = self.size * self.size
        q = self.queries(image_embeddings).expand(k_obj, -1, -1)                         # K x HW x Dm
        mem = frame_memory.flatten(3).transpose(2, 3)                                    # K x M x HW x Dm
        keys = mem + self.key_positions().unsqueeze(1) + self.tpos[frame_tpos].unsqueeze(1)              # K x M x HW x Dm
        keys = torch.cat([self.null_key.expand(k_obj, -1, -1), self.k_proj(keys.flatten(1, 2))], 1)
        values = self.v_proj(mem.flatten(1, 2))
        values = torch.cat([torch.zeros_like(values[:, :1]), values], 1)
        valid = torch.cat([frame_valid.new_ones(1), frame_valid.repeat_interleave(hw)])
        bias = ((1.0 - valid) * MASKED).reshape(1, 1, 1, -1)
        qh, kh, vh = self._heads(q), self._heads(keys), self._heads(values)
        scores = qh @ kh.transpose(-1, -2) / (qh.shape[-1] ** 0.5) + bias
        out = (F.softmax(scores, dim=-1) @ vh).transpose(1, 2).flatten(2)               # K x HW x Dm
        out = self.out_proj(out).transpose(1, 2).reshape(k_obj, self.dim, self.query_size, self.query_size)
        return F.interpolate(self.refine(out), size=image_embeddings.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, image_embeddings, frame_memory, frame_tpos, frame_valid):
        """Returns conditioned_embeddings K x C x h x w (see the module docstring)."""
        return image_embeddings + self.update(image_embeddings, frame_memory, frame_tpos, frame_valid)
