//! The mirrored second look: a bundle's `[mirror]` table lists objects that are segmented
//! twice per frame, once as the frame is and once with the frame and every support pair
//! mirrored left-right (the resolution views of the objects it lists; the mirrored set gets
//! support contexts of its own, cached per set version like the first). The listed objects' final logits are the
//! mean of the two looks, the second mirrored back; the `[[threshold]]` cuts and `[[shape]]`
//! forms then apply as before. Other objects keep the first look's logits.
//!
//! ```toml
//! [mirror]
//! objects = ["optic disc", "optic cup"]   # support-set labels, case-insensitive
//! note = "free text"
//! ```
//!
//! Frame by frame only: memory mode (one memory bank per sequence, in one orientation) does not
//! take the second look. It doubles the time per frame. The Python reference is
//! `scripts/model/proxyseg_model/mirror.py`; session 25 chose it for the real bundle
//! (`scripts/model/STATUS.md`, rule E).
//!
//! This module owns the pure part: the rule, mirroring frames, masks and support sets, and
//! merging the looks; [`look`] runs the second look for [`super::infer::segment_frames`].

mod look;

pub(crate) use look::second_look;
pub use look::MirrorLook;

use crate::dicom::pixels::Frame;

use super::support::{Mask, SupportPair, SupportSet};
use super::threshold;
use super::views::{check_labels, same_label};

/// The suffix of a mirrored set's version: its support contexts are cached apart from the set's.
pub const VERSION_SUFFIX: &str = "-mirror";

/// The `[mirror]` table of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRule {
    /// Object labels that take the second look (matched case-insensitively).
    pub objects: Vec<String>,
    /// Free text.
    pub note: String,
}

impl MirrorRule {
    /// Labels present and non-empty, none twice.
    pub fn check(&self) -> Result<(), String> {
        let at = |e: String| format!("[mirror]: {e}");
        check_labels(&self.objects).map_err(at)?;
        for (i, o) in self.objects.iter().enumerate() {
            if self.objects[..i].iter().any(|p| same_label(p, o)) {
                return Err(at(format!("{o:?} is listed twice")));
            }
        }
        Ok(())
    }

