//! Which frames of a series a memory bank tracks together, and in what order (issue 15).
//!
//! A bundle that tracks frames (contract 2, SAM 2) segments a sequence frame after frame, each
//! frame attending to the ones before it. The order is the acquisition's: a multi-frame
//! instance (a cine loop) in frame order, on its own; the single-frame instances of a series
//! (a volume) together, sorted by their position along the slice normal (Image Position and
//! Orientation (Patient)), never by Instance Number. The job's mode chooses (its routing
//! rule's, else its support set's, else `pipeline.sequence_mode`: `crate::sequence_mode`):
//! `auto` tracks multi-frame ultrasound and volumes and segments everything else frame by
//! frame; `memory` tracks every series; `per-frame` never tracks. Bad geometry fails the job
//! with the reason instead of tracking slices in a wrong order.

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

pub use crate::config::SequenceMode;

/// A header element as trimmed text ("" when absent).
pub fn element_text(h: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    h.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What the planner needs of one instance's header.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceInfo {
    /// Number of Frames (1 when absent).
    pub frames: u32,
    /// Rows x Columns.
    pub size: (u32, u32),
    /// Image Position (Patient).
    pub position: Option<[f64; 3]>,
    /// Image Orientation (Patient): row then column direction cosines.
    pub orientation: Option<[f64; 6]>,
}

impl SliceInfo {
    /// Reads the planner's attributes from an instance header.
    pub fn of(h: &DefaultDicomObject) -> SliceInfo {
        let floats = |tag| -> Option<Vec<f64>> {
            h.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_multi_float64().ok())
        };
        let int = |tag| -> Option<u32> {
            h.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<u32>().ok())
        };
        SliceInfo {
            frames: int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
            size: (
                int(tags::ROWS).unwrap_or(0),
                int(tags::COLUMNS).unwrap_or(0),
            ),
            position: floats(tags::IMAGE_POSITION_PATIENT)
                .and_then(|v| <[f64; 3]>::try_from(v.as_slice()).ok()),
            orientation: floats(tags::IMAGE_ORIENTATION_PATIENT)
                .and_then(|v| <[f64; 6]>::try_from(v.as_slice()).ok()),
        }
    }
}

/// The instances (indices into the series' instance list) of one tracked sequence, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Instance indices in acquisition order.
    pub instances: Vec<usize>,
    /// Frames of the sequence.
    pub frames: usize,
}

/// How a series is segmented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Every frame on its own, instances in the given order.
    PerFrame,
    /// Sequences through a memory bank each.
    Memory(Vec<Sequence>),
}

/// Plans a series of `modality` for a bundle that `tracks` frames (or not: then always
/// per frame). Err: why the series cannot be tracked (the job fails with it).
pub fn plan(
    infos: &[SliceInfo],
    modality: &str,
    mode: SequenceMode,
    tracks: bool,
) -> Result<Plan, String> {
    let multi: Vec<usize> = (0..infos.len()).filter(|&i| infos[i].frames > 1).collect();
    let single: Vec<usize> = (0..infos.len()).filter(|&i| infos[i].frames == 1).collect();
    let volume = single.len() >= 2;
    let wanted = crate::sequence_mode::wants_memory(mode, modality, !multi.is_empty(), volume);
    if !tracks || !wanted {
        return Ok(Plan::PerFrame);
    }
    let mut seqs: Vec<Sequence> = multi
        .iter()
        .map(|&i| Sequence {
            instances: vec![i],
            frames: infos[i].frames as usize,
        })
        .collect();
    if volume {
        seqs.extend(volume_sequences(infos, &single)?);
    } else if let Some(&i) = single.first() {
        seqs.push(Sequence {
            instances: vec![i],
            frames: 1,
        });
    }
    Ok(Plan::Memory(seqs))
}

