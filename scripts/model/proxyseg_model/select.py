"""Checkpoint selection: pick the PPG checkpoint with the best mean Dice on validation phantoms.

The validation targets (data.VAL, seeds 3000..3059 per family) are disjoint from the training
pairs (FEWSHOT), the reported test set (TEST), the demo studies (DEMO) and the pretraining corpus;
the support context is the same as in evaluate.py (the first 5 training pairs, all objects).
A candidate is scored by the mean over objects of its mean Dice, and, to tell apart checkpoints
that trade a rare collapse on one object for a better average, the 10th percentile of the
per-image Dice of each object is printed too (the score itself is the mean).

    python -m proxyseg_model.select runs/ppg-sel.step*.pt runs/ppg-sel.pt --out runs/ppg.pt
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from . import data
from .evaluate import N_SUPPORT, PPGPredictor, Support, TestSet, dice
from .train import load_checkpoint


def score(path: Path, sets: dict) -> dict:
    """Per family and object: mean Dice and its 10th percentile over the validation images."""
    pred = PPGPredictor(load_checkpoint(path)[0])
    out = {}
    for fam, (tests, sup) in sets.items():
        ctx = pred.context(sup.images, sup.masks)
        per = np.array([[dice(m, it["masks"][k]) for k, m in enumerate(pred.predict((fam, i), it, ctx))]
                        for i, it in enumerate(tests.items)])  # images x K
        out[fam] = {"mean": per.mean(0).tolist(), "p10": np.percentile(per, 10, axis=0).tolist()}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+")
    ap.add_argument("--out", required=True, help="the selected checkpoint is copied here")
    ap.add_argument("--json", default="", help="write every candidate's scores here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    S = load_checkpoint(Path(args.candidates[0]))[0].img_size
    sets = {f: (TestSet(f, S, len(data.VAL), seeds=data.VAL), Support(f, S, list(data.FEWSHOT)[:N_SUPPORT]))
            for f in data.FAMILIES}
    results = {}
    for c in args.candidates:
        r = score(Path(c), sets)
        means = [x for f in data.FAMILIES for x in r[f]["mean"]]
        p10 = [x for f in data.FAMILIES for x in r[f]["p10"]]
        results[c] = {"score": float(np.mean(means)), "scores": r}
        print(f"{c}: mean Dice {100 * np.mean(means):.1f}  per object "
              + " ".join(f"{100 * m:.0f}/{100 * p:.0f}" for m, p in zip(means, p10)) + "  (mean/p10)", flush=True)
    best = max(results, key=lambda c: results[c]["score"])
    print(f"selected {best} (validation mean Dice {100 * results[best]['score']:.1f}) -> {args.out}")
    if Path(best).resolve() != Path(args.out).resolve():
        shutil.copyfile(best, args.out)
    if args.json:
        Path(args.json).write_text(json.dumps({"selected": best, "candidates": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
