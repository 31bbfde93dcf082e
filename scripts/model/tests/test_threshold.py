"""threshold.py, the reference of src/engine/threshold.rs."""
import tomllib
from pathlib import Path

import numpy as np
import pytest

from proxyseg_model import threshold


def test_objects_get_their_tables_logit_and_others_zero():
    rules = [{"objects": ["Optic Cup"], "logit": 8}, {"objects": ["optic disc", "lesion"], "logit": -4.5}]
    assert threshold.object_thresholds(rules, ["optic disc", "vessels", "OPTIC CUP"]) == [-4.5, 0.0, 8.0]
    assert threshold.object_thresholds([], ["a", "b"]) == [0.0, 0.0]


def test_masks_cut_each_object_at_its_own_logit():
    logits = np.array([[[-5.0, -3.0, 1.0]], [[5.0, 8.0, 9.0]]], np.float32)
    assert threshold.masks(logits, [-4.0, 8.0]).tolist() == [[[0, 1, 1]], [[0, 0, 1]]]
    assert threshold.masks(logits, [0.0, 0.0]).tolist() == [[[0, 0, 1]], [[1, 1, 1]]]


@pytest.mark.parametrize("rules, says", [
    ([{"objects": ["cup"], "logit": float("nan")}], "finite"),
    ([{"objects": ["cup"]}], "finite"),
    ([{"objects": [], "logit": 1.0}], "empty"),
    ([{"objects": ["cup"], "logit": 1.0}, {"objects": ["Cup"], "logit": 2.0}], "twice"),
])
def test_a_wrong_table_is_refused_by_name(rules, says):
    with pytest.raises(ValueError, match=says):
        threshold.object_thresholds(rules, ["cup"])


def test_the_shipped_bundle_lists_its_thresholds():
    lite = Path(__file__).resolve().parents[3] / "models" / "litemedsam-ppg"
    assert tomllib.loads((lite / "manifest.toml").read_text())["threshold"] == threshold.SHIPPED


def test_calibrate_lists_an_object_only_where_its_best_logit_gains_enough():
    from proxyseg_model import calibrate
    grid = [-2.0, 0.0, 3.0]
    scores = {"optic cup": np.array([[0.70, 0.78, 0.81], [0.74, 0.80, 0.82]]),  # +2.5 at 3
              "vessels": np.array([[0.73, 0.74, 0.70], [0.75, 0.74, 0.72]])}    # +0.0: 0 is best
    rows = {r["label"]: r for r in calibrate.choose(scores, grid, min_gain=0.5)}
    assert rows["optic cup"]["logit"] == 3.0 and rows["optic cup"]["listed"]
    assert rows["optic cup"]["gain"] == pytest.approx(2.5)
    assert rows["vessels"]["logit"] == 0.0 and not rows["vessels"]["listed"]
    assert rows["vessels"]["cases"] == 2
    # a gain under the bar is reported but not listed
    assert not calibrate.choose(scores, grid, min_gain=3.0)[0]["listed"]


def test_calibrate_writes_a_candidate_its_own_tables(tmp_path):
    """calibrate --write: the listed rows replace the manifest's [[threshold]] tables (the rest of
    the manifest as it was); no listed row removes them; a wrong table changes nothing."""
    import shutil

    from proxyseg_model.calibrate import tables, write_tables
    src = Path(__file__).resolve().parents[3] / "models" / "litemedsam-ppg" / "manifest.toml"
    shutil.copyfile(src, tmp_path / "manifest.toml")
    before = tomllib.loads(src.read_text())
    rows = [{"label": "optic cup", "cases": 11, "at_zero": 83.9, "logit": 3.0, "best": 84.9, "gain": 1.0, "listed": True},
            {"label": "vessels", "cases": 11, "at_zero": 73.0, "logit": 1.0, "best": 73.1, "gain": 0.1, "listed": False}]
    write_tables(tmp_path, tables(rows))
    after = tomllib.loads((tmp_path / "manifest.toml").read_text())
    assert after["threshold"] == [{"objects": ["optic cup"], "logit": 3.0,
                                   "note": "calibrate.py: 83.9 -> 84.9 Dice on the choosing cases"}]
    assert {k: v for k, v in after.items() if k != "threshold"} == {k: v for k, v in before.items() if k != "threshold"}
    with pytest.raises(ValueError, match="listed twice"):
        write_tables(tmp_path, tables(rows[:1]) * 2)
    assert tomllib.loads((tmp_path / "manifest.toml").read_text()) == after
    write_tables(tmp_path, [])
    assert "threshold" not in tomllib.loads((tmp_path / "manifest.toml").read_text())
