//! The index's schema: its migrations, in order, and how they are applied at open (one
//! transaction, foreign keys off while they run). `PRAGMA user_version` records how many ran;
//! an index written by a newer proxyseg is refused.

use super::DbError;
use rusqlite::Connection;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: instances, studies, jobs and their history.
    r#"
    CREATE TABLE instances (
        sop_instance_uid TEXT PRIMARY KEY,
        sop_class_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        patient_id TEXT NOT NULL DEFAULT '',
        patient_name TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        body_part TEXT NOT NULL DEFAULT '',
        series_description TEXT NOT NULL DEFAULT '',
        series_number INTEGER,
        instance_number INTEGER,
        transfer_syntax TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        source_host TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        path TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX instances_study ON instances(study_uid);
    CREATE INDEX instances_series ON instances(series_uid);
    CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL DEFAULT '',
        calling_ae TEXT NOT NULL,
        first_received_at REAL NOT NULL,
        last_received_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
        completed_at REAL
    );
    CREATE INDEX studies_state ON studies(state, last_received_at);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL REFERENCES studies(study_uid),
        state TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        instance_count INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_study ON jobs(study_uid);
    CREATE TABLE job_events (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        state TEXT NOT NULL,
        at REAL NOT NULL,
        detail TEXT
    );
    CREATE INDEX job_events_job ON job_events(job_id);
    "#,
    // 2: routing results on jobs, and the outbox of SEG objects to deliver.
    r#"
    ALTER TABLE jobs ADD COLUMN rule_id INTEGER;
    ALTER TABLE jobs ADD COLUMN support_set TEXT;
    ALTER TABLE jobs ADD COLUMN support_set_version INTEGER;
    ALTER TABLE jobs ADD COLUMN bundle TEXT;
    ALTER TABLE jobs ADD COLUMN destination_ae TEXT;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        job_id INTEGER REFERENCES jobs(id),
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        destination_ae TEXT NOT NULL,
        destination_host TEXT NOT NULL,
        destination_port INTEGER NOT NULL,
        tls INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at REAL NOT NULL,
        last_error TEXT,
        last_status INTEGER,
        created_at REAL NOT NULL,
        delivered_at REAL,
        UNIQUE (sop_instance_uid, destination_ae)
    );
    CREATE INDEX outbox_due ON outbox(state, next_try_at);
    "#,
    // 3: what the router decided for each job, so a restart resumes inference unchanged.
    r#"
    ALTER TABLE jobs ADD COLUMN series_json TEXT;
    ALTER TABLE jobs ADD COLUMN skip_localizers INTEGER NOT NULL DEFAULT 1;
    "#,
    // 4: support sets as immutable versions, routing rules, and the audit log of admin changes.
    // Objects and pairs carry the range of set versions that contain them
    // ([since_version, until_version), NULL = still current): see store::support.
    r#"
    CREATE TABLE support_sets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL,
        next_pair INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE support_set_versions (
        set_id INTEGER NOT NULL REFERENCES support_sets(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        bundle TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        body_part TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        change TEXT NOT NULL,
        PRIMARY KEY (set_id, version)
    );
    CREATE TABLE support_objects (
        set_id INTEGER NOT NULL REFERENCES support_sets(id) ON DELETE CASCADE,
        since_version INTEGER NOT NULL,
        until_version INTEGER,
        idx INTEGER NOT NULL,
        label TEXT NOT NULL,
        category_scheme TEXT NOT NULL DEFAULT '',
        category_code TEXT NOT NULL DEFAULT '',
        category_meaning TEXT NOT NULL DEFAULT '',
        type_scheme TEXT NOT NULL DEFAULT '',
        type_code TEXT NOT NULL DEFAULT '',
        type_meaning TEXT NOT NULL DEFAULT '',
        color_r INTEGER NOT NULL,
        color_g INTEGER NOT NULL,
        color_b INTEGER NOT NULL
    );
    CREATE INDEX support_objects_set ON support_objects(set_id, since_version);
    CREATE TABLE support_pairs (
        set_id INTEGER NOT NULL REFERENCES support_sets(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        since_version INTEGER NOT NULL,
        until_version INTEGER,
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        modality TEXT NOT NULL DEFAULT '',
        rows INTEGER NOT NULL,
        cols INTEGER NOT NULL,
        dir TEXT NOT NULL,
        image_sha256 TEXT NOT NULL,
        masks_sha256 TEXT NOT NULL,
        mask_pixels TEXT NOT NULL,
        mask_source TEXT NOT NULL CHECK (mask_source IN ('png', 'seg')),
        PRIMARY KEY (set_id, number)
    );
    CREATE TABLE rules (
        id INTEGER PRIMARY KEY,
        priority INTEGER NOT NULL DEFAULT 100,
        modality TEXT NOT NULL DEFAULT '',
        body_part TEXT NOT NULL DEFAULT '',
        sop_class_uid TEXT NOT NULL DEFAULT '',
        series_description_regex TEXT NOT NULL DEFAULT '',
        calling_ae TEXT NOT NULL DEFAULT '',
        support_set TEXT NOT NULL,
        destination_ae TEXT NOT NULL DEFAULT '',
        stable_age_s REAL,
        enabled INTEGER NOT NULL DEFAULT 1,
        skip_localizers INTEGER NOT NULL DEFAULT 1,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        token_name TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    "#,
    // 5: the instance content digest is BLAKE3 (about 3x cheaper than SHA-256 on the ingest
    // path, where hashing was the largest CPU cost); values carry their algorithm, and rows
    // from before keep their SHA-256 as `sha256:<hex>`.
    r#"
    ALTER TABLE instances RENAME COLUMN sha256 TO digest;
    UPDATE instances SET digest = 'sha256:' || digest;
    "#,
    // 6: instances whose row committed while their file's fsync was still running (see
    // instances::record_unsynced); checked against their digest at the next start. And the
    // stable-age query only needs the few studies still receiving: with last_received_at out
    // of its index, recording an instance no longer moves an index entry (one page fewer
    // written per commit, as the WITHOUT ROWID list saves another).
    r#"
    CREATE TABLE unsynced (sop_instance_uid TEXT PRIMARY KEY) WITHOUT ROWID;
    DROP INDEX studies_state;
    CREATE INDEX studies_state ON studies(state);
    "#,
    // 7: retention deletes rows (store::retention), so ids must never come back: a job id is
    // its results folder, its SEG UIDs' seed and its name in the audit log, and Jobs.Watch
    // follows job_events by rowid. Plain INTEGER PRIMARY KEYs hand out max + 1, which reuses
    // the ids of deleted newest rows; AUTOINCREMENT never does. The three tables are rebuilt
    // with their rows and ids (see `migrate` for the foreign keys).
    r#"
    CREATE TABLE jobs_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        study_uid TEXT NOT NULL REFERENCES studies(study_uid),
        state TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        instance_count INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        rule_id INTEGER,
        support_set TEXT,
        support_set_version INTEGER,
        bundle TEXT,
        destination_ae TEXT,
        series_json TEXT,
        skip_localizers INTEGER NOT NULL DEFAULT 1
    );
    INSERT INTO jobs_new (id, study_uid, state, calling_ae, instance_count, created_at,
        updated_at, attempts, error, rule_id, support_set, support_set_version, bundle,
        destination_ae, series_json, skip_localizers)
    SELECT id, study_uid, state, calling_ae, instance_count, created_at, updated_at, attempts,
        error, rule_id, support_set, support_set_version, bundle, destination_ae, series_json,
        skip_localizers FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_new RENAME TO jobs;
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_study ON jobs(study_uid);
    CREATE TABLE job_events_new (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        state TEXT NOT NULL,
        at REAL NOT NULL,
        detail TEXT
    );
    INSERT INTO job_events_new (seq, job_id, state, at, detail)
    SELECT rowid, job_id, state, at, detail FROM job_events ORDER BY rowid;
    DROP TABLE job_events;
    ALTER TABLE job_events_new RENAME TO job_events;
    CREATE INDEX job_events_job ON job_events(job_id);
    CREATE TABLE outbox_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER REFERENCES jobs(id),
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        destination_ae TEXT NOT NULL,
        destination_host TEXT NOT NULL,
        destination_port INTEGER NOT NULL,
        tls INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at REAL NOT NULL,
        last_error TEXT,
        last_status INTEGER,
        created_at REAL NOT NULL,
        delivered_at REAL,
        UNIQUE (sop_instance_uid, destination_ae)
    );
    INSERT INTO outbox_new (id, job_id, sop_instance_uid, sop_class_uid, path, destination_ae,
        destination_host, destination_port, tls, state, attempts, next_try_at, last_error,
        last_status, created_at, delivered_at)
    SELECT id, job_id, sop_instance_uid, sop_class_uid, path, destination_ae, destination_host,
        destination_port, tls, state, attempts, next_try_at, last_error, last_status, created_at,
        delivered_at FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_new RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox(state, next_try_at);
    CREATE INDEX outbox_job ON outbox(job_id);
    "#,
    // 8: the unit of work is one peer's part of a study (review H4; store::peer_studies): a
    // study two peers send is assembled, segmented and answered per (calling AE, source host),
    // never "last sender wins". Existing parts are rebuilt from the instances: a part of a
    // study still receiving is receiving when it sent something after the study's last job,
    // every other part is complete. Jobs name their peer's host too (taken from the latest
    // instance that AE sent of the study), and series are looked up by study and series.
    // The loop guard counts images whose content changed (review M2): each instance keeps the
    // key of what segmentation depends on (dicom::content) and when that last changed; rows
    // from before have no key, so a re-encoded copy of one counts as new once.
    r#"
    CREATE TABLE study_peers (
        study_uid TEXT NOT NULL REFERENCES studies(study_uid),
        calling_ae TEXT NOT NULL,
        source_host TEXT NOT NULL,
        first_received_at REAL NOT NULL,
        last_received_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
        completed_at REAL,
        PRIMARY KEY (study_uid, calling_ae, source_host)
    ) WITHOUT ROWID;
    CREATE INDEX study_peers_state ON study_peers(state);
    INSERT INTO study_peers (study_uid, calling_ae, source_host, first_received_at,
        last_received_at, state, completed_at)
    SELECT study_uid, calling_ae, source_host, first_at, last_at,
        CASE WHEN receiving THEN 'receiving' ELSE 'complete' END,
        CASE WHEN receiving THEN NULL ELSE COALESCE(completed_at, last_at) END
    FROM (SELECT i.study_uid, i.calling_ae, i.source_host, MIN(i.received_at) AS first_at,
            MAX(i.received_at) AS last_at, s.completed_at,
            s.state = 'receiving' AND MAX(i.received_at) > COALESCE(
                (SELECT MAX(j.created_at) FROM jobs j WHERE j.study_uid = i.study_uid), 0)
                AS receiving
          FROM instances i JOIN studies s ON s.study_uid = i.study_uid
          GROUP BY i.study_uid, i.calling_ae, i.source_host);
    UPDATE studies SET state = 'complete', completed_at = COALESCE(completed_at, last_received_at)
     WHERE state = 'receiving'
       AND EXISTS (SELECT 1 FROM study_peers p WHERE p.study_uid = studies.study_uid)
       AND NOT EXISTS (SELECT 1 FROM study_peers p
                        WHERE p.study_uid = studies.study_uid AND p.state = 'receiving');
    ALTER TABLE jobs ADD COLUMN source_host TEXT NOT NULL DEFAULT '';
    UPDATE jobs SET source_host = COALESCE((SELECT i.source_host FROM instances i
        WHERE i.study_uid = jobs.study_uid AND i.calling_ae = jobs.calling_ae
        ORDER BY i.received_at DESC LIMIT 1), '');
    CREATE INDEX jobs_peer ON jobs(study_uid, calling_ae, source_host);
    CREATE INDEX instances_study_series ON instances(study_uid, series_uid);
    ALTER TABLE instances ADD COLUMN content_key TEXT NOT NULL DEFAULT '';
    ALTER TABLE instances ADD COLUMN content_at REAL NOT NULL DEFAULT 0;
    UPDATE instances SET content_at = received_at;
    "#,
    // 9: the sequence mode a routing rule or a support-set version asks for (NULL: inherit),
    // and the one each job was routed with and where it came from (issue 15 item 4; see
    // crate::sequence_mode). Jobs routed before keep NULL and run with the config's mode.
    r#"
    ALTER TABLE rules ADD COLUMN sequence_mode TEXT
        CHECK (sequence_mode IN ('auto', 'memory', 'per-frame'));
    ALTER TABLE support_set_versions ADD COLUMN sequence_mode TEXT
        CHECK (sequence_mode IN ('auto', 'memory', 'per-frame'));
    ALTER TABLE jobs ADD COLUMN sequence_mode TEXT;
    ALTER TABLE jobs ADD COLUMN sequence_mode_from TEXT;
    "#,
];

