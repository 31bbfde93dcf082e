"""Contextual Colorization Module (CCM), paper section 3.2.

Four identical blocks. In each block both streams are projected (learnable linear layers),
then cross-attention(target <- context) is added into the target features, followed by an
FFN; then the reversed cross-attention(context <- target) is added into the context
embedding, followed by an FFN. The final context embedding is the proxy prompt.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x L x dim -> B x L x dim."""
        return self.net(x)


class CrossAttention(nn.Module):
    """Multi-head attention written with plain matmuls (exports to basic ONNX ops)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: B x Lq x dim, k/v: B x Lk x dim -> B x Lq x dim."""
        b, lq, d = q.shape
        lk = k.shape[1]
        hd = d // self.heads
        q = self.q(q).reshape(b, lq, self.heads, hd).transpose(1, 2)
        k = self.k(k).reshape(b, lk, self.heads, hd).transpose(1, 2)
        v = self.v(v).reshape(b, lk, self.heads, hd).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, lq, d))


class CCMBlock(nn.Module):
    """One dual-reverse cross-attention block (paper eqs. 8-11)."""

    def __init__(self, target_in: int, ctx_in: int, dim: int, heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        self.proj_target = nn.Linear(target_in, dim)
        self.proj_ctx = nn.Linear(ctx_in, dim)
        self.norm_t1, self.norm_t2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_c1, self.norm_c2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn_t = CrossAttention(dim, heads)
        self.ffn_t = FFN(dim, dim * mlp_ratio)
        self.attn_c = CrossAttention(dim, heads)
        self.ffn_c = FFN(dim, dim * mlp_ratio)

    def forward(self, target, ctx, target_pe, ctx_pe):
        """
        Arguments:
          target (torch.Tensor): K x HW x Ct target features F_t (duplicated K times).
          ctx (torch.Tensor): K x T x Cc context embedding.
          target_pe (torch.Tensor): 1 x HW x dim positional encoding of target positions.
          ctx_pe (torch.Tensor): 1 x T x dim positional encoding of context tokens.
        Returns:
          (target, ctx): K x HW x dim and K x T x dim.
        """
        t = self.proj_target(target)
        c = self.proj_ctx(ctx)
        # target <- context (colorise the target with the user's intent)
        t = t + self.attn_t(self.norm_t1(t) + target_pe, c + ctx_pe, c)
        t = t + self.ffn_t(self.norm_t2(t))
        # context <- target (reversed cross-attention)
        c = c + self.attn_c(self.norm_c1(c) + ctx_pe, t + target_pe, t)
        c = c + self.ffn_c(self.norm_c2(c))
        return t, c


class ContextualColorizationModule(nn.Module):
    """CCM: 4 identical blocks; returns the refined context embedding (the proxy prompt)."""

    def __init__(self, target_dim: int, ctx_dim: int, dim: int, out_dim: int, hw: int, tokens: int,
                 depth: int = 4, heads: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(
            [CCMBlock(target_dim if i == 0 else dim, ctx_dim if i == 0 else dim, dim, heads) for i in range(depth)])
        self.target_pe = nn.Parameter(torch.randn(1, hw, dim) * 0.02)
        self.ctx_pe = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.norm_out = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, target: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          target (torch.Tensor): K x HW x C, F_t duplicated K times.
          ctx (torch.Tensor): K x T x Cv, context embedding tokens.
        Returns:
          (torch.Tensor): K x T x C prompt tokens for SAM's mask decoder.
        """
        for blk in self.blocks:
            target, ctx = blk(target, ctx, self.target_pe, self.ctx_pe)
        return self.out(self.norm_out(ctx))
