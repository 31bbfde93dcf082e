//! When a study is finished (not receiving, every job settled, no SEG waiting for delivery),
//! how it ended, and when its retention time is over: [`in_flight`] says why a study cannot
//! go yet, [`due`] lists the studies whose time is over.

use super::{Outcome, Policy, RetentionError};
use rusqlite::{params, Connection, OptionalExtension};

/// Job states after which nothing happens to a job on its own.
const SETTLED: &str = "('delivered', 'failed', 'unmatched')";

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
pub(super) fn finish_of(
    conn: &Connection,
    study: &str,
) -> rusqlite::Result<Option<(f64, Outcome)>> {
    conn.query_row(
        &format!("SELECT {FINISH} FROM studies s WHERE s.study_uid = ?1 AND {FINISHED}"),
        [study],
        |r| Ok((r.get(0)?, outcome(r.get(1)?))),
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::*;
    use crate::store::jobs::JobState::*;

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
}
