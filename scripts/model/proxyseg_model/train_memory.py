"""Trains the bundled model's memory mode: LiteMemoryEncoder + LiteMemoryAttention on sequences.

LiteMedSAM and the PPG (lite-ppg4-lora since session 22: its decoder LoRA and the detail branch, which reads
each frame's model input from the cache) are frozen; only the two memory modules train (issue 15 item 3). The sequences are memory_data.py's training split: the 16
training-pool cases of each real data set moved by sequences.make_sequence, the ultrasound
phantom's cine loops and the MR phantom's volumes (seeds disjoint from the held-out ones), with
their image embeddings and PPG prompt tokens cached (memory_data.py). A step is one clip of one
sequence (a data set or phantom kind drawn uniformly, or as --group-weight says; 3 to 6 consecutive frames, or all 8, forwards
or backwards; one of its objects): frame 0 is decoded frame by frame and encoded into memory; every later frame runs
memory attention over the bank with the engine's slot policy (lite_track.frame_slots), the
frozen decoder, and the memory encoder on its (detached) logits. Loss: soft Dice + BCE of
frames 1.. against the truth.

  python -m proxyseg_model.memory_data --bundle ../../models/litemedsam-ppg   # the cache, once
  python -m proxyseg_model.train_memory --minutes 30 --out runs/litemem.pt
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import memory_data
from .lite_memory_attention import FRAME_SLOTS, LiteMemoryAttention
from .lite_memory_encoder import MEMORY_DIM, MEMORY_SIZE, LiteMemoryEncoder
from .litemedsam import PIXEL_MEAN, PIXEL_STD
from .lite_track import frame_slots
from .losses import dice_loss, upscale

RUNS = Path(__file__).resolve().parent.parent / "runs"
PPG_CHECKPOINT = RUNS / "lite-ppg4-lora.pt"
S = 256


@dataclass
class MemoryConfig:
    memory_dim: int = MEMORY_DIM
    memory_size: int = MEMORY_SIZE
    frame_slots: int = FRAME_SLOTS
    recent_frames: int = FRAME_SLOTS - 1
    heads: int = 4


def build_memory(cfg: MemoryConfig, seed: int = 0) -> tuple[LiteMemoryEncoder, LiteMemoryAttention]:
    torch.manual_seed(seed)
    return (LiteMemoryEncoder(dim=cfg.memory_dim, size=cfg.memory_size),
            LiteMemoryAttention(dim=cfg.memory_dim, size=cfg.memory_size, frame_slots=cfg.frame_slots, heads=cfg.heads))


def load_memory(path: Path) -> tuple[LiteMemoryEncoder, LiteMemoryAttention, dict]:
    """A train_memory checkpoint -> (encoder, attention, checkpoint dict), eval mode."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    enc, att = build_memory(MemoryConfig(**ck["config"]))
    enc.load_state_dict(ck["encoder"])
    att.load_state_dict(ck["attention"])
    return enc.eval(), att.eval(), ck


def save_memory(path: Path, cfg: MemoryConfig, enc, att, extra: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(cfg), "encoder": enc.state_dict(), "attention": att.state_dict(), "extra": extra}, tmp)
    tmp.replace(path)


