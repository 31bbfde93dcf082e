"""Memory mode vs frame by frame, same bundle, through ONNX Runtime (issue 15 item 3).

  python -m proxyseg_model.evaluate_memory --bundle ../../models/litemedsam-ppg --write

Held-out sequences (memory_data.py, split "val"; built and cached on first use): the first 16
validation cases of each real data set as sequences (all 4 of DRIVE; the first 4 are exactly
evaluate_sequences' sequences and support sets: never trained on), 16 ultrasound phantom cine
loops and 16 MR phantom volumes (seeds 7000-7015, disjoint from training's 20000+), 8 frames
each. (Session 10 used 4 per real set and 8 per phantom kind.) Both modes run the bundle's
graphs: the image encoder's output and the PPG's prompt tokens are computed once per frame by
those graphs (they are identical in both modes) and cached; frame by frame then runs the mask
decoder on the raw embeddings, memory mode runs memory_attention -> mask_decoder ->
memory_encoder with the engine's slot policy (lite_track.OrtMemoryLoop). Per object: mean Dice
over all frames at the image's native resolution, and the instability: mean 1 - Dice between
consecutive predicted masks minus the same for the truth (x 100). In both modes the masks are
cut at the manifest's [[threshold]] logits (threshold.py) and scored after its [[shape]] rules
(shape.py), as the engine returns them. Timing: the
whole frame (encoder + PPG + [memory attention +] decoder per object [+ memory encoder]) on one
held-out ultrasound cine loop (K = 2), ONNX Runtime with 2 threads.

`--write` puts the table into <bundle>/evaluation.md (section "Memory mode") and the
manifest's [evaluation.memory].
"""
from __future__ import annotations

import argparse
import json
import re
import time
import tomllib
from pathlib import Path

import numpy as np

from . import memory_data, shape, threshold
from .evaluate_real import dice
from .export import write_manifest
from .lite_track import OrtMemoryLoop
from .memory_export import sessions
from .preprocess import postprocess
from .runtime import OrtBundle
from .sequences import instability

SECTION = "## Memory mode vs frame by frame"
COMMAND = "python -m proxyseg_model.evaluate_memory --bundle ../../models/litemedsam-ppg --write"


def run_sequence(loop: OrtMemoryLoop, seq: dict, memory: bool, forms=(), thresholds=()) -> np.ndarray:
    """Native-resolution masks F x K x H x W of one cached sequence, each object cut at its
    threshold (`thresholds`, threshold.object_thresholds; 0 when empty) and with the [[shape]]
    rules applied in each object's form (`forms`, shape.object_forms), as the engine does in
    both modes."""
    logits = loop.run(seq["emb"].shape[0],
                      lambda t: (seq["emb"][t:t + 1].float().numpy(), seq["prompts"][t].numpy(),
                                 seq["images"][t:t + 1].float().numpy()), memory)
    cut = thresholds or [0.0] * len(seq["labels"])
    masks = [threshold.masks(postprocess(x, seq["resized_hw"], seq["orig_hw"], 256)[1], cut) for x in logits]
    return np.stack([shape.apply(forms, m) if any(forms) else m for m in masks])


def object_forms(rules: list[dict], seq: dict) -> list[str | None]:
    """The form the bundle's [[shape]] rules give each object of a held-out sequence: its support set
    is memory_data's for the group (the first training-pool cases, or the phantom frames)."""
    if not rules:
        return [None] * len(seq["labels"])
    _, masks = memory_data.SupportContexts.pairs((seq["group"], None))
    return shape.object_forms(rules, seq["labels"], masks, 256)


