//! One peer's part of a study, the unit of work (review H4): a study that two peers send is
//! two units, each assembled, routed, segmented and answered on its own, from the instances
//! that peer sent and nothing else. A peer is the calling AE title together with the host the
//! associations came from.
//!
//! The `study_peers` table holds one row per (study, calling AE, source host) with its own
//! receiving / complete state; `studies` keeps the study-wide row retention and the admin API
//! work on (it is `receiving` while any of its peers is). Every query here that selects
//! instances filters by study and peer together, and series by Study and Series Instance UID
//! together. Nothing here may ever select one peer's instances for another peer's job.

use crate::store::instances::InstanceRecord;
use rusqlite::{params, Connection, OptionalExtension};

/// A study as one peer sent it: the key of a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerStudy {
    /// Study Instance UID.
    pub study_uid: String,
    /// Calling AE title of the sender.
    pub calling_ae: String,
    /// IP address the sender's associations came from.
    pub source_host: String,
}

impl PeerStudy {
    /// The peer's part of the study `r` belongs to.
    pub fn of(r: &InstanceRecord) -> PeerStudy {
        PeerStudy {
            study_uid: r.study_uid.clone(),
            calling_ae: r.calling_ae.clone(),
            source_host: r.source_host.clone(),
        }
    }
}

impl std::fmt::Display for PeerStudy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} from {} ({})",
            self.study_uid, self.calling_ae, self.source_host
        )
    }
}

/// One series of a peer's study as routing sees it: what that peer sent of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSeries {
    /// Series Instance UID.
    pub series_uid: String,
    /// Modality.
    pub modality: String,
    /// Body Part Examined.
    pub body_part: String,
    /// SOP Class UID of its instances (the smallest, for a series mixing classes).
    pub sop_class_uid: String,
    /// Series Description.
    pub series_description: String,
}

/// Marks the peer's part of `r`'s study as receiving (a part that was complete starts again,
/// so a late arrival makes a new job of that peer's instances), in the caller's transaction.
pub fn touch(conn: &Connection, r: &InstanceRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO study_peers (study_uid, calling_ae, source_host, first_received_at,
            last_received_at, state)
         VALUES (?1, ?2, ?3, ?4, ?4, 'receiving')
         ON CONFLICT (study_uid, calling_ae, source_host) DO UPDATE SET
            last_received_at = excluded.last_received_at, state = 'receiving',
            completed_at = NULL",
    )?
    .execute(params![
        r.study_uid,
        r.calling_ae,
        r.source_host,
        r.received_at
    ])?;
    Ok(())
}

/// Studies still marked receiving although none of their peers is (a peer's part was removed
/// after a crash): complete as of their last instance. Studies without peer rows (written
/// before migration 8 and left alone by it) are not touched.
pub const SETTLE_STUDIES: &str = "
    UPDATE studies SET state = 'complete', completed_at = COALESCE(completed_at, last_received_at)
     WHERE state = 'receiving'
       AND EXISTS (SELECT 1 FROM study_peers p WHERE p.study_uid = studies.study_uid)
       AND NOT EXISTS (SELECT 1 FROM study_peers p
                        WHERE p.study_uid = studies.study_uid AND p.state = 'receiving')";

/// Removes receiving peer parts that no instance and no job names any more (their only rows
/// were never acknowledged), and completes studies left without a receiving part.
pub fn drop_empty(conn: &Connection) -> rusqlite::Result<usize> {
    let n = conn.execute(
        "DELETE FROM study_peers WHERE state = 'receiving'
           AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = study_peers.study_uid
                AND i.calling_ae = study_peers.calling_ae
                AND i.source_host = study_peers.source_host)
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = study_peers.study_uid
                AND j.calling_ae = study_peers.calling_ae
                AND j.source_host = study_peers.source_host)",
        [],
    )?;
    conn.execute(SETTLE_STUDIES, [])?;
    Ok(n)
}

