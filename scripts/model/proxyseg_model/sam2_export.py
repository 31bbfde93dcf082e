"""Export SAM 2 + the PPG as a contract-2 bundle (family "sam2", docs/bundles.md).

  python -m proxyseg_model.sam2_export --config sam2.1_hiera_t --checkpoint sam2.1_hiera_tiny.pt \
      --out ../../models/sam2.1-tiny-ppg [--ppg runs/sam2-ppg.pt]
  python -m proxyseg_model.sam2_export --config sam2.1_hiera_t --random-weights --image-size 256 \
      --out /tmp/sam2-random --fixtures 16      # what the tests run: no checkpoint can be fetched

Six graphs: image_encoder, support_encoder, prompt_generator (the PPG, as in contract 1),
memory_attention (memory_attention.py), mask_decoder and memory_encoder (sam2_graphs.py).
`--fixtures F` also runs an F-frame clip through SAM 2's own modules (PyTorch) and through the
exported graphs (ONNX Runtime) and writes both results under fixtures/ for the Rust engine's
parity test; it fails when PyTorch and ONNX Runtime differ by more than the tolerance.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .export import PromptGeneratorGraph, SupportEncoderGraph, git_commit, save_graph, trace, write_manifest
from .memory_attention import MemoryAttentionGraph
from .ppg import PPGConfig, ProxyPromptGenerator
from .sam2_graphs import CONFIGS, ImageEncoderGraph, MaskDecoderGraph, MemoryEncoderGraph, build, random_checkpoint
from .sam2_track import track_onnx, track_reference

CONTRACT = 2
VERSION = "1.0.0"
MAX_OBJECTS = 3
MAX_PAIRS = 16
GRAPHS = ("image_encoder", "support_encoder", "prompt_generator", "memory_attention", "mask_decoder",
          "memory_encoder")
TOLERANCE = 1e-3
# SAM 2's own preprocessing: [0, 1] then ImageNet mean / std, i.e. on the 0..255 scale:
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


class PPGHolder(torch.nn.Module):
    """The contract-1 PPG graph wrappers take an object with `.ppg`."""

    def __init__(self, ppg):
        super().__init__()
        self.ppg = ppg


def ppg_for(s, seed: int = 0) -> ProxyPromptGenerator:
    """The paper's PPG on SAM 2's top-level embeddings (C = 256). Its prompt goes into memory
    attention, not into SAM's prompt encoder, so no point or box tokens are read out."""
    torch.manual_seed(seed)
    h = s.sam_image_embedding_size
    cfg = PPGConfig(embed_dim=s.hidden_dim, grid=min(16, h), key_dim=64, value_dim=128, token_grid=min(8, h),
                    mask_readout=False, box_tokens=False)
    return ProxyPromptGenerator(cfg).eval()


def dims(s, ppg) -> dict:
    h = s.sam_image_embedding_size
    return {"S": s.image_size, "C": s.hidden_dim, "h": h, "Dm": s.mem_dim, "T": ppg.tokens,
            "M": s.num_maskmem, "P": s.max_obj_ptrs_in_encoder,
            "C0": s.sam_mask_decoder.conv_s0.out_channels, "C1": s.sam_mask_decoder.conv_s1.out_channels}


def example_inputs(s, ppg, n: int = 3, k: int = 2, seed: int = 0) -> dict:
    d = dims(s, ppg)
    g = torch.Generator().manual_seed(seed)
    S, C, h, dm = d["S"], d["C"], d["h"], d["Dm"]
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return {
        "image": r(1, 3, S, S), "support_images": r(n, 3, S, S),
        "support_masks": (torch.rand(n, k, S, S, generator=g) > 0.5).float(),
        "support_embeddings": r(n, C, h, h), "image_embeddings": r(1, C, h, h),
        "prompt_tokens": r(k, d["T"], C), "frame_memory": r(k, d["M"], dm, h, h),
        "frame_tpos": torch.arange(d["M"]) % d["M"], "frame_valid": (torch.arange(d["M"]) % 2).float(),
        "obj_ptrs": r(k, d["P"], C), "ptr_pos": torch.linspace(0, 1, d["P"]),
        "ptr_valid": (torch.arange(d["P"]) % 3 > 0).float(),
        "conditioned_embeddings": r(k, C, h, h), "high_res_feats_0": r(1, d["C0"], 4 * h, 4 * h),
        "high_res_feats_1": r(1, d["C1"], 2 * h, 2 * h), "mask_logits": r(k, 1, 4 * h, 4 * h),
        "object_score_logits": r(k, 1),
    }


