//! Index rows for received instances and the studies they belong to.

use rusqlite::{params, Connection, OptionalExtension};

/// Everything we index about one stored instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    /// SOP Instance UID (primary key).
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Modality.
    pub modality: String,
    /// Body Part Examined.
    pub body_part: String,
    /// Series Description.
    pub series_description: String,
    /// Series Number.
    pub series_number: Option<i64>,
    /// Instance Number.
    pub instance_number: Option<i64>,
    /// Transfer syntax the instance was received (and is stored) in.
    pub transfer_syntax: String,
    /// Calling AE title of the sender.
    pub calling_ae: String,
    /// IP address of the sender.
    pub source_host: String,
    /// Size of the spool file in bytes.
    pub size_bytes: u64,
    /// Digest of the data set bytes as received: `blake3:<hex>` (rows indexed before
    /// migration 5: `sha256:<hex>`). Equal digests mean identical copies.
    pub digest: String,
    /// Spool file path.
    pub path: String,
    /// Reception time (Unix seconds).
    pub received_at: f64,
}

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
    },
}

/// Looks up the stored copy of an instance: (digest, path).
pub fn existing(
    conn: &Connection,
    sop_instance_uid: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached("SELECT digest, path FROM instances WHERE sop_instance_uid = ?1")?
        .query_row([sop_instance_uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// Records an instance and touches its study (a study that was complete starts receiving
/// again, so late arrivals make a new job instead of being silently ignored).
pub fn record(conn: &Connection, r: &InstanceRecord) -> rusqlite::Result<Recorded> {
    let before = existing(conn, &r.sop_instance_uid)?;
    conn.prepare_cached(
        "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid, patient_id,
            patient_name, modality, body_part, series_description, series_number, instance_number,
            transfer_syntax, calling_ae, source_host, size_bytes, digest, path, received_at)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)
         ON CONFLICT(sop_instance_uid) DO UPDATE SET sop_class_uid=excluded.sop_class_uid,
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
        r.received_at
    ])?;
    conn.prepare_cached(
        "INSERT INTO studies (study_uid, patient_id, calling_ae, first_received_at, last_received_at, state)
         VALUES (?1, ?2, ?3, ?4, ?4, 'receiving')
         ON CONFLICT(study_uid) DO UPDATE SET last_received_at = excluded.last_received_at,
            calling_ae = excluded.calling_ae, state = 'receiving', completed_at = NULL",
    )?
    .execute(params![
        r.study_uid,
        r.patient_id,
        r.calling_ae,
        r.received_at
    ])?;
    Ok(match before {
        None => Recorded::New,
        Some((_, old)) => Recorded::Replaced {
            old_path: (old != r.path).then_some(old),
        },
    })
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
        conn.execute(
            "DELETE FROM studies WHERE state = 'receiving'
               AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = studies.study_uid)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = studies.study_uid)",
            [],
        )?;
    }
    Ok(missing)
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
        digest: "blake3:00".into(),
        path: format!("/x/{sop}.dcm"),
        received_at: t,
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
}
