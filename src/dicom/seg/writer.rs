//! Building a Segmentation Storage object (PS3.3 A.51) from binary masks over source images.
//!
//! Frames are ordered segment by segment, and within a segment by source position: along the
//! slice normal for volumes, in the given order (and source frame order) otherwise. Each frame
//! carries its source reference (Derivation Image), segment (Segment Identification), dimension
//! index values and, with patient geometry, its Plane Position. This file never generates random
//! UIDs and never touches the network or the disk.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::attributes::{
    dimension_item, put_common, referenced_series, segment_item, source_ref_item,
};
use super::bitpack::BitPacker;
use super::codes;
use super::elements::{copy, put_seq, put_str, put_u16s};
use super::functional_groups::{per_frame_item, shared_groups, FrameRef};
use super::input::{check_input, check_options, SegInput, SegOptions, SourceHeader};
use super::layout::{plan_frames, FramePlan};
use super::uid::deterministic_uid;
use super::SegError;

/// The Implementation Version Name written in the file meta group.
const IMPLEMENTATION_VERSION_NAME: &str = "PROXYSEG_010";

/// Writes a Segmentation Storage object (BINARY, bit-packed, Explicit VR Little Endian) for
/// `input` with `options`. Patient, study and frame of reference come from the first source.
///
/// The same input and options (with a fixed `content_date_time`) give byte-identical objects.
pub fn write_seg(
    input: &SegInput<'_>,
    options: &SegOptions,
) -> Result<FileDicomObject<InMemDicomObject>, SegError> {
    check_options(options)?;
    let (rows, columns, headers) = check_input(input)?;
    let plan = plan_frames(input, &headers, (rows, columns), options.omit_empty_frames)?;
    let first = input.sources[0].dataset;

    let mut ds = InMemDicomObject::new_empty();
    put_common(&mut ds, first, options)?;
    put_frame_of_reference(&mut ds, first, &plan);
    put_image(&mut ds, input, options, (rows, columns), plan.frames.len());
    put_source_references(&mut ds, &headers);
    put_dimensions(&mut ds, options, &plan);
    put_frames(&mut ds, input, &headers, &plan, (rows, columns));

    ds.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(deterministic_uid("proxyseg implementation class"))
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| SegError::Meta(e.to_string()))
}

/// Frame of Reference from the sources' patient geometry, else Patient Orientation.
fn put_frame_of_reference(ds: &mut InMemDicomObject, first: &InMemDicomObject, plan: &FramePlan) {
    match plan.geometry.as_ref() {
        Some(g) => {
            put_str(
                ds,
                tags::FRAME_OF_REFERENCE_UID,
                VR::UI,
                &g.first.frame_of_reference,
            );
            copy(ds, first, tags::POSITION_REFERENCE_INDICATOR, Some(VR::LO));
        }
        // No patient geometry (US, photographs): General Image needs Patient Orientation (2C).
        None => copy(ds, first, tags::PATIENT_ORIENTATION, Some(VR::CS)),
    }
}

/// Image Pixel and Segmentation Image modules, with the Segment Sequence.
fn put_image(
    ds: &mut InMemDicomObject,
    input: &SegInput<'_>,
    options: &SegOptions,
    (rows, columns): (u16, u16),
    frames: usize,
) {
    put_u16s(ds, tags::SAMPLES_PER_PIXEL, &[1]);
    put_str(ds, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    let frame_count = frames.to_string();
    put_str(ds, tags::NUMBER_OF_FRAMES, VR::IS, &frame_count);
    put_u16s(ds, tags::ROWS, &[rows]);
    put_u16s(ds, tags::COLUMNS, &[columns]);
    put_u16s(ds, tags::BITS_ALLOCATED, &[1]);
    put_u16s(ds, tags::BITS_STORED, &[1]);
    put_u16s(ds, tags::HIGH_BIT, &[0]);
    put_u16s(ds, tags::PIXEL_REPRESENTATION, &[0]);
    put_str(ds, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(ds, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    let segments = input.segments.iter().enumerate();
    put_seq(
        ds,
        tags::SEGMENT_SEQUENCE,
        segments
            .map(|(i, s)| segment_item(i as u16 + 1, s, options))
            .collect(),
    );
}

/// References to the sources: Source Image Sequence and Referenced Series Sequence.
fn put_source_references(ds: &mut InMemDicomObject, headers: &[SourceHeader]) {
    put_seq(
        ds,
        tags::SOURCE_IMAGE_SEQUENCE,
        headers.iter().map(|h| source_ref_item(h, None)).collect(),
    );
    put_seq(
        ds,
        tags::REFERENCED_SERIES_SEQUENCE,
        referenced_series(headers),
    );
}

/// Multi-frame Dimension module: segment number, then the source position if any.
fn put_dimensions(ds: &mut InMemDicomObject, options: &SegOptions, plan: &FramePlan) {
    let org_uid = deterministic_uid(&format!("{}/dimensions", options.sop_instance_uid));
    let mut organization = InMemDicomObject::new_empty();
    put_str(
        &mut organization,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &org_uid,
    );
    put_seq(
        ds,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![organization],
    );
    let mut dimensions = vec![dimension_item(
        &org_uid,
        tags::REFERENCED_SEGMENT_NUMBER,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        "Segment Number",
    )];
    if let Some((pointer, group, label)) = plan.second_dimension {
        dimensions.push(dimension_item(&org_uid, pointer, group, label));
    }
    put_seq(ds, tags::DIMENSION_INDEX_SEQUENCE, dimensions);
}

/// Functional groups and the packed pixels, frame by frame in one pass.
fn put_frames(
    ds: &mut InMemDicomObject,
    input: &SegInput<'_>,
    headers: &[SourceHeader],
    plan: &FramePlan,
    (rows, columns): (u16, u16),
) {
    put_seq(
        ds,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(
            plan.geometry.as_ref().map(|g| &g.first),
            plan.geometry
                .as_ref()
                .and_then(|g| g.slice_spacing(&plan.order)),
        )],
    );
    let pixels = u64::from(rows) * u64::from(columns);
    let mut packer = BitPacker::with_capacity(pixels * plan.frames.len() as u64);
    let mut per_frame = Vec::with_capacity(plan.frames.len());
    let derivation_code = codes::derivation_segmentation().to_item();
    for &(segment, pos) in &plan.frames {
        let sf = plan.order[pos];
        let source = &input.sources[sf.source];
        let frame = FrameRef {
            header: &headers[sf.source],
            position: plan
                .geometry
                .as_ref()
                .map(|g| &g.plane(sf).elements.position),
            source_frame: sf.frame,
            segment,
            position_index: pos as u32 + 1,
        };
        per_frame.push(per_frame_item(
            &frame,
            &derivation_code,
            plan.second_dimension.is_some(),
        ));
        packer.push_frame(source.masks[sf.frame][usize::from(segment) - 1]);
    }
    put_seq(ds, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(packer.finish()),
    ));
}
