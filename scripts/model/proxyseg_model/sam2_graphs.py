"""SAM 2 / SAM 2.1 from the PyPI `sam2` package, cut into the graphs of contract 2.

The architecture comes from the installed package (its hydra configs and modules, imported as a
library): hiera tiny, small, base+ and large, SAM 2 or SAM 2.1. A user's checkpoint
(`sam2.1_hiera_tiny.pt`, ...) is loaded by the package's own loader. This file holds the three
per-frame graphs that wrap SAM 2's own functions; memory attention, which needs a fixed-shape
rewrite, is in memory_attention.py.

  image_encoder   image 1x3xSxS -> image_embeddings 1xCxhxw, high_res_feats_0 1xC0x4hx4w,
                                   high_res_feats_1 1xC1x2hx2w
  mask_decoder    conditioned_embeddings KxCxhxw, high_res_feats_0, high_res_feats_1
                  -> mask_logits Kx1x4hx4w, iou_scores Kx1, obj_ptr KxC, object_score_logits Kx1
  memory_encoder  image_embeddings, mask_logits, object_score_logits -> frame_memory KxDmxhxw
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = ("sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l",
           "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l")


def config_path(name: str) -> str:
    """The package's config file for a name in CONFIGS (e.g. sam2.1_hiera_t)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown SAM 2 config {name!r}; one of {', '.join(CONFIGS)}")
    family = "sam2.1" if name.startswith("sam2.1") else "sam2"
    return f"configs/{family}/{name}.yaml"


def build(config: str, checkpoint: Path | None, image_size: int = 1024):
    """SAM2Base in eval mode, on the CPU, float32. `image_size` other than 1024 (the checkpoints')
    resamples Hiera's window position embedding, as the package does; used by the tests."""
    from sam2.build_sam import build_sam2

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint not found: {checkpoint}")
    overrides = [f"++model.image_size={image_size}"]
    return build_sam2(config_path(config), str(checkpoint) if checkpoint else None, device="cpu",
                      mode="eval", hydra_overrides_extra=overrides)


def random_checkpoint(config: str, path: Path, seed: int = 0, image_size: int = 1024) -> Path:
    """A checkpoint file in the released format ({"model": state_dict}) with random weights of the
    real architecture: what the tests load in place of Meta's weights, which cannot be fetched.

    One bias is set: the object-score head's output (+10), so that every frame predicts its
    object present and the parity checks run through the mask path (with a negative score SAM 2
    replaces all logits by a constant, and any two implementations agree trivially)."""
    torch.manual_seed(seed)
    model = build(config, None, image_size)
    dec = model.sam_mask_decoder
    if getattr(dec, "pred_obj_scores", False):
        head = dec.pred_obj_score_head
        last = head if isinstance(head, torch.nn.Linear) else head.layers[-1]
        with torch.no_grad():
            last.bias.fill_(10.0)
    torch.save({"model": model.state_dict()}, path)
    return path


class ImageEncoderGraph(nn.Module):
    """Hiera + FPN neck, and the decoder's two high-resolution projections (SAM 2's
    `forward_image`), for one frame."""

    def __init__(self, sam2):
        super().__init__()
        self.sam2 = sam2

    def forward(self, image):
        fpn = self.sam2.forward_image(image)["backbone_fpn"]
        return fpn[-1], fpn[0], fpn[1]


class MaskDecoderGraph(nn.Module):
    """SAM 2's prompt encoder with no point or mask (a tracked frame) and its mask decoder, on
    memory-conditioned features (`_forward_sam_heads`). With SAM 2's multimask tracking the mask
    of highest predicted IoU is returned, with its IoU and object pointer."""

    def __init__(self, sam2):
        super().__init__()
        self.sam2 = sam2
        self.multimask = bool(sam2._use_multimask(False, None))

    def forward(self, conditioned_embeddings, high_res_feats_0, high_res_feats_1):
        k = conditioned_embeddings.shape[0]
        high = [high_res_feats_0.expand(k, -1, -1, -1), high_res_feats_1.expand(k, -1, -1, -1)]
        _, _, ious, low_res, _, obj_ptr, score = self.sam2._forward_sam_heads(
            backbone_features=conditioned_embeddings, point_inputs=None, mask_inputs=None,
            high_res_features=high, multimask_output=self.multimask)
        iou = ious.max(dim=-1, keepdim=True).values if self.multimask else ious
        return low_res, iou, obj_ptr, score


class MemoryEncoderGraph(nn.Module):
    """SAM 2's `_encode_new_memory`: the frame's features and its predicted mask (low-res logits,
    upsampled as SAM 2 upsamples them) -> the frame's spatial memory."""

    def __init__(self, sam2):
        super().__init__()
        self.sam2 = sam2

    def forward(self, image_embeddings, mask_logits, object_score_logits):
        s = self.sam2
        k, (h, w) = mask_logits.shape[0], image_embeddings.shape[-2:]
        high = F.interpolate(mask_logits, size=(s.image_size, s.image_size), mode="bilinear", align_corners=False)
        feats = image_embeddings.flatten(2).permute(2, 0, 1).expand(-1, k, -1)  # HW x K x C
        memory, _ = s._encode_new_memory(current_vision_feats=[feats], feat_sizes=[(h, w)],
                                         pred_masks_high_res=high, object_score_logits=object_score_logits,
                                         is_mask_from_pts=False)
        if s.no_obj_embed_spatial is None:
            # SAM 2 (not 2.1) ignores the score here: a zero term keeps the graph's input
            memory = memory + 0.0 * object_score_logits.sum()
        return memory
