//! `proxyseg segment`: segments DICOM files without the network and writes one DICOM SEG per
//! input (beside the engine's PNG + raw masks), for admins checking a support set and for tests.

use crate::config::Config;
use crate::dicom::seg::{self, Code, SegInput, SegOptions, SegmentDescription, SourceImage};
use crate::engine::offline::{segment_files, OfflineReport};
use crate::support_folder::{CodeSpec, SupportSetSpec};
use std::path::{Path, PathBuf};

/// Segments `inputs` with `support_set` and writes `OUT/<name>.seg.dcm` for each, `<name>` being
/// the input's file stem made unique among the inputs (`engine::offline::output_names`: two
/// `image.dcm` from folders `a` and `b` give `a_image.seg.dcm` and `b_image.seg.dcm`). Returns
/// the engine's report and the SEG files.
pub async fn segment_to_seg(
    cfg: &Config,
    support_set: &str,
    out_dir: &Path,
    inputs: &[PathBuf],
) -> Result<(OfflineReport, Vec<PathBuf>), OfflineSegError> {
    let report = segment_files(cfg, support_set, out_dir, inputs).await?;
    let spec = report.spec.clone().ok_or(OfflineSegError::NoSpec)?;
    let segments = describe_segments(&spec);
    let mut written = Vec::new();
    for ((input, result), name) in report.results.iter().zip(&report.names) {
        let header = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(input)
            .map_err(|source| OfflineSegError::Read {
                path: input.clone(),
                source,
            })?;
        let masks: Vec<Vec<&[u8]>> = result
            .frames
            .iter()
            .map(|f| f.masks.iter().map(|m| m.data.as_slice()).collect())
            .collect();
        let input_key = input.display().to_string();
        let mut opts = SegOptions::new(
            seg::deterministic_uid(&format!(
                "proxyseg/offline/{input_key}/{}/seg",
                report.support_set
            )),
            seg::deterministic_uid(&format!(
                "proxyseg/offline/{input_key}/{}/series",
                report.support_set
            )),
        );
        opts.series_description = format!("proxyseg {}", report.support_set)
            .chars()
            .take(64)
            .collect();
        opts.content_label = "PROXYSEG".into();
        opts.content_creator = "PROXYSEG^AUTOMATED".into();
        opts.manufacturer = cfg.seg.manufacturer.clone();
        opts.algorithm_version = format!("{} ; {}", report.bundle, report.support_set)
            .chars()
            .take(64)
            .collect();
        opts.omit_empty_frames = cfg.seg.omit_empty_frames;
        let input_seg = SegInput {
            segments: segments.clone(),
            sources: vec![SourceImage {
                dataset: &header,
                masks,
            }],
        };
        let obj = seg::write_seg(&input_seg, &opts).map_err(|source| OfflineSegError::Seg {
            path: input.clone(),
            source,
        })?;
        let path = out_dir.join(format!("{name}.seg.dcm"));
        seg::save_seg(&obj, &path)?;
        written.push(path);
    }
    Ok((report, written))
}

/// Why `proxyseg segment` wrote no SEG.
#[derive(Debug, thiserror::Error)]
pub enum OfflineSegError {
    /// Loading, decoding or segmenting failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The support set was not a folder with a `supportset.toml` (it names the codes).
    #[error("the support set has no supportset.toml")]
    NoSpec,
    /// An input's header could not be read again.
    #[error("{}: {source}", path.display())]
    Read {
        /// The input.
        path: PathBuf,
        /// The reader's error.
        source: dicom_object::ReadError,
    },
    /// The SEG could not be built.
    #[error("SEG for {}: {source}", path.display())]
    Seg {
        /// The input it segments.
        path: PathBuf,
        /// The writer's error.
        source: seg::SegError,
    },
    /// The SEG could not be saved (the error names the file).
    #[error(transparent)]
    Save(#[from] seg::SegError),
}

/// A code of `supportset.toml` for the SEG ([`crate::store::support::code_of_spec`], as import
/// reads it); none as SCT 91723000 with `fallback` as the meaning.
fn code_of(v: Option<&CodeSpec>, fallback: &str) -> Code {
    crate::store::support::code_of_spec(v, Code::sct("91723000", fallback))
}

/// The SEG segment descriptions of a `supportset.toml`'s objects (codes, colours), in order.
pub fn describe_segments(spec: &SupportSetSpec) -> Vec<SegmentDescription> {
    spec.objects
        .iter()
        .map(|o| {
            let color = o
                .color
                .as_deref()
                .filter(|c| c.len() == 3)
                .map(|c| [c[0], c[1], c[2]])
                .unwrap_or([255, 0, 0]);
            SegmentDescription {
                label: o.label.clone(),
                category: code_of(o.category.as_ref(), "Anatomical Structure"),
                type_: code_of(o.property_type.as_ref(), &o.label),
                color_rgb: color,
                algorithm_name: "proxyseg PPG+SAM".into(),
            }
        })
        .collect()
}
