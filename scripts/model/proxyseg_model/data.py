"""Phantom corpora as model-ready tensors (through preprocess.py, the same path as DICOM).

Seed ranges (per family; disjoint by construction):
  FEWSHOT   0 .. 15        the 16 training pairs per task (paper: 16 image-mask pairs);
                           also the pool that support pairs are drawn from at inference
  TEST      1000 .. 1039   held-out evaluation targets
  DEMO      2000 ..        demo studies shipped with the bundle
  VAL       3000 .. 3059   validation targets for checkpoint selection (select.py)
  PRETRAIN  10000 ..       the larger corpus the tiny SAM is pretrained on (no PPG)
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .phantoms import FAMILIES, OBJECTS, generate_case
from .preprocess import case_displays, prepare_image, prepare_mask

FEWSHOT = range(0, 16)
TEST = range(1000, 1040)
DEMO = 2000
VAL = range(3000, 3060)
PRETRAIN = 10000


def sample(family: str, seed: int, S: int):
    """One single-frame sample: (image 3xSxS float32, masks KxSxS float32, resized (h, w))."""
    case = generate_case(family, seed)
    disp = case_displays(case)[0]
    img, hw = prepare_image(disp, S)
    masks = np.stack([prepare_mask(m, S) for m in case["masks"][0]])
    return img, masks, hw


def corpus(family: str, seeds, S: int, cache_dir: Path | None = None):
    """Stacked samples for seeds: dict(images N x 3 x S x S, masks N x K x S x S, hw N x 2)."""
    seeds = list(seeds)
    key = hashlib.sha1(f"{family}-{seeds[0]}-{seeds[-1]}-{len(seeds)}-{S}-v1".encode()).hexdigest()[:12]
    if cache_dir is not None:
        p = Path(cache_dir) / f"{family}-{key}.pt"
        if p.exists():
            return torch.load(p)
    imgs, masks, hws = [], [], []
    for s in seeds:
        i, m, hw = sample(family, s, S)
        imgs.append(i)
        masks.append(m)
        hws.append(hw)
    out = {"family": family, "seeds": seeds, "images": torch.from_numpy(np.stack(imgs)),
           "masks": torch.from_numpy(np.stack(masks)), "hw": torch.tensor(hws)}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        torch.save(out, p)
    return out


def objects(family: str) -> list[str]:
    return OBJECTS[family]


__all__ = ["FAMILIES", "FEWSHOT", "TEST", "DEMO", "VAL", "PRETRAIN", "sample", "corpus", "objects"]
