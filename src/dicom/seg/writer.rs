//! Building a Segmentation Storage object (PS3.3 A.51) from binary masks over source images.
//!
//! Frames are ordered segment by segment, and within a segment by source position: along the
//! slice normal for volumes, in the given order (and source frame order) otherwise. Each frame
//! carries its source reference (Derivation Image), segment (Segment Identification), dimension
//! index values and, with patient geometry, its Plane Position. This file never generates random
//! UIDs and never touches the network or the disk.

use std::time::{SystemTime, UNIX_EPOCH};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::bitpack::BitPacker;
use super::codes;
use super::color::srgb_to_dicom_lab;
use super::elements::{
    copy, get_int, get_str, put_empty, put_seq, put_str, put_strs, put_tag, put_u16s, put_u32s,
};
use super::geometry::Plane;
use super::uid::deterministic_uid;
use super::{SegError, SegmentDescription, SEGMENTATION_STORAGE};

/// The implementation class UID written in the file meta group (derived from our name).
const IMPLEMENTATION_VERSION_NAME: &str = "PROXYSEG_010";

/// One source image and its masks.
#[derive(Debug, Clone)]
pub struct SourceImage<'a> {
    /// The source data set (header only is enough: pixel data is never read). A
    /// `FileDicomObject` derefs to it.
    pub dataset: &'a InMemDicomObject,
    /// `masks[frame][segment]`: one mask per source frame (a single-frame image has one) and per
    /// segment of [`SegInput::segments`], in that order. A mask holds Rows x Columns bytes, row
    /// by row; any non-zero byte marks a pixel inside the segment.
    pub masks: Vec<Vec<&'a [u8]>>,
}

/// What to segment: the segments and the source images with their masks.
#[derive(Debug, Clone)]
pub struct SegInput<'a> {
    /// The segments; segment number `i + 1` is `segments[i]`.
    pub segments: Vec<SegmentDescription>,
    /// The source images: one image, the frames of one multi-frame image, or the slices of a
    /// series (any order: slices with patient geometry are sorted along the normal).
    pub sources: Vec<SourceImage<'a>>,
}

/// Identification and presentation choices for the SEG instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegOptions {
    /// Series Description (LO), e.g. naming the support set.
    pub series_description: String,
    /// Content Label (CS: `A`-`Z`, `0`-`9`, `_` and space, at most 16 characters).
    pub content_label: String,
    /// Content Description (LO).
    pub content_description: String,
    /// Content Creator's Name (PN), e.g. `proxyseg`.
    pub content_creator: String,
    /// Instance Number.
    pub instance_number: u32,
    /// Series Number.
    pub series_number: u32,
    /// Manufacturer (Enhanced General Equipment).
    pub manufacturer: String,
    /// Manufacturer's Model Name.
    pub manufacturer_model_name: String,
    /// Device Serial Number.
    pub device_serial_number: String,
    /// Software Versions.
    pub software_versions: String,
    /// Algorithm Version (LO, at most 64 characters): model bundle name + version and support
    /// set name + version, e.g. `sam-tiny 1.0; liver-ct 3`.
    pub algorithm_version: String,
    /// Drop frames whose mask is empty. When every frame is empty, the first frame is kept so
    /// the object still has pixel data (Number of Frames must be at least 1).
    pub omit_empty_frames: bool,
    /// SOP Instance UID, deterministic per job (see [`super::deterministic_uid`]).
    pub sop_instance_uid: String,
    /// Series Instance UID of the new SEG series.
    pub series_instance_uid: String,
    /// Content Date and Time (`YYYYMMDD`, `HHMMSS`); `None` = now (UTC).
    pub content_date_time: Option<(String, String)>,
}

impl SegOptions {
    /// Options with proxyseg's defaults and the given UIDs.
    pub fn new(
        sop_instance_uid: impl Into<String>,
        series_instance_uid: impl Into<String>,
    ) -> Self {
        Self {
            series_description: "proxyseg segmentation".into(),
            content_label: "PROXYSEG".into(),
            content_description: "Automatic segmentation by proxyseg".into(),
            content_creator: "proxyseg".into(),
            instance_number: 1,
            series_number: 9001,
            manufacturer: "proxyseg".into(),
            manufacturer_model_name: "proxyseg".into(),
            device_serial_number: "1".into(),
            software_versions: env!("CARGO_PKG_VERSION").into(),
            algorithm_version: env!("CARGO_PKG_VERSION").into(),
            omit_empty_frames: false,
            sop_instance_uid: sop_instance_uid.into(),
            series_instance_uid: series_instance_uid.into(),
            content_date_time: None,
        }
    }
}