def frozen_model(path: Path):
    """LiteMedSAM + PPG (+ decoder LoRA) from a train_lite checkpoint, frozen, eval mode."""
    from .train import load_checkpoint
    model, _ = load_checkpoint(path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def groups(kinds, cache: Path = memory_data.CACHE, model=None) -> dict:
    """Cached training sequences by group (real data set or phantom kind). With `model`, each
    kind's cache must hold that model's prompt tokens (`check_prompts`)."""
    out = {}
    for kind in kinds:
        seqs = memory_data.load("train", kind, cache)
        if model is not None:
            check_prompts(model, seqs, cache / f"train-{kind}.pt")
        for seq in seqs:
            out.setdefault(seq["group"], []).append(seq)
    return out


# the torch PPG against the ONNX graph's tokens from fp16 embeddings (~1e-4 apart); another
# PPG's tokens are ~1 away (memory_data.check_cache, session 23)
PROMPT_CHECK_TOL = 1e-2


def check_prompts(model, seqs: list, path: Path) -> None:
    """Refuses a training cache whose prompt tokens the frozen model's PPG did not make: the
    cache names no PPG, and memory modules trained on another PPG's tokens would be shipped
    beside this one. Frame 0 of the first sequence: its support pairs (memory_data's rule)
    through the torch image encoder and PPG, then the cached embeddings through the PPG."""
    from .preprocess import prepare_image, prepare_mask
    seq = seqs[0]
    displays, masks = memory_data.SupportContexts.pairs(memory_data.support_key("train", seq["group"], seq["name"]))
    size = model.img_size
    imgs = torch.from_numpy(np.stack([prepare_image(d, size, PIXEL_MEAN, PIXEL_STD)[0] for d in displays]))
    ms = torch.from_numpy(np.stack([np.stack([prepare_mask(x, size) for x in m]) for m in masks]).astype(np.float32))
    with torch.no_grad():
        keys, values = model.ppg.encode_support(imgs, ms, model.sam.encode(imgs))
        tokens = model.ppg.generate_prompts(seq["emb"][:1].float(), keys, values)
    diff = float((tokens - seq["prompts"][0].float()).abs().max())
    if diff > PROMPT_CHECK_TOL:
        raise SystemExit(f"{path}: its prompt tokens are not this PPG's (frame 0 of {seq['group']}/{seq['name']}: "
                         f"{diff:.3g} from the frozen model's, > {PROMPT_CHECK_TOL}): make a cache through this "
                         "PPG's bundle (memory_data --bundle <its export> --splits train --cache DIR, with "
                         "--prompts-from the old folder) and pass --cache DIR")


def group_weights(specs, names) -> dict:
    """How often each group is drawn relative to the others (`--group-weight mr-volume=3`;
    1 for groups not named)."""
    out = {n: 1.0 for n in names}
    for spec in specs or []:
        name, _, value = spec.partition("=")
        if name not in out or not value:
            raise SystemExit(f"--group-weight {spec}: expected GROUP=WEIGHT with GROUP one of {', '.join(names)}")
        out[name] = float(value)
    return out


def clip(rng, seq: dict, min_len: int, max_len: int, full: float = 0.15) -> list[int]:
    """Frame indices of a random clip: consecutive, forwards or backwards; min_len..max_len
    frames, or with probability `full` the whole sequence (so that every temporal row trains)."""
    n = seq["emb"].shape[0]
    length = n if rng.random() < full else int(rng.integers(min_len, min(max_len, n) + 1))
    start = int(rng.integers(0, n - length + 1))
    idx = list(range(start, start + length))
    return idx[::-1] if rng.random() < 0.5 else idx


def soft_change(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice between two K x H x W probability maps, per object (K)."""
    inter = (p * q).flatten(1).sum(1)
    return 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + q.flatten(1).sum(1) + 1)


def perturb_logits(logits: torch.Tensor, rng, max_scale: float = 0.3, max_shift: float = 0.08) -> torch.Tensor:
    """The mask a held-out frame 0 often gets: the same logits scaled about the object's
    centre by 1 +- up to `max_scale` and shifted by up to `max_shift` of the grid, per object
    (K x 1 x h x w). Banked in place of the real ones, it teaches the memory not to copy a
    wrong first mask forward (issue 15: on held-out cases the PPG's first mask is worse than
    on the training cases, and an undersized first fetal head shrank frame after frame)."""
    k = logits.shape[0]
    theta = torch.zeros(k, 2, 3)
    for i in range(k):
        fg = (logits[i, 0] > 0).nonzero().float()
        h, w = logits.shape[-2:]
        c = (fg.mean(0) / torch.tensor([h - 1, w - 1]) * 2 - 1) if len(fg) else torch.zeros(2)
        inv = 1.0 / (1.0 + float(rng.uniform(-max_scale, max_scale)))
        shift = torch.tensor(rng.uniform(-max_shift, max_shift, 2) * 2, dtype=torch.float32)
        cy, cx = float(c[0]), float(c[1])
        # output (x, y) samples input inv * (x - c - shift) + c: the object scaled by 1/inv about c, moved by shift
        theta[i] = torch.tensor([[inv, 0, cx - inv * (cx + float(shift[1]))],
                                 [0, inv, cy - inv * (cy + float(shift[0]))]])
    grid = F.affine_grid(theta, list(logits.shape), align_corners=True)
    return F.grid_sample(logits, grid, padding_mode="border", align_corners=True)


def run_clip(model, enc, att, seq: dict, idx: list[int], recent: int, bce: float, objects=None,
             consistency: float = 0.0, perturb: float = 0.0, rng=None):
    """Memory-mode forward over a clip -> (loss over frames 1.., per-frame logits).
    `objects`: the object indices to track (all by default). `consistency`: weight of a
    penalty on the change between consecutive predictions (frames 1..) beyond the truth's
    (the instability the issue measures, made soft). `perturb`: the probability that frame 0
    is banked from perturbed logits (`perturb_logits`)."""
    objects = list(range(seq["prompts"].shape[1])) if objects is None else objects
    emb = seq["emb"][idx].float()
    images = None
    if model.detail is not None:
        if "images" not in seq:
            raise SystemExit("the frozen model has a detail branch, which reads the frame, and this cache has no images: "
                             "python -m proxyseg_model.memory_data --bundle ../../models/litemedsam-ppg --splits train "
                             "--attach-images")
        images = seq["images"][idx].float()
    prompts = seq["prompts"][idx][:, objects].float()
    masks = seq["masks"][idx][:, objects].float()
    bank, losses, outs, prev = {}, [], [], None
    for t in range(len(idx)):
        pairs = frame_slots(t, recent, att.frame_slots)
        e = emb[t:t + 1]
        if pairs:
            mem = torch.stack([bank[f] for f, _ in pairs], 1)
            cond = att(e, mem, torch.tensor([r for _, r in pairs]), torch.ones(len(pairs)))
        else:
            cond = e
        logits, _ = model.decode(cond, prompts[t], None if images is None else images[t:t + 1])
        if pairs:
            up = upscale(logits, S)
            loss = dice_loss(up, masks[t])
            if bce:
                loss = loss + bce * F.binary_cross_entropy_with_logits(up, masks[t])
            p = torch.sigmoid(up)
            if consistency and prev is not None:
                excess = soft_change(p, prev) - soft_change(masks[t], masks[t - 1])
                loss = loss + consistency * F.relu(excess).mean()
            prev = p
            losses.append(loss)
        banked = logits.detach()
        if t == 0 and perturb and rng is not None and rng.random() < perturb:
            banked = perturb_logits(banked, rng)
        bank[t] = enc(e, banked)
        outs.append(logits.detach())
    return torch.stack(losses).mean(), outs


def train(a):
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    cfg = MemoryConfig(recent_frames=a.recent)
    model = frozen_model(a.ppg)
    enc, att = build_memory(cfg, a.seed)
    prior = {}
    if a.resume:
        enc, att, ck = load_memory(a.resume)
        prior = ck.get("extra", {})
    enc.train()
    att.train()
    data = groups(a.kinds, a.cache, model)
    names = sorted(data)
    weights = group_weights(a.group_weight, names)
    draw = np.array([weights[n] for n in names]) / sum(weights.values())
    params = list(enc.parameters()) + list(att.parameters())
    print(f"memory: trainable {sum(p.numel() for p in params) / 1e6:.3f} M; groups "
          + ", ".join(f"{g}={len(v)}" for g, v in data.items()), flush=True)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    t0, step, ema = time.time(), 0, {}
    budget = a.minutes * 60
    while time.time() - t0 < budget and (not a.steps or step < a.steps):
        frac = (time.time() - t0) / budget
        lr = a.lr * min(1.0, (step + 1) / 30) * (0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * 0.95 + 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        if a.round_robin:
            name = names[step % len(names)]
        elif len(set(weights.values())) == 1:  # uniform: the draw of the runs before --group-weight
            name = names[int(rng.integers(len(names)))]
        else:
            name = names[int(rng.choice(len(names), p=draw))]
        seqs = data[name]
        seq = seqs[int(rng.integers(len(seqs)))]
        # one object per clip: the decoder's backward dominates a step's cost
        obj = [int(rng.integers(seq["prompts"].shape[1]))]
        loss, _ = run_clip(model, enc, att, seq, clip(rng, seq, a.min_len, a.max_len), cfg.recent_frames, a.bce, obj,
                           a.consistency, a.perturb, rng)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema[name] = loss.item() if name not in ema else 0.9 * ema[name] + 0.1 * loss.item()
        step += 1
        if step % 20 == 0:
            print(f"step {step} lr {lr:.2e} {time.time() - t0:.0f}s loss(ema) "
                  + " ".join(f"{g}={v:.3f}" for g, v in sorted(ema.items())), flush=True)
        if step % a.save_every == 0:
            save_memory(a.out, cfg, enc, att, {"steps": step, "partial": True})
    info = {"steps": step, "seconds": round(time.time() - t0), "lr": a.lr, "bce": a.bce, "consistency": a.consistency, "perturb": a.perturb, "clip": [a.min_len, a.max_len],
            "kinds": list(a.kinds), "group_weights": dict(zip(names, draw.round(3).tolist())), "groups": {g: len(v) for g, v in data.items()}, "seed": a.seed,
            "ppg": a.ppg.name, "loss_ema": {g: round(v, 4) for g, v in ema.items()}}
    if a.resume:
        info.update({"resumed_from": str(a.resume), "prior": {k: prior.get(k) for k in ("steps", "seconds", "kinds")},
                     "total_steps": step + int(prior.get("total_steps", prior.get("steps", 0)))})
    save_memory(a.out, cfg, enc.eval(), att.eval(), info)
    print("done " + json.dumps(info), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ppg", type=Path, default=PPG_CHECKPOINT, help="the frozen train_lite checkpoint")
    ap.add_argument("--kinds", nargs="+", default=list(memory_data.KINDS))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bce", type=float, default=0.5)
    ap.add_argument("--consistency", type=float, default=0.0,
                    help="weight of the penalty on consecutive predictions changing more than the truth")
    ap.add_argument("--perturb", type=float, default=0.0,
                    help="probability that frame 0 is banked from scaled / shifted logits (robustness to a wrong first mask)")
    ap.add_argument("--recent", type=int, default=FRAME_SLOTS - 1)
    ap.add_argument("--min-len", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=6)
    ap.add_argument("--round-robin", action="store_true")
    ap.add_argument("--group-weight", nargs="*", default=[], metavar="GROUP=W",
                    help="draw GROUP W times as often as a group not named (default 1 each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--resume", type=Path)
    ap.add_argument("--cache", type=Path, default=memory_data.CACHE,
                    help="the training sequences' cache folder (memory_data --cache); its prompt tokens must be "
                         "the --ppg checkpoint's")
    ap.add_argument("--out", type=Path, default=RUNS / "litemem.pt")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    train(a)


if __name__ == "__main__":
    main()
