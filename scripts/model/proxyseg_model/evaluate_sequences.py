"""A bundle frame by frame on sequences made from real validation stills (issue 15 item 3).

  python -m proxyseg_model.evaluate_sequences --bundle ../../models/litemedsam-ppg \
      --cases 4 --frames 8 --json runs/seq-perframe.json

For each data set of ../shared/data, the first `--cases` validation cases each become one
sequence (sequences.make_sequence: probe motion, speckle for ultrasound, gain and contrast
drift), segmented frame by frame with the usual support set (5 training-pool cases). Reports
per object: mean Dice over all frames, and the instability the issue targets: mean 1 - Dice
between consecutive predicted masks minus the same for the truth (0 = the prediction moves
exactly as the anatomy does). This is the per-frame baseline a memory mode must beat (+2 Dice,
instability halved).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import realdata
from .evaluate_real import dice, support_cases
from .runtime import OrtBundle
from .sequences import instability, make_sequence


def evaluate(bundle: OrtBundle, ds: str, cases: int, frames: int) -> dict:
    spec = realdata.DATASETS[ds]
    sup = [realdata.load_case(ds, c) for c in support_cases(ds)]
    ctx = bundle.support_context(*bundle.prepare_pairs([d for d, _ in sup], [m for _, m in sup]))
    labels = list(spec.labels)
    dices = [[] for _ in labels]
    unstable = [[] for _ in labels]
    for i, name in enumerate(realdata.split(ds)[1][:cases]):
        display, masks = realdata.load_case(ds, name)
        seq, truth = make_sequence(display, masks, frames, seed=i, ultrasound=spec.modality == "US")
        pred = np.stack([bundle.segment_display(seq[t], ctx)[0] for t in range(frames)])  # F x K x H x W
        for k in range(len(labels)):
            dices[k].extend(dice(pred[t, k], truth[t, k]) for t in range(frames))
            unstable[k].append(instability(pred[:, k]) - instability(truth[:, k]))
    return {label: {"dice": 100 * float(np.mean(dices[k])), "instability": 100 * float(np.mean(unstable[k])),
                    "sequences": len(unstable[k]), "frames": frames}
            for k, label in enumerate(labels)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--datasets", nargs="*", default=list(realdata.DATASETS))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    bundle = OrtBundle(a.bundle)
    res = {ds: evaluate(bundle, ds, a.cases, a.frames) for ds in a.datasets}
    print("| data set | object | Dice (frame by frame) | instability (pred - truth, x100) |")
    print("|---|---|---|---|")
    for ds, objs in res.items():
        for label, r in objs.items():
            print(f"| {ds} | {label} | {r['dice']:.1f} | {r['instability']:.1f} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
