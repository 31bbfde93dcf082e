"""Adds the memory mode to a LiteMedSAM + PPG bundle: two graphs, [memory], fixtures.

  python -m proxyseg_model.memory_export --checkpoint runs/litemem.pt --bundle ../../models/litemedsam-ppg \
      --fixtures 8
  python -m proxyseg_model.memory_export --random-weights --bundle /tmp/copy-of-bundle   # tests

Writes `memory_attention.onnx` and `memory_encoder.onnx` (lite_memory_attention.py,
lite_memory_encoder.py: only the project's own trained weights, no LiteMedSAM tensor), and
adds to manifest.toml `[graphs] memory_attention / memory_encoder`, a `[memory]` table
(memory_dim, memory_size, frame_slots, recent_frames, revisit_first) and `[provenance.memory]`. The four
frame-by-frame graphs are not touched. `--fixtures N` runs an N-frame ultrasound phantom clip
through the frame loop (lite_track.py) in PyTorch and in ONNX Runtime and writes the inputs and
ONNX Runtime's mask logits under fixtures/memory* for the Rust engine's parity test; it fails
when the two differ by more than TORCH_TOLERANCE.
"""
from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import numpy as np
import onnx
import torch

from .export import OPSET, git_commit, save_graph, trace, write_manifest
from .lite_track import OrtMemoryLoop, fill_bank, frame_slots, track_reference
from .train_memory import PPG_CHECKPOINT, MemoryConfig, build_memory, load_memory

GRAPHS = ("memory_attention", "memory_encoder")
# The Rust engine's loop vs these fixtures (ONNX Runtime both; the inputs are given exactly).
TOLERANCE = 1e-3
# PyTorch vs ONNX Runtime over the whole 8-frame loop. The frame-by-frame path of this backbone
# alone already differs by ~1.3e-3 on logits of magnitude ~50 (TinyViT in torch vs its export
# form; bundle_data.LOGITS_TOL_BOX = 2e-3 for the same reason), and in the loop each frame's
# logits feed the next frame's memory, so the difference carries (2.7e-3 at most measured).
# The memory graphs themselves agree with PyTorch to < 1e-6 (check_parity; in the json).
TORCH_TOLERANCE = 5e-3
FIXTURE_SEED = 7500          # ultrasound phantom seed of the parity clip (held-out range)
FIXTURE_SUPPORT_SEED = 9000  # its support pair


def example_inputs(cfg: MemoryConfig, k: int = 2, seed: int = 0) -> dict:
    """Fixed random inputs (K = 2, some slots empty) for tracing and the tests."""
    g = torch.Generator().manual_seed(seed)
    m, dm, hm = cfg.frame_slots, cfg.memory_dim, cfg.memory_size
    return {"image_embeddings": torch.randn(1, 256, 64, 64, generator=g),
            "mask_logits": torch.randn(k, 1, 256, 256, generator=g) * 4,
            "frame_memory": torch.randn(k, m, dm, hm, hm, generator=g),
            "frame_tpos": torch.arange(m, dtype=torch.int64).flip(0),
            "frame_valid": (torch.arange(m) % 2 == 0).float()}


