"""Two train_lite runs of one model averaged tensor by tensor (a weight-space ensemble).

A fine-tune and the run it resumed from share their start, so their weights can be mixed
(Wortsman et al. 2022, WiSE-FT: interpolating a fine-tune with its start often keeps what each
does best). `--alpha` is the share of `--b`. Floating-point tensors are mixed; buffers that are
not floating point (counters) come from `--a`. The LoRA factors are mixed one by one, so the
update B A of the mix is not exactly the mix of the two updates; the closer the runs, the
smaller that difference (it is second order in their distance).

    python -m proxyseg_model.soup --a runs/lite-ppg4-lora.pt --b runs/lite-ppg5.pt --alpha 0.5 \\
        --out runs/lite-ppg5-soup.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def mix(a: dict, b: dict, alpha: float) -> dict:
    """(1 - alpha) a + alpha b for every floating-point tensor; the runs must match key for key."""
    if set(a) != set(b):
        raise SystemExit(f"the runs differ in their tensors: {sorted(set(a) ^ set(b))[:6]}")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise SystemExit(f"{k}: shape {tuple(va.shape)} vs {tuple(vb.shape)}")
        out[k] = torch.lerp(va, vb.to(va.dtype), alpha) if va.is_floating_point() else va.clone()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="a train_lite checkpoint (.pt)")
    ap.add_argument("--b", required=True, help="a train_lite checkpoint of the same model (.pt)")
    ap.add_argument("--alpha", type=float, default=0.5, help="the share of --b, 0..1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise SystemExit("--alpha must be within 0..1")
    ca = torch.load(args.a, map_location="cpu", weights_only=False)
    cb = torch.load(args.b, map_location="cpu", weights_only=False)
    if ca["config"] != cb["config"] or ca["lora"] != cb["lora"]:
        raise SystemExit("the runs are of different models (config or LoRA differ)")
    extra = dict(cb["extra"])
    extra.update({"soup": {"a": args.a, "b": args.b, "alpha": args.alpha}})
    torch.save({**cb, "state": mix(ca["state"], cb["state"], args.alpha), "extra": extra}, Path(args.out))
    print(f"{args.out}: (1 - {args.alpha}) {args.a} + {args.alpha} {args.b}, {len(ca['state'])} tensors")


if __name__ == "__main__":
    main()
