"""Write the source images the SEG tests segment, into OUTDIR.

Usage: make_sources.py OUTDIR

Writes (deterministic UIDs, so runs are reproducible):
  ct_small.dcm, mr_small.dcm   copies of pydicom's bundled CT_small and MR_small
  ct5/slice_N.dcm              a 5-slice CT volume built from CT_small (pydicom's CT5N is not
                               bundled): new SOP Instance UIDs, one series, Image Position
                               (Patient) shifted 2.5 mm per slice along the normal, written
                               in shuffled instance order so the writer must sort them
  fundus_op.dcm                an RGB Ophthalmic Photography 8 Bit image (fundus phantom),
                               no patient geometry, odd size 45x61
  ct_latin1.dcm                CT_small with Specific Character Set ISO_IR 100 and a patient
                               name outside ASCII (Müller^Jörg), new study
  enhanced_ct.dcm              an Enhanced CT image, 4 frames of 30x37 with per-frame Plane
                               Position (Patient) going down along the normal, so the SEG
                               must reorder them; shared Plane Orientation and Pixel Measures
  us_cine.dcm                  an Ultrasound Multi-frame image, MONOCHROME2, 8 frames, 30x37
"""

import os
import sys

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.10.1426."  # a private root used only for test phantoms


def uid(name):
    return generate_uid(prefix=ROOT, entropy_srcs=[name])


def copy_small(name, out):
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.save_as(out, enforce_file_format=True)


