//! `proxyseg segment`: segments DICOM files without the network, for admins and tests.
//!
//! Owns loading a support set from a `supportset.toml` folder (or by name under
//! `models_dir/*/support-sets/`; the file itself is parsed by [`crate::support_folder`]),
//! reading its pairs' SEG masks (with [`crate::dicom::seg::read_seg`], the reader Import
//! uses), and writing the masks as PNG + raw bytes. It never writes DICOM SEG (that is
//! `pipeline::offline`) and never talks to the store.
//!
//! The inputs are planned as the daemon plans a series (`sequences`, with the support set's
//! `sequence_mode`, else `pipeline.sequence_mode`): a multi-frame input is tracked through the
//! bundle's memory bank in frame order when the mode says so, and the slices of one series
//! given as separate files are tracked together along the slice normal, whatever their order
//! on the command line. Outputs stay one per input.
//!
//! The CLI calls [`segment_files`] with the loaded config.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use sha2::{Digest, Sha256};

use super::{
    Engine, EngineError, Mask, Segmentation, StageTimings, SupportObject, SupportPair, SupportSet,
};
use crate::config::Config;
use crate::dicom::pixels::{frames_from_file, Frame};
use crate::sequence_mode::{self, ChosenMode};

mod outputs;
mod sequences;
use crate::support_folder::{self, SpecError};

pub use crate::support_folder::SupportSetSpec;

fn off(msg: String) -> EngineError {
    EngineError::Offline(msg)
}

/// Finds a support-set folder: `name_or_path` as a folder or a `supportset.toml` path, else a
/// folder of that name under `models_dir/*/support-sets/`.
pub fn find_support_set(models_dir: &Path, name_or_path: &str) -> Result<PathBuf, EngineError> {
    let p = Path::new(name_or_path);
    if p.is_file() && p.file_name().is_some_and(|n| n == support_folder::FILE) {
        return Ok(p.parent().unwrap_or(Path::new(".")).to_path_buf());
    }
    if p.join(support_folder::FILE).is_file() {
        return Ok(p.to_path_buf());
    }
    let mut found: Vec<PathBuf> = support_folder::bundled(models_dir)
        .into_iter()
        .filter(|dir| {
            dir.file_name().is_some_and(|n| n == name_or_path)
                || support_folder::read(dir).is_ok_and(|(s, _)| s.name == name_or_path)
        })
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(off(format!(
            "support set {name_or_path:?} not found: not a folder with {}, and no {}/*/support-sets/*/{} names it",
            support_folder::FILE,
            models_dir.display(),
            support_folder::FILE
        ))),
        _ => Err(off(format!("support set {name_or_path:?} is ambiguous: {found:?}"))),
    }
}

/// Loads a support-set folder into a [`SupportSet`] (and its spec). Masks are read from the
/// pairs' DICOM SEG files (`mask`); PNG masks (`masks`) are for Import only.
pub fn load_support_set(dir: &Path) -> Result<(SupportSet, SupportSetSpec), EngineError> {
    let toml_path = dir.join(support_folder::FILE);
    let (spec, text) = support_folder::read(dir).map_err(|e| match e {
        SpecError::Read(e) => off(format!("cannot read {}: {e}", toml_path.display())),
        SpecError::Invalid(e) => off(format!("{} is not valid: {e}", toml_path.display())),
    })?;
    let objects: Vec<SupportObject> = spec
        .objects
        .iter()
        .map(|o| SupportObject {
            label: o.label.clone(),
            category: o.category.as_ref().map(|c| c.meaning().to_owned()),
            property_type: o.property_type.as_ref().map(|c| c.meaning().to_owned()),
            color: o.color.as_deref().and_then(|c| <[u8; 3]>::try_from(c).ok()),
        })
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    let mut pairs = Vec::new();
    for (i, p) in spec.pairs.iter().enumerate() {
        let ctx = |m: String| off(format!("{} pair {}: {m}", toml_path.display(), i + 1));
        let image_path = dir.join(&p.image);
        let first = support_folder::first_source(&image_path).map_err(|e| ctx(e.to_string()))?;
        let frames =
            frames_from_file(&first).map_err(|e| ctx(format!("{}: {e}", first.display())))?;
        let image = frames
            .into_iter()
            .next()
            .ok_or_else(|| ctx("image has no frames".into()))?;
        let src = dicom_object::open_file(&first).map_err(|e| ctx(e.to_string()))?;
        let sop = text_of(&src, tags::SOP_INSTANCE_UID).unwrap_or_default();
        let mask = p.mask.as_deref().ok_or_else(|| {
            ctx("no `mask` (a DICOM SEG): PNG `masks` are read by Import only".into())
        })?;
        let seg_path = dir.join(mask);
        let masks = read_seg_masks(&seg_path, &sop, 1, &objects, image.rows, image.cols)
            .map_err(|e| ctx(format!("{}: {e}", seg_path.display())))?;
        for f in [&first, &seg_path] {
            hasher.update(std::fs::read(f).map_err(|e| ctx(e.to_string()))?);
        }
        pairs.push(SupportPair { image, masks });
    }
    let version = match &spec.version {
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => format!("sha256:{}", &hex::encode(hasher.finalize())[..16]),
    };
    Ok((
        SupportSet {
            name: spec.name.clone(),
            version,
            objects,
            pairs,
        },
        spec,
    ))
}