    /// Indices (mask order) of the set's objects the rule lists.
    pub fn object_indices(&self, labels: &[&str]) -> Vec<usize> {
        labels
            .iter()
            .enumerate()
            .filter(|(_, l)| self.objects.iter().any(|o| same_label(o, l)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Reverses each `cols`-long row of a row-major plane set in place.
fn flip_rows<T>(data: &mut [T], cols: usize) {
    if cols > 0 {
        for row in data.chunks_exact_mut(cols) {
            row.reverse();
        }
    }
}

/// The frame mirrored left-right (every plane).
pub fn frame(f: &Frame) -> Frame {
    let mut out = f.clone();
    flip_rows(&mut out.data, f.cols);
    out
}

/// The mask mirrored left-right.
pub fn mask(m: &Mask) -> Mask {
    let mut out = m.clone();
    flip_rows(&mut out.data, m.cols);
    out
}

/// The set with every pair mirrored, under the version `"{version}-mirror"`.
pub fn support_set(set: &SupportSet) -> SupportSet {
    SupportSet {
        pairs: set
            .pairs
            .iter()
            .map(|p| SupportPair {
                image: frame(&p.image),
                masks: p.masks.iter().map(mask).collect(),
            })
            .collect(),
        ..shell(set)
    }
}

/// The mirrored set's name, version and objects without its pairs: enough for its cache keys.
pub fn shell(set: &SupportSet) -> SupportSet {
    SupportSet {
        name: set.name.clone(),
        version: format!("{}{VERSION_SUFFIX}", set.version),
        objects: set.objects.clone(),
        pairs: Vec::new(),
    }
}

/// Merges the second look into the first: for each listed object, `first` becomes
/// `(first + second mirrored back) * 0.5` (f32, as the reference); `second` holds the
/// mirrored frame's final logits as segmented, `cols` the frame's width.
pub fn merge(first: &mut [Vec<f32>], second: &[Vec<f32>], cols: usize, objects: &[usize]) {
    for &o in objects {
        let (Some(a), Some(b)) = (first.get_mut(o), second.get(o)) else {
            continue;
        };
        for (ra, rb) in a.chunks_exact_mut(cols).zip(b.chunks_exact(cols)) {
            for (x, v) in ra.iter_mut().zip(rb.iter().rev()) {
                *x = (*x + *v) * 0.5;
            }
        }
    }
}

/// The two looks' agreement per object (mask order): for each listed object, the Dice between
/// the first look's mask and the second look's mirrored back, each cut at the object's
/// threshold ([`threshold::cut`]; before `[[shape]]`), 1 when both are empty; `None` for
/// objects that take one look. A weak flag for a mask to review (session 26: on the check
/// cases, objects under 0.8 had mean Dice 0.80 against 0.92), not an out-of-domain guard: a
/// set applied to another set's images gets looks that agree on the wrong thing.
pub fn agreement(
    first: &[Vec<f32>],
    second: &[Vec<f32>],
    cols: usize,
    objects: &[usize],
    thresholds: &[f32],
) -> Vec<Option<f32>> {
    (0..first.len())
        .map(|o| {
            let b = second.get(o).filter(|_| objects.contains(&o))?;
            let t = threshold::cut(thresholds, o);
            let (mut both, mut total) = (0u64, 0u64);
            for (ra, rb) in first[o].chunks_exact(cols).zip(b.chunks_exact(cols)) {
                for (&x, &v) in ra.iter().zip(rb.iter().rev()) {
                    let (ia, ib) = (x > t, v > t);
                    both += u64::from(ia && ib);
                    total += u64::from(ia) + u64::from(ib);
                }
            }
            Some(if total == 0 {
                1.0
            } else {
                (2 * both) as f32 / total as f32
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::support::SupportObject;

    fn grey(rows: usize, cols: usize) -> Frame {
        Frame {
            index: 0,
            rows,
            cols,
            channels: 1,
            data: (0..rows * cols).map(|v| v as f32).collect(),
        }
    }

    #[test]
    fn frames_and_masks_mirror_row_by_row_and_back() {
        let f = grey(2, 3);
        let m = frame(&f);
        assert_eq!(m.data, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        assert_eq!(frame(&m), f);
        let rgb = Frame {
            channels: 3,
            data: (0..12).map(|v| v as f32).collect(),
            ..grey(2, 2)
        };
        assert_eq!(
            frame(&rgb).data,
            vec![1.0, 0.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0, 9.0, 8.0, 11.0, 10.0]
        );
        let k = Mask {
            rows: 2,
            cols: 2,
            data: vec![1, 0, 0, 0],
        };
        assert_eq!(mask(&k).data, vec![0, 1, 0, 0]);
    }

    #[test]
    fn a_mirrored_set_has_its_own_version_and_aligned_pairs() {
        let set = SupportSet {
            name: "fundus".into(),
            version: "3".into(),
            objects: vec![SupportObject {
                label: "optic cup".into(),
                ..Default::default()
            }],
            pairs: vec![SupportPair {
                image: grey(1, 3),
                masks: vec![Mask {
                    rows: 1,
                    cols: 3,
                    data: vec![1, 1, 0],
                }],
            }],
        };
        let m = support_set(&set);
        assert_eq!(
            (m.name.as_str(), m.version.as_str()),
            ("fundus", "3-mirror")
        );
        assert_eq!(m.pairs[0].image.data, vec![2.0, 1.0, 0.0]);
        assert_eq!(m.pairs[0].masks[0].data, vec![0, 1, 1]);
        assert_eq!(m.objects, set.objects);
    }

    #[test]
    fn merge_averages_listed_objects_with_the_second_look_mirrored_back() {
        let mut first = vec![vec![0.0f32, 2.0, 4.0, 6.0], vec![1.0; 4]];
        let second = vec![vec![10.0f32, 20.0, 30.0, 40.0], vec![9.0; 4]];
        merge(&mut first, &second, 2, &[0]);
        assert_eq!(first[0], vec![10.0, 6.0, 22.0, 18.0]);
        assert_eq!(first[1], vec![1.0; 4], "not listed: the first look");
    }

    #[test]
    fn agreement_is_the_dice_of_the_two_looks_masks_at_each_cut() {
        // 1 x 4 frame; object 0 listed with cut 0, object 1 listed with cut 5, object 2 not.
        let first = vec![
            vec![1.0f32, 1.0, -1.0, -1.0],
            vec![6.0, 4.0, 4.0, 4.0],
            vec![1.0; 4],
        ];
        // the second look as segmented (mirrored): its last column is the frame's first
        let second = vec![
            vec![-1.0f32, -1.0, 1.0, 1.0],
            vec![-9.0, -9.0, 6.0, 9.0],
            vec![-1.0; 4],
        ];
        let a = agreement(&first, &second, 4, &[0, 1], &[0.0, 5.0]);
        assert_eq!(a[0], Some(1.0), "the same two pixels once mirrored back");
        // first look {0}, second look back {0, 1}: 2 * 1 / 3
        assert_eq!(a[1], Some(2.0 / 3.0));
        assert_eq!(a[2], None, "not listed: one look");
        let none = vec![vec![-1.0f32; 4]];
        assert_eq!(agreement(&none, &none, 4, &[0], &[]), vec![Some(1.0)]);
        assert_eq!(
            agreement(&none, &[vec![1.0; 4]], 2, &[0], &[])[0],
            Some(0.0)
        );
    }

    #[test]
    fn rules_check_their_labels_and_match_case_insensitively() {
        let rule = MirrorRule {
            objects: vec!["Optic Cup".into(), "vessels".into()],
            note: String::new(),
        };
        assert!(rule.check().is_ok());
        assert_eq!(rule.object_indices(&["optic disc", "optic cup"]), vec![1]);
        assert!(rule.object_indices(&["fetal head"]).is_empty());
        let twice = MirrorRule {
            objects: vec!["cup".into(), "CUP".into()],
            note: String::new(),
        };
        assert_eq!(
            twice.check().unwrap_err(),
            "[mirror]: \"CUP\" is listed twice"
        );
        let empty = MirrorRule {
            objects: vec![],
            note: String::new(),
        };
        assert!(empty.check().unwrap_err().contains("objects must list"));
    }
}
