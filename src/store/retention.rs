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

use crate::config::RetentionConfig;
use crate::store::db::TypedWriteError;
use crate::store::{audit, db, Db, DbError};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Job states after which nothing happens to a job on its own.
const SETTLED: &str = "('delivered', 'failed', 'unmatched')";

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

/// A finished study and when its retention time ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// Study Instance UID.
    pub study_uid: String,
    /// How it ended.
    pub outcome: Outcome,
    /// When its last job settled (or it completed, without jobs), Unix seconds.
    pub finished_at: f64,
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

/// Why `study` cannot be purged now, or None when it is finished. [`RetentionError::NotFound`]
/// for a study the index does not hold.
pub fn in_flight(conn: &Connection, study: &str) -> Result<Option<String>, RetentionError> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM studies WHERE study_uid = ?1",
            [study],
            |r| r.get(0),
        )
        .optional()?;
    match state.as_deref() {
        None => return Err(RetentionError::NotFound(study.to_string())),
        Some("receiving") => {
            return Ok(Some(
                "it is still receiving (no job yet for its latest instances)".into(),
            ))
        }
        Some(_) => {}
    }
    let unfinished: Vec<String> = conn
        .prepare(&format!(
            "SELECT 'job ' || id || ' is ' || state FROM jobs
             WHERE study_uid = ?1 AND state NOT IN {SETTLED} ORDER BY id"
        ))?
        .query_map([study], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let pending: i64 = conn.query_row(
        "SELECT COUNT(*) FROM outbox o JOIN jobs j ON j.id = o.job_id
         WHERE j.study_uid = ?1 AND o.state = 'pending'",
        [study],
        |r| r.get(0),
    )?;
    let mut why = unfinished;
    if pending > 0 {
        why.push(format!("{pending} SEG delivery(ies) still pending"));
    }
    Ok((!why.is_empty()).then(|| why.join(", ")))
}

/// The end of a finished study: when its last job settled, and how.
const FINISH: &str = "
    MAX(COALESCE(s.completed_at, s.last_received_at),
        COALESCE((SELECT MAX(j.updated_at) FROM jobs j WHERE j.study_uid = s.study_uid), 0))
        AS finished_at,
    EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid AND j.state = 'failed')
        OR EXISTS (SELECT 1 FROM outbox o JOIN jobs j ON j.id = o.job_id
                   WHERE j.study_uid = s.study_uid AND o.state = 'dead') AS failed";

/// Conditions of a finished study, as [`in_flight`] checks them (the job states are
/// [`SETTLED`]'s).
const FINISHED: &str = "
    s.state = 'complete'
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid
                    AND j.state NOT IN ('delivered', 'failed', 'unmatched'))
    AND NOT EXISTS (SELECT 1 FROM outbox o JOIN jobs j ON j.id = o.job_id
                    WHERE j.study_uid = s.study_uid AND o.state = 'pending')";

fn outcome(failed: bool) -> Outcome {
    if failed {
        Outcome::Failed
    } else {
        Outcome::Finished
    }
}

/// Finished studies whose retention time under `policy` is over at `now`, longest over first,
/// at most `limit`.
pub fn due(
    conn: &Connection,
    policy: &Policy,
    now: f64,
    limit: usize,
) -> rusqlite::Result<Vec<Due>> {
    let mut st = conn.prepare(&format!(
        "SELECT study_uid, finished_at, failed FROM (
            SELECT s.study_uid, {FINISH} FROM studies s WHERE {FINISHED})
         WHERE finished_at <= CASE WHEN failed THEN ?1 ELSE ?2 END
         ORDER BY finished_at, study_uid LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![
            now - policy.keep_failed_s,
            now - policy.keep_finished_s,
            limit as i64
        ],
        |r| {
            Ok(Due {
                study_uid: r.get(0)?,
                finished_at: r.get(1)?,
                outcome: outcome(r.get(2)?),
            })
        },
    )?;
    rows.collect()
}

/// How `study` ended and when, if it is finished.
fn finish_of(conn: &Connection, study: &str) -> rusqlite::Result<Option<(f64, Outcome)>> {
    conn.query_row(
        &format!("SELECT {FINISH} FROM studies s WHERE s.study_uid = ?1 AND {FINISHED}"),
        [study],
        |r| Ok((r.get(0)?, outcome(r.get(1)?))),
    )
    .optional()
}

/// Files removed so far by a purge or a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Files unlinked.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Removed {
    /// Unlinks a file, counting it; Ok(false) when it was already gone.
    fn file(&mut self, path: &Path) -> Result<bool, RetentionError> {
        let size = match std::fs::symlink_metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("stat", path)(e)),
        };
        match std::fs::remove_file(path) {
            Ok(()) => {
                self.files += 1;
                self.bytes += size;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", path)(e)),
        }
    }

    /// Removes a folder and everything in it, counting its files (symlinks are removed, never
    /// followed); nothing when it does not exist.
    fn tree(&mut self, dir: &Path) -> Result<(), RetentionError> {
        self.add(count_tree(dir)?);
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", dir)(e)),
            _ => Ok(()),
        }
    }

    fn add(&mut self, other: Removed) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// Files and bytes under `dir` (symlinks counted, never followed); zero when it is gone.