fn text_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

/// The masks of one source frame in the SEG at `path` (read with [`crate::dicom::seg::read_seg`]),
/// one per object: a segment matches an object by label (case-insensitive), else by Segment
/// Number = object order; an object without a segment, or a segment without this frame, is an
/// empty mask.
fn read_seg_masks(
    path: &Path,
    source_sop: &str,
    source_frame: u32,
    objects: &[SupportObject],
    rows: usize,
    cols: usize,
) -> Result<Vec<Mask>, SegMasksError> {
    let obj = dicom_object::open_file(path)?;
    let seg = crate::dicom::seg::read_seg(&obj)?;
    if (usize::from(seg.rows), usize::from(seg.columns)) != (rows, cols) {
        return Err(SegMasksError::Size {
            seg: [seg.rows, seg.columns],
            image: [rows, cols],
        });
    }
    if !seg.masks.keys().any(|k| {
        k.sop_instance_uid
            .as_deref()
            .is_none_or(|u| u == source_sop)
            && k.frame_number == source_frame
    }) {
        return Err(SegMasksError::NoFrame {
            sop: source_sop.to_owned(),
            frame: source_frame,
        });
    }
    let segment_of = |k: usize, o: &SupportObject| {
        seg.segments
            .iter()
            .find(|s| {
                s.description
                    .label
                    .trim()
                    .eq_ignore_ascii_case(o.label.trim())
            })
            .or_else(|| seg.segments.iter().find(|s| usize::from(s.number) == k + 1))
            .map(|s| s.number)
    };
    Ok(objects
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let data = segment_of(k, o)
                .and_then(|n| {
                    seg.mask(source_sop, source_frame, n)
                        .or_else(|| unreferenced(&seg, source_frame, n))
                })
                .map(|m| m.iter().map(|&v| u8::from(v != 0)).collect())
                .unwrap_or_else(|| vec![0; rows * cols]);
            Mask { rows, cols, data }
        })
        .collect())
}

/// A SEG frame that names no source (keyed by its order within the segment).
fn unreferenced(seg: &crate::dicom::seg::SegMasks, frame: u32, segment: u16) -> Option<&[u8]> {
    let key = crate::dicom::seg::SourceKey {
        sop_instance_uid: None,
        frame_number: frame,
    };
    seg.masks.get(&key)?.get(&segment).map(Vec::as_slice)
}

