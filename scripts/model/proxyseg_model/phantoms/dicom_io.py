"""Write phantoms as real DICOM (pydicom) with masks as DICOM SEG (highdicom, BINARY); read back.

  fundus -> Ophthalmic Photography 8 Bit Image Storage (RGB, Modality OP, BodyPartExamined EYE)
  us     -> Ultrasound Multi-frame Image Storage (cine) or Ultrasound Image Storage (single),
            MONOCHROME2, Modality US, BodyPartExamined PELVIS
  mr     -> MR Image Storage series (one file per slice, 16-bit, WindowCenter/Width, patient
            geometry, FrameOfReferenceUID), BodyPartExamined PROSTATE
SEG segment order = object order of the family (phantoms.common.OBJECTS). UIDs are derived
deterministically from (family, seed, role) so regenerating gives identical files.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..preprocess import to_display
from .common import OBJECTS

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
# segmented property types. SCT codes were checked against pydicom's concept dictionary; the
# optic cup has none there, so it carries a local (99-prefixed, private) code.
OBJECT_CODES = {
    "optic disc": Code("81016008", "SCT", "Optic disc structure"),
    "optic cup": Code("OPTCUP", "99PROXYSEG", "Optic cup"),
    "vessels": Code("59820001", "SCT", "Blood vessel"),
    "pubic symphysis": Code("82561000", "SCT", "Symphysis pubis"),
    "fetal head": Code("69536005", "SCT", "Head"),
    "prostate": Code("41216001", "SCT", "Prostate"),
}
OBJECT_COLORS = {"optic disc": [255, 200, 0], "optic cup": [255, 60, 60], "vessels": [0, 200, 255],
                 "pubic symphysis": [255, 0, 200], "fetal head": [0, 220, 100], "prostate": [80, 160, 255]}
FAMILY_INFO = {
    "fundus": dict(modality="OP", body_part="EYE", sop=OP_8BIT),
    "us": dict(modality="US", body_part="PELVIS", sop=US_MULTIFRAME),
    "mr": dict(modality="MR", body_part="PROSTATE", sop=MR_IMAGE),
}
_DATE = "20260101"


def uid(*parts) -> str:
    return generate_uid(entropy_srcs=["proxyseg-phantom"] + [str(p) for p in parts])


def _base(sop_class: str, sop_uid: str, family: str, seed: int, series_uid: str, series_number: int,
          instance_number: int, modality: str, body_part: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid("implementation")
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = f"Phantom^{family.upper()}{seed:04d}"
    ds.PatientID = f"PH-{family.upper()}-{seed:04d}"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "M" if family == "mr" else "F"
    ds.StudyInstanceUID = uid(family, seed, "study")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"A{seed:06d}"
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(seed)
    ds.StudyDescription = f"proxyseg phantom {family}"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"phantom {family}"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.Manufacturer = "proxyseg phantoms"
    ds.ManufacturerModelName = "phantom generator"
    ds.SoftwareVersions = "1"
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    return ds


def _pixels(ds, arr: np.ndarray, photometric: str, bits: int):
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = arr.shape[-3:-1] if photometric == "RGB" else arr.shape[-2:]
    ds.BitsAllocated = 8 if arr.dtype == np.uint8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()


def write_fundus(case: dict, path: Path, seed: int, role: str = "image") -> Dataset:
    sop = uid("fundus", seed, role, "sop")
    ds = _base(OP_8BIT, sop, "fundus", seed, uid("fundus", seed, role, "series"), 1, 1, "OP", "EYE")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "R"
    ds.SynchronizationFrameOfReferenceUID = uid("fundus", seed, role, "sync")
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.FrameTime = 0.0
    ds.AcquisitionDateTime = _DATE + "120000"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "81745001", "SCT", "Eye"
    ds.AnatomicRegionSequence = pydicom.sequence.Sequence([region])
    for kw in ("PatientEyeMovementCommanded", "HorizontalFieldOfView", "RefractiveStateSequence",
               "EmmetropicMagnification", "IntraOcularPressure", "PupilDilated", "AcquisitionDeviceTypeCodeSequence",
               "IlluminationTypeCodeSequence", "LightPathFilterTypeStackCodeSequence", "LensesCodeSequence",
               "DetectorType", "ImagePathFilterTypeStackCodeSequence"):
        setattr(ds, kw, None)
    ds.PatientEyeMovementCommanded = "NO"
    ds.PupilDilated = "NO"
    ds.DetectorType = "CCD"
    ds.HorizontalFieldOfView = 45
    dev = Dataset()
    dev.CodeValue, dev.CodingSchemeDesignator, dev.CodeMeaning = "409898007", "SCT", "Fundus Camera"
    ds.AcquisitionDeviceTypeCodeSequence = pydicom.sequence.Sequence([dev])
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = 1  # the OP 8 bit IOD is a multi-frame IOD
    _identity(ds, case)
    _pixels(ds, case["pixels"], "RGB", 8)
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_us(case: dict, path: Path, seed: int, role: str = "image", multiframe: bool | None = None) -> Dataset:
    px = case["pixels"]
    multi = px.shape[0] > 1 if multiframe is None else multiframe
    sop_class = US_MULTIFRAME if multi else US_IMAGE
    sop = uid("us", seed, role, "sop")
    ds = _base(sop_class, sop, "us", seed, uid("us", seed, role, "series"), 1, 1, "US", "PELVIS")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    _identity(ds, case)
    if multi:
        ds.NumberOfFrames = px.shape[0]
        ds.FrameTime = 40.0
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
        _pixels(ds, px, "MONOCHROME2", 8)
    else:
        _pixels(ds, px[0], "MONOCHROME2", 8)
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_mr(case: dict, folder: Path, seed: int, role: str = "image") -> list[Dataset]:
    """One MR Image Storage file per slice: folder/slice-01.dcm, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    px = case["pixels"]
    wc, ww = case["window"]
    sr, sc, st = case.get("spacing", (0.6, 0.6, 3.6))
    series = uid("mr", seed, role, "series")
    frame_of_ref = uid("mr", seed, role, "for")
    out = []
    for i, sl in enumerate(px):
        sop = uid("mr", seed, role, "sop", i)
        ds = _base(MR_IMAGE, sop, "mr", seed, series, 1, i + 1, "MR", "PROSTATE")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.PatientPosition = "HFS"
        ds.RepetitionTime = 4000.0
        ds.EchoTime = 100.0
        ds.EchoTrainLength = 16
        ds.MagneticFieldStrength = 3.0
        ds.SliceThickness = st
        ds.SpacingBetweenSlices = st
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # DS holds at most 16 characters: round so float noise never leaks into the value.
        ds.ImagePositionPatient = [round(v, 4) for v in (-sc * px.shape[2] / 2, -sr * px.shape[1] / 2, -st * (len(px) - 1) / 2 + i * st)]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.PixelSpacing = [sr, sc]
        ds.WindowCenter = wc
        ds.WindowWidth = ww
        ds.LossyImageCompression = "00"
        _pixels(ds, sl, "MONOCHROME2", 12)
        p = folder / f"slice-{i + 1:02d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(pydicom.dcmread(p))
    return out


