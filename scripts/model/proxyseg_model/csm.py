"""Contextual Selective Module (CSM), paper section 3.1: three selection steps.

1. VisionMamba: Vim encoder (bidirectional selective-scan blocks, patch 16) on the
   4-channel support image + one object's mask; input-dependent (selective) parameters.
2. BridgeUnit: the support image's SAM features duplicated K times, concatenated with each
   object's Vim features, CBAM across the concatenated channels (inter-object
   communication), two ResBlocks, flattened.
3. SelectiveMap: STCN-style memory read. affinity = softmax over support positions of
   (2 k.q - |k|^2) / sqrt(Ck); readout = values @ affinity -> per-object context embedding.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scan import selective_scan


class MambaMixer(nn.Module):
    """One direction of a Mamba (S6) mixer: conv1d -> SiLU -> selective scan."""

    def __init__(self, d_inner: int, d_state: int = 8, d_conv: int = 4, dt_rank: int | None = None):
        super().__init__()
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = dt_rank or max(1, math.ceil(d_inner / 16))
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        # S4D-real initialisation of A, dt bias in [1e-3, 1e-1] as in Mamba
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): Bt x L x Di tokens.
        Returns:
          (torch.Tensor): Bt x L x Di.
        """
        L = x.shape[1]
        x = self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2)
        x = F.silu(x)
        dbc = self.x_proj(x)
        dt, B, C = torch.split(dbc, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log.float())
        return selective_scan(x, delta, A, B, C, self.D)


