"""The committed bundle: loads in ONNX Runtime, matches its manifest, reproduces its fixtures."""
import json
import tomllib

import numpy as np
import pytest

from proxyseg_model.export import GRAPHS
from proxyseg_model.phantoms.dicom_io import dataset_displays, load_images, read_seg_masks
from proxyseg_model.runtime import OrtBundle, load_support_set_tensors, read_support_set


@pytest.fixture(scope="module")
def rt(bundle_dir):
    return OrtBundle(bundle_dir)


def test_manifest_and_metadata(rt, bundle_dir):
    m = rt.manifest
    assert m["contract"] == 1 and m["family"] == "sam" and m["version"] == "1.0.0"
    assert m["input_size"] == 256 and m["max_objects"] == 3 and m["max_pairs"] == 16
    assert m["pixel_mean"] == [123.675, 116.28, 103.53] and m["pixel_std"] == [58.395, 57.12, 57.375]
    h, w = m["embed_size"]
    assert m["low_res_size"] == [4 * h, 4 * w]
    for key in ("generator_seed", "commands", "git_commit", "data", "notes"):
        assert key in m["provenance"]
    total = 0
    for g in GRAPHS:
        md = rt.metadata(g)
        for key in ("contract", "name", "version", "family", "input_size", "embed_dim", "prompt_tokens",
                    "max_objects", "max_pairs"):
            assert md[key] == str(m[key]), (g, key)
        assert md["embed_size"] == f"{h},{w}"
        total += (bundle_dir / m["graphs"][g]).stat().st_size
    assert total <= 40e6
    # the manifest's [outputs] table states the support tensors' shapes (some dims are symbolic
    # in the graph): check them on a real run with N=2, K=1
    keys, values = rt.sessions["support_encoder"].run(None, {
        "support_images": np.zeros((2, 3, 256, 256), np.float32), "support_masks": np.ones((2, 1, 256, 256), np.float32),
        "support_embeddings": np.zeros((2, m["embed_dim"], h, w), np.float32)})
    for name, arr in (("support_keys", keys), ("support_values", values)):
        declared = m["outputs"][name].strip("f32[]").split(",")
        assert [str(d) for d in arr.shape[-3:]] == declared[-3:], (name, arr.shape, declared)
    enc = rt.sessions["image_encoder"]
    assert enc.get_inputs()[0].shape[1:] == [3, 256, 256]
    assert enc.get_outputs()[0].shape[1:] == [m["embed_dim"], h, w]
    assert rt.sessions["mask_decoder"].get_outputs()[0].shape[1] == 1
    logits, iou = rt.sessions["mask_decoder"].run(None, {
        "image_embeddings": np.zeros((1, m["embed_dim"], h, w), np.float32),
        "prompt_tokens": np.zeros((2, m["prompt_tokens"], m["embed_dim"]), np.float32)})
    assert logits.shape == (2, 1, 4 * h, 4 * w) and iou.shape == (2, 1)


def _load(bundle_dir, t):
    dt = np.float32 if t["dtype"] == "f32" else np.uint8
    return np.fromfile(bundle_dir / t["file"], dtype=dt).reshape(t["shape"])


def test_reproduces_fixtures(rt, bundle_dir):
    doc = json.loads((bundle_dir / "fixtures" / "fixtures.json").read_text())
    assert {c["name"] for c in doc["cases"]} == {"fundus", "us", "mr"}
    for case in doc["cases"]:
        sup = load_support_set_tensors(bundle_dir / case["support_set"], rt.S)
        idx = [i - 1 for i in case["support_pairs"]]
        si, sm = sup["images"].numpy()[idx], sup["masks"].numpy()[idx]
        assert np.array_equal(sm.astype(np.uint8), _load(bundle_dir, case["support"]["support_masks"]))
        ctx = rt.support_context(si, sm)
        for key in ("support_keys", "support_values"):
            assert np.abs(ctx[key] - _load(bundle_dir, case["support"][key])).max() <= 1e-3
        disp = dataset_displays(load_images(bundle_dir / case["input"])[0])
        for fr in case["frames"]:
            masks, out = rt.segment_display(disp[fr["frame"]], ctx)
            t = fr["tensors"]
            assert np.array_equal(out["image"], _load(bundle_dir, t["image"]))
            assert np.abs(out["mask_logits"] - _load(bundle_dir, t["mask_logits"])).max() <= 1e-3
            assert (masks == _load(bundle_dir, t["masks"])).mean() >= 0.999
            assert masks.shape == tuple(t["masks"]["shape"]) and list(masks.shape[1:]) == fr["orig_hw"]


@pytest.mark.parametrize("name,modality,body,k", [("fundus-disc-cup-vessels", "OP", "EYE", 3),
                                                  ("us-intrapartum-ps-fh", "US", "PELVIS", 2),
                                                  ("mr-prostate", "MR", "PROSTATE", 1)])
def test_support_sets(bundle_dir, name, modality, body, k):
    folder = bundle_dir / "support-sets" / name
    spec = read_support_set(folder)
    assert spec["name"] == name and spec["bundle"] == "phantom-tiny"
    assert spec["match"] == {"modality": modality, "body_part": body}
    assert len(spec["objects"]) == k and 4 <= len(spec["pairs"]) <= 8
    for o in spec["objects"]:
        assert {"scheme", "code", "meaning"} <= set(o["category"]) and len(o["color"]) == 3
    for p in spec["pairs"]:
        srcs = load_images(folder / p["image"])
        assert srcs[0].Modality == modality and srcs[0].BodyPartExamined == body
        masks = read_seg_masks(folder / p["mask"], srcs)
        assert masks.shape[1] == k and masks.any()


def test_demo_studies(bundle_dir):
    for fam, n in (("fundus", 1), ("us", 8), ("mr", 8)):
        folder = bundle_dir / "demo-studies" / fam
        files = sorted(folder.glob("*.dcm"))
        srcs = load_images(folder) if fam == "mr" else load_images(files[0])
        frames = sum(int(getattr(s, "NumberOfFrames", 1) or 1) for s in srcs)
        assert frames == n
        truth = read_seg_masks(folder / "truth" / "truth.seg.dcm", srcs)
        assert truth.shape[0] == n and truth.any()