def _segment_descriptions(family: str, objects: list[str] | None = None):
    return [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=o, segmented_property_category=ANATOMICAL_STRUCTURE,
        segmented_property_type=OBJECT_CODES[o], algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, o in enumerate(objects or OBJECTS[family])]


def write_seg(sources: list[Dataset], masks: np.ndarray, family: str, path: Path, seed: int, role: str = "image",
              objects: list[str] | None = None):
    """masks: F x K x H x W (frames of a multi-frame source, or one per single-frame source).

    Sources with a Frame of Reference (MR) go through highdicom. highdicom refuses multi-frame
    sources without one (US cine, OP), so those are written by `_write_seg_no_for` (same IOD,
    Segmentation Storage, BINARY, bit-packed, per-frame functional groups).
    """
    if "FrameOfReferenceUID" not in sources[0]:
        return _write_seg_no_for(sources[0], masks, family, path, seed, role, objects)
    arr = np.ascontiguousarray(np.transpose(masks, (0, 2, 3, 1)).astype(np.uint8))  # F x H x W x K
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=arr, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(family, objects), series_instance_uid=uid(family, seed, role, "seg-series"),
        series_number=100, sop_instance_uid=uid(family, seed, role, "seg-sop"), instance_number=1,
        manufacturer="proxyseg phantoms", manufacturer_model_name="phantom generator", software_versions="1",
        device_serial_number="0", content_date=datetime.date(2026, 1, 1), content_time=datetime.time(12, 0),
        omit_empty_frames=False)
    # highdicom stamps creation times and a random dimension organisation UID: pin them so
    # regenerating gives byte-identical files
    seg.InstanceCreationDate, seg.InstanceCreationTime = _DATE, "120000"
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = _DATE + "120000"
    dim_uid = uid(family, seed, role, "seg-dim")
    for item in list(seg.get("DimensionOrganizationSequence", [])) + list(seg.get("DimensionIndexSequence", [])):
        item.DimensionOrganizationUID = dim_uid
    seg.save_as(path)
    return seg


