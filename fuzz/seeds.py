"""Writes the seed corpora of the fuzz targets (scripts/fuzz runs it with the project's venv).

Usage: seeds.py OUTDIR

OUTDIR/<target>/ gets, per target:
  pdu               PDUs as they arrive on an association: A-ASSOCIATE-RQ/-AC/-RJ, P-DATA-TF with
                    command and data set PDVs, A-RELEASE-RQ/-RP, A-ABORT, and a few in one stream
  dimse_command     command sets (Implicit VR LE, group 0000): C-STORE-RQ, C-ECHO-RQ, C-STORE-RSP
  dataset_validate  [transfer syntax index][len][SOP class][len][SOP instance] + data set bytes
                    (see fuzz/fuzz_targets/dataset_validate.rs), for every transfer syntax we
                    accept: native images re-encoded as Implicit LE, Explicit LE, Explicit BE and
                    deflate; RLE and JPEG-LS encoded here; JPEG baseline / extended / lossless and
                    JPEG 2000 from pydicom's test files; a SEG
  pixels            Part 10 files: the same images (small synthetic ones in every syntax, pydicom's
                    small test files)
  seg_reader        Part 10 SEG files: BINARY and FRACTIONAL written by highdicom, and the
                    project's phantom-tiny mask

Seeds stay small (most under 8 KiB): libFuzzer mutates small inputs far faster.
"""

import io
import os
import re
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent

# sop::TRANSFER_SYNTAXES, by their dicom-rs names: the dataset_validate target picks the
# presentation context's syntax by index into that list.
TS_BY_NAME = {
    "EXPLICIT_VR_LITTLE_ENDIAN": "1.2.840.10008.1.2.1",
    "IMPLICIT_VR_LITTLE_ENDIAN": "1.2.840.10008.1.2",
    "EXPLICIT_VR_BIG_ENDIAN": "1.2.840.10008.1.2.2",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN": "1.2.840.10008.1.2.1.99",
    "JPEG_BASELINE8_BIT": "1.2.840.10008.1.2.4.50",
    "JPEG_EXTENDED12_BIT": "1.2.840.10008.1.2.4.51",
    "JPEG_LOSSLESS": "1.2.840.10008.1.2.4.57",
    "JPEG_LOSSLESS_SV1": "1.2.840.10008.1.2.4.70",
    "JPEG2000_LOSSLESS": "1.2.840.10008.1.2.4.90",
    "JPEG2000": "1.2.840.10008.1.2.4.91",
    "JPEGLS_LOSSLESS": "1.2.840.10008.1.2.4.80",
    "JPEGLS_NEAR_LOSSLESS": "1.2.840.10008.1.2.4.81",
    "RLE_LOSSLESS": "1.2.840.10008.1.2.5",
}


def syntaxes():
    """sop::TRANSFER_SYNTAXES in its order, read from src/dicom/sop.rs."""
    src = (ROOT / "src/dicom/sop.rs").read_text()
    body = src[src.index("pub const TRANSFER_SYNTAXES") :]
    body = body[: body.index("];")]
    names = re.findall(r"uids::([A-Z0-9_]+)", body)
    missing = [n for n in names if n not in TS_BY_NAME]
    if missing:
        sys.exit(f"seeds.py: add {missing} to TS_BY_NAME")
    return [TS_BY_NAME[n] for n in names]


# Storage classes the SCP certainly accepts (sop::STORAGE_SOP_CLASSES has them); a seed of
# another class is relabelled Secondary Capture so that validation goes past the command check.
ACCEPTED = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.7",  # SC
    "1.2.840.10008.5.1.4.1.1.66.4",  # SEG
}
SC = "1.2.840.10008.5.1.4.1.1.7"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.3"


