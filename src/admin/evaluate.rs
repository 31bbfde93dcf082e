//! Support-set quality: leave-one-out Dice and flags for masks that would spoil the prompt.
//!
//! Leave-one-out: each pair's image is segmented with the other pairs as support and compared
//! with its own masks. Flags (the paper shows empty masks ruin the prompt):
//! - `Empty`: no foreground pixel;
//! - `Tiny`: foreground below [`TINY_FRACTION`] of the image;
//! - `AreaOutlier`: the mask's area fraction is more than [`AREA_Z`] standard deviations from
//!   the mean of the *other* pairs' masks of that object (leave-one-out z-score: with all
//!   pairs included, |z| can never exceed (N-1)/sqrt(N), so a plain z > 3 would need N >= 11);
//!   needs at least 3 other pairs with some spread;
//! - `DiceOutlier`: the pair's Dice for an object is more than `max(2 sd, 0.2)` below that
//!   object's mean Dice over the other pairs;
//! - `ShapeRuleOff`: the mask keeps its object from the form the bundle's `[[shape]]` rules
//!   list (more than one region, or not convex enough for a convex or ellipse rule), so every
//!   result of the set loses that form while the pair is in it (the segmenter says which).
//!
//! and one set-level flag per object (no pair: the pairs together teach the object poorly):
//! - `PoorSet`: the object's mean leave-one-out Dice over all pairs is below
//!   [`POOR_SET_DICE`]. Per-pair outliers compare pairs with each other, so a set whose pairs
//!   are all equally bad raises none of them; this one catches it.
//!
//! Pure logic: no database, no network; the caller supplies the segmenter and the images.

use crate::admin::segment::{DicomImage, SegmentError, Segmenter};
use crate::store::support::{Mask, SupportSetData};

/// Masks below this fraction of the image's pixels are flagged as tiny (0.1 %).
pub const TINY_FRACTION: f64 = 0.001;
/// Area z-score above which a mask is an outlier.
pub const AREA_Z: f64 = 3.0;
/// Smallest Dice drop below the others' mean that counts as an outlier.
pub const DICE_DROP_MIN: f64 = 0.2;
/// An object whose mean leave-one-out Dice over the set's pairs is below this is flagged
/// [`FlagKind::PoorSet`]: with fewer than half of its pixels agreeing on average, the set is
/// unlikely to prompt the object well (add pairs, or check the masks and the bundle).
pub const POOR_SET_DICE: f64 = 0.5;

/// Kinds of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// No foreground.
    Empty,
    /// Less than 0.1 % of the image.
    Tiny,
    /// Area far from the other pairs'.
    AreaOutlier,
    /// Leave-one-out Dice far below the others'.
    DiceOutlier,
    /// Set level: the object's mean leave-one-out Dice is below [`POOR_SET_DICE`].
    PoorSet,
    /// The mask keeps its object from the form the bundle's `[[shape]]` rules list
    /// ([`Segmenter::shape_blockers`]).
    ShapeRuleOff,
}

/// One flagged mask (or, with no pair, one object of the whole set).
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    /// Pair number; `None` for a set-level flag ([`FlagKind::PoorSet`]).
    pub pair: Option<u32>,
    /// 0-based object index.
    pub object: usize,
    /// Kind.
    pub kind: FlagKind,
    /// Human-readable detail with the numbers.
    pub detail: String,
}

/// Leave-one-out result of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairDice {
    /// Pair number.
    pub pair: u32,
    /// Dice per object.
    pub dice: Vec<f64>,
}

