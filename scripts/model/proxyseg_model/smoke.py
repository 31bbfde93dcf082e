"""One-step runs of the real-checkpoint path with randomly initialised SAM weights.

Pretrained SAM checkpoints cannot be fetched everywhere, so the tests (ViT-B) and
check_vit_h.py (ViT-H) save segment-anything's own `Sam` with random weights in the format of
Meta's .pth files and train LoRA + PPG on it for one step at a reduced input size.
"""
from __future__ import annotations

from pathlib import Path

import torch
from segment_anything import sam_model_registry

from .bundle_data import write_pairs
from .tomlw import dumps
from .train import main as train_main

IMG_SIZE = 256


def random_checkpoint(model_type: str, path: Path) -> Path:
    """Saves a randomly initialised segment-anything `model_type` ("vit_b", "vit_h", ...)
    state dict at `path`."""
    torch.save(sam_model_registry[model_type]().state_dict(), path)
    return path


def train_one_step(model_type: str, checkpoint: Path, workdir: Path) -> Path:
    """Writes a 2-pair phantom support set under `workdir`, runs `train real` on `checkpoint`
    for one step at IMG_SIZE and returns the trained .pt file."""
    sup = workdir / "user-set"
    pairs = write_pairs(sup, "us", range(2))
    (sup / "supportset.toml").write_text(dumps({"name": "user", "pairs": pairs}))
    out = workdir / f"ppg-{model_type}.pt"
    train_main(["real", "--model", model_type, "--sam-checkpoint", str(checkpoint), "--data", str(sup),
                "--img-size", str(IMG_SIZE), "--steps", "1", "--max-support", "1", "--out", str(out)])
    return out
