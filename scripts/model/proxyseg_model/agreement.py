"""Look agreement: how far the two looks of `[mirror]` agree, and whether that flags poor masks.

Per listed object, the agreement is the Dice between the first look's mask and the mirrored
look's mask (mirrored back), each cut at the object's [[threshold]] before [[shape]]: the
engine's `FrameResult::look_agreement` (src/engine/mirror/). This scores it against the final
Dice on real cases, and shows what a review cut ([pipeline] review_agreement) would flag:

    python -m proxyseg_model.agreement --bundle ../../models/litemedsam-ppg --cases check
    python -m proxyseg_model.agreement --bundle ../../models/litemedsam-ppg --cases reporting --cut 0.8

`check`: the held-out 4 + selection cases (choices may see them); `reporting`: the reporting
cases (a report after the choice, never a choice). `--wrong-routing` adds each set's support
pairs applied to another set's check cases: agreement is no out-of-domain guard (session 26).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from . import realdata
from .evaluate_real import dice, support_cases
from .holdout import check_cases
from .runtime import OrtBundle

WRONG_ROUTINGS = [("hc18", "drishti-gs"), ("drishti-gs", "hc18"), ("psfhs", "drive"), ("hc18", "psfhs")]


def contexts(bundle: OrtBundle, ds: str):
    """The set's labels and its view contexts with the second look for every object."""
    labels = list(realdata.DATASETS[ds].labels)
    sup = [realdata.load_case(ds, c) for c in support_cases(ds)]
    return labels, bundle.view_contexts([d for d, _ in sup], [m for _, m in sup], labels,
                                        mirror_rule={"objects": labels})


def looks(bundle: OrtBundle, display: np.ndarray, ctxs: dict, labels: list[str]):
    """-> (agreement per object, final masks K x H x W), as segment_views gives them."""
    final, _, first = bundle.segment_views(display, ctxs, labels)
    return first["look_agreement"], final


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--sets", nargs="+", default=["drishti-gs", "psfhs", "hc18"])
    ap.add_argument("--cases", choices=("check", "reporting"), default="check")
    ap.add_argument("--cut", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    ap.add_argument("--wrong-routing", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    bundle = OrtBundle(args.bundle)
    rows = []  # (set, case, label, agreement, final Dice)
    for ds in args.sets:
        labels, ctxs = contexts(bundle, ds)
        for c in check_cases(ds, 4, True, reporting=args.cases == "reporting"):
            d, truth = realdata.load_case(ds, c)
            agree, final = looks(bundle, d, ctxs, labels)
            rows += [(ds, c, labels[o], agree[o], dice(final[o], truth[o])) for o in range(len(labels))]
            print(ds, c, [(round(agree[o], 3), round(rows[-len(labels) + o][4], 3)) for o in range(len(labels))],
                  flush=True)
    print(f"\n{args.cases} cases, {len(rows)} objects; an object under 0.8 Dice counts as poor")
    print("| cut | flagged | poor | poor flagged | Dice flagged | Dice not flagged |\n|---|---|---|---|---|---|")
    ag, dc = np.array([r[3] for r in rows]), np.array([r[4] for r in rows])
    for cut in args.cut:
        f = ag < cut
        print(f"| {cut} | {f.sum()} ({100 * f.mean():.1f} %) | {(dc < 0.8).sum()} | {(f & (dc < 0.8)).sum()} | "
              f"{dc[f].mean() if f.any() else float('nan'):.3f} | {dc[~f].mean():.3f} |")
    wrong = []
    if args.wrong_routing:
        for ds, other in WRONG_ROUTINGS:
            labels, ctxs = contexts(bundle, ds)
            for c in check_cases(other, 4, False):
                agree, _ = looks(bundle, realdata.load_case(other, c)[0], ctxs, labels)
                wrong.append((ds, other, c, agree))
                print("wrong routing:", ds, "set on", other, c, [round(x, 3) for x in agree], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": args.cases, "rows": rows, "wrong_routing": wrong}, f, indent=1)


if __name__ == "__main__":
    main()
