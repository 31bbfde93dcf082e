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
