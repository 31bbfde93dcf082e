"""Training: tiny-SAM pretraining on phantoms, then few-shot PPG (+ LoRA) training.

Phases
  pretrain  (phantom-tiny only) SAM image encoder + prompt encoder + mask decoder trained
            FROM SCRATCH on a larger phantom corpus with point/box prompts (SAM-style,
            Dice + BCE, AdamW). No real SAM weights exist on this machine; this stands in
            for them.
  ppg       SAM frozen; LoRA on encoder and decoder; PPG trained from scratch on 16 pairs
            per task with episodes: one target, 1-2 support pairs from the other training
            images, K objects with a varying subset/order of masks given (paper 7.1).
            Dice loss; SGD lr 0.01, momentum 0.9, weight decay 5e-4 (paper 4.1).
  real      --sam-checkpoint sam_vit_b_01ec64.pth (vit_b/vit_l/vit_h): same as `ppg` on a
            user's own pairs (a support-set folder of DICOM image + SEG pairs).

Examples
  python -m proxyseg_model.train pretrain --minutes 25 --out runs/pretrain.pt
  python -m proxyseg_model.train ppg --init runs/pretrain.pt --minutes 20 --out runs/ppg.pt
  python -m proxyseg_model.train ppg --init runs/pretrain.pt --no-selective-map --out runs/ppg-no-map.pt
  python -m proxyseg_model.train real --model vit_b --sam-checkpoint sam_vit_b_01ec64.pth \
      --data my-support-set/ --steps 2000 --out runs/ppg-vit_b.pt
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from .build import build
from .lora import add_lora, has_lora
from .losses import dice_loss, upscale

RUNS = Path(__file__).resolve().parent.parent / "runs"


def log(msg: str, fh=None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


# ------------------------------------------------------------------------------ checkpoints

def save_checkpoint(model, path: Path, extra: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config_dict(), "lora": has_lora(model.sam),
                "lora_encoder": has_lora(model.sam.image_encoder), "state": model.state_dict(),
                "extra": extra or {}}, path)


def upgrade_state(state: dict) -> dict:
    """State dicts of runs from before a buffer was split (box corners: one 2 x C buffer)."""
    old = state.pop("ppg.box_corner_embed", None)
    if old is not None:
        state["ppg.box_corner_tl"], state["ppg.box_corner_br"] = old[:1].clone(), old[1:].clone()
    return state


def load_checkpoint(path: Path, lora_rank: int = 4):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = build_from_config(cfg)
    if ck["lora"]:
        add_lora(model.sam, rank=lora_rank, encoder=ck.get("lora_encoder", True))
    model.load_state_dict(upgrade_state(ck["state"]))
    return model, ck


def load_sam_weights(model, path) -> dict:
    """Loads the SAM part of a checkpoint (pretrain or PPG) into `model.sam`; returns its extra info."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.sam.load_state_dict({k[4:]: v for k, v in ck["state"].items() if k.startswith("sam.")})
    return ck["extra"]


def build_from_config(cfg: dict):
    from .ppg import PPGConfig, ProxyPromptSAM, SAMConfig
    ppg = dict(cfg["ppg"])
    ppg.setdefault("bridge_mask", False)  # checkpoints from before these options
    ppg.setdefault("mask_readout", False)
    ppg.setdefault("key_pos", False)
    ppg.setdefault("box_tokens", False)
    return ProxyPromptSAM(SAMConfig(**cfg["sam"]), PPGConfig(**ppg), name=cfg["name"],
                          backbone=cfg.get("backbone", "sam"), detail=cfg.get("detail", False))


# ------------------------------------------------------------------------------ pretraining