/// Why a support pair's SEG gave no masks.
#[derive(Debug, thiserror::Error)]
pub enum SegMasksError {
    /// The file is not readable DICOM.
    #[error("not a readable DICOM file: {0}")]
    Open(#[from] dicom_object::ReadError),
    /// It is not a SEG the reader takes.
    #[error(transparent)]
    Seg(#[from] crate::dicom::seg::SegError),
    /// Its size is not the image's.
    #[error("SEG is {}x{} but its image is {}x{}", seg[0], seg[1], image[0], image[1])]
    Size {
        /// SEG rows and columns.
        seg: [u16; 2],
        /// Image rows and columns.
        image: [usize; 2],
    },
    /// No SEG frame refers to the image.
    #[error("no SEG frame refers to the image (SOP Instance {sop}, frame {frame})")]
    NoFrame {
        /// The image's SOP Instance UID.
        sop: String,
        /// Its frame number.
        frame: u32,
    },
}

/// What one offline run produced.
#[derive(Debug, Clone)]
pub struct OfflineReport {
    /// The bundle used ("name@version").
    pub bundle: String,
    /// The support set used ("name@version").
    pub support_set: String,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Frames segmented.
    pub frames: usize,
    /// Decoding time (DICOM -> display frames).
    pub decode: Duration,
    /// Engine stage timings, summed.
    pub timings: StageTimings,
    /// Per input file, its segmentation (masks at the source size), for writers such as SEG.
    pub results: Vec<(PathBuf, Segmentation)>,
    /// Per input file (same order as `results`), its output name in the output folder
    /// ([`output_names`]): unique among this call's inputs.
    pub names: Vec<String>,
    /// The support set's `supportset.toml` (object codes and colours).
    pub spec: Option<SupportSetSpec>,
    /// The sequence mode chosen for this call (the set's, else the config's).
    pub mode: Option<ChosenMode>,
    /// Per input file (same order as `results`), how its frames were segmented.
    pub sequence: Vec<SequenceUse>,
}

/// How `proxyseg segment` segmented one input's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceUse {
    /// True when the frames went through one memory bank, in frame order.
    pub tracked: bool,
    /// Why (the mode and, when it could not track, the bundle's reason).
    pub why: String,
}

impl std::fmt::Display for SequenceUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.tracked {
            "tracked through the memory bank"
        } else {
            "frame by frame"
        };
        write!(f, "{how} ({})", self.why)
    }
}

/// Frames of a tracked input handed to the engine at once; the bank carries over between
/// chunks, so memory holds one chunk's tensors whatever the number of frames.
const TRACK_CHUNK: usize = 16;

/// The output name of each input (same order): its file stem, made unique among `inputs` so
/// that no input's results overwrite another's. Inputs whose stems collide (`a/image.dcm`,
/// `b/image.dcm`) are all named `<parent folder>_<stem>` (`a_image`, `b_image`); a name still
/// taken after that (same folder name twice, the same file twice, a stem equal to such a name)
/// gets `-2`, `-3`, ... in input order. Pure: the paths are not touched (a relative input
/// without a folder part takes its parent's name from the working directory when it can).
pub fn output_names(inputs: &[PathBuf]) -> Vec<String> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "input".into())
    };
    let parent = |p: &Path| -> Option<String> {
        let named = |q: &Path| {
            q.parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
        };
        named(p).or_else(|| std::path::absolute(p).ok().as_deref().and_then(named))
    };
    let stems: Vec<String> = inputs.iter().map(|p| stem(p)).collect();
    let mut counts = std::collections::HashMap::new();
    for s in &stems {
        *counts.entry(s.as_str()).or_insert(0usize) += 1;
    }
    let wanted: Vec<String> = inputs
        .iter()
        .zip(&stems)
        .map(|(p, s)| match parent(p) {
            Some(dir) if counts[s.as_str()] > 1 => format!("{dir}_{s}"),
            _ => s.clone(),
        })
        .collect();
    // Names nobody asked for stay free for those who did: reserve them all first.
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in &wanted {
        *taken.entry(w.as_str()).or_insert(0) += 1;
    }
    let mut out = Vec::with_capacity(wanted.len());
    for w in &wanted {
        let mut name = w.clone();
        let mut n = 1;
        while used.contains(&name) || (n > 1 && taken.contains_key(name.as_str())) {
            n += 1;
            name = format!("{w}-{n}");
        }
        used.insert(name.clone());
        out.push(name);
    }
    out
}

