"""The real-data split: training pool, selection cases, reporting cases (realdata.py), and the
check set's paired interval and bundle variants (holdout.py). Case folders are made empty in tmp_path: the split
reads names only."""
from pathlib import Path

import numpy as np
import pytest

from proxyseg_model import realdata
from proxyseg_model.holdout import bundle_spec, paired_interval


def _root(tmp_path: Path, counts: dict) -> Path:
    for ds, n in counts.items():
        for i in range(n):
            (tmp_path / ds / f"case{i:03d}").mkdir(parents=True)
    return tmp_path


def test_selection_and_reporting_cases_split_the_validation_cases(tmp_path: Path):
    counts = {"drishti-gs": 50, "drive": 20, "psfhs": 150, "hc18": 100}
    root = _root(tmp_path, counts)
    for ds, n in counts.items():
        pool, val = realdata.split(ds, root)
        pick, report = realdata.validation_parts(ds, root)
        assert len(pick) == realdata.SELECTION[ds]
        assert sorted(pick + report) == val  # every validation case is one or the other
        assert not set(pick) & set(report)
        assert not set(pick) & set(pool)
        # evaluate_memory's held-out sequences come from the first validation cases: never selection
        assert set(val[:realdata.MEMORY_CASES]) <= set(report)
        assert realdata.validation_parts(ds, root) == (pick, report)  # fixed, not drawn per call
        assert realdata.selection(ds, root) == pick and realdata.reporting(ds, root) == report


def test_too_few_validation_cases_for_the_selection_share_is_an_error(tmp_path: Path):
    root = _root(tmp_path, {"psfhs": 40})  # 24 validation cases, 8 after the memory cases
    with pytest.raises(ValueError, match="34 selection cases asked, 8 validation cases"):
        realdata.validation_parts("psfhs", root)


def test_paired_interval_brackets_the_mean_difference():
    a = np.array([80.0, 90.0, 70.0, 85.0, 60.0, 95.0])
    same = paired_interval(a, a)
    assert same == (0.0, 0.0, 0.0)
    b = a + np.array([1.0, 3.0, -1.0, 2.0, 0.0, 1.0])
    mean, lo, hi = paired_interval(a, b)
    assert abs(mean - 1.0) < 1e-9
    assert -1.0 <= lo < mean < hi <= 3.0
    assert paired_interval(a, b) == (mean, lo, hi)  # seeded


def test_bundle_variants_name_a_folder_and_a_mirroring():
    assert bundle_spec("../../models/litemedsam-ppg") == ("../../models/litemedsam-ppg", "")
    assert bundle_spec("/tmp/c:support-flip") == ("/tmp/c", "support-flip")
    assert bundle_spec("/tmp/c:query-flip") == ("/tmp/c", "query-flip")
    assert bundle_spec("/tmp/a:b") == ("/tmp/a:b", "")  # an unknown suffix is part of the folder

