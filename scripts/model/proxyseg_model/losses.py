"""Dice loss (paper eq. 13) and the helpers that bring low-res logits to S x S."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def upscale(logits: torch.Tensor, S: int) -> torch.Tensor:
    """K x 1 x 4h x 4w -> K x S x S (bilinear, align_corners=False)."""
    return F.interpolate(logits, size=(S, S), mode="bilinear", align_corners=False)[:, 0]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - 2 sum(p g) / (sum p + sum g), per mask, averaged. logits/target: K x H x W."""
    p = torch.sigmoid(logits).flatten(1)
    g = target.flatten(1)
    inter = (p * g).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + g.sum(1) + eps)).mean()


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per mask (K x H x W bool/0-1) -> K; empty-empty counts as 1."""
    p = pred.flatten(1).float()
    g = target.flatten(1).float()
    inter = (p * g).sum(1)
    s = p.sum(1) + g.sum(1)
    return torch.where(s > 0, 2 * inter / s.clamp(min=1e-8), torch.ones_like(s))