def image(rows, cols, spp=1, bits=16, frames=1, photometric=None, signed=False, cls=None):
    """A small synthetic image with everything ingest reads."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = cls or ("1.2.840.10008.5.1.4.1.1.4" if spp == 1 else SC)
    ds.SOPInstanceUID = INSTANCE
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.Modality = "MR" if spp == 1 else "OT"
    ds.PatientName = "Fuzz^Seed"
    ds.PatientID = "FUZZ"
    ds.BodyPartExamined = "PELVIS"
    ds.SeriesDescription = "fuzz seed"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric or ("MONOCHROME2" if spp == 1 else "RGB")
    if spp > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits != 16 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.WindowCenter = 100
    ds.WindowWidth = 200
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
    if signed:
        dtype = {8: np.int8, 16: np.int16, 32: np.int32}[bits]
    shape = (frames, rows, cols, spp)
    n = int(np.prod(shape))
    arr = (np.arange(n) * 37 % (1 << min(bits, 12))).astype(dtype).reshape(shape)
    if spp == 1:
        arr = arr[..., 0]
    if frames == 1:
        arr = arr[0]
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def with_meta(ds, ts):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    return ds


def write(ds, ts):
    """The Part 10 bytes of `ds` (with its meta) in `ts`. Between byte orders pydicom re-encodes
    the elements but not the bytes of OW/OB values: a seed's pixel values may be byte-swapped,
    which does not matter here."""
    ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    native = {
        ImplicitVRLittleEndian: (True, True),
        ExplicitVRLittleEndian: (False, True),
        ExplicitVRBigEndian: (False, False),
        DeflatedExplicitVRLittleEndian: (False, True),
    }
    try:
        ds.save_as(buf, enforce_file_format=True)
    except ValueError:
        if ts not in native or ts == DeflatedExplicitVRLittleEndian:
            raise
        implicit, little = native[ts]
        buf = io.BytesIO()
        ds.preamble = bytes(128)
        pydicom.dcmwrite(buf, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
    return buf.getvalue()


def part10(ds, ts):
    """The Part 10 bytes of `ds` in the native syntax `ts`."""
    ds = ds.copy()
    with_meta(ds, ts)
    return write(ds, ts)


def dataset_of(file_bytes):
    """The data set bytes of a Part 10 file (after preamble and meta group)."""
    b = file_bytes
    pos = 132 if b[128:132] == b"DICM" else (4 if b[:4] == b"DICM" else 0)
    while pos + 8 <= len(b):
        group = struct.unpack_from("<H", b, pos)[0]
        if group != 0x0002:
            break
        vr = b[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", b, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", b, pos + 6)[0]
            pos += 8 + length
    return b[pos:]


def validate_input(ts_index, cls, instance, dataset):
    c, i = cls.encode(), instance.encode()
    return bytes([ts_index, len(c)]) + c + bytes([len(i)]) + i + dataset


class Out:
    def __init__(self, root):
        self.root = Path(root)
        self.n = {}

    def put(self, target, name, data):
        d = self.root / target
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
        self.n[target] = self.n.get(target, 0) + 1


# --- PDUs --------------------------------------------------------------------------------


def item(kind, body):
    return struct.pack(">BBH", kind, 0, len(body)) + body


def pdu(kind, body):
    return struct.pack(">BBI", kind, 0, len(body)) + body


def ae(s):
    return s.encode().ljust(16)


def associate_rq(called="PROXYSEG", calling="PACS", contexts=None, user=None):
    body = struct.pack(">HH", 1, 0) + ae(called) + ae(calling) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for pc_id, abstract, tss in contexts or [(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]:
        sub = item(0x30, abstract.encode())
        for ts in tss:
            sub += item(0x40, ts.encode())
        body += item(0x20, bytes([pc_id, 0, 0, 0]) + sub)
    if user is None:
        user = (
            item(0x51, struct.pack(">I", 16384))
            + item(0x52, b"1.2.826.0.1.3680043.9.3811.2.1")
            + item(0x55, b"FUZZ_1")
        )
    body += item(0x50, user)
    return pdu(0x01, body)


def associate_ac():
    body = struct.pack(">HH", 1, 0) + ae("PROXYSEG") + ae("PACS") + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    body += item(0x21, bytes([1, 0, 0, 0]) + item(0x40, b"1.2.840.10008.1.2"))
    body += item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    return pdu(0x02, body)


def pdv(pc, header, data):
    return struct.pack(">I", len(data) + 2) + bytes([pc, header]) + data


def pdu_seeds(out, command, dataset):
    ct = "1.2.840.10008.5.1.4.1.1.2"
    out.put("pdu", "assoc_rq_echo", associate_rq())
    out.put(
        "pdu",
        "assoc_rq_store",
        associate_rq(
            contexts=[
                (1, ct, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]),
                (3, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.4.50"]),
            ]
        ),
    )
    user = (
        item(0x51, struct.pack(">I", 0))
        + item(0x52, b"1.2.3")
        + item(0x53, struct.pack(">HH", 1, 1))  # asynchronous operations window
        + item(0x54, struct.pack(">H", len(ct)) + ct.encode() + bytes([1, 1]))  # role selection
        + item(0x56, struct.pack(">H", len(ct)) + ct.encode() + bytes([1, 0, 1]))  # extended neg.
        + item(0x58, bytes([2, 1]) + struct.pack(">H", 4) + b"user" + struct.pack(">H", 4) + b"pass")
    )
    out.put("pdu", "assoc_rq_user_items", associate_rq(user=user))
    out.put("pdu", "assoc_ac", associate_ac())
    out.put("pdu", "assoc_rj", pdu(0x03, bytes([0, 1, 1, 3])))
    out.put("pdu", "release_rq", pdu(0x05, bytes(4)))
    out.put("pdu", "release_rp", pdu(0x06, bytes(4)))
    out.put("pdu", "abort", pdu(0x07, bytes([0, 0, 2, 0])))
    out.put("pdu", "pdata_command", pdu(0x04, pdv(1, 0x03, command)))
    out.put(
        "pdu",
        "pdata_command_and_data",
        pdu(0x04, pdv(1, 0x03, command) + pdv(1, 0x02, dataset[:2000])),
    )
    stream = (
        associate_rq()
        + pdu(0x04, pdv(1, 0x01, command[:20]))
        + pdu(0x04, pdv(1, 0x03, command[20:]))
        + pdu(0x04, pdv(1, 0x00, dataset[:1000]))
        + pdu(0x04, pdv(1, 0x02, dataset[1000:1500]))
        + pdu(0x05, bytes(4))
    )
    out.put("pdu", "stream", stream)


# --- command sets -------------------------------------------------------------------------


def encode_command(elements):
    ds = Dataset()
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    pydicom.filewriter.write_dataset(fp, ds)
    body = fp.getvalue()
    gl = struct.pack("<HHII", 0, 0, 4, len(body))
    return gl + body


def dimse_seeds(out):
    ct = "1.2.840.10008.5.1.4.1.1.2"
    store = encode_command(
        [
            (0x00000002, "UI", ct),
            (0x00000100, "US", 0x0001),
            (0x00000110, "US", 7),
            (0x00000700, "US", 0),
            (0x00000800, "US", 0x0000),
            (0x00001000, "UI", INSTANCE),
            (0x00001030, "AE", "MOVER"),
            (0x00001031, "US", 3),
        ]
    )
    out.put("dimse_command", "c_store_rq", store)
    out.put(
        "dimse_command",
        "c_echo_rq",
        encode_command(
            [
                (0x00000002, "UI", "1.2.840.10008.1.1"),
                (0x00000100, "US", 0x0030),
                (0x00000110, "US", 1),
                (0x00000800, "US", 0x0101),
            ]
        ),
    )
    out.put(
        "dimse_command",
        "c_store_rsp",
        encode_command(
            [
                (0x00000002, "UI", ct),
                (0x00000100, "US", 0x8001),
                (0x00000120, "US", 7),
                (0x00000800, "US", 0x0101),
                (0x00000900, "US", 0xC000),
                (0x00000902, "LO", "data set does not parse"),
                (0x00001000, "UI", INSTANCE),
            ]
        ),
    )
    out.put(
        "dimse_command",
        "c_find_rq",
        encode_command(
            [
                (0x00000002, "UI", "1.2.840.10008.5.1.4.1.2.2.1"),
                (0x00000100, "US", 0x0020),
                (0x00000110, "US", 3),
                (0x00000700, "US", 0),
                (0x00000800, "US", 0x0000),
            ]
        ),
    )
    return store


# --- images -------------------------------------------------------------------------------


def native_images():
    return {
        "mr16": image(8, 8, bits=16),
        "mr16_signed": image(6, 5, bits=16, signed=True),
        "mono8": image(7, 9, bits=8, cls=SC),
        "mono8_2frames": image(4, 4, bits=8, frames=2, cls="1.2.840.10008.5.1.4.1.1.7.2"),
        "mono32": image(4, 4, bits=32, cls=SC),
        "rgb8": image(5, 4, spp=3, bits=8),
        "ybr_full_422": image(4, 4, spp=3, bits=8, photometric="YBR_FULL_422"),
        "palette8": palette(),
        "bits1": bits1(),
    }


def palette():
    ds = image(4, 4, bits=8, photometric="PALETTE COLOR", cls=SC)
    lut = np.arange(256, dtype=np.uint16) * 256
    for c in ("Red", "Green", "Blue"):
        setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{c}PaletteColorLookupTableData", lut.tobytes())
    return ds


def bits1():
    ds = image(8, 8, bits=8, cls="1.2.840.10008.5.1.4.1.1.7.1")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = bytes([0b10101010, 0xFF, 0, 0x0F, 0xF0, 0x55, 0x33, 0xCC])
    return ds


def compressed(ds, ts):
    ds = ds.copy()
    with_meta(ds, ExplicitVRLittleEndian)
    ds.compress(ts)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pydicom_files():
    """pydicom's small test files (under 40 KB)."""
    d = Path(get_testdata_file("CT_small.dcm")).parent
    for p in sorted(d.glob("*.dcm")):
        if p.stat().st_size <= 40_000:
            yield p.stem, p.read_bytes()


