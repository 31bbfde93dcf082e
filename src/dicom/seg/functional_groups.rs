//! The Shared and Per-frame Functional Groups of a SEG (PS3.3 C.7.6.16, Table A.51-2): Pixel
//! Measures and Plane Orientation shared (Plane Orientation also without patient geometry); per
//! frame the Derivation Image (source reference), Frame Content (dimension index values), Plane
//! Position (volumes) and Segment Identification.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

use super::attributes::source_ref_item;
use super::elements::{put_seq, put_str, put_strs, put_u16s, put_u32s};
use super::geometry::{fit_ds, Plane};
use super::input::SourceHeader;

/// The one Shared Functional Groups item. `plane` is the plane whose Pixel Spacing, Slice
/// Thickness and Image Orientation all source frames share, or `None` without patient geometry;
/// `slice_spacing` the distance between the volume's adjacent slices, when regular (Pixel
/// Measures' Spacing Between Slices, which highdicom writes too and dwv needs to load a SEG).
///
/// Without patient geometry (photographs, ultrasound) the item still gets a Plane Orientation
/// (Patient) of `1\0\0\0\1\0`: the SEG frames lie in their source frames' pixel matrix, rows
/// along rows. The macro may be present without a Frame of Reference (dciodvfy accepts it), and
/// OHIF's SEG loader (`@cornerstonejs/adapters`) cannot place any frame of a SEG without it: it
/// reads the orientation of the first frame to compare it with the source's and fails with a
/// TypeError otherwise (found by `tests/pipeline/viewer_check.rs`).
pub(super) fn shared_groups(plane: Option<&Plane>, slice_spacing: Option<f64>) -> InMemDicomObject {
    let mut shared = InMemDicomObject::new_empty();
    let mut orientation = InMemDicomObject::new_empty();
    match plane {
        Some(plane) => {
            let mut measures = InMemDicomObject::new_empty();
            measures.put(plane.elements.spacing.clone());
            if let Some(thickness) = &plane.elements.thickness {
                measures.put(thickness.clone());
            }
            if let Some(spacing) = slice_spacing {
                put_str(
                    &mut measures,
                    tags::SPACING_BETWEEN_SLICES,
                    VR::DS,
                    &fit_ds(spacing),
                );
            }
            put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
            orientation.put(plane.elements.orientation.clone());
        }
        None => {
            let identity = ["1", "0", "0", "0", "1", "0"].map(String::from);
            put_strs(
                &mut orientation,
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                &identity,
            );
        }
    }
    put_seq(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    );
    shared
}

/// What one SEG frame shows.
pub(super) struct FrameRef<'a> {
    /// The referenced source's identifying attributes.
    pub(super) header: &'a SourceHeader,
    /// The source frame's Image Position (Patient), with patient geometry.
    pub(super) position: Option<&'a InMemElement>,
    /// 0-based frame of the source.
    pub(super) source_frame: usize,
    /// Segment number.
    pub(super) segment: u16,
    /// 1-based position of the source frame in SEG order (the second dimension's value).
    pub(super) position_index: u32,
}

/// One Per-frame Functional Groups item. `derivation_code` is the Derivation Code item,
/// `second_dimension` whether a dimension follows the segment number. With a position the frame
/// gets a Plane Position; without, its source frame index goes to Temporal Position Index.
pub(super) fn per_frame_item(
    frame: &FrameRef<'_>,
    derivation_code: &InMemDicomObject,
    second_dimension: bool,
) -> InMemDicomObject {
    let with_position = frame.position.is_some();
    let mut item = InMemDicomObject::new_empty();

    let mut derivation = InMemDicomObject::new_empty();
    put_seq(
        &mut derivation,
        tags::DERIVATION_CODE_SEQUENCE,
        vec![derivation_code.clone()],
    );
    let frame_number = frame
        .header
        .multi_frame
        .then_some(frame.source_frame as u32 + 1);
    put_seq(
        &mut derivation,
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![source_ref_item(frame.header, frame_number)],
    );
    put_seq(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);

    let mut content = InMemDicomObject::new_empty();
    let mut index_values = vec![u32::from(frame.segment)];
    if second_dimension {
        index_values.push(frame.position_index);
        if !with_position {
            put_u32s(
                &mut content,
                tags::TEMPORAL_POSITION_INDEX,
                &[frame.position_index],
            );
        }
    }
    put_u32s(&mut content, tags::DIMENSION_INDEX_VALUES, &index_values);
    put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);

    if let Some(element) = frame.position {
        let mut position = InMemDicomObject::new_empty();
        position.put(element.clone());
        put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
    }

    let mut ident = InMemDicomObject::new_empty();
    put_u16s(
        &mut ident,
        tags::REFERENCED_SEGMENT_NUMBER,
        &[frame.segment],
    );
    put_seq(
        &mut item,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![ident],
    );
    item
}