def ct_volume(outdir):
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    os.makedirs(os.path.join(outdir, "ct5"), exist_ok=True)
    iop = [float(v) for v in base.ImageOrientationPatient]
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    ipp0 = np.array([float(v) for v in base.ImagePositionPatient])
    series = uid("ct5-series")
    for i in [3, 0, 4, 1, 2]:  # shuffled on purpose
        ds = base.copy()
        ds.SOPInstanceUID = uid(f"ct5-{i}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = i + 1
        pos = ipp0 + normal * 2.5 * i
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.SliceLocation = f"{float(np.dot(pos, normal)):.4f}"
        ds.save_as(os.path.join(outdir, "ct5", f"slice_{i}.dcm"), enforce_file_format=True)


def latin1(out):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.StudyInstanceUID = uid("latin1-study")
    ds.SeriesInstanceUID = uid("latin1-series")
    ds.SOPInstanceUID = uid("latin1-instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)


def item(**kw):
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def enhanced_ct(out):
    frames, rows, cols = 4, 30, 37
    ds = Dataset()
    common(ds, "CT", "enhct")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.AcquisitionNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.ImageComments = "proxyseg enhanced CT phantom"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.FrameOfReferenceUID = uid("enhct-for")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = frames
    ds.DeviceSerialNumber = "1"
    ds.ManufacturerModelName = "phantom"
    ds.SoftwareVersions = "1"
    ds.AcquisitionDateTime = "20260101120000"
    ds.AcquisitionDuration = 1.0
    ds.AcquisitionContextSequence = []
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PixelPresentation = "MONOCHROME"
    dim_uid = uid("enhct-dim")
    ds.DimensionOrganizationSequence = [item(DimensionOrganizationUID=dim_uid)]
    ds.DimensionIndexSequence = [
        item(DimensionOrganizationUID=dim_uid,
             DimensionIndexPointer=pydicom.tag.Tag("StackID"),
             FunctionalGroupPointer=pydicom.tag.Tag("FrameContentSequence")),
        item(DimensionOrganizationUID=dim_uid,
             DimensionIndexPointer=pydicom.tag.Tag("InStackPositionNumber"),
             FunctionalGroupPointer=pydicom.tag.Tag("FrameContentSequence")),
    ]
    ds.SharedFunctionalGroupsSequence = [item(
        PixelMeasuresSequence=[item(PixelSpacing=["0.8", "0.8"], SliceThickness="2.5")],
        PlaneOrientationSequence=[item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])],
        PixelValueTransformationSequence=[item(
            RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")],
        FrameVOILUTSequence=[item(WindowCenter="40", WindowWidth="400")],
        CTImageFrameTypeSequence=[item(
            FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"], PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE")],
    )]
    per_frame = []
    for f in range(frames):
        z = 10.0 - 2.5 * f  # going down: the SEG must sort these along the normal
        per_frame.append(item(
            PlanePositionSequence=[item(ImagePositionPatient=["-12.0", "-15.0", f"{z:.1f}"])],
            FrameContentSequence=[item(
                FrameAcquisitionDateTime="20260101120000", FrameReferenceDateTime="20260101120000",
                FrameAcquisitionDuration=1.0,
                StackID="1", InStackPositionNumber=f + 1, DimensionIndexValues=[1, f + 1])],
        ))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    y, x = np.mgrid[0:rows, 0:cols]
    pixels = np.stack([((x * 7 + y * 3 + f * 50) % 4096).astype(np.uint16) for f in range(frames)])
    ds.PixelData = pixels.tobytes()
    save(ds, "1.2.840.10008.5.1.4.1.1.2.1", out)


def common(ds, modality, name):
    ds.PatientName = "Phantom^" + name
    ds.PatientID = "PHANTOM-" + name.upper()
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uid(name + "-study")
    ds.SeriesInstanceUID = uid(name + "-series")
    ds.SOPInstanceUID = uid(name + "-instance")
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC-" + name.upper()
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "proxyseg test phantoms"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.AcquisitionDateTime = "20260101120000"


def save(ds, sop_class, out):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)


def code(value, scheme, meaning):
    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning
    return c


def fundus(out):
    rows, cols = 45, 61
    y, x = np.mgrid[0:rows, 0:cols]
    disc = ((y - rows / 2) ** 2 + (x - cols / 2) ** 2) < (min(rows, cols) / 2.2) ** 2
    rgb = np.zeros((rows, cols, 3), np.uint8)
    rgb[..., 0] = np.where(disc, 200, 10)
    rgb[..., 1] = np.where(disc, 90 + (x % 40), 5)
    rgb[..., 2] = np.where(disc, 40, 5)
    ds = Dataset()
    common(ds, "OP", "fundus")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "R"
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelSpacing = ["0.01", "0.01"]
    ds.AnatomicRegionSequence = [code("81745001", "SCT", "Eye")]
    ds.AcquisitionDeviceTypeCodeSequence = [code("409899009", "SCT", "Fundus camera")]
    ds.IlluminationTypeCodeSequence = []
    ds.LightPathFilterTypeStackCodeSequence = []
    ds.ImagePathFilterTypeStackCodeSequence = []
    ds.LensesCodeSequence = []
    ds.DetectorType = "CCD"
    ds.PatientEyeMovementCommanded = "NO"
    ds.HorizontalFieldOfView = 45
    ds.PupilDilated = "NO"
    ds.RefractiveStateSequence = []
    ds.EmmetropicMagnification = 1.0
    ds.IntraOcularPressure = 15.0
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.FrameTime = "0"
    ds.SynchronizationFrameOfReferenceUID = "1.2.840.10008.15.1.1"  # UTC
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.PixelData = rgb.tobytes()
    save(ds, "1.2.840.10008.5.1.4.1.1.77.1.5.1", out)


def us_cine(out):
    frames, rows, cols = 8, 30, 37
    y, x = np.mgrid[0:rows, 0:cols]
    pixels = np.stack(
        [(((x + 3 * f) % 32) * 8 + (y % 5)).astype(np.uint8) for f in range(frames)]
    )
    ds = Dataset()
    common(ds, "US", "uscine")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.PatientOrientation = ""
    ds.Laterality = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.FrameTime = "33.3"
    ds.PixelData = pixels.tobytes()
    save(ds, "1.2.840.10008.5.1.4.1.1.3.1", out)


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    copy_small("CT_small.dcm", os.path.join(outdir, "ct_small.dcm"))
    copy_small("MR_small.dcm", os.path.join(outdir, "mr_small.dcm"))
    ct_volume(outdir)
    latin1(os.path.join(outdir, "ct_latin1.dcm"))
    enhanced_ct(os.path.join(outdir, "enhanced_ct.dcm"))
    fundus(os.path.join(outdir, "fundus_op.dcm"))
    us_cine(os.path.join(outdir, "us_cine.dcm"))


if __name__ == "__main__":
    main()