def _prompts(rng, masks: torch.Tensor, kind: str, S: int, max_points: int = 3):
    """Random SAM prompts from masks (B x S x S): points (B x P x 2, labels B x P) or boxes B x 4.

    Points: 1..max_points positives inside the mask plus one negative outside it (SAM trains
    with up to 11 points; several points disambiguate branching structures such as vessels).
    """
    b = masks.shape[0]
    if kind == "box":
        boxes = []
        for m in masks:
            ys, xs = torch.nonzero(m, as_tuple=True)
            y0, y1, x0, x1 = ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()
            j = rng.normal(0, 0.05 * max(y1 - y0, x1 - x0, 8), 4)
            boxes.append([x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3]])
        return None, None, torch.tensor(boxes, dtype=torch.float32).clamp(0, S - 1)
    npos = int(rng.integers(1, max_points + 1))
    coords, labels = [], []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        idx = rng.integers(0, len(ys), npos)
        pts = [[xs[i].item() + 0.5, ys[i].item() + 0.5] for i in idx]
        lab = [1] * npos
        bys, bxs = torch.nonzero(m == 0, as_tuple=True)
        i = int(rng.integers(0, len(bys)))
        pts.append([bxs[i].item() + 0.5, bys[i].item() + 0.5])
        lab.append(0)
        coords.append(pts)
        labels.append(lab)
    return torch.tensor(coords, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64), None


def pretrain(args):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build(args.model)
    S = model.img_size
    fh = open(args.log, "a") if args.log else None
    prior = {}
    if args.init:  # continued pretraining
        prior = load_sam_weights(model, args.init)
        log(f"pretrain: continuing from {args.init} ({prior})", fh)
    log(f"pretrain {args.model}: building phantom corpus, {args.pretrain_per_family} per family", fh)
    corp = {f: data.corpus(f, range(data.PRETRAIN, data.PRETRAIN + args.pretrain_per_family), S, RUNS / "cache")
            for f in data.FAMILIES}
    items = [(f, i, k) for f in data.FAMILIES for i in range(len(corp[f]["images"]))
             for k in range(corp[f]["masks"].shape[1]) if corp[f]["masks"][i, k].sum() > 4]
    weights = dict(w.split("=") for w in args.object_weight)  # e.g. vessels=3
    prob = np.array([float(weights.get(data.objects(f)[k], 1.0)) for f, _, k in items])
    prob /= prob.sum()
    sam = model.sam
    params = [p for p in sam.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr or 4e-4, weight_decay=0.01)
    t0 = time.time()
    steps = args.steps or 10 ** 9
    pbar = tqdm(total=args.steps or None, desc="pretrain", file=sys.stderr, mininterval=5)
    step, ema = 0, None
    while step < steps and (time.time() - t0) < args.minutes * 60:
        pick = rng.choice(len(items), args.batch, replace=False, p=prob)
        imgs = torch.stack([corp[items[j][0]]["images"][items[j][1]] for j in pick])
        masks = torch.stack([corp[items[j][0]]["masks"][items[j][1], items[j][2]] for j in pick])
        kind = "box" if rng.random() < 0.4 else "points"
        coords, labels, boxes = _prompts(rng, masks, kind, S, args.max_points)
        warm = min(1.0, (step + 1) / 100)
        # cosine decay to 10 % over the step or time budget (whichever ends first)
        frac = min(1.0, max(step / steps if args.steps else 0, (time.time() - t0) / (args.minutes * 60)))
        decay = 0.5 * (1 + math.cos(math.pi * frac)) * 0.9 + 0.1 if args.cosine else 1.0
        for g in opt.param_groups:
            g["lr"] = (args.lr or 4e-4) * warm * decay
        emb = sam.encode(imgs)
        sparse, _ = sam.prompt_encoder(points=(coords, labels) if coords is not None else None, boxes=boxes, masks=None)
        logits, _ = sam.decode(emb, sparse)
        up = upscale(logits, S)
        loss = dice_loss(up, masks) + F.binary_cross_entropy_with_logits(up, masks)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        pbar.update(1)
        pbar.set_postfix(loss=f"{ema:.3f}")
        if step % 50 == 0:
            log(f"pretrain step {step} loss(ema) {ema:.4f} elapsed {time.time() - t0:.0f}s", fh)
        if step % 500 == 0:
            save_checkpoint(model, Path(args.out), {"phase": "pretrain", "steps": step})
    pbar.close()
    save_checkpoint(model, Path(args.out), {"phase": "pretrain", "steps": step, "seconds": time.time() - t0,
                                            "per_family": args.pretrain_per_family, "init": str(args.init or ""),
                                            "object_weight": args.object_weight, "max_points": args.max_points,
                                            "prior": prior})
    log(f"pretrain done: {step} steps in {time.time() - t0:.0f}s -> {args.out}", fh)


