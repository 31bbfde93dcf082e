//! Decision thresholds: a bundle's `[[threshold]]` tables give listed objects the logit their
//! mask is cut at (`logits > logit`; 0 for objects no table lists). A calibration of the
//! bundle's model, chosen on cases it was not validated on: the shipped real bundle's optic cup
//! comes out 1.3-1.4x the annotated area at 0, its optic disc short of the pale rim the
//! annotators include.
//!
//! The threshold applies to each frame's final logits (after the resolution views, before the
//! `[[shape]]` rules, [`super::shape`]), frame by frame and in memory mode; a roi view still
//! places its crop from the first pass's `logits > 0`, and the memory bank is fed as before.
//! The Python reference is `scripts/model/proxyseg_model/threshold.py`.

use super::preprocess::Geometry;
use super::support::{Mask, SupportObject};
use super::views::{check_labels, same_label};

/// One `[[threshold]]` table of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRule {
    /// Object labels the table names (matched case-insensitively).
    pub objects: Vec<String>,
    /// The logit the listed objects' masks are cut at.
    pub logit: f32,
    /// Free text.
    pub note: String,
}

/// Checks the tables together: labels, a finite logit, no object listed twice; the message
/// names the table that is wrong.
pub fn check(rules: &[ThresholdRule]) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = |e: String| format!("[[threshold]] table {}: {e}", i + 1);
        if !r.logit.is_finite() {
            return Err(at(format!("logit {} is not a finite number", r.logit)));
        }
        check_labels(&r.objects).map_err(at)?;
        for o in &r.objects {
            if seen.iter().any(|s| same_label(s, o)) {
                return Err(at(format!("{o:?} is listed twice")));
            }
            seen.push(o);
        }
    }
    Ok(())
}

/// Per object (mask order): the logit its mask is cut at.
pub fn object_thresholds(rules: &[ThresholdRule], objects: &[SupportObject]) -> Vec<f32> {
    objects
        .iter()
        .map(|o| {
            rules
                .iter()
                .find(|r| r.objects.iter().any(|l| same_label(l, &o.label)))
                .map_or(0.0, |r| r.logit)
        })
        .collect()
}

/// The cut of object `j` (0 past the end of `thresholds`).
pub fn cut(thresholds: &[f32], j: usize) -> f32 {
    thresholds.get(j).copied().unwrap_or(0.0)
}

/// Each object's logits at the source size (`g`) cut at its threshold (mask order, [`cut`]).
pub(crate) fn masks(logits: &[Vec<f32>], g: &Geometry, thresholds: &[f32]) -> Vec<Mask> {
    logits
        .iter()
        .enumerate()
        .map(|(j, l)| {
            let t = cut(thresholds, j);
            Mask {
                rows: g.rows,
                cols: g.cols,
                data: l.iter().map(|&v| u8::from(v > t)).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(objects: &[&str], logit: f32) -> ThresholdRule {
        ThresholdRule {
            objects: objects.iter().map(|s| s.to_string()).collect(),
            logit,
            note: String::new(),
        }
    }

    fn object(label: &str) -> SupportObject {
        SupportObject {
            label: label.into(),
            ..SupportObject::default()
        }
    }

    #[test]
    fn objects_get_their_tables_logit_and_others_zero() {
        let rules = [
            rule(&["Optic Cup"], 8.0),
            rule(&["optic disc", "lesion"], -4.5),
        ];
        let objs = [object("optic disc"), object("vessels"), object("OPTIC CUP")];
        assert_eq!(object_thresholds(&rules, &objs), [-4.5, 0.0, 8.0]);
        assert_eq!(object_thresholds(&[], &objs), [0.0; 3]);
        assert_eq!(cut(&[1.5], 0), 1.5);
        assert_eq!(cut(&[1.5], 3), 0.0);
    }

    #[test]
    fn a_wrong_table_is_refused_by_name() {
        assert!(check(&[rule(&["cup"], 1.0), rule(&["disc"], -2.0)]).is_ok());
        let e = check(&[rule(&["cup"], f32::NAN)]).unwrap_err();
        assert!(e.contains("table 1") && e.contains("finite"), "{e}");
        let e = check(&[rule(&["cup"], 1.0), rule(&["Cup"], 2.0)]).unwrap_err();
        assert!(e.contains("table 2") && e.contains("twice"), "{e}");
        assert!(check(&[rule(&[], 1.0)]).unwrap_err().contains("table 1"));
    }
}
