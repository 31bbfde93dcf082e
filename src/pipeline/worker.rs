//! Pipeline workers: route complete studies, segment them, write SEGs into the outbox.
//!
//! A job is one peer's part of a study (store::peer_studies): its series, its instances, the
//! patient its SEGs describe and, unless a rule names another destination, the peer its SEGs
//! go to all come from that calling AE and host alone, so no peer is ever answered with
//! another peer's instances (review H4). A part whose instances carry more than one Patient ID
//! fails instead of being segmented.
//!
//! Every step is a committed job transition (complete -> matched | unmatched -> inferred ->
//! written; delivery then settles written -> delivered | failed). A bounded queue sits between
//! routing and inference, so a flood of studies waits as `matched` rows in SQLite, not in
//! memory. A restart re-queues every `matched` or `inferred` job; SEG UIDs and outbox rows are
//! deterministic per job and series, so a repeated step re-creates the very same objects. A
//! SEG's series is one per (study, peer, source series, support-set version): re-runs add
//! instances to it, never a new series.

use crate::config::Config;
use crate::dicom::seg;
use crate::engine::Engine;
use crate::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::pipeline::catalog::{Catalog, LoadedSupportSet, Route, SeriesInfo, StudyInfo};
use crate::sequence_mode::{self, ChosenMode};
use crate::store::db::TypedWriteError;
use crate::store::jobs::{self, JobState};
use crate::store::peer_studies::{self, PeerStudy};
use crate::store::{db, outbox, Db};
use rusqlite::{params, OptionalExtension};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// Modalities that never hold images to segment.
const NON_IMAGE_MODALITIES: &[&str] = &[
    "SR", "PR", "SEG", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC",
];

/// Shared state of the pipeline workers.
pub struct Pipeline {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Index.
    pub db: Db,
    /// The engine, or why it could not start (jobs then fail with that reason).
    pub engine: Result<Engine, std::sync::Arc<crate::engine::EngineError>>,
    /// Routing and support sets.
    pub catalog: Arc<dyn Catalog>,
    /// Metrics.
    pub metrics: Metrics,
    /// Wakes the delivery worker when new outbox rows exist.
    pub wake_delivery: Arc<Notify>,
    /// Unix seconds when the job being segmented started (0 when idle), for the watchdog.
    pub busy_since: std::sync::atomic::AtomicU64,
    /// Memory all jobs share for pixels (`pipeline.memory_budget_mb`).
    pub memory: MemoryBudget,
}

