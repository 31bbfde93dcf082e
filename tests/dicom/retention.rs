//! PHI lifecycle (issue 16 item 5) against the real daemon and real peers: a study stored with
//! dcmtk `storescu`, segmented with the bundled phantom-tiny model and delivered to dcmtk
//! `storescp` is purged by the retention sweeper once its (short) time is up: files, index
//! rows, one audit row. A study whose SEG is still waiting for delivery is not purged (by the
//! sweeper, nor by an admin) until it is delivered. An admin purge through the CLI works, is
//! audited under the caller's token, and an unknown study is NOT_FOUND.

use crate::harness::admin::*;
use crate::harness::*;
use proxyseg::admin::pb;
use proxyseg::admin::pb::studies_client::StudiesClient;
use std::path::{Path, PathBuf};

/// A daemon with the admin API, the phantom-tiny bundle (its support sets seeded as routing
/// rules), the peer `PACS` at `pacs_port` (where a study sent by AE `PACS` is answered) and
/// `[retention]` set to `retention`.
fn start_daemon(pacs_port: u16, retention: &str) -> Admin {
    start_full(
        &format!(
            "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
             [delivery]\nbackoff_initial_s = 0.5\nbackoff_max_s = 1.0\nmax_attempts = 100\n\
             timeout_s = 5\npoll_interval_ms = 100\n[retention]\n{retention}"
        ),
        &|models| {
            std::os::unix::fs::symlink(
                root().join("models/phantom-tiny"),
                models.join("phantom-tiny"),
            )
            .unwrap();
        },
    )
}

fn fundus() -> PathBuf {
    root().join("models/phantom-tiny/demo-studies/fundus/image.dcm")
}

/// Sends `file` with dcmtk storescu as AE `calling`.
fn store_as(d: &Daemon, calling: &str, file: &Path) {
    let o = storescu(d.port).calling(calling).file(file).run();
    assert!(o.status.success(), "storescu:\n{}", text(&o));
}

