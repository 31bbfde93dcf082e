//! Index rows for received instances and the studies they belong to.

use rusqlite::{params, Connection, OptionalExtension};

/// Everything we index about one stored instance: what validation reads from the data set
/// ([`crate::dicom::validate::InstanceRecord`]), stored as one row.
pub use crate::dicom::validate::InstanceRecord;

/// What recording an instance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new instance.
    New,
    /// A different copy replaced an earlier one; the earlier file path is returned when it
    /// differs from the new one (the caller deletes it after this commit).
    Replaced {
        /// Path of the earlier copy, if it lived elsewhere.
        old_path: Option<String>,
        /// The copies differ in encoding only (same content key): the instance keeps its
        /// `content_at`, so the loop guard does not count it as a new image.
        re_encoded: bool,
    },
}

/// The stored copy of an instance, as a new copy of it is judged against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Digest of its data set (see [`InstanceRecord::digest`]).
    pub digest: String,
    /// Its spool file.
    pub path: String,
    /// Calling AE title of the peer that stored it.
    pub calling_ae: String,
    /// Host the peer that stored it sent from.
    pub source_host: String,
    /// Its content key (see [`InstanceRecord::content_key`]).
    pub content_key: String,
}

impl Stored {
    /// True when the copy came from this peer (calling AE and host); only that peer may
    /// replace it (review H4).
    pub fn sent_by(&self, calling_ae: &str, source_host: &str) -> bool {
        self.calling_ae == calling_ae && self.source_host == source_host
    }
}

/// Looks up the stored copy of an instance.
pub fn existing(conn: &Connection, sop_instance_uid: &str) -> rusqlite::Result<Option<Stored>> {
    conn.prepare_cached(
        "SELECT digest, path, calling_ae, source_host, content_key FROM instances
          WHERE sop_instance_uid = ?1",
    )?
    .query_row([sop_instance_uid], |r| {
        Ok(Stored {
            digest: r.get(0)?,
            path: r.get(1)?,
            calling_ae: r.get(2)?,
            source_host: r.get(3)?,
            content_key: r.get(4)?,
        })
    })
    .optional()
}

/// Records an instance and touches its study and the sending peer's part of it (a part that
/// was complete starts receiving again, so late arrivals make a new job instead of being
/// silently ignored). The caller has checked that a stored copy of the instance came from
/// the same peer ([`Stored::sent_by`]): the row keeps no trace of an earlier owner.
pub fn record(conn: &Connection, r: &InstanceRecord) -> rusqlite::Result<Recorded> {
    let before = existing(conn, &r.sop_instance_uid)?;
    conn.prepare_cached(
        "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid, patient_id,
            patient_name, modality, body_part, series_description, series_number, instance_number,
            transfer_syntax, calling_ae, source_host, size_bytes, digest, path, received_at,
            content_key, content_at)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?18)
         ON CONFLICT(sop_instance_uid) DO UPDATE SET
            content_at = CASE WHEN excluded.content_key != ''
                AND instances.content_key = excluded.content_key
                THEN instances.content_at ELSE excluded.received_at END,
            content_key = excluded.content_key, sop_class_uid=excluded.sop_class_uid,
            study_uid=excluded.study_uid, series_uid=excluded.series_uid,
            patient_id=excluded.patient_id, patient_name=excluded.patient_name,
            modality=excluded.modality, body_part=excluded.body_part,
            series_description=excluded.series_description, series_number=excluded.series_number,
            instance_number=excluded.instance_number, transfer_syntax=excluded.transfer_syntax,
            calling_ae=excluded.calling_ae, source_host=excluded.source_host,
            size_bytes=excluded.size_bytes, digest=excluded.digest, path=excluded.path,
            received_at=excluded.received_at",
    )?
    .execute(params![
        r.sop_instance_uid,
        r.sop_class_uid,
        r.study_uid,
        r.series_uid,
        r.patient_id,
        r.patient_name,
        r.modality,
        r.body_part,
        r.series_description,
        r.series_number,
        r.instance_number,
        r.transfer_syntax,
        r.calling_ae,
        r.source_host,
        r.size_bytes as i64,
        r.digest,
        r.path,
        r.received_at,
        r.content_key
    ])?;
    // The study row's calling AE is its first sender, for information only: jobs, their
    // instances and their destination come from the peer parts (store::peer_studies).
    conn.prepare_cached(
        "INSERT INTO studies (study_uid, patient_id, calling_ae, first_received_at, last_received_at, state)
         VALUES (?1, ?2, ?3, ?4, ?4, 'receiving')
         ON CONFLICT(study_uid) DO UPDATE SET last_received_at = excluded.last_received_at,
            state = 'receiving', completed_at = NULL",
    )?
    .execute(params![
        r.study_uid,
        r.patient_id,
        r.calling_ae,
        r.received_at
    ])?;
    super::peer_studies::touch(conn, r)?;
    Ok(match before {
        None => Recorded::New,
        Some(old) => Recorded::Replaced {
            re_encoded: !r.content_key.is_empty() && old.content_key == r.content_key,
            old_path: (old.path != r.path).then_some(old.path),
        },
    })
}