impl Pipeline {
    /// True when a job has been segmenting for longer than `limit` (a wedged worker).
    pub fn stalled(&self, limit: Duration) -> bool {
        let since = self.busy_since.load(std::sync::atomic::Ordering::Relaxed);
        since != 0 && db::now() - since as f64 > limit.as_secs_f64()
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum JobFailure {
    #[error("{0}")]
    Msg(String),
    #[error("index: {0}")]
    Db(#[from] crate::store::DbError),
    #[error("{0}")]
    Job(#[from] jobs::JobError),
    #[error("{0}")]
    Catalog(#[from] crate::pipeline::catalog::CatalogError),
}

pub(super) fn fail(m: impl Into<String>) -> JobFailure {
    JobFailure::Msg(m.into())
}

/// Runs routing and inference until `shutdown`.
pub async fn run(p: Arc<Pipeline>, mut shutdown: watch::Receiver<bool>) {
    let (tx, rx) = mpsc::channel::<i64>(p.cfg.pipeline.queue);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..p.cfg.engine.workers.max(1) {
        let (p, rx, mut sd) = (p.clone(), rx.clone(), shutdown.clone());
        workers.spawn(async move {
            loop {
                let next = {
                    let mut r = rx.lock().await;
                    tokio::select! { _ = sd.changed() => None, j = r.recv() => j }
                };
                let Some(job) = next else { return };
                process(&p, job).await;
            }
        });
    }
    // Resume what a restart interrupted.
    match p.db.read(|c| {
        let mut st =
            c.prepare("SELECT id FROM jobs WHERE state IN ('matched', 'inferred') ORDER BY id")?;
        let ids = st
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>();
        ids
    }) {
        Ok(ids) => {
            for id in ids {
                tracing::info!(job = id, "re-queued for inference after restart");
                if tx.send(id).await.is_err() {
                    return;
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list unfinished jobs"),
    }
    let every = Duration::from_millis(p.cfg.pipeline.scan_interval_ms);
    loop {
        let complete = p.db.read(|c| {
            let mut st =
                c.prepare("SELECT id FROM jobs WHERE state = 'complete' ORDER BY id LIMIT 64")?;
            let ids = st
                .query_map([], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>();
            ids
        });
        match complete {
            Ok(ids) => {
                for id in ids {
                    match route_job(&p, id).await {
                        Ok(true) => {
                            // Blocks while the queue is full: backpressure into SQLite.
                            tokio::select! {
                                _ = shutdown.changed() => return finish(workers).await,
                                r = tx.send(id) => if r.is_err() { return },
                            }
                            p.metrics.set(
                                "proxyseg_queue_depth",
                                &[("queue", "inference")],
                                (tx.max_capacity() - tx.capacity()) as f64,
                            );
                        }
                        Ok(false) => {}
                        Err(e) => mark_failed(&p, id, &format!("routing: {e}")).await,
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list complete jobs"),
        }
        tokio::select! {
            _ = shutdown.changed() => return finish(workers).await,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn finish(mut workers: tokio::task::JoinSet<()>) {
    // Workers stop after their current job (its state is committed step by step).
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
}

/// One peer's part of a study as the router sees it: the image series that peer sent
/// (non-image series are left out).
fn study_info(p: &Pipeline, key: &PeerStudy) -> Result<StudyInfo, crate::store::DbError> {
    let series = p.db.read(|c| peer_studies::series(c, key))?;
    let series = series
        .into_iter()
        .filter(|s| {
            !NON_IMAGE_MODALITIES
                .iter()
                .any(|m| s.modality.eq_ignore_ascii_case(m))
                && s.sop_class_uid != seg::SEGMENTATION_STORAGE
        })
        .map(|s| SeriesInfo {
            series_uid: s.series_uid,
            modality: s.modality,
            body_part: s.body_part,
            sop_class_uid: s.sop_class_uid,
            series_description: s.series_description,
        })
        .collect();
    Ok(StudyInfo {
        study_uid: key.study_uid.clone(),
        calling_ae: key.calling_ae.clone(),
        series,
    })
}

/// For a peer's part that already had a job: (that job, number of image instances the peer
/// sent since it was created that are not SEGs we produced). An instance counts when its
/// content changed since (`content_at`): a copy re-sent in another transfer syntax or with
/// coerced attributes keeps its content key and is no new image (review M2). None for the
/// part's first job.
fn new_images_since_last_job(
    p: &Pipeline,
    id: i64,
    key: &PeerStudy,
) -> Result<Option<(i64, i64)>, crate::store::DbError> {
    p.db.read(move |c| {
        let Some((prev, at)) = peer_studies::previous_job(c, key, id)? else {
            return Ok(None);
        };
        let placeholders = NON_IMAGE_MODALITIES
            .iter()
            .map(|m| format!("'{m}'"))
            .collect::<Vec<_>>()
            .join(",");
        let n: i64 = c.query_row(
            &format!(
                "SELECT COUNT(*) FROM instances
                  WHERE study_uid = ?1 AND calling_ae = ?2 AND source_host = ?3 AND content_at > ?4
                   AND UPPER(modality) NOT IN ({placeholders}) AND sop_class_uid != ?5
                   AND sop_instance_uid NOT IN (SELECT sop_instance_uid FROM outbox)"
            ),
            params![
                key.study_uid,
                key.calling_ae,
                key.source_host,
                at,
                seg::SEGMENTATION_STORAGE
            ],
            |r| r.get(0),
        )?;
        Ok(Some((prev, n)))
    })
}

/// Why a peer's part must not be segmented because it mixes patients, or None: every
/// instance the peer sent of the study must carry one Patient ID, so that a SEG never mixes
/// two patients' images or takes one patient's attributes for another's. The message starts
/// with "patients" (the failure reason on metrics) and names no Patient ID.
fn mixed_patients(p: &Pipeline, key: &PeerStudy) -> Result<Option<String>, crate::store::DbError> {
    let ids = p.db.read(|c| peer_studies::patient_ids(c, key))?;
    Ok((ids.len() > 1).then(|| {
        format!(
            "patients: the instances {} sent of this study carry {} different Patient IDs; not segmented, so that no SEG mixes patients (send each patient's images under a study of their own)",
            key.calling_ae,
            ids.len()
        )
    }))
}

/// Routes one complete job; true when it was matched and should be segmented.
async fn route_job(p: &Pipeline, id: i64) -> Result<bool, JobFailure> {
    let key =
        p.db.read(|c| peer_studies::of_job(c, id))?
            .ok_or_else(|| fail(format!("job {id} vanished")))?;
    if let Some(why) = mixed_patients(p, &key)? {
        mark_failed(p, id, &why).await;
        return Ok(false);
    }
    let (study, calling) = (key.study_uid.clone(), key.calling_ae.clone());
    let info = study_info(p, &key)?;
    let since = new_images_since_last_job(p, id, &key)?;
    let max = p.cfg.pipeline.max_jobs_per_study;
    let window_h = p.cfg.pipeline.loop_window_h;
    let since_t = db::now() - window_h * 3600.0;
    let recent =
        p.db.read(|c| peer_studies::segmented_jobs_since(c, &key, id, since_t))?;
    let route = if let Some((prev, 0)) = since {
        // Loop guard: the study came back with nothing new to segment (our own SEG, other
        // non-image objects, identical or re-encoded copies). Segmenting it again would send
        // another SEG, which a PACS without its own filter would route back to us, forever.
        Route::Unmatched { reason: format!("no new images since job {prev} (only SEGs, non-image objects, identical or re-encoded copies arrived): not segmented again") }
    } else if recent >= i64::from(max) {
        // Backstop: a study that keeps coming back with changed images.
        Route::Unmatched {
            reason: format!("loop guard: {recent} jobs of this study from {calling} were segmented in the last {window_h} h (pipeline.max_jobs_per_study = {max}): not segmented again"),
        }
    } else if info.series.is_empty() {
        Route::Unmatched {
            reason: "the study holds no image series to segment (SR, PR, SEG, ... skipped)".into(),
        }
    } else {
        p.catalog.route(&info)?
    };
    match route {
        Route::Unmatched { reason } => {
            write_transition(p, id, JobState::Unmatched, reason.clone(), |_| Ok(())).await?;
            p.metrics
                .inc("proxyseg_jobs_total", &[("state", "unmatched")]);
            tracing::info!(job = id, study = %study, reason = %reason, "unmatched study recorded");
            Ok(false)
        }
        Route::Matched {
            rule_id,
            support_set,
            version,
            bundle,
            destination_ae,
            series,
            skip_localizers,
            sequence_mode: mode,
            reason,
        } => {
            let dest = destination_ae.unwrap_or_else(|| calling.clone());
            let series_json = serde_json::to_string(&series).map_err(|e| fail(e.to_string()))?;
            let (r2, s2, v2, b2, d2) = (
                format!("{reason}; sequence mode {mode}"),
                support_set.clone(),
                version.clone(),
                bundle.clone(),
                dest.clone(),
            );
            write_transition(p, id, JobState::Matched, r2, move |c| {
                c.execute(
                    "UPDATE jobs SET rule_id = ?2, support_set = ?3, support_set_version = ?4, bundle = ?5, destination_ae = ?6, series_json = ?7, skip_localizers = ?8, sequence_mode = ?9, sequence_mode_from = ?10 WHERE id = ?1",
                    params![id, rule_id, s2, v2, b2, d2, series_json, skip_localizers, mode.mode, mode.from],
                )
                .map(|_| ())
            })
            .await?;
            p.metrics
                .inc("proxyseg_jobs_total", &[("state", "matched")]);
            tracing::info!(job = id, study = %study, support_set = %support_set, version = %version, to = %dest, sequence_mode = %mode.mode, sequence_mode_from = %mode.from, "study matched");
            Ok(true)
        }
    }
}

/// Moves job `id` to `next` with `detail`, after `before` (SQL in the same request), through
/// the typed writer: an illegal transition comes back as [`jobs::JobError`] itself.
async fn write_transition<F>(
    p: &Pipeline,
    id: i64,
    next: JobState,
    detail: String,
    before: F,
) -> Result<(), JobFailure>
where
    F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<()> + Send + 'static,
{
    let now = db::now();
    p.db.write_typed(move |c| {
        before(c)?;
        jobs::transition(c, id, next, Some(&detail), now)
    })
    .await
    .map_err(|e| match e {
        TypedWriteError::Domain(j) => JobFailure::Job(j),
        TypedWriteError::Db(d) => JobFailure::Db(d),
    })
}

/// The `reason` label of a failed job on the (unauthenticated) `/metrics`: one of a fixed set
/// of words, never the message itself, which may name spool paths and with them UIDs.
pub fn failure_reason(why: &str) -> &'static str {
    const REASONS: &[(&str, &str)] = &[
        ("dead-lettered", "dead-lettered"),
        ("routing", "routing"),
        ("engine unavailable", "engine"),
        ("delivery", "delivery"),
        ("support set", "support_set"),
        ("results dir", "storage"),
        ("cannot read", "storage"),
        ("pixels", "pixels"),
        ("inference", "inference"),
        ("SEG", "seg_write"),
        ("nothing to segment", "nothing_to_segment"),
        ("patients", "mixed_patients"),
    ];
    REASONS
        .iter()
        .find(|(prefix, _)| why.starts_with(prefix))
        .map_or("other", |&(_, label)| label)
}

async fn mark_failed(p: &Pipeline, id: i64, why: &str) {
    match write_transition(p, id, JobState::Failed, why.to_string(), |_| Ok(())).await {
        Ok(()) => {
            p.metrics.inc(
                "proxyseg_jobs_total",
                &[("state", "failed"), ("reason", failure_reason(why))],
            );
            tracing::error!(job = id, reason = %why, "job failed");
        }
        Err(e) => {
            tracing::error!(job = id, error = %e, reason = %why, "job failed and could not be recorded")
        }
    }
}

/// A job as the inference step needs it.
pub(super) struct JobRow {
    /// The peer's part of the study it segments: only that peer's instances are read.
    pub(super) key: PeerStudy,
    pub(super) state: String,
    pub(super) support_set: String,
    pub(super) version: String,
    pub(super) bundle: String,
    pub(super) destination: String,
    pub(super) series: Vec<String>,
    pub(super) skip_localizers: bool,
    /// The sequence mode it was routed with (a job routed before modes were recorded: the
    /// config's).
    pub(super) sequence_mode: ChosenMode,
}

async fn process(p: &Pipeline, id: i64) {
    // The attempt is on record before it starts, so one the daemon dies in still counts: a
    // job that keeps killing the daemon is dead-lettered instead of crash-looping it.
    let max = p.cfg.pipeline.max_attempts;
    match p.db.write(move |c| jobs::start_attempt(c, id, max)).await {
        Ok(jobs::AttemptStart::Started(1)) => {}
        Ok(jobs::AttemptStart::Started(n)) => {
            tracing::warn!(
                job = id,
                attempt = n,
                max,
                "job segmented again: its previous start did not finish"
            )
        }
        Ok(jobs::AttemptStart::Exhausted(n)) => {
            mark_failed(
                p,
                id,
                &format!(
                    "dead-lettered: {n} segmentation attempt(s) did not finish (pipeline.max_attempts = {max}); the daemon stopped or died during each"
                ),
            )
            .await;
            return;
        }
        Err(e) => {
            tracing::error!(job = id, error = %e, "cannot record a segmentation attempt: job left for the next start");
            return;
        }
    }
    let started = Instant::now();
    p.busy_since
        .store(db::now() as u64, std::sync::atomic::Ordering::Relaxed);
    let result = segment_job(p, id).await;
    p.busy_since.store(0, std::sync::atomic::Ordering::Relaxed);
    match result {
        Ok(n) => {
            p.metrics.observe(
                "proxyseg_stage_seconds",
                &[("stage", "job")],
                started.elapsed().as_secs_f64(),
            );
            tracing::info!(
                job = id,
                segs = n,
                ms = started.elapsed().as_millis() as u64,
                "SEGs written to the outbox"
            );
            p.wake_delivery.notify_one();
        }
        Err(e) => mark_failed(p, id, &e.to_string()).await,
    }
}

async fn segment_job(p: &Pipeline, id: i64) -> Result<usize, JobFailure> {
    let job = p.db.read(|c| {
        c.query_row(
            "SELECT study_uid, state, support_set, CAST(support_set_version AS TEXT), bundle, destination_ae, series_json, skip_localizers, calling_ae, source_host, sequence_mode, sequence_mode_from FROM jobs WHERE id = ?1",
            [id],
            |r| {
                let series: Option<String> = r.get(6)?;
                Ok(JobRow {
                    key: PeerStudy {
                        study_uid: r.get(0)?,
                        calling_ae: r.get(8)?,
                        source_host: r.get(9)?,
                    },
                    state: r.get(1)?,
                    support_set: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    version: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    bundle: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    destination: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    series: series.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
                    skip_localizers: r.get(7)?,
                    sequence_mode: match (r.get(10)?, r.get(11)?) {
                        (Some(mode), Some(from)) => ChosenMode { mode, from },
                        _ => sequence_mode::choose(None, None, p.cfg.pipeline.sequence_mode),
                    },
                })
            },
        )
        .optional()
    })?;
    let Some(job) = job else {
        return Err(fail(format!("job {id} vanished")));
    };
    // Checked again: the peer may have sent more of the study since the job was routed.
    if let Some(why) = mixed_patients(p, &job.key)? {
        return Err(fail(why));
    }
    let engine = p
        .engine
        .as_ref()
        .map_err(|e| fail(format!("engine unavailable: {e}")))?;
    let peer = p.cfg.peer(&job.destination).cloned().ok_or_else(|| {
        fail(format!(
            "delivery: destination {:?} is not a [[dicom.peers]] entry",
            job.destination
        ))
    })?;
    let set = {
        let (c, n, v) = (
            p.catalog.clone(),
            job.support_set.clone(),
            job.version.clone(),
        );
        tokio::task::spawn_blocking(move || c.load(&n, &v))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(format!("support set: {e}")))?
    };
    let out_dir = p.cfg.storage.data_dir.join("results").join(id.to_string());
    crate::store::private::create_dir_all(&out_dir)
        .map_err(|e| fail(format!("results dir: {e}")))?;
    let mut written = Vec::new();
    let mut tracked = 0;
    let mut agreement = vec![None; set.segments.len()];
    let mut infer_time = Duration::ZERO;
    for series_uid in &job.series {
        let t0 = Instant::now();
        let Some(seg) =
            super::series::segment_series(p, engine, &job, &set, id, series_uid, &out_dir).await?
        else {
            continue;
        };
        infer_time += t0.elapsed();
        tracked += usize::from(seg.tracked);
        super::series::lowest(&mut agreement, &seg.lowest_agreement);
        written.push((seg.path, seg.sop_uid));
    }
    if written.is_empty() {
        return Err(fail(
            "nothing to segment: every series was skipped (localizers or no pixels)",
        ));
    }
    if job.state == JobState::Matched.as_str() {
        let mut detail = format!(
            "{} series in {:.2} s, sequence mode {}: {tracked} tracked through the memory bank, {} frame by frame",
            written.len(),
            infer_time.as_secs_f64(),
            job.sequence_mode,
            written.len() - tracked
        );
        detail.push_str(&review_note(p, id, &job, &set, &agreement));
        write_transition(p, id, JobState::Inferred, detail, |_| Ok(())).await?;
        p.metrics
            .inc("proxyseg_jobs_total", &[("state", "inferred")]);
    }
    let n = written.len();
    let now = db::now();
    let dest = peer.clone();
    let detail = format!("{n} SEG(s) queued for {}", dest.ae_title);
    write_transition(p, id, JobState::Written, detail, move |c| {
        for (path, sop) in &written {
            outbox::enqueue(
                c,
                Some(id),
                sop,
                seg::SEGMENTATION_STORAGE,
                &path.to_string_lossy(),
                &dest.ae_title,
                &dest.host,
                dest.port,
                dest.tls,
                now,
            )?;
        }
        Ok(())
    })
    .await?;
    p.metrics
        .inc("proxyseg_jobs_total", &[("state", "written")]);
    Ok(n)
}

/// The `inferred` event's review note ("" when no object is flagged), logged and counted in
/// `proxyseg_review_flags_total`; `lowest`: each object's lowest look agreement.
fn review_note(
    p: &Pipeline,
    id: i64,
    job: &JobRow,
    set: &LoadedSupportSet,
    lowest: &[Option<f32>],
) -> String {
    let cut = p.cfg.pipeline.review_agreement;
    let labels: Vec<&str> = set.set.objects.iter().map(|o| o.label.as_str()).collect();
    let flags = review_flags(&labels, lowest, cut);
    if flags.is_empty() {
        return String::new();
    }
    tracing::warn!(job = id, study = %job.key.study_uid, objects = %flags.join("; "), "review: mirrored looks disagree");
    for _ in &flags {
        p.metrics.inc("proxyseg_review_flags_total", &[]);
    }
    format!(
        "; review: the mirrored looks agree less than {cut} on {}",
        flags.join(", ")
    )
}

/// The objects to review: `label (agreement)` for each whose lowest look agreement is below
/// `cut` ([`crate::config::PipelineConfig::review_agreement`]; 0 flags nothing).
fn review_flags(labels: &[&str], lowest: &[Option<f32>], cut: f32) -> Vec<String> {
    labels
        .iter()
        .zip(lowest)
        .filter_map(|(l, a)| a.filter(|&a| a < cut).map(|a| format!("{l:?} ({a:.2})")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{failure_reason, review_flags};

    #[test]
    fn objects_under_the_review_cut_are_named_with_their_agreement() {
        let labels = ["optic disc", "optic cup", "vessels"];
        let lowest = [Some(0.95), Some(0.61), None];
        assert_eq!(
            review_flags(&labels, &lowest, 0.8),
            vec!["\"optic cup\" (0.61)"]
        );
        assert_eq!(review_flags(&labels, &lowest, 0.96).len(), 2);
        assert!(review_flags(&labels, &lowest, 0.0).is_empty(), "0: off");
        assert!(
            review_flags(&labels, &[None; 3], 1.0).is_empty(),
            "one look: nothing to compare"
        );
    }

    #[test]
    fn failure_reasons_are_fixed_words() {
        for (why, label) in [
            (
                "cannot read /var/lib/proxyseg/spool/1.2.3/4.5/6.7.dcm: gone",
                "storage",
            ),
            ("pixels of /x/1.2.3.dcm: bad", "pixels"),
            ("pixels not decoded: too large (/x/1.2.dcm)", "pixels"),
            (
                "dead-lettered: 3 segmentation attempt(s) did not finish",
                "dead-lettered",
            ),
            ("SEG: write failed", "seg_write"),
            (
                "patients: the instances PACS sent of this study carry 2 different Patient IDs",
                "mixed_patients",
            ),
            ("job 17 vanished", "other"),
        ] {
            assert_eq!(failure_reason(why), label, "{why}");
        }
    }
}
