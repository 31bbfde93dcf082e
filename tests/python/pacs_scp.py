"""A scriptable storage SCP standing in for a PACS (pynetdicom), for delivery tests.

Usage: pacs_scp.py PORT OUTDIR [--status HEX] [--delay-first S]
Every received instance is written to OUTDIR/<SOPInstanceUID>.<n>.dcm (n counts copies of the
same instance; written as .part and renamed, so a poller never sees half a file), so tests can
check exactly-once delivery. --status answers with that status
instead of success; --delay-first sleeps before answering the first C-STORE (the data set is
already written when it sleeps).
"""
import argparse
import os
import time

from pynetdicom import AE, evt, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("outdir")
p.add_argument("--status", default="0")
p.add_argument("--delay-first", type=float, default=0.0)
args = p.parse_args()
os.makedirs(args.outdir, exist_ok=True)
state = {"first": True}


def on_store(event):
    ds = event.dataset
    ds.file_meta = event.file_meta
    uid = ds.SOPInstanceUID
    n = sum(1 for f in os.listdir(args.outdir) if f.startswith(uid + ".") and f.endswith(".dcm"))
    # written whole, then renamed: a test polling OUTDIR never reads a file still being written
    final = os.path.join(args.outdir, f"{uid}.{n}.dcm")
    ds.save_as(final + ".part", enforce_file_format=True)
    os.replace(final + ".part", final)
    if state["first"] and args.delay_first > 0:
        state["first"] = False
        with open(os.path.join(args.outdir, "delaying"), "w") as f:
            f.write("1")
        time.sleep(args.delay_first)
    return int(args.status, 16)


ae = AE(ae_title="PACS")
ae.supported_contexts = AllStoragePresentationContexts
ae.add_supported_context(Verification)
from pynetdicom.sop_class import SegmentationStorage  # noqa: E402

ae.add_supported_context(SegmentationStorage)
print("listening", flush=True)
ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])
