//! Jobs: one per completed part of a study (the instances one peer sent of it, see
//! [`peer_studies`]), moved through a state machine whose every transition is committed in
//! SQLite, so a restart resumes each job where it was.
//!
//! received -> complete -> matched -> inferred -> written -> delivered, or -> failed
//! (plus `unmatched` for a study no routing rule claims). The foundation creates jobs in
//! `complete`; later stages drive the rest.

use crate::store::peer_studies::{self, PeerStudy};
use rusqlite::{params, Connection};

/// States of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// The study is complete (stable for `stable_age_s`): waiting for routing.
    Complete,
    /// A routing rule chose a support set and destination.
    Matched,
    /// No routing rule matched: recorded, not an error.
    Unmatched,
    /// Masks were inferred.
    Inferred,
    /// The SEG objects were written to the outbox.
    Written,
    /// Every SEG was delivered.
    Delivered,
    /// Failed with a recorded reason.
    Failed,
}

impl JobState {
    /// The name stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Complete => "complete",
            JobState::Matched => "matched",
            JobState::Unmatched => "unmatched",
            JobState::Inferred => "inferred",
            JobState::Written => "written",
            JobState::Delivered => "delivered",
            JobState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "complete" => JobState::Complete,
            "matched" => JobState::Matched,
            "unmatched" => JobState::Unmatched,
            "inferred" => JobState::Inferred,
            "written" => JobState::Written,
            "delivered" => JobState::Delivered,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }

    /// True when no further transition happens on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Delivered | JobState::Failed | JobState::Unmatched
        )
    }

    /// Whether `self -> next` is a legal transition. Any non-terminal state may fail;
    /// a failed job may be retried back to `complete`.
    pub fn can_move_to(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Complete, Matched)
                | (Complete, Unmatched)
                | (Matched, Inferred)
                | (Inferred, Written)
                | (Written, Delivered)
                | (Failed, Complete)
                | (Unmatched, Complete)
        ) || (!self.is_terminal() && next == Failed)
    }
}

/// Errors of job transitions.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job does not exist.
    #[error("job {0} does not exist")]
    NoSuchJob(i64),
    /// The transition is not allowed from the job's current state.
    #[error("job {id}: illegal transition {from} -> {to}")]
    Illegal {
        /// The job.
        id: i64,
        /// Its current state.
        from: String,
        /// The requested state.
        to: &'static str,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Marks every peer's part of a study (see [`peer_studies`]) that is receiving and whose last
/// instance arrived at or before `cutoff` as complete, and creates a job for it, in the
/// caller's transaction: a study two peers send becomes two jobs, each of one peer's
/// instances, each answered to that peer. Returns the new jobs with their parts.
pub fn complete_stable_studies(
    conn: &Connection,
    cutoff: f64,
    now: f64,
) -> rusqlite::Result<Vec<(i64, PeerStudy)>> {
    complete_ready_studies(conn, cutoff, None, now)
}

/// [`complete_stable_studies`], and with `overdue_before` also the parts receiving since
/// before it although instances keep arriving (`pipeline.max_receiving_s`).
pub fn complete_ready_studies(
    conn: &Connection,
    cutoff: f64,
    overdue_before: Option<f64>,
    now: f64,
) -> rusqlite::Result<Vec<(i64, PeerStudy)>> {
    let ready = peer_studies::ready(conn, cutoff, overdue_before)?;
    let mut out = Vec::with_capacity(ready.len());
    for (key, quiet) in ready {
        let n = peer_studies::complete(conn, &key, now)?;
        conn.execute(
            "INSERT INTO jobs (study_uid, state, calling_ae, source_host, instance_count,
                created_at, updated_at)
             VALUES (?1, 'complete', ?2, ?3, ?4, ?5, ?5)",
            params![key.study_uid, key.calling_ae, key.source_host, n, now],
        )?;
        let id = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO job_events (job_id, state, at, detail) VALUES (?1, 'complete', ?2, ?3)",
            params![
                id,
                now,
                if quiet {
                    format!("{n} instance(s) from {} stable", key.calling_ae)
                } else {
                    format!(
                        "{n} instance(s) from {}: still receiving after pipeline.max_receiving_s",
                        key.calling_ae
                    )
                }
            ],
        )?;
        out.push((id, key));
    }
    Ok(out)
}

