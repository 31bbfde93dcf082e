"""Real cases from ../shared/data (read at run time, never copied into the project).

Each case is `<set>/<case>/image.(png|jpg)` plus one `<object>.png` (0/255) per object. Images
become display values exactly as the daemon would see them after a DICOM conversion: RGB as
is (OP), grey through the percentile window (US MONOCHROME2 without a VOI window).

Split (paper protocol): per data set, a seeded permutation of the sorted case names; the
first 16 are the few-shot training pool (support pairs come from it too), the rest are
validation cases, never trained on.

Selection cases (from session 24): the last 4 of the training pool (`train_lite --hold-out 4`)
were the only check set of a training choice, and 4 cases misjudged the optic cup three times.
So a fixed part of each set's validation cases is set aside as selection cases (`selection`):
a training or shipping choice may look at them; the reported figures are on the rest
(`reporting`), which no choice sees. The selection cases are drawn (SELECTION_SEED) from the
validation cases after the first MEMORY_CASES, which stay reporting cases because
evaluate_memory's held-out sequences are made from them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .preprocess import to_display

TRAIN_PER_SET = 16
SPLIT_SEED = 0
# selection cases per data set (DRIVE's 4 validation cases are too few to share)
SELECTION = {"drishti-gs": 14, "drive": 0, "psfhs": 34, "hc18": 24}
SELECTION_SEED = 1
MEMORY_CASES = 16  # evaluate_memory's held-out real sequences (memory_data.VAL_REAL_CASES): always reporting


@dataclass(frozen=True)
class DataSet:
    name: str             # folder under the data root
    objects: tuple        # mask files (without .png), in segment order
    labels: tuple         # segment labels (the support set's object labels)
    modality: str
    body_part: str
    rgb: bool


DATASETS = {
    "drishti-gs": DataSet("drishti-gs", ("disc", "cup"), ("optic disc", "optic cup"), "OP", "EYE", True),
    "drive": DataSet("drive", ("vessels",), ("vessels",), "OP", "EYE", True),
    "psfhs": DataSet("psfhs", ("symphysis", "head"), ("pubic symphysis", "fetal head"), "US", "PELVIS", False),
    "hc18": DataSet("hc18", ("head",), ("fetal head",), "US", "ABDOMEN", False),
}


def data_root() -> Path:
    """PROXYSEG_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("PROXYSEG_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    raise FileNotFoundError("real data not found: set PROXYSEG_DATA to the folder with drive/, drishti-gs/, ...")


def cases(ds: str, root: Path | None = None) -> list[str]:
    root = root or data_root()
    return sorted(p.name for p in (root / ds).iterdir() if p.is_dir())


def split(ds: str, root: Path | None = None) -> tuple[list[str], list[str]]:
    """(training pool, validation cases) of a data set."""
    names = cases(ds, root)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    picked = [names[i] for i in order]
    return sorted(picked[:TRAIN_PER_SET]), sorted(picked[TRAIN_PER_SET:])


def validation_parts(ds: str, root: Path | None = None) -> tuple[list[str], list[str]]:
    """(selection cases, reporting cases) of a data set's validation cases, both sorted."""
    val = split(ds, root)[1]
    pool = val[MEMORY_CASES:]
    n = SELECTION.get(ds, 0)
    if n > len(pool):
        raise ValueError(f"{ds}: {n} selection cases asked, {len(pool)} validation cases after the first {MEMORY_CASES}")
    picked = set(pool[i] for i in np.random.default_rng(SELECTION_SEED).permutation(len(pool))[:n])
    return sorted(picked), [c for c in val if c not in picked]


def selection(ds: str, root: Path | None = None) -> list[str]:
    """Validation cases a choice may look at (validation_parts)."""
    return validation_parts(ds, root)[0]


def reporting(ds: str, root: Path | None = None) -> list[str]:
    """Validation cases the reported figures are on, which no choice sees (validation_parts)."""
    return validation_parts(ds, root)[1]


def load_case(ds: str, case: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (display H x W x 3 float32 0..255, masks K x H x W uint8 0/1)."""
    from PIL import Image
    root = root or data_root()
    spec = DATASETS[ds]
    folder = root / ds / case
    img_path = next(p for p in folder.iterdir() if p.stem == "image")
    im = Image.open(img_path)
    if spec.rgb:
        display = np.asarray(im.convert("RGB"), dtype=np.float32)
    else:
        display = to_display(np.asarray(im.convert("L")), "MONOCHROME2")
    masks = np.stack([(np.asarray(Image.open(folder / f"{o}.png").convert("L")) > 127).astype(np.uint8)
                      for o in spec.objects])
    return display, masks


def grey_pixels(ds: str, case: str, root: Path | None = None) -> np.ndarray:
    """Stored pixels as a DICOM conversion keeps them: RGB H x W x 3 or grey H x W, uint8."""
    from PIL import Image
    root = root or data_root()
    folder = root / ds / case
    im = Image.open(next(p for p in folder.iterdir() if p.stem == "image"))
    return np.asarray(im.convert("RGB" if DATASETS[ds].rgb else "L"))


def pack_training_cases(out: Path, max_side: int = 0, root: Path | None = None) -> int:
    """Copies each data set's training cases to `out` (a data root for PROXYSEG_DATA on a
    machine without the data, such as a lent GPU machine), and an empty folder per validation
    case so that `split` picks the same cases there. Images larger than `max_side` are scaled
    down (masks by nearest neighbour). Never point `out` into the project's tracked files.
    Returns the bytes written."""
    from PIL import Image
    root = root or data_root()
    total = 0
    for ds, spec in DATASETS.items():
        train, val = split(ds, root)
        for case in val:
            (out / ds / case).mkdir(parents=True, exist_ok=True)
        for case in train:
            src, dst = root / ds / case, out / ds / case
            dst.mkdir(parents=True, exist_ok=True)
            img_path = next(p for p in src.iterdir() if p.stem == "image")
            im = Image.open(img_path)
            f = max_side / max(im.size) if max_side and max(im.size) > max_side else 1.0
            size = (round(im.width * f), round(im.height * f))
            names = [(img_path.name, Image.LANCZOS)] + [(f"{o}.png", Image.NEAREST) for o in spec.objects]
            for name, resample in names:
                if f == 1.0:
                    (dst / name).write_bytes((src / name).read_bytes())
                else:
                    pic = Image.open(src / name)
                    pic = pic.convert("RGB" if resample == Image.LANCZOS and spec.rgb else pic.mode)
                    pic.resize(size, resample).save(dst / name, quality=95)
                total += (dst / name).stat().st_size
    return total


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="pack the training cases for a machine without the data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-side", type=int, default=0)
    a = ap.parse_args()
    print(f"{pack_training_cases(Path(a.out), a.max_side) / 1e6:.1f} MB -> {a.out}")
