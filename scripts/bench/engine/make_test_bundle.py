#!/usr/bin/env python3
"""Writes a tiny bundle that follows ONNX contract 1 (DESIGN.md) with plain onnx.helper ops.

It is not a model: it exists so the engine's tests can run the whole Rust path (four graphs,
dynamic B/N/K, metadata checks) in milliseconds, without torch and without the real bundle.

    make_test_bundle.py OUT_DIR [--name NAME] [--version V] [--size S]

Graphs (C=8, 16x16 patches, T=2):
  image_encoder    image[B,3,S,S] -> Conv(stride 16) -> image_embeddings[B,C,h,w]
  support_encoder  per-object prototypes = sum(mask_k * emb) / sum(mask_k) -> keys[K,C],
                   values = keys * 2 + mean(images)
  prompt_generator tokens[K,2,C] = [keys, values + mean(image_embeddings)]
  mask_decoder     logits = resize4x(mean_t(tokens) . emb - mean) ; iou = mean(logits)
"""
import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C, P, T, K_MAX, N_MAX = 8, 16, 2, 3, 4


def meta(model, args, h, w):
    props = dict(contract="1", name=args.name, version=args.version, family="sam",
                 input_size=str(args.size), embed_dim=str(C), embed_size=f"[{h}, {w}]",
                 prompt_tokens=str(T), max_objects=str(K_MAX), max_pairs=str(N_MAX))
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v


def save(graph, path, args, h, w):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="proxyseg-test")
    model.ir_version = 8
    meta(model, args, h, w)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--name", default="test-tiny")
    ap.add_argument("--version", default="1")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    S = args.size
    h = w = S // P
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    wconv = (rng.standard_normal((C, 3, P, P)) / (P * np.sqrt(3))).astype(np.float32)

    # image_encoder
    g = helper.make_graph(
        [helper.make_node("Conv", ["image", "W"], ["image_embeddings"], strides=[P, P], kernel_shape=[P, P])],
        "image_encoder", [f32("image", ["B", 3, S, S])], [f32("image_embeddings", ["B", C, h, w])],
        [numpy_helper.from_array(wconv, "W")])
    save(g, f"{args.out}/image_encoder.onnx", args, h, w)

    # support_encoder
    consts = [numpy_helper.from_array(np.array([0, 0, h * w], np.int64), "shp"),
              numpy_helper.from_array(np.array([1e-3], np.float32), "eps"),
              numpy_helper.from_array(np.array([2.0], np.float32), "two"),
              numpy_helper.from_array(np.array([0, 2], np.int64), "ax02")]
    nodes = [
        helper.make_node("AveragePool", ["support_masks"], ["m"], kernel_shape=[P, P], strides=[P, P]),
        helper.make_node("Reshape", ["m", "shp"], ["m2"]),                      # N,K,hw
        helper.make_node("Reshape", ["support_embeddings", "shp"], ["e2"]),     # N,C,hw
        helper.make_node("Einsum", ["m2", "e2"], ["num"], equation="nkp,ncp->kc"),
        helper.make_node("ReduceSum", ["m2", "ax02"], ["den0"], keepdims=0),   # K
        helper.make_node("Unsqueeze", ["den0", "one"], ["den1"]),
        helper.make_node("Add", ["den1", "eps"], ["den"]),
        helper.make_node("Div", ["num", "den"], ["support_keys"]),
        helper.make_node("ReduceMean", ["support_images"], ["imean"], keepdims=0),
        helper.make_node("Mul", ["support_keys", "two"], ["v0"]),
        helper.make_node("Add", ["v0", "imean"], ["support_values"]),
    ]
    consts.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    g = helper.make_graph(nodes, "support_encoder",
                          [f32("support_images", ["N", 3, S, S]), f32("support_masks", ["N", "K", S, S]),
                           f32("support_embeddings", ["N", C, h, w])],
                          [f32("support_keys", ["K", C]), f32("support_values", ["K", C])], consts)
    save(g, f"{args.out}/support_encoder.onnx", args, h, w)

    # prompt_generator
    consts = [numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [
        helper.make_node("ReduceMean", ["image_embeddings"], ["emean"], keepdims=0),
        helper.make_node("Add", ["support_values", "emean"], ["v1"]),
        helper.make_node("Unsqueeze", ["support_keys", "one"], ["k3"]),
        helper.make_node("Unsqueeze", ["v1", "one"], ["v3"]),
        helper.make_node("Concat", ["k3", "v3"], ["prompt_tokens"], axis=1),
    ]
    g = helper.make_graph(nodes, "prompt_generator",
                          [f32("image_embeddings", [1, C, h, w]), f32("support_keys", ["K", C]),
                           f32("support_values", ["K", C])],
                          [f32("prompt_tokens", ["K", T, C])], consts)
    save(g, f"{args.out}/prompt_generator.onnx", args, h, w)

    # mask_decoder
    consts = [numpy_helper.from_array(np.array([C, h * w], np.int64), "eshp"),
              numpy_helper.from_array(np.array([-1, 1, h, w], np.int64), "lshp"),
              numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales")]
    nodes = [
        helper.make_node("ReduceMean", ["prompt_tokens", "one"], ["q"], keepdims=0),   # K,C  (opset 18 style axes input not allowed in 17)
        helper.make_node("Reshape", ["image_embeddings", "eshp"], ["e"]),
        helper.make_node("MatMul", ["q", "e"], ["sim"]),                              # K,hw
        helper.make_node("ReduceMean", ["sim"], ["smean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["sim", "smean"], ["simc"]),
        helper.make_node("Reshape", ["simc", "lshp"], ["low"]),
        helper.make_node("Resize", ["low", "", "scales"], ["mask_logits"], mode="linear"),
        helper.make_node("ReduceMean", ["mask_logits"], ["iou_scores"], axes=[2, 3], keepdims=0),
    ]
    nodes[0] = helper.make_node("ReduceMean", ["prompt_tokens"], ["q"], axes=[1], keepdims=0)
    g = helper.make_graph(nodes, "mask_decoder",
                          [f32("image_embeddings", [1, C, h, w]), f32("prompt_tokens", ["K", T, C])],
                          [f32("mask_logits", ["K", 1, 4 * h, 4 * w]), f32("iou_scores", ["K", 1])], consts)
    save(g, f"{args.out}/mask_decoder.onnx", args, h, w)

    with open(f"{args.out}/manifest.toml", "w") as f:
        f.write(f"""contract = 1
name = "{args.name}"
version = "{args.version}"
family = "sam"
input_size = {S}
pixel_mean = [123.675, 116.28, 103.53]
pixel_std = [58.395, 57.12, 57.375]
embed_dim = {C}
embed_size = [{h}, {w}]
prompt_tokens = {T}
max_objects = {K_MAX}
max_pairs = {N_MAX}
low_res_size = [{4 * h}, {4 * w}]

[graphs]
image_encoder = "image_encoder.onnx"
support_encoder = "support_encoder.onnx"
prompt_generator = "prompt_generator.onnx"
mask_decoder = "mask_decoder.onnx"

[provenance]
command = "scripts/bench/engine/make_test_bundle.py"

[evaluation]
note = "not a model: a contract-conforming test bundle"
""")


if __name__ == "__main__":
    main()