def specs(s, ppg) -> dict:
    """name -> (module, input names, output names, dynamic axes)."""
    holder = PPGHolder(ppg)
    K = {0: "K"}
    return {
        "image_encoder": (ImageEncoderGraph(s), ["image"], ["image_embeddings", "high_res_feats_0", "high_res_feats_1"], {}),
        "support_encoder": (SupportEncoderGraph(holder), ["support_images", "support_masks", "support_embeddings"],
                            ["support_keys", "support_values"],
                            {"support_images": {0: "N"}, "support_masks": {0: "N", 1: "K"}, "support_embeddings": {0: "N"},
                             "support_keys": {0: "N"}, "support_values": {0: "N", 1: "K"}}),
        "prompt_generator": (PromptGeneratorGraph(holder), ["image_embeddings", "support_keys", "support_values"],
                             ["prompt_tokens"], {"support_keys": {0: "N"}, "support_values": {0: "N", 1: "K"},
                                                 "prompt_tokens": K}),
        "memory_attention": (MemoryAttentionGraph(s, s.num_maskmem, s.max_obj_ptrs_in_encoder),
                             ["image_embeddings", "prompt_tokens", "frame_memory", "frame_tpos", "frame_valid",
                              "obj_ptrs", "ptr_pos", "ptr_valid"], ["conditioned_embeddings"],
                             {"prompt_tokens": K, "frame_memory": K, "obj_ptrs": K, "conditioned_embeddings": K}),
        "mask_decoder": (MaskDecoderGraph(s), ["conditioned_embeddings", "high_res_feats_0", "high_res_feats_1"],
                         ["mask_logits", "iou_scores", "obj_ptr", "object_score_logits"],
                         {"conditioned_embeddings": K, "mask_logits": K, "iou_scores": K, "obj_ptr": K,
                          "object_score_logits": K}),
        "memory_encoder": (MemoryEncoderGraph(s), ["image_embeddings", "mask_logits", "object_score_logits"],
                           ["frame_memory"], {"mask_logits": K, "object_score_logits": K, "frame_memory": K}),
    }


def metadata(name: str, s, ppg) -> dict:
    d = dims(s, ppg)
    return {"contract": str(CONTRACT), "name": name, "version": VERSION, "family": "sam2",
            "input_size": str(d["S"]), "embed_dim": str(d["C"]), "embed_size": f"{d['h']},{d['h']}",
            "prompt_tokens": str(d["T"]), "max_objects": str(MAX_OBJECTS), "max_pairs": str(MAX_PAIRS)}


def export_graphs(s, ppg, out: Path, name: str) -> dict:
    """Exports the six graphs into `out` (graphs over 1.8 GB as external data). Returns sizes."""
    out.mkdir(parents=True, exist_ok=True)
    ex = example_inputs(s, ppg)
    with torch.no_grad():
        ex["support_keys"], ex["support_values"] = ppg.encode_support(
            ex["support_images"], ex["support_masks"], ex["support_embeddings"])
    meta = metadata(name, s, ppg)
    sizes = {}
    for gname, (mod, ins, outs, dyn) in specs(s, ppg).items():
        mod.eval()
        proto = trace(mod, tuple(ex[i] for i in ins), out, gname, ins, outs, dyn)
        sizes[gname] = save_graph(proto, out, gname, meta)
    return sizes


def manifest(name: str, s, ppg, config: str, provenance: dict, recent: int) -> dict:
    d = dims(s, ppg)
    return {
        "contract": CONTRACT, "name": name, "version": VERSION, "family": "sam2", "input_size": d["S"],
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "embed_dim": d["C"], "embed_size": [d["h"], d["h"]],
        "prompt_tokens": d["T"], "max_objects": MAX_OBJECTS, "max_pairs": MAX_PAIRS,
        "low_res_size": [4 * d["h"], 4 * d["h"]],
        "graphs": {g: f"{g}.onnx" for g in GRAPHS},
        "memory": {"config": config, "memory_dim": d["Dm"], "frame_slots": d["M"], "pointer_slots": d["P"],
                   "recent_frames": recent, "high_res_channels": [d["C0"], d["C1"]]},
        "provenance": provenance,
    }