/// Applies every pending migration inside one transaction.
///
/// Foreign key enforcement is off while they run (SQLite changes it only outside a
/// transaction): a table rebuild (migration 7) drops a table other tables refer to before its
/// copy takes its name, SQLite's documented procedure for schema changes ALTER TABLE cannot
/// make. The rows keep their keys, so every reference resolves again once it committed.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    conn.execute_batch("PRAGMA foreign_keys=OFF")
        .map_err(DbError::sql("foreign_keys off for migrations"))?;
    let r = migrate_in_transaction(conn);
    conn.execute_batch("PRAGMA foreign_keys=ON")
        .map_err(DbError::sql("foreign_keys back on after migrations"))?;
    r
}

fn migrate_in_transaction(conn: &mut Connection) -> Result<(), DbError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(DbError::sql("reading user_version"))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(DbError::TooNew {
            found: version,
            supported,
        });
    }
    let tx = conn
        .transaction()
        .map_err(DbError::sql("begin migration"))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(DbError::sql(format!("migration {}", i + 1)))?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {supported}"))
        .map_err(DbError::sql("writing user_version"))?;
    tx.commit().map_err(DbError::sql("commit migration"))
}

#[cfg(test)]
mod tests {
    use super::super::{open_conn, Db};
    use super::*;

