"""Hostile and broken SCU behaviour against proxyseg, one case per call.

Usage: scu_edge.py CASE PORT [ARGS...]
Prints one JSON object describing what the SCP did; the Rust test asserts on it.
Well-formed cases use pynetdicom; cases pynetdicom refuses to produce (P-DATA on a rejected
context, a half-sent data set, a dropped TCP connection, an idle association) use a minimal
raw upper-layer client written here.
"""
import json
import socket
import struct
import sys
import threading
import time
import zlib
from io import BytesIO

import pydicom
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE, debug_logger, evt  # noqa: F401
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import RTPlanStorage, Verification

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def encode(ds, implicit=True):
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def assoc(port, calling="PYNETDICOM", called="PROXYSEG", contexts=((CT, [IMPLICIT_LE]),)):
    ae = AE(ae_title=calling)
    ae.acse_timeout = 5
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    for sop, ts in contexts:
        ae.add_requested_context(sop, ts)
    received = []
    a = ae.associate(
        "127.0.0.1", port, ae_title=called,
        evt_handlers=[(evt.EVT_PDU_RECV, lambda e: received.append(e.pdu))],
    )
    a.received_pdus = received
    return a


def rejection(a):
    """What the SCP answered to a request it refused, from the A-ASSOCIATE-RJ PDU pynetdicom
    received and decoded.

    Not from ``a.is_rejected``: pynetdicom 3.0.4's requestor checks that its socket is still
    connected after the connection is made, and its reactor thread closes the socket as soon
    as it has read an A-ASSOCIATE-RJ (PS3.8 AE-4). On a busy machine the reactor can read the
    rejection before the requesting thread looks, and pynetdicom then reports an abort of a
    rejected association (seen with its debug log: "INCOMING A-ASSOCIATE-RJ PDU", then
    "Aborting Association"). The PDU on the wire is what a PACS acts on.
    """
    rj = [p for p in getattr(a, "received_pdus", []) if isinstance(p, A_ASSOCIATE_RJ)]
    if rj:
        p = rj[0]
        return {"rejected": True, "result": int(p.result), "source": int(p.source),
                "reason": int(p.reason_diagnostic), "flagged_by_pynetdicom": a.is_rejected}
    return {"rejected": a.is_rejected, "established": a.is_established}


def store_raw(port, ds_bytes, sop_class=CT, sop_instance="1.2.3.4", ctx_sop=CT, ts=IMPLICIT_LE):
    """C-STORE with arbitrary data set bytes over the raw client; returns status and comment.

    (pynetdicom cannot send a command whose SOP class differs from its data set's, and its
    reactor drops responses to messages sent through its low-level DIMSE API.)
    """
    s = raw_assoc(port, sop=ctx_sop, ts=ts)
    return store_on(s, ds_bytes, sop_class, sop_instance)


def store_on(s, ds_bytes, sop_class=CT, sop_instance="1.2.3.4", timeout=10):
    """C-STORE of raw data set bytes (an iterable of chunks, or bytes) on an associated raw
    socket, then A-RELEASE; returns status and comment, or what the SCP did instead."""
    s.sendall(pdata(1, store_command(sop_instance, sop_class), True, True))
    step = 16000
    chunks = [ds_bytes] if isinstance(ds_bytes, (bytes, bytearray)) else ds_bytes
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) > step:
            s.sendall(pdata(1, bytes(pending[:step]), False, False))
            del pending[:step]
    s.sendall(pdata(1, bytes(pending), False, True))
    try:
        t, body = read_pdu(s, timeout)
    except socket.timeout:
        return {"status": None, "after": "silent"}
    except (ConnectionResetError, BrokenPipeError):
        return {"status": None, "after": "closed"}
    if t != 4:
        return {"status": None, "pdu": t, "after": "abort" if t == 7 else "closed" if t is None else f"pdu-{t}"}
    rsp = pydicom.dcmread(BytesIO(body[6:]), force=True)
    rsp.file_meta = pydicom.dataset.FileMetaDataset()
    rsp.file_meta.TransferSyntaxUID = IMPLICIT_LE
    out = {"status": int(rsp.Status)}
    if "ErrorComment" in rsp:
        out["comment"] = str(rsp.ErrorComment)
    s.sendall(struct.pack(">BBI", 5, 0, 4) + b"\0" * 4)
    read_pdu(s, 5)
    s.close()
    return out