impl PairDice {
    /// Mean over objects.
    pub fn mean(&self) -> f64 {
        mean(&self.dice)
    }
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Per pair.
    pub pairs: Vec<PairDice>,
    /// Mean Dice per object.
    pub object_mean: Vec<f64>,
    /// Mean over pairs and objects.
    pub mean: f64,
    /// Every flag: mask flags first, then shape-rule blockers, then Dice outliers, then set-level
    /// flags.
    pub flags: Vec<Flag>,
}

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Fewer than 2 pairs: nothing to leave out.
    #[error("leave-one-out evaluation needs at least 2 pairs, the set has {0}")]
    TooFewPairs(usize),
    /// The segmenter failed on a pair.
    #[error("segmenting pair {pair}: {source}")]
    Segment {
        /// Pair number.
        pair: u32,
        /// Engine error.
        source: SegmentError,
    },
    /// The segmenter returned the wrong number or size of masks.
    #[error("pair {pair}: {message}")]
    Shape {
        /// Pair number.
        pair: u32,
        /// What is wrong.
        message: String,
    },
    /// A stored image could not be read.
    #[error("pair {pair}: {source}")]
    Image {
        /// Pair number.
        pair: u32,
        /// What is wrong.
        source: StoredImageError,
    },
    /// The bundle's `[[shape]]` rules could not be checked against the set's masks.
    #[error("checking the bundle's shape rules: {0}")]
    ShapeRules(SegmentError),
}

/// Why a stored support image could not be loaded for evaluation.
#[derive(Debug, thiserror::Error)]
pub enum StoredImageError {
    /// The file could not be read (its server path goes to the log only, review L7).
    #[error("cannot read a stored support image: {0}")]
    Read(std::io::ErrorKind),
    /// It no longer parses as a support image.
    #[error(transparent)]
    Parse(#[from] crate::admin::masks::UploadError),
}

/// Dice coefficient of two masks of equal size; two empty masks agree perfectly (1.0).
pub fn dice(a: &Mask, b: &Mask) -> f64 {
    let (mut inter, mut sa, mut sb) = (0usize, 0usize, 0usize);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        let (x, y) = (x != 0, y != 0);
        inter += (x && y) as usize;
        sa += x as usize;
        sb += y as usize;
    }
    if sa + sb == 0 {
        1.0
    } else {
        2.0 * inter as f64 / (sa + sb) as f64
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Flags empty, tiny and area-outlier masks of a set (no segmentation needed).
pub fn flag_masks(set: &SupportSetData) -> Vec<Flag> {
    let mut out = Vec::new();
    for k in 0..set.objects.len() {
        let fractions: Vec<f64> = set
            .pairs
            .iter()
            .map(|p| {
                let m = &p.masks[k];
                m.area() as f64 / (m.rows * m.cols).max(1) as f64
            })
            .collect();
        for (i, p) in set.pairs.iter().enumerate() {
            let f = fractions[i];
            let label = &set.objects[k].label;
            if f == 0.0 {
                out.push(Flag {
                    pair: Some(p.number),
                    object: k,
                    kind: FlagKind::Empty,
                    detail: format!("{label}: the mask is empty"),
                });
                continue;
            }
            if f < TINY_FRACTION {
                out.push(Flag {
                    pair: Some(p.number),
                    object: k,
                    kind: FlagKind::Tiny,
                    detail: format!(
                        "{label}: the mask covers {:.4} % of the image (< {} %)",
                        f * 100.0,
                        TINY_FRACTION * 100.0
                    ),
                });
            }
            let others: Vec<f64> = fractions
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &x)| x)
                .collect();
            let (m, s) = (mean(&others), sd(&others));
            if others.len() >= 3 && s > 0.0 && ((f - m) / s).abs() > AREA_Z {
                out.push(Flag {
                    pair: Some(p.number),
                    object: k,
                    kind: FlagKind::AreaOutlier,
                    detail: format!(
                        "{label}: area {:.2} % of the image, the other pairs {:.2} ± {:.2} % (z = {:.1})",
                        f * 100.0,
                        m * 100.0,
                        s * 100.0,
                        (f - m) / s
                    ),
                });
            }
        }
    }
    out
}

