//! One study's purge: [`purge_study`] in the caller's transaction (check, files into the
//! trash, rows deleted, one audit row) and [`purge`], which runs it as one request of the
//! index writer and settles its trash.

use super::finished::{finish_of, in_flight};
use super::trash::write_with_trash;
use super::{Mandate, Outcome, Purged, RetentionError, Trash, ACTION};
use crate::store::{audit, db, Db};
use rusqlite::Connection;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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
    let (outcome, why) = check_mandate(conn, study, mandate, now)?;
    let missing = take_files(conn, data_dir, study, trash)?;
    let removed = trash.taken();
    let (instances, job_rows, outbox_rows) = delete_rows(conn, study)?;
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

/// Checks that `study` may be purged under `mandate` at `now`: it is finished and, for the
/// sweeper, its retention time is over. Returns how it ended and why it goes (for the audit
/// row).
fn check_mandate(
    conn: &Connection,
    study: &str,
    mandate: &Mandate,
    now: f64,
) -> Result<(Outcome, String), RetentionError> {
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
    Ok((outcome, why))
}

/// Moves `study`'s spool files, its jobs' results folders and their delivery files (inside
/// `data_dir` only) into `trash`, makes that durable and removes the folders left empty.
/// Returns how many instance files were already gone.
fn take_files(
    conn: &Connection,
    data_dir: &Path,
    study: &str,
    trash: &mut Trash,
) -> Result<u64, RetentionError> {
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
    Ok(missing)
}

/// Deletes every row that names `study`: job events, outbox rows, jobs, unsynced marks,
/// instances, its peers' parts and the study. Returns (instances, jobs, outbox rows) deleted.
fn delete_rows(conn: &Connection, study: &str) -> Result<(usize, usize, usize), RetentionError> {
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
    Ok((instances, job_rows, outbox_rows))
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

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::super::{Outcome, SWEEPER, TRASH};
    use super::*;
    use crate::store::instances::{record, test_record};
    use crate::store::jobs::JobState::*;

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
}
