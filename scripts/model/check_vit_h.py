"""Manual check of the ViT-H real-checkpoint path (too heavy for CI: 2.5 GB of weights).

Builds segment-anything's vit_h `Sam` with random weights, saves it as a .pth (the format of
sam_vit_h_4b8939.pth), trains LoRA + PPG for one step on a 2-pair support set at a reduced input
size, exports the four graphs (the image encoder goes over 2 GB, so ONNX external data), loads
them in ONNX Runtime and compares the encoder output with PyTorch. Prints what it measured.

    python check_vit_h.py /path/with/8GB/free
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from proxyseg_model.export import GRAPHS, export_graphs, prepare_for_export
from proxyseg_model.smoke import random_checkpoint, train_one_step
from proxyseg_model.train import load_checkpoint


def main(root: Path) -> int:
    t0 = time.time()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=root) as d:
        tmp = Path(d)
        ck = random_checkpoint("vit_h", tmp / "sam_vit_h_random.pth")
        print(f"random vit_h checkpoint: {ck.stat().st_size / 1e9:.2f} GB ({time.time() - t0:.0f} s)", flush=True)
        out = train_one_step("vit_h", ck, tmp)
        ck.unlink()
        model, meta = load_checkpoint(out)
        assert meta["extra"]["steps"] == 1 and model.sam_cfg.encoder_dim == 1280
        print(f"trained 1 step ({time.time() - t0:.0f} s)", flush=True)
        model = prepare_for_export(model)
        bundle = tmp / "bundle"
        sizes = export_graphs(model, bundle)
        assert set(sizes) == set(GRAPHS)
        files = sorted(p.name for p in bundle.iterdir())
        print(f"exported ({time.time() - t0:.0f} s): {files}", flush=True)
        print({p.name: f"{p.stat().st_size / 1e6:.1f} MB" for p in bundle.iterdir()}, flush=True)
        want = {f"{g}.onnx" for g in GRAPHS} | {"image_encoder.onnx.data"}
        assert set(files) == want, f"bundle files {files}, expected {sorted(want)}"
        enc = ort.InferenceSession(str(bundle / "image_encoder.onnx"))
        x = torch.randn(1, 3, 256, 256)
        emb = enc.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            ref = model.sam.encode(x).numpy()
        diff = float(np.abs(emb - ref).max())
        print(f"ORT encoder output {emb.shape}, max abs diff vs PyTorch {diff:.2e}", flush=True)
        assert diff < 1e-3
        for g in GRAPHS:
            ort.InferenceSession(str(bundle / f"{g}.onnx"))
        print(f"all four graphs load in ONNX Runtime; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
