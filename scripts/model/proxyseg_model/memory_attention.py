"""SAM 2 memory attention as one fixed-shape ONNX graph, with the proxy prompt as prompt memory.

SAM 2 (`sam2.modeling.memory_attention.MemoryAttention`) conditions the current frame's features
on a memory bank whose length changes from frame to frame, and rotates queries and keys with
complex numbers (RoPE). Neither exports to plain ONNX. This module runs the same layers, with
the same weights (the `sam2` package's own modules, called part by part), over a bank of fixed
size:

  - `frame_memory` K x M x Dm x h x w: M spatial memory slots (the memory encoder's output of
    earlier frames), each with a row of SAM 2's temporal encoding (`frame_tpos`, an index into
    `maskmem_tpos_enc`) and a validity flag (`frame_valid`); an empty slot is masked out of the
    attention, so the result equals SAM 2's over the valid slots alone;
  - `obj_ptrs` K x P x C: P object-pointer slots, each with its signed distance to the current
    frame divided by SAM 2's `t_diff_max` (`ptr_pos`) and a validity flag (`ptr_valid`);
  - `prompt_tokens` K x T x C: the PPG's proxy prompt, which enters memory attention "as prompt
    embeddings" (paper, Sec. 3.3). It is split into C / Dm tokens per prompt token, the way SAM 2
    splits an object pointer, and placed at temporal distance 0 (the frame being segmented).

RoPE is applied with its real form (cos / sin of the same angles). Pointer and prompt tokens are
not rotated, as in SAM 2 (`num_k_exclude_rope`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from sam2.modeling.sam2_utils import get_1d_sine_pe

# added to the attention logits of empty slots: exp() of it is exactly 0 in float32
MASKED = -1.0e9


def _rope_tables(attn, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of SAM 2's axial RoPE angles for an h x w grid: (h*w) x (head_dim / 2) each."""
    cis = attn.compute_cis(end_x=w, end_y=h)  # the module's own table (its dim and theta)
    return cis.real.contiguous(), cis.imag.contiguous()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates consecutive pairs of the last dim of x (B x H x N x D) by the angles (N x D/2)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def pointer_pos(s, pos: torch.Tensor) -> torch.Tensor:
    """SAM 2's temporal encoding of object pointers (`s`: SAM2Base): P normalised distances ->
    P x Dm. Used by the graph and by the PyTorch reference (sam2_track.py)."""
    if not s.add_tpos_enc_to_obj_ptrs:
        # zeros that still read `pos`, so the exported graph keeps its ptr_pos input
        return pos.unsqueeze(-1).expand(-1, s.mem_dim) * 0.0
    dim = s.hidden_dim if s.proj_tpos_enc_in_obj_ptrs else s.mem_dim
    return s.obj_ptr_tpos_proj(get_1d_sine_pe(pos, dim=dim))


