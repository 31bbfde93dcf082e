//! Segmenting one series of a job: the headers of what the peer sent, the pixel-memory
//! budget, the plan (frame by frame, or sequences through a memory bank), frames decoded one
//! at a time into chunks for the engine, and the SEG written for the outbox.

use std::path::PathBuf;
use std::time::Instant;

use dicom_dictionary_std::tags;
use tokio::sync::mpsc;

use super::catalog::LoadedSupportSet;
use super::worker::{fail, JobFailure, JobRow, Pipeline};
use crate::dicom::pixels::{self, ImageSize};
use crate::dicom::seg::{self, SegInput, SegOptions, SourceImage};
use crate::dicom::sequence::{self, element_text, Plan, SequenceMode, SliceInfo};
use crate::engine::{Engine, MemoryBank};
use crate::memory::MemoryBudget;
use crate::store::{db, peer_studies};

/// One instance of a series to segment.
struct Source {
    path: PathBuf,
    header: dicom_object::DefaultDicomObject,
}

/// The SEG written for one series, and how the series was segmented.
pub(super) struct SeriesSeg {
    /// The SEG file in the job's results folder.
    pub(super) path: PathBuf,
    /// Its SOP Instance UID.
    pub(super) sop_uid: String,
    /// True when a memory bank tracked its sequences, false when every frame was on its own.
    pub(super) tracked: bool,
    /// Per object (mask order), the lowest agreement of its mirrored looks over the series'
    /// frames; `None` where no frame took two looks.
    pub(super) lowest_agreement: Vec<Option<f32>>,
}

/// Segments one series and writes its SEG; None when every instance was skipped.
pub(super) async fn segment_series(
    p: &Pipeline,
    engine: &Engine,
    job: &JobRow,
    set: &LoadedSupportSet,
    id: i64,
    series_uid: &str,
    out_dir: &std::path::Path,
) -> Result<Option<SeriesSeg>, JobFailure> {
    let sources = read_sources(p, job, series_uid).await?;
    if sources.is_empty() {
        return Ok(None);
    }
    let chunk = p.cfg.pipeline.chunk_frames.max(1);
    let bundle = engine.bundle(&job.bundle).ok();
    let labels: Vec<&str> = set.set.objects.iter().map(|o| o.label.as_str()).collect();
    let refusal = match &bundle {
        Some(b) => b.track_refusal(&labels),
        None => Some("the bundle is not served"),
    };
    let groups = sequence_groups(job, &sources, series_uid, refusal)?;
    let tracked = groups.iter().any(|g| g.1.is_some());
    // a tracked sequence also holds its memory bank while it runs (one at a time)
    let bank = match (&bundle, tracked) {
        (Some(b), true) => b.manifest.memory.as_ref().map_or(0, |spec| {
            let m = &b.manifest;
            MemoryBank::max_bytes(
                spec,
                set.segments.len(),
                m.embed_dim,
                m.embed_size,
                m.prompt_tokens,
                if m.decoder_image {
                    3 * m.input_size * m.input_size
                } else {
                    0
                },
            )
        }),
        _ => 0,
    };
    let _memory =
        reserve_series_memory(p, job, set, series_uid, &sources, chunk, bank as u64).await?;
    let run = Chunks {
        p,
        engine,
        bundle: &job.bundle,
        set: &set.set,
        always_tracks: bundle.as_ref().is_some_and(|b| b.always_tracks()),
    };
    let mut out = SeriesMasks {
        masks: vec![Vec::new(); sources.len()],
        sequence: Vec::new(),
        lowest_agreement: vec![None; set.segments.len()],
    };
    for (instances, frames) in groups {
        out.sequence.clear();
        let mut bank = match frames {
            Some(n) => engine
                .memory_bank(&job.bundle, n, p.cfg.pipeline.memory_frames)
                .map_err(|e| fail(format!("inference: {e}")))?,
            None => None,
        };
        let mut pending: Vec<(usize, pixels::Frame)> = Vec::new();
        for &i in &instances {
            bank = run
                .instance(i, &sources[i], chunk, &mut pending, bank, &mut out)
                .await?;
        }
        if !pending.is_empty() {
            run.flush(pending, bank, &mut out).await?;
        }
    }
    let t0 = Instant::now();
    let (path, sop_uid) =
        write_series_seg(p, job, set, id, series_uid, out_dir, &sources, &out.masks)?;
    p.metrics.observe(
        "proxyseg_stage_seconds",
        &[("stage", "seg_write")],
        t0.elapsed().as_secs_f64(),
    );
    Ok(Some(SeriesSeg {
        path,
        sop_uid,
        tracked,
        lowest_agreement: out.lowest_agreement,
    }))
}

