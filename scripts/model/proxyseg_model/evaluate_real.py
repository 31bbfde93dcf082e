"""Evaluation of a real-backbone bundle on real validation cases it never saw.

Writes <bundle>/evaluation.md and the manifest's [evaluation]. Per data set (realdata.py) the
support set is the first 5 cases of the training pool (what an admin would curate); targets are
the validation cases (never trained on), or with `--cases reporting` only the part of them that no
choice sees (realdata.reporting; `--cases selection`: the rest). Dice in % at the image's
native resolution, per object, for
  ppg          the bundle's graphs through ONNX Runtime, first pass + the manifest's resolution
               views (the path the Rust engine runs; runtime.OrtBundle.segment_views)
  ppg_int8     ppg with the manifest's CPU int8 graphs ([int8]; derive_int8.py), what the engine
               runs on the CPU provider by default
  ppg_first    the same without the resolution views (whole image at 256 px only)
  no_shape     ppg without the manifest's [[shape]] rules (shape.py)
Every ppg column cuts each object's logits at the manifest's [[threshold]] logit (threshold.py),
as the engine does.
  copy         the 5 support masks resized onto the target, majority vote
  box          LiteMedSAM prompted with the bounding box of the 5 support masks' union
               (normalised coordinates), no training: what a fixed per-protocol box gives
  persam       PerSAM-style, training-free: prototype = mean support embedding under the mask,
               the best / worst matching target positions as positive / negative points
  ablations    PPG checkpoints trained without CSM's Selective Map / without CCM, same schedule,
               one per seed (first pass only, like ppg_first, so the difference is the module)
Stability (paper Table 3): each of 5 single support pairs alone -> mean Dice over the
validation cases; mean and std over the 5.

  python -m proxyseg_model.evaluate_real --bundle ../../models/litemedsam-ppg \
      [--no-map runs/lite-nomap-s*.pt] [--no-ccm runs/lite-noccm-s*.pt] [--full runs/lite-short-s*.pt]
"""
from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import mirror, realdata, shape, threshold
from .build import build_litemedsam
from .export import prepare_for_export
from .litemedsam import PIXEL_MEAN, PIXEL_STD
from .preprocess import postprocess, prepare_image, prepare_mask
from .runtime import OrtBundle
from .tomlw import dumps

N_SUPPORT = 5


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    s = p.sum() + g.sum()
    return 1.0 if s == 0 else float(2 * (p & g).sum() / s)


def support_cases(ds: str) -> list[str]:
    return realdata.split(ds)[0][:N_SUPPORT]


CASES = ("validation", "reporting", "selection")
CASE_TEXT = {
    "validation": "Validation cases (realdata.split) are never trained on; no choice used them until session 22, "
                  "whose choice to ship the fine-tune lite-ppg4-lora saw them, and since session 24 their selection "
                  "part (realdata.selection) is open to choices (scripts/model/STATUS.md).",
    "reporting": "Reporting cases (realdata.reporting) are the validation cases less the selection cases: never "
                 "trained on, and no choice since session 24 has seen them (session 22's choice saw all validation "
                 "cases: scripts/model/STATUS.md).",
    "selection": "Selection cases (realdata.selection) are validation cases that training and shipping choices may "
                "look at: not an unseen test.",
}


def case_names(ds: str, cases: str) -> list[str]:
    """A data set's cases of one kind: all validation cases, or their reporting or selection part
    (realdata.validation_parts)."""
    if cases == "validation":
        return realdata.split(ds)[1]
    if cases not in CASES:
        raise ValueError(f"cases: one of {', '.join(CASES)}, not {cases}")
    return realdata.reporting(ds) if cases == "reporting" else realdata.selection(ds)


class Targets:
    """Validation cases of a data set, with their first-pass embeddings computed once."""

    def __init__(self, ds: str, bundle: OrtBundle, limit: int = 0, cases: str = "validation"):
        names = case_names(ds, cases)
        self.names = names[:limit] if limit else names
        self.items = []
        for n in self.names:
            display, masks = realdata.load_case(ds, n)
            img, hw = prepare_image(display, bundle.S, bundle.mean, bundle.std)
            self.items.append({"name": n, "display": display, "masks": masks, "image": img[None], "hw": hw,
                               "emb": bundle.encode(img[None])})


