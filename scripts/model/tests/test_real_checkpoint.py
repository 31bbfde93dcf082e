"""The real-checkpoint path with a randomly initialised ViT-B SAM checkpoint file.

Builds segment-anything's own vit_b `Sam`, saves its state dict as a .pth (the format of
sam_vit_b_01ec64.pth), then runs `train real` for one step on a 2-pair support set at a
reduced input size (position embeddings resampled), exports the contract and loads it in ORT.
"""
import numpy as np
import onnxruntime as ort
import torch

from proxyseg_model.export import GRAPHS, export_graphs, prepare_for_export
from proxyseg_model.smoke import random_checkpoint, train_one_step
from proxyseg_model.train import load_checkpoint


def test_vit_b_checkpoint_trains_and_exports(tmp_path):
    torch.manual_seed(0)
    ck = random_checkpoint("vit_b", tmp_path / "sam_vit_b_random.pth")
    out = train_one_step("vit_b", ck, tmp_path)
    model, meta = load_checkpoint(out)
    assert meta["extra"]["steps"] == 1 and model.sam_cfg.encoder_dim == 768
    model = prepare_for_export(model)
    bundle = tmp_path / "bundle"
    sizes = export_graphs(model, bundle)
    assert set(sizes) == set(GRAPHS)
    enc = ort.InferenceSession(str(bundle / "image_encoder.onnx"))
    emb = enc.run(None, {"image": np.zeros((1, 3, 256, 256), np.float32)})[0]
    assert emb.shape == (1, 256, 16, 16)
    with torch.no_grad():
        ref = model.sam.encode(torch.zeros(1, 3, 256, 256)).numpy()
    assert np.abs(emb - ref).max() < 1e-3