/// The headers of what this job's peer sent of the series (review H4), localizers left out
/// when the job says so.
async fn read_sources(
    p: &Pipeline,
    job: &JobRow,
    series_uid: &str,
) -> Result<Vec<Source>, JobFailure> {
    let paths =
        p.db.read(|c| peer_studies::series_paths(c, &job.key, series_uid))?;
    let skip_localizers = job.skip_localizers;
    tokio::task::spawn_blocking(move || -> Result<Vec<Source>, JobFailure> {
        let mut out = Vec::new();
        for path in paths {
            let header = dicom_object::OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .open_file(&path)
                .map_err(|e| fail(format!("cannot read {path}: {e}")))?;
            let image_type = element_text(&header, tags::IMAGE_TYPE).to_ascii_uppercase();
            if skip_localizers && image_type.contains("LOCALIZER") {
                tracing::info!(path = %path, "localizer skipped");
                continue;
            }
            out.push(Source {
                path: PathBuf::from(path),
                header,
            });
        }
        Ok(out)
    })
    .await
    .map_err(|e| fail(e.to_string()))?
}

/// What the series costs (its pixels, and `bank`: the most a memory bank holds when a
/// sequence is tracked), checked against the per-job budget before anything is decoded (also
/// for instances stored before the C-STORE check existed), then reserved from the budget all
/// jobs share: the job waits here while others hold it (issue 16 item 1).
async fn reserve_series_memory(
    p: &Pipeline,
    job: &JobRow,
    set: &LoadedSupportSet,
    series_uid: &str,
    sources: &[Source],
    chunk: usize,
    bank: u64,
) -> Result<crate::memory::Reservation, JobFailure> {
    let sizes = sources
        .iter()
        .map(|s| {
            ImageSize::of(&s.header)
                .map_err(|e| fail(format!("pixels of {}: {e}", s.path.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let in_flight = 2 * chunk as u64 + 1;
    let need = pixels::series_bytes(&sizes, set.segments.len() as u64, in_flight)
        .and_then(|n| n.checked_add(bank))
        .unwrap_or(u64::MAX);
    let budget = p.cfg.pipeline.max_decoded_mb * 1024 * 1024;
    if need > budget {
        return Err(fail(
            pixels::PixelError::OverBudget {
                need_mib: need / 1048576,
                budget_mib: budget / 1048576,
                what: format!(
                    "series {series_uid} ({} instance(s), {} frame(s), {} segment(s))",
                    sizes.len(),
                    sizes.iter().map(|s| s.frames).sum::<u64>(),
                    set.segments.len()
                ),
            }
            .to_string(),
        ));
    }
    reserve_memory(p, job, need).await
}

/// Instances segmented together, in order, and the sequence length when a bank tracks them.
type Group = (Vec<usize>, Option<usize>);

/// The instances to segment together, in order, each group with its sequence length when a
/// memory bank tracks it: a bundle that tracks frames (SAM 2) runs each sequence (a cine
/// loop, a volume in slice order) through one bank; otherwise every frame is on its own
/// (issue 15, [`sequence::plan`], with the job's mode: its rule's, its set's or the config's).
/// Either way the log line names the mode, where it came from, and why.
fn sequence_groups(
    job: &JobRow,
    sources: &[Source],
    series_uid: &str,
    refusal: Option<&'static str>,
) -> Result<Vec<Group>, JobFailure> {
    let tracks = refusal.is_none();
    let infos: Vec<SliceInfo> = sources.iter().map(|s| SliceInfo::of(&s.header)).collect();
    let modality = element_text(&sources[0].header, tags::MODALITY);
    let chosen = job.sequence_mode;
    let plan = sequence::plan(&infos, &modality, chosen.mode, tracks)
        .map_err(|e| fail(format!("series {series_uid}: {e}")))?;
    Ok(match plan {
        Plan::PerFrame => {
            let why = match chosen.mode {
                // Memory asked of a bundle without memory graphs: frame by frame, whichever
                // level asked (the config's behaviour since issue 15).
                SequenceMode::Memory if !tracks => {
                    let why = refusal.unwrap_or_default();
                    tracing::warn!(
                        series = %series_uid,
                        bundle = %job.bundle,
                        sequence_mode = %chosen.mode,
                        sequence_mode_from = %chosen.from,
                        why,
                        "sequence_mode memory asked for, but {why}: segmented frame by frame"
                    );
                    why
                }
                _ if !tracks => refusal.unwrap_or_default(),
                SequenceMode::PerFrame => "sequence_mode per-frame",
                _ => "auto: neither multi-frame ultrasound nor a volume",
            };
            tracing::info!(
                series = %series_uid,
                sequence_mode = %chosen.mode,
                sequence_mode_from = %chosen.from,
                why,
                "series segmented frame by frame"
            );
            vec![((0..sources.len()).collect(), None)]
        }
        Plan::Memory(seqs) => {
            tracing::info!(
                series = %series_uid,
                sequence_mode = %chosen.mode,
                sequence_mode_from = %chosen.from,
                sequences = seqs.len(),
                frames = seqs.iter().map(|s| s.frames).sum::<usize>(),
                "series tracked through the memory bank"
            );
            seqs.into_iter()
                .map(|s| (s.instances, Some(s.frames)))
                .collect()
        }
    })
}

/// Writes the series' SEG into `out_dir`: (path, SOP Instance UID).
#[allow(clippy::too_many_arguments)]
fn write_series_seg(
    p: &Pipeline,
    job: &JobRow,
    set: &LoadedSupportSet,
    id: i64,
    series_uid: &str,
    out_dir: &std::path::Path,
    sources: &[Source],
    masks: &[Vec<Vec<Vec<u8>>>],
) -> Result<(PathBuf, String), JobFailure> {
    let sop_uid = seg::deterministic_uid(&format!("proxyseg/job/{id}/series/{series_uid}/seg"));
    let mut opts = SegOptions::new(sop_uid.clone(), seg_series_uid(job, series_uid));
    let describe = format!("proxyseg {} v{}", set.set.name, short(&set.set.version));
    opts.series_description = describe.chars().take(64).collect();
    opts.content_label = "PROXYSEG".into();
    opts.content_creator = "PROXYSEG^AUTOMATED".into();
    opts.content_description = format!(
        "Proxy-prompted SAM segmentation with support set {}",
        set.set.name
    )
    .chars()
    .take(64)
    .collect();
    opts.manufacturer = p.cfg.seg.manufacturer.clone();
    opts.algorithm_version = format!(
        "{} ; {} v{}",
        job.bundle,
        set.set.name,
        short(&set.set.version)
    )
    .chars()
    .take(64)
    .collect();
    opts.omit_empty_frames = p.cfg.seg.omit_empty_frames;
    let input = SegInput {
        segments: set.segments.clone(),
        sources: sources
            .iter()
            .zip(masks)
            .map(|(s, m)| SourceImage {
                dataset: &s.header,
                masks: m
                    .iter()
                    .map(|f| f.iter().map(|x| x.as_slice()).collect())
                    .collect(),
            })
            .collect(),
    };
    let obj = seg::write_seg(&input, &opts).map_err(|e| fail(format!("SEG: {e}")))?;
    let path = out_dir.join(format!("{sop_uid}.dcm"));
    seg::save_seg(&obj, &path).map_err(|e| fail(format!("SEG: {e}")))?;
    Ok((path, sop_uid))
}

/// A series' masks as they come, and where the current sequence's frames went.
struct SeriesMasks {
    /// masks[source][frame][segment].
    masks: Vec<Vec<Vec<Vec<u8>>>>,
    /// (source, frame within it) of each frame of the sequence being segmented, in sequence
    /// order: a revised frame (frame 0 after its revisit) replaces the masks found here.
    sequence: Vec<(usize, usize)>,
    /// Per object, the lowest look agreement so far ([`SeriesSeg::lowest_agreement`]).
    lowest_agreement: Vec<Option<f32>>,
}

/// Segments chunks of a series' frames: per frame, or through a sequence's memory bank.
struct Chunks<'a> {
    p: &'a Pipeline,
    engine: &'a Engine,
    bundle: &'a str,
    set: &'a crate::engine::SupportSet,
    /// A SAM 2 bundle: even a frame on its own runs as a sequence of one.
    always_tracks: bool,
}

impl Chunks<'_> {
    /// Decodes instance `i` frame by frame (a blocking thread feeds a channel of `chunk`
    /// frames, so at most 2 x chunk + 1 frames of it exist at once) and segments every full
    /// chunk of `pending`; returns the bank for the sequence's next frames.
    async fn instance(
        &self,
        i: usize,
        src: &Source,
        chunk: usize,
        pending: &mut Vec<(usize, pixels::Frame)>,
        mut bank: Option<MemoryBank>,
        out: &mut SeriesMasks,
    ) -> Result<Option<MemoryBank>, JobFailure> {
        let path = src.path.clone();
        let (tx, mut rx) = mpsc::channel::<Result<pixels::Frame, pixels::PixelError>>(chunk);
        let producer = tokio::task::spawn_blocking(move || {
            let source = match pixels::FrameSource::open(&path) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            for f in 0..source.len() {
                let frame = source.frame(f);
                let failed = frame.is_err();
                if tx.blocking_send(frame).is_err() || failed {
                    return;
                }
            }
        });
        while let Some(frame) = rx.recv().await {
            let frame =
                frame.map_err(|e| fail(format!("pixels of {}: {e}", src.path.display())))?;
            pending.push((i, frame));
            if pending.len() >= chunk {
                bank = self.flush(std::mem::take(pending), bank, out).await?;
            }
        }
        producer.await.map_err(|e| fail(e.to_string()))?;
        Ok(bank)
    }

    /// Segments `pending` (frames with the index of their instance) and appends each frame's
    /// masks to its instance in `out`, then replaces the masks of any frame the call revised;
    /// returns the bank for the sequence's next frames.
    async fn flush(
        &self,
        pending: Vec<(usize, pixels::Frame)>,
        bank: Option<MemoryBank>,
        out: &mut SeriesMasks,
    ) -> Result<Option<MemoryBank>, JobFailure> {
        let owners: Vec<usize> = pending.iter().map(|(o, _)| *o).collect();
        let frames: Vec<_> = pending.into_iter().map(|(_, f)| f).collect();
        let t0 = Instant::now();
        let n = frames.len();
        let infer = |e: crate::engine::EngineError| fail(format!("inference: {e}"));
        let (results, revised, bank) = match bank {
            Some(b) => {
                let (seg, b) = self
                    .engine
                    .segment_sequence(self.bundle, self.set, frames, b)
                    .await
                    .map_err(infer)?;
                (seg.frames, seg.revised, Some(b))
            }
            // A tracking bundle segments a frame on its own as a sequence of one.
            None if self.always_tracks => {
                let mut each = Vec::with_capacity(n);
                for f in frames {
                    let one = self
                        .engine
                        .memory_bank(self.bundle, 1, None)
                        .map_err(infer)?
                        .ok_or_else(|| fail("inference: the bundle stopped tracking frames"))?;
                    let (seg, _) = self
                        .engine
                        .segment_sequence(self.bundle, self.set, vec![f], one)
                        .await
                        .map_err(infer)?;
                    each.extend(seg.frames);
                }
                (each, Vec::new(), None)
            }
            None => (
                self.engine
                    .segment(self.bundle, self.set, frames)
                    .await
                    .map_err(infer)?
                    .frames,
                Vec::new(),
                None,
            ),
        };
        let per = t0.elapsed().as_secs_f64() / n.max(1) as f64;
        for _ in 0..n {
            self.p.metrics.observe(
                "proxyseg_stage_seconds",
                &[("stage", "inference_per_image")],
                per,
            );
        }
        for (o, fr) in owners.into_iter().zip(results) {
            lowest(&mut out.lowest_agreement, &fr.look_agreement);
            out.sequence.push((o, out.masks[o].len()));
            out.masks[o].push(fr.masks.into_iter().map(|m| m.data).collect());
        }
        for fr in revised {
            let &(o, f) = out.sequence.get(fr.index).ok_or_else(|| {
                fail(format!(
                    "inference: frame {} of the sequence was revised before it was segmented",
                    fr.index
                ))
            })?;
            out.masks[o][f] = fr.masks.into_iter().map(|m| m.data).collect();
        }
        Ok(bank)
    }
}

/// Keeps, per object, the lower of `so_far` and this frame's look agreement.
pub(super) fn lowest(so_far: &mut [Option<f32>], frame: &[Option<f32>]) {
    for (a, &b) in so_far.iter_mut().zip(frame) {
        *a = match (*a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
    }
}

/// Reserves `need` bytes from the shared memory budget, waiting while other jobs hold it
/// (logged, and counted in `proxyseg_memory_waits_total`).
async fn reserve_memory(
    p: &Pipeline,
    job: &JobRow,
    need: u64,
) -> Result<crate::memory::Reservation, JobFailure> {
    let reservation = match p.memory.try_reserve(need) {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::info!(
                study = %job.key.study_uid,
                need_mib = MemoryBudget::mib_of(need),
                in_use_mib = p.memory.in_use_mib(),
                budget_mib = p.memory.total_mib(),
                "waiting for memory: other jobs hold pipeline.memory_budget_mb"
            );
            p.metrics.inc("proxyseg_memory_waits_total", &[]);
            let t0 = Instant::now();
            let r = p.memory.reserve(need).await;
            // The wait is not segmentation: the watchdog's stall clock starts again.
            p.busy_since
                .store(db::now() as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                waited_ms = t0.elapsed().as_millis() as u64,
                "memory reserved"
            );
            r.map_err(|e| fail(format!("pixels not decoded: {e}")))?
        }
        Err(e) => return Err(fail(format!("pixels not decoded: {e}"))),
    };
    Ok(reservation)
}

/// The SEG series of a source series: one per (study, peer, source series, support set and
/// version, bundle), so that a re-run of the same inputs (a late instance, a retry) adds an
/// instance to the same SEG series instead of a new series each time (review M2). The SEG's
/// SOP Instance UID stays per job.
fn seg_series_uid(job: &JobRow, series_uid: &str) -> String {
    let k = &job.key;
    seg::deterministic_uid(&format!(
        "proxyseg/study/{}/peer/{}/{}/series/{series_uid}/set/{}/{}/bundle/{}/seg-series",
        k.study_uid, k.calling_ae, k.source_host, job.support_set, job.version, job.bundle
    ))
}

fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::lowest;

    #[test]
    fn the_lowest_agreement_per_object_is_kept_across_frames() {
        let mut so_far = vec![None; 3];
        lowest(&mut so_far, &[Some(0.9), None, Some(0.7)]);
        lowest(&mut so_far, &[Some(0.95), Some(0.5), Some(0.6)]);
        lowest(&mut so_far, &[None, None, None]);
        assert_eq!(so_far, vec![Some(0.9), Some(0.5), Some(0.6)]);
    }
}