fn count_tree(dir: &Path) -> Result<Removed, RetentionError> {
    let mut n = Removed::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(n),
        Err(e) => return Err(io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        let p = entry.path();
        let meta = std::fs::symlink_metadata(&p).map_err(io("stat", &p))?;
        if meta.is_dir() {
            n.add(count_tree(&p)?);
        } else {
            n.files += 1;
            n.bytes += meta.len();
        }
    }
    Ok(n)
}

/// Folder under the data dir that holds the trash of purges until their commit.
pub const TRASH: &str = ".purge";

/// Where one purge moves the files it takes, until its transaction committed (then
/// [`Trash::empty`]) or failed (then [`Trash::restore`]). See the module doc.
#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    /// (original path, path in the trash), in the order taken.
    moved: Vec<(PathBuf, PathBuf)>,
    /// Folders files were moved out of, fsynced with the trash before the commit.
    sources: HashSet<PathBuf>,
    /// What was taken (moved, or unlinked where a rename could not reach the trash).
    taken: Removed,
}

impl Trash {
    /// A new, not yet created, trash folder under `data_dir/.purge/`.
    pub fn new(data_dir: &Path) -> Trash {
        Trash {
            dir: data_dir
                .join(TRASH)
                .join(format!("{:016x}", rand::random::<u64>())),
            moved: Vec::new(),
            sources: HashSet::new(),
            taken: Removed::default(),
        }
    }

    /// Files and bytes taken so far.
    pub fn taken(&self) -> Removed {
        self.taken
    }