/// One source frame, in SEG order.
#[derive(Debug, Clone, Copy)]
struct SourceFrame {
    /// Index into `SegInput::sources`.
    source: usize,
    /// 0-based frame of that source.
    frame: usize,
}

/// Facts about one source read once.
struct SourceHeader {
    sop_class: String,
    sop_instance: String,
    series: String,
    frames: usize,
    multi_frame: bool,
}

/// Writes a Segmentation Storage object (BINARY, bit-packed, Explicit VR Little Endian) for
/// `input` with `options`. Patient, study and frame of reference come from the first source.
pub fn write_seg(
    input: &SegInput<'_>,
    options: &SegOptions,
) -> Result<FileDicomObject<InMemDicomObject>, SegError> {
    check_options(options)?;
    let (rows, columns, headers) = check_input(input)?;
    let geometry = volume_geometry(input)?;
    let order = source_order(input, &headers, geometry.as_ref());
    let pixels = usize::from(rows) * usize::from(columns);

    // SEG frames: segment-major, then source order; optionally without empty masks.
    let mut frames: Vec<(u16, usize)> = Vec::new(); // (segment number, index into `order`)
    for seg in 0..input.segments.len() {
        for (pos, sf) in order.iter().enumerate() {
            let mask = input.sources[sf.source].masks[sf.frame][seg];
            if options.omit_empty_frames && mask.iter().all(|&b| b == 0) {
                continue;
            }
            frames.push((seg as u16 + 1, pos));
        }
    }
    if frames.is_empty() {
        frames.push((1, 0));
    }

    let first = input.sources[0].dataset;
    let mut ds = InMemDicomObject::new_empty();
    put_common(&mut ds, first, options)?;
    if let Some(plane) = geometry.as_ref().map(|g| &g.first) {
        put_str(
            &mut ds,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &plane.frame_of_reference,
        );
        copy(
            &mut ds,
            first,
            tags::POSITION_REFERENCE_INDICATOR,
            Some(VR::LO),
        );
    } else {
        // No patient geometry (US, photographs): General Image needs Patient Orientation (2C).
        copy(&mut ds, first, tags::PATIENT_ORIENTATION, Some(VR::CS));
    }

    // Image Pixel and Segmentation Image modules.
    put_u16s(&mut ds, tags::SAMPLES_PER_PIXEL, &[1]);
    put_str(
        &mut ds,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_str(
        &mut ds,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    );
    put_u16s(&mut ds, tags::ROWS, &[rows]);
    put_u16s(&mut ds, tags::COLUMNS, &[columns]);
    put_u16s(&mut ds, tags::BITS_ALLOCATED, &[1]);
    put_u16s(&mut ds, tags::BITS_STORED, &[1]);
    put_u16s(&mut ds, tags::HIGH_BIT, &[0]);
    put_u16s(&mut ds, tags::PIXEL_REPRESENTATION, &[0]);
    put_str(&mut ds, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut ds, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_seq(
        &mut ds,
        tags::SEGMENT_SEQUENCE,
        input
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| segment_item(i as u16 + 1, s, options))
            .collect(),
    );

    // References to the sources.
    put_seq(
        &mut ds,
        tags::SOURCE_IMAGE_SEQUENCE,
        headers.iter().map(|h| source_ref_item(h, None)).collect(),
    );
    put_seq(
        &mut ds,
        tags::REFERENCED_SERIES_SEQUENCE,
        referenced_series(&headers),
    );

    // Dimensions.
    let dimension_uid = deterministic_uid(&format!(
        "{}/dimension-organization",
        options.sop_instance_uid
    ));
    let mut dim_org = InMemDicomObject::new_empty();
    put_str(
        &mut dim_org,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &dimension_uid,
    );
    put_seq(
        &mut ds,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![dim_org],
    );
    let second_dimension = if geometry.is_some() {
        Some((
            tags::IMAGE_POSITION_PATIENT,
            tags::PLANE_POSITION_SEQUENCE,
            "Image Position Patient",
        ))
    } else if order.len() > 1 {
        Some((
            tags::TEMPORAL_POSITION_INDEX,
            tags::FRAME_CONTENT_SEQUENCE,
            "Source Frame",
        ))
    } else {
        None
    };
    let mut dim_index = vec![dimension_item(
        &dimension_uid,
        tags::REFERENCED_SEGMENT_NUMBER,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        "Segment Number",
    )];
    if let Some((pointer, group, label)) = second_dimension {
        dim_index.push(dimension_item(&dimension_uid, pointer, group, label));
    }
    put_seq(&mut ds, tags::DIMENSION_INDEX_SEQUENCE, dim_index);

    // Shared functional groups.
    let mut shared = InMemDicomObject::new_empty();
    if let Some(g) = geometry.as_ref() {
        let mut measures = InMemDicomObject::new_empty();
        copy(
            &mut measures,
            g.first_dataset(input),
            tags::PIXEL_SPACING,
            None,
        );
        copy(
            &mut measures,
            g.first_dataset(input),
            tags::SLICE_THICKNESS,
            None,
        );
        put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
        let mut orientation = InMemDicomObject::new_empty();
        copy(
            &mut orientation,
            g.first_dataset(input),
            tags::IMAGE_ORIENTATION_PATIENT,
            None,
        );
        put_seq(
            &mut shared,
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![orientation],
        );
    }
    put_seq(
        &mut ds,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared],
    );

    // Per-frame functional groups and the packed pixels, in one pass.
    let mut packer = BitPacker::with_capacity(pixels as u64 * frames.len() as u64);
    let mut per_frame = Vec::with_capacity(frames.len());
    let derivation_code = codes::derivation_segmentation().to_item();
    for &(segment, pos) in &frames {
        let sf = order[pos];
        let header = &headers[sf.source];
        let src = input.sources[sf.source].dataset;
        let mut item = InMemDicomObject::new_empty();

        let mut derivation = InMemDicomObject::new_empty();
        put_seq(
            &mut derivation,
            tags::DERIVATION_CODE_SEQUENCE,
            vec![derivation_code.clone()],
        );
        let frame_number = header.multi_frame.then_some(sf.frame as u32 + 1);
        put_seq(
            &mut derivation,
            tags::SOURCE_IMAGE_SEQUENCE,
            vec![source_ref_item(header, frame_number)],
        );
        put_seq(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);

        let mut content = InMemDicomObject::new_empty();
        let mut index_values = vec![u32::from(segment)];
        if second_dimension.is_some() {
            index_values.push(pos as u32 + 1);
        }
        put_u32s(&mut content, tags::DIMENSION_INDEX_VALUES, &index_values);
        if geometry.is_none() && second_dimension.is_some() {
            put_u32s(
                &mut content,
                tags::TEMPORAL_POSITION_INDEX,
                &[pos as u32 + 1],
            );
        }
        put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);

        if geometry.is_some() {
            let mut position = InMemDicomObject::new_empty();
            copy(&mut position, src, tags::IMAGE_POSITION_PATIENT, None);
            put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
        }

        let mut ident = InMemDicomObject::new_empty();
        put_u16s(&mut ident, tags::REFERENCED_SEGMENT_NUMBER, &[segment]);
        put_seq(
            &mut item,
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![ident],
        );

        per_frame.push(item);
        packer.push_frame(input.sources[sf.source].masks[sf.frame][usize::from(segment) - 1]);
    }
    put_seq(
        &mut ds,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    );
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(packer.finish()),
    ));

    ds.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(deterministic_uid("proxyseg implementation class"))
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| SegError::Meta(e.to_string()))
}