# ------------------------------------------------------------------------------ PPG few-shot

def episode(rng, corp: dict, max_support: int, vary_objects: bool = True):
    """One training episode from a family's training corpus.

    Returns target (1x3xSxS), support images (Nx3xSxS), support masks (NxKxSxS), target masks
    (KxSxS). The K objects are all of the family's objects or (half of the time) a random
    non-empty subset, always in random order, so the model learns to follow the given masks.
    """
    n = len(corp["images"])
    t = int(rng.integers(n))
    n_sup = int(rng.integers(1, max_support + 1))
    others = [i for i in range(n) if i != t]
    sup = rng.choice(others, n_sup, replace=False)
    kall = corp["masks"].shape[1]
    objs = list(range(kall))
    if vary_objects and kall > 1:  # random order always; a random subset half of the time
        size = int(rng.integers(1, kall + 1)) if rng.random() < 0.5 else kall
        objs = [int(o) for o in rng.choice(kall, size, replace=False)]
    sm = corp["masks"][sup][:, objs]
    return corp["images"][t:t + 1], corp["images"][sup], sm, corp["masks"][t, objs]


def train_ppg(model, corpora: dict, args, fh=None, tag="ppg"):
    """Few-shot PPG training (SAM frozen + LoRA). corpora: family -> corpus dict."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if not has_lora(model.sam):
        add_lora(model.sam, rank=args.lora_rank)
    S = model.img_size
    params = [p for p in model.parameters() if p.requires_grad]
    log(f"{tag}: trainable parameters {sum(p.numel() for p in params) / 1e6:.2f} M "
        f"(PPG {sum(p.numel() for p in model.ppg.parameters()) / 1e6:.2f} M)", fh)
    if args.optimizer == "sgd":  # the paper's optimiser (section 4.1)
        opt = torch.optim.SGD(params, lr=args.lr or 0.01, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(params, lr=args.lr or 1e-3, weight_decay=5e-4)
    fams = list(corpora)
    t0 = time.time()
    steps = args.steps or 10 ** 9
    budget = args.minutes * 60
    pbar = tqdm(total=args.steps or None, desc=tag, file=sys.stderr, mininterval=5)
    step, ema = 0, None
    model.train()
    while step < steps and (time.time() - t0) < budget:
        frac = min(1.0, max(step / steps if args.steps else 0, (time.time() - t0) / budget))
        lr = (args.lr or (0.01 if args.optimizer == "sgd" else 1e-3)) * min(1.0, (step + 1) / 50) * (0.5 * (1 + math.cos(math.pi * frac)) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        fam = fams[step % len(fams)]
        tgt, si, sm, tm = episode(rng, corpora[fam], args.max_support)
        logits, _ = model(tgt, si, sm)
        loss = dice_loss(upscale(logits, S), tm)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        pbar.update(1)
        pbar.set_postfix(loss=f"{ema:.3f}")
        if step % 50 == 0:
            log(f"{tag} step {step} loss(ema) {ema:.4f} lr {lr:.4f} elapsed {time.time() - t0:.0f}s", fh)
        if args.save_every and step % args.save_every == 0 and step < steps:
            # candidates for checkpoint selection on the validation phantoms (select.py)
            save_checkpoint(model, Path(args.out).with_suffix(f".step{step}.pt"),
                            {"phase": "ppg", "steps": step, "seconds": time.time() - t0,
                             "final_loss_ema": ema, "optimizer": args.optimizer})
            model.train()
    pbar.close()
    model.eval()
    return {"steps": step, "seconds": time.time() - t0, "final_loss_ema": ema, "optimizer": args.optimizer}


def ppg(args):
    fh = open(args.log, "a") if args.log else None
    overrides = {}
    if args.no_selective_map:
        overrides["use_selective_map"] = False
    if args.no_ccm:
        overrides["use_ccm"] = False
    if args.seed:
        # A non-zero seed also changes the PPG's initial weights; seed 0 keeps torch's default
        # generator state at start-up (how the shipped runs were initialised).
        torch.manual_seed(args.seed)
    if args.resume:  # continue a PPG run (LoRA included) with this run's schedule
        model, ck = load_checkpoint(Path(args.resume), lora_rank=args.lora_rank)
        log(f"ppg: resuming {args.resume} ({ {k: ck['extra'].get(k) for k in ('steps', 'init')} })", fh)
    else:
        model = build(args.model, **overrides)
    if args.init and not args.resume:
        log(f"ppg: SAM weights from {args.init} ({load_sam_weights(model, args.init)})", fh)
    model.sync_point_tokens()
    S = model.img_size
    corpora = {f: data.corpus(f, data.FEWSHOT, S, RUNS / "cache") for f in args.families}
    info = train_ppg(model, corpora, args, fh, tag=args.tag or "ppg")
    if args.resume:
        prior = ck["extra"]
        info.update({"resumed_from": str(args.resume), "prior": prior,
                     "total_steps": info["steps"] + int(prior.get("total_steps", prior.get("steps", 0)))})
    info.update({"phase": "ppg", "init": str(args.init), "families": args.families, "overrides": overrides,
                 "pairs_per_family": len(data.FEWSHOT)})
    save_checkpoint(model, Path(args.out), info)
    log(f"ppg done: {json.dumps(info)} -> {args.out}", fh)


def real(args):
    """Real SAM checkpoint: LoRA + PPG on the user's own pairs (a support-set folder)."""
    from .runtime import load_support_set_tensors
    fh = open(args.log, "a") if args.log else None
    from .build import build_real
    model = build_real(args.model, checkpoint=args.sam_checkpoint, img_size=args.img_size)
    model.sync_point_tokens()
    S = model.img_size
    corp = load_support_set_tensors(Path(args.data), S)
    log(f"real: {args.model} from {args.sam_checkpoint}, {len(corp['images'])} pairs, K={corp['masks'].shape[1]}", fh)
    info = train_ppg(model, {"user": corp}, args, fh, tag=f"ppg-{args.model}")
    info.update({"phase": "real", "sam_checkpoint": str(args.sam_checkpoint), "data": str(args.data)})
    save_checkpoint(model, Path(args.out), info)
    log(f"real done -> {args.out}", fh)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["pretrain", "ppg", "real"])
    ap.add_argument("--model", default="phantom-tiny")
    ap.add_argument("--init", help="pretrain checkpoint (ppg phase; pretrain phase: continue from it)")
    ap.add_argument("--save-every", type=int, default=0, help="ppg: also save a checkpoint every N steps")
    ap.add_argument("--resume", help="ppg phase: continue from a PPG checkpoint (LoRA and PPG weights)")
    ap.add_argument("--object-weight", nargs="*", default=[], metavar="OBJECT=W",
                    help="pretrain: sampling weight per object name, e.g. vessels=3")
    ap.add_argument("--cosine", action="store_true", help="pretrain: cosine learning-rate decay")
    ap.add_argument("--max-points", type=int, default=3, help="pretrain: most positive points per prompt")
    ap.add_argument("--sam-checkpoint", help="official SAM .pth (real phase)")
    ap.add_argument("--data", help="support-set folder with the user's pairs (real phase)")
    ap.add_argument("--families", nargs="+", default=list(data.FAMILIES))
    ap.add_argument("--steps", type=int, default=0, help="0 = until --minutes")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                    help="ppg/real phases: sgd = the paper's SGD (lr 0.01, momentum 0.9, wd 5e-4)")
    ap.add_argument("--max-support", type=int, default=2)
    ap.add_argument("--pretrain-per-family", type=int, default=400)
    ap.add_argument("--no-selective-map", action="store_true")
    ap.add_argument("--no-ccm", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--img-size", type=int, default=1024, help="real phase: SAM input size (1024 native)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--log", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"pretrain": pretrain, "ppg": ppg, "real": real}[args.phase](args)


if __name__ == "__main__":
    main()