fn one<T: rusqlite::types::FromSql>(d: &Daemon, sql: &str) -> T {
    d.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn strings(d: &Daemon, sql: &str) -> Vec<String> {
    let db = d.db();
    let mut st = db.prepare(sql).unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Rows naming `study` in every table a purge empties: instances, studies, jobs, job_events,
/// outbox.
fn rows_of(d: &Daemon, study: &str) -> [i64; 5] {
    let db = d.db();
    let n = |sql: &str| -> i64 { db.query_row(sql, [study], |r| r.get(0)).unwrap() };
    [
        n("SELECT COUNT(*) FROM instances WHERE study_uid = ?1"),
        n("SELECT COUNT(*) FROM studies WHERE study_uid = ?1"),
        n("SELECT COUNT(*) FROM jobs WHERE study_uid = ?1"),
        n("SELECT COUNT(*) FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE j.study_uid = ?1"),
        n("SELECT COUNT(*) FROM outbox o JOIN jobs j ON j.id = o.job_id WHERE j.study_uid = ?1"),
    ]
}

/// (token, detail) of the study.purge audit rows of `study`.
fn purge_audit(d: &Daemon, study: &str) -> Vec<(String, String)> {
    let db = d.db();
    let mut st = db
        .prepare(
            "SELECT token_name, detail FROM audit WHERE action = 'study.purge' AND target = ?1
             ORDER BY id",
        )
        .unwrap();
    st.query_map([format!("study:{study}")], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// How many retention passes the daemon has logged.
fn passes(d: &Daemon) -> usize {
    d.log().matches("retention pass finished").count()
}

#[test]
fn sweeper_purges_a_delivered_study_with_its_files_and_rows() {
    let pacs_port = free_port();
    let pacs_dir = tempfile::tempdir().unwrap();
    let _pacs = storescp(pacs_port, pacs_dir.path()).start();
    // 0.001 h = 3.6 s after delivery: long enough to look at the delivered study first.
    let a = start_daemon(
        pacs_port,
        "keep_delivered_hours = 0.001\nkeep_failed_hours = 0.001\nsweep_interval_s = 1\n",
    );
    let d = &a.d;
    store_as(d, "PACS", &fundus());
    wait_for("the SEG to be delivered", 120, d, || {
        strings(d, "SELECT state FROM jobs") == ["delivered"]
    });
    let study: String = one(d, "SELECT study_uid FROM jobs");
    let job: i64 = one(d, "SELECT id FROM jobs");
    let spool_files: Vec<PathBuf> = strings(d, "SELECT path FROM instances")
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let segs: Vec<PathBuf> = strings(d, "SELECT path FROM outbox")
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let results = d.data_dir().join("results").join(job.to_string());
    assert_eq!((spool_files.len(), segs.len()), (1, 1));
    assert!(
        spool_files.iter().chain(&segs).all(|p| p.is_file()),
        "the delivered study is still held until its time is up"
    );
    assert!(segs[0].starts_with(&results), "{segs:?}");
    assert_eq!(rows_of(d, &study)[..3], [1, 1, 1]);
    assert_eq!(
        files_under(pacs_dir.path()).len(),
        1,
        "storescp got the SEG"
    );

    wait_for("the sweeper to purge the study", 30, d, || {
        rows_of(d, &study) == [0; 5]
    });
    for p in spool_files.iter().chain(&segs) {
        assert!(!p.exists(), "{} survived the purge", p.display());
    }
    assert!(!results.exists(), "results folder left behind");
    assert!(
        files_under(&d.data_dir().join("spool"))
            .iter()
            .all(|p| !p.to_string_lossy().contains(&study)),
        "a spool file of the study is left"
    );
    let audit = purge_audit(d, &study);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "retention");
    assert!(
        audit[0].1.starts_with("2 file(s)")
            && audit[0].1.contains("1 instance(s)")
            && audit[0].1.contains("retention.keep_delivered_hours"),
        "{}",
        audit[0].1
    );
    // The sweeper counts a purge once it returned, which is after its rows went (and after the
    // trash was settled): under load the test can see the rows gone first.
    wait_for("the purge to be counted", 30, d, || {
        d.metrics()
            .contains("proxyseg_studies_purged_total{by=\"retention\",outcome=\"finished\"} 1")
    });
    let m = d.metrics();
    assert!(!m.contains(&study), "a UID in /metrics");
    assert_eq!(
        files_under(pacs_dir.path()).len(),
        1,
        "the PACS keeps what it got"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_with_a_pending_delivery_is_kept_until_delivered() {
    // The PACS is down: the SEG waits in the outbox, retried every second.
    let pacs_port = free_port();
    let a = start_daemon(
        pacs_port,
        "keep_delivered_hours = 0\nkeep_failed_hours = 0\nsweep_interval_s = 1\n",
    );
    let d = &a.d;
    store_as(d, "PACS", &fundus());
    wait_for("a failed delivery attempt", 120, d, || {
        one::<i64>(
            d,
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts >= 1",
        ) == 1
    });
    let study: String = one(d, "SELECT study_uid FROM jobs");
    let seg = PathBuf::from(one::<String>(d, "SELECT path FROM outbox"));
    let instance = PathBuf::from(one::<String>(d, "SELECT path FROM instances"));
    let seen = passes(d);
    wait_for("two more retention passes", 20, d, || passes(d) >= seen + 2);
    assert_eq!(strings(d, "SELECT state FROM jobs"), ["written"]);
    assert_eq!(rows_of(d, &study)[..3], [1, 1, 1], "purged while pending");
    assert!(instance.is_file() && seg.is_file());
    assert!(purge_audit(d, &study).is_empty());

    // Nor can an admin purge it while its SEG waits.
    let ch = channel(&a.addr).await;
    let mut admin = StudiesClient::with_interceptor(
        ch.clone(),
        proxyseg::admin::cli::Bearer::new(ADMIN_TOKEN).unwrap(),
    );
    let e = admin
        .purge(pb::PurgeStudyRequest {
            study_instance_uid: study.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("is written") && e.message().contains("still pending"),
        "{}",
        e.message()
    );
    // A read-only token may not purge at all.
    let mut viewer = StudiesClient::with_interceptor(
        ch,
        proxyseg::admin::cli::Bearer::new(VIEWER_TOKEN).unwrap(),
    );
    let e = viewer
        .purge(pb::PurgeStudyRequest {
            study_instance_uid: study.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(instance.is_file() && seg.is_file());

    // The PACS comes up: the SEG is delivered, and only then is the study purged.
    let pacs_dir = tempfile::tempdir().unwrap();
    let _pacs = storescp(pacs_port, pacs_dir.path()).start();
    wait_for("delivery, then the purge", 60, d, || {
        rows_of(d, &study) == [0; 5]
    });
    assert_eq!(files_under(pacs_dir.path()).len(), 1);
    assert!(!instance.exists() && !seg.exists());
    let audit = purge_audit(d, &study);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "retention");
}

#[test]
fn admin_purge_through_the_cli_is_audited_and_unknown_is_not_found() {
    // No rule claims a CT study in this daemon: its job ends unmatched. The sweeper is off.
    let mut a = start_full("[retention]\nenabled = false\n", &|_| {});
    let d = &a.d;
    let out = d.store(&pydicom_files().join("CT_small.dcm"));
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the job to end unmatched", 60, d, || {
        strings(d, "SELECT state FROM jobs") == ["unmatched"]
    });
    let study: String = one(d, "SELECT study_uid FROM studies");
    let file = PathBuf::from(one::<String>(d, "SELECT path FROM instances"));
    assert!(file.is_file());

    let tokens = a.aux.path().join("admin-tokens");
    let viewer = a.aux.path().join("viewer-token");
    std::fs::write(&viewer, VIEWER_TOKEN).unwrap();
    let cli = |token: &Path, args: &[&str]| admin_cli(&a.addr, token, args);
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let o = cli(&viewer, &["study", "purge", &study]);
    assert!(
        !o.status.success() && stderr(&o).contains("PERMISSION_DENIED"),
        "{}",
        text(&o)
    );
    assert!(file.is_file());
    let o = cli(
        &tokens,
        &["study", "purge", &study, "--reason", "patient request 113"],
    );
    assert!(o.status.success(), "{}\n{}", text(&o), d.log());
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(
            "purged study {study} (finished): 1 instance(s), 1 job(s)"
        )),
        "{said}"
    );
    assert!(!file.exists());
    assert_eq!(rows_of(d, &study), [0; 5]);
    let audit = purge_audit(d, &study);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "alice");
    assert!(
        audit[0]
            .1
            .ends_with("finished; requested by an admin: patient request 113"),
        "{}",
        audit[0].1
    );
    assert!(d
        .metrics()
        .contains("proxyseg_studies_purged_total{by=\"admin\",outcome=\"finished\"} 1"));

    // Purged is unknown; so is a study never received. A malformed UID is a usage error.
    for uid in [study.as_str(), "1.2.826.0.1.3680043.9.999"] {
        let o = cli(&tokens, &["study", "purge", uid]);
        assert!(
            !o.status.success() && stderr(&o).contains("NOT_FOUND"),
            "{uid}: {}",
            text(&o)
        );
    }
    let o = cli(&tokens, &["study", "purge", "not-a-uid"]);
    assert!(stderr(&o).contains("INVALID_ARGUMENT"), "{}", text(&o));
    assert_eq!(purge_audit(d, &study).len(), 1, "refusals change nothing");
    assert!(d.log().contains("retention.enabled = false"));

    // The trash of a purge a crash interrupted is emptied at the next start.
    let stale = a.d.data_dir().join(".purge/0123456789abcdef");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("0"), b"PHI").unwrap();
    a.d.restart();
    wait_for("the stale trash to be emptied", 20, &a.d, || {
        !stale.exists()
    });
}