/// Patient, study, series, equipment, SOP common and content identification attributes.
fn put_common(
    ds: &mut InMemDicomObject,
    first: &InMemDicomObject,
    options: &SegOptions,
) -> Result<(), SegError> {
    let (content_date, content_time) = match &options.content_date_time {
        Some((d, t)) => (d.clone(), t.clone()),
        None => now_utc(),
    };
    copy(ds, first, tags::SPECIFIC_CHARACTER_SET, None);
    put_strs(
        ds,
        tags::IMAGE_TYPE,
        VR::CS,
        &["DERIVED".into(), "PRIMARY".into()],
    );
    put_str(ds, tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
    put_str(
        ds,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        &options.sop_instance_uid,
    );

    // Patient, Patient Study, General Study and Clinical Trial modules: the SEG joins the
    // source's patient and study, so these must match the source (dcentvfy compares them).
    for &(tag, vr_if_missing) in PATIENT_AND_STUDY {
        copy(ds, first, tag, vr_if_missing);
    }
    if get_str(first, tags::STUDY_INSTANCE_UID).is_none() {
        return Err(SegError::SourceMissing {
            index: 0,
            attribute: "StudyInstanceUID",
        });
    }

    // General Series and Segmentation Series modules.
    put_str(ds, tags::MODALITY, VR::CS, "SEG");
    put_str(
        ds,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &options.series_instance_uid,
    );
    put_str(
        ds,
        tags::SERIES_NUMBER,
        VR::IS,
        &options.series_number.to_string(),
    );
    put_str(
        ds,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &options.series_description,
    );

    // General Equipment and Enhanced General Equipment modules.
    put_str(ds, tags::MANUFACTURER, VR::LO, &options.manufacturer);
    put_str(
        ds,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &options.manufacturer_model_name,
    );
    put_str(
        ds,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &options.device_serial_number,
    );
    put_str(
        ds,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &options.software_versions,
    );

    // General Image, Multi-frame Functional Groups and Content Identification.
    put_str(
        ds,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &options.instance_number.to_string(),
    );
    put_str(ds, tags::CONTENT_DATE, VR::DA, &content_date);
    put_str(ds, tags::CONTENT_TIME, VR::TM, &content_time);
    put_str(ds, tags::CONTENT_LABEL, VR::CS, &options.content_label);
    put_str(
        ds,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        &options.content_description,
    );
    if options.content_creator.is_empty() {
        put_empty(ds, tags::CONTENT_CREATOR_NAME, VR::PN);
    } else {
        put_str(
            ds,
            tags::CONTENT_CREATOR_NAME,
            VR::PN,
            &options.content_creator,
        );
    }
    Ok(())
}

/// Patient and study level attributes copied from the first source; the VR is given for type 2
/// attributes, which are written empty when the source lacks them.
const PATIENT_AND_STUDY: &[(Tag, Option<VR>)] = &[
    // Patient
    (tags::PATIENT_NAME, Some(VR::PN)),
    (tags::PATIENT_ID, Some(VR::LO)),
    (tags::ISSUER_OF_PATIENT_ID, None),
    (tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE, None),
    (tags::PATIENT_BIRTH_DATE, Some(VR::DA)),
    (tags::PATIENT_BIRTH_TIME, None),
    (tags::PATIENT_SEX, Some(VR::CS)),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, None),
    (tags::OTHER_PATIENT_NAMES, None),
    (tags::PATIENT_COMMENTS, None),
    (tags::PATIENT_SPECIES_DESCRIPTION, None),
    (tags::PATIENT_SPECIES_CODE_SEQUENCE, None),
    (tags::PATIENT_BREED_DESCRIPTION, None),
    (tags::PATIENT_BREED_CODE_SEQUENCE, None),
    (tags::BREED_REGISTRATION_SEQUENCE, None),
    (tags::RESPONSIBLE_PERSON, None),
    (tags::RESPONSIBLE_PERSON_ROLE, None),
    (tags::RESPONSIBLE_ORGANIZATION, None),
    (tags::PATIENT_IDENTITY_REMOVED, None),
    (tags::DEIDENTIFICATION_METHOD, None),
    (tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, None),
    // Clinical Trial Subject
    (tags::CLINICAL_TRIAL_SPONSOR_NAME, None),
    (tags::CLINICAL_TRIAL_PROTOCOL_ID, None),
    (tags::CLINICAL_TRIAL_PROTOCOL_NAME, None),
    (tags::CLINICAL_TRIAL_SITE_ID, None),
    (tags::CLINICAL_TRIAL_SITE_NAME, None),
    (tags::CLINICAL_TRIAL_SUBJECT_ID, None),
    (tags::CLINICAL_TRIAL_SUBJECT_READING_ID, None),
    // General Study
    (tags::STUDY_INSTANCE_UID, None),
    (tags::STUDY_DATE, Some(VR::DA)),
    (tags::STUDY_TIME, Some(VR::TM)),
    (tags::REFERRING_PHYSICIAN_NAME, Some(VR::PN)),
    (tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE, None),
    (tags::STUDY_ID, Some(VR::SH)),
    (tags::ACCESSION_NUMBER, Some(VR::SH)),
    (tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE, None),
    (tags::STUDY_DESCRIPTION, None),
    (tags::PHYSICIANS_OF_RECORD, None),
    (tags::NAME_OF_PHYSICIANS_READING_STUDY, None),
    (tags::PROCEDURE_CODE_SEQUENCE, None),
    // Patient Study
    (tags::ADMITTING_DIAGNOSES_DESCRIPTION, None),
    (tags::PATIENT_AGE, None),
    (tags::PATIENT_SIZE, None),
    (tags::PATIENT_WEIGHT, None),
    (tags::OCCUPATION, None),
    (tags::ADDITIONAL_PATIENT_HISTORY, None),
    (tags::MEDICAL_ALERTS, None),
    (tags::ALLERGIES, None),
    (tags::SMOKING_STATUS, None),
    (tags::PREGNANCY_STATUS, None),
    (tags::PATIENT_STATE, None),
    // Clinical Trial Study
    (tags::CLINICAL_TRIAL_TIME_POINT_ID, None),
    (tags::CLINICAL_TRIAL_TIME_POINT_DESCRIPTION, None),
];

