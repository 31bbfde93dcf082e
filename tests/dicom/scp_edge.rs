//! Hostile and broken SCUs (pynetdicom and a raw upper-layer client) against the real daemon.
//! Every case checks the DICOM answer, that nothing half-written stays in the spool or the
//! index, and that a C-ECHO still succeeds afterwards.

use crate::harness::*;
use serde_json::Value;

fn case(d: &Daemon, name: &str) -> Value {
    let v = scu_edge(d, name, &[]);
    assert!(
        d.echo(),
        "C-ECHO failed after case {name}; daemon log:\n{}",
        d.log()
    );
    assert_eq!(
        d.temp_files(),
        0,
        "case {name} left a temp file in the spool"
    );
    v
}

#[test]
fn hostile_and_broken_peers_get_proper_answers_and_the_daemon_keeps_serving() {
    let d = Daemon::start(Opts {
        read_timeout_s: 2,
        ..Opts::default()
    });

    let v = case(&d, "unknown_calling_ae");
    assert_eq!(
        (
            v["rejected"].as_bool(),
            v["result"].as_i64(),
            v["source"].as_i64(),
            v["reason"].as_i64()
        ),
        (Some(true), Some(1), Some(1), Some(3)),
        "{v}\n{}",
        d.log()
    );
    let v = case(&d, "wrong_called_ae");
    assert_eq!(
        (v["rejected"].as_bool(), v["reason"].as_i64()),
        (Some(true), Some(7)),
        "{v}\n{}",
        d.log()
    );

    let v = case(&d, "unsupported_sop_class");
    assert_eq!(v["established"], true, "{v}");
    assert_eq!(
        v["rejected_contexts"]["1.2.840.10008.5.1.4.1.1.481.5"], 3,
        "RT Plan must be refused as abstract syntax not supported: {v}"
    );
    let v = case(&d, "unsupported_transfer_syntax");
    assert_eq!(
        v["rejected_contexts"]["1.2.840.10008.5.1.4.1.1.2"], 4,
        "MPEG2 must be refused as transfer syntax not supported: {v}"
    );

    let v = case(&d, "store_on_rejected_context");
    assert!(
        matches!(v["after"].as_str(), Some("abort") | Some("closed")),
        "P-DATA on an unknown context must abort: {v}"
    );

    let v = case(&d, "sop_class_mismatch");
    status_is(&d, &v, 0xA900);
    let v = case(&d, "short_pixel_data");
    status_is(&d, &v, 0xA900);
    assert!(
        v["comment"].as_str().unwrap_or("").contains("Pixel Data"),
        "{v}"
    );
    let v = case(&d, "long_pixel_data");
    status_is(&d, &v, 0xA900);
    let v = case(&d, "short_pixel_data_after_large_header");
    status_is(&d, &v, 0xA900);
    assert!(
        v["comment"].as_str().unwrap_or("").contains("Pixel Data"),
        "{v}"
    );
    let v = case(&d, "truncated_dataset");
    status_is(&d, &v, 0xC000);
    let v = case(&d, "garbage_dataset");
    status_is(&d, &v, 0xC000);
    let v = case(&d, "absurd_dimensions");
    status_is(&d, &v, 0xA900);
    case(&d, "abort_mid_transfer");
    case(&d, "tcp_drop_mid_transfer");
    let v = case(&d, "idle_association");
    assert!(
        matches!(v["after"].as_str(), Some("abort") | Some("closed")),
        "idle association must be closed: {v}"
    );
    assert!(
        v["seconds"].as_f64().unwrap() < 6.0,
        "idle association lived too long: {v}"
    );

    assert_eq!(
        d.instance_count(),
        0,
        "a refused or broken data set was indexed"
    );
    let spool_files = walk(&d.data_dir().join("spool"));
    assert!(
        spool_files.is_empty(),
        "refused data left files: {spool_files:?}"
    );

    let v = case(&d, "valid_store");
    status_is(&d, &v, 0);
    assert_eq!(d.instance_count(), 1);
    let v = case(&d, "large_header_store");
    status_is(&d, &v, 0);
    assert_eq!(d.instance_count(), 2);
    let log = d.log();
    for reason in [
        "Pixel Data holds",
        "declares",
        "absurd image size",
        "SOPClassUID",
    ] {
        assert!(
            log.contains(reason),
            "rejection reason {reason:?} not logged"
        );
    }
}

fn status_is(d: &Daemon, v: &Value, want: i64) {
    assert_eq!(
        v["status"].as_i64(),
        Some(want),
        "{v}\ndaemon log:\n{}",
        d.log()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