def _code_item(code: Code) -> Dataset:
    d = Dataset()
    d.CodeValue, d.CodingSchemeDesignator, d.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return d


def _write_seg_no_for(src: Dataset, masks: np.ndarray, family: str, path: Path, seed: int, role: str,
                      objects: list[str] | None = None):
    from pydicom.pixels import pack_bits
    from pydicom.sequence import Sequence

    SEG = "1.2.840.10008.5.1.4.1.1.66.4"
    nf, k, rows, cols = masks.shape
    multi = int(getattr(src, "NumberOfFrames", 1) or 1) > 1
    sop = uid(family, seed, role, "seg-sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SEG, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid("implementation")
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = SEG, sop
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription"):
        if kw in src:
            setattr(ds, kw, getattr(src, kw))
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = uid(family, seed, role, "seg-series")
    ds.SeriesNumber = 100
    ds.SeriesDescription = "phantom ground truth"
    ds.Manufacturer, ds.ManufacturerModelName = "proxyseg phantoms", "phantom generator"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0", "1"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = _DATE, "120000"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.ContentLabel = "GROUND_TRUTH"
    ds.ContentDescription = "phantom ground truth"
    ds.ContentCreatorName = "proxyseg^phantom"
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.LossyImageCompression = "00"
    if "BodyPartExamined" in src:
        ds.BodyPartExamined = src.BodyPartExamined
    segs = []
    for d in _segment_descriptions(family, objects):
        segs.append(Dataset())
        for elem in d:
            segs[-1].add(elem)
    ds.SegmentSequence = Sequence(segs)
    dim_uid = uid(family, seed, role, "seg-dim")
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = Sequence([org])
    d1 = Dataset()
    d1.DimensionOrganizationUID = dim_uid
    d1.DimensionIndexPointer = pydicom.tag.Tag("ReferencedSegmentNumber")
    d1.FunctionalGroupPointer = pydicom.tag.Tag("SegmentIdentificationSequence")
    d1.DimensionDescriptionLabel = "ReferencedSegmentNumber"
    d2 = Dataset()
    d2.DimensionOrganizationUID = dim_uid
    d2.DimensionIndexPointer = pydicom.tag.Tag("TemporalPositionIndex")
    d2.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    d2.DimensionDescriptionLabel = "TemporalPositionIndex"
    ds.DimensionIndexSequence = Sequence([d1, d2])
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    per_frame, frames = [], []
    for s in range(k):
        for f in range(nf):
            item = Dataset()
            fc = Dataset()
            fc.DimensionIndexValues = [s + 1, f + 1]
            fc.TemporalPositionIndex = f + 1
            item.FrameContentSequence = Sequence([fc])
            si = Dataset()
            si.ReferencedSegmentNumber = s + 1
            item.SegmentIdentificationSequence = Sequence([si])
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
            if multi:
                ref.ReferencedFrameNumber = f + 1
            ref.PurposeOfReferenceCodeSequence = Sequence([_code_item(
                Code("121322", "DCM", "Source image for image processing operation"))])
            der = Dataset()
            der.SourceImageSequence = Sequence([ref])
            der.DerivationCodeSequence = Sequence([_code_item(Code("113076", "DCM", "Segmentation"))])
            item.DerivationImageSequence = Sequence([der])
            per_frame.append(item)
            frames.append(masks[f, s].astype(np.uint8))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = pack_bits(np.stack(frames))
    rs = Dataset()
    rs.SeriesInstanceUID = src.SeriesInstanceUID
    ri = Dataset()
    ri.ReferencedSOPClassUID, ri.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    rs.ReferencedInstanceSequence = Sequence([ri])
    ds.ReferencedSeriesSequence = Sequence([rs])
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_case(case: dict, out: Path, seed: int, role: str = "image") -> tuple[Path, Path]:
    """Write image(s) and SEG; returns (image path or MR folder, SEG path)."""
    out.mkdir(parents=True, exist_ok=True)
    fam = case["family"]
    if fam == "fundus":
        img = out / "image.dcm"
        srcs = [write_fundus(case, img, seed, role)]
    elif fam == "us":
        img = out / "image.dcm"
        srcs = [write_us(case, img, seed, role)]
    elif case["pixels"].shape[0] == 1:  # one MR slice: a single file
        write_mr(case, out / "series-tmp", seed, role)
        img = out / "image.dcm"
        (out / "series-tmp" / "slice-01.dcm").replace(img)
        (out / "series-tmp").rmdir()
    else:
        img = out / "series"
        write_mr(case, img, seed, role)
    srcs = load_images(img)
    seg = out / "mask.seg.dcm"
    write_seg(srcs, case["masks"], fam, seg, seed, role, case.get("objects"))
    return img, seg


def _identity(ds: Dataset, case: dict) -> None:
    """Real (non-phantom) cases override the phantom identity: body part, patient, descriptions."""
    for kw in ("BodyPartExamined", "PatientName", "PatientID", "StudyDescription", "SeriesDescription",
               "StudyInstanceUID"):
        if kw in case.get("identity", {}):
            setattr(ds, kw, case["identity"][kw])


# ---------------------------------------------------------------------------------- reading

def dataset_displays(ds: Dataset) -> np.ndarray:
    """A DICOM image dataset -> display frames F x H x W x 3 float32 (preprocess.to_display)."""
    arr = ds.pixel_array
    photometric = ds.PhotometricInterpretation
    nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if photometric == "RGB":
        frames = arr[None] if nframes == 1 else arr
    else:
        frames = arr[None] if nframes == 1 else arr
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    window = None
    if photometric != "RGB" and "WindowCenter" in ds and "WindowWidth" in ds:
        wc, ww = ds.WindowCenter, ds.WindowWidth
        wc = float(wc[0]) if isinstance(wc, pydicom.multival.MultiValue) else float(wc)
        ww = float(ww[0]) if isinstance(ww, pydicom.multival.MultiValue) else float(ww)
        window = (wc, ww)
    return np.stack([to_display(f, photometric, slope, intercept, window) for f in frames])


def read_seg_masks(seg_path: Path, sources: list[Dataset]) -> np.ndarray:
    """SEG -> masks F x K x H x W uint8, frames in the order of `sources` (and their frames).

    Reads the per-frame functional groups directly (segment number, referenced SOP instance,
    referenced frame number), so it works for every SEG this package writes.
    """
    seg = pydicom.dcmread(seg_path)
    k = len(seg.SegmentSequence)
    index = {}
    for s in sources:
        for f in range(int(getattr(s, "NumberOfFrames", 1) or 1)):
            index[(s.SOPInstanceUID, f + 1)] = len(index)
    out = np.zeros((len(index), k, seg.Rows, seg.Columns), dtype=np.uint8)
    px = seg.pixel_array
    if px.ndim == 2:
        px = px[None]
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        sid = item if "SegmentIdentificationSequence" in item else shared
        sn = int(sid.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        der = item if "DerivationImageSequence" in item else shared
        ref = der.DerivationImageSequence[0].SourceImageSequence[0]
        fr = int(getattr(ref, "ReferencedFrameNumber", 1) or 1)
        key = (ref.ReferencedSOPInstanceUID, fr)
        if key in index:
            out[index[key], sn - 1] = px[i]
    return out


def load_images(path: Path) -> list[Dataset]:
    """A .dcm file or a folder of slices (sorted by InstanceNumber)."""
    path = Path(path)
    if path.is_dir():
        dss = [pydicom.dcmread(p) for p in sorted(path.glob("*.dcm"))]
        return sorted(dss, key=lambda d: int(d.InstanceNumber))
    return [pydicom.dcmread(path)]
