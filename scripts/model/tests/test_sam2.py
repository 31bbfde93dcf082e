"""Contract 2 (SAM 2 + PPG, memory frame loop) with random weights of the real SAM 2.1 hiera-tiny.

No SAM 2 checkpoint can be fetched here: the architecture comes from the PyPI `sam2` package and
is loaded from a checkpoint file in the released format holding random weights, at input size
256 instead of 1024 (Hiera's window position embedding resampled) to keep the test short.
"""
import json

import numpy as np
import onnxruntime as ort
import pytest

from proxyseg_model.sam2_export import GRAPHS, clip, main
from proxyseg_model.sam2_track import slots, track_onnx


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("sam2") / "sam2-random"
    main(["--config", "sam2.1_hiera_t", "--random-weights", "--image-size", "256", "--out", str(out),
          "--fixtures", "16"])
    return out


def test_pytorch_and_onnxruntime_agree_over_a_16_frame_clip(bundle):
    doc = json.loads((bundle / "fixtures" / "fixtures.json").read_text())
    assert doc["frames"] == 16
    assert doc["pytorch_vs_onnxruntime"]["mask_logits"] <= 1e-3
    assert doc["pytorch_vs_onnxruntime"]["obj_ptr"] <= 1e-3
    logits = np.fromfile(bundle / "fixtures" / doc["files"]["mask_logits"], "<f4").reshape(doc["shapes"]["mask_logits"])
    # the clip exercises the mask path: objects predicted present, logits that change per frame
    assert doc["objects_appearing"] > 0.5
    assert all(np.abs(logits[t] - logits[t - 1]).max() > 1e-3 for t in range(1, 16))
    assert logits.std() > 1e-2


def test_manifest_names_contract_2_and_the_memory_slots(bundle):
    import tomllib
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    assert m["contract"] == 2 and m["family"] == "sam2"
    assert m["memory"] == {"config": "sam2.1_hiera_t", "memory_dim": 64, "frame_slots": 7, "pointer_slots": 16,
                           "recent_frames": 6, "high_res_channels": [32, 64]}
    assert set(m["graphs"]) == set(GRAPHS)


def test_graphs_take_any_number_of_objects(bundle):
    sessions = {g: ort.InferenceSession(str(bundle / f"{g}.onnx"), providers=["CPUExecutionProvider"]) for g in GRAPHS}
    frames, simg, smask = clip(3, 256, seed=1)
    for k in (1, 3):
        out = track_onnx(sessions, frames, simg, np.repeat(smask[:, :1], k, 1), 6, 7, 16)
        assert [o["mask_logits"].shape for o in out] == [(k, 1, 64, 64)] * 3


def test_memory_slots_follow_sam2():
    assert slots(0, 40, 6, 7, 16).frames == [] and slots(0, 40, 6, 7, 16).pointers == []
    s = slots(1, 40, 6, 7, 16)
    assert s.frames == [(0, 6)] and s.pointers == [(0, 1 / 15)]
    s = slots(20, 40, 6, 7, 16)
    # frame 0 (conditioning row 6), then frames 14..19 oldest first with rows 5..0
    assert s.frames == [(0, 6), (14, 5), (15, 4), (16, 3), (17, 2), (18, 1), (19, 0)]
    assert [f for f, _ in s.pointers] == [0] + list(range(19, 4, -1))
    assert len(s.pointers) == 16 and s.pointers[1] == (19, 1 / 15)
    # a short series normalises pointer distances by its own length, as SAM 2 does
    assert slots(3, 4, 6, 7, 16).pointers == [(0, 1.0), (2, 1 / 3), (1, 2 / 3)]
    # fewer recent frames on request
    assert slots(20, 40, 2, 7, 16).frames == [(0, 6), (18, 1), (19, 0)]


def test_sam2_v1_config_exports_and_agrees(tmp_path):
    """SAM 2 (not 2.1) differs in the parts the graphs wrap: no temporal encoding of pointers,
    no object-score input to the memory encoder; its graphs keep the contract's inputs."""
    out = tmp_path / "sam2-v1"
    main(["--config", "sam2_hiera_t", "--random-weights", "--image-size", "256", "--out", str(out),
          "--fixtures", "4"])
    doc = json.loads((out / "fixtures" / "fixtures.json").read_text())
    assert doc["pytorch_vs_onnxruntime"]["mask_logits"] <= 1e-3 and doc["objects_appearing"] == 1.0
    names = [i.name for i in ort.InferenceSession(str(out / "memory_attention.onnx")).get_inputs()]
    assert names == ["image_embeddings", "prompt_tokens", "frame_memory", "frame_tpos", "frame_valid",
                     "obj_ptrs", "ptr_pos", "ptr_valid"]
