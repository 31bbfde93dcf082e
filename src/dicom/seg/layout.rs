//! The frame layout of a SEG: which source frames, in which order (along the slice normal for
//! volumes), which (segment, source frame) pairs become SEG frames, and the dimensions that index
//! them.

use dicom_core::Tag;
use dicom_dictionary_std::tags;

use super::bitpack::{is_empty_mask, packed_len};
use super::geometry::Plane;
use super::input::{SegInput, SourceHeader};
use super::SegError;

/// One source frame, in SEG order.
#[derive(Debug, Clone, Copy)]
pub(super) struct SourceFrame {
    /// Index into `SegInput::sources`.
    pub(super) source: usize,
    /// 0-based frame of that source.
    pub(super) frame: usize,
}

/// The patient geometry shared by all sources, when every source frame has one.
pub(super) struct VolumeGeometry {
    /// The plane of source 0, frame 0, whose spacing, thickness and orientation all frames share.
    pub(super) first: Plane,
    /// The plane of every frame of every source: `planes[source][frame]`.
    pub(super) planes: Vec<Vec<Plane>>,
}

impl VolumeGeometry {
    /// The plane of a source frame.
    pub(super) fn plane(&self, sf: SourceFrame) -> &Plane {
        &self.planes[sf.source][sf.frame]
    }

    /// The distance between adjacent slices along the normal, when the source frames in `order`
    /// (SEG order) lie on a regular grid of at least two distinct positions; `None` otherwise.
    pub(super) fn slice_spacing(&self, order: &[SourceFrame]) -> Option<f64> {
        let normal = self.first.normal();
        let mut distances: Vec<f64> = order
            .iter()
            .map(|&sf| self.plane(sf).distance_along(normal))
            .collect();
        distances.dedup_by(|a, b| (*a - *b).abs() <= SLICE_TOLERANCE_MM);
        let steps: Vec<f64> = distances.windows(2).map(|w| w[1] - w[0]).collect();
        let first = *steps.first()?;
        let regular = steps
            .iter()
            .all(|s| (s - first).abs() <= SLICE_TOLERANCE_MM);
        (regular && first.abs() > SLICE_TOLERANCE_MM).then_some(first.abs())
    }
}

/// Tolerance (mm) when comparing slice positions along the normal (DS values are rounded).
const SLICE_TOLERANCE_MM: f64 = 1e-2;

/// `Some` when every frame of every source has patient geometry (single-frame CT/MR slices, or
/// enhanced multi-frame images with plane functional groups); an error when they disagree.
pub(super) fn volume_geometry(input: &SegInput<'_>) -> Result<Option<VolumeGeometry>, SegError> {
    let planes: Option<Vec<Vec<Plane>>> = input
        .sources
        .iter()
        .map(|s| Plane::of_frames(s.dataset))
        .collect();
    let Some(planes) = planes else {
        return Ok(None);
    };
    let first = planes[0][0].clone();
    for (i, source) in planes.iter().enumerate() {
        for (f, p) in source.iter().enumerate() {
            if let Some(why) = first.disagreement(p) {
                return Err(SegError::InconsistentGeometry(format!(
                    "source 0 frame 1 and source {i} frame {}: {why}",
                    f + 1
                )));
            }
        }
    }
    Ok(Some(VolumeGeometry { first, planes }))
}

/// Source frames in SEG order: by position along the normal for volumes (stable for ties),
/// otherwise sources as given and frames in order.
pub(super) fn source_order(
    headers: &[SourceHeader],
    geometry: Option<&VolumeGeometry>,
) -> Vec<SourceFrame> {
    let all = headers
        .iter()
        .enumerate()
        .flat_map(|(source, h)| (0..h.frames).map(move |frame| SourceFrame { source, frame }));
    match geometry {
        Some(g) => {
            let normal = g.first.normal();
            let mut keyed: Vec<(f64, SourceFrame)> = all
                .map(|sf| (g.plane(sf).distance_along(normal), sf))
                .collect();
            // Stable sort: frames at the same position keep their input order.
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            keyed.into_iter().map(|(_, sf)| sf).collect()
        }
        None => all.collect(),
    }
}

