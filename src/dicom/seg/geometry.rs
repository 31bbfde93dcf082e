//! Patient geometry of the source images: which sources have it, whether they agree, and where
//! each lies along the slice normal (so a volume's SEG frames are ordered by position).

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::elements::{get_f64s, get_str};

/// Tolerance when comparing direction cosines and pixel spacings.
const TOLERANCE: f64 = 1e-4;

/// The plane of a single-frame source image in the patient coordinate system.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    /// Image Orientation (Patient): row then column direction cosines.
    pub orientation: [f64; 6],
    /// Image Position (Patient) of the first pixel.
    pub position: [f64; 3],
    /// Pixel Spacing (row spacing, column spacing).
    pub spacing: [f64; 2],
    /// Frame of Reference UID.
    pub frame_of_reference: String,
}

impl Plane {
    /// The plane of `ds` when it is a single-frame image with Image Orientation, Image Position,
    /// Pixel Spacing and a Frame of Reference UID; `None` otherwise (US, photographs, multi-frame).
    pub fn of(ds: &InMemDicomObject) -> Option<Self> {
        let frames = super::elements::get_int::<u32>(ds, tags::NUMBER_OF_FRAMES).unwrap_or(1);
        if frames > 1 {
            return None;
        }
        let iop = get_f64s(ds, tags::IMAGE_ORIENTATION_PATIENT)?;
        let ipp = get_f64s(ds, tags::IMAGE_POSITION_PATIENT)?;
        let spacing = get_f64s(ds, tags::PIXEL_SPACING)?;
        let frame_of_reference = get_str(ds, tags::FRAME_OF_REFERENCE_UID)?;
        if iop.len() != 6 || ipp.len() != 3 || spacing.len() != 2 {
            return None;
        }
        Some(Self {
            orientation: [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
            position: [ipp[0], ipp[1], ipp[2]],
            spacing: [spacing[0], spacing[1]],
            frame_of_reference,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(z: f64) -> Plane {
        Plane {
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            position: [0.0, 0.0, z],
            spacing: [0.5, 0.5],
            frame_of_reference: "1.2.3".into(),
        }
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
