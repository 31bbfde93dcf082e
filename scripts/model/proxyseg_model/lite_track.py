"""The memory frame loop of the bundled model (LiteMedSAM + PPG, contract 1 + [memory]).

Per sequence and object set (scripts/model/README.md, "Memory mode of the bundled model"):
  frame t   image_encoder -> image_embeddings (raw)
            prompt_generator(raw embeddings, support context) -> prompt_tokens K x T x C
            memory_attention(raw embeddings, the bank's slots) -> conditioned K x C x h x w
            mask_decoder(conditioned[k], prompt_tokens[k]) for each object k -> mask_logits
            memory_encoder(raw embeddings, mask_logits K x 1 x 4h x 4w) -> frame_memory, banked
Frame 0 attends to no slot (its first pass equals the model frame by frame); frame t > 0 to
frame 0's memory (temporal row M-1) and to the last `recent` frames' (row age-1), SAM 2's policy
(`sam2_track.slots`, the same function the SAM 2 loop uses; the Rust engine's
src/engine/memory/ implements it).

Revisit (`[memory] revisit_first`): frame 0 has no memory to lean on, so its mask is the
model's frame-by-frame one, which on a hard first frame is far worse than the tracked frames
after it (held-out MR volumes: frame 0 Dice 0.23, frames 1.. 0.97), and the jump from it to
frame 1 is most of the sequence's instability. Once frame r = min(recent, F - 1) is banked,
frame 0 is decoded again, attending to its own memory (row M-1) and to frames 1..r at row
f - 1 (their distance from frame 0, as a backwards clip presents them in training); that mask
replaces frame 0's. The bank is not changed: frames after r see the first-pass memory of
frame 0, exactly as without the revisit.
"""
from __future__ import annotations

import numpy as np
import torch

from .sam2_track import slots


def frame_slots(t: int, recent: int, m: int) -> list:
    """(frame index, temporal row) pairs that frame t attends to: frame 0 at row M-1, then the
    last `recent` frames (t-age at row age-1), oldest first; [] for frame 0."""
    return slots(t, t + 1, recent, m, 1).frames


def revisit_frame(num_frames: int, recent: int) -> int | None:
    """The frame after which frame 0 is revisited: min(recent, F - 1); None for one frame."""
    r = min(recent, num_frames - 1)
    return r if r >= 1 else None


def revisit_slots(r: int, m: int) -> list:
    """(frame index, temporal row) pairs of frame 0's revisit after frame r: frame 0 itself at
    row M-1, then frames r..1 at row f-1 (farthest first, as `frame_slots` orders them)."""
    return [(0, m - 1)] + [(f, f - 1) for f in range(r, 0, -1)]


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
def track_reference(model, encoder, attention, frames, support_images, support_masks, recent: int,
                    revisit: bool = False) -> list:
    """PyTorch reference: LiteMedSAM + PPG (ProxyPromptSAM) and the memory modules; the bank
    holds only valid memories (no fixed slots), frame 0 skips memory attention; `revisit`:
    frame 0 decoded again after frame `revisit_frame` (module docstring).

    frames F x 3 x S x S, support_images N x 3 x S x S, support_masks N x K x S x S (torch).
    Returns per frame: mask_logits K x 1 x 4h x 4w (numpy), frame 0's the revisited ones."""
    sup = model.sam.encode(support_images)
    keys, values = model.ppg.encode_support(support_images, support_masks, sup)
    bank, outs, first = {}, [], None
    r = revisit_frame(frames.shape[0], recent) if revisit else None

    def attend(emb, pairs):
        mem = torch.stack([bank[f] for f, _ in pairs], 1)
        return attention(emb, mem, torch.tensor([row for _, row in pairs]), torch.ones(len(pairs)))
    for t in range(frames.shape[0]):
        image = frames[t:t + 1]
        emb = model.sam.encode(image)
        prompt = model.ppg.generate_prompts(emb, keys, values)
        pairs = frame_slots(t, recent, attention.frame_slots)
        cond = attend(emb, pairs) if pairs else emb
        logits, _ = model.decode(cond, prompt, image)
        bank[t] = encoder(emb, logits)
        if t == 0:
            first = (emb, prompt, image)
        if t == r:
            outs[0] = model.decode(attend(first[0], revisit_slots(r, attention.frame_slots)), first[1],
                                   first[2])[0].numpy()
        prune(bank, t, recent)
        outs.append(logits.numpy())
    return outs


