"""Python reference inference path through ONNX Runtime (what the Rust engine mirrors).

  bundle = OrtBundle("models/phantom-tiny")
  ctx = bundle.support_context(support_images, support_masks)      # N x 3 x S x S, N x K x S x S
  masks, logits, tensors = bundle.segment_display(display_hwc, ctx) # one frame
Support sets on disk: a folder with supportset.toml and DICOM image + SEG pairs.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .preprocess import postprocess, prepare_image, prepare_mask

GRAPHS = ("image_encoder", "support_encoder", "prompt_generator", "mask_decoder")


class OrtBundle:
    def __init__(self, folder, threads: int = 2):
        self.folder = Path(folder)
        self.manifest = tomllib.loads((self.folder / "manifest.toml").read_text())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sessions = {g: ort.InferenceSession(str(self.folder / self.manifest["graphs"][g]), so,
                                                 providers=["CPUExecutionProvider"]) for g in GRAPHS}
        self.S = int(self.manifest["input_size"])

    def metadata(self, graph: str) -> dict:
        return self.sessions[graph].get_modelmeta().custom_metadata_map

    def encode(self, images: np.ndarray) -> np.ndarray:
        """B x 3 x S x S -> B x C x h x w."""
        return self.sessions["image_encoder"].run(None, {"image": images.astype(np.float32)})[0]

    def support_context(self, support_images: np.ndarray, support_masks: np.ndarray):
        """N x 3 x S x S, N x K x S x S -> dict(embeddings, keys, values)."""
        emb = np.concatenate([self.encode(support_images[i:i + 1]) for i in range(len(support_images))])
        keys, values = self.sessions["support_encoder"].run(None, {
            "support_images": support_images.astype(np.float32), "support_masks": support_masks.astype(np.float32),
            "support_embeddings": emb})
        return {"support_embeddings": emb, "support_keys": keys, "support_values": values}

    def segment_tensor(self, image: np.ndarray, ctx: dict) -> dict:
        """1 x 3 x S x S -> dict(image_embeddings, prompt_tokens, mask_logits, iou_scores)."""
        emb = self.encode(image)
        tokens = self.sessions["prompt_generator"].run(None, {
            "image_embeddings": emb, "support_keys": ctx["support_keys"], "support_values": ctx["support_values"]})[0]
        logits, iou = self.sessions["mask_decoder"].run(None, {"image_embeddings": emb, "prompt_tokens": tokens})
        return {"image_embeddings": emb, "prompt_tokens": tokens, "mask_logits": logits, "iou_scores": iou}

    def segment_display(self, display: np.ndarray, ctx: dict):
        """Display H x W x 3 (preprocess.to_display) -> (masks K x H x W uint8, tensors dict)."""
        img, hw = prepare_image(display, self.S)
        out = self.segment_tensor(img[None], ctx)
        masks, _ = postprocess(out["mask_logits"], hw, display.shape[:2], self.S)
        out["image"] = img[None]
        return masks, out


def read_support_set(folder: Path) -> dict:
    return tomllib.loads((Path(folder) / "supportset.toml").read_text())


def load_support_set_tensors(folder: Path, S: int) -> dict:
    """A support-set folder -> dict(images N x 3 x S x S, masks N x K x S x S) as torch tensors.

    Multi-frame images contribute their first frame (the pair's annotated frame).
    """
    import torch

    from .phantoms.dicom_io import dataset_displays, load_images, read_seg_masks
    folder = Path(folder)
    spec = read_support_set(folder)
    imgs, masks = [], []
    for pair in spec["pairs"]:
        srcs = load_images(folder / pair["image"])
        disp = np.concatenate([dataset_displays(s) for s in srcs])
        m = read_seg_masks(folder / pair["mask"], srcs)
        img, _ = prepare_image(disp[0], S)
        imgs.append(img)
        masks.append(np.stack([prepare_mask(x, S) for x in m[0]]))
    return {"images": torch.from_numpy(np.stack(imgs)), "masks": torch.from_numpy(np.stack(masks))}
