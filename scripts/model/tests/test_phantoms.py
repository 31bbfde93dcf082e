"""The phantom generator is deterministic, and its DICOM round-trips."""
import numpy as np
import pydicom
import pytest

from proxyseg_model.phantoms import OBJECTS, generate_case
from proxyseg_model.phantoms.dicom_io import dataset_displays, load_images, read_seg_masks, write_case
from proxyseg_model.preprocess import case_displays


@pytest.mark.parametrize("family,kw", [("fundus", {}), ("us", {"frames": 3}), ("mr", {"slices": 3})])
def test_deterministic(family, kw):
    a, b = generate_case(family, 7, **kw), generate_case(family, 7, **kw)
    c = generate_case(family, 8, **kw)
    assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["masks"], b["masks"])
    assert not np.array_equal(a["pixels"], c["pixels"])
    k = len(OBJECTS[family])
    assert a["masks"].shape[1] == k
    assert all(a["masks"][0, i].sum() > 0 for i in range(k)), "every object is present"


def test_copying_a_mask_scores_poorly():
    """Objects move between cases: the support mask of one case is a poor guess for another."""
    def dice(x, y):
        return 2 * (x & y).sum() / (x.sum() + y.sum())
    for family in ("fundus", "us", "mr"):
        m = [generate_case(family, s)["masks"][0].astype(bool) for s in range(6)]
        scores = [dice(m[0][k], m[j][k]) for j in range(1, 6) for k in range(m[0].shape[0])]
        assert np.mean(scores) < 0.6, (family, np.mean(scores))


@pytest.mark.parametrize("family,kw,sop", [
    ("fundus", {}, "1.2.840.10008.5.1.4.1.1.77.1.5.1"),
    ("us", {"frames": 2}, "1.2.840.10008.5.1.4.1.1.3.1"),
    ("us", {}, "1.2.840.10008.5.1.4.1.1.6.1"),
    ("mr", {"slices": 2}, "1.2.840.10008.5.1.4.1.1.4")])
def test_dicom_roundtrip_and_determinism(tmp_path, family, kw, sop):
    case = generate_case(family, 3, **kw)
    img, seg = write_case(case, tmp_path / "a", 3)
    img2, seg2 = write_case(case, tmp_path / "b", 3)
    srcs = load_images(img)
    assert srcs[0].SOPClassUID == sop
    assert srcs[0].BodyPartExamined == {"fundus": "EYE", "us": "PELVIS", "mr": "PROSTATE"}[family]
    disp = np.concatenate([dataset_displays(s) for s in srcs])
    assert np.array_equal(disp, case_displays(case))
    assert np.array_equal(read_seg_masks(seg, srcs), case["masks"])
    assert seg.read_bytes() == seg2.read_bytes()
    s = pydicom.dcmread(seg)
    assert s.Modality == "SEG" and s.SegmentationType == "BINARY"
    assert [x.SegmentLabel for x in s.SegmentSequence] == OBJECTS[family]
