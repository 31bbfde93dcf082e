"""Exit 0 when two DICOM files hold the same data set element by element (file meta ignored).

Usage: same_dataset.py SENT STORED
"""
import sys

import pydicom


def main(a: str, b: str) -> int:
    da = pydicom.dcmread(a, force=True)
    db = pydicom.dcmread(b, force=True)
    diffs = []
    # Data Set Trailing Padding carries no information; dcmtk does not send it.
    tags = sorted((set(da.keys()) | set(db.keys())) - {0xFFFCFFFC})
    for t in tags:
        ea, eb = da.get(t), db.get(t)
        if ea is None or eb is None:
            diffs.append(f"{t}: present only in {'stored' if ea is None else 'sent'}")
        elif ea.value != eb.value:
            diffs.append(f"{t} {ea.keyword}: {str(ea.value)[:60]!r} != {str(eb.value)[:60]!r}")
    if diffs:
        print("\n".join(diffs[:20]))
        return 1
    print(f"{len(tags)} elements equal")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
