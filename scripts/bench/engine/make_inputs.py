#!/usr/bin/env python3
"""Benchmark inputs (deterministic): a 512x512 CT slice (16-bit signed, rescale, window), an
RGB fundus photograph (8-bit, 768x1024) and an ultrasound cine (30 frames, 8-bit, 480x640), plus
a one-object support set folder (supportset.toml + image + highdicom BINARY SEG) for tests.

    make_inputs.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
US_MF = "1.2.840.10008.5.1.4.1.1.3.1"


def base(sop_class, modality, rows, cols, seed):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"bench-{seed}-sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"bench-{seed}-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"bench-{seed}-series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[f"bench-{seed}-for"])
    ds.PatientName, ds.PatientID, ds.Modality = "BENCH^ENGINE", f"B{seed}", modality
    ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.AccessionNumber = "19700101", "O", "1", ""
    ds.ReferringPhysicianName, ds.StudyDescription = "", "bench"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20260101", "120000", 1, 1
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.SliceThickness = 1.0
    return ds


def disc(rows, cols, cy, cx, r):
    yy, xx = np.mgrid[:rows, :cols]
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r


def ct(out: Path, seed=1, cy=260, cx=240, r=90):
    rng = np.random.default_rng(seed)
    ds = base(CT, "CT", 512, 512, seed)
    hu = np.full((512, 512), -1000.0)
    hu[disc(512, 512, 256, 256, 230)] = 0.0
    m = disc(512, 512, cy, cx, r)
    hu[m] = 60.0
    hu += rng.normal(0, 15, hu.shape)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.BodyPartExamined = "ABDOMEN"
    ds.PixelData = (hu + 1024).round().astype(np.int16).tobytes()
    ds.save_as(out, enforce_file_format=True)
    return ds, m


def fundus(out: Path, seed=2):
    rng = np.random.default_rng(seed)
    ds = base(SC, "OP", 768, 1024, seed)
    img = np.zeros((768, 1024, 3), np.uint8)
    fov = disc(768, 1024, 384, 512, 370)
    img[fov] = (170, 70, 30)
    img[disc(768, 1024, 380, 700, 60)] = (250, 210, 120)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BodyPartExamined = "EYE"
    ds.PixelData = img.tobytes()
    ds.save_as(out, enforce_file_format=True)


def us_cine(out: Path, seed=3, frames=30):
    rng = np.random.default_rng(seed)
    ds = base(US_MF, "US", 480, 640, seed)
    px = np.zeros((frames, 480, 640), np.uint8)
    for f in range(frames):
        a = np.clip(rng.normal(60, 25, (480, 640)), 0, 255)
        a[disc(480, 640, 240 + 2 * f, 320, 80)] = 180
        px[f] = a.astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime = frames, 40.0
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.BodyPartExamined = "PELVIS"
    ds.PixelData = px.tobytes()
    ds.save_as(out, enforce_file_format=True)


def support_set(folder: Path):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    pair = folder / "pairs" / "01"
    pair.mkdir(parents=True, exist_ok=True)
    src, m = ct(pair / "image.dcm", seed=11, cy=250, cx=260, r=80)
    src = pydicom.dcmread(pair / "image.dcm")
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=m.astype(np.uint8)[None], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(entropy_srcs=["bench-seg-series"]), series_number=2,
        sop_instance_uid=generate_uid(entropy_srcs=["bench-seg-sop"]), instance_number=1, manufacturer="proxyseg-bench",
        manufacturer_model_name="bench", software_versions="1", device_serial_number="1", omit_empty_frames=False)
    seg.save_as(pair / "mask.seg.dcm")
    (folder / "supportset.toml").write_text('''name = "bench-lesion"
description = "one synthetic CT lesion (scripts/bench/engine/make_inputs.py)"
[match]
modality = "CT"
body_part = "ABDOMEN"
[[objects]]
label = "lesion"
category = "Tissue"
type = "Tissue"
color = [255, 80, 80]
[[pairs]]
image = "pairs/01/image.dcm"
mask = "pairs/01/mask.seg.dcm"
''')


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ct(out / "ct512.dcm")
    fundus(out / "fundus_rgb.dcm")
    us_cine(out / "us_cine.dcm")
    support_set(out / "support-sets" / "bench-lesion")


if __name__ == "__main__":
    main()
