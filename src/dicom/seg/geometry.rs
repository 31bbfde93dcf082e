//! Patient geometry of the source images: which sources have it, whether they agree, and where
//! each lies along the slice normal (so a volume's SEG frames are ordered by position).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

use super::elements::{first_item, get_int, get_str, items};

/// Tolerance when comparing direction cosines and pixel spacings.
const TOLERANCE: f64 = 1e-4;

/// The plane of one source frame in the patient coordinate system.
#[derive(Debug, Clone)]
pub struct Plane {
    /// Image Orientation (Patient): row then column direction cosines.
    pub orientation: [f64; 6],
    /// Image Position (Patient) of the first pixel.
    pub position: [f64; 3],
    /// Pixel Spacing (row spacing, column spacing).
    pub spacing: [f64; 2],
    /// Frame of Reference UID.
    pub frame_of_reference: String,
    /// The source's own elements, copied verbatim into the SEG (no DS re-formatting).
    pub elements: PlaneElements,
}

/// The source elements a [`Plane`] was read from.
#[derive(Debug, Clone)]
pub struct PlaneElements {
    /// Image Orientation (Patient).
    pub orientation: InMemElement,
    /// Image Position (Patient).
    pub position: InMemElement,
    /// Pixel Spacing.
    pub spacing: InMemElement,
    /// Slice Thickness, when the source has one.
    pub thickness: Option<InMemElement>,
}

impl Plane {
    /// The plane of each frame of `ds`: a single-frame image with Image Orientation, Image
    /// Position, Pixel Spacing and a Frame of Reference UID, or a multi-frame image whose
    /// Shared / Per-frame Functional Groups hold Plane Orientation, Plane Position and Pixel
    /// Measures. `None` without complete patient geometry (US, photographs).
    pub fn of_frames(ds: &InMemDicomObject) -> Option<Vec<Self>> {
        let frame_of_reference = get_str(ds, tags::FRAME_OF_REFERENCE_UID)?;
        let frames = get_int::<u32>(ds, tags::NUMBER_OF_FRAMES).unwrap_or(1) as usize;
        let per_frame = items(ds, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
        if per_frame.len() == frames && frames > 0 {
            let shared = first_item(ds, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
            let planes: Option<Vec<Self>> = per_frame
                .iter()
                .map(|item| {
                    let find = |group, tag| group_element(item, shared, group, tag);
                    Self::from_elements(
                        PlaneElements {
                            orientation: find(
                                tags::PLANE_ORIENTATION_SEQUENCE,
                                tags::IMAGE_ORIENTATION_PATIENT,
                            )?
                            .clone(),
                            position: find(
                                tags::PLANE_POSITION_SEQUENCE,
                                tags::IMAGE_POSITION_PATIENT,
                            )?
                            .clone(),
                            spacing: find(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)?
                                .clone(),
                            thickness: find(tags::PIXEL_MEASURES_SEQUENCE, tags::SLICE_THICKNESS)
                                .cloned(),
                        },
                        &frame_of_reference,
                    )
                })
                .collect();
            if planes.is_some() {
                return planes;
            }
        }
        if frames != 1 {
            return None;
        }
        let plane = Self::from_elements(
            PlaneElements {
                orientation: ds.get(tags::IMAGE_ORIENTATION_PATIENT)?.clone(),
                position: ds.get(tags::IMAGE_POSITION_PATIENT)?.clone(),
                spacing: ds.get(tags::PIXEL_SPACING)?.clone(),
                thickness: ds.get(tags::SLICE_THICKNESS).cloned(),
            },
            &frame_of_reference,
        )?;
        Some(vec![plane])
    }

    /// A plane from its elements; `None` when they do not hold 6, 3 and 2 numbers. DS values
    /// longer than the 16 characters the VR allows (float noise that some writers emit) are
    /// re-formatted, so an over-long source value never makes the SEG invalid.
    fn from_elements(mut elements: PlaneElements, frame_of_reference: &str) -> Option<Self> {
        for e in [
            &mut elements.orientation,
            &mut elements.position,
            &mut elements.spacing,
        ] {
            fit_ds_element(e);
        }
        if let Some(t) = elements.thickness.as_mut() {
            fit_ds_element(t);
        }
        let iop = elements.orientation.to_multi_float64().ok()?;
        let ipp = elements.position.to_multi_float64().ok()?;
        let spacing = elements.spacing.to_multi_float64().ok()?;
        if iop.len() != 6 || ipp.len() != 3 || spacing.len() != 2 {
            return None;
        }
        Some(Self {
            orientation: [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
            position: [ipp[0], ipp[1], ipp[2]],
            spacing: [spacing[0], spacing[1]],
            frame_of_reference: frame_of_reference.to_string(),
            elements,
        })
    }

    /// The slice normal: row direction x column direction.
    pub fn normal(&self) -> [f64; 3] {
        let [r0, r1, r2, c0, c1, c2] = self.orientation;
        [r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0]
    }

    /// Distance of the plane's origin along `normal`.
    pub fn distance_along(&self, normal: [f64; 3]) -> f64 {
        self.position
            .iter()
            .zip(normal.iter())
            .map(|(p, n)| p * n)
            .sum()
    }

    /// Why `other` cannot share this plane's orientation, spacing and frame of reference, if it
    /// cannot.
    pub fn disagreement(&self, other: &Plane) -> Option<String> {
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= TOLERANCE);
        if self.frame_of_reference != other.frame_of_reference {
            return Some(format!(
                "frames of reference {} and {}",
                self.frame_of_reference, other.frame_of_reference
            ));
        }
        if !close(&self.orientation, &other.orientation) {
            return Some(format!(
                "orientations {:?} and {:?}",
                self.orientation, other.orientation
            ));
        }
        if !close(&self.spacing, &other.spacing) {
            return Some(format!(
                "pixel spacings {:?} and {:?}",
                self.spacing, other.spacing
            ));
        }
        None
    }
}

/// An attribute of a functional group, from the per-frame item or else the shared one.
fn group_element<'a>(
    per_frame: &'a InMemDicomObject,
    shared: Option<&'a InMemDicomObject>,
    group: Tag,
    tag: Tag,
) -> Option<&'a InMemElement> {
    first_item(per_frame, group)
        .and_then(|g| g.get(tag))
        .or_else(|| {
            shared
                .and_then(|s| first_item(s, group))
                .and_then(|g| g.get(tag))
        })
}

