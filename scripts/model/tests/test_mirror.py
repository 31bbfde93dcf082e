"""The mirrored second look (mirror.py; the Rust engine's src/engine/mirror/ mirrors it):
the manifest table's checks, which objects it takes, flips that keep images and masks aligned,
and the merge of the two looks. The whole path through ONNX Runtime is checked against the
Rust engine by the view fixtures (bundle_data --view-fixtures, tests/engine/engine_parity_views.rs)."""
import numpy as np
import pytest

from proxyseg_model import mirror


def test_the_table_is_checked_as_the_engine_checks_it():
    mirror.check(None)
    mirror.check(mirror.SHIPPED)
    for bad, why in [({"objects": []}, "must list"), ({"objects": ["cup", " "]}, "must list"),
                     ({"objects": ["cup", "Cup"]}, "listed twice"), ({"objects": ["cup"], "logit": 1}, "unknown key")]:
        with pytest.raises(ValueError, match=why):
            mirror.check(bad)


def test_listed_objects_are_matched_case_insensitively_in_mask_order():
    rule = {"objects": ["Optic Cup", "vessels"]}
    assert mirror.object_indices(rule, ["optic disc", "optic cup"]) == [1]
    assert mirror.object_indices(rule, ["fetal head"]) == []
    assert mirror.object_indices(None, ["optic cup"]) == []


def test_flips_keep_image_and_masks_aligned():
    display = np.zeros((4, 6, 3), np.float32)
    display[1, 0] = 255.0
    masks = np.zeros((2, 4, 6), np.uint8)
    masks[0, 1, 0] = 1
    masks[1, 3, 5] = 1
    d, m = mirror.flip_display(display), mirror.flip(masks)
    assert d.shape == display.shape and m.shape == masks.shape
    assert d[1, 5].tolist() == [255.0] * 3 and d.sum() == 3 * 255.0
    assert m[0, 1, 5] == 1 and m[1, 3, 0] == 1 and m.sum() == 2
    assert d.flags["C_CONTIGUOUS"] and m.flags["C_CONTIGUOUS"]
    assert np.array_equal(mirror.flip_display(d), display)
    assert np.array_equal(mirror.flip_display(display[..., 0])[1], display[1, ::-1, 0])  # grey displays too


def test_merge_averages_the_listed_objects_with_the_second_look_mirrored_back():
    first = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    second = np.full_like(first, 10.0)
    second[:, :, 0] = -10.0  # the second look's left column is the frame's right column
    out = mirror.merge(first, second, [1])
    assert np.array_equal(out[0], first[0])  # not listed: the first look
    assert np.array_equal(out[1, :, 2], (first[1, :, 2] - 10.0) / 2)
    assert np.array_equal(out[1, :, :2], (first[1, :, :2] + 10.0) / 2)
    assert out.dtype == np.float32
    assert np.array_equal(first, np.arange(12, dtype=np.float32).reshape(2, 2, 3))  # inputs untouched


def test_a_regenerated_report_keeps_the_memory_section_and_table(tmp_path):
    """evaluate_real's report is rewritten after a change such as [mirror]; evaluate_memory's
    section of evaluation.md and its [evaluation.memory] table are that tool's, kept as they are."""
    from proxyseg_model.evaluate_real import write_report
    (tmp_path / "manifest.toml").write_text(
        'name = "b"\n\n[evaluation]\nreport = "evaluation.md"\n\n[evaluation.memory]\nms_per_frame_memory = 759\n')
    memory = "## Memory mode vs frame by frame (issue 15 item 3)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    (tmp_path / "evaluation.md").write_text("# old report\n\nold table\n\n" + memory)
    res = {"started": "now", "sets": {"hc18": {"labels": ["fetal head"], "n_val": 2, "cases": "validation",
                                               "ppg": [0.9], "no_mirror": [0.89]}}}
    write_report(tmp_path, res)
    text = (tmp_path / "evaluation.md").read_text()
    assert "old table" not in text and "| hc18 | fetal head | 2 | 90.0 | 89.0 |" in text
    assert text.endswith(memory) and text.count("## Memory mode") == 1
    import tomllib
    ev = tomllib.loads((tmp_path / "manifest.toml").read_text())["evaluation"]
    assert ev["memory"] == {"ms_per_frame_memory": 759}
    assert ev["mean"]["ppg"] == 90.0 and ev["hc18"]["fetal head"]["no_mirror"] == 89.0


def test_look_agreement_is_the_dice_of_the_two_looks_masks():
    """The engine's mirror::agreement, on its unit test's numbers."""
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    assert mirror.mask_dice(a, b) == 1.0  # both empty: the looks agree there is nothing
    a[0, :2] = 1
    assert mirror.mask_dice(a, b) == 0.0
    b[0, 1:3] = 1
    assert mirror.mask_dice(a, b) == 0.5  # 2 x 1 / (2 + 2)
    first = np.array([[[1, 1, -1, -1]], [[6, 4, 4, 4]], [[1, 1, 1, 1]]], np.float32)
    second = np.array([[[-1, -1, 1, 1]], [[-9, -9, 6, 9]], [[-1, -1, -1, -1]]], np.float32)
    got = mirror.look_agreement(first, second, [0, 1], [0.0, 5.0, 0.0])
    assert got[0] == 1.0 and got[1] == pytest.approx(2 / 3) and got[2] is None
