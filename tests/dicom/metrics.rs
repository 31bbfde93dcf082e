//! The Prometheus endpoint reflects what the daemon did.

use crate::harness::*;
use std::io::{Read, Write};

#[test]
fn metrics_count_stores_latencies_and_jobs() {
    let d = Daemon::start(Opts::default());
    let ct = pydicom_files().join("CT_small.dcm");
    let out = d.store(&ct);
    assert!(out.status.success(), "{}", text(&out));
    let needles = [
        "# TYPE proxyseg_cstore_total counter",
        "proxyseg_cstore_total{result=\"success\"} 1",
        "proxyseg_stage_seconds_count{stage=\"ingest\"} 1",
        "proxyseg_active_associations 0",
        // CT_small matches no bundled support set: recorded as unmatched.
        "proxyseg_jobs{state=\"unmatched\"} 1",
        "proxyseg_jobs_total{state=\"unmatched\"} 1",
        "proxyseg_queue_depth{queue=\"outbox\"} 0",
    ];
    let m = d.metrics_once(30, |m| needles.iter().all(|n| m.contains(n)));
    for needle in needles {
        assert!(m.contains(needle), "{needle:?} missing from:\n{m}");
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.metrics_port)).unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

/// Review L1: `/metrics` is unauthenticated, so a failed job's reason label is one of a fixed
/// set of words, never its message (which names spool paths, and with them the Study, Series
/// and SOP Instance UIDs). Here the job fails because its spool file vanished.
#[test]
fn failure_reasons_carry_no_uids_or_paths() {
    let image = root().join("models/phantom-tiny/demo-studies/fundus/image.dcm");
    let d = Daemon::start(Opts {
        extra: format!(
            "[engine]\nmodels_dir = \"{}\"\n",
            root().join("models").display()
        ),
        stable_age_s: 2.0,
        ..Opts::default()
    });
    let out = d.store(&image);
    assert!(out.status.success(), "{}", text(&out));
    let (path, study, sop): (String, String, String) = d
        .db()
        .query_row(
            "SELECT path, study_uid, sop_instance_uid FROM instances",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    wait_for("the job to fail", 120, &d, || {
        d.db()
            .query_row("SELECT state FROM jobs", [], |r| r.get::<_, String>(0))
            .is_ok_and(|s| s == "failed")
    });
    let is_failed = |l: &&str| l.starts_with("proxyseg_jobs_total{") && l.contains("\"failed\"");
    let m = d.metrics_once(30, |m| m.lines().any(|l| is_failed(&l)));
    let failed: Vec<&str> = m.lines().filter(is_failed).collect();
    assert_eq!(failed.len(), 1, "{m}");
    for needle in [study.as_str(), sop.as_str(), d.data_dir().to_str().unwrap()] {
        assert!(!m.contains(needle), "{needle:?} in /metrics:\n{m}");
    }
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        if let Some(labels) = l.split_once('{').and_then(|(_, r)| r.split_once('}')) {
            for kv in labels.0.split(',') {
                let v = kv.split_once('=').map(|(_, v)| v.trim_matches('"'));
                assert!(
                    v.is_some_and(|v| v
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || "_-+.0123456789Inf".contains(c))),
                    "label {kv:?} in {l:?}"
                );
            }
        }
    }
}