/// `proxyseg segment --config PATH --support-set NAME -o OUT_DIR INPUT.dcm...`: segments each
/// input file and writes, per input, `OUT_DIR/<name>/frame-NNNN/<k>-<label>.png` (0/255),
/// `OUT_DIR/<name>/masks.u8` (frames x objects x rows x cols, 0/1) and
/// `OUT_DIR/<name>/result.toml` (shapes, labels, IoU scores, timings), where `<name>` is the
/// input's file stem, made unique among the inputs by [`output_names`].
pub async fn segment_files(
    cfg: &Config,
    support_set: &str,
    out_dir: &Path,
    inputs: &[PathBuf],
) -> Result<OfflineReport, EngineError> {
    if inputs.is_empty() {
        return Err(off("no input files".into()));
    }
    let engine = Engine::new(&cfg.engine, &cfg.storage.data_dir)?;
    let set_dir = find_support_set(&cfg.engine.models_dir, support_set)?;
    let (set, spec) = load_support_set(&set_dir)?;
    // A set that names no bundle runs on `[engine] default_bundle`.
    let bundle = match spec.bundle() {
        Some(b) => b.to_string(),
        None => {
            let b = cfg.engine.default_bundle.clone();
            if let Err(e) = engine.bundle(&b) {
                return Err(off(format!(
                    "supportset.toml names no bundle and engine.default_bundle = {b:?} cannot be used: {e}"
                )));
            }
            b
        }
    };
    let chosen = sequence_mode::choose(None, spec.sequence_mode, cfg.pipeline.sequence_mode);
    let b = engine.bundle(&bundle)?;
    let labels: Vec<&str> = set.objects.iter().map(|o| o.label.as_str()).collect();
    let refusal = b.track_refusal(&labels);
    let always_tracks = b.always_tracks();
    let mut report = OfflineReport {
        bundle: String::new(),
        support_set: format!("{}@{}", set.name, set.version),
        written: Vec::new(),
        frames: 0,
        decode: Duration::ZERO,
        timings: StageTimings::default(),
        results: Vec::new(),
        names: Vec::new(),
        spec: Some(spec.clone()),
        mode: Some(chosen),
        sequence: Vec::new(),
    };
    std::fs::create_dir_all(out_dir)
        .map_err(|e| off(format!("cannot create {}: {e}", out_dir.display())))?;
    let (units, sizes) = sequences::plan_inputs(inputs, chosen, refusal, &bundle)?;
    let mut done: Vec<Option<(Segmentation, SequenceUse)>> = inputs.iter().map(|_| None).collect();
    for unit in units {
        sequences::check_memory(
            &unit,
            inputs,
            &sizes,
            set.objects.len(),
            cfg.pipeline.max_decoded_mb,
        )?;
        let t0 = Instant::now();
        let mut frames = Vec::new();
        let mut counts = Vec::with_capacity(unit.inputs.len());
        for &i in &unit.inputs {
            let f = frames_from_file(&inputs[i])?;
            counts.push(f.len());
            frames.extend(f);
        }
        report.decode += t0.elapsed();
        let seg = if unit.how.tracked {
            segment_tracked(&engine, &bundle, &set, frames).await?
        } else if always_tracks && frames.len() > 1 {
            // A SAM 2 bundle tracks a call's frames: one call per frame keeps them apart.
            segment_each(&engine, &bundle, &set, frames).await?
        } else {
            engine.segment(&bundle, &set, frames).await?
        };
        report.bundle = seg.bundle.clone();
        report.frames += seg.frames.len();
        report.timings.add(&seg.timings);
        // Each input gets its own frames; a volume's slices share the volume's timings.
        let mut rest = seg.frames.into_iter();
        for (&i, n) in unit.inputs.iter().zip(counts) {
            let part = Segmentation {
                bundle: seg.bundle.clone(),
                context: seg.context.clone(),
                objects: seg.objects.clone(),
                frames: rest.by_ref().take(n).collect(),
                revised: Vec::new(),
                timings: seg.timings,
            };
            done[i] = Some((part, unit.how.clone()));
        }
    }
    for ((input, name), slot) in inputs.iter().zip(output_names(inputs)).zip(done) {
        let (seg, how) =
            slot.ok_or_else(|| off(format!("{} was not segmented", input.display())))?;
        report.written.extend(outputs::write_outputs(
            &out_dir.join(&name),
            input,
            &seg,
            &how,
        )?);
        report.results.push((input.clone(), seg));
        report.names.push(name);
        report.sequence.push(how);
    }
    Ok(report)
}

