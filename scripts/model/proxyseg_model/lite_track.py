"""The memory frame loop of the bundled model (LiteMedSAM + PPG, contract 1 + [memory]).

Per sequence and object set (scripts/model/README.md, "Memory mode of the bundled model"):
  frame t   image_encoder -> image_embeddings (raw)
            prompt_generator(raw embeddings, support context) -> prompt_tokens K x T x C
            memory_attention(raw embeddings, the bank's slots) -> conditioned K x C x h x w
            mask_decoder(conditioned[k], prompt_tokens[k]) for each object k -> mask_logits
            memory_encoder(raw embeddings, mask_logits K x 1 x 4h x 4w) -> frame_memory, banked
Frame 0 attends to no slot (its result equals the model frame by frame); frame t > 0 to frame
0's memory (temporal row M-1) and to the last `recent` frames' (row age-1), SAM 2's policy
(`sam2_track.slots`, the same function the SAM 2 loop uses; the Rust engine's
src/engine/memory/ implements it).
"""
from __future__ import annotations

import numpy as np
import torch

from .sam2_track import slots


def frame_slots(t: int, recent: int, m: int) -> list:
    """(frame index, temporal row) pairs that frame t attends to: frame 0 at row M-1, then the
    last `recent` frames (t-age at row age-1), oldest first; [] for frame 0."""
    return slots(t, t + 1, recent, m, 1).frames


def fill_bank(bank: dict, pairs: list, m: int, like):
    """The fixed-slot inputs: frame_memory K x M x Dm x hm x wm (zeros in empty slots),
    frame_tpos int64 M, frame_valid float32 M. Works on numpy arrays and torch tensors."""
    if isinstance(like, torch.Tensor):
        mem = like.new_zeros((like.shape[0], m) + tuple(like.shape[1:]))
        tpos, valid = torch.zeros(m, dtype=torch.int64), torch.zeros(m)
    else:
        mem = np.zeros((like.shape[0], m) + like.shape[1:], np.float32)
        tpos, valid = np.zeros(m, np.int64), np.zeros(m, np.float32)
    for i, (f, row) in enumerate(pairs):
        mem[:, i] = bank[f]
        tpos[i], valid[i] = row, 1
    return mem, tpos, valid


def prune(bank: dict, t: int, recent: int) -> None:
    """Keeps frame 0 and the frames the next frame's slots can name."""
    for old in [f for f in bank if 0 < f <= t - recent]:
        del bank[old]


@torch.no_grad()
def track_reference(model, encoder, attention, frames, support_images, support_masks, recent: int) -> list:
    """PyTorch reference: LiteMedSAM + PPG (ProxyPromptSAM) and the memory modules; the bank
    holds only valid memories (no fixed slots), frame 0 skips memory attention.

    frames F x 3 x S x S, support_images N x 3 x S x S, support_masks N x K x S x S (torch).
    Returns per frame: mask_logits K x 1 x 4h x 4w (numpy)."""
    sup = model.sam.encode(support_images)
    keys, values = model.ppg.encode_support(support_images, support_masks, sup)
    bank, outs = {}, []
    for t in range(frames.shape[0]):
        emb = model.sam.encode(frames[t:t + 1])
        prompt = model.ppg.generate_prompts(emb, keys, values)
        pairs = frame_slots(t, recent, attention.frame_slots)
        if pairs:
            mem = torch.stack([bank[f] for f, _ in pairs], 1)
            cond = attention(emb, mem, torch.tensor([r for _, r in pairs]), torch.ones(len(pairs)))
        else:
            cond = emb
        logits, _ = model.sam.decode(cond, prompt)
        bank[t] = encoder(emb, logits)
        prune(bank, t, recent)
        outs.append(logits.numpy())
    return outs


class OrtMemoryLoop:
    """The loop over the bundle's ONNX graphs (ONNX Runtime): what the Rust engine runs.
    `sessions`: graph name -> InferenceSession; `m` = M, `recent` from the manifest."""

    def __init__(self, sessions: dict, m: int, recent: int):
        self.s, self.m, self.recent = sessions, m, recent
        self.memory_shape = tuple(int(x) for x in sessions["memory_encoder"].get_outputs()[0].shape[1:])

    def support(self, support_images: np.ndarray, support_masks: np.ndarray) -> dict:
        enc = self.s["image_encoder"]
        emb = np.concatenate([enc.run(None, {"image": x[None]})[0] for x in support_images])
        keys, values = self.s["support_encoder"].run(None, {
            "support_images": support_images, "support_masks": support_masks, "support_embeddings": emb})
        return {"support_keys": keys, "support_values": values}

    def prompts(self, emb: np.ndarray, ctx: dict) -> np.ndarray:
        return self.s["prompt_generator"].run(None, {"image_embeddings": emb, "support_keys": ctx["support_keys"],
                                                     "support_values": ctx["support_values"]})[0]

    def step(self, t: int, emb: np.ndarray, prompt: np.ndarray, bank: dict, memory: bool = True) -> np.ndarray:
        """One frame from its raw embeddings and prompt tokens -> mask_logits K x 1 x 4h x 4w;
        banks its memory. `memory=False`: the frame-by-frame path (decoder on the raw embeddings)."""
        k = prompt.shape[0]
        if memory:
            mem, tpos, valid = fill_bank(bank, frame_slots(t, self.recent, self.m), self.m,
                                         np.zeros((k,) + self.memory_shape, np.float32))
            cond = self.s["memory_attention"].run(None, {"image_embeddings": emb, "frame_memory": mem,
                                                         "frame_tpos": tpos, "frame_valid": valid})[0]
        else:
            cond = np.repeat(emb, k, 0)
        dec = self.s["mask_decoder"]
        logits = np.concatenate([dec.run(None, {"image_embeddings": cond[i:i + 1], "prompt_tokens": prompt[i:i + 1]})[0]
                                 for i in range(k)])
        if memory:
            bank[t] = self.s["memory_encoder"].run(None, {"image_embeddings": emb, "mask_logits": logits})[0]
            prune(bank, t, self.recent)
        return logits

    def track(self, frames: np.ndarray, ctx: dict, memory: bool = True) -> list:
        """frames F x 3 x S x S -> per frame mask_logits K x 1 x 4h x 4w."""
        bank, outs = {}, []
        for t in range(frames.shape[0]):
            emb = self.s["image_encoder"].run(None, {"image": frames[t:t + 1]})[0]
            outs.append(self.step(t, emb, self.prompts(emb, ctx), bank, memory))
        return outs