/// Peer parts still receiving whose last instance arrived at or before `cutoff`.
pub fn stable(conn: &Connection, cutoff: f64) -> rusqlite::Result<Vec<PeerStudy>> {
    Ok(ready(conn, cutoff, None)?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// Peer parts still receiving that are ready for a job: quiet since `cutoff` (true in the
/// pair), or, with `overdue_before`, receiving since before it, counted from the part's last
/// job or else its first instance (false in the pair).
pub fn ready(
    conn: &Connection,
    cutoff: f64,
    overdue_before: Option<f64>,
) -> rusqlite::Result<Vec<(PeerStudy, bool)>> {
    let mut st = conn.prepare_cached(
        "SELECT study_uid, calling_ae, source_host, last_received_at <= ?1 FROM study_peers p
          WHERE state = 'receiving' AND (last_received_at <= ?1 OR (?2 IS NOT NULL AND
            COALESCE((SELECT MAX(j.created_at) FROM jobs j WHERE j.study_uid = p.study_uid
                        AND j.calling_ae = p.calling_ae AND j.source_host = p.source_host),
                     first_received_at) <= ?2))
          ORDER BY last_received_at, study_uid, calling_ae, source_host",
    )?;
    let rows = st.query_map(params![cutoff, overdue_before], |r| {
        Ok((
            PeerStudy {
                study_uid: r.get(0)?,
                calling_ae: r.get(1)?,
                source_host: r.get(2)?,
            },
            r.get(3)?,
        ))
    })?;
    rows.collect()
}

/// Marks one peer's part complete at `now`, and its study too once no part of it is still
/// receiving. Returns how many instances that peer sent of the study.
pub fn complete(conn: &Connection, key: &PeerStudy, now: f64) -> rusqlite::Result<i64> {
    conn.execute(
        "UPDATE study_peers SET state = 'complete', completed_at = ?4
          WHERE study_uid = ?1 AND calling_ae = ?2 AND source_host = ?3",
        params![key.study_uid, key.calling_ae, key.source_host, now],
    )?;
    conn.execute(
        "UPDATE studies SET state = 'complete', completed_at = ?2
          WHERE study_uid = ?1 AND state = 'receiving'
            AND NOT EXISTS (SELECT 1 FROM study_peers p
                             WHERE p.study_uid = ?1 AND p.state = 'receiving')",
        params![key.study_uid, now],
    )?;
    conn.query_row(
        "SELECT COUNT(*) FROM instances
          WHERE study_uid = ?1 AND calling_ae = ?2 AND source_host = ?3",
        params![key.study_uid, key.calling_ae, key.source_host],
        |r| r.get(0),
    )
}

/// The peer's part a job works on; None when the job does not exist.
pub fn of_job(conn: &Connection, job: i64) -> rusqlite::Result<Option<PeerStudy>> {
    conn.prepare_cached("SELECT study_uid, calling_ae, source_host FROM jobs WHERE id = ?1")?
        .query_row([job], |r| {
            Ok(PeerStudy {
                study_uid: r.get(0)?,
                calling_ae: r.get(1)?,
                source_host: r.get(2)?,
            })
        })
        .optional()
}

/// The series the peer sent of the study, in the order their first instance arrived.
pub fn series(conn: &Connection, key: &PeerStudy) -> rusqlite::Result<Vec<PeerSeries>> {
    let mut st = conn.prepare_cached(
        "SELECT series_uid, MAX(modality), MAX(body_part), MIN(sop_class_uid),
                MAX(series_description)
           FROM instances WHERE study_uid = ?1 AND calling_ae = ?2 AND source_host = ?3
          GROUP BY series_uid ORDER BY MIN(received_at), series_uid",
    )?;
    let rows = st.query_map(
        params![key.study_uid, key.calling_ae, key.source_host],
        |r| {
            Ok(PeerSeries {
                series_uid: r.get(0)?,
                modality: r.get(1)?,
                body_part: r.get(2)?,
                sop_class_uid: r.get(3)?,
                series_description: r.get(4)?,
            })
        },
    )?;
    rows.collect()
}

/// Spool paths of the instances the peer sent of one series of the study (selected by Study
/// and Series Instance UID together: a Series UID reused in another study, or the part of the
/// series another peer sent, is never included), in instance order.
pub fn series_paths(
    conn: &Connection,
    key: &PeerStudy,
    series_uid: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT path FROM instances
          WHERE study_uid = ?1 AND series_uid = ?2 AND calling_ae = ?3 AND source_host = ?4
          ORDER BY instance_number, sop_instance_uid",
    )?;
    let rows = st.query_map(
        params![key.study_uid, series_uid, key.calling_ae, key.source_host],
        |r| r.get(0),
    )?;
    rows.collect()
}

/// The distinct Patient IDs among the instances the peer sent of the study, sorted. More than
/// one means the peer mixed patients under one Study Instance UID.
pub fn patient_ids(conn: &Connection, key: &PeerStudy) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT DISTINCT patient_id FROM instances
          WHERE study_uid = ?1 AND calling_ae = ?2 AND source_host = ?3 ORDER BY patient_id",
    )?;
    let rows = st.query_map(
        params![key.study_uid, key.calling_ae, key.source_host],
        |r| r.get(0),
    )?;
    rows.collect()
}

