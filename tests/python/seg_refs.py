"""Says whose images a SEG describes: its patient and study attributes and every instance it
references (Referenced Series Sequence and each frame's Source Image Sequence).

Usage: seg_refs.py SEG...
Prints one JSON list, one object per SEG: patient_id, patient_name, study_uid, series_uid,
referenced_series (UIDs), referenced_sops (UIDs, sorted, from both places).
"""
import json
import sys

import pydicom


def refs(seg):
    series, sops = set(), set()
    for s in seg.get("ReferencedSeriesSequence", []):
        series.add(s.SeriesInstanceUID)
        for i in s.get("ReferencedInstanceSequence", []):
            sops.add(i.ReferencedSOPInstanceUID)
    for f in seg.get("PerFrameFunctionalGroupsSequence", []):
        for d in f.get("DerivationImageSequence", []):
            for src in d.get("SourceImageSequence", []):
                sops.add(src.ReferencedSOPInstanceUID)
    return sorted(series), sorted(sops)


def main(paths):
    out = []
    for p in paths:
        seg = pydicom.dcmread(p)
        series, sops = refs(seg)
        out.append(
            {
                "patient_id": str(seg.get("PatientID", "")),
                "patient_name": str(seg.get("PatientName", "")),
                "study_uid": seg.StudyInstanceUID,
                "series_uid": seg.SeriesInstanceUID,
                "referenced_series": series,
                "referenced_sops": sops,
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