/// Flags pairs whose Dice for an object is far below the other pairs' (see the module doc).
pub fn flag_dice(set: &SupportSetData, pairs: &[PairDice]) -> Vec<Flag> {
    let mut out = Vec::new();
    for k in 0..set.objects.len() {
        for (i, p) in pairs.iter().enumerate() {
            let others: Vec<f64> = pairs
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, q)| q.dice[k])
                .collect();
            if others.len() < 2 {
                continue;
            }
            let (m, s) = (mean(&others), sd(&others));
            let drop = m - p.dice[k];
            if drop > (2.0 * s).max(DICE_DROP_MIN) {
                out.push(Flag {
                    pair: Some(p.pair),
                    object: k,
                    kind: FlagKind::DiceOutlier,
                    detail: format!(
                        "{}: leave-one-out Dice {:.3}, the other pairs {:.3} ± {:.3}",
                        set.objects[k].label, p.dice[k], m, s
                    ),
                });
            }
        }
    }
    out
}

/// Flags objects whose mean leave-one-out Dice (`object_mean`, in object order) is below
/// [`POOR_SET_DICE`] (set level: no pair).
pub fn flag_poor_set(set: &SupportSetData, object_mean: &[f64], pairs: usize) -> Vec<Flag> {
    set.objects
        .iter()
        .zip(object_mean)
        .enumerate()
        .filter(|(_, (_, &m))| m < POOR_SET_DICE)
        .map(|(k, (o, &m))| Flag {
            pair: None,
            object: k,
            kind: FlagKind::PoorSet,
            detail: format!(
                "{}: mean leave-one-out Dice {m:.3} over {pairs} pairs is below {POOR_SET_DICE}: \
                 the set teaches this object poorly (add pairs, check the masks)",
                o.label
            ),
        })
        .collect()
}

/// The set without pair `number`, as a distinct cache variant.
pub fn without_pair(set: &SupportSetData, number: u32) -> SupportSetData {
    let mut s = set.clone();
    s.pairs.retain(|p| p.number != number);
    s.variant = format!("loo-{number}");
    s
}