FLIPS = ("support-flip", "query-flip")


def run_ppg(bundle: OrtBundle, ds: str, targets: Targets, views: bool, pairs=None, shapes: bool = True,
            flip: str = "") -> np.ndarray:
    """Dice per validation case and object; `shapes`: with the manifest's [[shape]] rules.

    `flip` (views only; session 25's rule E): "support-flip" adds each support pair's mirror to
    the set; "query-flip" takes the mirrored second look (mirror.py) for every object, whatever
    the manifest's [mirror] says."""
    if flip and (flip not in FLIPS or not views):
        raise ValueError(f"flip {flip!r}: one of {FLIPS}, with views")
    spec = realdata.DATASETS[ds]
    sup = [realdata.load_case(ds, c) for c in support_cases(ds)]
    if pairs is not None:
        sup = [sup[i] for i in pairs]
    if flip == "support-flip":
        sup = sup + [(mirror.flip_display(d), mirror.flip(m)) for d, m in sup]
    labels = list(spec.labels)
    if views:
        every = {"objects": labels} if flip == "query-flip" else None
        ctxs = bundle.view_contexts([d for d, _ in sup], [m for _, m in sup], labels, mirror_rule=every)
    else:
        ctxs = {"": bundle.support_context(*bundle.prepare_pairs([d for d, _ in sup], [m for _, m in sup])),
                "forms": shape.object_forms(bundle.shape_rules, labels, [m for _, m in sup], bundle.S),
                "thresholds": threshold.object_thresholds(bundle.threshold_rules, labels)}
    if not shapes:
        ctxs["forms"] = [None] * len(labels)
    scores = np.zeros((len(targets.items), len(labels)))
    for i, it in enumerate(targets.items):
        if views:
            m, _, _ = bundle.segment_views(it["display"], ctxs, labels, it["emb"])
        else:
            tokens = bundle.prompt_tokens(it["emb"], ctxs[""])
            logits, _ = bundle.decode(it["emb"], tokens, it["image"])
            _, lg = postprocess(logits, it["hw"], it["masks"].shape[1:], bundle.S)
            m = shape.apply(ctxs["forms"], threshold.masks(lg, ctxs["thresholds"]))
        for o in range(len(labels)):
            scores[i, o] = dice(m[o], it["masks"][o])
    return scores


def run_copy(ds: str, targets: Targets) -> np.ndarray:
    sup = [realdata.load_case(ds, c)[1] for c in support_cases(ds)]
    k = sup[0].shape[0]
    scores = np.zeros((len(targets.items), k))
    for i, it in enumerate(targets.items):
        size = it["masks"].shape[1:]
        for o in range(k):
            votes = np.mean([F.interpolate(torch.from_numpy(s[o].astype(np.float32))[None, None], size=size,
                                           mode="bilinear", align_corners=False)[0, 0].numpy() for s in sup], 0)
            scores[i, o] = dice(votes >= 0.5, it["masks"][o])
    return scores