class MemoryAttentionGraph(nn.Module):
    """image_embeddings, prompt_tokens, the memory bank's slots -> conditioned_embeddings.

    Arguments:
      sam2: a `sam2.modeling.sam2_base.SAM2Base` (eval mode).
      frame_slots: M, the spatial memory slots of the graph.
      pointer_slots: P, the object-pointer slots of the graph.
    """

    def __init__(self, sam2, frame_slots: int, pointer_slots: int):
        super().__init__()
        self.sam2 = sam2
        self.mem = sam2.memory_attention
        self.frame_slots = frame_slots
        self.pointer_slots = pointer_slots
        h = w = sam2.sam_image_embedding_size
        layer = self.mem.layers[0]
        sc, ss = _rope_tables(layer.self_attn, h, w)
        cc, cs = _rope_tables(layer.cross_attn_image, h, w)
        # persistent, so the export keeps one initializer each, shared by the layers (traced
        # non-persistent buffers become a constant per use: 340 MB at 1024 x 1024)
        self.register_buffer("sa_cos", sc)
        self.register_buffer("sa_sin", ss)
        self.register_buffer("ca_cos", cc)
        self.register_buffer("ca_sin", cs)

    def _attend(self, attn, q, k, v, bias, rope_q, rope_k, slots: int):
        q, k, v = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
        q = attn._separate_heads(q, attn.num_heads)
        k = attn._separate_heads(k, attn.num_heads)
        v = attn._separate_heads(v, attn.num_heads)
        q = _rotate(q, *rope_q)
        if slots == 0:
            k = _rotate(k, *rope_k)
        else:
            # the keys of the M spatial slots are rotated slot by slot with the same angles
            # (SAM 2's rope_k_repeat); pointer and prompt tokens after them are not rotated
            n_rope = slots * rope_k[0].shape[0]
            b, heads, _, d = k.shape
            spatial = _rotate(k[:, :, :n_rope].reshape(b, heads, slots, -1, d), *rope_k).flatten(2, 3)
            k = torch.cat([spatial, k[:, :, n_rope:]], dim=2)
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        if bias is not None:
            scores = scores + bias
        out = attn._recombine_heads(F.softmax(scores, dim=-1) @ v)
        return attn.out_proj(out)

    def forward(self, image_embeddings, prompt_tokens, frame_memory, frame_tpos, frame_valid,
                obj_ptrs, ptr_pos, ptr_valid):
        """Returns conditioned_embeddings K x C x h x w.

        Arguments:
          image_embeddings: 1 x C x h x w, the image encoder's top-level features.
          prompt_tokens: K x T x C, the proxy prompt of the series' first frame.
          frame_memory: K x M x Dm x h x w; frame_tpos: int64 M; frame_valid: float M (1 or 0).
          obj_ptrs: K x P x C; ptr_pos: float P; ptr_valid: float P (1 or 0).
        """
        s = self.sam2
        k_obj, c, h, w = prompt_tokens.shape[0], image_embeddings.shape[1], image_embeddings.shape[2], image_embeddings.shape[3]
        dm = s.mem_dim
        split = c // dm
        curr = image_embeddings.flatten(2).transpose(1, 2).expand(k_obj, -1, -1)  # K x HW x C
        curr_pos = s.image_encoder.neck.position_encoding(image_embeddings).flatten(2).transpose(1, 2)
        # spatial memory: slot-major tokens, with SAM 2's spatial sine encoding + temporal row
        mem_pos_sp = s.memory_encoder.position_encoding(frame_memory[:, 0])  # K x Dm x h x w (shape only)
        mem = frame_memory.flatten(3).transpose(2, 3)  # K x M x HW x Dm
        mpos = mem_pos_sp.flatten(2).transpose(1, 2).unsqueeze(1) + s.maskmem_tpos_enc[frame_tpos].reshape(1, -1, 1, dm)
        mem = mem.flatten(1, 2)
        mpos = mpos.expand(k_obj, -1, -1, -1).flatten(1, 2)
        # object pointers and the proxy prompt, each C-vector split into C / Dm tokens
        ptr_tok = obj_ptrs.reshape(k_obj, -1, dm)
        ptr_tpos = pointer_pos(s, ptr_pos).repeat_interleave(split, dim=0)  # P*split x Dm
        prompt_tok = prompt_tokens.reshape(k_obj, -1, dm)
        zero = ptr_pos.new_zeros(1)
        prompt_tpos = pointer_pos(s, zero).expand(prompt_tok.shape[1], -1)
        memory = torch.cat([mem, ptr_tok, prompt_tok], dim=1)
        memory_pos = torch.cat([mpos, ptr_tpos.unsqueeze(0).expand(k_obj, -1, -1),
                                prompt_tpos.unsqueeze(0).expand(k_obj, -1, -1)], dim=1)
        valid = torch.cat([frame_valid.repeat_interleave(h * w), ptr_valid.repeat_interleave(split),
                           torch.ones(prompt_tok.shape[1], dtype=frame_valid.dtype)])
        bias = ((1.0 - valid) * MASKED).reshape(1, 1, 1, -1)

        out = curr
        if self.mem.pos_enc_at_input:
            out = out + 0.1 * curr_pos
        sa_rope = (self.sa_cos, self.sa_sin)
        for layer in self.mem.layers:
            t = layer.norm1(out)
            q = t + curr_pos if layer.pos_enc_at_attn else t
            out = out + self._attend(layer.self_attn, q, q, t, None, sa_rope, sa_rope, 0)
            t = layer.norm2(out)
            q = t + curr_pos if layer.pos_enc_at_cross_attn_queries else t
            key = memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory
            ca_rope = (self.ca_cos, self.ca_sin)
            out = out + self._attend(layer.cross_attn_image, q, key, memory, bias, ca_rope, ca_rope,
                                     self.frame_slots)
            t = layer.norm3(out)
            out = out + layer.linear2(layer.activation(layer.linear1(t)))
        out = self.mem.norm(out)
        return out.transpose(1, 2).reshape(k_obj, c, h, w)
