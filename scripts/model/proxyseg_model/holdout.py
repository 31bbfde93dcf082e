"""Bundles compared on the training pool's held-out cases: the check set of a training choice.

`train_lite --hold-out N` never draws the last N cases of each data set's training pool. This
scores bundles on exactly those cases, the way evaluate_real scores the validation cases (the
first 5 pool cases as the support set, the manifest's resolution views, [[threshold]] and
[[shape]], float graphs), so a choice between training runs is made without the validation
cases. `--zoom` adds each held-out case of the named sets seen smaller or larger (train_lite's
`_rescale`, fixed seed): how a run copes with objects whose size the support pairs do not share.

    python -m proxyseg_model.holdout --bundle ../../models/litemedsam-ppg /tmp/cand --hold-out 4 \\
        --zoom hc18 --factors 0.6 0.8 1.25 --stability

`--stability` adds, per object, the std over the 5 support pairs used one at a time (the
single-pair stability of evaluate_real, on the unzoomed check cases).

`--selection` adds each set's selection cases (realdata.selection: a fixed part of the validation
cases that choices may see) to the unzoomed check cases, so an object is judged on 18-38 cases
instead of 4; the zoomed rows stay on the held-out cases. With two or more bundles, a last
table gives each object's paired difference against the first bundle with a 90 % bootstrap
interval over the cases (how much of a difference the check set can tell from noise).

`--reporting` scores each set's reporting cases instead (realdata.reporting): the veto a rule
may name after its choice is made on the check cases (STATUS.md, rules C and E), never a choice.

A bundle named `FOLDER:support-flip` or `FOLDER:query-flip` is that bundle with mirrored support
pairs added to its set, or with a mirrored second look averaged in (evaluate_real.run_ppg's
`flip`; session 25's rule E).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import realdata, views
from .evaluate_real import FLIPS, N_SUPPORT, run_ppg
from .preprocess import prepare_image
from .runtime import OrtBundle
from .train_lite import _rescale


def check_cases(ds: str, hold_out: int, with_selection: bool, reporting: bool = False) -> list[str]:
    """The training pool's last `hold_out` cases, then the set's selection cases if asked; with
    `reporting`, the set's reporting cases alone (a veto after a choice, never a choice)."""
    if reporting:
        return realdata.reporting(ds)
    return realdata.split(ds)[0][-hold_out:] + (realdata.selection(ds) if with_selection else [])


def bundle_spec(spec: str) -> tuple[str, str]:
    """`FOLDER` or `FOLDER:VARIANT` (evaluate_real.FLIPS) -> (folder, variant or "")."""
    folder, sep, variant = spec.rpartition(":")
    return (folder, variant) if sep and variant in FLIPS else (spec, "")