def clip(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic cine (an ellipse drifting across speckle, the intensity drifting), normalised
    like the engine's input, and a 2-pair support set with 2 objects. Returns frames F x 3 x S x S,
    support_images N x 3 x S x S, support_masks N x K x S x S."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def scene(cx, cy, gain):
        body = ((xx - cx) / 0.22) ** 2 + ((yy - cy) / 0.15) ** 2 < 1
        core = ((xx - cx - 0.05) / 0.07) ** 2 + ((yy - cy) / 0.06) ** 2 < 1
        img = 60 + 90 * body + 70 * core + rng.normal(0, 18, (size, size))
        img = np.clip(img * gain, 0, 255)
        x = (np.repeat(img[None], 3, 0) - np.array(PIXEL_MEAN)[:, None, None]) / np.array(PIXEL_STD)[:, None, None]
        return x.astype(np.float32), np.stack([body, core]).astype(np.float32)

    frames = np.stack([scene(0.4 + 0.01 * t, 0.5 + 0.005 * t, 1.0 + 0.01 * t)[0] for t in range(n)])
    sup = [scene(0.45, 0.45, 1.0), scene(0.55, 0.5, 0.9)]
    return frames, np.stack([x for x, _ in sup]), np.stack([m for _, m in sup])


def write_fixtures(s, ppg, out: Path, n: int, recent: int) -> dict:
    """Runs the clip through PyTorch (SAM 2's modules) and ONNX Runtime; writes inputs and the
    ONNX Runtime result for the Rust test. Returns the measured differences."""
    import onnxruntime as ort

    frames, simg, smask = clip(n, s.image_size)
    ref = track_reference(s, ppg, torch.from_numpy(frames), torch.from_numpy(simg), torch.from_numpy(smask), recent)
    sessions = {g: ort.InferenceSession(str(out / f"{g}.onnx"), providers=["CPUExecutionProvider"]) for g in GRAPHS}
    got = track_onnx(sessions, frames, simg, smask, recent, s.num_maskmem, s.max_obj_ptrs_in_encoder)
    diffs = {key: max(float(np.abs(r[key].numpy() - g[key]).max()) for r, g in zip(ref, got))
             for key in ("mask_logits", "iou_scores", "obj_ptr", "object_score_logits")}
    fx = out / "fixtures"
    fx.mkdir(exist_ok=True)
    logits = np.stack([g["mask_logits"] for g in got]).astype("<f4")
    arrays = {"frames": frames, "support_images": simg, "support_masks": smask, "mask_logits": logits,
              "object_score_logits": np.stack([g["object_score_logits"] for g in got]).astype("<f4")}
    for key, a in arrays.items():
        a.astype("<f4").tofile(fx / f"clip-{key}.f32")
    appearing = float((arrays["object_score_logits"] > 0).mean())
    doc = {
        "bundle": out.name, "byte_order": "little-endian", "frames": n, "recent_frames": recent,
        "shapes": {k: list(a.shape) for k, a in arrays.items()},
        "files": {k: f"clip-{k}.f32" for k in arrays},
        "tolerance": {"mask_logits_max_abs": TOLERANCE},
        "pytorch_vs_onnxruntime": diffs, "objects_appearing": appearing,
        "description": "A synthetic cine through SAM 2's own modules (PyTorch) and through the exported graphs "
                       "(ONNX Runtime, CPU) with the memory bank of sam2_track.slots; mask_logits are ONNX "
                       "Runtime's, per frame K x 1 x 4h x 4w.",
    }
    (fx / "fixtures.json").write_text(json.dumps(doc, indent=1))
    worst = max(diffs.values())
    if worst > TOLERANCE:
        raise SystemExit(f"PyTorch vs ONNX Runtime differ by {worst:.3g} (> {TOLERANCE}): {diffs}")
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sam2.1_hiera_t", choices=CONFIGS)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a SAM 2 / 2.1 checkpoint (.pt) of that config")
    src.add_argument("--random-weights", action="store_true", help="random weights of the real architecture (tests)")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--ppg", type=Path, help="trained PPG state dict for this backbone (default: untrained, random)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--recent", type=int, default=6, help="recent frames of spatial memory (<= num_maskmem - 1)")
    ap.add_argument("--fixtures", type=int, default=0, help="frames of the parity clip (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    ck = a.checkpoint
    if a.random_weights:
        ck = random_checkpoint(a.config, a.out / "random-weights.pt", a.seed, a.image_size)
    s = build(a.config, ck, a.image_size)
    if a.random_weights:
        ck.unlink()
    if not 1 <= a.recent <= s.num_maskmem - 1:
        ap.error(f"--recent must be 1..{s.num_maskmem - 1}")
    ppg = ppg_for(s, a.seed)
    if a.ppg:
        ppg.load_state_dict(torch.load(a.ppg, map_location="cpu", weights_only=True))
    name = a.name or a.out.name
    sizes = export_graphs(s, ppg, a.out, name)
    prov = {"backbone": f"{a.config} ({'random weights' if a.random_weights else ck.name})",
            "ppg": str(a.ppg) if a.ppg else "untrained (random init, seed %d)" % a.seed,
            "git_commit": git_commit(), "graph_bytes": {k: int(v) for k, v in sizes.items()},
            "notes": "SAM 2 from the PyPI sam2 package (1.1.0). Not for clinical use."}
    write_manifest(a.out / "manifest.toml", manifest(name, s, ppg, a.config, prov, a.recent))
    print(f"exported {name}: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    if a.fixtures:
        doc = write_fixtures(s, ppg, a.out, a.fixtures, a.recent)
        print("PyTorch vs ONNX Runtime, max abs diff over the clip:",
              ", ".join(f"{k} {v:.2e}" for k, v in doc["pytorch_vs_onnxruntime"].items()),
              f"(objects appearing in {doc['objects_appearing']:.0%} of frames)")


if __name__ == "__main__":
    main()
