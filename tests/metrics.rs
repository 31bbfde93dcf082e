//! The Prometheus endpoint reflects what the daemon did.

mod common;
use common::*;
use std::io::{Read, Write};

#[test]
fn metrics_count_stores_latencies_and_jobs() {
    let d = Daemon::start(Opts::default());
    let ct = pydicom_files().join("CT_small.dcm");
    let out = run(
        "storescu",
        &[
            "-R",
            "-aet",
            "STORESCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &d.port.to_string(),
            ct.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(std::time::Duration::from_millis(1800));
    let m = d.metrics();
    for needle in [
        "# TYPE proxyseg_cstore_total counter",
        "proxyseg_cstore_total{result=\"success\"} 1",
        "proxyseg_stage_seconds_count{stage=\"ingest\"} 1",
        "proxyseg_active_associations 0",
        // CT_small matches no bundled support set: recorded as unmatched.
        "proxyseg_jobs{state=\"unmatched\"} 1",
        "proxyseg_jobs_total{state=\"unmatched\"} 1",
        "proxyseg_queue_depth{queue=\"outbox\"} 0",
    ] {
        assert!(m.contains(needle), "{needle:?} missing from:\n{m}");
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.metrics_port)).unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}
