//! Test fixture shared by the tests of `retention`'s files: an index and its data dir, with
//! helpers that receive instances (real spool files), complete studies, move jobs and queue
//! SEGs.

use super::{
    due, purge_study, results_dir, Mandate, Outcome, Policy, Purged, RetentionError, Trash,
};
use crate::store::instances::{record, test_record};
use crate::store::jobs::{complete_stable_studies, transition, JobState};
use crate::store::Db;
use rusqlite::params;
use std::path::PathBuf;

pub(super) const HOUR: f64 = 3600.0;

pub(super) fn policy() -> Policy {
    Policy {
        keep_finished_s: 10.0 * HOUR,
        keep_failed_s: 100.0 * HOUR,
    }
}

/// An index and its data dir, with helpers that receive instances (real spool files),
/// complete studies, move jobs and queue SEGs.
pub(super) struct Fixture {
    dir: tempfile::TempDir,
    pub(super) db: Db,
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        Fixture { dir, db }
    }

    pub(super) fn data(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Receives instance `sop` of `study` at `t` (file written under spool/).
    pub(super) fn receive(&self, sop: &str, study: &str, t: f64) -> PathBuf {
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
    pub(super) fn complete(&self, t: f64) -> Vec<i64> {
        self.db
            .write_blocking(move |c| complete_stable_studies(c, t, t))
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    pub(super) fn to(&self, id: i64, states: &[JobState], t: f64) {
        let states = states.to_vec();
        self.db
            .write_blocking(move |c| {
                for s in states {
                    transition(c, id, s, Some("test"), t).map_err(|e| {
                        rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(
                            e.to_string(),
                        )))
                    })?;
                }
                Ok(())
            })
            .unwrap();
    }

    /// A SEG of job `id` in its results folder, queued in the outbox with `state`.
    pub(super) fn seg(&self, id: i64, sop: &str, state: &str, t: f64) -> PathBuf {
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

    pub(super) fn due(&self, now: f64) -> Vec<(String, Outcome)> {
        self.db
            .read(|c| due(c, &policy(), now, 100))
            .unwrap()
            .into_iter()
            .map(|d| (d.study_uid, d.outcome))
            .collect()
    }

    /// [`purge_study`] under the sweeper's mandate at `now`, as one request; its trash
    /// emptied after the commit (put back on an error, as [`super::purge`] does).
    pub(super) fn purge_at(&self, study: &str, now: f64) -> Result<Purged, RetentionError> {
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

    pub(super) fn count(&self, table: &str) -> i64 {
        self.db
            .read(|c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
            .unwrap()
    }
}

/// Runs a future to its end on a runtime of its own (the fixture's blocking writes must
/// not run inside one).
pub(super) fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}
