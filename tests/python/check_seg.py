"""Independent check of SEGs written by proxyseg, with highdicom.

Usage: check_seg.py MANIFEST.json [MANIFEST.json ...]

Each manifest (written by the Rust tests) names a SEG file, the masks the test wrote (a raw uint8
file of shape (len(keys), segments, rows, cols)) and, for each key, the source instance UID,
frame number, whether the source is multi-frame and the Image Position (Patient) of that frame
or null.

For each SEG this checks, and exits 1 with a message on the first failure:
  * Number of Frames and the segment numbers are as expected;
  * highdicom's segread gives exactly the written masks for every source instance / frame
    (frames omitted because empty must read back as empty);
  * with patient geometry: every frame's Plane Position equals the Image Position (Patient) of
    the source it references, frames of a segment go along the slice normal, and (when no frame
    was omitted) highdicom's get_volume() returns the masks in slice order.
Prints one "OK name" line per SEG.
"""

import json
import sys

import highdicom as hd
import numpy as np


def fail(msg):
    print("FAIL", msg)
    sys.exit(1)


def check(manifest_path):
    with open(manifest_path) as f:
        m = json.load(f)
    name, rows, cols, nseg = m["name"], m["rows"], m["cols"], m["segments"]
    keys = m["keys"]
    expected = np.fromfile(m["masks"], dtype=np.uint8).reshape(len(keys), nseg, rows, cols)
    seg = hd.seg.segread(m["seg"])
    if int(seg.NumberOfFrames) != m["frames"]:
        fail(f"{name}: NumberOfFrames {seg.NumberOfFrames}, expected {m['frames']}")
    if seg.segment_numbers != list(range(1, nseg + 1)):
        fail(f"{name}: segment numbers {seg.segment_numbers}")
    if seg.SegmentationType != "BINARY":
        fail(f"{name}: SegmentationType {seg.SegmentationType}")
    segs = list(range(1, nseg + 1))

    single = [(i, k) for i, k in enumerate(keys) if not k["multi"]]
    if single:
        got = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[k["uid"] for _, k in single],
            segment_numbers=segs,
            assert_missing_frames_are_empty=True,
        )
        got = np.moveaxis(got, -1, 1)  # (n, rows, cols, seg) -> (n, seg, rows, cols)
        want = expected[[i for i, _ in single]]
        if got.shape != want.shape or not np.array_equal(got.astype(np.uint8), want):
            diff = int(np.sum(got.astype(np.uint8) != want)) if got.shape == want.shape else -1
            fail(f"{name}: single-frame masks differ ({got.shape} vs {want.shape}, {diff} pixels)")

    by_uid = {}
    for i, k in enumerate(keys):
        if k["multi"]:
            by_uid.setdefault(k["uid"], []).append((i, k["frame"]))
    for uid, items in by_uid.items():
        got = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=uid,
            source_frame_numbers=[fr for _, fr in items],
            segment_numbers=segs,
            assert_missing_frames_are_empty=True,
        )
        got = np.moveaxis(got, -1, 1)
        want = expected[[i for i, _ in items]]
        if got.shape != want.shape or not np.array_equal(got.astype(np.uint8), want):
            fail(f"{name}: multi-frame masks differ for {uid} ({got.shape} vs {want.shape})")

    ipp = {(k["uid"], k["frame"]): k["ipp"] for k in keys if k["ipp"] is not None}
    if ipp:
        iop = [float(v) for v in
               seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        last = {}
        for n, fg in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
            ref = fg.DerivationImageSequence[0].SourceImageSequence[0]
            src = (ref.ReferencedSOPInstanceUID, int(ref.get("ReferencedFrameNumber", 1)))
            pos = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
            if not np.allclose(pos, ipp[src], atol=1e-4):
                fail(f"{name}: frame {n} at {pos}, its source {src} at {ipp[src]}")
            s = fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            d = float(np.dot(pos, normal))
            if s in last and d <= last[s]:
                fail(f"{name}: frame {n} of segment {s} is not further along the normal")
            last[s] = d
        if not m["omit"]:
            # highdicom's own volume: each slice, at the position its affine gives, must hold
            # the masks written for the source at that position.
            vol = seg.get_volume()
            arr = vol.array
            if arr.shape[0] != len(keys):
                fail(f"{name}: get_volume() has {arr.shape[0]} slices for {len(keys)} sources")
            for k in range(arr.shape[0]):
                pos = vol.affine[:3, :3] @ np.array([k, 0, 0]) + vol.affine[:3, 3]
                match = [i for i, key in enumerate(keys) if np.allclose(key["ipp"], pos, atol=1e-3)]
                if len(match) != 1:
                    fail(f"{name}: volume slice {k} at {pos} matches no source position")
                want = np.moveaxis(expected[match[0]], 0, -1)  # (rows, cols, seg)
                if not np.array_equal(arr[k].astype(np.uint8), want):
                    fail(f"{name}: volume slice {k} at {pos} differs from the masks written")
    print("OK", name)


def main():
    if len(sys.argv) < 2:
        fail("usage: check_seg.py MANIFEST.json [...]")
    for path in sys.argv[1:]:
        check(path)


if __name__ == "__main__":
    main()