/// Moves a job to `next`, recording the event; refuses illegal transitions.
pub fn transition(
    conn: &Connection,
    id: i64,
    next: JobState,
    detail: Option<&str>,
    now: f64,
) -> Result<(), JobError> {
    let cur: String = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => JobError::NoSuchJob(id),
            e => JobError::Sql(e),
        })?;
    let from = JobState::parse(&cur);
    if !from.is_some_and(|f| f.can_move_to(next)) {
        return Err(JobError::Illegal {
            id,
            from: cur,
            to: next.as_str(),
        });
    }
    let error = (next == JobState::Failed).then_some(detail).flatten();
    conn.execute(
        "UPDATE jobs SET state = ?2, updated_at = ?3, error = ?4 WHERE id = ?1",
        params![id, next.as_str(), now, error],
    )?;
    if next == JobState::Complete {
        // A retried job gets its attempts again (see start_attempt).
        conn.execute("UPDATE jobs SET attempts = 0 WHERE id = ?1", [id])?;
    }
    conn.execute(
        "INSERT INTO job_events (job_id, state, at, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id, next.as_str(), now, detail],
    )?;
    Ok(())
}

/// What [`start_attempt`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStart {
    /// Go ahead: this is attempt number `n` (1-based), already recorded.
    Started(u32),
    /// `n` attempts were started and none finished: dead-letter the job instead.
    Exhausted(u32),
}

/// Records the start of a segmentation attempt on job `id`, in the caller's transaction,
/// before any of the attempt runs: an attempt the daemon dies in (crash, OOM kill, watchdog
/// restart) is counted all the same. After `max` starts the job is not started again.
pub fn start_attempt(conn: &Connection, id: i64, max: u32) -> rusqlite::Result<AttemptStart> {
    let n: i64 = conn.query_row("SELECT attempts FROM jobs WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    let n = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    if n >= max {
        return Ok(AttemptStart::Exhausted(n));
    }
    conn.execute(
        "UPDATE jobs SET attempts = attempts + 1 WHERE id = ?1",
        [id],
    )?;
    Ok(AttemptStart::Started(n + 1))
}

/// Jobs that are not in a terminal state, oldest first: what a restart resumes.
pub fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<(i64, String, JobState)>> {
    let mut stmt = conn.prepare(
        "SELECT id, study_uid, state FROM jobs WHERE state NOT IN ('delivered','failed','unmatched') ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        let s: String = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            JobState::parse(&s).unwrap_or(JobState::Failed),
        ))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instances::{record, test_record as rec};
    use crate::store::Db;

    #[test]
    fn studies_complete_after_stable_age_and_reopen_on_late_arrivals() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        db.write_blocking(|c| record(c, &rec("1.1", "1.5", 100.0)))
            .unwrap();
        db.write_blocking(|c| record(c, &rec("1.2", "1.5", 105.0)))
            .unwrap();
        let none = db
            .write_blocking(|c| complete_stable_studies(c, 104.0, 110.0))
            .unwrap();
        assert!(
            none.is_empty(),
            "study completed before its last instance was stable"
        );
        let jobs = db
            .write_blocking(|c| complete_stable_studies(c, 105.0, 110.0))
            .unwrap();
        assert_eq!(jobs.len(), 1);
        let id = jobs[0].0;
        db.write_blocking(move |c| {
            transition(c, id, JobState::Matched, None, 111.0).map_err(|e| match e {
                JobError::Sql(e) => e,
                other => panic!("{other}"),
            })
        })
        .unwrap();
        let illegal = db
            .write_blocking(move |c| Ok(transition(c, id, JobState::Delivered, None, 112.0)))
            .unwrap();
        assert!(matches!(illegal, Err(JobError::Illegal { .. })));
        // A late instance reopens the study and makes a second job once stable again.
        db.write_blocking(|c| record(c, &rec("1.3", "1.5", 200.0)))
            .unwrap();
        let again = db
            .write_blocking(|c| complete_stable_studies(c, 200.0, 201.0))
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].0, id);
        let open = db.read(unfinished).unwrap();
        assert_eq!(open.len(), 2);
    }

    #[test]
    fn attempts_are_counted_before_they_run_and_reset_by_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        db.write_blocking(|c| record(c, &rec("1.1", "1.5", 100.0)))
            .unwrap();
        let id = db
            .write_blocking(|c| complete_stable_studies(c, 100.0, 101.0))
            .unwrap()[0]
            .0;
        for n in 1..=3 {
            let s = db.write_blocking(move |c| start_attempt(c, id, 3)).unwrap();
            assert_eq!(s, AttemptStart::Started(n));
        }
        let s = db.write_blocking(move |c| start_attempt(c, id, 3)).unwrap();
        assert_eq!(s, AttemptStart::Exhausted(3));
        let sql = |e: JobError| match e {
            JobError::Sql(e) => e,
            other => panic!("{other}"),
        };
        db.write_blocking(move |c| {
            transition(c, id, JobState::Failed, Some("dead-lettered"), 102.0).map_err(sql)?;
            transition(c, id, JobState::Complete, Some("retry"), 103.0).map_err(sql)
        })
        .unwrap();
        let s = db.write_blocking(move |c| start_attempt(c, id, 3)).unwrap();
        assert_eq!(s, AttemptStart::Started(1));
    }
}