def graph_meta(bundle: Path, cfg: MemoryConfig) -> dict:
    """The bundle's graph metadata (read from its mask decoder) + the memory mode's."""
    base = onnx.load(str(bundle / "mask_decoder.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in base.metadata_props}
    meta.update({"memory_dim": str(cfg.memory_dim), "memory_size": f"{cfg.memory_size},{cfg.memory_size}",
                 "frame_slots": str(cfg.frame_slots), "recent_frames": str(cfg.recent_frames)})
    return meta


def export_graphs(enc, att, cfg: MemoryConfig, bundle: Path) -> dict:
    """Traces the two graphs into `bundle` (opset OPSET); returns their sizes in bytes."""
    ex = example_inputs(cfg)
    specs = {
        "memory_attention": (att, (ex["image_embeddings"], ex["frame_memory"], ex["frame_tpos"], ex["frame_valid"]),
                             ["image_embeddings", "frame_memory", "frame_tpos", "frame_valid"],
                             ["conditioned_embeddings"],
                             {"frame_memory": {0: "K"}, "conditioned_embeddings": {0: "K"}}),
        "memory_encoder": (enc, (ex["image_embeddings"], ex["mask_logits"]), ["image_embeddings", "mask_logits"],
                           ["frame_memory"], {"mask_logits": {0: "K"}, "frame_memory": {0: "K"}}),
    }
    meta = graph_meta(bundle, cfg)
    sizes = {}
    for name, (mod, args, ins, outs, dyn) in specs.items():
        mod.eval()
        proto = trace(mod, args, bundle, name, ins, outs, dyn)
        sizes[name] = save_graph(proto, bundle, name, meta)
    return sizes


def update_manifest(bundle: Path, cfg: MemoryConfig, provenance: dict, revisit: bool = True) -> dict:
    """Adds [graphs] memory_*, [memory] (after [outputs]) and [provenance.memory]; `revisit`:
    the loop revisits frame 0 (lite_track.py)."""
    path = bundle / "manifest.toml"
    m = tomllib.loads(path.read_text())
    for g in GRAPHS:
        m["graphs"][g] = f"{g}.onnx"
    memory = {"memory_dim": cfg.memory_dim, "memory_size": [cfg.memory_size, cfg.memory_size],
              "frame_slots": cfg.frame_slots, "recent_frames": cfg.recent_frames, "revisit_first": revisit}
    out = {}
    for key, value in m.items():
        if key != "memory":
            out[key] = value
        if key == "outputs":
            out["memory"] = memory
    out.setdefault("memory", memory)
    out["provenance"]["memory"] = provenance
    write_manifest(path, out)
    return out


def sessions(bundle: Path, graphs=None, threads: int = 2, int8: bool = False) -> dict:
    """ONNX Runtime sessions of the manifest's graphs (all, or the named ones); `int8`: the
    manifest's CPU int8 variants where it lists them (runtime.graph_path)."""
    import onnxruntime as ort

    from .runtime import graph_path
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as runtime.OrtBundle
    return {g: ort.InferenceSession(str(graph_path(bundle, m, g, int8)), so, providers=["CPUExecutionProvider"])
            for g in m["graphs"] if graphs is None or g in graphs}


def fixture_clip(frames: int):
    """An ultrasound phantom clip at 256 x 256 (no resize, so the model input is exactly the
    integer display / 255) and one support pair: u8 frames N x 3 x S x S, u8 support images
    P x 3 x S x S, u8 support masks P x K x S x S."""
    from .phantoms import ultrasound
    from .preprocess import case_displays

    def u8(case):
        d = np.rint(case_displays(case)).clip(0, 255).astype(np.uint8)  # F x H x W x 3
        return np.ascontiguousarray(d.transpose(0, 3, 1, 2)), case["masks"].astype(np.uint8)

    clip, _ = u8(ultrasound.generate(FIXTURE_SEED, frames=frames, rows=256, cols=256))
    sup, sup_masks = u8(ultrasound.generate(FIXTURE_SUPPORT_SEED, frames=1, rows=256, cols=256))
    return clip, sup, sup_masks


def write_fixtures(bundle: Path, ppg: Path, enc, att, cfg: MemoryConfig, n: int, revisit: bool = True) -> dict:
    """Runs the parity clip through PyTorch and ONNX Runtime; writes fixtures/memory.json and
    memory-*.{u8,f32}. Raises when they differ by more than TORCH_TOLERANCE."""
    from .train_memory import frozen_model
    clip, sup, sup_masks = fixture_clip(n)
    frames, si, sm = clip.astype(np.float32) / 255, sup.astype(np.float32) / 255, sup_masks.astype(np.float32)
    loop = OrtMemoryLoop(sessions(bundle), cfg.frame_slots, cfg.recent_frames, revisit)
    ctx = loop.support(si, sm)
    ort_logits = np.stack(loop.track(frames, ctx))                               # N x K x 1 x L x L
    per_frame = np.stack(loop.track(frames, ctx, memory=False))
    model = frozen_model(ppg)
    ref = np.stack(track_reference(model, enc, att, torch.from_numpy(frames), torch.from_numpy(si),
                                   torch.from_numpy(sm), cfg.recent_frames, revisit))
    first_pass = np.stack(OrtMemoryLoop(loop.s, cfg.frame_slots, cfg.recent_frames).track(frames[:1], ctx))[0]
    diff = float(np.abs(ref - ort_logits).max())
    agreement = float(((ref > 0) == (ort_logits > 0)).mean())
    per_frame_diff = [float(np.abs(r - o).max()) for r, o in zip(ref, ort_logits)]
    fx = bundle / "fixtures"
    fx.mkdir(exist_ok=True)
    tensors = {"frames": (clip, "u8"), "support_images": (sup, "u8"), "support_masks": (sup_masks, "u8"),
               "mask_logits": (ort_logits.astype(np.float32), "f32"),
               "first_pass_logits": (first_pass.astype(np.float32), "f32")}
    doc = {"bundle": bundle.name, "byte_order": "little-endian", "input_size": 256,
           "recent_frames": cfg.recent_frames, "frame_slots": cfg.frame_slots, "revisit_first": revisit,
           "objects": ["pubic symphysis", "fetal head"],
           "description": "Memory-mode parity clip (lite_track.py frame loop): ultrasound phantom seed "
                          f"{FIXTURE_SEED}, {n} frames of 256 x 256 (no resize or padding), one support pair "
                          f"(phantom seed {FIXTURE_SUPPORT_SEED}), both objects in order. frames and "
                          "support_images are u8 display values: the model input is f32 value / 255 "
                          "(pixel_mean 0, pixel_std 255); support_masks u8 0/1 (as f32). mask_logits: "
                          "ONNX Runtime's output of the memory loop per frame [N,K,1,256,256], frame 0's "
                          "after the revisit (revisit_first); first_pass_logits: frame 0 before it "
                          "(frame by frame, [K,1,256,256]).",
           "tolerance": {"mask_logits_max_abs": TOLERANCE},
           "torch_tolerance": TORCH_TOLERANCE,
           "torch_vs_onnxruntime_max_abs": diff,
           "torch_vs_onnxruntime_mask_agreement": agreement,
           "mask_logits_max_magnitude": float(np.abs(ort_logits).max()),
           "torch_vs_onnxruntime_max_abs_per_frame": per_frame_diff,
           "graph_parity": check_parity(enc, att, cfg, bundle),
           "memory_vs_frame_by_frame_max_abs": float(np.abs(per_frame - ort_logits).max()),
           "frame0_first_pass_vs_frame_by_frame_max_abs": float(np.abs(per_frame[0] - first_pass).max()),
           "frame0_revisit_vs_first_pass_max_abs": float(np.abs(ort_logits[0] - first_pass).max()),
           "tensors": {}}
    for name, (arr, dt) in tensors.items():
        file = f"fixtures/memory-{name}.{dt}"
        arr.astype("<f4" if dt == "f32" else np.uint8).tofile(bundle / file)
        doc["tensors"][name] = {"file": file, "dtype": dt, "shape": list(arr.shape)}
    (fx / "memory.json").write_text(json.dumps(doc, indent=1))
    if diff > TORCH_TOLERANCE:
        raise SystemExit(f"memory fixtures: PyTorch vs ONNX Runtime differ by {diff:.2e} > {TORCH_TOLERANCE}")
    return doc


def check_parity(enc, att, cfg: MemoryConfig, bundle: Path, seed: int = 1, k: int = 3) -> dict:
    """Torch vs ONNX Runtime on random inputs (K other than the traced one), and the empty-slot
    invariance: garbage in the empty slots, and the slots reordered, change nothing."""
    ex = example_inputs(cfg, k=k, seed=seed)
    s = sessions(bundle, GRAPHS)
    with torch.no_grad():
        mem_t = enc(ex["image_embeddings"], ex["mask_logits"])
        cond_t = att(ex["image_embeddings"], ex["frame_memory"], ex["frame_tpos"], ex["frame_valid"])
    mem_o = s["memory_encoder"].run(None, {"image_embeddings": ex["image_embeddings"].numpy(),
                                           "mask_logits": ex["mask_logits"].numpy()})[0]

    def attend(mem, tpos, valid):
        return s["memory_attention"].run(None, {"image_embeddings": ex["image_embeddings"].numpy(),
                                                "frame_memory": mem, "frame_tpos": tpos, "frame_valid": valid})[0]
    fm, tp, va = ex["frame_memory"].numpy(), ex["frame_tpos"].numpy(), ex["frame_valid"].numpy()
    cond_o = attend(fm, tp, va)
    zeroed = fm * va[None, :, None, None, None]
    empty = attend(np.zeros_like(fm), tp, np.zeros_like(va))
    return {"memory_encoder": float(np.abs(mem_t.numpy() - mem_o).max()),
            "memory_attention": float(np.abs(cond_t.numpy() - cond_o).max()),
            "empty_slots_contents": float(np.abs(attend(zeroed, tp, va) - cond_o).max()),
            "no_slot_is_identity": float(np.abs(empty - ex["image_embeddings"].numpy()).max())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="a train_memory checkpoint")
    ap.add_argument("--random-weights", action="store_true", help="untrained modules (fast tests)")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--ppg", type=Path, default=PPG_CHECKPOINT,
                    help="the bundle's train_lite checkpoint (PyTorch side of the fixtures)")
    ap.add_argument("--fixtures", type=int, default=0, help="frames of the parity clip (0: none)")
    ap.add_argument("--no-revisit", action="store_true",
                    help="[memory] revisit_first = false: frame 0 keeps its first-pass mask (lite_track.py)")
    ap.add_argument("--command", action="append", default=[], help="provenance: commands that produced it")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    if a.random_weights:
        cfg = MemoryConfig()
        enc, att = build_memory(cfg)
        enc.eval(), att.eval()
        training = {"random_weights": "true"}
    else:
        enc, att, ck = load_memory(a.checkpoint)
        cfg = MemoryConfig(**ck["config"])
        training = {k: str(v) for k, v in ck.get("extra", {}).items()}
    sizes = export_graphs(enc, att, cfg, a.bundle)
    update_manifest(a.bundle, cfg, {"commands": a.command, "git_commit": git_commit(), "opset": OPSET,
                                    "training": training, "graph_bytes": sizes}, not a.no_revisit)
    print({k: f"{v / 1e6:.2f} MB" for k, v in sizes.items()}, json.dumps(check_parity(enc, att, cfg, a.bundle)))
    if a.fixtures:
        doc = write_fixtures(a.bundle, a.ppg, enc, att, cfg, a.fixtures, not a.no_revisit)
        print({k: v for k, v in doc.items() if k.endswith("max_abs")})


if __name__ == "__main__":
    main()
