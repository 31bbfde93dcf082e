#!/usr/bin/env python3
"""The Python / onnxruntime reference path on the same inputs as the Rust benchmark.

Uses scripts/model's proxyseg_model (preprocess.py, runtime.py, phantoms/dicom_io.py): the
code the fixtures come from. Prints one JSON line per input (same keys as tests/engine_bench.rs).

    reference.py --bundle DIR --support DIR --inputs a.dcm,b.dcm [--repeat 5] [--threads 2]
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
for cand in (os.environ.get("PROXYSEG_MODEL_PY"), ROOT / "scripts" / "model", Path("/work/main/scripts/model")):
    if cand and (Path(cand) / "proxyseg_model").is_dir():
        sys.path.insert(0, str(cand))
        break

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from proxyseg_model.phantoms.dicom_io import dataset_displays  # noqa: E402
from proxyseg_model.preprocess import postprocess, prepare_image  # noqa: E402
from proxyseg_model.runtime import OrtBundle, load_support_set_tensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--support", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="the manifest's CPU int8 graphs (rows 'python-int8')")
    a = ap.parse_args()
    bundle = OrtBundle(a.bundle, threads=a.threads, int8=a.int8)
    t = time.perf_counter()
    sup = load_support_set_tensors(Path(a.support), bundle.S)
    ctx = bundle.support_context(sup["images"].numpy(), sup["masks"].numpy())
    ctx_s = time.perf_counter() - t
    s = bundle.sessions
    for path in a.inputs.split(","):
        st = dict(decode=0.0, preprocess=0.0, image_encoder=0.0, prompt_generator=0.0, mask_decoder=0.0, postprocess=0.0)
        frames = 0
        wall = time.perf_counter()
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            disp = dataset_displays(pydicom.dcmread(path))
            st["decode"] += time.perf_counter() - t0
            for d in disp:
                t1 = time.perf_counter()
                img, hw = prepare_image(d, bundle.S)
                t2 = time.perf_counter()
                emb = bundle.encode(img[None])
                t3 = time.perf_counter()
                tokens = s["prompt_generator"].run(None, {"image_embeddings": emb, "support_keys": ctx["support_keys"],
                                                          "support_values": ctx["support_values"]})[0]
                t4 = time.perf_counter()
                logits, _ = bundle.decode(emb, tokens, img[None])
                t5 = time.perf_counter()
                postprocess(logits, hw, d.shape[:2], bundle.S)
                t6 = time.perf_counter()
                for k, v in zip(("preprocess", "image_encoder", "prompt_generator", "mask_decoder", "postprocess"),
                                (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                    st[k] += v
                frames += 1
        wall = time.perf_counter() - wall
        rows, cols = disp.shape[1:3]
        rec = {"impl": "python-int8" if a.int8 else "python", "input": Path(path).stem, "rows": int(rows), "cols": int(cols),
               "frames_per_file": int(len(disp)), "frames": frames}
        rec.update({f"{k}_ms": round(v * 1e3 / frames, 3) for k, v in st.items()})
        rec.update({"total_ms": round(wall * 1e3 / frames, 3), "images_per_s": round(frames / wall, 3),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "threads": a.threads, "providers": "cpu", "support_context_s": round(ctx_s, 3)})
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