def score(seqs: list, loop: OrtMemoryLoop, rules: list[dict] = (), cuts: list[dict] = ()) -> dict:
    """group -> label -> {mode: {dice, instability}} over a list of cached sequences; `rules`: the
    manifest's [[shape]] tables, `cuts`: its [[threshold]] tables."""
    acc, covered = {}, {}
    for seq in seqs:
        truth = seq["truth"].numpy()
        if seq["group"] not in covered:
            covered[seq["group"]] = (object_forms(list(rules), seq),
                                     threshold.object_thresholds(list(cuts), seq["labels"]))
        forms, thresholds = covered[seq["group"]]
        for mode in ("frame", "memory"):
            pred = run_sequence(loop, seq, mode == "memory", forms, thresholds)
            for k, label in enumerate(seq["labels"]):
                r = acc.setdefault(seq["group"], {}).setdefault(label, {}).setdefault(mode, {"dice": [], "inst": []})
                r["dice"].extend(dice(pred[t, k], truth[t, k]) for t in range(len(pred)))
                r["inst"].append(instability(pred[:, k]) - instability(truth[:, k]))
    out = {}
    for g, labels in acc.items():
        for label, modes in labels.items():
            out.setdefault(g, {})[label] = {m: {"dice": 100 * float(np.mean(v["dice"])),
                                                "instability": 100 * float(np.mean(v["inst"])),
                                                "sequences": len(v["inst"])} for m, v in modes.items()}
    return out


def timing(loop: OrtMemoryLoop, seq: dict, ctx: dict, repeats: int = 1) -> dict:
    """ms per frame of the whole frame in both modes, from the model input (the cached one)."""
    frames = seq["images"].float().numpy()
    out = {}
    for mode in ("frame", "memory"):
        best = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            loop.track(frames, ctx, mode == "memory")
            ms = 1000 * (time.perf_counter() - t0) / frames.shape[0]
            best = ms if best is None else min(best, ms)
        out[mode] = best
    return out


def met(r: dict) -> tuple[bool, bool]:
    """(Dice +2, instability halved) for one object; a negative frame-by-frame instability
    (masks that move less than the truth) counts as halved when its size halves."""
    f, m = r["frame"], r["memory"]
    return m["dice"] - f["dice"] >= 2.0, abs(m["instability"]) <= 0.5 * abs(f["instability"])


def table(res: dict, ms: dict) -> str:
    lines = ["| sequences | object | Dice, frame by frame | Dice, memory | instability, frame by frame | "
             "instability, memory | +2 Dice | halved |", "|---|---|---|---|---|---|---|---|"]
    for g, labels in res.items():
        for label, r in labels.items():
            d, h = met(r)
            lines.append(f"| {g} ({r['frame']['sequences']}) | {label} | {r['frame']['dice']:.1f} | "
                         f"{r['memory']['dice']:.1f} | {r['frame']['instability']:+.1f} | "
                         f"{r['memory']['instability']:+.1f} | {'yes' if d else 'no'} | {'yes' if h else 'no'} |")
    allr = [r for labels in res.values() for r in labels.values()]
    mean = {m: {k: float(np.mean([r[m][k] for r in allr])) for k in ("dice", "instability")} for m in ("frame", "memory")}
    lines.append(f"| mean | | {mean['frame']['dice']:.1f} | {mean['memory']['dice']:.1f} | "
                 f"{mean['frame']['instability']:+.1f} | {mean['memory']['instability']:+.1f} | | |")
    lines.append("")
    lines.append(f"Whole frame (256 x 256 input, K = 2, ONNX Runtime, 2 threads): frame by frame "
                 f"{ms['frame']:.0f} ms, memory mode {ms['memory']:.0f} ms per frame"
                 + (f"; with the CPU int8 graphs ([int8], the engine's default on the CPU provider) "
                    f"{ms['frame_int8']:.0f} ms and {ms['memory_int8']:.0f} ms. Dice above is the float graphs'."
                    if "memory_int8" in ms else "."))
    return "\n".join(lines)


