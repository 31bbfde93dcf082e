"""Memory mode of the bundled model (issue 15 item 3): export parity, empty slots, the shipped
graphs and fixtures."""
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from proxyseg_model.lite_track import OrtMemoryLoop, fill_bank, frame_slots
from proxyseg_model.memory_export import (GRAPHS, check_parity, example_inputs, export_graphs, sessions,
                                          update_manifest)
from proxyseg_model.train_memory import MemoryConfig, build_memory, perturb_logits

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "litemedsam-ppg"
ORIGINAL_GRAPHS = ("image_encoder", "support_encoder", "prompt_generator", "mask_decoder")


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    """The two memory graphs with random weights, next to a copy of the bundle's manifest and
    mask decoder (the metadata source)."""
    out = tmp_path_factory.mktemp("litemem")
    for name in ("manifest.toml", "mask_decoder.onnx"):
        shutil.copyfile(BUNDLE / name, out / name)
    cfg = MemoryConfig()
    enc, att = build_memory(cfg, seed=3)
    with torch.no_grad():  # random weights large enough that the update is far from 0
        att.refine[2].weight.normal_(0, 0.05)
    enc.eval(), att.eval()
    sizes = export_graphs(enc, att, cfg, out)
    update_manifest(out, cfg, {"commands": [], "graph_bytes": sizes})
    return out, enc, att, cfg


def test_export_parity_and_empty_slots(random_bundle):
    out, enc, att, cfg = random_bundle
    r = check_parity(enc, att, cfg, out, k=3)
    assert r["memory_encoder"] < 1e-5 and r["memory_attention"] < 1e-5, r
    assert r["empty_slots_contents"] == 0.0, r      # what empty slots hold changes nothing
    assert r["no_slot_is_identity"] == 0.0, r       # frame 0: conditioned = embeddings exactly


def test_empty_slots_and_slot_order_in_torch(random_bundle):
    _, _, att, cfg = random_bundle
    ex = example_inputs(cfg, k=2, seed=5)
    emb, mem, tpos = ex["image_embeddings"], ex["frame_memory"], ex["frame_tpos"]
    valid = torch.tensor([1.0, 0, 1, 0, 0, 1, 0])
    with torch.no_grad():
        full = att(emb, mem, tpos, valid)
        keep = valid.bool()
        compact = att(emb, mem[:, keep], tpos[keep], torch.ones(int(keep.sum())))
        perm = torch.tensor([5, 1, 2, 6, 4, 0, 3])
        shuffled = att(emb, mem[:, perm], tpos[perm], valid[perm])
    assert torch.allclose(full, compact, atol=1e-5)
    assert torch.allclose(full, shuffled, atol=1e-5)
    assert not torch.allclose(full, emb.expand(2, -1, -1, -1), atol=1e-3)


def test_manifest_and_metadata(random_bundle):
    out, _, _, cfg = random_bundle
    m = tomllib.loads((out / "manifest.toml").read_text())
    assert m["graphs"]["memory_attention"] == "memory_attention.onnx"
    assert m["graphs"]["memory_encoder"] == "memory_encoder.onnx"
    assert m["memory"] == {"memory_dim": cfg.memory_dim, "memory_size": [cfg.memory_size] * 2,
                           "frame_slots": cfg.frame_slots, "recent_frames": cfg.recent_frames,
                           "revisit_first": True}
    for g in GRAPHS:
        proto = onnx.load(str(out / f"{g}.onnx"))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["name"] == "litemedsam-ppg" and meta["frame_slots"] == str(cfg.frame_slots)
        assert proto.opset_import[0].version == 17
    io = {g: onnx.load(str(out / f"{g}.onnx")).graph for g in GRAPHS}
    assert [i.name for i in io["memory_attention"].input] == ["image_embeddings", "frame_memory", "frame_tpos",
                                                              "frame_valid"]
    assert io["memory_attention"].input[2].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [i.name for i in io["memory_encoder"].input] == ["image_embeddings", "mask_logits"]
    assert io["memory_encoder"].output[0].type.tensor_type.shape.dim[0].dim_param == "K"


def test_slot_policy():
    assert frame_slots(0, 6, 7) == []
    assert frame_slots(1, 6, 7) == [(0, 6)]
    assert frame_slots(3, 6, 7) == [(0, 6), (1, 1), (2, 0)]
    assert frame_slots(9, 6, 7) == [(0, 6)] + [(9 - a, a - 1) for a in range(6, 0, -1)]
    bank = {f: np.full((2, 4), f, np.float32) for f in range(10)}
    mem, tpos, valid = fill_bank(bank, frame_slots(2, 6, 7), 7, bank[0])
    assert mem.shape == (2, 7, 4) and list(valid) == [1, 1, 0, 0, 0, 0, 0] and list(tpos[:2]) == [6, 0]


