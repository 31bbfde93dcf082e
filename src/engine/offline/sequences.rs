//! What `proxyseg segment` segments together: its inputs grouped by series and planned as the
//! daemon plans a series ([`crate::dicom::sequence::plan`], with the support set's or the
//! config's sequence mode), so a cine loop is tracked in frame order and a volume's slices,
//! given as separate files in any order, are tracked along the slice normal.

use std::path::PathBuf;

use dicom_dictionary_std::tags;

use super::{off, SequenceUse};
use crate::dicom::pixels::ImageSize;
use crate::dicom::sequence::{self, element_text, Plan, SliceInfo};
use crate::engine::EngineError;
use crate::sequence_mode::{wants_memory, ChosenMode, SequenceMode};

/// Inputs segmented in one engine call (or one memory bank), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unit {
    /// Indices into the inputs, in the order their frames are segmented.
    pub inputs: Vec<usize>,
    /// How, and why.
    pub how: SequenceUse,
}

/// Reads every input's header (up to Pixel Data) and plans: inputs of one Series Instance UID
/// together (an input without one on its own), each series as the daemon would. `refusal`: why
/// the bundle cannot track (None: it can). Err: an unreadable header, or a series whose
/// geometry gives no slice order while the mode asks to track it (the daemon fails such a job).
/// Also returns each input's declared image size, read from the same header.
pub(super) fn plan_inputs(
    inputs: &[PathBuf],
    chosen: ChosenMode,
    refusal: Option<&str>,
    bundle: &str,
) -> Result<(Vec<Unit>, Vec<ImageSize>), EngineError> {
    let headers = inputs
        .iter()
        .map(|p| {
            dicom_object::OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .open_file(p)
                .map_err(|e| off(format!("cannot read DICOM file {}: {e}", p.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sizes = headers
        .iter()
        .zip(inputs)
        .map(|(h, p)| ImageSize::of(h).map_err(|e| off(format!("{}: {e}", p.display()))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut series: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let uid = element_text(h, tags::SERIES_INSTANCE_UID);
        match series
            .iter_mut()
            .find(|(u, _)| !uid.is_empty() && *u == uid)
        {
            Some((_, members)) => members.push(i),
            None => series.push((uid, vec![i])),
        }
    }
    let mut units = Vec::new();
    for (_, group) in series {
        let infos: Vec<SliceInfo> = group.iter().map(|&i| SliceInfo::of(&headers[i])).collect();
        let modality = element_text(&headers[group[0]], tags::MODALITY);
        let multi = infos.iter().any(|s| s.frames > 1);
        let volume = infos.iter().filter(|s| s.frames == 1).count() >= 2;
        let plan = sequence::plan(&infos, &modality, chosen.mode, refusal.is_none())
            .map_err(|e| off(format!("{}: {e}", inputs[group[0]].display())))?;
        match plan {
            Plan::PerFrame => {
                let wanted = wants_memory(chosen.mode, &modality, multi, volume);
                if let (true, Some(why)) = (wanted, refusal) {
                    if chosen.mode == SequenceMode::Memory {
                        tracing::warn!(input = %inputs[group[0]].display(), bundle, why, "sequence_mode memory asked for, but the bundle cannot track: segmented frame by frame");
                    }
                }
                for (j, &i) in group.iter().enumerate() {
                    let why = match refusal.filter(|_| wanted) {
                        Some(r) => format!("sequence_mode {chosen}, but {r}"),
                        None if infos[j].frames > 1 || volume => {
                            format!("sequence_mode {chosen}")
                        }
                        None => "one frame".into(),
                    };
                    units.push(Unit {
                        inputs: vec![i],
                        how: SequenceUse {
                            tracked: false,
                            why,
                        },
                    });
                }
            }
            Plan::Memory(seqs) => {
                for s in seqs {
                    let why = if s.instances.len() > 1 {
                        format!(
                            "sequence_mode {chosen}: a volume of {} slices, in order along the slice normal",
                            s.instances.len()
                        )
                    } else {
                        format!("sequence_mode {chosen}")
                    };
                    units.push(Unit {
                        inputs: s.instances.iter().map(|&j| group[j]).collect(),
                        how: SequenceUse { tracked: true, why },
                    });
                }
            }
        }
    }
    Ok((units, sizes))
}

/// Refuses, before anything is decoded, a unit whose frames and masks would take more than
/// `pipeline.max_decoded_mb` (the daemon's per-job bound): offline, every frame of a unit is
/// decoded at once and every mask is held for the SEG, so a cine of thousands of frames would
/// otherwise run the machine out of memory instead of failing with a reason.
pub(super) fn check_memory(
    unit: &Unit,
    inputs: &[PathBuf],
    sizes: &[ImageSize],
    objects: usize,
    budget_mb: u64,
) -> Result<(), EngineError> {
    let sizes: Vec<ImageSize> = unit.inputs.iter().map(|&i| sizes[i]).collect();
    let frames: u64 = sizes.iter().map(|s| s.frames).sum();
    let need = crate::dicom::pixels::series_bytes(&sizes, objects as u64, frames);
    let need_mb = need.map(|b| b.div_ceil(1 << 20));
    if need_mb.is_some_and(|mb| mb <= budget_mb) {
        return Ok(());
    }
    let first = &inputs[unit.inputs[0]];
    let what = if unit.inputs.len() > 1 {
        format!(
            "{} and {} more files of its series",
            first.display(),
            unit.inputs.len() - 1
        )
    } else {
        first.display().to_string()
    };
    let need = need_mb.map_or("more memory than can be counted".into(), |mb| {
        format!("about {mb} MiB")
    });
    let size = sizes[0];
    Err(off(format!(
        "{what}: {frames} frame(s) of {}x{} with {objects} object(s) need {need} for pixels and masks, over pipeline.max_decoded_mb = {budget_mb} MiB (offline, an input's frames are decoded together): raise [pipeline] max_decoded_mb in the config, or split the input",
        size.rows, size.cols
    )))
}