def pixel_bomb(size, bits, frames):
    """Explicit VR LE data set bytes of an RLE Lossless MR PROSTATE declaring `frames` frames of
    size x size at `bits` bits, each frame a fragment holding only its 64-byte RLE header (one
    empty segment per byte of a sample)."""
    ds = mr_small()
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7.16.1"
    ds.BodyPartExamined = "PROSTATE"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.NumberOfFrames = frames
    # An empty Basic Offset Table, then one fragment per frame (pydicom's encapsulate() would
    # add an offset table of 4 bytes a frame); the writer adds the Sequence Delimitation Item.
    nseg = bits // 8
    header = struct.pack("<16I", nseg, *([64] * nseg + [0] * (15 - nseg)))
    fragment = struct.pack("<HHI", 0xFFFE, 0xE000, len(header)) + header
    ds.PixelData = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + fragment * frames
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return encode(ds, implicit=False)


def mr_small():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.file_meta
    return ds


# ---- minimal raw upper layer -------------------------------------------------------------

def ae16(s):
    return s.ljust(16).encode()


def item(t, body):
    return struct.pack(">BBH", t, 0, len(body)) + body


def associate_rq(called="PROXYSEG", calling="PYNETDICOM", sop=CT, ts=IMPLICIT_LE, pcid=1):
    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, bytes([pcid, 0, 0, 0]) + item(0x30, sop.encode()) + item(0x40, ts.encode()))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4.5"))
    body = struct.pack(">HH", 1, 0) + ae16(called) + ae16(calling) + b"\0" * 32 + app + pc + user
    return struct.pack(">BBI", 1, 0, len(body)) + body


def pdata(pcid, payload, command, last):
    hdr = (1 if command else 0) | (2 if last else 0)
    pdv = struct.pack(">IBB", len(payload) + 2, pcid, hdr) + payload
    return struct.pack(">BBI", 4, 0, len(pdv)) + pdv