def write_section(bundle: Path, text: str) -> None:
    """Replaces (or appends) the memory section of <bundle>/evaluation.md."""
    path = bundle / "evaluation.md"
    old = path.read_text() if path.exists() else ""
    old = re.sub(rf"\n*{re.escape(SECTION)}.*?(?=\n## |\Z)", "", old, flags=re.S)
    path.write_text(old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")


def write_manifest_summary(bundle: Path, res: dict, ms: dict) -> None:
    path = bundle / "manifest.toml"
    m = tomllib.loads(path.read_text())
    ev = m.setdefault("evaluation", {})
    mem = {"report": "evaluation.md", "ms_per_frame_frame_by_frame": round(ms["frame"]),
           "ms_per_frame_memory": round(ms["memory"])}
    if "memory_int8" in ms:
        mem.update({"ms_per_frame_frame_by_frame_int8": round(ms["frame_int8"]),
                    "ms_per_frame_memory_int8": round(ms["memory_int8"])})
    for g, labels in res.items():
        for label, r in labels.items():
            mem.setdefault(g, {})[label] = {f"{k}_{'memory' if mode == 'memory' else 'frame_by_frame'}": round(v[k], 1)
                                            for mode, v in r.items() for k in ("dice", "instability")}
    ev["memory"] = mem
    write_manifest(path, m)


def main(argv=None):
    import torch
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--kinds", nargs="+", default=list(memory_data.KINDS))
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--no-revisit", action="store_true",
                    help="memory mode without frame 0's revisit, whatever the manifest says (not with --write)")
    ap.add_argument("--no-shape", action="store_true",
                    help="score the raw masks, without the manifest's [[shape]] rules (not with --write)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cache", type=Path, default=memory_data.CACHE,
                    help="the held-out sequences' cache folder; a cache another bundle's graphs made is refused")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    man = tomllib.loads((a.bundle / "manifest.toml").read_text())
    sess = sessions(a.bundle)
    if (a.no_revisit or a.no_shape) and a.write:
        ap.error("--no-revisit and --no-shape measure what the bundle does not ship: not with --write")
    loop = OrtMemoryLoop.of_manifest(sess, man["memory"])
    loop.revisit = loop.revisit and not a.no_revisit
    res = {}
    for kind in a.kinds:
        memory_data.build_cache(a.bundle, "val", kind,
                                memory_data.VAL_REAL_CASES if kind == "real" else memory_data.VAL_PHANTOMS, a.cache)
        res.update(score(memory_data.load("val", kind, a.cache), loop, [] if a.no_shape else man.get("shape", []),
                         man.get("threshold", [])))
    cine = memory_data.load("val", "us-cine", a.cache)[0]
    ctx = memory_data.SupportContexts(OrtBundle(a.bundle)).get(("us-cine", None))
    ms = timing(loop, cine, ctx, repeats=2)
    if man.get("int8", {}).get("graphs"):  # what the engine runs on the CPU provider by default
        loop8 = OrtMemoryLoop.of_manifest(sessions(a.bundle, int8=True), man["memory"])
        loop8.revisit = loop.revisit
        ctx8 = memory_data.SupportContexts(OrtBundle(a.bundle, int8=True)).get(("us-cine", None))
        ms.update({f"{k}_int8": v for k, v in timing(loop8, cine, ctx8, repeats=2).items()})
    text = table(res, ms)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"results": res, "ms_per_frame": ms}, indent=1))
    if a.write:
        write_section(a.bundle, f"{SECTION} (issue 15 item 3)\n\nRegenerate: `{COMMAND}` (from scripts/model; "
                      "held-out sequences only, see evaluate_memory.py). Same bundle, same support sets, same "
                      "frames in both modes; memory mode = the two memory graphs around the unchanged decoder, "
                      "frame 0 revisited once frame 6 is banked when the manifest says revisit_first; both modes "
                      "cut at the [[threshold]] logits and scored after the [[shape]] rules, as the engine "
                      "returns them. "
                      "Targets per object: Dice +2 and instability (1 - Dice of consecutive predicted masks "
                      "minus the truth's, x 100) halved in size. Timings are from a shared 2-core machine "
                      "(other jobs running); LiteMedSAM's encoder alone is ~0.5 s of each frame there.\n\n"
                      + text)
        write_manifest_summary(a.bundle, res, ms)


if __name__ == "__main__":
    main()
