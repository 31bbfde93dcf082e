#!/usr/bin/env python3
"""Builds a bundle's CPU int8 graphs from its float graphs and weights (onnx + onnxruntime: no torch).

A manifest may name graphs under `[int8] graphs = [...]`. For each, this writes
`<stem>.int8.onnx` next to the float graph: ONNX Runtime's basic (hardware-independent)
optimisations fold the weights into constants, then `quantize_dynamic` stores the MatMul and Gemm
weights as int8 (one scale per output channel: one per tensor lost 3.8 Dice on the optic
disc) and quantises their activations per call. The engine
loads these files only when a graph runs on the CPU execution provider (`[engine] int8`); on
TensorRT or CUDA it keeps the float graph. The files are derived from the third-party weights,
so they are built at setup (scripts/run, scripts/test) and never committed.

Each output records the method and the sha256 of the float graph and of the weights file it was
built from (metadata `int8_source`), so a changed method, graph or checkpoint rebuilds it and an
unchanged one is kept. The output is written to a temporary name and renamed: a failure leaves nothing half built.

  python3 scripts/model/derive_int8.py models/litemedsam-ppg
Exit status 0: every listed graph is in place; 1: failed (the message names the graph).
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxyseg_model.external_data import inline_external_data  # noqa: E402  (numpy and onnx only, no torch)

METHOD = "onnxruntime quantize_dynamic: MatMul, Gemm; int8 weights per output channel, uint8 activations per call"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def int8_path(bundle: Path, graph_file: str) -> Path:
    """`image_encoder.onnx` -> `image_encoder.int8.onnx` (the name the engine looks for)."""
    return bundle / (Path(graph_file).stem + ".int8.onnx")


def source_id(bundle: Path, manifest: dict, graph_file: str) -> str:
    """What an int8 graph is built from: the method, the float graph's and the weights file's sha256."""
    parts = [METHOD, f"{graph_file}:{sha256(bundle / graph_file)}"]
    w = manifest.get("weights")
    if w:
        parts.append(f"{w['file']}:{w['sha256']}")
    return ";".join(parts)


def recorded_source(path: Path) -> str | None:
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    return next((p.value for p in m.metadata_props if p.key == "int8_source"), None)


def build(bundle: Path, graph_file: str, source: str, out: Path) -> None:
    import logging

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic advises static pre-processing on the root logger; not for dynamic int8.
    logging.getLogger().setLevel(logging.ERROR)

    # The temporary files stay inside the bundle: the float graph's external data (the
    # weights file) is found relative to the folder of the model that names it.
    with tempfile.TemporaryDirectory(dir=bundle, prefix=".int8-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(bundle / graph_file), so, providers=["CPUExecutionProvider"])
        # The folded model still names the weights file for tensors it kept as they were;
        # load them all so the quantised model is one self-contained file.
        weights = onnx.load(str(folded), load_external_data=False)
        inline_external_data(weights, bundle)
        inline = Path(tmp) / "inline.onnx"
        onnx.save(weights, str(inline))
        del weights
        quantized = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(inline), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
        m = onnx.load(str(quantized))
        props = {p.key: p.value for p in m.metadata_props}
        props.update({"int8_source": source, "int8_method": METHOD})
        del m.metadata_props[:]
        for k, v in props.items():
            m.metadata_props.add(key=k, value=v)
        part = out.with_name(f".{out.name}.partial")
        onnx.save(m, str(part))
        os.replace(part, out)


def derive(bundle: Path, log=lambda m: print(f"==> {m}", file=sys.stderr)) -> list[Path]:
    manifest = tomllib.loads((bundle / "manifest.toml").read_text())
    graphs = manifest.get("int8", {}).get("graphs", [])
    done = []
    for g in graphs:
        graph_file = manifest["graphs"].get(g)
        if not graph_file:
            raise ValueError(f"[int8] names {g!r}, which [graphs] does not")
        out = int8_path(bundle, graph_file)
        source = source_id(bundle, manifest, graph_file)
        if out.is_file() and recorded_source(out) == source:
            log(f"{out}: in place")
        else:
            t0 = time.time()
            build(bundle, graph_file, source, out)
            log(f"{out}: built from {graph_file} ({out.stat().st_size / 1e6:.1f} MB, {time.time() - t0:.1f} s)")
        done.append(out)
    return done


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    bundle = Path(args[0])
    try:
        derive(bundle)
    except Exception as e:  # one clear line for scripts/run
        print(f"error: {bundle}: int8 graphs: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