/// Re-points index rows written under another spelling of the data dir (relative `var` run
/// from another directory, a symlink, an older release that stored paths as configured) to
/// the same `<study>/<series>/<sop>.dcm` under `spool_root`, where that file exists. Runs at
/// every start, before anything compares paths with the spool (review M3). Returns how many
/// rows were re-pointed.
pub fn repoint_into(conn: &Connection, spool_root: &std::path::Path) -> rusqlite::Result<usize> {
    let prefix = format!("{}/", spool_root.display());
    let rows: Vec<(String, String)> = {
        let mut st = conn.prepare(
            "SELECT sop_instance_uid, path FROM instances WHERE substr(path, 1, ?1) != ?2",
        )?;
        let it = st.query_map(rusqlite::params![prefix.len() as i64, prefix], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        it.collect::<rusqlite::Result<_>>()?
    };
    let mut moved = 0;
    for (uid, path) in rows {
        let tail: Vec<_> = std::path::Path::new(&path)
            .components()
            .rev()
            .take(3)
            .collect();
        if tail.len() < 3 {
            continue;
        }
        let here = tail
            .iter()
            .rev()
            .fold(spool_root.to_path_buf(), |p, c| p.join(c));
        if here.is_file() {
            conn.execute(
                "UPDATE instances SET path = ?1 WHERE sop_instance_uid = ?2",
                rusqlite::params![here.to_string_lossy(), uid],
            )?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// After an unclean stop: removes index rows whose spool file does not exist. The SCP commits
/// a new instance's row while the fsync of its directory entry is still running and answers
/// only after both, so such a row was never acknowledged. A study left without instances
/// that is still receiving goes too. Returns the removed (SOP Instance UID, path) pairs.
pub fn drop_missing(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = {
        let mut st = conn.prepare("SELECT sop_instance_uid, path FROM instances")?;
        let it = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        it.collect::<rusqlite::Result<_>>()?
    };
    let missing: Vec<(String, String)> = rows
        .into_iter()
        .filter(|(_, p)| !std::path::Path::new(p).is_file())
        .collect();
    for (uid, _) in &missing {
        conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?1", [uid])?;
    }
    if !missing.is_empty() {
        drop_empty_receiving_studies(conn)?;
    }
    Ok(missing)
}

/// Removes peer parts and studies still receiving that no instance and no job names any more.
fn drop_empty_receiving_studies(conn: &Connection) -> rusqlite::Result<usize> {
    super::peer_studies::drop_empty(conn)?;
    conn.execute(
        "DELETE FROM studies WHERE state = 'receiving'
           AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = studies.study_uid)
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = studies.study_uid)
           AND NOT EXISTS (SELECT 1 FROM study_peers p WHERE p.study_uid = studies.study_uid)",
        [],
    )
}

/// [`record`] for a new instance whose file fsync is still running: the row is also listed
/// in `unsynced` until the SCP reports the fsync done (through `synced`, the instances whose
/// fsync finished since the last call, which leave the list in the same transaction). A
/// row listed there after a crash may name a file whose bytes never reached the disk; it was
/// never acknowledged, and [`verify_unsynced`] checks it at the next start.
pub fn record_unsynced(
    conn: &Connection,
    r: &InstanceRecord,
    synced: &[String],
) -> rusqlite::Result<Recorded> {
    let recorded = record(conn, r)?;
    conn.prepare_cached("INSERT OR IGNORE INTO unsynced (sop_instance_uid) VALUES (?1)")?
        .execute([&r.sop_instance_uid])?;
    let mut done = conn.prepare_cached("DELETE FROM unsynced WHERE sop_instance_uid = ?1")?;
    for uid in synced {
        done.execute([uid])?;
    }
    Ok(recorded)
}

/// Removes the row of a new instance whose file could not be made durable (it was never
/// acknowledged); `path` guards against removing a row that a later copy rewrote.
pub fn forget(conn: &Connection, sop_instance_uid: &str, path: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM instances WHERE sop_instance_uid = ?1 AND path = ?2",
        [sop_instance_uid, path],
    )?;
    conn.execute(
        "DELETE FROM unsynced WHERE sop_instance_uid = ?1",
        [sop_instance_uid],
    )?;
    drop_empty_receiving_studies(conn)?;
    Ok(())
}

/// At startup: checks every row listed in `unsynced` (committed while its file's fsync ran,
/// see [`record_unsynced`]) against the digest of its file; `file_digest` computes a spool
/// file's digest. A row whose file is missing or differs is removed with its file: that
/// instance was never acknowledged. Empties the list and returns the removed (UID, path).
pub fn verify_unsynced(
    conn: &Connection,
    file_digest: impl Fn(&std::path::Path) -> std::io::Result<String>,
) -> rusqlite::Result<Vec<(String, String)>> {
    let rows: Vec<(String, String, String)> = {
        let mut st = conn.prepare(
            "SELECT i.sop_instance_uid, i.path, i.digest FROM unsynced u
               JOIN instances i ON i.sop_instance_uid = u.sop_instance_uid",
        )?;
        let it = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        it.collect::<rusqlite::Result<_>>()?
    };
    let mut removed = Vec::new();
    for (uid, path, digest) in rows {
        let p = std::path::Path::new(&path);
        let intact = matches!(file_digest(p), Ok(d) if d == digest);
        if !intact {
            conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?1", [&uid])?;
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path, error = %e, "cannot remove an unacknowledged spool file");
                }
            }
            removed.push((uid, path));
        }
    }
    conn.execute("DELETE FROM unsynced", [])?;
    if !removed.is_empty() {
        drop_empty_receiving_studies(conn)?;
    }
    Ok(removed)
}

