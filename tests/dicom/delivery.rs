//! Delivery back to the PACS through the outbox: dcmtk `storescp` and a scriptable pynetdicom
//! SCP as the PACS; PACS down then up, AE rejected, refusal statuses, kill -9 mid-delivery.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn opts_with_pacs(pacs_port: u16, extra: &str) -> Opts {
    Opts {
        extra: format!(
            "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n[delivery]\nbackoff_initial_s = 0.3\nbackoff_max_s = 1.0\ntimeout_s = 5\npoll_interval_ms = 100\n{extra}"
        ),
        ..Opts::default()
    }
}

fn send(d: &Daemon, file: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["send", "--config"])
        .arg(&d.config)
        .args(["--to", "PACS"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "proxyseg send:\n{}", text(&o));
}

/// Files the PACS stored (storescp names them MODALITY.UID, pacs_scp UID.n.dcm; pacs_scp's
/// `.part` files are still being written).
fn received(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n != "delaying" && !n.ends_with(".part"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn outbox_row(d: &Daemon) -> (String, i64, Option<String>) {
    d.db()
        .query_row(
            "SELECT state, attempts, last_error FROM outbox ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

fn ct_small() -> PathBuf {
    pydicom_files().join("CT_small.dcm")
}

#[test]
fn delivered_to_storescp() {
    let pacs_port = free_port();
    let out = tempfile::tempdir().unwrap();
    let pacs = storescp(pacs_port, out.path()).start();
    let d = Daemon::start(opts_with_pacs(pacs_port, ""));
    send(&d, &ct_small());
    wait_for("delivery", 20, || outbox_row(&d).0 == "delivered");
    assert_eq!(received(out.path()).len(), 1);
    drop(pacs);
}

#[test]
fn pacs_down_then_up_is_delivered_exactly_once() {
    let pacs_port = free_port();
    let out = tempfile::tempdir().unwrap();
    let d = Daemon::start(opts_with_pacs(pacs_port, ""));
    send(&d, &ct_small());
    wait_for("two failed tries", 20, || outbox_row(&d).1 >= 2);
    assert_eq!(outbox_row(&d).0, "pending");
    let pacs = storescp(pacs_port, out.path()).start();
    wait_for("delivery", 20, || outbox_row(&d).0 == "delivered");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(received(out.path()).len(), 1, "delivered more than once");
    assert!(d.log().contains("will retry"));
    drop(pacs);
}

#[test]
fn pacs_rejecting_our_ae_is_dead_lettered_after_bounded_tries() {
    let pacs_port = free_port();
    let out = tempfile::tempdir().unwrap();
    let pacs = storescp(pacs_port, out.path()).opts(&["--refuse"]).start();
    let d = Daemon::start(opts_with_pacs(pacs_port, "max_permanent_attempts = 3\n"));
    send(&d, &ct_small());
    wait_for("dead letter", 30, || outbox_row(&d).0 == "dead");
    let (_, attempts, err) = outbox_row(&d);
    assert_eq!(attempts, 3);
    assert!(
        err.unwrap_or_default().contains("association rejected"),
        "reason not recorded"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(outbox_row(&d).1, 3, "kept trying after the dead letter");
    drop(pacs);
}

#[test]
fn refusal_and_warning_statuses() {
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let pacs = pacs_scp(port, out.path(), &["--status", "A900"]);
    let d = Daemon::start(opts_with_pacs(port, "max_permanent_attempts = 2\n"));
    send(&d, &ct_small());
    wait_for("dead letter", 30, || outbox_row(&d).0 == "dead");
    let (_, attempts, err) = outbox_row(&d);
    assert_eq!(attempts, 2);
    assert!(err.unwrap_or_default().contains("0xa900"));
    drop(pacs);

    let port = free_port();
    let out2 = tempfile::tempdir().unwrap();
    let pacs = pacs_scp(port, out2.path(), &["--status", "B000"]);
    let d = Daemon::start(opts_with_pacs(port, ""));
    send(&d, &ct_small());
    wait_for("delivery with warning", 20, || {
        outbox_row(&d).0 == "delivered"
    });
    assert!(d.log().contains("warning status"));
    drop(pacs);
}

#[test]
fn kill_9_during_delivery_is_delivered_after_restart_with_the_same_uid() {
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let pacs = pacs_scp(port, out.path(), &["--delay-first", "3"]);
    let mut d = Daemon::start(opts_with_pacs(port, ""));
    send(&d, &ct_small());
    wait_for("the PACS to be mid-C-STORE", 20, || {
        out.path().join("delaying").exists()
    });
    d.kill9();
    assert_eq!(
        outbox_row(&d).0,
        "pending",
        "not acknowledged yet, so still pending"
    );
    d.restart();
    wait_for("delivery after restart", 30, || {
        outbox_row(&d).0 == "delivered"
    });
    let files = received(out.path());
    let sop = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322";
    assert!(
        !files.is_empty()
            && files
                .iter()
                .all(|f| f.file_name().unwrap().to_string_lossy().starts_with(sop)),
        "{files:?}"
    );
    drop(pacs);
}

#[test]
fn peers_marked_tls_are_reached_over_dicom_tls() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = |f: &str| pki.path().join(f).display().to_string();
    let pacs_port = free_port();
    let out = tempfile::tempdir().unwrap();
    // storescp as a TLS-only PACS that requires and verifies our client certificate.
    let _pacs = storescp(pacs_port, out.path())
        .tls(&p("server.key"), &p("server.crt"), &p("ca.crt"))
        .opts(&["-rc"])
        .start();
    let extra = format!(
        "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\ntls = true\n[delivery]\nbackoff_initial_s = 0.3\nbackoff_max_s = 1.0\ntimeout_s = 5\npoll_interval_ms = 100\ntls_ca = \"{}\"\ntls_certificate = \"{}\"\ntls_private_key = \"{}\"\n",
        p("ca.crt"),
        p("client.crt"),
        p("client.key")
    );
    let d = Daemon::start(Opts {
        extra,
        ..Opts::default()
    });
    send(&d, &ct_small());
    wait_for("delivery over TLS", 20, || outbox_row(&d).0 == "delivered");
    assert_eq!(received(out.path()).len(), 1);
}