/// One Segment Sequence item.
fn segment_item(number: u16, s: &SegmentDescription, options: &SegOptions) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_u16s(&mut item, tags::SEGMENT_NUMBER, &[number]);
    put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, &s.label);
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![s.category.to_item()],
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![s.type_.to_item()],
    );
    put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(
        &mut item,
        tags::SEGMENT_ALGORITHM_NAME,
        VR::LO,
        &s.algorithm_name,
    );
    let mut algorithm = InMemDicomObject::new_empty();
    put_seq(
        &mut algorithm,
        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
        vec![codes::algorithm_family_ai().to_item()],
    );
    put_str(
        &mut algorithm,
        tags::ALGORITHM_NAME,
        VR::LO,
        &s.algorithm_name,
    );
    put_str(
        &mut algorithm,
        tags::ALGORITHM_VERSION,
        VR::LO,
        &options.algorithm_version,
    );
    put_seq(
        &mut item,
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![algorithm],
    );
    put_u16s(
        &mut item,
        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
        &srgb_to_dicom_lab(s.color_rgb),
    );
    item
}

/// A Source Image Sequence item referencing a source (and a frame of it, for multi-frame ones).
fn source_ref_item(h: &SourceHeader, frame_number: Option<u32>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(
        &mut item,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &h.sop_class,
    );
    put_str(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &h.sop_instance,
    );
    if let Some(n) = frame_number {
        put_str(
            &mut item,
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            &n.to_string(),
        );
    }
    put_seq(
        &mut item,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![codes::purpose_source_image().to_item()],
    );
    put_str(&mut item, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
    item
}

/// Referenced Series Sequence: the sources grouped by series, in first-seen order.
fn referenced_series(headers: &[SourceHeader]) -> Vec<InMemDicomObject> {
    let mut series: Vec<(&str, Vec<InMemDicomObject>)> = Vec::new();
    for h in headers {
        let mut inst = InMemDicomObject::new_empty();
        put_str(
            &mut inst,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            &h.sop_class,
        );
        put_str(
            &mut inst,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &h.sop_instance,
        );
        match series.iter_mut().find(|(uid, _)| *uid == h.series) {
            Some((_, list)) => list.push(inst),
            None => series.push((&h.series, vec![inst])),
        }
    }
    series
        .into_iter()
        .map(|(uid, instances)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::SERIES_INSTANCE_UID, VR::UI, uid);
            put_seq(&mut item, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
            item
        })
        .collect()
}