/// The latest job of the same peer's part before job `before`: (id, created_at).
pub fn previous_job(
    conn: &Connection,
    key: &PeerStudy,
    before: i64,
) -> rusqlite::Result<Option<(i64, f64)>> {
    conn.prepare_cached(
        "SELECT id, created_at FROM jobs
          WHERE study_uid = ?1 AND calling_ae = ?2 AND source_host = ?3 AND id < ?4
          ORDER BY id DESC LIMIT 1",
    )?
    .query_row(
        params![key.study_uid, key.calling_ae, key.source_host, before],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// How many jobs of the peer's part before job `before`, created at or after `since`, were
/// routed to a support set (segmented, or on their way): what the loop guard's cap counts.
pub fn segmented_jobs_since(
    conn: &Connection,
    key: &PeerStudy,
    before: i64,
    since: f64,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT COUNT(*) FROM jobs
          WHERE study_uid = ?1 AND calling_ae = ?2 AND source_host = ?3 AND id < ?4
            AND created_at >= ?5 AND support_set IS NOT NULL",
    )?
    .query_row(
        params![
            key.study_uid,
            key.calling_ae,
            key.source_host,
            before,
            since
        ],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instances::{record, test_record};
    use crate::store::jobs::complete_stable_studies;
    use crate::store::Db;

    /// An instance of `study` / `series` from `ae` at `host`, for patient `patient`.
    fn sent(
        sop: &str,
        study: &str,
        series: &str,
        ae: &str,
        host: &str,
        patient: &str,
        t: f64,
    ) -> InstanceRecord {
        InstanceRecord {
            series_uid: series.into(),
            calling_ae: ae.into(),
            source_host: host.into(),
            patient_id: patient.into(),
            ..test_record(sop, study, t)
        }
    }

    fn key(study: &str, ae: &str, host: &str) -> PeerStudy {
        PeerStudy {
            study_uid: study.into(),
            calling_ae: ae.into(),
            source_host: host.into(),
        }
    }

    /// Review L10: a part that keeps receiving (never quiet for stable_age_s) is completed
    /// once it has been receiving for max_receiving_s, counted from its first instance, and
    /// after that job from the job; a quiet part is completed as before.
    #[test]
    fn a_part_that_never_goes_quiet_is_completed_when_overdue() {
        use crate::store::jobs::complete_ready_studies;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        // One instance a second from 100 to 120: never quiet for 5 s.
        for i in 0..=20 {
            let r = sent(
                &format!("1.{i}"),
                "9.1",
                "9.1.1",
                "A",
                "10.0.0.1",
                "P",
                100.0 + i as f64,
            );
            db.write_blocking(move |c| record(c, &r)).unwrap();
        }
        // At 110 (cutoff 105): not quiet; receiving since 100, not yet 30 s.
        let none = db
            .write_blocking(|c| complete_ready_studies(c, 105.0, Some(80.0), 110.0))
            .unwrap();
        assert!(none.is_empty(), "{none:?}");
        // At 120 with max_receiving 15 s: overdue since 105, so a job now, on 21 instances.
        let jobs = db
            .write_blocking(|c| complete_ready_studies(c, 115.0, Some(105.0), 120.0))
            .unwrap();
        assert_eq!(jobs.len(), 1);
        let (n, detail): (i64, String) = db
            .read(|c| {
                c.query_row(
                    "SELECT j.instance_count, e.detail FROM jobs j JOIN job_events e ON e.job_id = j.id",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap();
        assert_eq!(n, 21);
        assert!(detail.contains("max_receiving_s"), "{detail}");
        // More arrives: the part opens again, and is overdue only 15 s after that job.
        let r = sent("1.99", "9.1", "9.1.1", "A", "10.0.0.1", "P", 121.0);
        db.write_blocking(move |c| record(c, &r)).unwrap();
        let none = db
            .write_blocking(|c| complete_ready_studies(c, 117.0, Some(110.0), 122.0))
            .unwrap();
        assert!(
            none.is_empty(),
            "counted from the last job, not the first instance"
        );
        let again = db
            .write_blocking(|c| complete_ready_studies(c, 117.0, Some(121.0), 136.0))
            .unwrap();
        assert_eq!(again.len(), 1);
    }

    /// Two peers sending one study: each gets a job of its own, of its own instances, in its
    /// own time; the study completes only when both parts did; a series UID that another
    /// study reuses, and the part of a series another peer sent, are never selected.
    #[test]
    fn each_peer_part_is_its_own_unit_of_work() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        for r in [
            sent("1.1", "9.1", "9.1.1", "A", "10.0.0.1", "PA", 100.0),
            sent("1.2", "9.1", "9.1.1", "A", "10.0.0.1", "PA", 101.0),
            sent("1.3", "9.1", "9.1.2", "B", "10.0.0.2", "PB", 102.0),
            // B's part of A's series, and the same AE from another host.
            sent("1.4", "9.1", "9.1.1", "B", "10.0.0.2", "PB", 103.0),
            sent("1.5", "9.1", "9.1.1", "A", "10.0.0.9", "PX", 110.0),
            // Series UID 9.1.1 reused in another study.
            sent("2.1", "9.2", "9.1.1", "A", "10.0.0.1", "PZ", 100.0),
        ] {
            db.write_blocking(move |c| record(c, &r)).unwrap();
        }
        let a = key("9.1", "A", "10.0.0.1");
        let b = key("9.1", "B", "10.0.0.2");
        let ax = key("9.1", "A", "10.0.0.9");
        let paths = db.read(|c| series_paths(c, &a, "9.1.1")).unwrap();
        assert_eq!(paths, ["/x/1.1.dcm", "/x/1.2.dcm"]);
        let paths = db.read(|c| series_paths(c, &b, "9.1.1")).unwrap();
        assert_eq!(paths, ["/x/1.4.dcm"]);
        let uids = |v: Vec<PeerSeries>| v.into_iter().map(|s| s.series_uid).collect::<Vec<_>>();
        assert_eq!(uids(db.read(|c| series(c, &a)).unwrap()), ["9.1.1"]);
        assert_eq!(
            uids(db.read(|c| series(c, &b)).unwrap()),
            ["9.1.2", "9.1.1"]
        );
        assert_eq!(db.read(|c| patient_ids(c, &b)).unwrap(), ["PB"]);

        // A's and B's parts are stable at 105; A's other host is not yet, nor is the study.
        let jobs = db
            .write_blocking(|c| complete_stable_studies(c, 105.0, 106.0))
            .unwrap();
        let keys: Vec<PeerStudy> = jobs.iter().map(|(_, k)| k.clone()).collect();
        assert!(keys.contains(&a) && keys.contains(&b), "{keys:?}");
        assert!(!keys.contains(&ax));
        let (count, state): (i64, String) = db
            .read(|c| {
                c.query_row(
                    "SELECT instance_count, (SELECT state FROM studies WHERE study_uid = '9.1')
                       FROM jobs WHERE calling_ae = 'B'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap();
        assert_eq!((count, state.as_str()), (2, "receiving"));
        for (id, k) in &jobs {
            let id = *id;
            assert_eq!(db.read(|c| of_job(c, id)).unwrap().as_ref(), Some(k));
        }
        let later = db
            .write_blocking(|c| complete_stable_studies(c, 110.0, 111.0))
            .unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].1, ax);
        let state: String = db
            .read(|c| {
                c.query_row(
                    "SELECT state FROM studies WHERE study_uid = '9.1'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(state, "complete");
        let prev = db.read(|c| previous_job(c, &a, i64::MAX)).unwrap();
        let a_job = jobs.iter().find(|(_, k)| *k == a).unwrap().0;
        assert_eq!(prev, Some((a_job, 106.0)));
        assert_eq!(db.read(|c| previous_job(c, &a, a_job)).unwrap(), None);
    }

    /// The loop guard's cap counts the part's earlier jobs that were routed to a support set
    /// within the window, and no other part's.
    #[test]
    fn segmented_jobs_are_counted_per_part_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        let a = key("9.1", "A", "h");
        for (t, ae) in [(100.0, "A"), (200.0, "A"), (300.0, "B"), (400.0, "A")] {
            let r = sent(&format!("1.{t}"), "9.1", "9.1.1", ae, "h", "P", t);
            db.write_blocking(move |c| {
                record(c, &r)?;
                complete_stable_studies(c, t, t)
            })
            .unwrap();
        }
        // A's jobs 1, 2 and 4; job 2 was unmatched (no support set).
        db.write_blocking(|c| {
            c.execute("UPDATE jobs SET support_set = 's' WHERE id IN (1, 4)", [])
        })
        .unwrap();
        let n = |before: i64, since: f64| {
            db.read(|c| segmented_jobs_since(c, &a, before, since))
                .unwrap()
        };
        assert_eq!(n(5, 0.0), 2);
        assert_eq!(n(4, 0.0), 1, "only jobs before the one being routed");
        assert_eq!(n(5, 150.0), 1, "only jobs inside the window");
    }

    /// Mixed patients within one peer's part are visible; another peer's patient is not.
    #[test]
    fn patient_ids_are_counted_per_peer_part() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        for r in [
            sent("1.1", "9.1", "9.1.1", "A", "h", "P1", 100.0),
            sent("1.2", "9.1", "9.1.2", "A", "h", "P2", 100.0),
            sent("1.3", "9.1", "9.1.3", "B", "h", "P3", 100.0),
        ] {
            db.write_blocking(move |c| record(c, &r)).unwrap();
        }
        assert_eq!(
            db.read(|c| patient_ids(c, &key("9.1", "A", "h"))).unwrap(),
            ["P1", "P2"]
        );
        assert_eq!(
            db.read(|c| patient_ids(c, &key("9.1", "B", "h"))).unwrap(),
            ["P3"]
        );
    }
}
