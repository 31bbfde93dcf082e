#!/usr/bin/env python3
"""Helpers for tests/pipeline/e2e_orthanc.rs: Orthanc REST (upload, study listing, SEG polling, download)
and Dice of a SEG against a ground-truth SEG. Standard library + pydicom/highdicom/numpy only.

Every command prints one JSON document on stdout; errors go to stderr with exit status 1
(2 for a wait that timed out). Run it inside the network namespace that Orthanc listens in.

  orthanc.py upload URL FILE...          POST /instances; per file: sop, study uid, Orthanc ids
  orthanc.py series URL STUDY_ID         series of an Orthanc study: id, modality, instance ids
  orthanc.py wait-seg URL TIMEOUT_S STUDY_ID...
                                         polls until every study holds a SEG series; exit 2 on
                                         timeout, with what each study holds
  orthanc.py download URL INSTANCE_ID OUT
  orthanc.py dice SEG TRUTH              Dice per segment label (frames matched by source
                                         SOP Instance UID + frame number)
"""
import json
import sys
import time
import urllib.error
import urllib.request


def rest(url, path, data=None, method=None, raw=False):
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/dicom")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method or ('POST' if data else 'GET')} {path}: HTTP {e.code}: "
                         f"{e.read().decode(errors='replace')}")
    return body if raw else json.loads(body)


def upload(url, files):
    import pydicom

    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        with open(f, "rb") as fh:
            r = rest(url, "/instances", data=fh.read(), method="POST")
        out.append({"file": f, "sop": str(ds.SOPInstanceUID), "study_uid": str(ds.StudyInstanceUID),
                    "modality": str(ds.get("Modality", "")), "id": r["ID"],
                    "study": r["ParentStudy"], "status": r["Status"]})
    return out


def series(url, study):
    res = []
    for s in rest(url, f"/studies/{study}/series"):
        res.append({"id": s["ID"], "modality": s["MainDicomTags"].get("Modality", ""),
                    "series_uid": s["MainDicomTags"].get("SeriesInstanceUID", ""),
                    "instances": s["Instances"]})
    return res


def wait_seg(url, timeout, studies):
    deadline = time.time() + timeout
    while True:
        state = {st: series(url, st) for st in studies}
        if all(any(s["modality"] == "SEG" for s in v) for v in state.values()):
            return 0, state
        if time.time() >= deadline:
            return 2, state
        time.sleep(1.0)


def frames_by_source(path):
    """{segment label: {(source sop, source frame): bool mask}} of a SEG, read with highdicom."""
    import highdicom as hd
    import numpy as np

    seg = hd.seg.segread(path)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    pix = np.asarray(seg.pixel_array)
    if pix.ndim == 2:
        pix = pix[None]
    n = int(getattr(seg, "NumberOfFrames", 1))
    if pix.shape[0] != n or len(seg.PerFrameFunctionalGroupsSequence) != n:
        raise SystemExit(f"{path}: {pix.shape[0]} frames of pixels, NumberOfFrames {n}, "
                         f"{len(seg.PerFrameFunctionalGroupsSequence)} per-frame items")
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else {}

    def item(fg, name):  # a functional group lives in the per-frame item or in the shared one
        if name in fg:
            return fg[name].value[0]
        if name in shared:
            return shared[name].value[0]
        raise SystemExit(f"{path}: no {name} in per-frame or shared functional groups")

    out = {}
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        num = int(item(fg, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        src = item(fg, "DerivationImageSequence").SourceImageSequence[0]
        key = (str(src.ReferencedSOPInstanceUID), int(src.get("ReferencedFrameNumber", 1) or 1))
        label = labels[num]
        m = out.setdefault(label, {})
        if key in m:
            raise SystemExit(f"{path}: segment {label!r} has two frames for source {key}")
        m[key] = pix[i] > 0
    return out


def dice(seg_path, truth_path):
    import numpy as np

    got, want = frames_by_source(seg_path), frames_by_source(truth_path)
    norm = lambda s: s.strip().lower()
    got_n = {norm(k): v for k, v in got.items()}
    res = {"labels_truth": sorted(want), "labels_seg": sorted(got), "dice": {}, "missing": []}
    for label, wf in want.items():
        gf = got_n.get(norm(label))
        if gf is None:
            res["missing"].append(label)
            continue
        inter = total = 0
        shape = next(iter(wf.values())).shape
        for key in set(wf) | set(gf):
            a = wf.get(key, np.zeros(shape, bool))
            b = gf.get(key, np.zeros(shape, bool))
            if a.shape != b.shape:
                raise SystemExit(f"segment {label!r} frame {key}: shape {b.shape} != truth {a.shape}")
            inter += int(np.logical_and(a, b).sum())
            total += int(a.sum()) + int(b.sum())
        res["dice"][label] = 1.0 if total == 0 else 2.0 * inter / total
        res.setdefault("frames", {})[label] = {"truth": len(wf), "seg": len(gf),
                                               "unmatched_seg_frames": len(set(gf) - set(wf))}
    return res


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    code = 0
    if cmd == "upload":
        out = upload(args[0], args[1:])
    elif cmd == "series":
        out = series(args[0], args[1])
    elif cmd == "wait-seg":
        code, out = wait_seg(args[0], float(args[1]), args[2:])
    elif cmd == "download":
        data = rest(args[0], f"/instances/{args[1]}/file", raw=True)
        with open(args[2], "wb") as f:
            f.write(data)
        out = {"bytes": len(data), "path": args[2]}
    elif cmd == "dice":
        out = dice(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {cmd!r}\n{__doc__}")
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
