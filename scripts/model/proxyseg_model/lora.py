"""LoRA (Hu et al. 2021) for SAM's image encoder and mask decoder.

Base weights stay frozen; only the low-rank A, B matrices train. `merge_lora` folds
W + scale * B @ A back into plain nn.Linear layers before ONNX export.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    """y = base(x) + scale * (x A^T) B^T, with base frozen and B initialised to zero."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 4.0):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ... x in_features -> ... x out_features."""
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin


def _targets(sam, encoder: bool = True) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every Linear that gets LoRA: encoder qkv (ViT blocks; `encoder`),
    decoder q/v projections."""
    out = []
    if encoder:
        for blk in sam.image_encoder.blocks:
            out.append((blk.attn, "qkv"))
    for mod in sam.mask_decoder.transformer.modules():
        if hasattr(mod, "q_proj") and hasattr(mod, "v_proj"):
            out.append((mod, "q_proj"))
            out.append((mod, "v_proj"))
    return out


def add_lora(sam, rank: int = 4, alpha: float = 4.0, encoder: bool = True) -> None:
    """Freeze every SAM parameter and wrap the target Linears with LoRA (in place).

    `encoder=False` leaves the image encoder without LoRA (its embeddings can then be cached)."""
    for p in sam.parameters():
        p.requires_grad_(False)
    for parent, name in _targets(sam, encoder):
        lin = getattr(parent, name)
        if isinstance(lin, nn.Linear):
            setattr(parent, name, LoRALinear(lin, rank, alpha))


def merge_lora(module: nn.Module) -> None:
    """Replace every LoRALinear under `module` by its merged nn.Linear (in place)."""
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
        else:
            merge_lora(child)


def has_lora(module: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in module.modules())