/// The second dimension after Referenced Segment Number, when there is more than one source frame
/// or patient geometry: (Dimension Index Pointer, Functional Group Pointer, label).
pub(super) type Dimension = (Tag, Tag, &'static str);

/// The frames a SEG will hold and how they are indexed.
pub(super) struct FramePlan {
    /// Source frames in SEG order.
    pub(super) order: Vec<SourceFrame>,
    /// SEG frames: (segment number, index into `order`), segment-major.
    pub(super) frames: Vec<(u16, usize)>,
    /// Patient geometry shared by all sources, if they have one.
    pub(super) geometry: Option<VolumeGeometry>,
    /// The dimension after the segment number, if any.
    pub(super) second_dimension: Option<Dimension>,
}

/// Plans the SEG frames: segment by segment, source frames in order, without empty masks when
/// `omit_empty`; keeps one frame when every mask is empty (Number of Frames must be >= 1).
pub(super) fn plan_frames(
    input: &SegInput<'_>,
    headers: &[SourceHeader],
    (rows, columns): (u16, u16),
    omit_empty: bool,
) -> Result<FramePlan, SegError> {
    let geometry = volume_geometry(input)?;
    let order = source_order(headers, geometry.as_ref());
    let mut frames: Vec<(u16, usize)> = Vec::new();
    for seg in 0..input.segments.len() {
        for (pos, sf) in order.iter().enumerate() {
            let mask = input.sources[sf.source].masks[sf.frame][seg];
            if omit_empty && is_empty_mask(mask) {
                continue;
            }
            frames.push((seg as u16 + 1, pos));
        }
    }
    if frames.is_empty() {
        frames.push((1, 0));
    }
    // Pixel Data in Explicit VR Little Endian has a 32-bit length (0xFFFFFFFF = undefined).
    let pixels = u64::from(rows) * u64::from(columns);
    let pixel_bytes = packed_len(pixels, frames.len() as u64);
    if pixel_bytes >= u64::from(u32::MAX) {
        return Err(SegError::InvalidInput(format!(
            "{} frames of {rows}x{columns} need {pixel_bytes} bytes of Pixel Data, more than \
             one DICOM element holds: split the SEG",
            frames.len()
        )));
    }
    let second_dimension = if geometry.is_some() {
        Some((
            tags::IMAGE_POSITION_PATIENT,
            tags::PLANE_POSITION_SEQUENCE,
            "Image Position Patient",
        ))
    } else if order.len() > 1 {
        // No patient geometry (US cine, photographs): index the source frame by its temporal
        // position in the Frame Content.
        Some((
            tags::TEMPORAL_POSITION_INDEX,
            tags::FRAME_CONTENT_SEQUENCE,
            "Source Frame",
        ))
    } else {
        None
    };
    Ok(FramePlan {
        order,
        frames,
        geometry,
        second_dimension,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::seg::geometry::PlaneElements;
    use dicom_object::mem::InMemElement;

    fn ds(tag: Tag, values: &[&str]) -> InMemElement {
        InMemElement::new(
            tag,
            dicom_core::VR::DS,
            dicom_core::PrimitiveValue::Strs(values.iter().map(|v| v.to_string()).collect()),
        )
    }

    /// A volume of one single-frame source per z, in the given order.
    fn volume(zs: &[f64]) -> (VolumeGeometry, Vec<SourceFrame>) {
        let planes: Vec<Vec<Plane>> = zs
            .iter()
            .map(|z| {
                let elements = PlaneElements {
                    orientation: ds(
                        tags::IMAGE_ORIENTATION_PATIENT,
                        &["1", "0", "0", "0", "1", "0"],
                    ),
                    position: ds(tags::IMAGE_POSITION_PATIENT, &["0", "0", &z.to_string()]),
                    spacing: ds(tags::PIXEL_SPACING, &["0.5", "0.5"]),
                    thickness: None,
                };
                vec![Plane {
                    orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                    position: [0.0, 0.0, *z],
                    spacing: [0.5, 0.5],
                    frame_of_reference: "1.2.3".into(),
                    elements,
                }]
            })
            .collect();
        let g = VolumeGeometry {
            first: planes[0][0].clone(),
            planes,
        };
        let mut order: Vec<SourceFrame> = (0..zs.len())
            .map(|source| SourceFrame { source, frame: 0 })
            .collect();
        order.sort_by(|a, b| zs[a.source].total_cmp(&zs[b.source]));
        (g, order)
    }

    #[test]
    fn slice_spacing_only_for_regular_grids() {
        let (g, order) = volume(&[5.0, -2.5, 0.0, 2.5]);
        assert_eq!(g.slice_spacing(&order), Some(2.5));
        // DS rounding noise is tolerated; two frames at one position count once.
        let (g, order) = volume(&[0.0, 3.6, 7.2001, 7.2001]);
        assert!((g.slice_spacing(&order).unwrap() - 3.6).abs() < 1e-3);
        // A gap, a single slice: no Spacing Between Slices.
        let (g, order) = volume(&[0.0, 2.5, 7.5]);
        assert_eq!(g.slice_spacing(&order), None);
        let (g, order) = volume(&[1.0]);
        assert_eq!(g.slice_spacing(&order), None);
    }
}
