//! What retention removes besides studies: manual sends (outbox rows without a job) past their
//! retention time ([`purge_manual_sends`], [`purge_manual`]), and the leftovers no row names
//! any more, which only a crash or a lost unlink leaves ([`sweep_leftovers`]).

use super::trash::write_with_trash;
use super::{io, Policy, Removed, RetentionError, Trash, SWEEPER};
use crate::store::{audit, db, Db};
use rusqlite::{params, Connection};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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
    use super::super::fixture::*;
    use super::super::results_dir;
    use super::*;

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