def test_shipped_bundle_unchanged_and_manifest():
    assert (BUNDLE / "memory_attention.onnx").exists(), f"{BUNDLE} ships without its memory graphs"
    m = tomllib.loads((BUNDLE / "manifest.toml").read_text())
    for g in ORIGINAL_GRAPHS:
        assert m["graphs"][g] == f"{g}.onnx"
    assert m["graphs"]["memory_attention"] == "memory_attention.onnx"
    assert m["memory"]["frame_slots"] == 7 and m["memory"]["recent_frames"] == 6
    for g in GRAPHS:
        assert (BUNDLE / f"{g}.onnx").stat().st_size < 5e6  # only the project's own small weights


def test_shipped_fixtures_reproduce():
    """The shipped graphs through the reference ONNX Runtime loop reproduce the fixtures."""
    assert (BUNDLE / "lite_medsam.pth").exists(), \
        "needs lite_medsam.pth beside the graphs: scripts/test (or scripts/model/fetch_weights.py) puts it there"
    assert (BUNDLE / "fixtures" / "memory.json").exists(), "the bundle ships without its memory fixtures"
    doc = json.loads((BUNDLE / "fixtures" / "memory.json").read_text())

    def read(name):
        t = doc["tensors"][name]
        return np.fromfile(BUNDLE / t["file"], dtype=np.uint8 if t["dtype"] == "u8" else "<f4").reshape(t["shape"])
    frames = read("frames").astype(np.float32) / 255
    loop = OrtMemoryLoop(sessions(BUNDLE), doc["frame_slots"], doc["recent_frames"], doc["revisit_first"])
    ctx = loop.support(read("support_images").astype(np.float32) / 255, read("support_masks").astype(np.float32))
    got = np.stack(loop.track(frames, ctx))
    assert np.abs(got - read("mask_logits")).max() < 1e-4
    first = loop.track(frames[:1], ctx)[0]  # one frame: nothing to revisit
    assert np.abs(first - read("first_pass_logits")).max() < 1e-4
    assert doc["torch_vs_onnxruntime_max_abs"] <= doc["torch_tolerance"]
    assert doc["frame0_first_pass_vs_frame_by_frame_max_abs"] == 0.0
    # the shipped loop revisits frame 0, and the revisit changes its mask
    assert doc["revisit_first"] and doc["frame0_revisit_vs_first_pass_max_abs"] > 1.0


def test_revisit_slots_and_frame():
    """Frame 0's revisit attends to itself (row M-1) and frames r..1 at their distance from it;
    it happens after frame min(recent, F - 1), and not at all for a single frame."""
    from proxyseg_model.lite_track import revisit_frame, revisit_slots
    assert revisit_slots(3, 7) == [(0, 6), (3, 2), (2, 1), (1, 0)]
    assert [revisit_frame(n, 6) for n in (1, 2, 5, 7, 8, 100)] == [None, 1, 4, 6, 6, 6]


class _Fixed:
    """An rng whose draws are fixed: `scale` for the scale, `shift` (rows, cols) for the shift."""

    def __init__(self, scale=0.0, shift=(0.0, 0.0)):
        self.scale, self.shift = scale, shift

    def uniform(self, lo, hi, n=None):
        return self.scale if n is None else np.asarray(self.shift)


def test_perturbed_first_mask():
    """train_memory's frame-0 perturbation: none leaves the logits, a scale grows the object
    about its centre by the factor (area by its square), a shift moves it by that fraction."""
    lg = torch.full((1, 1, 256, 256), -5.0)
    lg[0, 0, 100:140, 60:120] = 5.0
    area = lambda x: float((x[0, 0] > 0).sum())
    centre = lambda x: (x[0, 0] > 0).nonzero().float().mean(0)
    same = perturb_logits(lg, _Fixed())
    assert torch.equal(same > 0, lg > 0)
    grown = perturb_logits(lg, _Fixed(scale=0.2))
    assert abs(area(grown) / area(lg) - 1.44) < 0.05
    assert torch.allclose(centre(grown), centre(lg), atol=1.0)
    moved = perturb_logits(lg, _Fixed(shift=(0.05, -0.05)))
    assert area(moved) == area(lg)
    assert torch.allclose(centre(moved) - centre(lg), torch.tensor([0.1 * 255 / 2, -0.1 * 255 / 2]), atol=1.0)


def test_group_weights():
    """--group-weight GROUP=W: named groups drawn W times as often, the others once; a group
    that does not exist, or a spec without a weight, is refused."""
    from proxyseg_model.train_memory import group_weights
    names = ["drive", "mr-volume", "us-cine"]
    assert group_weights([], names) == {"drive": 1.0, "mr-volume": 1.0, "us-cine": 1.0}
    assert group_weights(["mr-volume=3"], names) == {"drive": 1.0, "mr-volume": 3.0, "us-cine": 1.0}
    for bad in (["prostate=2"], ["mr-volume"]):
        with pytest.raises(SystemExit, match="GROUP=WEIGHT"):
            group_weights(bad, names)


