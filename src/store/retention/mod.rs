//! Retention: when a study's PHI may leave the daemon, and the purge that removes it.
//!
//! A study is *finished* when it is not receiving, none of its jobs is unfinished (every one
//! `delivered`, `failed` or `unmatched`) and none of its SEGs waits for delivery (no `pending`
//! outbox row). From the moment its last job settled it is kept `retention.keep_delivered_hours`
//! ([`Outcome::Finished`]: every SEG delivered, or nothing to deliver) or
//! `retention.keep_failed_hours` ([`Outcome::Failed`]: a job failed or a delivery was
//! dead-lettered, kept longer for an admin to look into), then purged: its spool files, its SEG
//! results and their delivery files, and every index row that names it (`instances`, `studies`,
//! `jobs`, `job_events`, `outbox`, `unsynced`), with one audit row, in one transaction. An admin
//! may purge a finished study at once ([`Mandate::Admin`]).
//!
//! Never purges a study with work in flight, and never removes a file that a row committed
//! after the purge names.
//!
//! # Order: files out of their paths first, inside the transaction that deletes the rows
//!
//! [`purge_study`] runs as one request of the index's single writer ([`super::Db::write`]). It
//! checks that the study is finished, moves its files out of their paths into a trash folder
//! of its own (`data_dir/.purge/<random>/`, a rename on the same filesystem), deletes its rows
//! and writes the audit row; the writer then commits, and only then is the trash folder
//! unlinked, off the writer. Every other change to the study (an instance row, a job
//! transition, an admin retry) is a request of the same writer, so nothing can give the study
//! new work between the check and the deletion.
//!
//! The files leave their paths *before* the commit, not after it, because of how ingest names
//! files: the SCP renames a received instance into `spool/<study>/<series>/<sop>.dcm` before
//! its row commits, choosing the name from the rows it can read. Were the rows deleted and
//! committed first, a peer re-sending an instance at that moment would find no row, rename its
//! new copy onto the very path the purge is about to remove, be acknowledged, and lose it.
//! Moving the files before the commit means the purge only takes files whose rows are still
//! visible to everyone; an SCP that sees the rows gone can only be writing after the purge
//! finished with the paths. (An SCP that read an old row first, while its file was already
//! moved, writes its copy under a different name that the purge never touches; its row then
//! recreates the study, still receiving.)
//!
//! Renames, not unlinks, because the writer serialises every commit of the daemon: on the
//! 2-core development VM (virtio disk, ext4, another job running) one unlink of a 512 KiB file
//! took 3-4 ms (the filesystem frees its blocks) and one rename 9 us, so a 1000-instance study
//! holds the writer for about 10 ms instead of 4 s of stalled C-STOREs. The renames are made
//! durable (source folders and the trash folder fsynced) before the rows' deletion commits.
//!
//! When the purge fails inside its transaction (a file that cannot be moved), the files go
//! back where they were before the request rolls back; when the commit fails, they go back
//! after it, where nothing took their place. A crash between the moves and the commit leaves
//! the rows naming files that are in the trash: no later job reads them (the study was
//! finished, so none of its jobs runs again unless an admin retries one, which then fails with
//! "cannot read" on a study that is due for purging anyway). The next start empties every
//! trash folder, drops instance rows whose file is missing after an unclean stop
//! ([`super::instances::drop_missing`]), and the next pass purges the rest of the study,
//! counting files already gone as missing. A crash after the commit leaves only a trash folder,
//! emptied at the next start. So no row is left naming a file a later job needs, and no PHI
//! file is left that nothing will remove: results folders and staged delivery files that no
//! row names any more (an older crash, a lost rename) are removed by [`sweep_leftovers`] on
//! every pass.
//!
//! # Files
//!
//! `finished` (when a study is finished and when it is due: [`in_flight`], [`due`]), `trash`
//! ([`Trash`], where a purge's files wait for its commit, and [`Removed`]), `purge` (one
//! study's purge: [`purge_study`], [`purge()`]), `sweep` (manual sends past their retention and
//! leftovers no row names: [`purge_manual`], [`sweep_leftovers`]).

mod finished;
mod purge;
mod sweep;
mod trash;

pub use finished::{due, in_flight, Due};
pub use purge::{purge, purge_study, results_dir};
pub use sweep::{outbox_dir, purge_manual, purge_manual_sends, sweep_leftovers};
pub use trash::{remove_trash, stale_trash, Removed, Trash, TRASH};

use crate::config::RetentionConfig;
use crate::store::DbError;
use std::path::{Path, PathBuf};

