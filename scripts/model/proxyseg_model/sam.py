"""SAM wrapper: segment-anything's ImageEncoderViT, PromptEncoder and MaskDecoder.

The proxy prompt enters the mask decoder as sparse prompt embeddings; the dense prompt is
SAM's `no_mask_embed` (as VRP-SAM does). The PromptEncoder is used only for its positional
encoding, its `no_mask_embed` and (for phantom pretraining and the PerSAM baseline) point
and box prompts.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer


class SAMBackbone(nn.Module):
    def __init__(self, img_size: int, encoder_dim: int, encoder_depth: int, encoder_heads: int,
                 global_attn_indexes, window_size: int, embed_dim: int = 256,
                 decoder_depth: int = 2, decoder_mlp: int = 2048, decoder_heads: int = 8):
        super().__init__()
        self.img_size = img_size
        self.embed_size = img_size // 16
        self.image_encoder = ImageEncoderViT(
            img_size=img_size, patch_size=16, in_chans=3, embed_dim=encoder_dim, depth=encoder_depth,
            num_heads=encoder_heads, mlp_ratio=4.0, out_chans=embed_dim, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, use_rel_pos=True,
            window_size=window_size, global_attn_indexes=tuple(global_attn_indexes))
        self.prompt_encoder = PromptEncoder(
            embed_dim=embed_dim, image_embedding_size=(self.embed_size, self.embed_size),
            input_image_size=(img_size, img_size), mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=embed_dim,
                                          mlp_dim=decoder_mlp, num_heads=decoder_heads),
            transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim=256)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          images (torch.Tensor): B x 3 x S x S, normalised and zero-padded (preprocess.py).
        Returns:
          (torch.Tensor): B x C x h x w image embeddings (h = w = S / 16).
        """
        return self.image_encoder(images)

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, return_mask_token: bool = False):
        """Mask decoder with sparse prompt tokens and dense = no_mask_embed, single-mask output.

        Arguments:
          image_embeddings (torch.Tensor): 1 x C x h x w (broadcast to every prompt set) or
            K x C x h x w (one per prompt set).
          sparse (torch.Tensor): K x T x C prompt tokens (proxy prompt, or encoded points/boxes).
        Returns:
          mask_logits (torch.Tensor): K x 1 x 4h x 4w low-res mask logits.
          iou_scores (torch.Tensor): K x 1 predicted IoU.
          mask_token (torch.Tensor): K x C, the mask token after the transformer (what the
            hypernetwork reads; detail.DetailBranch gates on it), with `return_mask_token`.
        """
        md = self.mask_decoder
        k = sparse.shape[0]
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(k, -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = image_embeddings.expand(k, -1, -1, -1) + dense
        pos_src = self.prompt_encoder.get_dense_pe().expand(k, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = md.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_token_out = hs[:, 1, :]  # single-mask output (token 0 of the mask tokens)
        src = src.transpose(1, 2).reshape(b, c, h, w)
        up = md.output_upscaling(src)
        hyper = md.output_hypernetworks_mlps[0](mask_token_out).unsqueeze(1)  # K x 1 x C/8
        b, c2, h2, w2 = up.shape
        masks = (hyper @ up.reshape(b, c2, h2 * w2)).reshape(b, 1, h2, w2)
        iou = md.iou_prediction_head(iou_token_out)[:, :1]
        if return_mask_token:
            return masks, iou, mask_token_out
        return masks, iou

    def encode_points(self, coords: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None = None):
        """Point/box prompts (pixel coordinates in the S x S padded frame) -> sparse K x T x C."""
        sparse, _ = self.prompt_encoder(points=(coords, labels), boxes=boxes, masks=None)
        return sparse