    /// Moves the file or folder at `path` into the trash, counting its files; Ok(false) when
    /// nothing is there. Where the trash is on another filesystem (a spool mounted apart), the
    /// file is unlinked in place instead (slower, and not undone by [`Trash::restore`]).
    fn take(&mut self, path: &Path) -> Result<bool, RetentionError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("stat", path)(e)),
        };
        let size = if meta.is_dir() {
            count_tree(path)?
        } else {
            Removed {
                files: 1,
                bytes: meta.len(),
            }
        };
        if self.moved.is_empty() {
            super::private::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        }
        let to = self.dir.join(self.moved.len().to_string());
        match std::fs::rename(path, &to) {
            Ok(()) => {
                self.moved.push((path.to_owned(), to));
                if let Some(parent) = path.parent() {
                    self.sources.insert(parent.to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                let mut gone = Removed::default();
                if meta.is_dir() {
                    gone.tree(path)?;
                } else {
                    gone.file(path)?;
                }
            }
            Err(e) => return Err(io("move to the trash", path)(e)),
        }
        self.taken.add(size);
        Ok(true)
    }

    /// Makes the moves durable: every source folder, then the trash folder, fsynced.
    fn sync(&self) -> Result<(), RetentionError> {
        if self.moved.is_empty() {
            return Ok(());
        }
        for dir in self.sources.iter().chain(std::iter::once(&self.dir)) {
            super::spool::sync_dir(dir).map_err(|e| match e {
                super::SpoolError::Io { path, source, .. } => RetentionError::Io {
                    op: "fsync",
                    path,
                    source,
                },
                other => RetentionError::Io {
                    op: "fsync",
                    path: dir.clone(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        }
        Ok(())
    }

    /// Puts every moved file back where it was, unless something took its place meanwhile,
    /// then empties the trash. For a purge whose rows were not deleted after all.
    pub fn restore(&mut self) {
        for (from, to) in self.moved.drain(..).rev() {
            if from.symlink_metadata().is_ok() {
                continue;
            }
            if let Err(e) = std::fs::rename(&to, &from) {
                tracing::error!(path = %from.display(), error = %e, "cannot put a file back after a failed purge");
            }
        }
        self.taken = Removed::default();
        self.empty();
    }

    /// Unlinks the trash folder and everything in it (after the purge committed).
    pub fn empty(&mut self) {
        self.moved.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(path = %self.dir.display(), error = %e, "cannot empty a purge's trash; the next start does");
            }
        }
    }
}

/// Trash folders under `data_dir/.purge/` now: at start, before any purge runs, these are the
/// leftovers of purges a stop or crash interrupted (committed or not, their files go).
pub fn stale_trash(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join(TRASH))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Unlinks the given trash folders ([`stale_trash`]); returns what they held.
pub fn remove_trash(dirs: &[PathBuf]) -> Removed {
    let mut removed = Removed::default();
    for d in dirs {
        if let Err(e) = removed.tree(d) {
            tracing::error!(error = %e, "cannot empty a purge's trash");
        }
    }
    removed
}

/// Removes empty folders left by a purge: each given spool series folder, then its study
/// folder. A folder that is not empty (a new instance arrived) or already gone stays as it is.
fn remove_empty_dirs(dirs: &HashSet<PathBuf>) {
    let mut parents = HashSet::new();
    for d in dirs {
        let _ = std::fs::remove_dir(d);
        if let Some(p) = d.parent() {
            parents.insert(p.to_owned());
        }
    }
    for p in parents {
        let _ = std::fs::remove_dir(p);
    }
}

/// Where the SEG results of job `id` are written (see `pipeline::worker`).
pub fn results_dir(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("results").join(id.to_string())
}

/// Purges `study` in the caller's transaction: checks `mandate`, moves its spool files, its
/// jobs' results folders and their delivery files (outbox paths inside `data_dir` only) into
/// `trash` and makes that durable, then deletes its rows and writes one audit row. Run it as
/// one request of the index writer and empty the trash after the commit, or restore it when
/// anything failed (see the module doc for why files go first); [`purge`] does all that.
pub fn purge_study(
    conn: &Connection,
    data_dir: &Path,
    study: &str,
    mandate: &Mandate,
    now: f64,
    trash: &mut Trash,
) -> Result<Purged, RetentionError> {
    if let Some(why) = in_flight(conn, study)? {
        return Err(RetentionError::InFlight {
            study: study.to_string(),
            why,
        });
    }
    let Some((finished_at, outcome)) = finish_of(conn, study)? else {
        // in_flight found nothing unfinished, so the study is finished: unreachable unless
        // the two queries disagree; refuse rather than guess.
        return Err(RetentionError::InFlight {
            study: study.to_string(),
            why: "its state changed while it was checked".into(),
        });
    };
    let why = match mandate {
        Mandate::Retention(policy) => {
            let keep = policy.keep_s(outcome);
            let due_at = finished_at + keep;
            if due_at > now {
                return Err(RetentionError::NotDue {
                    study: study.to_string(),
                    due_at,
                });
            }
            format!(
                "{} {:.1} h ago, kept {} = {} h",
                outcome.as_str(),
                (now - finished_at) / 3600.0,
                outcome.config_key(),
                keep / 3600.0
            )
        }
        Mandate::Admin { reason, .. } if reason.trim().is_empty() => {
            format!("{}; requested by an admin", outcome.as_str())
        }
        Mandate::Admin { reason, .. } => format!(
            "{}; requested by an admin: {}",
            outcome.as_str(),
            reason.trim()
        ),
    };
    let strings = |sql: &str| -> rusqlite::Result<Vec<String>> {
        conn.prepare(sql)?
            .query_map([study], |r| r.get(0))?
            .collect()
    };
    let instance_paths = strings("SELECT path FROM instances WHERE study_uid = ?1 ORDER BY path")?;
    let jobs: Vec<i64> = conn
        .prepare("SELECT id FROM jobs WHERE study_uid = ?1 ORDER BY id")?
        .query_map([study], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let outbox_paths = strings(
        "SELECT o.path FROM outbox o JOIN jobs j ON j.id = o.job_id WHERE j.study_uid = ?1",
    )?;

    let mut missing = 0;
    let mut dirs = HashSet::new();
    for p in &instance_paths {
        let p = Path::new(p);
        if !trash.take(p)? {
            missing += 1;
        }
        if let Some(d) = p.parent() {
            dirs.insert(d.to_owned());
        }
    }
    for id in &jobs {
        trash.take(&results_dir(data_dir, *id))?;
    }
    for p in &outbox_paths {
        // SEGs live in their job's results folder (taken by now); never touch a file outside
        // the data dir.
        if Path::new(p).starts_with(data_dir) {
            trash.take(Path::new(p))?;
        }
    }
    trash.sync()?;
    remove_empty_dirs(&dirs);
    let removed = trash.taken();

    let in_jobs = "(SELECT id FROM jobs WHERE study_uid = ?1)";
    conn.execute(
        &format!("DELETE FROM job_events WHERE job_id IN {in_jobs}"),
        [study],
    )?;
    let outbox_rows = conn.execute(
        &format!("DELETE FROM outbox WHERE job_id IN {in_jobs}"),
        [study],
    )?;
    let job_rows = conn.execute("DELETE FROM jobs WHERE study_uid = ?1", [study])?;
    conn.execute(
        "DELETE FROM unsynced WHERE sop_instance_uid IN
            (SELECT sop_instance_uid FROM instances WHERE study_uid = ?1)",
        [study],
    )?;
    let instances = conn.execute("DELETE FROM instances WHERE study_uid = ?1", [study])?;
    conn.execute("DELETE FROM study_peers WHERE study_uid = ?1", [study])?;
    conn.execute("DELETE FROM studies WHERE study_uid = ?1", [study])?;
    let purged = Purged {
        study_uid: study.to_string(),
        outcome: Some(outcome),
        instances: instances as u64,
        jobs: job_rows as u64,
        outbox_rows: outbox_rows as u64,
        files: removed.files,
        bytes: removed.bytes,
        missing,
    };
    audit::record(
        conn,
        mandate.who(),
        ACTION,
        &format!("study:{study}"),
        &format!(
            "{} file(s), {} byte(s) removed: {} instance(s) ({} file(s) already gone), {} job(s), \
             {} SEG delivery row(s); {why}",
            purged.files,
            purged.bytes,
            purged.instances,
            purged.missing,
            purged.jobs,
            purged.outbox_rows
        ),
        now,
    )?;
    Ok(purged)
}

/// Runs `f` as one request of the index writer; a typed error rolls the request back and
/// comes back as itself.
async fn write<T, F>(db: &Db, f: F) -> Result<T, RetentionError>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, RetentionError> + Send + 'static,
{
    db.write_typed(f).await.map_err(|e| match e {
        TypedWriteError::Domain(e) => e,
        TypedWriteError::Db(e) => RetentionError::Db(e),
    })
}

/// Runs `f` with a fresh [`Trash`] as one request of the index writer, then empties the
/// trash once the request committed, or puts its files back when it failed (inside the
/// request, before it rolled back, for an error of `f`; after, for a failed commit).
async fn write_with_trash<T, F>(db: &Db, data_dir: &Path, f: F) -> Result<T, RetentionError>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut Trash) -> Result<T, RetentionError> + Send + 'static,
{
    let trash = Arc::new(Mutex::new(Trash::new(data_dir)));
    let t = trash.clone();
    let r = write(db, move |c| {
        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(c, &mut t);
        if r.is_err() {
            t.restore();
        }
        r
    })
    .await;
    let committed = r.is_ok();
    let settle = tokio::task::spawn_blocking(move || {
        let mut t = trash.lock().unwrap_or_else(|p| p.into_inner());
        if committed {
            t.empty();
        } else {
            t.restore();
        }
    });
    if let Err(e) = settle.await {
        tracing::error!(error = %e, "emptying a purge's trash panicked; the next start empties it");
    }
    r
}

/// [`purge_study`] as one request of the index writer, at the current time; its files are
/// unlinked (off the writer) before this returns.
pub async fn purge(
    db: &Db,
    data_dir: &Path,
    study: &str,
    mandate: Mandate,
) -> Result<Purged, RetentionError> {
    let (dir, uid) = (data_dir.to_owned(), study.to_string());
    write_with_trash(db, data_dir, move |c, trash| {
        purge_study(c, &dir, &uid, &mandate, db::now(), trash)
    })
    .await
}

/// The staging folder of manual sends (`proxyseg send`, see `pipeline::deliver`).
pub fn outbox_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("outbox")
}

/// Purges manual sends (outbox rows without a job) whose retention time is over: delivered
/// ones after `keep_finished_s` from delivery, dead ones after `keep_failed_s` from their last
/// try. Their staged files (only inside the data dir's `outbox/`) go into `trash` in the
/// caller's transaction, as for studies, and one audit row records the lot. Returns the rows
/// removed.
pub fn purge_manual_sends(
    conn: &Connection,
    data_dir: &Path,
    policy: &Policy,
    now: f64,
    trash: &mut Trash,
) -> Result<u64, RetentionError> {
    let rows: Vec<(i64, String)> = conn
        .prepare(
            "SELECT id, path FROM outbox WHERE job_id IS NULL AND (
                (state = 'delivered' AND delivered_at <= ?1) OR
                (state = 'dead' AND next_try_at <= ?2))",
        )?
        .query_map(
            params![now - policy.keep_finished_s, now - policy.keep_failed_s],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let staging = outbox_dir(data_dir);
    for (id, path) in &rows {
        if Path::new(path).starts_with(&staging) {
            trash.take(Path::new(path))?;
        }
        conn.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
    }
    trash.sync()?;
    let removed = trash.taken();
    audit::record(
        conn,
        SWEEPER,
        "outbox.purge",
        "outbox",
        &format!(
            "{} manual send(s) past retention: {} file(s), {} byte(s) removed",
            rows.len(),
            removed.files,
            removed.bytes
        ),
        now,
    )?;
    Ok(rows.len() as u64)
}

/// [`purge_manual_sends`] as one request of the index writer, at the current time. Returns
/// (rows, files removed).
pub async fn purge_manual(
    db: &Db,
    data_dir: &Path,
    policy: Policy,
) -> Result<(u64, Removed), RetentionError> {
    let dir = data_dir.to_owned();
    write_with_trash(db, data_dir, move |c, trash| {
        let rows = purge_manual_sends(c, &dir, &policy, db::now(), trash)?;
        Ok((rows, trash.taken()))
    })
    .await
}

/// Removes what no row names any more, which only a crash or a lost unlink leaves: folders
/// under `results/` named after a job id that has no row (job ids are never reused, and a
/// job's folder is made only after its row), and files in `outbox/` that no outbox row names
/// and that are older than `min_age_s` (`proxyseg send` stages its file before its row
/// commits, from another process), and files that crash recovery moved aside to
/// `spool/.orphans/` (never acknowledged) once they are older than `orphans_keep_s`. Reads
/// the index; deletes outside the writer.
pub fn sweep_leftovers(
    db: &Db,
    data_dir: &Path,
    now: f64,
    min_age_s: f64,
    orphans_keep_s: f64,
) -> Result<Removed, RetentionError> {
    let mut removed = Removed::default();
    let orphans = data_dir.join("spool").join(crate::store::spool::ORPHANS);
    if let Ok(rd) = std::fs::read_dir(&orphans) {
        for p in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
            if let Some(age) = age_s(&p, now) {
                if age >= orphans_keep_s {
                    tracing::info!(path = %p.display(), "removing a spool file set aside after a crash (retention time over)");
                    removed.file(&p)?;
                }
            }
        }
    }
    let results = data_dir.join("results");
    let dirs: Vec<(i64, PathBuf)> = match std::fs::read_dir(&results) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let id = e.file_name().to_str()?.parse::<i64>().ok()?;
                Some((id, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("list", &results)(e)),
    };
    if !dirs.is_empty() {
        let known: HashSet<i64> = db.read(|c| {
            c.prepare("SELECT id FROM jobs")?
                .query_map([], |r| r.get(0))?
                .collect()
        })?;
        for (id, dir) in dirs {
            if !known.contains(&id) {
                tracing::warn!(
                    job = id,
                    "removing the results of a job no row names any more"
                );
                removed.tree(&dir)?;
            }
        }
    }
    let staging = outbox_dir(data_dir);
    let staged: Vec<PathBuf> = match std::fs::read_dir(&staging) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("list", &staging)(e)),
    };
    if !staged.is_empty() {
        let named: HashSet<PathBuf> = db.read(|c| {
            c.prepare("SELECT path FROM outbox")?
                .query_map([], |r| r.get::<_, String>(0).map(PathBuf::from))?
                .collect()
        })?;
        for p in staged {
            if named.contains(&p) {
                continue;
            }
            if age_s(&p, now).is_some_and(|age| age >= min_age_s) {
                tracing::warn!(path = %p.display(), "removing a staged delivery file no row names");
                removed.file(&p)?;
            }
        }
    }
    Ok(removed)
}