/// Token name of the retention sweeper in the audit log.
pub const SWEEPER: &str = "retention";

/// Audit action of a study purge.
pub const ACTION: &str = "study.purge";

/// Counter of purged studies, labelled `by` (`retention`, `admin`) and `outcome`.
pub const PURGED_STUDIES: &str = "proxyseg_studies_purged_total";
/// Counter of bytes removed from disk by purges and leftover sweeps.
pub const PURGED_BYTES: &str = "proxyseg_purged_bytes_total";

/// Records a purge in the metrics (`by`: `retention` or `admin`); no UID ever goes there.
pub fn count_purge(metrics: &crate::metrics::Metrics, by: &str, p: &Purged) {
    let outcome = p.outcome.map_or("finished", |o| o.as_str());
    metrics.inc(PURGED_STUDIES, &[("by", by), ("outcome", outcome)]);
    metrics.add(PURGED_BYTES, &[], p.bytes as f64);
}

/// How long finished studies are kept, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// For [`Outcome::Finished`] studies.
    pub keep_finished_s: f64,
    /// For [`Outcome::Failed`] studies.
    pub keep_failed_s: f64,
}

impl Policy {
    /// The policy of a `[retention]` table.
    pub fn from_config(c: &RetentionConfig) -> Policy {
        Policy {
            keep_finished_s: c.keep_delivered_hours * 3600.0,
            keep_failed_s: c.keep_failed_hours * 3600.0,
        }
    }

    /// Seconds a study with this outcome is kept.
    pub fn keep_s(&self, outcome: Outcome) -> f64 {
        match outcome {
            Outcome::Finished => self.keep_finished_s,
            Outcome::Failed => self.keep_failed_s,
        }
    }
}

/// How a finished study ended, which decides how long it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every SEG was delivered, or there was nothing to deliver (no rule matched).
    Finished,
    /// A job failed (dead-lettered included) or a SEG delivery was dead-lettered.
    Failed,
}

impl Outcome {
    /// The word used in metrics labels and audit rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Failed => "failed",
        }
    }

    /// The config key that keeps studies with this outcome.
    pub fn config_key(self) -> &'static str {
        match self {
            Outcome::Finished => "retention.keep_delivered_hours",
            Outcome::Failed => "retention.keep_failed_hours",
        }
    }
}

/// Who asked for a purge, and what must still hold when it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Mandate {
    /// The retention sweeper: the study must be finished and its retention time over.
    Retention(Policy),
    /// An admin: the study must be finished; it goes at once.
    Admin {
        /// Name of the admin token (the audit row's `token_name`).
        token: String,
        /// Why, as the admin gave it (may be empty).
        reason: String,
    },
}

impl Mandate {
    /// The audit row's `token_name`.
    pub fn who(&self) -> &str {
        match self {
            Mandate::Retention(_) => SWEEPER,
            Mandate::Admin { token, .. } => token,
        }
    }
}

/// What a purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    /// Study Instance UID.
    pub study_uid: String,
    /// How the study ended.
    pub outcome: Option<Outcome>,
    /// Instance rows removed.
    pub instances: u64,
    /// Job rows removed (with their events).
    pub jobs: u64,
    /// Outbox rows removed.
    pub outbox_rows: u64,
    /// Files unlinked: spool files, SEG results, delivery files.
    pub files: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Instance files that were already gone (a purge cut short by a crash, a lost disk).
    pub missing: u64,
}

/// Errors of retention and purges.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// No such study in the index.
    #[error("study {0} is not held here (never received, or already purged)")]
    NotFound(String),
    /// The study still has work: it is receiving, a job of it is unfinished or a SEG of it
    /// waits for delivery.
    #[error("study {study} has work in flight: {why}")]
    InFlight {
        /// The study.
        study: String,
        /// What is still going on.
        why: String,
    },
    /// The sweeper's study is no longer due (a job of it settled again since it was listed).
    #[error("study {study} is kept until {due_at:.0} (Unix time)")]
    NotDue {
        /// The study.
        study: String,
        /// When it will be due.
        due_at: f64,
    },
    /// A file could not be removed or listed; the purge was rolled back.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What we did.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// SQLite failed inside the purge.
    #[error("index: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The index writer failed (commit, shutdown).
    #[error(transparent)]
    Db(#[from] DbError),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RetentionError {
    let path = path.to_owned();
    move |source| RetentionError::Io { op, path, source }
}

#[cfg(test)]
mod fixture;