class Baselines:
    """LiteMedSAM without PPG or training: support-mask box, and PerSAM-style points."""

    def __init__(self):
        self.model = build_litemedsam()
        self.sam = self.model.sam.eval()
        self.S = 256

    @torch.no_grad()
    def _decode(self, emb, sparse):
        logits, _ = self.sam.decode(torch.from_numpy(emb), sparse)
        return logits.numpy()

    @torch.no_grad()
    def box(self, ds: str, targets: Targets) -> np.ndarray:
        sup = [realdata.load_case(ds, c)[1] for c in support_cases(ds)]
        k = sup[0].shape[0]
        scores = np.zeros((len(targets.items), k))
        for o in range(k):
            ys0, xs0, ys1, xs1 = [], [], [], []
            for s in sup:
                yy, xx = np.nonzero(s[o])
                h, w = s[o].shape
                ys0.append(yy.min() / h), xs0.append(xx.min() / w), ys1.append((yy.max() + 1) / h)
                xs1.append((xx.max() + 1) / w)
            nb = (min(xs0), min(ys0), max(xs1), max(ys1))
            for i, it in enumerate(targets.items):
                nh, nw = it["hw"]
                b = torch.tensor([[[nb[0] * nw, nb[1] * nh], [nb[2] * nw, nb[3] * nh]]], dtype=torch.float32)
                sparse, _ = self.sam.prompt_encoder(points=None, boxes=b.reshape(1, 4), masks=None)
                m, _ = postprocess(self._decode(it["emb"], sparse), it["hw"], it["masks"].shape[1:], self.S)
                scores[i, o] = dice(m[0], it["masks"][o])
        return scores

    @torch.no_grad()
    def persam(self, ds: str, targets: Targets, bundle: OrtBundle) -> np.ndarray:
        sup = [realdata.load_case(ds, c) for c in support_cases(ds)]
        imgs, masks = bundle.prepare_pairs([d for d, _ in sup], [m for _, m in sup])
        emb_s = torch.from_numpy(np.concatenate([bundle.encode(imgs[i:i + 1]) for i in range(len(imgs))]))
        feats = F.normalize(emb_s, dim=1)
        h = emb_s.shape[-1]
        k = masks.shape[1]
        protos = []
        for o in range(k):
            w = F.adaptive_avg_pool2d(torch.from_numpy(masks[:, o:o + 1]), h)
            protos.append(F.normalize((feats * w).sum((0, 2, 3)) / w.sum().clamp(min=1e-6), dim=0))
        scores = np.zeros((len(targets.items), k))
        for i, it in enumerate(targets.items):
            e = F.normalize(torch.from_numpy(it["emb"]), dim=1)[0]
            nh, nw = it["hw"]
            for o in range(k):
                sim = torch.einsum("c,chw->hw", protos[o], e)[None, None]
                sim = F.interpolate(sim, size=(self.S, self.S), mode="bilinear", align_corners=False)[0, 0][:nh, :nw]
                pos, neg = int(torch.argmax(sim)), int(torch.argmin(sim))
                coords = torch.tensor([[[pos % nw + 0.5, pos // nw + 0.5], [neg % nw + 0.5, neg // nw + 0.5]]])
                sparse, _ = self.sam.prompt_encoder(points=(coords, torch.tensor([[1, 0]])), boxes=None, masks=None)
                m, _ = postprocess(self._decode(it["emb"], sparse), it["hw"], it["masks"].shape[1:], self.S)
                scores[i, o] = dice(m[0], it["masks"][o])
        return scores


def ablation_scores(checkpoints: list[str], ds: str, targets: Targets) -> list[np.ndarray]:
    """First-pass Dice of PPG checkpoints (torch, LoRA unmerged as exported) on the same targets."""
    from .train import load_checkpoint
    out = []
    sup = [realdata.load_case(ds, c) for c in support_cases(ds)]
    for ck in checkpoints:
        model, _ = load_checkpoint(Path(ck))
        model = prepare_for_export(model)
        imgs = np.stack([prepare_image(d, 256, PIXEL_MEAN, PIXEL_STD)[0] for d, _ in sup])
        ms = np.stack([np.stack([prepare_mask(x, 256) for x in m]) for _, m in sup])
        with torch.no_grad():
            s_emb = torch.cat([model.sam.encode(torch.from_numpy(imgs[i:i + 1])) for i in range(len(imgs))])
            keys, values = model.ppg.encode_support(torch.from_numpy(imgs), torch.from_numpy(ms), s_emb)
            scores = np.zeros((len(targets.items), ms.shape[1]))
            for i, it in enumerate(targets.items):
                emb = torch.from_numpy(it["emb"])
                logits, _ = model.sam.decode(emb, model.ppg.generate_prompts(emb, keys, values))
                m, _ = postprocess(logits.numpy(), it["hw"], it["masks"].shape[1:], 256)
                for o in range(ms.shape[1]):
                    scores[i, o] = dice(m[o], it["masks"][o])
        out.append(scores)
    return out


def ablations(r: dict, args, ds: str, tg: Targets) -> None:
    """Adds the ablation columns (mean over seeds, and per seed) to a data set's results."""
    for key, cks in (("short", args.short), ("no_selective_map", args.no_map), ("no_ccm", args.no_ccm)):
        if cks:
            per_seed = [s.mean(0) for s in ablation_scores(cks, ds, tg)]
            r[key] = np.mean(per_seed, 0).tolist()
            r[key + "_seeds"] = [x.tolist() for x in per_seed]


def results_of_report(folder: Path) -> dict:
    """The results a bundle's last evaluation wrote (its manifest's [evaluation] and the per-seed
    lines of evaluation.md), in --json's form (fractions, rounded to 0.1 %): what --reuse needs
    on a fresh clone, where no --json of that run exists."""
    ev = tomllib.loads((folder / "manifest.toml").read_text()).get("evaluation", {})
    seeds = {}
    md = folder / "evaluation.md"
    for line in (md.read_text().splitlines() if md.exists() else []):
        if line.startswith("- ") and "_seeds: " in line:
            head, vals = line[2:].split(": ", 1)
            ds, key = head.split(" ", 1)
            seeds.setdefault(ds, {})[key] = [[float(x) / 100 for x in s.split("/")] for s in vals.split("; ")]
    sets = {}
    for ds in realdata.DATASETS:
        if ds not in ev:
            continue
        labels = [k for k in ev[ds] if isinstance(ev[ds][k], dict)]
        cols = {c for label in labels for c in ev[ds][label]}
        r = {"labels": labels, "n_val": ev[ds]["n_val"], "support": support_cases(ds)}
        for c in cols:
            if all(c in ev[ds][label] for label in labels):
                r[c] = [ev[ds][label][c] / 100 for label in labels]
        r.update(seeds.get(ds, {}))
        sets[ds] = r
    return {"sets": sets}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--sets", nargs="+", default=list(realdata.DATASETS))
    ap.add_argument("--limit", type=int, default=0, help="at most this many validation cases per set (0 = all)")
    ap.add_argument("--cases", choices=CASES, default="validation",
                    help="all validation cases, or their reporting part (which no choice sees) or selection part "
                         "(realdata.validation_parts)")
    ap.add_argument("--no-map", nargs="*", default=[], help="PPG checkpoints w/o Selective Map, one per seed")
    ap.add_argument("--no-ccm", nargs="*", default=[], help="PPG checkpoints w/o CCM, one per seed")
    ap.add_argument("--short", nargs="*", default=[], help="full PPG on the ablations' schedule, one per seed")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--skip-stability", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("--merge", default="", help="a previous --json: keep its columns, compute only the ablations")
    ap.add_argument("--reuse", default="",
                    help="a previous --json on the same cases, or a folder with a bundle's manifest.toml and "
                         "evaluation.md: take the columns that do not depend on the shipped PPG (copy, box, "
                         "persam, the ablation checkpoints) from it, compute the rest")
    ap.add_argument("--prior-ppg-as", default="",
                    help="with --reuse: keep its ppg column under this name (e.g. no_detail: the bundle "
                         "before a change that left the PPG as it was)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    bundle = OrtBundle(args.bundle)
    # what the engine runs on CPU by default ([engine] int8): the manifest's [int8] graphs
    bundle8 = OrtBundle(args.bundle, int8=True) if bundle.manifest.get("int8", {}).get("graphs") else None
    merged = json.loads(Path(args.merge).read_text()) if args.merge else None
    reuse = Path(args.reuse) if args.reuse else None
    reused = ((results_of_report(reuse) if reuse.is_dir() else json.loads(reuse.read_text()))["sets"]
              if reuse else {})
    base = None if args.skip_baselines or merged or reused else Baselines()
    res = merged or {"sets": {}, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for ds in args.sets:
        t0 = time.time()
        tg = Targets(ds, bundle, args.limit, args.cases)
        spec = realdata.DATASETS[ds]
        if merged:
            r = res["sets"][ds]
            ablations(r, args, ds, tg)
            print(ds, "ablations", {k: np.round(np.array(r[k]) * 100, 1).tolist() for k in
                                    ("short", "no_selective_map", "no_ccm") if k in r}, flush=True)
            continue
        r = {"labels": list(spec.labels), "n_val": len(tg.items), "support": support_cases(ds), "cases": args.cases,
             "names": list(tg.names), "per_case": {}}

        def keep(col: str, scores: np.ndarray) -> list:
            """The column's mean per object; the per-case Dice go to --json too, so that a later
            report on a part of these cases can be cut from them."""
            r["per_case"][col] = np.round(scores, 5).tolist()
            return scores.mean(0).tolist()

        r["ppg"] = keep("ppg", run_ppg(bundle, ds, tg, views=True))
        r["ppg_first"] = keep("ppg_first", run_ppg(bundle, ds, tg, views=False))
        r["no_shape"] = keep("no_shape", run_ppg(bundle, ds, tg, views=True, shapes=False))
        if bundle8 is not None:  # the CPU int8 graphs: other embeddings, so their own targets
            r["ppg_int8"] = keep("ppg_int8", run_ppg(bundle8, ds, Targets(ds, bundle8, args.limit, args.cases),
                                                     views=True))
        from .train_lite import RULES
        cand = RULES.get(ds)
        if cand is not None and cand.to_toml() not in [x.to_toml() for x in bundle.rules]:
            shipped = bundle.rules  # a view the training knows but the manifest does not ship
            bundle.rules = shipped + [cand]
            r[f"ppg_{cand.strategy}"] = run_ppg(bundle, ds, tg, views=True).mean(0).tolist()
            bundle.rules = shipped
        if ds in reused:
            old = reused[ds]
            if (old.get("support") != r["support"] or old.get("n_val") != r["n_val"]
                    or old.get("cases", "validation") != r["cases"]):
                raise SystemExit(f"--reuse {args.reuse}: {ds} was evaluated on other cases")
            for k in ("copy", "box", "persam", "short", "no_selective_map", "no_ccm", "no_detail", "no_convex",
                      "no_calibration", "no_scale", "no_mirror", "short_seeds", "no_selective_map_seeds", "no_ccm_seeds"):
                if k in old:
                    r[k] = old[k]
            if args.prior_ppg_as:
                r[args.prior_ppg_as] = old["ppg"]
        else:
            r["copy"] = keep("copy", run_copy(ds, tg))
        if base:
            r["box"] = keep("box", base.box(ds, tg))
            r["persam"] = keep("persam", base.persam(ds, tg, bundle))
        if not args.skip_stability:
            singles = np.stack([run_ppg(bundle, ds, tg, views=True, pairs=[p]).mean(0) for p in range(N_SUPPORT)])
            r["stability_mean"] = singles.mean(0).tolist()
            r["stability_std"] = singles.std(0).tolist()
        if ds not in reused:
            ablations(r, args, ds, tg)
        r["seconds"] = round(time.time() - t0)
        res["sets"][ds] = r
        print(ds, json.dumps({k: (np.round(np.array(v) * 100, 1).tolist() if isinstance(v, list) and k not in
                                   ("labels", "support", "names") else v) for k, v in r.items()
                              if k != "per_case"}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    write_report(Path(args.bundle), res)


def write_report(bundle: Path, res: dict):
    """evaluation.md + the manifest's [evaluation] (Dice in %); `res` as saved by --json."""
    cols = [c for c in ("ppg", "ppg_int8", "ppg_first", "ppg_roi", "ppg_tiles", "no_shape", "no_convex", "no_calibration", "no_scale",
                        "no_mirror",
                        "no_detail", "copy", "box", "persam", "short",
                        "no_selective_map", "no_ccm", "stability_mean", "stability_std")
            if any(c in r for r in res["sets"].values())]
    rows, per_obj = [], []
    for ds, r in res["sets"].items():
        for o, label in enumerate(r["labels"]):
            vals = {c: r[c][o] * 100 for c in cols if c in r}
            per_obj.append(vals)
            rows.append(f"| {ds} | {label} | {r['n_val']} | " + " | ".join(
                f"{vals[c]:.1f}" if c in vals else "" for c in cols) + " |")
    # a mean only over columns every object has (ppg_roi / ppg_tiles exist for some objects only)
    mean = {c: float(np.mean([v[c] for v in per_obj])) for c in cols
            if c != "stability_std" and all(c in v for v in per_obj)}
    kinds = {r.get("cases", "validation") for r in res["sets"].values()}
    if len(kinds) != 1:
        raise SystemExit(f"the data sets were evaluated on different kinds of case ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    head = f"| data set | object | {kind} cases | " + " | ".join(cols) + " |"
    lines = [f"# Evaluation: litemedsam-ppg on real {kind} cases", "",
             f"Generated by `python -m proxyseg_model.evaluate_real --cases {kind}` ({res['started']}). Dice in %, "
             f"at native resolution, per object, mean over each data set's {kind} cases. {CASE_TEXT[kind]} Support "
             "set: the first 5 cases of the training pool.", "",
             head, "|" + "---|" * (3 + len(cols)), *rows,
             "| **mean** | | | " + " | ".join(f"**{mean[c]:.1f}**" if c in mean else "" for c in cols) + " |", "",
             "Columns: ppg = the bundle as shipped (first pass + the manifest's resolution views, and its "
             "[mirror] second look, ONNX Runtime, float graphs); ppg_int8 = the same with the manifest's CPU int8 graphs, which the "
             "engine runs on the CPU provider by default (`[engine] int8`; scripts/model/derive_int8.py); "
             "ppg_first = first pass only (one look); no_shape = ppg without the manifest's [[shape]] rules (shape.py: "
             "the largest region of a listed object whose support masks are one region, filled to its convex "
             "hull for the objects of a convex rule, replaced by its least-squares ellipse for an ellipse rule); "
             "no_convex = ppg with the region rule only (the release before the convex rule: its ppg column); "
             "no_calibration = the release before the manifest's [[threshold]] logits (threshold.py) and the "
             "ellipse form (its ppg column); "
             "no_mirror = the release before the manifest's [mirror] second look (mirror.py: the frame and the "
             "support pairs also segmented mirrored, the two looks' logits averaged; its ppg column); "
             "no_scale = the release before the fine-tune with HC18 scale views (lite-ppg4-lora: PPG, LoRA and "
             "the detail branch) and its [[threshold]] logits re-chosen by calibrate.py (its ppg column); "
             "ppg_roi / ppg_tiles = with a view the training knows but "
             "the manifest does not ship (measured, then left out); no_detail = ppg without the detail branch "
             "(detail.py; the same PPG and LoRA, so the release before it: its ppg column, without [[shape]]); copy = support masks' "
             "majority vote; box = LiteMedSAM with the support masks' union box; "
             "persam = PerSAM-style training-free points; short / no_selective_map / no_ccm = PPG trained on the "
             "ablation schedule with all modules / without the Selective Map / without CCM (mean over seeds, "
             "first pass, no detail branch); stability = each single support pair alone, mean and std over the 5.", ""]
    for ds, r in res["sets"].items():
        for key in ("short_seeds", "no_selective_map_seeds", "no_ccm_seeds"):
            if key in r:
                lines.append(f"- {ds} {key}: " + "; ".join(
                    "/".join(f"{x * 100:.1f}" for x in s) for s in r[key]))
    # evaluate_memory.py's section and table are its own: kept as they are (it rewrites them);
    # imported here because evaluate_memory imports this module
    from .evaluate_memory import SECTION
    path = bundle / "evaluation.md"
    old = path.read_text() if path.exists() else ""
    at = old.find("\n" + SECTION)
    memory_text = old[at:].strip("\n") if at >= 0 else ""
    path.write_text("\n".join(lines) + "\n" + ("\n" + memory_text + "\n" if memory_text else ""))
    mpath = bundle / "manifest.toml"
    m = tomllib.loads(mpath.read_text())
    ev = {"report": "evaluation.md", "metric": "Dice %", "mean": {c: round(v, 1) for c, v in mean.items()}}
    if "memory" in m.get("evaluation", {}):
        ev["memory"] = m["evaluation"]["memory"]
    for ds, r in res["sets"].items():
        ev[ds] = {label: {c: round(r[c][o] * 100, 1) for c in cols if c in r} for o, label in enumerate(r["labels"])}
        ev[ds]["n_val"] = r["n_val"]
        ev[ds]["cases"] = r.get("cases", "validation")
    m["evaluation"] = ev
    from .export import write_manifest
    write_manifest(mpath, m)


if __name__ == "__main__":
    main()
