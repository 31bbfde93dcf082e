"""Decision thresholds ([[threshold]]) chosen for a bundle on its choosing cases.

A bundle's decoder can be biased per object: session 19 found the optic cup drawn at 1.3-1.4x
its annotated area at logit 0. A `[[threshold]]` table cuts that object's mask at another logit.
This scans, per object, the logit its mask is cut at over a grid, with the bundle's resolution
views and [[shape]] forms applied as the engine applies them, on the **choosing cases**: each
data set's training pool without its support cases (evaluate_real's first 5). The validation
cases are never read.

The rule (session 19's, fixed before any bundle was scored with it): an object is listed when
the best logit raises its mean Dice over the choosing cases by >= `--min-gain` (0.5) over
logit 0; the fetal head is judged over PSFHS and HC18 together (one label, one table).

    python -m proxyseg_model.calibrate --bundle /tmp/cand2            # the table
    python -m proxyseg_model.calibrate --bundle /tmp/cand2 --python   # + threshold.SHIPPED's text
    python -m proxyseg_model.calibrate --bundle /tmp/cand2 --write    # a candidate's own tables

`--write` replaces the bundle's [[threshold]] tables with the listed ones, so that a candidate is
judged at its own cut rather than the shipped model's (session 24: a fine-tune's cup at the
shipped cut, 11, lost 2.1 Dice on the selection cases; its own best cut was 3).

The scan keeps the bundle's current thresholds out of it: every object is scored on raw logits.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import realdata, shape, threshold
from .evaluate_real import N_SUPPORT, dice, support_cases
from .runtime import OrtBundle

GRID = [float(x) for x in range(-12, 16)]


def choosing_cases(ds: str) -> list[str]:
    """The training pool without the support cases: what thresholds are chosen on."""
    return realdata.split(ds)[0][N_SUPPORT:]


def scan(bundle: OrtBundle, ds: str, grid: list[float]) -> dict[str, np.ndarray]:
    """label -> Dice [case, grid point] on the choosing cases of `ds`."""
    labels = list(realdata.DATASETS[ds].labels)
    sup = [realdata.load_case(ds, c) for c in support_cases(ds)]
    ctxs = bundle.view_contexts([d for d, _ in sup], [m for _, m in sup], labels)
    forms = ctxs["forms"]
    ctxs["thresholds"] = [0.0] * len(labels)
    names = choosing_cases(ds)
    out = {label: np.zeros((len(names), len(grid))) for label in labels}
    for i, name in enumerate(names):
        display, truth = realdata.load_case(ds, name)
        _, logits, _ = bundle.segment_views(display, ctxs, labels)
        for o, label in enumerate(labels):
            one = [None] * len(labels)
            one[o] = forms[o]
            for g, t in enumerate(grid):
                cut = [t if k == o else 0.0 for k in range(len(labels))]
                m = threshold.masks(logits, cut)
                if forms[o]:
                    m = shape.apply(one, m)
                out[label][i, g] = dice(m[o], truth[o])
    return out


def choose(scores: dict[str, np.ndarray], grid: list[float], min_gain: float) -> list[dict]:
    """Rows per label: Dice at logit 0, the best logit (of tied ones, the nearest 0) and its Dice,
    whether it is listed."""
    zero = grid.index(0.0)
    rows = []
    for label, s in scores.items():
        means = s.mean(0) * 100
        # among tied logits the one nearest 0: a table only where a move pays
        tied = [g for g in range(len(grid)) if np.isclose(means[g], means.max())]
        best = min(tied, key=lambda g: abs(grid[g]))
        gain = means[best] - means[zero]
        rows.append({"label": label, "cases": s.shape[0], "at_zero": means[zero], "logit": grid[best],
                     "best": means[best], "gain": gain, "listed": gain >= min_gain})
    return rows


def tables(rows: list[dict]) -> list[dict]:
    """The listed rows as [[threshold]] tables (threshold.SHIPPED's form)."""
    return [{"objects": [r["label"]], "logit": r["logit"],
             "note": f"calibrate.py: {r['at_zero']:.1f} -> {r['best']:.1f} Dice on the choosing cases"}
            for r in rows if r["listed"]]


def write_tables(bundle: Path, rules: list[dict]) -> None:
    """Replaces the manifest's [[threshold]] tables with `rules` (none: the key goes)."""
    import tomllib

    from .export import write_manifest
    threshold.check(rules)
    path = bundle / "manifest.toml"
    m = tomllib.loads(path.read_text())
    m.pop("threshold", None)
    if rules:
        m["threshold"] = rules
    write_manifest(path, m)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--sets", nargs="+", default=list(realdata.DATASETS))
    ap.add_argument("--min-gain", type=float, default=0.5, help="Dice points over logit 0 that list an object")
    ap.add_argument("--python", action="store_true", help="also print the listed tables as threshold.SHIPPED")
    ap.add_argument("--write", action="store_true",
                    help="replace the bundle's [[threshold]] tables with the listed ones (all sets must be scanned)")
    args = ap.parse_args(argv)
    if args.write and set(args.sets) != set(realdata.DATASETS):
        raise SystemExit("--write: a label's table is chosen over all its data sets; leave --sets out")
    bundle = OrtBundle(Path(args.bundle))
    merged: dict[str, list[np.ndarray]] = {}
    for ds in args.sets:
        for label, s in scan(bundle, ds, GRID).items():
            merged.setdefault(label, []).append(s)
    rows = choose({k: np.concatenate(v) for k, v in merged.items()}, GRID, args.min_gain)
    print(f"choosing cases (training pool without the {N_SUPPORT} support cases), mean Dice %, "
          f"grid {GRID[0]:g}..{GRID[-1]:g}")
    print("| object | cases | logit 0 | best logit | at best | gain | listed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['cases']} | {r['at_zero']:.1f} | {r['logit']:g} | {r['best']:.1f} | "
              f"{r['gain']:+.1f} | {'yes' if r['listed'] else 'no'} |")
    if args.python:
        print([{"objects": [r["label"]], "logit": r["logit"]} for r in rows if r["listed"]])
    if args.write:
        listed = tables(rows)
        write_tables(Path(args.bundle), listed)
        print(f"{args.bundle}/manifest.toml: [[threshold]] = {[(t['objects'][0], t['logit']) for t in listed]}")


if __name__ == "__main__":
    main()
