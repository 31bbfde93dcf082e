//! The outbox: one row per (SEG object, destination), moved from `pending` to `delivered` or
//! `dead` (dead letter, with the reason). Retries back off exponentially with jitter, and every
//! row is bounded in tries, so a PACS that rejects us never causes an endless loop.
//!
//! A row is unique per (SOP Instance UID, destination): enqueuing the same object twice is a
//! no-op, and a re-send after a crash sends the very same SOP Instance UID.

use crate::config::DeliveryConfig;
use rusqlite::{params, Connection, OptionalExtension};

/// One delivery to make.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The job that produced it (None for manual sends).
    pub job_id: Option<i64>,
    /// SOP Instance UID of the object.
    pub sop_instance_uid: String,
    /// SOP Class UID of the object.
    pub sop_class_uid: String,
    /// The Part 10 file to send.
    pub path: String,
    /// Called AE title.
    pub destination_ae: String,
    /// Host.
    pub destination_host: String,
    /// Port.
    pub destination_port: u16,
    /// Use DICOM TLS.
    pub tls: bool,
    /// Tries so far.
    pub attempts: u32,
}

/// What a delivery attempt produced: the SCU's outcome ([`crate::dicom::scu::Attempt`]),
/// which the outbox records.
pub use crate::dicom::scu::Attempt;

/// What recording an attempt did to the row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    /// Delivered.
    Delivered,
    /// Will be retried at this time.
    RetryAt(f64),
    /// Dead-lettered.
    Dead,
}

/// Adds a delivery unless the same object is already queued for that destination. Returns
/// the row id (new or existing).
#[allow(clippy::too_many_arguments)]
pub fn enqueue(
    conn: &Connection,
    job_id: Option<i64>,
    sop_instance_uid: &str,
    sop_class_uid: &str,
    path: &str,
    dest_ae: &str,
    dest_host: &str,
    dest_port: u16,
    tls: bool,
    now: f64,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO outbox (job_id, sop_instance_uid, sop_class_uid, path, destination_ae,
            destination_host, destination_port, tls, state, next_try_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?9)
         ON CONFLICT (sop_instance_uid, destination_ae) DO NOTHING",
        params![
            job_id,
            sop_instance_uid,
            sop_class_uid,
            path,
            dest_ae,
            dest_host,
            dest_port,
            tls,
            now
        ],
    )?;
    conn.query_row(
        "SELECT id FROM outbox WHERE sop_instance_uid = ?1 AND destination_ae = ?2",
        params![sop_instance_uid, dest_ae],
        |r| r.get(0),
    )
}

/// Pending rows due at `now`, oldest first.
pub fn due(conn: &Connection, now: f64, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare(
        "SELECT id, job_id, sop_instance_uid, sop_class_uid, path, destination_ae, destination_host,
                destination_port, tls, attempts
         FROM outbox WHERE state = 'pending' AND next_try_at <= ?1 ORDER BY next_try_at, id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now, limit as i64], |r| {
        Ok(OutboxRow {
            id: r.get(0)?,
            job_id: r.get(1)?,
            sop_instance_uid: r.get(2)?,
            sop_class_uid: r.get(3)?,
            path: r.get(4)?,
            destination_ae: r.get(5)?,
            destination_host: r.get(6)?,
            destination_port: r.get::<_, i64>(7)? as u16,
            tls: r.get(8)?,
            attempts: r.get::<_, i64>(9)? as u32,
        })
    })?;
    rows.collect()
}

/// The delay before try number `attempts + 1`, with jitter drawn from `unit` in [0, 1).
pub fn backoff(cfg: &DeliveryConfig, attempts: u32, unit: f64) -> f64 {
    let exp = cfg.backoff_initial_s * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
    let base = exp.min(cfg.backoff_max_s);
    base * (0.8 + 0.4 * unit)
}

