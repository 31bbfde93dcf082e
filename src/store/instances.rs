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
    /// SHA-256 of the data set bytes as received (hex).
    pub sha256: String,
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

/// Looks up the stored copy of an instance: (sha256, path).
pub fn existing(
    conn: &Connection,
    sop_instance_uid: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.query_row(
        "SELECT sha256, path FROM instances WHERE sop_instance_uid = ?1",
        [sop_instance_uid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Records an instance and touches its study (a study that was complete starts receiving
/// again, so late arrivals make a new job instead of being silently ignored).
pub fn record(conn: &Connection, r: &InstanceRecord) -> rusqlite::Result<Recorded> {
    let before = existing(conn, &r.sop_instance_uid)?;
    conn.execute(
        "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid, patient_id,
            patient_name, modality, body_part, series_description, series_number, instance_number,
            transfer_syntax, calling_ae, source_host, size_bytes, sha256, path, received_at)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)
         ON CONFLICT(sop_instance_uid) DO UPDATE SET sop_class_uid=excluded.sop_class_uid,
            study_uid=excluded.study_uid, series_uid=excluded.series_uid,
            patient_id=excluded.patient_id, patient_name=excluded.patient_name,
            modality=excluded.modality, body_part=excluded.body_part,
            series_description=excluded.series_description, series_number=excluded.series_number,
            instance_number=excluded.instance_number, transfer_syntax=excluded.transfer_syntax,
            calling_ae=excluded.calling_ae, source_host=excluded.source_host,
            size_bytes=excluded.size_bytes, sha256=excluded.sha256, path=excluded.path,
            received_at=excluded.received_at",
        params![
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
            r.sha256,
            r.path,
            r.received_at
        ],
    )?;
    conn.execute(
        "INSERT INTO studies (study_uid, patient_id, calling_ae, first_received_at, last_received_at, state)
         VALUES (?1, ?2, ?3, ?4, ?4, 'receiving')
         ON CONFLICT(study_uid) DO UPDATE SET last_received_at = excluded.last_received_at,
            calling_ae = excluded.calling_ae, state = 'receiving', completed_at = NULL",
        params![r.study_uid, r.patient_id, r.calling_ae, r.received_at],
    )?;
    Ok(match before {
        None => Recorded::New,
        Some((_, old)) => Recorded::Replaced {
            old_path: (old != r.path).then_some(old),
        },
    })
}

/// Number of indexed instances.
pub fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
}
