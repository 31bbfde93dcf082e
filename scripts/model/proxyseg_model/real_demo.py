"""A `proxyseg demo` folder from real image + mask files (which the project cannot ship).

Input: a folder of cases in the layout of ../shared/data (`<case>/image.(png|jpg)` + one
`<object>.png` per object, 0/255). Output: `<out>/<bundle>/` with the bundle's files linked,
`support-sets/<name>/` (the first 5 training-pool cases as DICOM image + SEG pairs, as an admin
would curate them) and `demo-studies/<case>/` (validation cases as DICOM studies, each with
`truth/truth.seg.dcm`). Then the whole loop runs through the real daemon:

  python -m proxyseg_model.real_demo --set drishti-gs --out ../../var/real-demo/drishti-gs
  target/release/proxyseg demo --models-dir var/real-demo/drishti-gs

Known sets (realdata.DATASETS) bring their objects, labels, modality and body part; another
folder needs --objects/--labels/--modality/--body-part (its cases are split the same way).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tomllib
import zlib
from pathlib import Path

import numpy as np

from . import realdata
from .phantoms.dicom_io import (ANATOMICAL_STRUCTURE, OBJECT_CODES, OBJECT_COLORS, uid, write_case)
from .tomlw import Inline, dumps

FAMILY = {"OP": "fundus", "US": "us"}


def _seed(name: str, case: str) -> int:
    return zlib.crc32(f"{name}/{case}".encode())


def case_dict(spec: realdata.DataSet, root: Path, case: str, role: str) -> dict:
    pixels = realdata.grey_pixels(spec.name, case, root)
    _, masks = realdata.load_case(spec.name, case, root)
    seed = _seed(spec.name, case)
    fam = FAMILY[spec.modality]
    return {"family": fam, "pixels": pixels if spec.rgb else pixels[None], "masks": masks[None],
            "objects": list(spec.labels),
            "identity": {"BodyPartExamined": spec.body_part, "PatientName": f"Real^{spec.name}^{case}",
                         "PatientID": f"{spec.name}-{case}"[:64], "StudyDescription": f"{spec.name} {case}",
                         "SeriesDescription": f"{spec.name} {role}",
                         "StudyInstanceUID": uid(spec.name, case, role, "study")},
            "seed": seed}


def link_bundle(bundle: Path, dest: Path) -> None:
    """The bundle's files in `dest`: symbolic links, but the checkpoint its graphs read as
    external data ([weights] file) is hard-linked, or copied across file systems. The engine
    refuses a weights file that links outside the bundle folder (ONNX Runtime reads external
    data only from inside the model's folder)."""
    weights = tomllib.loads((bundle / "manifest.toml").read_text()).get("weights", {}).get("file")
    for f in bundle.iterdir():
        if not f.is_file():
            continue
        if f.name == weights:
            try:
                os.link(f.resolve(), dest / f.name)
            except OSError:
                shutil.copyfile(f, dest / f.name)
        else:
            (dest / f.name).symlink_to(f.resolve())


def build(spec: realdata.DataSet, root: Path, bundle: Path, out: Path, studies: int) -> Path:
    train, val = realdata.split(spec.name, root)
    dest = out / bundle.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    link_bundle(bundle, dest)
    name = f"{spec.name}-real"
    sset = dest / "support-sets" / name
    pairs = []
    for i, case in enumerate(train[:5]):
        c = case_dict(spec, root, case, "support")
        write_case(c, sset / "pairs" / f"{i + 1:02d}", c["seed"], role="support")
        pairs.append({"image": f"pairs/{i + 1:02d}/image.dcm", "mask": f"pairs/{i + 1:02d}/mask.seg.dcm"})
    toml = {"name": name, "description": f"{spec.name}: real support pairs (training pool)", "bundle": bundle.name,
            "match": {"modality": spec.modality, "body_part": spec.body_part},
            "objects": [{"label": o, "category": Inline(scheme=ANATOMICAL_STRUCTURE.scheme_designator,
                                                         code=ANATOMICAL_STRUCTURE.value,
                                                         meaning=ANATOMICAL_STRUCTURE.meaning),
                         "type": Inline(scheme=OBJECT_CODES[o].scheme_designator, code=OBJECT_CODES[o].value,
                                        meaning=OBJECT_CODES[o].meaning),
                         "color": OBJECT_COLORS[o]} for o in spec.labels],
            "pairs": pairs}
    (sset / "supportset.toml").write_text(dumps(toml))
    for case in val[:studies]:
        c = case_dict(spec, root, case, "study")
        folder = dest / "demo-studies" / case
        img, seg = write_case(c, folder / "tmp", c["seed"], role="study")
        img.replace(folder / "image.dcm")
        (folder / "truth").mkdir()
        seg.replace(folder / "truth" / "truth.seg.dcm")
        (folder / "tmp").rmdir()
    return dest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="a known set (drishti-gs, drive, psfhs, hc18) or a folder name")
    ap.add_argument("--data", default="", help="folder holding the set's folder (default: ../shared/data)")
    ap.add_argument("--objects", default="", help="other sets: mask file stems, comma-separated")
    ap.add_argument("--labels", default="", help="other sets: segment labels, comma-separated")
    ap.add_argument("--modality", default="OP", choices=sorted(FAMILY))
    ap.add_argument("--body-part", default="")
    ap.add_argument("--bundle", default=str(Path(__file__).resolve().parents[3] / "models" / "litemedsam-ppg"))
    ap.add_argument("--studies", type=int, default=5, help="validation cases to send as studies")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    root = Path(args.data) if args.data else realdata.data_root()
    if args.set in realdata.DATASETS:
        spec = realdata.DATASETS[args.set]
    else:
        objs, labels = args.objects.split(","), args.labels.split(",")
        if not args.objects or len(objs) != len(labels) or not args.body_part:
            ap.error("a set that is not known needs --objects, --labels (same count) and --body-part")
        unknown = [x for x in labels if x not in OBJECT_CODES]
        if unknown:
            ap.error(f"labels without a code: {unknown}; known: {sorted(OBJECT_CODES)}")
        probe = next((root / args.set).iterdir())
        rgb = np.asarray(__import__("PIL.Image").Image.open(next(probe.glob("image.*")))).ndim == 3
        spec = realdata.DataSet(args.set, tuple(objs), tuple(labels), args.modality, args.body_part, rgb)
        realdata.DATASETS[args.set] = spec
    dest = build(spec, root, Path(args.bundle), Path(args.out), args.studies)
    print(f"demo folder: {dest.parent}  (run: target/release/proxyseg demo --models-dir {dest.parent})")


if __name__ == "__main__":
    main()