/// Formats a number as a DS string of at most 16 characters.
pub(crate) fn fit_ds(v: f64) -> String {
    for precision in (0..=10).rev() {
        let s = format!("{v:.precision$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:.6e}")
}

/// Re-formats an element's DS values that exceed 16 characters; others stay verbatim.
fn fit_ds_element(e: &mut InMemElement) {
    let Ok(strs) = e.to_multi_str() else { return };
    if strs.iter().all(|s| s.trim().len() <= 16) {
        return;
    }
    let Ok(nums) = e.to_multi_float64() else {
        return;
    };
    let fixed: Vec<String> = nums.iter().map(|v| fit_ds(*v)).collect();
    *e = InMemElement::new(
        dicom_core::header::Header::tag(e),
        dicom_core::VR::DS,
        dicom_core::PrimitiveValue::Strs(fixed.into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_long_ds_values_are_refitted() {
        assert_eq!(fit_ds(-5.3999999999999995), "-5.4");
        assert_eq!(fit_ds(9.000000000000002), "9");
        assert!(fit_ds(-123_456_789.123_456).len() <= 16);
        let mut e = ds(
            tags::IMAGE_POSITION_PATIENT,
            &["-48.0", "-48.0", "-5.3999999999999995"],
        );
        fit_ds_element(&mut e);
        assert_eq!(
            e.to_multi_str().unwrap().to_vec(),
            vec!["-48", "-48", "-5.4"]
        );
    }

    fn ds(tag: Tag, values: &[&str]) -> InMemElement {
        InMemElement::new(
            tag,
            dicom_core::VR::DS,
            dicom_core::PrimitiveValue::Strs(values.iter().map(|v| v.to_string()).collect()),
        )
    }

    fn plane(z: f64) -> Plane {
        let z = z.to_string();
        Plane::from_elements(
            PlaneElements {
                orientation: ds(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    &["1", "0", "0", "0", "1", "0"],
                ),
                position: ds(tags::IMAGE_POSITION_PATIENT, &["0", "0", &z]),
                spacing: ds(tags::PIXEL_SPACING, &["0.5", "0.5"]),
                thickness: None,
            },
            "1.2.3",
        )
        .expect("plane")
    }

    #[test]
    fn multi_frame_planes_come_from_functional_groups() {
        use super::super::elements::{put_seq, put_str};
        let mut shared = InMemDicomObject::new_empty();
        let mut orientation = InMemDicomObject::new_empty();
        orientation.put(ds(
            tags::IMAGE_ORIENTATION_PATIENT,
            &["1", "0", "0", "0", "1", "0"],
        ));
        put_seq(
            &mut shared,
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![orientation],
        );
        let mut measures = InMemDicomObject::new_empty();
        measures.put(ds(tags::PIXEL_SPACING, &["0.7", "0.7"]));
        put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
        let per_frame = ["4", "2"]
            .iter()
            .map(|z| {
                let mut position = InMemDicomObject::new_empty();
                position.put(ds(tags::IMAGE_POSITION_PATIENT, &["0", "0", z]));
                let mut item = InMemDicomObject::new_empty();
                put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
                item
            })
            .collect();
        let mut obj = InMemDicomObject::new_empty();
        put_str(
            &mut obj,
            tags::FRAME_OF_REFERENCE_UID,
            dicom_core::VR::UI,
            "1.2.3",
        );
        put_str(&mut obj, tags::NUMBER_OF_FRAMES, dicom_core::VR::IS, "2");
        put_seq(
            &mut obj,
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![shared],
        );
        put_seq(
            &mut obj,
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            per_frame,
        );
        let planes = Plane::of_frames(&obj).expect("planes");
        assert_eq!(planes.len(), 2);
        assert_eq!(planes[0].position, [0.0, 0.0, 4.0]);
        assert_eq!(planes[1].position, [0.0, 0.0, 2.0]);
        assert_eq!(planes[1].spacing, [0.7, 0.7]);
        // Without a frame of reference there is no patient geometry.
        obj.remove_element(tags::FRAME_OF_REFERENCE_UID);
        assert!(Plane::of_frames(&obj).is_none());
    }

    #[test]
    fn axial_normal_points_to_head() {
        let p = plane(12.5);
        assert_eq!(p.normal(), [0.0, 0.0, 1.0]);
        assert_eq!(p.distance_along(p.normal()), 12.5);
    }

    #[test]
    fn disagreement_names_what_differs() {
        let a = plane(0.0);
        let mut b = plane(3.0);
        assert!(a.disagreement(&b).is_none());
        b.spacing = [0.7, 0.5];
        assert!(a.disagreement(&b).unwrap().contains("spacing"));
        b = plane(3.0);
        b.frame_of_reference = "1.2.4".into();
        assert!(a.disagreement(&b).unwrap().contains("frames of reference"));
    }
}