def relabelled(file_bytes, ts_list):
    """A test file as dataset_validate input: SOP class accepted, SOP instance fixed, in its own
    syntax (native ones also in the others)."""
    ds = pydicom.dcmread(io.BytesIO(file_bytes), force=True)
    meta_ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if not meta_ts:
        return []
    if str(ds.get("SOPClassUID", "")) not in ACCEPTED:
        ds.SOPClassUID = SC
    ds.SOPInstanceUID = INSTANCE
    cls = str(ds.SOPClassUID)
    out = []
    native = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
    targets = native if meta_ts in native else [meta_ts]
    for ts in targets:
        if ts not in ts_list:
            continue
        try:
            d = ds.copy()
            d.file_meta.MediaStorageSOPClassUID = cls
            d.file_meta.MediaStorageSOPInstanceUID = INSTANCE
            b = write(d, ts)
            out.append((ts, validate_input(ts_list.index(ts), cls, INSTANCE, dataset_of(b))))
        except Exception as e:  # some test files do not re-encode (odd VRs): skip them
            print(f"seeds.py: skipped a {ts} variant: {e}", file=sys.stderr)
    return out


# --- SEG ----------------------------------------------------------------------------------


def segs():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = []
    for k in range(2):
        ds = image(16, 16, bits=16, cls="1.2.840.10008.5.1.4.1.1.2")
        ds.Modality = "CT"
        ds.SOPInstanceUID = f"{INSTANCE}.{k + 1}"
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.SliceThickness = 1
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.4"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "", ""
        ds.PatientBirthDate, ds.PatientSex, ds.StudyID = "", "", ""
        with_meta(ds, ExplicitVRLittleEndian)
        sources.append(ds)
    masks = np.zeros((2, 16, 16, 2), dtype=bool)
    masks[0, 4:10, 3:9, 0] = True
    masks[1, 6:12, 8:14, 1] = True
    alg = hd.AlgorithmIdentificationSequence(
        name="fuzz", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    desc = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=t,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=alg,
        )
        for i, (label, t) in enumerate([("Liver", codes.SCT.Liver), ("Spleen", codes.SCT.Spleen)])
    ]
    out = {}
    for kind, array in (
        ("binary", masks),
        ("fractional", np.where(masks, 0.75, 0.25).astype(np.float32)),
    ):
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=array,
            segmentation_type=getattr(hd.seg.SegmentationTypeValues, kind.upper()),
            segment_descriptions=desc,
            series_instance_uid=SERIES + ".9",
            series_number=9,
            sop_instance_uid=INSTANCE,
            instance_number=1,
            manufacturer="fuzz",
            manufacturer_model_name="fuzz",
            software_versions="1",
            device_serial_number="1",
            omit_empty_frames=kind == "binary",
        )
        buf = io.BytesIO()
        seg.save_as(buf)
        out[f"highdicom_{kind}"] = buf.getvalue()
    return out