/// Records an attempt on row `id` and decides its next state.
pub fn record_attempt(
    conn: &Connection,
    cfg: &DeliveryConfig,
    id: i64,
    attempt: &Attempt,
    now: f64,
    jitter_unit: f64,
) -> rusqlite::Result<After> {
    let attempts: i64 = conn.query_row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    let attempts = attempts as u32 + 1;
    let (after, reason, status) = match attempt {
        Attempt::Delivered { status } => (After::Delivered, None, Some(*status)),
        Attempt::Transient { reason, status } => {
            if attempts >= cfg.max_attempts {
                (
                    After::Dead,
                    Some(format!("gave up after {attempts} tries: {reason}")),
                    *status,
                )
            } else {
                (
                    After::RetryAt(now + backoff(cfg, attempts, jitter_unit)),
                    Some(reason.clone()),
                    *status,
                )
            }
        }
        Attempt::Permanent { reason, status } => {
            if attempts >= cfg.max_permanent_attempts {
                (
                    After::Dead,
                    Some(format!(
                        "permanent failure after {attempts} tries: {reason}"
                    )),
                    *status,
                )
            } else {
                (
                    After::RetryAt(now + backoff(cfg, attempts, jitter_unit)),
                    Some(reason.clone()),
                    *status,
                )
            }
        }
    };
    match after {
        After::Delivered => conn.execute(
            "UPDATE outbox SET state = 'delivered', attempts = ?2, delivered_at = ?3, last_status = ?4 WHERE id = ?1",
            params![id, attempts, now, status],
        )?,
        After::RetryAt(t) => conn.execute(
            "UPDATE outbox SET attempts = ?2, next_try_at = ?3, last_error = ?4, last_status = ?5 WHERE id = ?1",
            params![id, attempts, t, reason, status],
        )?,
        After::Dead => conn.execute(
            "UPDATE outbox SET state = 'dead', attempts = ?2, last_error = ?3, last_status = ?4 WHERE id = ?1",
            params![id, attempts, reason, status],
        )?,
    };
    Ok(after)
}

/// Delivery summary of a job: (pending, delivered, dead) row counts.
pub fn job_summary(conn: &Connection, job_id: i64) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(
        "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'delivered'), 0),
                COALESCE(SUM(state = 'dead'), 0) FROM outbox WHERE job_id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// The last error of a dead row of a job, if any.
pub fn dead_reason(conn: &Connection, job_id: i64) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT last_error FROM outbox WHERE job_id = ?1 AND state = 'dead' ORDER BY id LIMIT 1",
        [job_id],
        |r| r.get(0),
    )
    .optional()
    .map(Option::flatten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cfg = DeliveryConfig {
            backoff_initial_s: 5.0,
            backoff_max_s: 60.0,
            ..Default::default()
        };
        assert_eq!(backoff(&cfg, 1, 0.5), 5.0);
        assert_eq!(backoff(&cfg, 2, 0.5), 10.0);
        assert_eq!(backoff(&cfg, 10, 0.5), 60.0);
        assert!((backoff(&cfg, 1, 0.0) - 4.0).abs() < 1e-9);
        assert!(backoff(&cfg, 1, 0.999) < 6.0);
    }

    #[test]
    fn retries_are_bounded_and_enqueue_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let cfg = DeliveryConfig {
            max_attempts: 3,
            max_permanent_attempts: 2,
            ..Default::default()
        };
        let a = db
            .write_blocking(|c| {
                enqueue(
                    c,
                    None,
                    "1.2.3",
                    "1.2.840.10008.5.1.4.1.1.66.4",
                    "/x.dcm",
                    "PACS",
                    "127.0.0.1",
                    104,
                    false,
                    0.0,
                )
            })
            .unwrap();
        let b = db
            .write_blocking(|c| {
                enqueue(
                    c,
                    None,
                    "1.2.3",
                    "1.2.840.10008.5.1.4.1.1.66.4",
                    "/x.dcm",
                    "PACS",
                    "127.0.0.1",
                    104,
                    false,
                    1.0,
                )
            })
            .unwrap();
        assert_eq!(a, b);
        let cfg2 = cfg.clone();
        let t = Attempt::Transient {
            reason: "refused".into(),
            status: None,
        };
        let r1 = db
            .write_blocking(move |c| record_attempt(c, &cfg2, a, &t, 10.0, 0.5))
            .unwrap();
        assert_eq!(r1, After::RetryAt(15.0));
        let cfg3 = cfg.clone();
        let p = Attempt::Permanent {
            reason: "AE rejected".into(),
            status: None,
        };
        let r2 = db
            .write_blocking(move |c| record_attempt(c, &cfg3, a, &p, 20.0, 0.5))
            .unwrap();
        assert_eq!(r2, After::Dead);
        assert!(
            db.read(|c| due(c, 1e12, 10)).unwrap().is_empty(),
            "dead rows are never due"
        );
    }
}