/// The single-frame instances sorted along the slice normal; a change of image size starts a
/// new sequence (a bank tracks frames of one geometry).
fn volume_sequences(infos: &[SliceInfo], single: &[usize]) -> Result<Vec<Sequence>, String> {
    let missing: Vec<usize> = single
        .iter()
        .copied()
        .filter(|&i| infos[i].position.is_none() || infos[i].orientation.is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "memory mode: {} of {} slices lack Image Position/Orientation (Patient), so the slice order is unknown (set sequence_mode = \"per-frame\" on the rule, on the support set or in [pipeline] to segment them one by one)",
            missing.len(),
            single.len()
        ));
    }
    let o = infos[single[0]].orientation.unwrap_or_default();
    let normal = [
        o[1] * o[5] - o[2] * o[4],
        o[2] * o[3] - o[0] * o[5],
        o[0] * o[4] - o[1] * o[3],
    ];
    let mut keyed: Vec<(f64, usize)> = single
        .iter()
        .map(|&i| {
            let p = infos[i].position.unwrap_or_default();
            (p[0] * normal[0] + p[1] * normal[1] + p[2] * normal[2], i)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(w) = keyed.windows(2).find(|w| (w[1].0 - w[0].0).abs() < 1e-3) {
        return Err(format!(
            "memory mode: two slices at the same position along the normal ({:.3} mm): the volume has duplicated slices, so the slice order is ambiguous (set sequence_mode = \"per-frame\" on the rule, on the support set or in [pipeline] to segment them one by one)",
            w[0].0
        ));
    }
    let mut out: Vec<Sequence> = Vec::new();
    let mut size = None;
    for (_, i) in keyed {
        if size != Some(infos[i].size) {
            out.push(Sequence {
                instances: Vec::new(),
                frames: 0,
            });
            size = Some(infos[i].size);
        }
        let s = out.last_mut().expect("pushed above");
        s.instances.push(i);
        s.frames += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(z: f64) -> SliceInfo {
        SliceInfo {
            frames: 1,
            size: (64, 64),
            position: Some([0.0, 0.0, z]),
            orientation: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        }
    }

    #[test]
    fn volumes_run_along_the_normal_not_in_list_order() {
        let infos = [slice(5.0), slice(-2.5), slice(2.5), slice(0.0)];
        let p = plan(&infos, "MR", SequenceMode::Auto, true).unwrap();
        assert_eq!(
            p,
            Plan::Memory(vec![Sequence {
                instances: vec![1, 3, 2, 0],
                frames: 4
            }])
        );
        // a sagittal stack sorts along x
        let mut sag: Vec<SliceInfo> = [3.0, 1.0, 2.0]
            .iter()
            .map(|&x| SliceInfo {
                position: Some([x, 7.0, 7.0]),
                orientation: Some([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]),
                ..slice(0.0)
            })
            .collect();
        let Plan::Memory(s) = plan(&sag, "MR", SequenceMode::Auto, true).unwrap() else {
            panic!("memory plan")
        };
        assert_eq!(s[0].instances, vec![0, 2, 1]);
        // a size change starts a new sequence
        sag[2].size = (32, 32);
        let Plan::Memory(s) = plan(&sag, "MR", SequenceMode::Auto, true).unwrap() else {
            panic!("memory plan")
        };
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn auto_tracks_cine_ultrasound_and_volumes_only() {
        let cine = SliceInfo {
            frames: 30,
            ..slice(0.0)
        };
        let single = [slice(0.0)];
        assert_eq!(
            plan(std::slice::from_ref(&cine), "US", SequenceMode::Auto, true).unwrap(),
            Plan::Memory(vec![Sequence {
                instances: vec![0],
                frames: 30
            }])
        );
        assert_eq!(
            plan(std::slice::from_ref(&cine), "XA", SequenceMode::Auto, true).unwrap(),
            Plan::PerFrame
        );
        assert!(matches!(
            plan(
                std::slice::from_ref(&cine),
                "XA",
                SequenceMode::Memory,
                true
            )
            .unwrap(),
            Plan::Memory(_)
        ));
        assert_eq!(
            plan(&single, "OP", SequenceMode::Auto, true).unwrap(),
            Plan::PerFrame
        );
        // a bundle that cannot track, or per-frame mode: always per frame
        assert_eq!(
            plan(std::slice::from_ref(&cine), "US", SequenceMode::Auto, false).unwrap(),
            Plan::PerFrame
        );
        assert_eq!(
            plan(&[cine], "US", SequenceMode::PerFrame, true).unwrap(),
            Plan::PerFrame
        );
    }

    #[test]
    fn bad_geometry_is_refused_with_the_reason() {
        let dup = [slice(0.0), slice(1.0), slice(1.0)];
        let e = plan(&dup, "CT", SequenceMode::Auto, true).unwrap_err();
        assert!(e.contains("duplicated slices"), "{e}");
        let mut missing = vec![slice(0.0), slice(1.0)];
        missing[1].position = None;
        let e = plan(&missing, "CT", SequenceMode::Auto, true).unwrap_err();
        assert!(e.contains("1 of 2 slices lack"), "{e}");
        // per-frame mode does not need geometry
        assert_eq!(
            plan(&missing, "CT", SequenceMode::PerFrame, true).unwrap(),
            Plan::PerFrame
        );
    }
}