/// Segments one input's frames through one memory bank, [`TRACK_CHUNK`] frames at a time.
async fn segment_tracked(
    engine: &Engine,
    bundle: &str,
    set: &SupportSet,
    mut frames: Vec<Frame>,
) -> Result<Segmentation, EngineError> {
    let mut bank = engine
        .memory_bank(bundle, frames.len(), None)?
        .ok_or_else(|| off(format!("bundle {bundle} has no memory graphs")))?;
    let mut whole: Option<Segmentation> = None;
    while !frames.is_empty() {
        let rest = frames.split_off(frames.len().min(TRACK_CHUNK));
        let (seg, next) = engine.segment_sequence(bundle, set, frames, bank).await?;
        bank = next;
        join(&mut whole, seg)?;
        frames = rest;
    }
    whole.ok_or_else(|| off("no frames".into()))
}

/// Segments each frame in a call of its own (frame by frame on a bundle that tracks a call's
/// frames).
async fn segment_each(
    engine: &Engine,
    bundle: &str,
    set: &SupportSet,
    frames: Vec<Frame>,
) -> Result<Segmentation, EngineError> {
    let mut whole: Option<Segmentation> = None;
    for f in frames {
        join(&mut whole, engine.segment(bundle, set, vec![f]).await?)?;
    }
    whole.ok_or_else(|| off("no frames".into()))
}

/// Appends `seg`'s frames and timings to `whole`.
/// Appends a call's frames to the sequence's, then puts its revised frames (frame 0 after its
/// revisit) in place of the results they replace.
fn join(whole: &mut Option<Segmentation>, mut seg: Segmentation) -> Result<(), EngineError> {
    let revised = std::mem::take(&mut seg.revised);
    let w = match whole {
        None => whole.insert(seg),
        Some(w) => {
            w.frames.extend(seg.frames);
            w.timings.add(&seg.timings);
            w
        }
    };
    for r in revised {
        let slot = w
            .frames
            .iter_mut()
            .find(|f| f.index == r.index)
            .ok_or_else(|| {
                off(format!(
                    "frame {} was revised before it was segmented",
                    r.index
                ))
            })?;
        *slot = r;
    }
    Ok(())
}

/// Display frames of a file, exposed for the benchmark and the CLI.
pub fn decode_file(path: &Path) -> Result<Vec<Frame>, EngineError> {
    Ok(frames_from_file(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(inputs: &[&str]) -> Vec<String> {
        output_names(&inputs.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn output_names_are_stems_made_unique() {
        assert_eq!(names(&["x/ct.dcm", "y/mr.dcm"]), ["ct", "mr"]);
        // Colliding stems all take their folder's name; the others keep their stem.
        assert_eq!(
            names(&["a/image.dcm", "b/image.dcm", "c/other.dcm"]),
            ["a_image", "b_image", "other"]
        );
        // Same stem, different extension or none.
        assert_eq!(names(&["a/scan", "b/scan.dcm"]), ["a_scan", "b_scan"]);
        // Same folder name twice, the same file twice: an index.
        assert_eq!(
            names(&["p/a/image.dcm", "q/a/image.dcm", "b/image.dcm"]),
            ["a_image", "a_image-2", "b_image"]
        );
        assert_eq!(names(&["s/ct.dcm", "s/ct.dcm"]), ["s_ct", "s_ct-2"]);
        // A name that another input asks for literally stays that input's.
        assert_eq!(
            names(&["a/image.dcm", "a/image.dcm", "a_image-2.dcm"]),
            ["a_image", "a_image-3", "a_image-2"]
        );
        // A bare file name takes the working directory's name when stems collide.
        let cwd = std::env::current_dir().unwrap();
        let here = cwd.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            names(&["image.dcm", "sub/image.dcm"]),
            [format!("{here}_image"), "sub_image".to_string()]
        );
    }
}