/// One Dimension Index Sequence item.
fn dimension_item(org_uid: &str, pointer: Tag, group: Tag, label: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, org_uid);
    put_tag(&mut item, tags::DIMENSION_INDEX_POINTER, pointer);
    put_tag(&mut item, tags::FUNCTIONAL_GROUP_POINTER, group);
    put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    item
}

/// Checks the options against their attributes' value representations.
fn check_options(o: &SegOptions) -> Result<(), SegError> {
    for (name, uid) in [
        ("sop_instance_uid", &o.sop_instance_uid),
        ("series_instance_uid", &o.series_instance_uid),
    ] {
        if !is_uid(uid) {
            return Err(SegError::InvalidOption {
                name,
                reason: format!("{uid:?} is not a UID (digits and dots, at most 64 characters)"),
            });
        }
    }
    let label_ok = o.content_label.len() <= 16
        && !o.content_label.is_empty()
        && o.content_label
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == ' ');
    if !label_ok {
        return Err(SegError::InvalidOption {
            name: "content_label",
            reason: format!(
                "{:?} is not a CS value (A-Z, 0-9, _ and space, 1 to 16 characters)",
                o.content_label
            ),
        });
    }
    for (name, value) in [
        ("series_description", &o.series_description),
        ("content_description", &o.content_description),
        ("manufacturer", &o.manufacturer),
        ("manufacturer_model_name", &o.manufacturer_model_name),
        ("device_serial_number", &o.device_serial_number),
        ("software_versions", &o.software_versions),
        ("algorithm_version", &o.algorithm_version),
    ] {
        if value.chars().count() > 64 || value.contains('\\') {
            return Err(SegError::InvalidOption {
                name,
                reason: format!(
                    "{value:?} is not a LO value (at most 64 characters, no backslash)"
                ),
            });
        }
    }
    for (name, value) in [
        ("manufacturer", &o.manufacturer),
        ("manufacturer_model_name", &o.manufacturer_model_name),
        ("device_serial_number", &o.device_serial_number),
        ("software_versions", &o.software_versions),
        ("algorithm_version", &o.algorithm_version),
    ] {
        if value.trim().is_empty() {
            return Err(SegError::InvalidOption {
                name,
                reason: "must not be empty (type 1 attribute)".into(),
            });
        }
    }
    if let Some((d, t)) = &o.content_date_time {
        let date_ok = d.len() == 8 && d.chars().all(|c| c.is_ascii_digit());
        let time_ok = t.len() >= 2 && t.chars().all(|c| c.is_ascii_digit() || c == '.');
        if !date_ok || !time_ok {
            return Err(SegError::InvalidOption {
                name: "content_date_time",
                reason: format!("{d:?} {t:?} is not YYYYMMDD and HHMMSS"),
            });
        }
    }
    Ok(())
}

