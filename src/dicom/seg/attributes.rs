//! The non-functional-group attributes of a SEG: patient and study copied from the source,
//! series, equipment and content identification from the options, the Segment Sequence, and the
//! references to the sources (Source Image, Referenced Series, Dimension Index items).

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::clock::now_utc;
use super::codes;
use super::color::srgb_to_dicom_lab;
use super::elements::{copy, get_str, put_empty, put_seq, put_str, put_strs, put_tag, put_u16s};
use super::input::{SegOptions, SourceHeader};
use super::{SegError, SegmentDescription, SEGMENTATION_STORAGE};

/// Patient, study, series, equipment, SOP common and content identification attributes.
pub(super) fn put_common(
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
pub(super) fn segment_item(
    number: u16,
    s: &SegmentDescription,
    options: &SegOptions,
) -> InMemDicomObject {
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
pub(super) fn source_ref_item(h: &SourceHeader, frame_number: Option<u32>) -> InMemDicomObject {
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
pub(super) fn referenced_series(headers: &[SourceHeader]) -> Vec<InMemDicomObject> {
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
pub(super) fn dimension_item(
    org_uid: &str,
    pointer: Tag,
    group: Tag,
    label: &str,
) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, org_uid);
    put_tag(&mut item, tags::DIMENSION_INDEX_POINTER, pointer);
    put_tag(&mut item, tags::FUNCTIONAL_GROUP_POINTER, group);
    put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    item
}