class OrtMemoryLoop:
    """The loop over the bundle's ONNX graphs (ONNX Runtime): what the Rust engine runs.
    `sessions`: graph name -> InferenceSession; `m` = M, `recent` and `revisit` (revisit_first)
    from the manifest's [memory]."""

    def __init__(self, sessions: dict, m: int, recent: int, revisit: bool = False):
        self.s, self.m, self.recent, self.revisit = sessions, m, recent, revisit
        self.memory_shape = tuple(int(x) for x in sessions["memory_encoder"].get_outputs()[0].shape[1:])
        self.decoder_image = "image" in [i.name for i in sessions["mask_decoder"].get_inputs()]

    @classmethod
    def of_manifest(cls, sessions: dict, memory: dict) -> "OrtMemoryLoop":
        """The loop a bundle's [memory] table describes."""
        return cls(sessions, memory["frame_slots"], memory["recent_frames"], bool(memory.get("revisit_first", False)))

    def support(self, support_images: np.ndarray, support_masks: np.ndarray) -> dict:
        enc = self.s["image_encoder"]
        emb = np.concatenate([enc.run(None, {"image": x[None]})[0] for x in support_images])
        keys, values = self.s["support_encoder"].run(None, {
            "support_images": support_images, "support_masks": support_masks, "support_embeddings": emb})
        return {"support_keys": keys, "support_values": values}

    def prompts(self, emb: np.ndarray, ctx: dict) -> np.ndarray:
        return self.s["prompt_generator"].run(None, {"image_embeddings": emb, "support_keys": ctx["support_keys"],
                                                     "support_values": ctx["support_values"]})[0]

    def decode(self, emb: np.ndarray, prompt: np.ndarray, bank: dict, pairs: list | None,
               image: np.ndarray | None = None) -> np.ndarray:
        """memory_attention over `pairs` of `bank` (None: the raw embeddings, frame by frame),
        then mask_decoder per object -> mask_logits K x 1 x 4h x 4w. `image` (1 x 3 x S x S):
        the frame, for a decoder with a detail branch (its graph takes `image`)."""
        k = prompt.shape[0]
        if pairs is None:
            cond = np.repeat(emb, k, 0)
        else:
            mem, tpos, valid = fill_bank(bank, pairs, self.m, np.zeros((k,) + self.memory_shape, np.float32))
            cond = self.s["memory_attention"].run(None, {"image_embeddings": emb, "frame_memory": mem,
                                                         "frame_tpos": tpos, "frame_valid": valid})[0]
        dec = self.s["mask_decoder"]
        feeds = [{"image_embeddings": cond[i:i + 1], "prompt_tokens": prompt[i:i + 1]} for i in range(k)]
        if self.decoder_image:
            if image is None:
                raise ValueError("this bundle's mask_decoder takes the image: the frame callback must give it")
            for f in feeds:
                f["image"] = image.astype(np.float32)
        return np.concatenate([dec.run(None, f)[0] for f in feeds])

    def step(self, t: int, emb: np.ndarray, prompt: np.ndarray, bank: dict, memory: bool = True,
             image: np.ndarray | None = None) -> np.ndarray:
        """One frame from its raw embeddings and prompt tokens (and image, see `decode`) -> mask_logits
        K x 1 x 4h x 4w; banks its memory. `memory=False`: the frame-by-frame path (decoder on the raw
        embeddings)."""
        logits = self.decode(emb, prompt, bank, frame_slots(t, self.recent, self.m) if memory else None, image)
        if memory:
            bank[t] = self.s["memory_encoder"].run(None, {"image_embeddings": emb, "mask_logits": logits})[0]
            prune(bank, t, self.recent)
        return logits

    def run(self, num_frames: int, frame, memory: bool = True) -> list:
        """The sequence loop: `frame(t)` -> (raw embeddings, prompt tokens, image or None) of frame
        t; returns per frame mask_logits K x 1 x 4h x 4w, frame 0's revisited when the loop revisits."""
        bank, outs, first = {}, [], None
        r = revisit_frame(num_frames, self.recent) if memory and self.revisit else None
        for t in range(num_frames):
            emb, prompt, image = frame(t)
            if t == 0:
                first = (emb, prompt, image)
            outs.append(self.step(t, emb, prompt, bank, memory, image))
            if t == r:
                outs[0] = self.decode(first[0], first[1], bank, revisit_slots(r, self.m), first[2])
        return outs

    def track(self, frames: np.ndarray, ctx: dict, memory: bool = True) -> list:
        """frames F x 3 x S x S -> per frame mask_logits K x 1 x 4h x 4w."""
        def frame(t):
            emb = self.s["image_encoder"].run(None, {"image": frames[t:t + 1]})[0]
            return emb, self.prompts(emb, ctx), frames[t:t + 1]
        return self.run(frames.shape[0], frame, memory)
