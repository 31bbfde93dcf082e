//! Delivery worker: takes due outbox rows, sends them with the SCU (bounded concurrency),
//! records every attempt, and moves a job to `delivered` once all its objects arrived, or to
//! `failed` when one was dead-lettered.

use crate::config::DeliveryConfig;
use crate::dicom::scu::{Destination, Scu};
use crate::store::jobs::{self, JobState};
use crate::store::outbox::{self, After, Attempt, OutboxRow};
use crate::store::{db, Db};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// Delivery counters.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Objects delivered.
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried.
    pub retried: AtomicU64,
    /// Objects dead-lettered.
    pub dead: AtomicU64,
}

/// Runs the delivery loop until `shutdown`; `wake` makes it look at the outbox at once.
pub async fn run(
    db: Db,
    scu: Scu,
    cfg: DeliveryConfig,
    stats: Arc<DeliveryStats>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    settle_written(&db).await;
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let mut in_flight = std::collections::HashSet::<i64>::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let poll = Duration::from_millis(cfg.poll_interval_ms);
    loop {
        while let Ok(id) = done_rx.try_recv() {
            in_flight.remove(&id);
        }
        let now = db::now();
        let limit = cfg.concurrency * 4;
        match db.read(|c| outbox::due(c, now, limit)) {
            Ok(rows) => {
                for row in rows {
                    if in_flight.contains(&row.id) {
                        continue;
                    }
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    in_flight.insert(row.id);
                    let (db, scu, cfg, stats, done) = (
                        db.clone(),
                        scu.clone(),
                        cfg.clone(),
                        stats.clone(),
                        done_tx.clone(),
                    );
                    tokio::spawn(async move {
                        let id = row.id;
                        deliver_one(&db, &scu, &cfg, &stats, row).await;
                        drop(permit);
                        let _ = done.send(id);
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = wake.notified() => {}
            Some(id) = done_rx.recv() => { in_flight.remove(&id); }
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Let attempts in flight record their outcome.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        slots.acquire_many(cfg.concurrency as u32),
    )
    .await;
}

async fn deliver_one(
    db: &Db,
    scu: &Scu,
    cfg: &DeliveryConfig,
    stats: &DeliveryStats,
    row: OutboxRow,
) {
    let dest = Destination {
        ae_title: row.destination_ae.clone(),
        host: row.destination_host.clone(),
        port: row.destination_port,
        tls: row.tls,
    };
    let started = std::time::Instant::now();
    let attempt = scu.send_file(std::path::Path::new(&row.path), &dest).await;
    let elapsed = started.elapsed();
    let (cfg2, a2, id) = (cfg.clone(), attempt.clone(), row.id);
    let now = db::now();
    let jitter: f64 = rand::random();
    let after = match db
        .write(move |c| outbox::record_attempt(c, &cfg2, id, &a2, now, jitter))
        .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, row = row.id, "cannot record a delivery attempt; it will be retried");
            return;
        }
    };
    let span = tracing::info_span!("deliver", sop = %row.sop_instance_uid, to = %row.destination_ae, attempt = row.attempts + 1);
    {
        // Entered only for these synchronous log lines, never across an .await.
        let _g = span.enter();
        match (&attempt, after) {
            (Attempt::Delivered { status }, _) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                if *status != 0 {
                    tracing::warn!(
                        status = format!("{status:#06x}"),
                        ms = elapsed.as_millis() as u64,
                        "delivered with a warning status"
                    );
                } else {
                    tracing::info!(ms = elapsed.as_millis() as u64, "delivered");
                }
            }
            (_, After::Dead) => {
                stats.dead.fetch_add(1, Ordering::Relaxed);
                tracing::error!(?attempt, "dead-lettered: no more tries");
            }
            (_, After::RetryAt(t)) => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    ?attempt,
                    retry_in_s = format!("{:.1}", t - now),
                    "delivery failed; will retry"
                );
            }
            (_, After::Delivered) => {}
        }
    }
    if let Some(job) = row.job_id {
        settle_job(db, job).await;
    }
}

