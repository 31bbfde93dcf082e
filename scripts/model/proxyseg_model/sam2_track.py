"""The memory frame loop of contract 2: SAM 2 tracking, prompted by the proxy prompt.

Per series and object set (docs/bundles.md, "Contract 2"):
  frame 0   image_encoder -> prompt_generator (the proxy prompt, kept for the whole series)
            -> memory_attention over the prompt alone -> mask_decoder -> memory_encoder;
            frame 0 becomes the conditioning frame (SAM 2's prompted frame).
  frame t   memory_attention over: the prompt, frame 0's memory (SAM 2's conditioning slot),
            the memories of the last `recent` frames, and the object pointers of frame 0 and
            of the last P - 1 frames -> mask_decoder -> memory_encoder.

`slots()` is the bank policy, shared by the PyTorch reference (SAM 2's own modules, variable-
length memory) and the ONNX loop (fixed slots); the Rust engine (src/engine/memory.rs)
implements the same policy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .memory_attention import pointer_pos


@dataclass
class Slots:
    """What frame t attends to. `frames`: (frame index, maskmem_tpos_enc row), conditioning
    frame first; `pointers`: (frame index, signed distance / t_diff_max)."""
    frames: list
    pointers: list


def slots(t: int, num_frames: int, recent: int, num_maskmem: int, max_ptrs: int) -> Slots:
    """SAM 2's memory selection (memory_temporal_stride_for_eval = 1, past pointers only) with
    frame 0 as the conditioning frame. `recent` <= num_maskmem - 1 frames of spatial memory."""
    if t == 0:
        return Slots([], [])
    frames = [(0, num_maskmem - 1)]
    for age in range(recent, 0, -1):  # oldest first, as SAM 2 concatenates them
        f = t - age
        if f >= 1:
            frames.append((f, age - 1))
    n_ptr = min(num_frames, max_ptrs)
    t_diff_max = max(n_ptr - 1, 1)
    pointers = [(0, t / t_diff_max)]
    for d in range(1, n_ptr):
        f = t - d
        if f < 0:
            break
        if f >= 1:
            pointers.append((f, d / t_diff_max))
    return Slots(frames, pointers)


def _split_tokens(vectors: torch.Tensor, pos: torch.Tensor, mem_dim: int):
    """SAM 2's split of C-vectors (P x K x C) into C / mem_dim memory tokens, with their pos."""
    p, k, c = vectors.shape
    toks = vectors.reshape(p, k, c // mem_dim, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
    return toks, pos.unsqueeze(1).expand(-1, k, mem_dim).repeat_interleave(c // mem_dim, dim=0)


@torch.no_grad()
def track_reference(s, ppg, frames, support_images, support_masks, recent: int):
    """PyTorch reference: SAM 2's own modules (complex RoPE, memory of varying length).

    Arguments:
      s: SAM2Base; ppg: ProxyPromptGenerator on SAM 2's top-level embeddings.
      frames: F x 3 x S x S preprocessed; support_images N x 3 x S x S; support_masks N x K x S x S.
    Returns: list of dicts per frame (mask_logits K x 1 x 4h x 4w, iou_scores, obj_ptr,
      object_score_logits, prompt_tokens on frame 0).
    """
    sup = [s._prepare_backbone_features(s.forward_image(x[None]))[1][-1] for x in support_images]
    c, h = s.hidden_dim, s.sam_image_embedding_size
    sup_emb = torch.cat([f.permute(1, 2, 0).reshape(1, c, h, h) for f in sup])
    keys, values = ppg.encode_support(support_images, support_masks, sup_emb)
    bank, outs, prompt = {}, [], None
    n = frames.shape[0]
    for t in range(n):
        _, feats, pos, _ = s._prepare_backbone_features(s.forward_image(frames[t:t + 1]))
        emb = feats[-1].permute(1, 2, 0).reshape(1, c, h, h)
        if t == 0:
            prompt = ppg.generate_prompts(emb, keys, values)
        k = prompt.shape[0]
        sl = slots(t, n, recent, s.num_maskmem, s.max_obj_ptrs_in_encoder)
        mem, mpos = [], []
        for f, row in sl.frames:
            mem.append(bank[f]["memory"].flatten(2).permute(2, 0, 1))
            mpos.append(bank[f]["memory_pos"].flatten(2).permute(2, 0, 1) + s.maskmem_tpos_enc[row])
        n_excluded = 0
        if sl.pointers:
            ptrs = torch.stack([bank[f]["obj_ptr"] for f, _ in sl.pointers])
            tok, tpos = _split_tokens(ptrs, pointer_pos(s, torch.tensor([p for _, p in sl.pointers])), s.mem_dim)
            mem.append(tok)
            mpos.append(tpos)
            n_excluded += tok.shape[0]
        tok, tpos = _split_tokens(prompt.transpose(0, 1), pointer_pos(s, torch.zeros(prompt.shape[1])), s.mem_dim)
        mem.append(tok)
        mpos.append(tpos)
        n_excluded += tok.shape[0]
        curr = feats[-1].expand(-1, k, -1)
        pix = s.memory_attention(curr=[curr], curr_pos=[pos[-1].expand(-1, k, -1)], memory=torch.cat(mem),
                                 memory_pos=torch.cat(mpos), num_obj_ptr_tokens=n_excluded)
        pix = pix.permute(1, 2, 0).reshape(k, c, h, h)
        high = [x.permute(1, 2, 0).reshape(1, x.shape[2], *sz).expand(k, -1, -1, -1)
                for x, sz in zip(feats[:-1], [(4 * h, 4 * h), (2 * h, 2 * h)])]
        multimask = bool(s._use_multimask(False, None))
        _, _, ious, low, high_masks, obj_ptr, score = s._forward_sam_heads(pix, None, None, high, multimask)
        memory, memory_pos = s._encode_new_memory([curr], [(h, h)], high_masks, score, False)
        bank[t] = {"memory": memory, "memory_pos": memory_pos[-1], "obj_ptr": obj_ptr}
        outs.append({"mask_logits": low, "iou_scores": ious.max(-1, keepdim=True).values if multimask else ious,
                     "obj_ptr": obj_ptr, "object_score_logits": score})
        if t == 0:
            outs[0]["prompt_tokens"] = prompt
    return outs


def track_onnx(sessions: dict, frames: np.ndarray, support_images: np.ndarray, support_masks: np.ndarray,
               recent: int, num_maskmem: int, max_ptrs: int) -> list:
    """The same loop over the exported graphs (ONNX Runtime), with the fixed-slot bank the Rust
    engine keeps. `sessions`: graph name -> onnxruntime.InferenceSession."""
    enc = sessions["image_encoder"]
    sup = [enc.run(None, {"image": x[None]})[0] for x in support_images]
    keys, values = sessions["support_encoder"].run(None, {
        "support_images": support_images, "support_masks": support_masks,
        "support_embeddings": np.concatenate(sup)})
    ma = sessions["memory_attention"]
    m_slots = ma.get_inputs()[2].shape[1]
    p_slots = ma.get_inputs()[5].shape[1]
    bank, outs, prompt = {}, [], None
    n = frames.shape[0]
    for t in range(n):
        emb, hr0, hr1 = enc.run(None, {"image": frames[t:t + 1]})
        if t == 0:
            prompt = sessions["prompt_generator"].run(None, {
                "image_embeddings": emb, "support_keys": keys, "support_values": values})[0]
        k, c = prompt.shape[0], prompt.shape[2]
        sl = slots(t, n, recent, num_maskmem, max_ptrs)
        fm = np.zeros((k, m_slots, *ma.get_inputs()[2].shape[2:]), np.float32)
        ftpos = np.zeros(m_slots, np.int64)
        fvalid = np.zeros(m_slots, np.float32)
        for i, (f, row) in enumerate(sl.frames):
            fm[:, i], ftpos[i], fvalid[i] = bank[f]["memory"], row, 1.0
        ptrs = np.zeros((k, p_slots, c), np.float32)
        ppos = np.zeros(p_slots, np.float32)
        pvalid = np.zeros(p_slots, np.float32)
        for i, (f, p) in enumerate(sl.pointers):
            ptrs[:, i], ppos[i], pvalid[i] = bank[f]["obj_ptr"], p, 1.0
        cond = ma.run(None, {"image_embeddings": emb, "prompt_tokens": prompt, "frame_memory": fm,
                             "frame_tpos": ftpos, "frame_valid": fvalid, "obj_ptrs": ptrs, "ptr_pos": ppos,
                             "ptr_valid": pvalid})[0]
        logits, iou, obj_ptr, score = sessions["mask_decoder"].run(None, {
            "conditioned_embeddings": cond, "high_res_feats_0": hr0, "high_res_feats_1": hr1})
        memory = sessions["memory_encoder"].run(None, {
            "image_embeddings": emb, "mask_logits": logits, "object_score_logits": score})[0]
        bank[t] = {"memory": memory, "obj_ptr": obj_ptr}
        for old in [f for f in bank if 0 < f < t - max(recent, max_ptrs)]:
            del bank[old]  # bounded: frame 0 and the frames the next slots can name
        outs.append({"mask_logits": logits, "iou_scores": iou, "obj_ptr": obj_ptr, "object_score_logits": score})
        if t == 0:
            outs[0]["prompt_tokens"] = prompt
    return outs
