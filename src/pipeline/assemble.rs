//! Study assembly: one peer's part of a study is complete when no instance of it arrived from
//! that peer for `stable_age_s`; each complete part becomes a job in state `complete` (a study
//! two peers send becomes two jobs, one per peer).
//!
//! The decision uses the index's timestamps, so a restart completes exactly the studies whose
//! stable age passed while the daemon was down, and never completes a study early.

use crate::store::{db, jobs, Db};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Progress marker: bumped on every assembly pass that committed (for the watchdog).
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Number of assembler passes that reached the database.
    pub passes: AtomicU64,
    /// Number of jobs created.
    pub jobs_created: AtomicU64,
}

/// Runs the assembler until `shutdown` turns true.
pub async fn run(
    db: Db,
    stable_age: Duration,
    max_receiving: Duration,
    every: Duration,
    beat: Arc<Heartbeat>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = db::now();
        let cutoff = now - stable_age.as_secs_f64();
        let overdue = Some(now - max_receiving.as_secs_f64());
        match db
            .write(move |c| jobs::complete_ready_studies(c, cutoff, overdue, now))
            .await
        {
            Ok(created) => {
                beat.passes.fetch_add(1, Ordering::Relaxed);
                for (id, part) in &created {
                    tracing::info!(job = id, study = %part.study_uid, peer = %part.calling_ae, host = %part.source_host, "study complete from this peer: job created");
                }
                beat.jobs_created
                    .fetch_add(created.len() as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "study assembly failed; will retry"),
        }
    }
}