/// A CT instance record with placeholder values, for unit tests of the index: SOP Instance
/// UID `sop` in study `study`, series 1.9, stored at `/x/<sop>.dcm`, received at `t`.
#[cfg(test)]
pub(crate) fn test_record(sop: &str, study: &str, t: f64) -> InstanceRecord {
    InstanceRecord {
        sop_instance_uid: sop.into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        study_uid: study.into(),
        series_uid: "1.9".into(),
        patient_id: "P".into(),
        patient_name: "N".into(),
        modality: "CT".into(),
        body_part: "CHEST".into(),
        series_description: String::new(),
        series_number: Some(1),
        instance_number: Some(1),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        calling_ae: "PACS".into(),
        source_host: "127.0.0.1".into(),
        size_bytes: 10,
        digest: "xxh3-128:00".into(),
        path: format!("/x/{sop}.dcm"),
        received_at: t,
        content_key: format!("content-v1:{sop}"),
    }
}

/// Number of indexed instances.
pub fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;

    fn rec(sop: &str, study: &str, path: &std::path::Path) -> InstanceRecord {
        InstanceRecord {
            path: path.to_string_lossy().into_owned(),
            ..test_record(sop, study, 100.0)
        }
    }

    /// A power loss can drop the directory entry of a file whose row committed (the SCP
    /// commits the row while the directory fsync runs, and acknowledges after both): the
    /// startup check removes exactly those rows, and a study left empty with them.
    #[test]
    fn drop_missing_removes_rows_without_files_and_their_empty_studies() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let kept = dir.path().join("kept.dcm");
        std::fs::write(&kept, b"x").unwrap();
        let gone = dir.path().join("gone.dcm");
        let (a, b, c) = (
            rec("1.1", "1.5", &kept),
            rec("1.2", "1.5", &gone),
            rec("1.3", "1.6", &gone),
        );
        for r in [a, b, c] {
            db.write_blocking(move |conn| record(conn, &r)).unwrap();
        }
        let mut dropped = db.write_blocking(drop_missing).unwrap();
        dropped.sort();
        let gone_s = gone.to_string_lossy().into_owned();
        assert_eq!(
            dropped,
            vec![("1.2".to_string(), gone_s.clone()), ("1.3".into(), gone_s)]
        );
        assert_eq!(db.read(count).unwrap(), 1);
        let studies: Vec<String> = db
            .read(|c| {
                let mut st = c.prepare("SELECT study_uid FROM studies ORDER BY study_uid")?;
                let it = st.query_map([], |r| r.get(0))?;
                it.collect()
            })
            .unwrap();
        assert_eq!(
            studies,
            vec!["1.5".to_string()],
            "study 1.6 had only the lost row"
        );
        assert!(db.write_blocking(drop_missing).unwrap().is_empty());
    }

    /// A Part 10 file as the SCP writes it: preamble, a meta group of `meta_len` bytes after
    /// its group length element, then `dataset`.
    fn part10(path: &std::path::Path, meta_len: u32, dataset: &[u8]) {
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        b.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0]);
        b.extend_from_slice(&meta_len.to_le_bytes());
        b.extend(std::iter::repeat_n(7u8, meta_len as usize));
        b.extend_from_slice(dataset);
        std::fs::write(path, b).unwrap();
    }

    /// A power loss while rows were committed ahead of their files' fsync: at the next start
    /// an intact file keeps its row, a file whose bytes differ from the digest or that is
    /// missing loses its row (and the file), and the list is emptied. A row whose fsync was
    /// reported done is not checked at all.
    #[test]
    fn verify_unsynced_keeps_intact_files_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let body = b"data set bytes".to_vec();
        let mut hasher = crate::store::spool::DatasetHasher::default();
        hasher.update(&body);
        let digest = hasher.finish();
        let (good, torn, gone, done) = (
            dir.path().join("good.dcm"),
            dir.path().join("torn.dcm"),
            dir.path().join("gone.dcm"),
            dir.path().join("done.dcm"),
        );
        part10(&good, 30, &body);
        part10(&torn, 30, &body[..5]);
        part10(&done, 30, b"not what the digest says");
        for (sop, study, path) in [
            ("1.1", "1.5", &good),
            ("1.2", "1.5", &torn),
            ("1.3", "1.6", &gone),
            ("1.4", "1.5", &done),
        ] {
            let r = InstanceRecord {
                digest: digest.clone(),
                ..rec(sop, study, path)
            };
            db.write_blocking(move |c| record_unsynced(c, &r, &[]))
                .unwrap();
        }
        // 1.4's fsync finished: the next row's transaction takes it off the list.
        let r = InstanceRecord {
            digest: digest.clone(),
            ..rec("1.1", "1.5", &good)
        };
        db.write_blocking(move |c| record_unsynced(c, &r, &["1.4".to_string()]))
            .unwrap();

        let mut removed = db
            .write_blocking(|c| verify_unsynced(c, crate::store::spool::dataset_digest))
            .unwrap();
        removed.sort();
        let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
        assert_eq!(
            removed,
            vec![("1.2".to_string(), s(&torn)), ("1.3".to_string(), s(&gone))]
        );
        assert!(good.exists() && done.exists() && !torn.exists());
        assert_eq!(db.read(count).unwrap(), 2);
        let listed: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM unsynced", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(listed, 0);
        let studies: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM studies", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(studies, 1, "study 1.6 had only the lost row");
        assert!(db
            .write_blocking(|c| verify_unsynced(c, crate::store::spool::dataset_digest))
            .unwrap()
            .is_empty());
    }

    /// Review M2: a copy re-sent in another encoding (same content key) replaces the stored
    /// one but keeps its `content_at`, so the loop guard sees no new image; a copy whose
    /// content changed moves `content_at` to its arrival.
    #[test]
    fn a_re_encoded_copy_keeps_its_content_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let content_at = || {
            db.read(|c| {
                c.query_row(
                    "SELECT content_at, transfer_syntax FROM instances",
                    [],
                    |r| Ok((r.get::<_, f64>(0)?, r.get::<_, String>(1)?)),
                )
            })
            .unwrap()
        };
        let first = test_record("1.1", "1.5", 100.0);
        let r = first.clone();
        assert_eq!(
            db.write_blocking(move |c| record(c, &r)).unwrap(),
            Recorded::New
        );
        let re_encoded = InstanceRecord {
            transfer_syntax: "1.2.840.10008.1.2".into(),
            digest: "xxh3-128:01".into(),
            path: "/x/1.1.r01.dcm".into(),
            received_at: 200.0,
            ..first.clone()
        };
        let outcome = db.write_blocking(move |c| record(c, &re_encoded)).unwrap();
        assert_eq!(
            outcome,
            Recorded::Replaced {
                old_path: Some("/x/1.1.dcm".into()),
                re_encoded: true
            }
        );
        assert_eq!(content_at(), (100.0, "1.2.840.10008.1.2".into()));
        let changed = InstanceRecord {
            content_key: "content-v1:other".into(),
            received_at: 300.0,
            ..first
        };
        let outcome = db.write_blocking(move |c| record(c, &changed)).unwrap();
        assert!(matches!(
            outcome,
            Recorded::Replaced {
                re_encoded: false,
                ..
            }
        ));
        assert_eq!(content_at().0, 300.0);
    }

    /// A new instance whose file could not be made durable loses its row; a later copy that
    /// rewrote the row under another path keeps it.
    #[test]
    fn forget_removes_only_the_named_copy() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let r = rec("1.1", "1.5", &dir.path().join("a.dcm"));
        db.write_blocking(move |c| record_unsynced(c, &r, &[]))
            .unwrap();
        db.write_blocking(|c| forget(c, "1.1", "/elsewhere.dcm"))
            .unwrap();
        assert_eq!(db.read(count).unwrap(), 1);
        let path = dir.path().join("a.dcm").to_string_lossy().into_owned();
        db.write_blocking(move |c| forget(c, "1.1", &path)).unwrap();
        assert_eq!(db.read(count).unwrap(), 0);
        let left: i64 = db
            .read(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM unsynced) + (SELECT COUNT(*) FROM studies)",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(left, 0);
    }
}