def paired_interval(a: np.ndarray, b: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a over paired cases and its 90 % bootstrap interval (5th, 95th percentile)."""
    d = np.asarray(b, float) - np.asarray(a, float)
    idx = np.random.default_rng(seed).integers(0, len(d), (draws, len(d)))
    means = d[idx].mean(1)
    return float(d.mean()), float(np.percentile(means, 5)), float(np.percentile(means, 95))


class HeldOut:
    """Targets in evaluate_real.Targets' form: check cases, optionally rescaled."""

    def __init__(self, ds: str, bundle: OrtBundle, names: list[str], factor: float = 1.0):
        self.names = names
        self.items = []
        for i, n in enumerate(self.names):
            display, masks = realdata.load_case(ds, n)
            if factor != 1.0:
                display, masks = _rescale(display, masks, factor, np.random.default_rng([i, int(factor * 100)]))
                display = np.ascontiguousarray(display, dtype=np.float32)
                masks = np.ascontiguousarray(masks)
            img, hw = prepare_image(display, bundle.S, bundle.mean, bundle.std)
            self.items.append({"name": n, "display": display, "masks": masks, "image": img[None], "hw": hw,
                               "emb": bundle.encode(img[None])})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", nargs="+", required=True, help="bundle folders, scored side by side")
    ap.add_argument("--hold-out", type=int, default=4)
    ap.add_argument("--sets", nargs="+", default=list(realdata.DATASETS))
    ap.add_argument("--zoom", nargs="*", default=[], help="data sets whose held-out cases are also rescaled")
    ap.add_argument("--factors", nargs="*", type=float, default=[0.6, 0.8, 1.25])
    ap.add_argument("--roi", nargs="*", default=[],
                    help="objects given a roi second pass the manifest does not ship (views.Rule, --roi-anchor)")
    ap.add_argument("--roi-anchor", default="optic disc")
    ap.add_argument("--roi-scale", type=float, default=2.0)
    ap.add_argument("--stability", action="store_true",
                    help="also the std over the 5 single support pairs (unzoomed check cases)")
    ap.add_argument("--selection", action="store_true",
                    help="add the selection cases (realdata.selection) to the unzoomed check cases")
    ap.add_argument("--reporting", action="store_true",
                    help="score the reporting cases (realdata.reporting) instead: the veto after a choice "
                         "was made on the check cases, never a choice itself; no zoom, no stability")
    args = ap.parse_args(argv)
    if args.reporting and (args.zoom or args.stability or args.selection):
        raise SystemExit("--reporting: a veto on the reporting cases alone (no --zoom, --stability, --selection)")
    if len(set(args.bundle)) != len(args.bundle):
        raise SystemExit("--bundle: a bundle named twice")
    rows = []  # (set, object, factor, cases) -> per-bundle mean Dice
    stab = []  # (set, object) -> per-bundle std over the single pairs
    paired = []  # (set, object) -> per-bundle Dice per unzoomed check case
    specs = [bundle_spec(b) for b in args.bundle]
    bundles = [OrtBundle(Path(b)) for b, _ in specs]
    flips = [f for _, f in specs]
    if args.roi:
        for b in bundles:
            b.rules = b.rules + [views.Rule("roi", args.roi, anchor=args.roi_anchor, scale=args.roi_scale)]
    for ds in args.sets:
        labels = list(realdata.DATASETS[ds].labels)
        for f in [1.0] + (args.factors if ds in args.zoom else []):
            names = check_cases(ds, args.hold_out, args.selection and f == 1.0, args.reporting)
            scores, stds = [], []
            for b, flip in zip(bundles, flips):
                held = HeldOut(ds, b, names, f)
                scores.append(run_ppg(b, ds, held, views=True, flip=flip) * 100)
                if args.stability and f == 1.0:
                    singles = np.stack([run_ppg(b, ds, held, views=True, pairs=[p], flip=flip).mean(0) * 100
                                        for p in range(N_SUPPORT)])
                    stds.append(singles.std(0))
            for o, label in enumerate(labels):
                rows.append((ds, label, f, len(names), [s[:, o].mean() for s in scores]))
                if stds:
                    stab.append((ds, label, [sd[o] for sd in stds]))
                if f == 1.0:
                    paired.append((ds, label, [s[:, o] for s in scores]))
    names = " | ".join(Path(b).name or b for b in args.bundle)
    print(f"| set | object | zoom | cases | {names} |")
    print("|" + "---|" * (4 + len(bundles)))
    for ds, label, f, n, vals in rows:
        print(f"| {ds} | {label} | {f:g} | {n} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    plain = [r[4] for r in rows if r[2] == 1.0]
    print("| **mean, unzoomed** | | | | " + " | ".join(f"**{v:.2f}**" for v in np.mean(plain, 0)) + " |")
    if any(r[2] != 1.0 for r in rows):
        zoomed = [r[4] for r in rows if r[2] != 1.0]
        print("| **mean, zoomed** | | | | " + " | ".join(f"**{v:.2f}**" for v in np.mean(zoomed, 0)) + " |")
    if stab:
        print("\nstd over the 5 single support pairs (unzoomed check cases, Dice %)\n")
        print(f"| set | object | {names} |")
        print("|" + "---|" * (2 + len(bundles)))
        for ds, label, vals in stab:
            print(f"| {ds} | {label} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        print("| **mean** | | " + " | ".join(f"**{v:.2f}**" for v in np.mean([r[2] for r in stab], 0)) + " |")
    if len(bundles) > 1:
        cases = "reporting cases" if args.reporting else "unzoomed check cases"
        print(f"\npaired difference against {Path(args.bundle[0]).name}, {cases}: "
              "mean [90 % bootstrap interval]\n")
        print("| set | object | cases | " + " | ".join(Path(b).name or b for b in args.bundle[1:]) + " |")
        print("|" + "---|" * (2 + len(bundles)))
        for ds, label, per in paired:
            cells = [paired_interval(per[0], p) for p in per[1:]]
            print(f"| {ds} | {label} | {len(per[0])} | "
                  + " | ".join(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, lo, hi in cells) + " |")


if __name__ == "__main__":
    main()