/// Whether `s` is a syntactically valid UID.
fn is_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|c| {
            !c.is_empty()
                && c.chars().all(|d| d.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

/// Checks counts and sizes; returns Rows, Columns and the sources' identifying attributes.
fn check_input(input: &SegInput<'_>) -> Result<(u16, u16, Vec<SourceHeader>), SegError> {
    if input.segments.is_empty() {
        return Err(SegError::InvalidInput("no segments".into()));
    }
    if input.segments.len() > usize::from(u16::MAX) {
        return Err(SegError::InvalidInput(format!(
            "{} segments (at most 65535)",
            input.segments.len()
        )));
    }
    for (i, s) in input.segments.iter().enumerate() {
        if s.label.is_empty() || s.label.chars().count() > 64 || s.algorithm_name.is_empty() {
            return Err(SegError::InvalidInput(format!(
                "segment {}: label must be 1 to 64 characters and algorithm name non-empty",
                i + 1
            )));
        }
        for (what, code) in [("category", &s.category), ("type", &s.type_)] {
            if code.scheme.is_empty() || code.value.is_empty() || code.meaning.is_empty() {
                return Err(SegError::InvalidInput(format!(
                    "segment {}: {what} code needs scheme, value and meaning",
                    i + 1
                )));
            }
        }
    }
    let Some(first) = input.sources.first() else {
        return Err(SegError::InvalidInput("no source images".into()));
    };
    let need_u16 = |index: usize, ds: &InMemDicomObject, tag: Tag, attribute: &'static str| {
        get_int::<u16>(ds, tag)
            .filter(|v| *v > 0)
            .ok_or(SegError::SourceMissing { index, attribute })
    };
    let rows = need_u16(0, first.dataset, tags::ROWS, "Rows")?;
    let columns = need_u16(0, first.dataset, tags::COLUMNS, "Columns")?;
    let study =
        get_str(first.dataset, tags::STUDY_INSTANCE_UID).ok_or(SegError::SourceMissing {
            index: 0,
            attribute: "StudyInstanceUID",
        })?;
    let pixels = usize::from(rows) * usize::from(columns);
    let mut headers = Vec::with_capacity(input.sources.len());
    let mut seen = std::collections::HashSet::new();
    for (index, src) in input.sources.iter().enumerate() {
        let ds = src.dataset;
        let need_str = |tag: Tag, attribute: &'static str| {
            get_str(ds, tag).ok_or(SegError::SourceMissing { index, attribute })
        };
        let sop_class = need_str(tags::SOP_CLASS_UID, "SOPClassUID")?;
        let sop_instance = need_str(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
        let series = need_str(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
        if need_str(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")? != study {
            return Err(SegError::InvalidInput(format!(
                "source {index} belongs to another study than source 0"
            )));
        }
        if !seen.insert(sop_instance.clone()) {
            return Err(SegError::InvalidInput(format!(
                "source {index} repeats SOP Instance UID {sop_instance}"
            )));
        }
        let (r, c) = (
            need_u16(index, ds, tags::ROWS, "Rows")?,
            need_u16(index, ds, tags::COLUMNS, "Columns")?,
        );
        if (r, c) != (rows, columns) {
            return Err(SegError::InvalidInput(format!(
                "source {index} is {r}x{c}, source 0 is {rows}x{columns}"
            )));
        }
        let multi_frame = ds.get(tags::NUMBER_OF_FRAMES).is_some();
        let frames = get_int::<u32>(ds, tags::NUMBER_OF_FRAMES)
            .unwrap_or(1)
            .max(1) as usize;
        if src.masks.len() != frames {
            return Err(SegError::InvalidInput(format!(
                "source {index} has {frames} frame(s) but {} mask frame(s)",
                src.masks.len()
            )));
        }
        for (f, per_segment) in src.masks.iter().enumerate() {
            if per_segment.len() != input.segments.len() {
                return Err(SegError::InvalidInput(format!(
                    "source {index} frame {f}: {} masks for {} segments",
                    per_segment.len(),
                    input.segments.len()
                )));
            }
            if let Some((s, m)) = per_segment
                .iter()
                .enumerate()
                .find(|(_, m)| m.len() != pixels)
            {
                return Err(SegError::InvalidInput(format!(
                    "source {index} frame {f} segment {}: mask has {} bytes, {rows}x{columns} = {pixels} expected",
                    s + 1,
                    m.len()
                )));
            }
        }
        headers.push(SourceHeader {
            sop_class,
            sop_instance,
            series,
            frames,
            multi_frame,
        });
    }
    Ok((rows, columns, headers))
}

/// The patient geometry shared by all sources, when every source has one.
struct VolumeGeometry {
    first: Plane,
    first_index: usize,
    planes: Vec<Plane>,
}

impl VolumeGeometry {
    fn first_dataset<'a>(&self, input: &SegInput<'a>) -> &'a InMemDicomObject {
        input.sources[self.first_index].dataset
    }
}