/// Leave-one-out evaluation: `image` loads a pair's stored image.
pub fn leave_one_out(
    set: &SupportSetData,
    segmenter: &dyn Segmenter,
    image: impl Fn(&crate::store::support::SupportPairData) -> Result<DicomImage, StoredImageError>,
) -> Result<Report, EvalError> {
    if set.pairs.len() < 2 {
        return Err(EvalError::TooFewPairs(set.pairs.len()));
    }
    let k = set.objects.len();
    let mut pairs = Vec::with_capacity(set.pairs.len());
    for p in &set.pairs {
        let img = image(p).map_err(|source| EvalError::Image {
            pair: p.number,
            source,
        })?;
        let subset = without_pair(set, p.number);
        let got = segmenter
            .segment(&subset, &img)
            .map_err(|source| EvalError::Segment {
                pair: p.number,
                source,
            })?;
        if got.len() != k {
            return Err(EvalError::Shape {
                pair: p.number,
                message: format!("the engine returned {} masks for {k} objects", got.len()),
            });
        }
        let mut d = Vec::with_capacity(k);
        for (m, truth) in got.iter().zip(&p.masks) {
            if (m.rows, m.cols) != (truth.rows, truth.cols) || m.data.len() != truth.data.len() {
                return Err(EvalError::Shape {
                    pair: p.number,
                    message: format!(
                        "the engine returned a {}x{} mask for a {}x{} image",
                        m.rows, m.cols, truth.rows, truth.cols
                    ),
                });
            }
            d.push(dice(m, truth));
        }
        pairs.push(PairDice {
            pair: p.number,
            dice: d,
        });
    }
    let object_mean: Vec<f64> = (0..k)
        .map(|j| mean(&pairs.iter().map(|p| p.dice[j]).collect::<Vec<_>>()))
        .collect();
    let mut flags = flag_masks(set);
    let blockers = segmenter
        .shape_blockers(set)
        .map_err(EvalError::ShapeRules)?;
    flags.extend(blockers.into_iter().map(|b| Flag {
        pair: Some(b.pair),
        object: b.object,
        kind: FlagKind::ShapeRuleOff,
        detail: b.detail,
    }));
    flags.extend(flag_dice(set, &pairs));
    flags.extend(flag_poor_set(set, &object_mean, pairs.len()));
    Ok(Report {
        mean: mean(&object_mean),
        object_mean,
        pairs,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::segment::ShapeBlocker;
    use crate::store::support::{default_code, ObjectDef, SupportPairData};

    fn square(n: usize, x0: usize, y0: usize, side: usize) -> Mask {
        let mut data = vec![0u8; n * n];
        for y in y0..(y0 + side).min(n) {
            for x in x0..(x0 + side).min(n) {
                data[y * n + x] = 1;
            }
        }
        Mask {
            rows: n,
            cols: n,
            data,
        }
    }

    fn set(masks: Vec<Mask>) -> SupportSetData {
        objects_set(&["disc"], masks.into_iter().map(|m| vec![m]).collect())
    }

    /// A set with these object labels; `pairs[i]` holds pair i+1's masks in object order.
    fn objects_set(labels: &[&str], pairs: Vec<Vec<Mask>>) -> SupportSetData {
        SupportSetData {
            name: "t".into(),
            version: 3,
            variant: String::new(),
            bundle: "b".into(),
            objects: labels
                .iter()
                .map(|l| ObjectDef {
                    label: l.to_string(),
                    category: default_code(),
                    property_type: default_code(),
                    color: [1, 2, 3],
                })
                .collect(),
            pairs: pairs
                .into_iter()
                .enumerate()
                .map(|(i, masks)| SupportPairData {
                    number: i as u32 + 1,
                    image_path: "/nonexistent".into(),
                    sop_instance_uid: format!("1.2.{i}"),
                    rows: masks[0].rows,
                    cols: masks[0].cols,
                    masks,
                })
                .collect(),
        }
    }

    /// Deterministic test double: predicts the union of the support masks, and records the
    /// subsets it was given.
    struct UnionOfSupport(std::sync::Mutex<Vec<(String, Vec<u32>)>>);

    impl Segmenter for UnionOfSupport {
        fn segment(&self, s: &SupportSetData, _: &DicomImage) -> Result<Vec<Mask>, SegmentError> {
            self.0.lock().unwrap().push((
                s.variant.clone(),
                s.pairs.iter().map(|p| p.number).collect(),
            ));
            Ok((0..s.objects.len())
                .map(|k| {
                    let mut m = s.pairs[0].masks[k].clone();
                    for p in &s.pairs[1..] {
                        for (a, b) in m.data.iter_mut().zip(&p.masks[k].data) {
                            *a |= *b;
                        }
                    }
                    m
                })
                .collect())
        }

        fn track_refusal(&self, _: &str, _: &[&str]) -> Option<String> {
            Some("a test double does not track".into())
        }

        fn shape_blockers(&self, _: &SupportSetData) -> Result<Vec<ShapeBlocker>, SegmentError> {
            Ok(Vec::new())
        }
    }

    /// [`UnionOfSupport`] whose bundle reports these shape-rule blockers (or fails to check).
    struct WithBlockers(UnionOfSupport, Result<Vec<ShapeBlocker>, &'static str>);

    impl Segmenter for WithBlockers {
        fn segment(&self, s: &SupportSetData, i: &DicomImage) -> Result<Vec<Mask>, SegmentError> {
            self.0.segment(s, i)
        }

        fn track_refusal(&self, b: &str, l: &[&str]) -> Option<String> {
            self.0.track_refusal(b, l)
        }

        fn shape_blockers(&self, _: &SupportSetData) -> Result<Vec<ShapeBlocker>, SegmentError> {
            self.1.clone().map_err(SegmentError::Result)
        }
    }

    #[test]
    fn a_mask_that_turns_a_shape_rule_off_is_flagged_for_its_pair() {
        let s = set(vec![
            square(32, 8, 8, 10),
            square(32, 9, 8, 10),
            square(32, 8, 9, 10),
        ]);
        let blocker = ShapeBlocker {
            pair: 2,
            object: 0,
            detail: "it is 2 separate regions".into(),
        };
        let seg = WithBlockers(UnionOfSupport(Default::default()), Ok(vec![blocker]));
        let r = leave_one_out(&s, &seg, |_| Ok(dummy_image())).unwrap();
        let off: Vec<&Flag> = r
            .flags
            .iter()
            .filter(|f| f.kind == FlagKind::ShapeRuleOff)
            .collect();
        assert_eq!(off.len(), 1, "{:?}", r.flags);
        assert_eq!(
            (off[0].pair, off[0].object, off[0].detail.as_str()),
            (Some(2), 0, "it is 2 separate regions")
        );
        // no blockers, no flag; a bundle whose rules cannot be checked fails the evaluation
        let clean = WithBlockers(UnionOfSupport(Default::default()), Ok(Vec::new()));
        let r = leave_one_out(&s, &clean, |_| Ok(dummy_image())).unwrap();
        assert!(r.flags.iter().all(|f| f.kind != FlagKind::ShapeRuleOff));
        let broken = WithBlockers(UnionOfSupport(Default::default()), Err("no bundle"));
        let e = leave_one_out(&s, &broken, |_| Ok(dummy_image())).unwrap_err();
        assert!(matches!(e, EvalError::ShapeRules(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "checking the bundle's shape rules: no bundle"
        );
    }

    fn dummy_image() -> DicomImage {
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
            .media_storage_sop_instance_uid("1.2.3")
            .transfer_syntax("1.2.840.10008.1.2.1")
            .build()
            .unwrap();
        DicomImage {
            object: InMemDicomObject::new_empty().with_exact_meta(meta),
            path: None,
            sop_instance_uid: "1.2.3".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            modality: "OT".into(),
            rows: 32,
            cols: 32,
        }
    }

    #[test]
    fn dice_values() {
        let a = square(10, 0, 0, 4);
        assert_eq!(dice(&a, &a), 1.0);
        assert_eq!(dice(&a, &square(10, 5, 5, 4)), 0.0);
        let half = square(10, 0, 0, 2);
        assert!((dice(&a, &half) - 2.0 * 4.0 / 20.0).abs() < 1e-12);
        let empty = square(10, 0, 0, 0);
        assert_eq!(dice(&empty, &empty), 1.0);
        assert_eq!(dice(&a, &empty), 0.0);
    }

    #[test]
    fn leave_one_out_uses_the_other_pairs_and_flags_the_odd_one() {
        // Four similar squares and one far away: its Dice drops, the others stay high.
        let s = set(vec![
            square(32, 8, 8, 10),
            square(32, 9, 8, 10),
            square(32, 8, 9, 10),
            square(32, 9, 9, 10),
            square(32, 20, 20, 10),
        ]);
        let seg = UnionOfSupport(Default::default());
        let r = leave_one_out(&s, &seg, |_| Ok(dummy_image())).unwrap();
        let calls = seg.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 5);
        assert_eq!(calls[0], ("loo-1".to_string(), vec![2, 3, 4, 5]));
        assert_eq!(calls[4], ("loo-5".to_string(), vec![1, 2, 3, 4]));
        assert_eq!(r.pairs.len(), 5);
        assert!(r.pairs[4].dice[0] < r.pairs[0].dice[0]);
        let dice_flags: Vec<Option<u32>> = r
            .flags
            .iter()
            .filter(|f| f.kind == FlagKind::DiceOutlier)
            .map(|f| f.pair)
            .collect();
        assert_eq!(dice_flags, [Some(5)]);
        assert!((r.mean - r.object_mean[0]).abs() < 1e-12);
    }

    #[test]
    fn a_set_that_teaches_an_object_poorly_is_flagged_once_for_the_object() {
        // "disc": four overlapping squares, each well predicted by the others. "vessel": four
        // small squares in different places: every pair's leave-one-out prediction misses its
        // own mask (Dice 0 for all, so no pair stands out and no DiceOutlier fires).
        let pairs = (0..4)
            .map(|i| {
                vec![
                    square(32, 8 + i % 2, 8 + i / 2, 10),
                    square(32, [0, 24, 0, 24][i], [0, 0, 24, 24][i], 6),
                ]
            })
            .collect();
        let s = objects_set(&["disc", "vessel"], pairs);
        let seg = UnionOfSupport(Default::default());
        let r = leave_one_out(&s, &seg, |_| Ok(dummy_image())).unwrap();
        assert!(r.object_mean[0] > POOR_SET_DICE, "{:?}", r.object_mean);
        assert_eq!(r.object_mean[1], 0.0);
        let set_flags: Vec<&Flag> = r.flags.iter().filter(|f| f.pair.is_none()).collect();
        assert_eq!(set_flags.len(), 1, "{:?}", r.flags);
        let f = set_flags[0];
        assert_eq!((f.object, f.kind), (1, FlagKind::PoorSet));
        assert!(
            f.detail
                .starts_with("vessel: mean leave-one-out Dice 0.000 over 4 pairs is below 0.5"),
            "{}",
            f.detail
        );
        assert!(
            r.flags.iter().all(|f| f.kind != FlagKind::DiceOutlier),
            "{:?}",
            r.flags
        );
        assert_eq!(
            r.flags.last(),
            Some(f),
            "set-level flags come after the pair flags"
        );
        // The threshold itself: exactly 0.5 passes, anything below is flagged.
        let flagged: Vec<usize> = flag_poor_set(&s, &[0.5, 0.4999], 4)
            .iter()
            .map(|f| f.object)
            .collect();
        assert_eq!(flagged, [1]);
        assert!(flag_poor_set(&s, &[0.9, 0.7], 4).is_empty());
    }

    #[test]
    fn empty_tiny_and_area_outliers_are_flagged() {
        let s = set(vec![
            square(100, 10, 10, 20),
            square(100, 10, 10, 21),
            square(100, 10, 10, 19),
            square(100, 10, 10, 20),
            square(100, 0, 0, 80),
            square(100, 0, 0, 3),
            square(100, 0, 0, 0),
        ]);
        let f = flag_masks(&s);
        let of = |kind| {
            f.iter()
                .filter(|x| x.kind == kind)
                .filter_map(|x| x.pair)
                .collect::<Vec<_>>()
        };
        assert_eq!(of(FlagKind::Empty), [7]);
        assert_eq!(of(FlagKind::Tiny), [6], "9 px of 10000 is < 0.1 %");
        assert_eq!(
            of(FlagKind::AreaOutlier),
            [5],
            "64 % of the image against about 3 % for the others"
        );
        let tight = set(vec![
            square(100, 10, 10, 20),
            square(100, 10, 10, 21),
            square(100, 10, 10, 19),
            square(100, 10, 10, 20),
            square(100, 0, 0, 80),
        ]);
        let f = flag_masks(&tight);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].pair, f[0].kind), (Some(5), FlagKind::AreaOutlier));
    }

    #[test]
    fn too_few_pairs_and_wrong_shapes_are_errors() {
        let seg = UnionOfSupport(Default::default());
        let one = set(vec![square(8, 0, 0, 2)]);
        assert!(matches!(
            leave_one_out(&one, &seg, |_| Ok(dummy_image())),
            Err(EvalError::TooFewPairs(1))
        ));
        let mixed = set(vec![square(8, 0, 0, 2), square(9, 0, 0, 2)]);
        assert!(matches!(
            leave_one_out(&mixed, &seg, |_| Ok(dummy_image())),
            Err(EvalError::Shape { .. })
        ));
    }
}
