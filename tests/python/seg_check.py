"""Checks SEG files the PACS received: which study they belong to, their segments, and Dice
against a ground-truth SEG.

Usage: seg_check.py SEG [TRUTH_SEG]
Prints JSON: study_uid, series_uid, modality, segments (labels), frames, dice (per segment
label, when TRUTH_SEG is given; masks compared per referenced source frame).
"""
import json
import sys

import highdicom as hd
import numpy as np
import pydicom


def masks_by_source(seg):
    """{(sop_uid, frame_no, segment_number): mask}"""
    out = {}
    arr = seg.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segnum = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = int(getattr(src, "ReferencedFrameNumber", 1) or 1)
        out[(src.ReferencedSOPInstanceUID, frame, segnum)] = arr[i].astype(bool)
    return out


def main(path, truth=None):
    seg = pydicom.dcmread(path)
    hd.seg.segread(path)  # independent reader must accept it
    out = {
        "study_uid": seg.StudyInstanceUID,
        "series_uid": seg.SeriesInstanceUID,
        "modality": seg.Modality,
        "segments": [s.SegmentLabel for s in seg.SegmentSequence],
        "frames": int(seg.NumberOfFrames),
    }
    if truth:
        t = pydicom.dcmread(truth)
        ours, theirs = masks_by_source(seg), masks_by_source(t)
        labels_t = {int(s.SegmentNumber): s.SegmentLabel for s in t.SegmentSequence}
        labels_o = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}
        dice = {}
        for tn, label in labels_t.items():
            on = labels_o.get(label)
            if on is None:
                continue
            inter = total = 0
            for (sop, frame, n), m in theirs.items():
                if n != tn:
                    continue
                o = ours.get((sop, frame, on))
                o = np.zeros_like(m) if o is None else o
                inter += int((o & m).sum())
                total += int(o.sum() + m.sum())
            dice[label] = 1.0 if total == 0 else 2 * inter / total
        out["dice"] = dice
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