    /// An index written by the version before migration 5 opens with its SHA-256 digests kept
    /// and labelled, so identical-duplicate checks keep working across the upgrade.
    #[test]
    fn migration_5_keeps_old_digests_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = open_conn(&path).unwrap();
            for sql in &MIGRATIONS[..4] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 4;
                 INSERT INTO studies (study_uid, patient_id, calling_ae, first_received_at,
                    last_received_at, state) VALUES ('1.5', 'P', 'PACS', 1, 1, 'receiving');
                 INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,
                    patient_id, patient_name, modality, body_part, series_description,
                    transfer_syntax, calling_ae, source_host, size_bytes, sha256, path, received_at)
                 VALUES ('1.1', '1.2', '1.5', '1.9', 'P', 'N', 'CT', '', '', '1.2.840.10008.1.2.1',
                    'PACS', '127.0.0.1', 1, 'ab12', '/x/1.1.dcm', 1);",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let found = db
            .read(|c| crate::store::instances::existing(c, "1.1"))
            .unwrap();
        let found = found.map(|s| (s.digest, s.path));
        assert_eq!(found, Some(("sha256:ab12".into(), "/x/1.1.dcm".into())));
        let version: i64 = db
            .read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    /// Migration 8 rebuilds each peer's part of the studies already indexed: a part the
    /// study's last job covered is complete, one that sent after it is still receiving (and
    /// is assembled on its own from then on); jobs learn their peer's host.
    #[test]
    fn migration_8_splits_studies_into_peer_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = open_conn(&path).unwrap();
            for sql in &MIGRATIONS[..7] {
                conn.execute_batch(sql).unwrap();
            }
            let instance = |sop: &str, ae: &str, host: &str, at: f64| {
                format!(
                    "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,
                        transfer_syntax, calling_ae, source_host, size_bytes, digest, path,
                        received_at)
                     VALUES ('{sop}', '1.2', '1.5', '1.9', '1.2.840.10008.1.2.1', '{ae}', '{host}',
                        1, 'xxh3-128:00', '/x/{sop}.dcm', {at});"
                )
            };
            conn.execute_batch(&format!(
                "PRAGMA user_version = 7;
                 INSERT INTO studies VALUES ('1.5', 'P', 'B', 1, 20, 'receiving', NULL);
                 INSERT INTO studies VALUES ('1.6', 'P', 'A', 1, 5, 'complete', 6);
                 INSERT INTO jobs (study_uid, state, calling_ae, instance_count, created_at,
                    updated_at) VALUES ('1.5', 'delivered', 'A', 1, 10, 12);
                 INSERT INTO jobs (study_uid, state, calling_ae, instance_count, created_at,
                    updated_at) VALUES ('1.6', 'delivered', 'A', 1, 6, 7);
                 {}{}{}",
                instance("1.1", "A", "10.0.0.1", 5.0),
                instance("1.2", "B", "10.0.0.2", 20.0),
                instance("1.3", "A", "10.0.0.1", 5.0).replace("'1.5', '1.9'", "'1.6', '1.9'"),
            ))
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let parts: Vec<(String, String, String, String, Option<f64>)> = db
            .read(|c| {
                c.prepare(
                    "SELECT study_uid, calling_ae, source_host, state, completed_at
                       FROM study_peers ORDER BY study_uid, calling_ae",
                )?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect()
            })
            .unwrap();
        let part = |s: &str, ae: &str, h: &str, st: &str, at: Option<f64>| {
            (
                s.to_string(),
                ae.to_string(),
                h.to_string(),
                st.to_string(),
                at,
            )
        };
        assert_eq!(
            parts,
            vec![
                part("1.5", "A", "10.0.0.1", "complete", Some(5.0)),
                part("1.5", "B", "10.0.0.2", "receiving", None),
                part("1.6", "A", "10.0.0.1", "complete", Some(6.0)),
            ]
        );
        let hosts: Vec<String> = db
            .read(|c| {
                c.prepare("SELECT source_host FROM jobs ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap();
        assert_eq!(hosts, ["10.0.0.1", "10.0.0.1"]);
        let content: (String, f64) = db
            .read(|c| {
                c.query_row(
                    "SELECT content_key, content_at FROM instances WHERE sop_instance_uid = '1.2'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap();
        assert_eq!(
            content,
            (String::new(), 20.0),
            "no key yet; content as received"
        );
        // B's part completes on its own: one job, of B's one instance.
        let jobs = db
            .write_blocking(|c| crate::store::jobs::complete_stable_studies(c, 30.0, 31.0))
            .unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (
                jobs[0].1.calling_ae.as_str(),
                jobs[0].1.source_host.as_str()
            ),
            ("B", "10.0.0.2")
        );
        let state: String = db
            .read(|c| {
                c.query_row(
                    "SELECT state FROM studies WHERE study_uid = '1.5'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(state, "complete");
    }

    /// Migration 9 upgrades an index in place: existing rules and support-set versions
    /// inherit their sequence mode, and only the three mode names can be stored.
    #[test]
    fn migration_9_lets_rules_and_sets_inherit_the_sequence_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = open_conn(&path).unwrap();
            for sql in &MIGRATIONS[..8] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 8;
                 INSERT INTO support_sets (id, name, version, created_at, updated_at)
                    VALUES (1, 's', 1, 1, 1);
                 INSERT INTO support_set_versions (set_id, version, created_at, created_by, change)
                    VALUES (1, 1, 1, 't', 'created');
                 INSERT INTO rules (id, support_set, created_at, updated_at) VALUES (3, 's', 1, 1);",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let (rule, set) = db
            .read(|c| {
                let set = crate::store::support::get(c, "s", None).unwrap();
                Ok((crate::store::rules::get(c, 3).unwrap(), set))
            })
            .unwrap();
        assert_eq!((rule.sequence_mode, set.meta.sequence_mode), (None, None));
        let bad = db.write_blocking(|c| {
            c.execute(
                "UPDATE rules SET sequence_mode = 'sometimes' WHERE id = 3",
                [],
            )
        });
        assert!(bad.is_err(), "the CHECK refuses a name that is no mode");
        db.write_blocking(|c| {
            c.execute(
                "UPDATE rules SET sequence_mode = 'per-frame' WHERE id = 3",
                [],
            )
        })
        .unwrap();
        let mode = db
            .read(|c| Ok(crate::store::rules::get(c, 3).unwrap().sequence_mode))
            .unwrap();
        assert_eq!(mode, Some(crate::config::SequenceMode::PerFrame));
    }

    /// Migration 7 keeps every job, event and outbox row with its id, and from then on an id
    /// freed by deleting the newest row is never handed out again; foreign keys are enforced
    /// again afterwards.
    #[test]
    fn migration_7_keeps_ids_and_never_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = open_conn(&path).unwrap();
            for sql in &MIGRATIONS[..6] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 6;
                 INSERT INTO studies VALUES ('1.5', 'P', 'PACS', 1, 1, 'complete', 2);
                 INSERT INTO jobs (id, study_uid, state, calling_ae, instance_count, created_at,
                    updated_at, destination_ae, series_json)
                 VALUES (4, '1.5', 'written', 'PACS', 1, 2, 3, 'PACS', '[\"1.9\"]');
                 INSERT INTO job_events (job_id, state, at) VALUES (4, 'complete', 2);
                 INSERT INTO job_events (job_id, state, at) VALUES (4, 'written', 3);
                 INSERT INTO outbox (id, job_id, sop_instance_uid, sop_class_uid, path,
                    destination_ae, destination_host, destination_port, state, next_try_at,
                    created_at)
                 VALUES (9, 4, '1.7', '1.2', '/r/1.7.dcm', 'PACS', 'h', 104, 'pending', 3, 3);",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let kept = db
            .read(|c| {
                Ok((
                    c.query_row(
                        "SELECT id, destination_ae, series_json FROM jobs",
                        [],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                            ))
                        },
                    )?,
                    c.query_row("SELECT MAX(rowid), COUNT(*) FROM job_events", [], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })?,
                    c.query_row("SELECT id, path FROM outbox", [], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?,
                ))
            })
            .unwrap();
        assert_eq!(
            kept,
            (
                (4, "PACS".into(), "[\"1.9\"]".into()),
                (2, 2),
                (9, "/r/1.7.dcm".into())
            )
        );
        // Deleting the newest rows frees their ids for good.
        let next = db
            .write_blocking(|c| {
                c.execute_batch(
                    "DELETE FROM outbox; DELETE FROM job_events; DELETE FROM jobs;
                     INSERT INTO jobs (study_uid, state, calling_ae, instance_count, created_at,
                        updated_at) VALUES ('1.5', 'complete', 'PACS', 1, 5, 5);
                     INSERT INTO job_events (job_id, state, at)
                        VALUES (last_insert_rowid(), 'complete', 5);
                     INSERT INTO outbox (job_id, sop_instance_uid, sop_class_uid, path,
                        destination_ae, destination_host, destination_port, state, next_try_at,
                        created_at)
                     VALUES (NULL, '1.8', '1.2', '/o/1.8.dcm', 'PACS', 'h', 104, 'pending', 5, 5);",
                )?;
                Ok((
                    c.query_row("SELECT MAX(id) FROM jobs", [], |r| r.get::<_, i64>(0))?,
                    c.query_row("SELECT MAX(rowid) FROM job_events", [], |r| {
                        r.get::<_, i64>(0)
                    })?,
                    c.query_row("SELECT MAX(id) FROM outbox", [], |r| r.get::<_, i64>(0))?,
                ))
            })
            .unwrap();
        assert_eq!(next, (5, 3, 10));
        let orphan = db.write_blocking(|c| {
            c.execute(
                "INSERT INTO jobs (study_uid, state, calling_ae, instance_count, created_at,
                    updated_at) VALUES ('no-such-study', 'complete', 'PACS', 1, 5, 5)",
                [],
            )
        });
        assert!(orphan.is_err(), "foreign keys are enforced again");
    }
}