/// Seconds since a plain file was last modified (`None` for anything else or on error).
fn age_s(p: &Path, now: f64) -> Option<f64> {
    let meta = std::fs::symlink_metadata(p).ok()?;
    if !meta.is_file() {
        return None;
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |d| d.as_secs_f64());
    Some(now - modified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instances::{record, test_record};
    use crate::store::jobs::{complete_stable_studies, transition, JobState};

    const HOUR: f64 = 3600.0;

    fn policy() -> Policy {
        Policy {
            keep_finished_s: 10.0 * HOUR,
            keep_failed_s: 100.0 * HOUR,
        }
    }

    /// An index and its data dir, with helpers that receive instances (real spool files),
    /// complete studies, move jobs and queue SEGs.
    struct Fixture {
        dir: tempfile::TempDir,
        db: Db,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
            Fixture { dir, db }
        }

        fn data(&self) -> PathBuf {
            self.dir.path().to_owned()
        }

        /// Receives instance `sop` of `study` at `t` (file written under spool/).
        fn receive(&self, sop: &str, study: &str, t: f64) -> PathBuf {
            let path = self
                .data()
                .join("spool")
                .join(study)
                .join("1.9")
                .join(format!("{sop}.dcm"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![7u8; 100]).unwrap();
            let mut r = test_record(sop, study, t);
            r.path = path.display().to_string();
            self.db.write_blocking(move |c| record(c, &r)).unwrap();
            path
        }

        /// Completes every receiving study at `t`; returns the new job ids.
        fn complete(&self, t: f64) -> Vec<i64> {
            self.db
                .write_blocking(move |c| complete_stable_studies(c, t, t))
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        }

        fn to(&self, id: i64, states: &[JobState], t: f64) {
            let states = states.to_vec();
            self.db
                .write_blocking(move |c| {
                    for s in states {
                        transition(c, id, s, Some("test"), t).map_err(|e| {
                            rusqlite::Error::ToSqlConversionFailure(Box::new(
                                std::io::Error::other(e.to_string()),
                            ))
                        })?;
                    }
                    Ok(())
                })
                .unwrap();
        }

        /// A SEG of job `id` in its results folder, queued in the outbox with `state`.
        fn seg(&self, id: i64, sop: &str, state: &str, t: f64) -> PathBuf {
            let dir = results_dir(&self.data(), id);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{sop}.dcm"));
            std::fs::write(&path, vec![1u8; 50]).unwrap();
            let (p, st) = (path.display().to_string(), state.to_string());
            let sop = sop.to_string();
            self.db
                .write_blocking(move |c| {
                    let row = crate::store::outbox::enqueue(
                        c,
                        Some(id),
                        &sop,
                        "1.2.840.10008.5.1.4.1.1.66.4",
                        &p,
                        "PACS",
                        "127.0.0.1",
                        104,
                        false,
                        t,
                    )?;
                    c.execute(
                        "UPDATE outbox SET state = ?2, delivered_at = ?3 WHERE id = ?1",
                        params![row, st, t],
                    )
                })
                .unwrap();
            path
        }

        fn due(&self, now: f64) -> Vec<(String, Outcome)> {
            self.db
                .read(|c| due(c, &policy(), now, 100))
                .unwrap()
                .into_iter()
                .map(|d| (d.study_uid, d.outcome))
                .collect()
        }

        /// [`purge_study`] under the sweeper's mandate at `now`, as one request; its trash
        /// emptied after the commit (put back on an error, as [`purge`] does).
        fn purge_at(&self, study: &str, now: f64) -> Result<Purged, RetentionError> {
            let (data, study) = (self.data(), study.to_string());
            let (r, mut trash) = self
                .db
                .write_blocking(move |c| {
                    let mut t = Trash::new(&data);
                    let mandate = Mandate::Retention(policy());
                    let r = purge_study(c, &data, &study, &mandate, now, &mut t);
                    if r.is_err() {
                        t.restore();
                    }
                    Ok((r, t))
                })
                .unwrap();
            trash.empty();
            r
        }

        fn count(&self, table: &str) -> i64 {
            self.db
                .read(|c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
                .unwrap()
        }
    }

    use JobState::*;

    #[test]
    fn only_finished_studies_are_due_and_failed_ones_are_kept_longer() {
        let f = Fixture::new();
        // 1.10 delivered at 10 h; 1.20 failed at 10 h; 1.30 unmatched at 10 h;
        // 1.40 written with a delivery pending; 1.50 still receiving;
        // 1.60 delivered but its SEG delivery was dead-lettered.
        for s in ["1.10", "1.20", "1.30", "1.40", "1.60"] {
            f.receive(&format!("{s}.1"), s, 0.0);
        }
        let ids = f.complete(HOUR);
        let t = 10.0 * HOUR;
        f.to(ids[0], &[Matched, Inferred, Written], t);
        f.seg(ids[0], "1.10.9", "delivered", t);
        f.to(ids[0], &[Delivered], t);
        f.to(ids[1], &[Failed], t);
        f.to(ids[2], &[Unmatched], t);
        f.to(ids[3], &[Matched, Inferred, Written], t);
        f.seg(ids[3], "1.40.9", "pending", t);
        f.to(ids[4], &[Matched, Inferred, Written], t);
        f.seg(ids[4], "1.60.9", "dead", t);
        f.to(ids[4], &[Failed], t);
        f.receive("1.50.1", "1.50", t);

        assert!(f.due(t + 10.0 * HOUR - 1.0).is_empty(), "nothing due early");
        assert_eq!(
            f.due(t + 10.0 * HOUR),
            [
                ("1.10".to_string(), Outcome::Finished),
                ("1.30".to_string(), Outcome::Finished)
            ]
        );
        let late = f.due(t + 100.0 * HOUR);
        assert_eq!(
            late.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            ["1.10", "1.20", "1.30", "1.60"],
            "never the study with a pending delivery or the one receiving"
        );
        assert_eq!(late[1].1, Outcome::Failed);
        assert_eq!(
            late[3].1,
            Outcome::Failed,
            "a dead delivery counts as failed"
        );

        let why = |s: &str| f.db.read(|c| Ok(in_flight(c, s))).unwrap();
        assert_eq!(
            why("1.40").unwrap().unwrap(),
            format!(
                "job {} is written, 1 SEG delivery(ies) still pending",
                ids[3]
            )
        );
        assert!(why("1.50").unwrap().unwrap().contains("still receiving"));
        assert!(why("1.10").unwrap().is_none());
        assert!(matches!(why("9.9"), Err(RetentionError::NotFound(_))));
    }

    #[test]
    fn a_late_instance_and_a_second_job_hold_the_study_back() {
        let f = Fixture::new();
        f.receive("1.1", "1.5", 0.0);
        let first = f.complete(HOUR)[0];
        f.to(first, &[Unmatched], HOUR);
        assert_eq!(f.due(HOUR + 10.0 * HOUR).len(), 1);
        // A late instance reopens the study; once complete, its second job is unfinished.
        f.receive("1.2", "1.5", 2.0 * HOUR);
        assert!(f.due(100.0 * HOUR).is_empty());
        let second = f.complete(3.0 * HOUR)[0];
        assert!(f.due(100.0 * HOUR).is_empty());
        let why = f.db.read(|c| Ok(in_flight(c, "1.5"))).unwrap().unwrap();
        assert_eq!(
            why.as_deref(),
            Some(format!("job {second} is complete").as_str())
        );
        // The clock starts again when the last job settles.
        f.to(second, &[Unmatched], 50.0 * HOUR);
        assert!(f.due(59.0 * HOUR).is_empty());
        assert_eq!(f.due(60.0 * HOUR).len(), 1);
    }

    #[test]
    fn purge_removes_files_rows_and_writes_one_audit_row() {
        let f = Fixture::new();
        let a = f.receive("1.1", "1.5", 0.0);
        let b = f.receive("1.2", "1.5", 0.0);
        let other = f.receive("2.1", "2.5", 0.0);
        let ids = f.complete(HOUR);
        let t = 2.0 * HOUR;
        f.to(ids[0], &[Matched, Inferred, Written], t);
        let seg = f.seg(ids[0], "1.5.9", "delivered", t);
        f.to(ids[0], &[Delivered], t);
        f.to(ids[1], &[Unmatched], t);
        // One instance file is already gone (a purge cut short by a crash).
        std::fs::remove_file(&b).unwrap();

        let data = f.data();
        let early = f.purge_at("1.5", t + HOUR);
        assert!(
            matches!(early, Err(RetentionError::NotDue { .. })),
            "{early:?}"
        );
        assert!(
            a.exists() && seg.exists(),
            "a refused purge puts its files back"
        );
        let now = t + 10.0 * HOUR;
        let p = f.purge_at("1.5", now).unwrap();
        assert_eq!(
            p,
            Purged {
                study_uid: "1.5".into(),
                outcome: Some(Outcome::Finished),
                instances: 2,
                jobs: 1,
                outbox_rows: 1,
                files: 2,
                bytes: 150,
                missing: 1,
            }
        );
        assert!(!a.exists() && !seg.exists());
        assert!(!results_dir(&data, ids[0]).exists());
        assert!(
            !data.join("spool/1.5").exists(),
            "empty study folder removed"
        );
        assert!(other.exists(), "another study's file stays");
        let left = |sql: &str| {
            f.db.read(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
                .unwrap()
        };
        assert_eq!(
            left("SELECT COUNT(*) FROM instances WHERE study_uid = '1.5'"),
            0
        );
        assert_eq!(
            left("SELECT COUNT(*) FROM studies WHERE study_uid = '1.5'"),
            0
        );
        assert_eq!(
            left("SELECT COUNT(*) FROM study_peers WHERE study_uid = '1.5'"),
            0
        );
        assert_eq!(left("SELECT COUNT(*) FROM jobs WHERE study_uid = '1.5'"), 0);
        assert_eq!(
            f.count("job_events"),
            2,
            "only the other study's job history"
        );
        assert_eq!(f.count("outbox"), 0);
        let audit = f.db.read(|c| audit::recent(c, 10)).unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (
                audit[0].token_name.as_str(),
                audit[0].action.as_str(),
                audit[0].target.as_str()
            ),
            (SWEEPER, ACTION, "study:1.5")
        );
        assert!(
            audit[0].detail.starts_with(
                "2 file(s), 150 byte(s) removed: 2 instance(s) (1 file(s) already gone)"
            ) && audit[0].detail.contains("retention.keep_delivered_hours"),
            "{}",
            audit[0].detail
        );
        // Purged means unknown: a second purge is NotFound, and changes nothing.
        let again = f.purge_at("1.5", now);
        assert!(
            matches!(again, Err(RetentionError::NotFound(_))),
            "{again:?}"
        );
        assert!(
            !data.join(TRASH).read_dir().unwrap().any(|_| true),
            "trash emptied"
        );
        assert_eq!(f.count("audit"), 1);
    }

    /// Runs a future to its end on a runtime of its own (the fixture's blocking writes must
    /// not run inside one).
    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn admin_purge_needs_no_wait_but_no_work_in_flight() {
        let f = Fixture::new();
        let file = f.receive("1.1", "1.5", 0.0);
        let admin = || Mandate::Admin {
            token: "alice".into(),
            reason: "patient request".into(),
        };
        let e = block_on(purge(&f.db, &f.data(), "1.5", admin())).unwrap_err();
        assert!(
            matches!(&e, RetentionError::InFlight { why, .. } if why.contains("receiving")),
            "{e}"
        );
        let id = f.complete(HOUR)[0];
        f.to(id, &[Matched], HOUR);
        let e = block_on(purge(&f.db, &f.data(), "1.5", admin())).unwrap_err();
        assert!(
            e.to_string().contains(&format!("job {id} is matched")),
            "{e}"
        );
        assert!(file.exists());
        assert_eq!((f.count("instances"), f.count("audit")), (1, 0));
        f.to(id, &[Failed], HOUR);
        // A failed study is kept 100 h by the sweeper, but an admin purges it at once.
        let p = block_on(purge(&f.db, &f.data(), "1.5", admin())).unwrap();
        assert_eq!(
            (p.instances, p.files, p.outcome),
            (1, 1, Some(Outcome::Failed))
        );
        assert!(!file.exists());
        let row = f.db.read(|c| audit::recent(c, 1)).unwrap().remove(0);
        assert_eq!(row.token_name, "alice");
        assert!(
            row.detail
                .ends_with("failed; requested by an admin: patient request"),
            "{}",
            row.detail
        );
        let e = block_on(purge(&f.db, &f.data(), "1.5", admin())).unwrap_err();
        assert!(matches!(e, RetentionError::NotFound(_)), "{e}");
    }

    /// A file that cannot be taken fails the purge: the files already moved go back to their
    /// paths, the rows stay, no audit row is written and the trash is empty.
    #[test]
    fn a_failed_purge_puts_every_file_back() {
        let f = Fixture::new();
        let a = f.receive("1.1", "1.5", 0.0);
        // A second instance whose path runs through a regular file: stat fails (ENOTDIR).
        let bad = f.data().join("t.sqlite").join("1.2.dcm");
        let mut r = test_record("1.2", "1.5", 0.0);
        r.path = bad.display().to_string();
        f.db.write_blocking(move |c| record(c, &r)).unwrap();
        let id = f.complete(HOUR)[0];
        f.to(id, &[Unmatched], HOUR);
        let admin = Mandate::Admin {
            token: "alice".into(),
            reason: String::new(),
        };
        let e = block_on(purge(&f.db, &f.data(), "1.5", admin)).unwrap_err();
        assert!(
            matches!(&e, RetentionError::Io { path, .. } if *path == bad),
            "{e}"
        );
        assert!(a.is_file(), "the moved file is back");
        assert_eq!(
            (f.count("instances"), f.count("jobs"), f.count("audit")),
            (2, 1, 0)
        );
        assert!(!f.data().join(TRASH).read_dir().unwrap().any(|_| true));
    }

    #[test]
    fn manual_sends_and_leftovers_go_after_their_time() {
        let f = Fixture::new();
        let data = f.data();
        let staging = outbox_dir(&data);
        std::fs::create_dir_all(&staging).unwrap();
        let staged = staging.join("1.7.dcm");
        std::fs::write(&staged, b"seg").unwrap();
        let outside = data.join("elsewhere.dcm");
        std::fs::write(&outside, b"operator's own file").unwrap();
        for (sop, path) in [("1.7", &staged), ("1.8", &outside)] {
            let p = path.display().to_string();
            f.db.write_blocking(move |c| {
                let id = crate::store::outbox::enqueue(
                    c, None, sop, "1.2", &p, "PACS", "h", 104, false, 0.0,
                )?;
                c.execute(
                    "UPDATE outbox SET state = 'delivered', delivered_at = 5.0 WHERE id = ?1",
                    [id],
                )
            })
            .unwrap();
        }
        let (rows, removed) = block_on(purge_manual(
            &f.db,
            &data,
            Policy {
                keep_finished_s: 1e12,
                keep_failed_s: 1e12,
            },
        ))
        .unwrap();
        assert_eq!((rows, removed.files), (0, 0), "not due yet");
        let (rows, removed) = block_on(purge_manual(&f.db, &data, policy())).unwrap();
        assert_eq!((rows, removed.files, removed.bytes), (2, 1, 3));
        assert!(!staged.exists());
        assert!(outside.exists(), "a path outside outbox/ is never unlinked");
        assert_eq!(f.count("outbox"), 0);
        assert_eq!(f.count("audit"), 1);

        // Leftovers: a results folder of a job that has no row, a stray staged file.
        f.receive("1.1", "1.5", 0.0);
        let id = f.complete(1.0)[0];
        let kept = results_dir(&data, id);
        let gone = results_dir(&data, id + 1000);
        for d in [&kept, &gone] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("x.dcm"), b"1234").unwrap();
        }
        let stray = staging.join(".1.9.part");
        std::fs::write(&stray, b"12").unwrap();
        // A spool file that crash recovery set aside (never acknowledged) goes after the
        // failed-study retention, not before.
        let orphans = data.join("spool").join(crate::store::spool::ORPHANS);
        std::fs::create_dir_all(&orphans).unwrap();
        let orphan = orphans.join("00ab-1.2.3.dcm");
        std::fs::write(&orphan, b"123").unwrap();
        let now = db::now();
        let r = sweep_leftovers(&f.db, &data, now, 3600.0, 100.0 * HOUR).unwrap();
        assert_eq!(
            r,
            Removed { files: 1, bytes: 4 },
            "a fresh staged file may be a send in progress"
        );
        assert!(kept.exists() && !gone.exists() && stray.exists() && orphan.exists());
        let r = sweep_leftovers(&f.db, &data, now + 7200.0, 3600.0, 100.0 * HOUR).unwrap();
        assert_eq!(r, Removed { files: 1, bytes: 2 });
        assert!(!stray.exists() && orphan.exists());
        let r = sweep_leftovers(&f.db, &data, now + 101.0 * HOUR, 3600.0, 100.0 * HOUR).unwrap();
        assert_eq!(r, Removed { files: 1, bytes: 3 });
        assert!(!orphan.exists());
    }
}