/// Settles every `written` job none of whose objects is pending: a daemon stopped between
/// an object's last attempt and its job's settling would otherwise leave that job `written`
/// for good, and its study would never be finished (nor ever purged by retention).
pub async fn settle_written(db: &Db) {
    let ids = db.read(|c| {
        c.prepare(
            "SELECT id FROM jobs j WHERE state = 'written' AND NOT EXISTS
               (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.state = 'pending')",
        )?
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()
    });
    match ids {
        Ok(ids) => {
            for id in ids {
                settle_job(db, id).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list written jobs to settle"),
    }
}

/// Moves a `written` job to `delivered` or `failed` once none of its objects is pending.
async fn settle_job(db: &Db, job: i64) {
    let r = db
        .write(move |c| {
            let (pending, _delivered, dead) = outbox::job_summary(c, job)?;
            if pending > 0 {
                return Ok(None);
            }
            let state: String =
                c.query_row("SELECT state FROM jobs WHERE id = ?1", [job], |r| r.get(0))?;
            if state != JobState::Written.as_str() {
                return Ok(None);
            }
            let now = db::now();
            let outcome = if dead == 0 {
                jobs::transition(c, job, JobState::Delivered, None, now)
                    .map(|_| JobState::Delivered)
            } else {
                let why =
                    outbox::dead_reason(c, job)?.unwrap_or_else(|| "delivery dead-lettered".into());
                jobs::transition(
                    c,
                    job,
                    JobState::Failed,
                    Some(&format!("delivery: {why}")),
                    now,
                )
                .map(|_| JobState::Failed)
            };
            match outcome {
                Ok(s) => Ok(Some(s)),
                Err(jobs::JobError::Sql(e)) => Err(e),
                Err(e) => {
                    tracing::warn!(job, error = %e, "job not settled");
                    Ok(None)
                }
            }
        })
        .await;
    match r {
        Ok(Some(s)) => tracing::info!(job, state = s.as_str(), "job settled"),
        Ok(None) => {}
        Err(e) => tracing::error!(job, error = %e, "cannot settle job"),
    }
}

/// Errors of [`enqueue_files`].
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The destination is not a configured peer.
    #[error("{0:?} is not a [[dicom.peers]] entry")]
    UnknownPeer(String),
    /// A file could not be read or staged.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The index failed.
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
}

/// Copies Part 10 files durably into `data_dir/outbox/` and queues them for `to_ae` (manual
/// (re)sends by operators; the running daemon picks them up). Returns (file, row id) pairs.
pub fn enqueue_files(
    cfg: &crate::config::Config,
    to_ae: &str,
    files: &[std::path::PathBuf],
) -> Result<Vec<(String, i64)>, EnqueueError> {
    let peer = cfg
        .peer(to_ae)
        .ok_or_else(|| EnqueueError::UnknownPeer(to_ae.to_string()))?
        .clone();
    let dir = cfg.storage.data_dir.join("outbox");
    crate::store::private::create_dir_all(&dir).map_err(|e| EnqueueError::File {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let db = Db::open(&cfg.storage.data_dir.join("proxyseg.sqlite"))?;
    let mut out = Vec::new();
    for f in files {
        let ferr = |m: String| EnqueueError::File {
            path: f.display().to_string(),
            message: m,
        };
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(f)
            .map_err(|e| ferr(e.to_string()))?;
        let meta = obj.meta();
        let sop = crate::dicom::sop::trim_uid(&meta.media_storage_sop_instance_uid).to_string();
        let class = crate::dicom::sop::trim_uid(&meta.media_storage_sop_class_uid).to_string();
        if !crate::dicom::sop::is_valid_uid(&sop) {
            return Err(ferr(format!("invalid SOP Instance UID {sop:?}")));
        }
        let staged = dir.join(format!("{sop}.dcm"));
        let tmp = dir.join(format!(".{sop}.part"));
        let _ = std::fs::remove_file(&tmp);
        crate::store::private::copy(f, &tmp)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &staged))
            .map_err(|e| ferr(e.to_string()))?;
        crate::store::spool::sync_dir(&dir).map_err(|e| ferr(e.to_string()))?;
        let (p, s, c) = (peer.clone(), sop.clone(), staged.display().to_string());
        let id = db.write_blocking(move |conn| {
            outbox::enqueue(
                conn,
                None,
                &s,
                &class,
                &c,
                &p.ae_title,
                &p.host,
                p.port,
                p.tls,
                db::now(),
            )
        })?;
        out.push((f.display().to_string(), id));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instances::{record, test_record};

    /// A job left `written` with every object delivered (the daemon stopped before settling
    /// it) is settled at the next start; one with an object still pending stays `written`.
    #[tokio::test]
    async fn written_jobs_with_nothing_pending_are_settled_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let ids: Vec<i64> = db
            .write(|c| {
                record(c, &test_record("1.1", "1.5", 1.0))?;
                record(c, &test_record("2.1", "2.5", 1.0))?;
                let ids: Vec<i64> = jobs::complete_stable_studies(c, 1.0, 2.0)?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                for (id, state) in ids.iter().zip(["delivered", "pending"]) {
                    c.execute("UPDATE jobs SET state = 'written' WHERE id = ?1", [id])?;
                    let row = outbox::enqueue(
                        c,
                        Some(*id),
                        &format!("9.{id}"),
                        "1.2",
                        "/r.dcm",
                        "PACS",
                        "h",
                        104,
                        false,
                        2.0,
                    )?;
                    c.execute(
                        "UPDATE outbox SET state = ?2 WHERE id = ?1",
                        rusqlite::params![row, state],
                    )?;
                }
                Ok(ids)
            })
            .await
            .unwrap();
        settle_written(&db).await;
        let states: Vec<String> = db
            .read(|c| {
                c.prepare("SELECT state FROM jobs ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(states, ["delivered", "written"]);
    }
}
