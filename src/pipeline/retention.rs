//! The retention sweeper: every `retention.sweep_interval_s` it purges each study whose
//! retention time is over ([`crate::store::retention`] decides and purges, one study per index
//! write, audited as token `retention`), then manual sends past their time and leftovers no row
//! names. The first pass runs at start, so a daemon that was down catches up at once.
//!
//! It never purges a study with work in flight: each purge checks again inside its own
//! transaction. Metrics carry counts and outcomes only, never a UID.

use crate::metrics::Metrics;
use crate::store::retention::{self, count_purge, Mandate, Policy, RetentionError, PURGED_BYTES};
use crate::store::{db, Db};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// Studies listed per query; a pass lists again until none is left.
const BATCH: usize = 64;

/// Age a staged delivery file without a row must have before it counts as a leftover: a
/// `proxyseg send` in another process stages its file just before its row commits.
pub const LEFTOVER_MIN_AGE_S: f64 = 3600.0;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Studies purged.
    pub studies: u64,
    /// Manual sends purged.
    pub manual_sends: u64,
    /// Files removed (studies, sends, leftovers).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Studies whose purge failed (left for the next pass).
    pub failed: u64,
}

/// Runs the sweeper until `shutdown`.
pub async fn run(
    db: Db,
    data_dir: PathBuf,
    cfg: crate::config::RetentionConfig,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let policy = Policy::from_config(&cfg);
    tracing::info!(
        keep_delivered_hours = cfg.keep_delivered_hours,
        keep_failed_hours = cfg.keep_failed_hours,
        every_s = cfg.sweep_interval_s,
        "retention sweeper running"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.sweep_interval_s.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let p = pass(&db, &data_dir, policy, &metrics, &shutdown).await;
        if p.studies + p.manual_sends + p.files + p.failed > 0 {
            tracing::info!(
                studies = p.studies,
                manual_sends = p.manual_sends,
                files = p.files,
                bytes = p.bytes,
                failed = p.failed,
                "retention pass finished"
            );
        } else {
            tracing::debug!("retention pass finished: nothing due");
        }
    }
}

/// One pass: every due study, then manual sends, then leftovers. Stops early at shutdown.
pub async fn pass(
    db: &Db,
    data_dir: &std::path::Path,
    policy: Policy,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Pass {
    let mut out = Pass::default();
    // Studies that could not be purged this pass are not listed again until the next one.
    let mut skip: HashSet<String> = HashSet::new();
    'listing: loop {
        let now = db::now();
        let limit = BATCH + skip.len();
        let due = match db.read(|c| retention::due(c, &policy, now, limit)) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot list the studies due");
                break;
            }
        };
        let todo: Vec<_> = due
            .into_iter()
            .filter(|d| !skip.contains(&d.study_uid))
            .collect();
        if todo.is_empty() {
            break;
        }
        for d in todo {
            if *shutdown.borrow() {
                break 'listing;
            }
            match retention::purge(db, data_dir, &d.study_uid, Mandate::Retention(policy)).await {
                Ok(p) => {
                    count_purge(metrics, "retention", &p);
                    tracing::info!(
                        study = %p.study_uid,
                        outcome = d.outcome.as_str(),
                        instances = p.instances,
                        files = p.files,
                        bytes = p.bytes,
                        missing = p.missing,
                        "study purged: retention time over"
                    );
                    out.studies += 1;
                    out.files += p.files;
                    out.bytes += p.bytes;
                }
                Err(e @ (RetentionError::InFlight { .. } | RetentionError::NotDue { .. })) => {
                    // Work arrived since it was listed: it is simply not due any more.
                    tracing::info!(study = %d.study_uid, reason = %e, "study not purged");
                    skip.insert(d.study_uid);
                }
                Err(RetentionError::NotFound(_)) => {
                    // Purged meanwhile (by an admin).
                    skip.insert(d.study_uid);
                }
                Err(e) => {
                    tracing::error!(study = %d.study_uid, error = %e, "cannot purge a study; it is retried at the next pass");
                    out.failed += 1;
                    skip.insert(d.study_uid);
                }
            }
        }
    }
    if *shutdown.borrow() {
        return out;
    }
    match retention::purge_manual(db, data_dir, policy).await {
        Ok((rows, removed)) => {
            if rows > 0 {
                tracing::info!(
                    sends = rows,
                    files = removed.files,
                    "manual sends purged: retention time over"
                );
            }
            out.manual_sends += rows;
            out.files += removed.files;
            out.bytes += removed.bytes;
            metrics.add(PURGED_BYTES, &[], removed.bytes as f64);
        }
        Err(e) => tracing::error!(error = %e, "cannot purge manual sends"),
    }
    let (db2, dir) = (db.clone(), data_dir.to_owned());
    let leftovers = tokio::task::spawn_blocking(move || {
        retention::sweep_leftovers(
            &db2,
            &dir,
            db::now(),
            LEFTOVER_MIN_AGE_S,
            policy.keep_s(retention::Outcome::Failed),
        )
    })
    .await;
    match leftovers {
        Ok(Ok(removed)) => {
            out.files += removed.files;
            out.bytes += removed.bytes;
            metrics.add(PURGED_BYTES, &[], removed.bytes as f64);
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot sweep leftover result files"),
        Err(e) => tracing::error!(error = %e, "leftover sweep panicked"),
    }
    out
}