def main(outdir):
    out = Out(outdir)
    ts_list = syntaxes()
    store = dimse_seeds(out)

    images = native_images()
    files = {}
    for name, ds in images.items():
        for ts, tag in (
            (ExplicitVRLittleEndian, "ele"),
            (ImplicitVRLittleEndian, "ile"),
            (ExplicitVRBigEndian, "ebe"),
            (DeflatedExplicitVRLittleEndian, "dfl"),
        ):
            if tag == "ebe" and name == "bits1":
                continue
            files[f"{name}_{tag}"] = part10(ds, ts)
        for ts, tag in ((RLELossless, "rle"), (JPEGLSLossless, "jls")):
            if name in ("bits1", "palette8", "ybr_full_422") or (tag == "jls" and name == "mono32"):
                continue
            try:
                files[f"{name}_{tag}"] = compressed(ds, ts)
            except Exception as e:
                print(f"seeds.py: cannot encode {name} as {tag}: {e}", file=sys.stderr)
    for name, b in pydicom_files():
        files[f"pydicom_{name}"] = b
    seg_files = segs()
    mask = ROOT / "models/phantom-tiny/support-sets/mr-prostate/pairs/01/mask.seg.dcm"
    if mask.exists():
        seg_files["phantom_tiny_mr_mask"] = mask.read_bytes()

    for name, b in files.items():
        out.put("pixels", name, b)
    for name, b in seg_files.items():
        out.put("seg_reader", name, b)
        out.put("pixels", name, b)
    for name, b in list(files.items()) + list(seg_files.items()):
        for ts, data in relabelled(b, ts_list):
            out.put("dataset_validate", f"{name}_{ts_list.index(ts)}", data)

    pdu_seeds(out, store, dataset_of(files["mr16_ele"]))
    for target, n in sorted(out.n.items()):
        print(f"{target}: {n} seeds")


if __name__ == "__main__":
    main(sys.argv[1])