/// `Some` when every source is a single-frame image with patient geometry; an error when they
/// have geometry that disagrees.
fn volume_geometry(input: &SegInput<'_>) -> Result<Option<VolumeGeometry>, SegError> {
    let planes: Option<Vec<Plane>> = input.sources.iter().map(|s| Plane::of(s.dataset)).collect();
    let Some(planes) = planes else {
        return Ok(None);
    };
    let first = planes[0].clone();
    for (i, p) in planes.iter().enumerate().skip(1) {
        if let Some(why) = first.disagreement(p) {
            return Err(SegError::InconsistentGeometry(format!(
                "sources 0 and {i}: {why}"
            )));
        }
    }
    Ok(Some(VolumeGeometry {
        first,
        first_index: 0,
        planes,
    }))
}

/// Source frames in SEG order: by position along the normal for volumes (stable for ties),
/// otherwise sources as given and frames in order.
fn source_order(
    input: &SegInput<'_>,
    headers: &[SourceHeader],
    geometry: Option<&VolumeGeometry>,
) -> Vec<SourceFrame> {
    match geometry {
        Some(g) => {
            let normal = g.first.normal();
            let mut keyed: Vec<(f64, usize)> = g
                .planes
                .iter()
                .enumerate()
                .map(|(i, p)| (p.distance_along(normal), i))
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            keyed
                .into_iter()
                .map(|(_, source)| SourceFrame { source, frame: 0 })
                .collect()
        }
        None => {
            let _ = input;
            headers
                .iter()
                .enumerate()
                .flat_map(|(source, h)| {
                    (0..h.frames).map(move |frame| SourceFrame { source, frame })
                })
                .collect()
        }
    }
}

/// Today's date and the time now, UTC, as DICOM DA and TM.
fn now_utc() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_517), (2026, 3, 5));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn uid_syntax() {
        assert!(is_uid("1.2.840.10008.5.1.4.1.1.66.4"));
        assert!(is_uid("2.25.0"));
        assert!(!is_uid("1.02.3"));
        assert!(!is_uid("1..2"));
        assert!(!is_uid(""));
        assert!(!is_uid(&format!("1.{}", "2".repeat(70))));
    }
}
