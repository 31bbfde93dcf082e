#!/usr/bin/env python3
"""Sender for tests/dicom/crash_safety.rs: many parallel C-STOREs, logging only what was acknowledged.

Usage:
  crash_sender.py generate --dir DIR [--count 500]
      Writes COUNT small CT instances (Explicit VR Little Endian, Part 10) into DIR.
  crash_sender.py send --dir DIR --port PORT --log LOG [--host 127.0.0.1] [--aet CRASHSND]
                       [--aec PROXYSEG] [--assocs 8]
      Sends every DIR/*.dcm over ASSOCS parallel associations (file i goes to association
      i % ASSOCS). The data set bytes go out exactly as stored in the file (pynetdicom's
      chunked sending, no re-encoding). After a response with status 0x0000, and only then,
      "<SOPInstanceUID> <sha256 of the data set bytes sent>" is appended to LOG, which is
      flushed and fsynced before the next line. A failed or aborted association ends that
      worker; the daemon being killed is expected. Prints "acked=N failed=M" and exits 0;
      exits 2 when nothing at all could be sent (not even one association).
"""
import argparse
import hashlib
import os
import sys
import threading
from pathlib import Path

try:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom import AE, _config
    from pynetdicom.dsutils import split_dataset
except ImportError as e:  # the Rust test turns this into a clear failure
    print(f"crash_sender.py needs pydicom, pynetdicom and numpy: {e}", file=sys.stderr)
    sys.exit(3)

CT = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.8.498."


def generate(args):
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    study = series = None
    for i in range(args.count):
        if i % 100 == 0:
            study = generate_uid(prefix=ROOT)
        if i % 25 == 0:
            series = generate_uid(prefix=ROOT)
        ds = Dataset()
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = generate_uid(prefix=ROOT)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientName = f"Crash^{i // 100}"
        ds.PatientID = f"CRASH{i // 100:03d}"
        ds.Modality = "CT"
        ds.SeriesNumber = i // 25 + 1
        ds.InstanceNumber = i % 25 + 1
        ds.Rows = 64
        ds.Columns = 64
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 4096, size=(64, 64), dtype="<u2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(d / f"i{i:04d}.dcm", enforce_file_format=True)
    print(f"generated={args.count}")


def send(args):
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = sorted(Path(args.dir).glob("*.dcm"))
    items = []
    for p in files:
        meta, offset = split_dataset(p)
        data = p.read_bytes()[offset:]
        items.append((p, str(meta.MediaStorageSOPInstanceUID), hashlib.sha256(data).hexdigest()))
    log = open(args.log, "a", encoding="ascii")
    lock = threading.Lock()
    counts = {"acked": 0, "failed": 0, "assocs": 0}

    def worker(w):
        ae = AE(ae_title=args.aet)
        ae.acse_timeout = 10
        ae.dimse_timeout = 10
        ae.network_timeout = 10
        ae.add_requested_context(CT, ExplicitVRLittleEndian)
        assoc = ae.associate(args.host, args.port, ae_title=args.aec)
        if not assoc.is_established:
            with lock:
                counts["failed"] += 1
            return
        with lock:
            counts["assocs"] += 1
        try:
            for path, uid, sha in items[w :: args.assocs]:
                status = assoc.send_c_store(path)
                if not assoc.is_established or "Status" not in status:
                    with lock:
                        counts["failed"] += 1
                    return
                if status.Status != 0x0000:
                    with lock:
                        counts["failed"] += 1
                    print(f"{uid}: status {status.Status:#06x}", file=sys.stderr)
                    continue
                with lock:
                    log.write(f"{uid} {sha}\n")
                    log.flush()
                    os.fsync(log.fileno())
                    counts["acked"] += 1
        except Exception as e:  # the peer vanished under us
            with lock:
                counts["failed"] += 1
            print(f"association {w}: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            if assoc.is_established:
                assoc.release()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.assocs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    print(f"acked={counts['acked']} failed={counts['failed']} associations={counts['assocs']}")
    return 0 if counts["assocs"] > 0 else 2


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--dir", required=True)
    g.add_argument("--count", type=int, default=500)
    s = sub.add_parser("send")
    s.add_argument("--dir", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--aet", default="CRASHSND")
    s.add_argument("--aec", default="PROXYSEG")
    s.add_argument("--assocs", type=int, default=8)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args)
        return 0
    return send(args)


if __name__ == "__main__":
    sys.exit(main())