def read_pdu(s, timeout=5.0):
    s.settimeout(timeout)
    head = b""
    while len(head) < 6:
        chunk = s.recv(6 - len(head))
        if not chunk:
            return None, b""
        head += chunk
    t, _, n = struct.unpack(">BBI", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            break
        body += chunk
    return t, body


def raw_assoc(port, sop=CT, ts=IMPLICIT_LE):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(associate_rq(sop=sop, ts=ts))
    t, body = read_pdu(s)
    assert t == 2, f"expected A-ASSOCIATE-AC, got PDU type {t}"
    return s


def store_command(sop_instance, sop_class=CT):
    from pydicom.dataset import Dataset
    c = Dataset()
    c.AffectedSOPClassUID = sop_class
    c.CommandField = 0x0001
    c.MessageID = 7
    c.Priority = 0
    c.CommandDataSetType = 0
    c.AffectedSOPInstanceUID = sop_instance
    body = encode(c)
    c.CommandGroupLength = len(body)
    return encode(c)


def outcome_after(s, timeout):
    """What the SCP does next: 'abort', 'closed', 'silent' or a PDU type."""
    try:
        t, _ = read_pdu(s, timeout)
    except socket.timeout:
        return "silent"
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    if t is None:
        return "closed"
    return "abort" if t == 7 else f"pdu-{t}"


# ---- cases -------------------------------------------------------------------------------

def case(name, port, args=()):
    if name == "unknown_calling_ae":
        return rejection(assoc(port, calling="STRANGER"))
    if name == "wrong_called_ae":
        return rejection(assoc(port, called="SOMEONE_ELSE"))
    if name == "unsupported_sop_class":
        a = assoc(port, contexts=((RTPlanStorage, [IMPLICIT_LE]), (Verification, [IMPLICIT_LE])))
        res = {c.abstract_syntax: int(c.result) for c in a.rejected_contexts}
        out = {"established": a.is_established, "rejected_contexts": res}
        if a.is_established:
            a.release()
        return out
    if name == "unsupported_transfer_syntax":
        a = assoc(port, contexts=((CT, ["1.2.840.10008.1.2.4.100"]), (Verification, [IMPLICIT_LE])))
        res = {c.abstract_syntax: int(c.result) for c in a.rejected_contexts}
        out = {"established": a.is_established, "rejected_contexts": res}
        if a.is_established:
            a.release()
        return out
    if name == "store_on_rejected_context":
        s = raw_assoc(port)
        s.sendall(pdata(99, store_command("1.2.3.99"), True, True))
        return {"after": outcome_after(s, 5)}
    if name == "sop_class_mismatch":
        ds = mr_small()
        return store_raw(port, encode(ds), sop_class=CT, sop_instance=ds.SOPInstanceUID, ctx_sop=CT)
    if name == "short_pixel_data":
        ds = mr_small()
        ds.PixelData = ds.PixelData[:-64]
        return store_raw(port, encode(ds), sop_class=MR, sop_instance=ds.SOPInstanceUID, ctx_sop=MR)
    if name == "long_pixel_data":
        ds = mr_small()
        ds.PixelData = ds.PixelData + b"\0" * 64
        return store_raw(port, encode(ds), sop_class=MR, sop_instance=ds.SOPInstanceUID, ctx_sop=MR)
    if name == "truncated_dataset":
        # pydicom's MR_truncated: Pixel Data declares 8192 bytes, only 8130 follow.
        raw = open(get_testdata_file("MR_truncated.dcm"), "rb").read()
        meta = pydicom.dcmread(get_testdata_file("MR_truncated.dcm"), stop_before_pixels=True)
        group_len = struct.unpack("<I", raw[140:144])[0]
        body = raw[144 + group_len:]
        ts = str(meta.file_meta.TransferSyntaxUID)
        return store_raw(port, body, sop_class=MR, sop_instance=meta.SOPInstanceUID, ctx_sop=MR, ts=ts)
    if name == "garbage_dataset":
        return store_raw(port, bytes(range(256)) * 40, sop_class=CT, sop_instance="1.2.3.5")
    if name == "absurd_dimensions":
        ds = mr_small()
        ds.Rows = 60000
        ds.Columns = 60000
        return store_raw(port, encode(ds), sop_class=MR, sop_instance=ds.SOPInstanceUID, ctx_sop=MR)
    if name == "abort_mid_transfer":
        s = raw_assoc(port)
        body = encode(mr_small())
        s.sendall(pdata(1, store_command("1.2.3.6"), True, True))
        s.sendall(pdata(1, body[:4000], False, False))
        s.sendall(struct.pack(">BBIBBBB", 7, 0, 4, 0, 0, 0, 0))
        time.sleep(0.5)
        s.close()
        return {"sent": "partial data set then A-ABORT"}
    if name == "tcp_drop_mid_transfer":
        s = raw_assoc(port)
        body = encode(mr_small())
        s.sendall(pdata(1, store_command("1.2.3.7"), True, True))
        s.sendall(pdata(1, body[:4000], False, False))
        s.close()
        time.sleep(0.5)
        return {"sent": "partial data set then TCP close"}
    if name == "idle_association":
        s = raw_assoc(port)
        t0 = time.time()
        what = outcome_after(s, 15)
        return {"after": what, "seconds": round(time.time() - t0, 2)}
    if name == "keepalive":
        # A peer that keeps its association busy with a C-ECHO every 0.5 s (never silent for
        # read_timeout_s): how long the daemon lets it stay (review L10).
        limit = float(args[0]) if args else 10.0
        a = assoc(port, contexts=((Verification, [IMPLICIT_LE]),))
        t0 = time.time()
        while a.is_established and time.time() - t0 < limit:
            a.send_c_echo()
            time.sleep(0.5)
        out = {"established": a.is_established, "seconds": round(time.time() - t0, 2)}
        if a.is_established:
            a.release()
        return out
    if name == "hold":
        s = raw_assoc(port)
        print(json.dumps({"holding": True}), flush=True)
        time.sleep(6)
        s.close()
        return {"held": True}
    if name == "slow_store":
        # One data set sent over ~2 s in small fragments: the daemon is asked to stop meanwhile.
        ds = mr_small()
        body = encode(ds)
        s = raw_assoc(port, sop=MR)
        s.sendall(pdata(1, store_command(ds.SOPInstanceUID, MR), True, True))
        print(json.dumps({"associated": True}), flush=True)
        step = len(body) // 10 + 1
        for i in range(0, len(body), step):
            s.sendall(pdata(1, body[i:i + step], False, i + step >= len(body)))
            time.sleep(0.2)
        t, rsp = read_pdu(s, 10)
        status = None
        if t == 4:
            status = int(pydicom.dcmread(BytesIO(rsp[6:]), force=True).Status)
        return {"status": status}
    if name in ("short_pixel_data_after_large_header", "large_header_store"):
        # 100 kB of private data before Pixel Data: the SCP keeps only the first 64 KiB of a
        # data set in memory, so these are checked from the spool file instead.
        ds = mr_small()
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7.1.5"
        ds.add_new(0x00090010, "LO", "PROXYSEG TEST")
        ds.add_new(0x00091001, "OB", b"\x5a" * 100000)
        if name.startswith("short"):
            ds.PixelData = ds.PixelData[:-64]
        return store_raw(port, encode(ds), sop_class=MR, sop_instance=ds.SOPInstanceUID, ctx_sop=MR)
    if name == "valid_store":
        ds = mr_small()
        return store_raw(port, encode(ds), sop_class=MR, sop_instance=ds.SOPInstanceUID, ctx_sop=MR)
    if name == "huge_element_parallel":
        # Issue 16 / review H2: N associations, each storing a 12-byte data set whose one
        # element (UT) declares a length of about 4 GiB. All associate first, then all send.
        n = int(args[0]) if args else 8
        ds = bytes([0x08, 0x00, 0x05, 0x00]) + b"UT" + bytes([0, 0, 0xF0, 0xFF, 0xFF, 0xFF])
        socks = [raw_assoc(port, sop=CT, ts=EXPLICIT_LE) for _ in range(n)]
        results = [None] * n
        go = threading.Barrier(n)

        def one(i):
            go.wait()
            try:
                results[i] = store_on(socks[i], ds, CT, f"1.2.3.16.{i + 1}", timeout=60)
            except OSError as e:
                results[i] = {"status": None, "after": f"error {e}"}

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"results": results, "seconds": round(time.time() - t0, 2)}
    if name == "many_pdvs":
        # Review L4: one P-DATA-TF PDU made of 10 000 empty (6-byte) command PDVs.
        s = raw_assoc(port)
        pdvs = struct.pack(">IBB", 2, 1, 1) * (int(args[0]) if args else 10000)
        t0 = time.time()
        s.sendall(struct.pack(">BBI", 4, 0, len(pdvs)) + pdvs)
        return {"after": outcome_after(s, 10), "seconds": round(time.time() - t0, 2)}
    if name == "huge_command":
        # A command set whose Affected SOP Class UID declares about 4 GiB (implicit VR).
        s = raw_assoc(port)
        cmd = struct.pack("<HHI", 0x0000, 0x0002, 0xFFFFFFF0) + b"1.2.840.10008.5.1.4.1.1.2\0"
        t0 = time.time()
        s.sendall(pdata(1, cmd, True, True))
        return {"after": outcome_after(s, 60), "seconds": round(time.time() - t0, 2)}
    if name in ("deflate_bomb", "deflate_declared_huge"):
        # Deflated Explicit VR LE: a small header, then private OB elements of zeros.
        # deflate_bomb: 100 elements of 1 MiB (100 MiB inflated, about 100 KiB on the wire);
        # deflate_declared_huge: one element declaring about 4 GiB over 4 MiB of zeros.
        from pydicom.dataset import Dataset
        from pydicom.uid import generate_uid
        ds = Dataset()
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "CT"
        ds.add_new(0x00290010, "LO", "PROXYSEG BOMB")
        mib = b"\0" * (1024 * 1024)
        if name == "deflate_bomb":
            parts = [(0x1000 + i, len(mib), 1) for i in range(100)]
        else:
            parts = [(0x1001, 0xFFFFFFF0, 4)]
        z = zlib.compressobj(9, zlib.DEFLATED, -15)

        def deflated():
            yield z.compress(encode(ds, implicit=False))
            for elem, declared, mibs in parts:
                yield z.compress(struct.pack("<HH2sHI", 0x0029, elem, b"OB", 0, declared))
                for _ in range(mibs):
                    yield z.compress(mib)
            yield z.flush()

        chunks = list(deflated())
        s = raw_assoc(port, sop=CT, ts=DEFLATED_LE)
        out = store_on(s, chunks, CT, ds.SOPInstanceUID, timeout=120)
        out["sent_bytes"] = sum(len(c) for c in chunks)
        return out
    if name == "pixel_bomb":
        # Review H1: an MR (PROSTATE, the seeded rule's body part) in RLE Lossless declaring
        # 100 000 frames of 32768 x 32768 x 32 bits in 100 000 header-only fragments (~7 MB);
        # or SIZE BITS FRAMES as given.
        size, bits, frames = (int(a) for a in args) if args else (32768, 32, 100000)
        return store_raw(port, pixel_bomb(size, bits, frames), sop_class=MR,
                         sop_instance="1.2.826.0.1.3680043.9.7.16.1", ctx_sop=MR, ts=RLE_LOSSLESS)
    if name == "long_study":
        # One MR PROSTATE instance of many frames, so that segmenting it takes a while.
        frames = int(args[0]) if args else 200
        ds = mr_small()
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7.16.2"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7.16.3"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7.16.4"
        ds.BodyPartExamined = "PROSTATE"
        ds.NumberOfFrames = frames
        ds.PixelData = ds.PixelData * frames
        return store_raw(port, encode(ds, implicit=False), sop_class=MR, sop_instance=ds.SOPInstanceUID,
                         ctx_sop=MR, ts=EXPLICIT_LE)
    if name == "bulk_before_pixels":
        # Review H2: MR_small with a private OB of MIB mebibytes (default 200) before Pixel Data.
        mib = int(args[0]) if args else 200
        ds = mr_small()
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7.16.5"
        ds.add_new(0x00090010, "LO", "PROXYSEG TEST")
        ds.add_new(0x00091001, "OB", b"\x5a" * (mib * 1024 * 1024))
        return store_raw(port, encode(ds), sop_class=MR, sop_instance=ds.SOPInstanceUID, ctx_sop=MR)
    if name == "fill_disk":
        # Review M1: N distinct MR instances of about MIB mebibytes each on ONE association;
        # returns each C-STORE's status and error comment, in order.
        n, mib = int(args[0]), int(args[1])
        a = assoc(port, contexts=((MR, [EXPLICIT_LE]),))
        if not a.is_established:
            return rejection(a)
        out = []
        for i in range(n):
            ds = mr_small()
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7.16.6.{i + 1}"
            ds.add_new(0x00090010, "LO", "PROXYSEG TEST")
            ds.add_new(0x00091001, "OB", b"\x5a" * (mib * 1024 * 1024))
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
            st = a.send_c_store(ds)
            out.append({"status": int(st.Status) if "Status" in st else None,
                        "comment": str(st.get("ErrorComment", ""))})
        a.release()
        return {"stores": out}
    if name == "deflated_store":
        ds = mr_small()
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = z.compress(encode(ds, implicit=False)) + z.flush()
        return store_raw(port, body, sop_class=MR, sop_instance=ds.SOPInstanceUID, ctx_sop=MR, ts=DEFLATED_LE)
    raise SystemExit(f"unknown case {name}")


if __name__ == "__main__":
    print(json.dumps(case(sys.argv[1], int(sys.argv[2]), sys.argv[3:])))
