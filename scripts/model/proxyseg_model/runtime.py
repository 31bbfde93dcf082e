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

from . import mirror, shape, threshold, views
from .preprocess import postprocess, prepare_image, prepare_mask

GRAPHS = ("image_encoder", "support_encoder", "prompt_generator", "mask_decoder")


def graph_path(folder: Path, manifest: dict, graph: str, int8: bool) -> Path:
    """A graph's file; with `int8`, its CPU int8 variant where the manifest's `[int8]` lists it
    (built at setup by scripts/model/derive_int8.py, as the engine's `[engine] int8`)."""
    name = manifest["graphs"][graph]
    if int8 and graph in manifest.get("int8", {}).get("graphs", []):
        path = folder / (Path(name).stem + ".int8.onnx")
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run python3 scripts/model/derive_int8.py {folder}")
        return path
    return folder / name


class OrtBundle:
    def __init__(self, folder, threads: int = 2, int8: bool = False):
        self.folder = Path(folder)
        self.manifest = tomllib.loads((self.folder / "manifest.toml").read_text())
        self.int8 = int8
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # as the engine's `[engine] spinning = false`: the graphs of an image run in turn, each
        # with its own threads, and spinning ones would take cores from the next graph
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {g: ort.InferenceSession(str(graph_path(self.folder, self.manifest, g, int8)), so,
                                                 providers=["CPUExecutionProvider"]) for g in GRAPHS}
        self.S = int(self.manifest["input_size"])
        self.mean = np.asarray(self.manifest["pixel_mean"], dtype=np.float32)
        self.std = np.asarray(self.manifest["pixel_std"], dtype=np.float32)
        self.rules = [views.Rule(**{k: v for k, v in r.items()}) for r in self.manifest.get("resolution", [])]
        self.shape_rules = self.manifest.get("shape", [])
        self.threshold_rules = self.manifest.get("threshold", [])
        threshold.check(self.threshold_rules)
        self.mirror_rule = self.manifest.get("mirror")
        mirror.check(self.mirror_rule)
        # a detail branch: the mask decoder also takes the model input (export.py)
        self.decoder_image = bool(self.manifest.get("decoder_image", False))

    def decode(self, emb: np.ndarray, tokens: np.ndarray, image: np.ndarray):
        """mask_decoder: 1 x C x h x w, K x T x C, the 1 x 3 x S x S image the embeddings are of
        -> (mask_logits K x 1 x 4h x 4w, iou_scores K x 1)."""
        feeds = {"image_embeddings": emb, "prompt_tokens": tokens}
        if self.decoder_image:
            feeds["image"] = image.astype(np.float32)
        logits, iou = self.sessions["mask_decoder"].run(None, feeds)
        return logits, iou

    def metadata(self, graph: str) -> dict:
        return self.sessions[graph].get_modelmeta().custom_metadata_map

    def encode(self, images: np.ndarray) -> np.ndarray:
        """B x 3 x S x S -> B x C x h x w."""
        enc = self.sessions["image_encoder"]
        if enc.get_inputs()[0].shape[0] == 1:  # a graph with a fixed batch of 1 (LiteMedSAM)
            return np.concatenate([enc.run(None, {"image": images[i:i + 1].astype(np.float32)})[0]
                                   for i in range(len(images))])
        return enc.run(None, {"image": images.astype(np.float32)})[0]

    def support_context(self, support_images: np.ndarray, support_masks: np.ndarray):
        """N x 3 x S x S, N x K x S x S -> dict(embeddings, keys, values)."""
        emb = np.concatenate([self.encode(support_images[i:i + 1]) for i in range(len(support_images))])
        keys, values = self.sessions["support_encoder"].run(None, {
            "support_images": support_images.astype(np.float32), "support_masks": support_masks.astype(np.float32),
            "support_embeddings": emb})
        return {"support_embeddings": emb, "support_keys": keys, "support_values": values}

    def prompt_tokens(self, emb: np.ndarray, ctx: dict) -> np.ndarray:
        """1 x C x h x w image embeddings + a support context -> K x T x C proxy prompt tokens."""
        return self.sessions["prompt_generator"].run(None, {
            "image_embeddings": emb, "support_keys": ctx["support_keys"], "support_values": ctx["support_values"]})[0]

    def segment_tensor(self, image: np.ndarray, ctx: dict, emb: np.ndarray | None = None) -> dict:
        """1 x 3 x S x S -> dict(image_embeddings, prompt_tokens, mask_logits, iou_scores).
        `emb`: the image's embeddings when already computed (they depend on the image only)."""
        emb = self.encode(image) if emb is None else emb
        tokens = self.prompt_tokens(emb, ctx)
        logits, iou = self.decode(emb, tokens, image)
        return {"image_embeddings": emb, "prompt_tokens": tokens, "mask_logits": logits, "iou_scores": iou}

    def segment_display(self, display: np.ndarray, ctx: dict, emb: np.ndarray | None = None):
        """Display H x W x 3 (preprocess.to_display) -> (masks K x H x W uint8, tensors dict)."""
        img, hw = prepare_image(display, self.S, self.mean, self.std)
        out = self.segment_tensor(img[None], ctx, emb)
        masks, logits = postprocess(out["mask_logits"], hw, display.shape[:2], self.S)
        out["image"] = img[None]
        out["logits"] = logits
        return masks, out


    def prepare_pairs(self, displays: list[np.ndarray], masks: list[np.ndarray]):
        """Support displays (H x W x 3) and masks (K x H x W) -> N x 3 x S x S, N x K x S x S."""
        imgs = np.stack([prepare_image(d, self.S, self.mean, self.std)[0] for d in displays])
        ms = np.stack([np.stack([prepare_mask(x, self.S) for x in m]) for m in masks])
        return imgs, ms

    def view_contexts(self, displays, masks, labels, mirror_rule: dict | None = None):
        """Support contexts for the first pass and every resolution view (views.py), computed
        once per support set: dict view-key -> context (None when no pair gives that view), under
        "forms" the form the manifest's [[shape]] rules give each object (shape.py) and under
        "thresholds" the logit each object's mask is cut at ([[threshold]], threshold.py); under
        "mirror" the same for the mirrored pairs when the manifest's [mirror] lists an object of
        the set, under "mirror_objects" their indices (mirror.py). `mirror_rule`: another [mirror]
        table than the manifest's (holdout's query-flip variant)."""
        out = self.look_contexts(displays, masks, labels)
        out["forms"] = shape.object_forms(self.shape_rules, labels, masks, self.S)
        out["thresholds"] = threshold.object_thresholds(self.threshold_rules, labels)
        out["mirror_objects"] = mirror.object_indices(mirror_rule or self.mirror_rule, labels)
        if out["mirror_objects"]:
            out["mirror"] = self.look_contexts([mirror.flip_display(d) for d in displays],
                                               [mirror.flip(m) for m in masks], labels,
                                               only=out["mirror_objects"])
        return out

    def look_contexts(self, displays, masks, labels, only: list[int] | None = None):
        """The support contexts of one look (the pairs as given): the first pass's under "" and
        each resolution view's; with `only` (object indices), only the views of those objects
        (the mirrored look's: the others keep the first look's logits)."""
        out = {"": self.support_context(*self.prepare_pairs(displays, masks))}
        for r, rule in enumerate(self.rules):
            objs = views.object_indices(rule, labels)
            if not objs or (only is not None and not set(objs) & set(only)):
                continue
            if rule.strategy == "roi":
                if rule.anchor.lower() not in [x.lower() for x in labels]:
                    continue
                a = [x.lower() for x in labels].index(rule.anchor.lower())
                boxes = [views.roi_crop(m[a], rule) for m in masks]
                keep = [i for i, b in enumerate(boxes) if b is not None]
                out[f"roi:{r}"] = self.support_context(*self.prepare_pairs(
                    [views.crop(displays[i], boxes[i]) for i in keep],
                    [np.stack([views.crop(x, boxes[i]) for x in masks[i]]) for i in keep])) if keep else None
            else:
                for t in range(rule.grid * rule.grid):
                    boxes = [views.tile_crops(d.shape[0], d.shape[1], rule)[t] for d in displays]
                    out[f"tiles:{r}:{t}"] = self.support_context(*self.prepare_pairs(
                        [views.crop(d, b) for d, b in zip(displays, boxes)],
                        [np.stack([views.crop(x, b) for x in m]) for m, b in zip(masks, boxes)]))
        return out

    def segment_views(self, display: np.ndarray, ctxs: dict, labels: list[str], emb: np.ndarray | None = None):
        """One frame with the resolution views -> (masks K x H x W uint8, logits K x H x W, first pass);
        the masks are the logits > each object's threshold (ctxs["thresholds"], 0 when absent) with
        the [[shape]] rules applied (ctxs["forms"]).
        `emb`: the frame's first-pass embeddings, when already computed. With ctxs["mirror"],
        the objects of ctxs["mirror_objects"] get the mean of this look and the mirrored one (mirror.py),
        and first["look_agreement"] how far the two looks agreed (None for one look)."""
        logits, first = self.look_logits(display, ctxs, labels, emb)
        objs = ctxs.get("mirror_objects") or []
        cuts = ctxs.get("thresholds") or [0.0] * len(logits)
        first["look_agreement"] = [None] * len(logits)
        if objs:
            second, _ = self.look_logits(mirror.flip_display(display), ctxs["mirror"], labels)
            first["look_agreement"] = mirror.look_agreement(logits, second, objs, cuts)
            logits = mirror.merge(logits, second, objs)
        masks = threshold.masks(logits, cuts)
        if any(ctxs.get("forms", ())):
            masks = shape.apply(ctxs["forms"], masks)
        return masks, logits, first

    def look_logits(self, display: np.ndarray, ctxs: dict, labels: list[str], emb: np.ndarray | None = None):
        """One look: the first pass and the resolution views -> (final logits K x H x W, first pass)."""
        masks, first = self.segment_display(display, ctxs[""], emb)
        logits = first["logits"].copy()
        rows, cols = display.shape[:2]
        for r, rule in enumerate(self.rules):
            objs = views.object_indices(rule, labels)
            if not objs or (rule.strategy != "roi" and f"tiles:{r}:0" not in ctxs):
                continue  # no view context: a view the mirrored look does not take
            if rule.strategy == "roi":
                ctx = ctxs.get(f"roi:{r}")
                if ctx is None:
                    continue
                a = [x.lower() for x in labels].index(rule.anchor.lower())
                box = views.roi_crop(masks[a], rule)
                if box is None:
                    continue
                _, out = self.segment_display(views.crop(display, box), ctx)
                y0, x0, h, w = box
                for o in objs:
                    logits[o] = -1e4
                    logits[o, y0:y0 + h, x0:x0 + w] = out["logits"][o]
            else:
                acc = np.zeros((len(objs), rows, cols), np.float32)
                cnt = np.zeros((rows, cols), np.float32)
                for t, box in enumerate(views.tile_crops(rows, cols, rule)):
                    _, out = self.segment_display(views.crop(display, box), ctxs[f"tiles:{r}:{t}"])
                    y0, x0, h, w = box
                    acc[:, y0:y0 + h, x0:x0 + w] += out["logits"][objs]
                    cnt[y0:y0 + h, x0:x0 + w] += 1
                logits[objs] = acc / cnt
        return logits, first


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
