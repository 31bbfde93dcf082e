"""The viewer check: proxyseg's SEGs through OHIF's SEG code path (and dwv) in headless Chromium.

Usage: viewer_check.py CASES.json

CASES.json: {"out": DIR, "cases": [{"name": N, "sources": [DCM...], "seg": SEG}]}. Copies each
case's files under OUT/data/<name>/, runs tests/viewer/run.mjs (cornerstone3D +
@cornerstonejs/adapters in Chromium; screenshots under OUT/<name>/shots/), then checks, per
case, segment and source frame:

- the expected mask: the SEG read by highdicom (an independent reader), on the source frame it
  references, empty where the SEG has no frame (omit_empty_frames);
- rendered: in the screenshot of that frame with only that segment shown, opaque, the pixels
  (sampled at each image pixel's centre, placed on the canvas by the viewer's own transform)
  whose colour is the segment's Recommended Display CIELab Value converted to sRGB here
  (independently of dcmjs) must match the expected mask: Dice >= 0.99;
- labelmap: the labelmap the adapters produced for that frame must match it: Dice >= 0.99;
- the colour the viewer used must be within 2 of the CIELab value's sRGB per channel.

Volumes (several sources with Image Position) are also opened in dwv (case <name>-dwv; dwv's SEG
reader handles volumes only), with the same three checks on dwv's mask volume and its render.

Prints one row per case and segment (minimum Dice over frames) and exits 1 on any failure.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIEWER = os.path.join(ROOT, "tests", "viewer")
MIN_DICE = 0.99
COLOUR_TOLERANCE = 6  # per channel, rendered pixel vs the segment's colour
LUT_TOLERANCE = 2  # per channel, viewer's colour vs our CIELab -> sRGB
# Console errors that are not about the SEG: vtk.js logs this when it renders a source frame
# whose pixels are all one value (the black frames of make_viewer_studies.py: a VOI window of
# zero width).
BENIGN_ERRORS = ("attempt to set zero width color range",)


def dicomlab_to_srgb(value):
    """DICOM CIELab (PS3.3 C.10.7.1.1: 16-bit scaled L*a*b*, D65) to 8-bit sRGB."""
    L = value[0] / 65535.0 * 100.0
    a = value[1] / 65535.0 * 255.0 - 128.0
    b = value[2] / 65535.0 * 255.0 - 128.0
    fy = (L + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0

    def finv(t):
        return t ** 3 if t > 6.0 / 29.0 else 3.0 * (6.0 / 29.0) ** 2 * (t - 4.0 / 29.0)

    xyz = np.array([0.950456 * finv(fx), 1.0 * finv(fy), 1.088754 * finv(fz)])
    m = np.array([[3.2404542, -1.5371385, -0.4985314],
                  [-0.9692660, 1.8760108, 0.0415560],
                  [0.0556434, -0.2040259, 1.0572252]])
    rgb = np.clip(m @ xyz, 0.0, 1.0)
    rgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)
    return np.round(rgb * 255.0).astype(int)


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


SOURCES = {}  # SOP Instance UID -> source file


def expected_masks(seg_path, images):
    """{segment number: array [len(images), rows, cols]} from highdicom, in viewer stack order."""
    seg = hd.seg.segread(seg_path)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    out = {n: np.zeros((len(images), seg.Rows, seg.Columns), bool) for n in numbers}
    by_sop = {}
    for i, im in enumerate(images):
        by_sop.setdefault(im["sopInstanceUID"], []).append((i, im["frame"]))
    for sop, items in by_sop.items():
        src = pydicom.dcmread(SOURCES[sop], stop_before_pixels=True)
        if int(src.get("NumberOfFrames", 1)) > 1:
            px = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=sop,
                source_frame_numbers=[f for _, f in items],
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
            )
        else:
            px = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[sop],
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
            )
        for k, (i, _) in enumerate(items):
            for j, n in enumerate(numbers):
                out[n][i] = px[k, :, :, j] > 0
    return out


def sample_centres(shot, rows, cols):
    """Canvas pixel indices of each image pixel's centre, from the viewer's transform."""
    (x0, y0), (x1, y1) = shot["first"], shot["last"]
    xs = x0 + np.arange(cols) * ((x1 - x0) / max(cols - 1, 1))
    ys = y0 + np.arange(rows) * ((y1 - y0) / max(rows - 1, 1))
    return np.floor(ys).astype(int), np.floor(xs).astype(int)


def check_case(out, case):
    name = case["name"]
    failures = []
    d = json.load(open(os.path.join(out, name, "viewer.json")))
    errors = [e for e in d["errors"] if not any(b in e for b in BENIGN_ERRORS)]
    if errors:
        failures.append(f"{name}: errors in the page: {errors[:3]}")
    images = d["images"]
    rows, cols = d["rows"], d["columns"]
    want_images = []
    for path in case["sources"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        SOURCES[ds.SOPInstanceUID] = path
        for f in range(1, int(ds.get("NumberOfFrames", 1)) + 1):
            want_images.append((ds.SOPInstanceUID, f))
    got_images = [(im["sopInstanceUID"], im["frame"]) for im in images]
    if sorted(got_images) != sorted(want_images):
        failures.append(f"{name}: the viewer's stack {got_images} is not the sources' frames")
        return failures, []
    expected = expected_masks(case["seg"], images)
    segs = {s["segmentIndex"]: s for s in d["segments"]}
    seg_ds = pydicom.dcmread(case["seg"], stop_before_pixels=True)
    rows_out = []
    for item in seg_ds.SegmentSequence:
        n = int(item.SegmentNumber)
        srgb = dicomlab_to_srgb([int(v) for v in item.RecommendedDisplayCIELabValue])
        s = segs.get(n)
        if s is None or s["rgba"] is None:
            failures.append(f"{name}: segment {n} has no colour in the viewer")
            continue
        lut_delta = int(np.max(np.abs(np.array(s["rgba"][:3]) - srgb)))
        if lut_delta > LUT_TOLERANCE:
            failures.append(f"{name}: segment {n} shown in {s['rgba'][:3]}, CIELab gives {srgb.tolist()}")
        # The adapters' labelmaps: every layer, the union of pixels labelled n, per stack index.
        lab = np.zeros((len(images), rows, cols), bool)
        for layer in d["labelmaps"]:
            for i, im in enumerate(layer):
                a = np.frombuffer(base64.b64decode(im["data"]), np.uint8).reshape(rows, cols)
                lab[i] |= a == n
        rendered_dice, labelmap_dice, frames_with = [], [], 0
        for i in range(len(images)):
            want = expected[n][i]
            frames_with += bool(want.any())
            labelmap_dice.append(dice(lab[i], want))
            shot = next(x for x in d["shots"]
                        if x["index"] == i and x["style"] == "solid" and x["segmentIndex"] == n)
            if shot["imageId"] != images[i]["imageId"]:
                failures.append(f"{name}: screenshot {shot['file']} shows {shot['imageId']}")
            png = np.asarray(Image.open(os.path.join(out, name, shot["file"])).convert("RGB"))
            ys, xs = sample_centres(shot, rows, cols)
            if ys.min() < 0 or xs.min() < 0 or ys.max() >= png.shape[0] or xs.max() >= png.shape[1]:
                failures.append(f"{name}: image {i} is not wholly on the canvas")
                continue
            px = png[np.ix_(ys, xs)].astype(int)
            got = np.max(np.abs(px - srgb), axis=-1) <= COLOUR_TOLERANCE
            rendered_dice.append(dice(got, want))
        r_min, l_min = min(rendered_dice), min(labelmap_dice)
        if r_min < MIN_DICE:
            bad = [i for i, v in enumerate(rendered_dice) if v < MIN_DICE]
            failures.append(f"{name}: segment {n} rendered Dice {r_min:.4f} < {MIN_DICE} on stack "
                            f"positions {bad}")
        if l_min < MIN_DICE:
            bad = [i for i, v in enumerate(labelmap_dice) if v < MIN_DICE]
            failures.append(f"{name}: segment {n} labelmap Dice {l_min:.4f} < {MIN_DICE} on stack "
                            f"positions {bad}")
        rows_out.append((name, n, s["label"], len(images), frames_with, int(seg_ds.NumberOfFrames),
                         r_min, l_min, lut_delta))
    return failures, rows_out


def check_dwv_case(out, case):
    """The same checks on dwv's mask volume and its render (volumes only: dwv's SEG reader
    needs SEG frames indexed by Image Position)."""
    name = case["name"] + "-dwv"
    failures = []
    d = json.load(open(os.path.join(out, name, "dwv.json")))
    errors = [e for e in d["errors"] if not any(b in e for b in BENIGN_ERRORS)]
    if errors:
        failures.append(f"{name}: errors in the page: {errors[:3]}")
    by_position = {}
    for path in case["sources"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        SOURCES[ds.SOPInstanceUID] = path
        by_position[tuple(round(float(v), 2) for v in ds.ImagePositionPatient)] = ds.SOPInstanceUID
    cols, rows, slices = d["image"]["size"]

    def sop_at(origin):
        return by_position.get(tuple(round(float(v), 2) for v in origin))

    images = [{"sopInstanceUID": sop_at(o), "frame": 1} for o in d["image"]["origins"]]
    if any(im["sopInstanceUID"] is None for im in images) or len(images) != len(case["sources"]):
        return [f"{name}: dwv's slices {d['image']['origins']} are not the sources'"], []
    expected = expected_masks(case["seg"], images)
    mcols, mrows, mslices = d["mask"]["size"]
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[d["mask"]["bytesPerValue"]]
    volume = np.frombuffer(base64.b64decode(d["mask"]["buffer"]), dtype).reshape(mslices, mrows,
                                                                                  mcols)
    slice_of = {sop_at(o): k for k, o in enumerate(d["mask"]["origins"])}
    seg_ds = pydicom.dcmread(case["seg"], stop_before_pixels=True)
    segs = {s["number"]: s for s in d["mask"]["segments"]}
    rows_out = []
    for item in seg_ds.SegmentSequence:
        n = int(item.SegmentNumber)
        srgb = dicomlab_to_srgb([int(v) for v in item.RecommendedDisplayCIELabValue])
        s = segs.get(n)
        if s is None or s["rgb"] is None:
            failures.append(f"{name}: segment {n} has no colour in dwv")
            continue
        lut_delta = int(np.max(np.abs(np.array(s["rgb"]) - srgb)))
        if lut_delta > LUT_TOLERANCE:
            failures.append(f"{name}: segment {n} shown in {s['rgb']}, CIELab gives {srgb.tolist()}")
        rendered_dice, labelmap_dice, frames_with = [], [], 0
        for i, im in enumerate(images):
            want = expected[n][i]
            frames_with += bool(want.any())
            k = slice_of.get(im["sopInstanceUID"])
            got_lab = volume[k] == n if k is not None else np.zeros_like(want)
            labelmap_dice.append(dice(got_lab, want))
            shot = next(x for x in d["shots"] if x["index"] == i)
            png = np.asarray(Image.open(os.path.join(out, name, shot["file"])).convert("RGB"))
            scale = d["scale"]
            ys = ((np.arange(rows) + 0.5) * scale).astype(int)
            xs = ((np.arange(cols) + 0.5) * scale).astype(int)
            px = png[np.ix_(ys, xs)].astype(int)
            got = np.max(np.abs(px - srgb), axis=-1) <= COLOUR_TOLERANCE
            rendered_dice.append(dice(got, want))
        r_min, l_min = min(rendered_dice), min(labelmap_dice)
        for what, values in (("rendered", rendered_dice), ("labelmap", labelmap_dice)):
            if min(values) < MIN_DICE:
                bad = [i for i, v in enumerate(values) if v < MIN_DICE]
                failures.append(f"{name}: segment {n} {what} Dice {min(values):.4f} < {MIN_DICE} "
                                f"on slices {bad}")
        rows_out.append((name, n, s["label"], len(images), frames_with,
                         int(seg_ds.NumberOfFrames), r_min, l_min, lut_delta))
    return failures, rows_out


def has_volume(case):
    ds = pydicom.dcmread(case["sources"][0], stop_before_pixels=True)
    return len(case["sources"]) > 1 and "ImagePositionPatient" in ds


def main():
    t0 = time.time()
    spec = json.load(open(sys.argv[1]))
    out = os.path.abspath(spec["out"])
    data = os.path.join(out, "data")
    shutil.rmtree(data, ignore_errors=True)
    manifest = {"data_root": data, "out": out, "cases": []}
    for case in spec["cases"]:
        d = os.path.join(data, case["name"])
        os.makedirs(os.path.join(d, "src"), exist_ok=True)
        srcs = []
        for i, s in enumerate(case["sources"]):
            rel = f"{case['name']}/src/{i:03d}.dcm"
            shutil.copy(s, os.path.join(data, rel))
            srcs.append(rel)
        shutil.copy(case["seg"], os.path.join(d, "seg.dcm"))
        first = pydicom.dcmread(case["sources"][0], stop_before_pixels=True)
        scale = max(1, 512 // max(first.Rows, first.Columns))
        manifest["cases"].append({"name": case["name"], "sources": srcs,
                                  "seg": f"{case['name']}/seg.dcm", "rows": first.Rows,
                                  "columns": first.Columns, "scale": scale})
        if has_volume(case):
            manifest["cases"].append(dict(manifest["cases"][-1], name=case["name"] + "-dwv",
                                          viewer="dwv"))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    run = subprocess.run(["node", os.path.join(VIEWER, "run.mjs"), os.path.join(out, "manifest.json")],
                         cwd=VIEWER)
    failures = [] if run.returncode == 0 else [f"run.mjs exited with {run.returncode}"]
    table = []
    for case in spec["cases"]:
        if not os.path.exists(os.path.join(out, case["name"], "viewer.json")):
            failures.append(f"{case['name']}: no viewer output")
            continue
        f, rows = check_case(out, case)
        failures += f
        table += rows
        if has_volume(case):
            if not os.path.exists(os.path.join(out, case["name"] + "-dwv", "dwv.json")):
                failures.append(f"{case['name']}-dwv: no dwv output")
                continue
            f, rows = check_dwv_case(out, case)
            failures += f
            table += rows
    print(f"\n{'case':<22} {'seg':>3} {'label':<16} {'images':>6} {'with':>4} {'SEG fr':>6} "
          f"{'rendered':>9} {'labelmap':>9} {'rgb d':>5}")
    for name, n, label, images, with_, frames, r, l, dl in table:
        print(f"{name:<22} {n:>3} {label:<16} {images:>6} {with_:>4} {frames:>6} {r:>9.4f} "
              f"{l:>9.4f} {dl:>5}")
    print("(Dice: minimum over the case's source frames; 'with': frames where the SEG has the "
          "segment; 'SEG fr': the SEG's Number of Frames)")
    print(f"screenshots: {out}/<case>/shots/   ({time.time() - t0:.1f} s)")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("viewer check passed")


if __name__ == "__main__":
    main()