def test_attach_images_remakes_the_cached_inputs(tmp_path):
    """A training cache built without the model inputs gets them back from the seeded sequences,
    checked against its own embeddings; a cache whose embeddings do not match is refused."""
    from proxyseg_model import memory_data
    memory_data.build_cache(BUNDLE, "train", "us-cine", count=1, out=tmp_path)
    path = tmp_path / "train-us-cine.pt"
    seqs = torch.load(path, weights_only=False)
    original = seqs[0].pop("images")
    assert original.shape == (memory_data.FRAMES, 3, 256, 256)
    torch.save(seqs, path)
    assert memory_data.attach_images(BUNDLE, "us-cine", out=tmp_path, count=1) == 1
    assert torch.equal(memory_data.load("train", "us-cine", out=tmp_path)[0]["images"], original)
    assert memory_data.attach_images(BUNDLE, "us-cine", out=tmp_path, count=1) == 0  # nothing left to do
    seqs[0]["emb"] = seqs[0]["emb"] + 1  # a cache from another generator or encoder
    torch.save(seqs, path)
    with pytest.raises(SystemExit, match="rebuild the cache"):
        memory_data.attach_images(BUNDLE, "us-cine", out=tmp_path, count=1)
    assert "images" not in torch.load(path, weights_only=False)[0]  # nothing written


def test_a_cache_made_by_other_graphs_is_refused(tmp_path):
    """memory_data.build_cache reuses a cache only if this bundle's graphs made it: a cache whose
    prompt tokens came from another PPG (a candidate, the release before) is refused by name,
    so that evaluate_memory never scores a bundle with another bundle's prompt tokens."""
    from proxyseg_model import memory_data
    path = memory_data.build_cache(BUNDLE, "val", "us-cine", count=1, out=tmp_path)
    assert memory_data.build_cache(BUNDLE, "val", "us-cine", count=1, out=tmp_path) == path  # its own: reused
    seqs = torch.load(path, weights_only=False)
    seqs[0]["prompts"] = seqs[0]["prompts"] * 1.01  # another PPG's tokens for the same frames
    torch.save(seqs, path)
    with pytest.raises(SystemExit, match="was not made by .*prompt tokens"):
        memory_data.build_cache(BUNDLE, "val", "us-cine", count=1, out=tmp_path)
    seqs[0]["name"] = "seed1"  # sequences this generator does not make
    torch.save(seqs, path)
    with pytest.raises(SystemExit, match="not the ones memory_data makes"):
        memory_data.build_cache(BUNDLE, "val", "us-cine", count=1, out=tmp_path)


def test_reprompt_keeps_the_embeddings_and_makes_its_own_tokens(tmp_path):
    """memory_data.reprompt takes another cache's embeddings and runs only this bundle's prompt
    generator: from a cache holding another PPG's tokens it gives this bundle's tokens (those a
    full build gives, within the check's tolerance), and the result passes build_cache's check.
    A source whose embeddings this encoder does not make is refused, and nothing is written."""
    from proxyseg_model import memory_data
    own = memory_data.build_cache(BUNDLE, "val", "us-cine", count=1, out=tmp_path / "own")
    seqs = torch.load(own, weights_only=False)
    foreign = [dict(s, prompts=s["prompts"] * 1.01 + 0.5) for s in seqs]  # another PPG's tokens
    (tmp_path / "foreign").mkdir()
    torch.save(foreign, tmp_path / "foreign" / "val-us-cine.pt")
    out = memory_data.reprompt(BUNDLE, "val", "us-cine", tmp_path / "foreign", count=1, out=tmp_path / "new")
    made = torch.load(out, weights_only=False)
    assert torch.equal(made[0]["emb"], seqs[0]["emb"]) and torch.equal(made[0]["truth"], seqs[0]["truth"])
    assert float((made[0]["prompts"] - seqs[0]["prompts"]).abs().max()) < memory_data.PROMPT_TOL
    assert memory_data.build_cache(BUNDLE, "val", "us-cine", count=1, out=tmp_path / "new") == out  # passes the check
    with pytest.raises(SystemExit, match="same folder"):
        memory_data.reprompt(BUNDLE, "val", "us-cine", tmp_path / "gone", count=1, out=tmp_path / "gone")
    (tmp_path / "moved").mkdir()
    torch.save([dict(s, emb=s["emb"] + 1) for s in seqs], tmp_path / "moved" / "val-us-cine.pt")
    with pytest.raises(SystemExit, match="encodes to embeddings"):
        memory_data.reprompt(BUNDLE, "val", "us-cine", tmp_path / "moved", count=1, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_train_memory_refuses_a_cache_of_another_ppg(tmp_path):
    """train_memory trains around a frozen PPG checkpoint: a training cache whose prompt tokens
    that PPG did not make is refused by name (the torch PPG against the cached tokens of frame 0),
    and its own cache passes."""
    from proxyseg_model import memory_data
    from proxyseg_model.recover import recover_ppg
    from proxyseg_model.train_memory import check_prompts, groups
    model = recover_ppg(BUNDLE, None)[0].eval()
    path = memory_data.build_cache(BUNDLE, "train", "us-cine", count=1, out=tmp_path)
    data = groups(["us-cine"], tmp_path, model)  # its own: accepted
    assert len(data["us-cine"]) == 1
    seqs = torch.load(path, weights_only=False)
    seqs[0]["prompts"] = seqs[0]["prompts"] * 1.01
    with pytest.raises(SystemExit, match="not this PPG's"):
        check_prompts(model, seqs, path)