class VimBlock(nn.Module):
    """Bidirectional Vim block: norm -> in_proj (x, z) -> forward and backward S6 -> gate -> out."""

    def __init__(self, dim: int, d_state: int = 8, expand: int = 2):
        super().__init__()
        d_inner = expand * dim
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner)
        self.forward_mixer = MambaMixer(d_inner, d_state)
        self.backward_mixer = MambaMixer(d_inner, d_state)
        self.out_proj = nn.Linear(d_inner, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          tokens (torch.Tensor): Bt x L x D.
        Returns:
          (torch.Tensor): Bt x L x D (residual added).
        """
        x, z = self.in_proj(self.norm(tokens)).chunk(2, dim=-1)
        y_f = self.forward_mixer(x)
        y_b = torch.flip(self.backward_mixer(torch.flip(x, dims=[1])), dims=[1])
        y = (y_f + y_b) * F.silu(z)
        return tokens + self.out_proj(y)


class VisionMamba(nn.Module):
    """Vim encoder (first selection step) on the 4-channel support image + object mask.

    Patch size 16, so a 256 x 256 input gives 16 x 16 tokens, aligned with SAM's embedding.
    """

    def __init__(self, img_size: int = 256, patch_size: int = 16, in_chans: int = 4,
                 embed_dim: int = 192, depth: int = 4, d_state: int = 8, out_size: int | None = None):
        super().__init__()
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList([VimBlock(embed_dim, d_state) for _ in range(depth)])
        self.norm_f = nn.LayerNorm(embed_dim)
        self.out_size = out_size or self.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): Bt x 4 x S x S, normalised image (3 channels) + binary mask.
        Returns:
          (torch.Tensor): Bt x D x h x w Vim features (h = w = out_size).
        """
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            t = blk(t)
        t = self.norm_f(t)
        f = t.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid)
        if self.out_size != self.grid:
            f = F.interpolate(f, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return f


class CBAM(nn.Module):
    """CBAM (Woo et al. 2018) over the concatenated channels, with inter-object communication.

    K is dynamic (the graph accepts 1..max_objects), so instead of stacking the K objects
    along channels (a K-dependent width), every object's pooled channel descriptor is joined
    with the mean and max over all K objects before the channel MLP, and every object's
    spatial descriptor with the mean over objects before the 7x7 spatial conv. Each object
    thereby sees the others: the inter-object selection of the paper's Bridge Unit.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(3 * channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(4, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): N x K x Ch x h x w.
        Returns:
          (torch.Tensor): N x K x Ch x h x w, channel- then spatially-attended.
        """
        n, k, ch, h, w = x.shape
        avg = x.mean(dim=(3, 4))
        mx = x.amax(dim=(3, 4))
        ctx = torch.cat([avg.mean(1, keepdim=True), avg.amax(1, keepdim=True)], dim=-1).expand(-1, k, -1)
        a = self.mlp(torch.cat([avg, ctx], -1)) + self.mlp(torch.cat([mx, ctx], -1))
        x = x * torch.sigmoid(a)[..., None, None]
        s_avg = x.mean(2, keepdim=True)
        s_max = x.amax(2, keepdim=True)
        s = torch.cat([s_avg, s_max, s_avg.mean(1, keepdim=True).expand(-1, k, -1, -1, -1),
                       s_max.amax(1, keepdim=True).expand(-1, k, -1, -1, -1)], dim=2)
        att = torch.sigmoid(self.spatial(s.reshape(n * k, 4, h, w))).reshape(n, k, 1, h, w)
        return x * att


class ResBlock(nn.Module):
    """Basic residual block (He et al. 2016) with GroupNorm; 1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: Bt x Cin x h x w -> Bt x Cout x h x w."""
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class BridgeUnit(nn.Module):
    """Second selection step: [F_s duplicated K times ; Vim features] -> CBAM -> 2 ResBlocks.

    With `mask_channel` the object's mask, area-pooled to the h x w grid, is appended as one more
    channel (our addition: without it the few-shot training here collapsed to segmenting the
    most salient structure whatever mask was given; see STATUS.md).
    """

    def __init__(self, sam_dim: int, vim_dim: int, out_dim: int, mask_channel: bool = False):
        super().__init__()
        self.mask_channel = mask_channel
        ch = sam_dim + vim_dim + (1 if mask_channel else 0)
        self.cbam = CBAM(ch)
        self.res1 = ResBlock(ch, out_dim)
        self.res2 = ResBlock(out_dim, out_dim)

    def forward(self, support_embeddings: torch.Tensor, vim_features: torch.Tensor,
                grid_masks: torch.Tensor | None = None) -> torch.Tensor:
        """
        Arguments:
          support_embeddings (torch.Tensor): N x C x h x w, SAM image features F_s of each pair.
          vim_features (torch.Tensor): N x K x Dv x h x w, Vim features of each (pair, object).
          grid_masks (torch.Tensor or None): N x K x h x w object masks pooled to the grid.
        Returns:
          (torch.Tensor): N x K x Cv x h x w aggregated object-level support features
            (the flattened F_agg of the paper is this tensor viewed as K x Cv x (N h w)).
        """
        n, k = vim_features.shape[:2]
        fs = support_embeddings.unsqueeze(1).expand(-1, k, -1, -1, -1)
        parts = [fs, vim_features]
        if self.mask_channel:
            parts.append(grid_masks.unsqueeze(2))
        x = self.cbam(torch.cat(parts, dim=2))
        h, w = x.shape[-2:]
        x = self.res2(self.res1(x.flatten(0, 1)))
        return x.reshape(n, k, -1, h, w)


class SelectiveMap(nn.Module):
    """Third selection step: STCN memory read between target and support features.

    The key projection is shared between support ("memory") and target ("query") features.
    With `enabled=False` (ablation "without selective map") the readout is the plain mean of
    the support values over all support positions, the same at every target position.
    With `grid` a learned positional term (Ck x grid x grid, zero at start) is added to the keys
    (our addition: SAM features are nearly translation-equivariant, and on standard-plane
    ultrasound the pubic symphysis and the fetal head look alike to them; where an object sits
    in the view is part of what the support pairs teach).
    """

    def __init__(self, sam_dim: int, key_dim: int, enabled: bool = True, grid: int = 0):
        super().__init__()
        self.key_proj = nn.Conv2d(sam_dim, key_dim, 3, padding=1)
        self.key_dim = key_dim
        self.enabled = enabled
        self.key_pos = nn.Parameter(torch.zeros(1, key_dim, grid, grid)) if grid else None

    def keys(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings: B x C x h x w SAM features -> B x Ck x h x w keys."""
        k = self.key_proj(embeddings)
        return k if self.key_pos is None else k + self.key_pos

    def forward(self, target_embeddings: torch.Tensor, support_keys: torch.Tensor,
                support_values: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          target_embeddings (torch.Tensor): 1 x C x h x w, SAM features F_t of the target.
          support_keys (torch.Tensor): N x Ck x h x w.
          support_values (torch.Tensor): N x K x Cv x h x w.
        Returns:
          (torch.Tensor): K x Cv x h x w context embedding E_ctx (readout per target position).
        """
        n, k, cv, h, w = support_values.shape
        v = support_values.permute(1, 2, 0, 3, 4).reshape(k, cv, n * h * w)  # K x Cv x M
        if not self.enabled:
            ctx = v.mean(-1, keepdim=True).expand(-1, -1, h * w)
            return ctx.reshape(k, cv, h, w)
        mk = support_keys.permute(1, 0, 2, 3).reshape(self.key_dim, -1)  # Ck x M
        q = self.keys(target_embeddings).reshape(self.key_dim, -1)  # Ck x hw
        a = 2 * mk.transpose(0, 1) @ q - (mk * mk).sum(0).unsqueeze(1)  # M x hw
        affinity = torch.softmax(a / math.sqrt(self.key_dim), dim=0)
        ctx = v @ affinity  # K x Cv x hw
        return ctx.reshape(k, cv, h, w)
