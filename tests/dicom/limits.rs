//! Association limits, the free-disk reserve, peer host checks, and graceful shutdown.

use crate::harness::*;
use std::io::BufRead;
use std::process::{Command, Stdio};

fn echo_output(d: &Daemon) -> std::process::Output {
    echoscu(d.port).run()
}

/// A raw association (tests/python/scu_edge.py `hold`) kept open for 6 s, once it is
/// established.
fn hold_association(d: &Daemon) -> std::process::Child {
    let mut hold = Command::new(python())
        .arg(root().join("tests/python/scu_edge.py"))
        .args(["hold", &d.port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(hold.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("holding"), "holder did not associate: {line}");
    hold
}

#[test]
fn association_limit_rejects_transiently_and_recovers() {
    let d = Daemon::start(Opts {
        max_associations: 1,
        ..Opts::default()
    });
    let mut hold = hold_association(&d);
    let out = echo_output(&d);
    assert!(!out.status.success(), "second association must be refused");
    let t = text(&out);
    assert!(
        t.contains("Rejected Transient") && t.contains("Local Limit Exceeded"),
        "{t}"
    );
    let _ = hold.kill();
    let _ = hold.wait();
    // The slot is free once the daemon has read the holder's closed socket: on a busy machine
    // that can take longer than a fixed pause.
    wait_for(
        "associations to be accepted again after the holder left",
        10,
        &d,
        || d.echo(),
    );
}

#[test]
fn low_free_disk_refuses_new_associations() {
    let d = Daemon::start(Opts {
        min_free_disk_mb: 1 << 40,
        ..Opts::default()
    });
    let out = echo_output(&d);
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains("Rejected Transient")
            && t.contains("Temporary Congestion"),
        "{t}"
    );
    assert!(
        d.log().contains("free disk below the reserve"),
        "refusal not logged"
    );
}

/// Review M1: free disk is checked per instance, not only when the association opens. On a
/// 64 MiB tmpfs with a 40 MiB reserve the association opens, then one association sends
/// 12 x 4 MiB (all of it would fit the tmpfs): the stores that would eat into the reserve are
/// refused 0xA700 before anything is written, and the daemon keeps running.
#[test]
fn free_disk_is_checked_per_instance() {
    let mut d = Daemon::start(Opts {
        data_tmpfs_mb: Some(64),
        min_free_disk_mb: 40,
        ..Opts::default()
    });
    let r = scu_edge(&d, "fill_disk", &["12", "4"]);
    let stores = r["stores"]
        .as_array()
        .unwrap_or_else(|| panic!("no stores: {r}"));
    let statuses: Vec<u64> = stores
        .iter()
        .map(|s| s["status"].as_u64().unwrap())
        .collect();
    let ok = statuses.iter().take_while(|&&s| s == 0).count();
    assert!(
        (1..=7).contains(&ok) && statuses[ok..].iter().all(|&s| s == 0xA700),
        "statuses {statuses:x?}: the first stores succeed, then every one is 0xA700 once free \
         space is below the reserve ({r})"
    );
    assert!(
        stores[ok]["comment"]
            .as_str()
            .is_some_and(|c| c.contains("out of disk space")),
        "{r}"
    );
    assert!(
        d.log()
            .contains("C-STORE refused: free disk below the reserve"),
        "refusal not logged:\n{}",
        d.log()
    );
    assert!(d.exited().is_none(), "daemon died:\n{}", d.log());
    // A new association is refused at the door, as before.
    let t = text(&echo_output(&d));
    assert!(t.contains("Temporary Congestion"), "{t}");
}

#[test]
fn known_peer_must_come_from_its_host() {
    let d = Daemon::start(Opts {
        peer_host: "127.0.0.2".into(),
        ..Opts::default()
    });
    let out = echo_output(&d);
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains("Rejected Permanent")
            && t.contains("Calling AE Title Not Recognized"),
        "{t}"
    );
    let open = Daemon::start(Opts {
        require_known_peers: false,
        ..Opts::default()
    });
    let out = echoscu(open.port).calling("ANYBODY").run();
    assert!(
        out.status.success(),
        "require_known_peers = false lets anyone in:\n{}",
        text(&out)
    );
}

/// Review L2: a peer configured by host name is resolved before the listener is up and off
/// the association path; a connection from that name's address is let in.
#[test]
fn a_peer_named_by_host_name_is_let_in() {
    let d = Daemon::start(Opts {
        peer_host: "localhost".into(),
        ..Opts::default()
    });
    let out = echo_output(&d);
    assert!(
        out.status.success(),
        "a peer configured as host \"localhost\" must be let in from 127.0.0.1:\n{}",
        text(&out)
    );
}

#[test]
fn sigterm_finishes_the_store_in_flight_then_exits() {
    let mut d = Daemon::start(Opts::default());
    let mut slow = Command::new(python())
        .arg(root().join("tests/python/scu_edge.py"))
        .args(["slow_store", &d.port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // SIGTERM once the association is up and the data set is on its way.
    let mut reader = std::io::BufReader::new(slow.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.contains("associated"),
        "slow sender did not associate: {line:?}\n{}",
        d.log()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = d.pid();
    assert!(pid > 0);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let st = slow.wait().unwrap();
    assert!(st.success(), "slow sender failed: {rest}");
    let v: serde_json::Value =
        serde_json::from_str(rest.trim()).unwrap_or_else(|_| panic!("{rest}"));
    assert_eq!(
        v["status"],
        0,
        "the in-flight store must complete with success: {v}\n{}",
        d.log()
    );
    assert!(
        d.terminate(),
        "daemon must exit 0 after SIGTERM:\n{}",
        d.log()
    );
    assert_eq!(d.instance_count(), 1);
    assert!(d.log().contains("shutdown requested"));
}

/// Review L10: a known peer that keeps its association busy (a C-ECHO every 0.5 s, never
/// silent for read_timeout_s) is aborted once `dicom.max_association_s` is over, and the
/// daemon keeps serving.
#[test]
fn a_busy_association_ends_at_its_lifetime() {
    let d = Daemon::start(Opts {
        dicom_extra: "max_association_s = 2\n".into(),
        ..Opts::default()
    });
    let v = scu_edge(&d, "keepalive", &["10"]);
    assert_eq!(v["established"], false, "{v}");
    let s = v["seconds"].as_f64().unwrap();
    assert!((1.5..6.0).contains(&s), "aborted after {s} s: {v}");
    assert!(
        d.log().contains("max_association_s"),
        "the abort is not logged with its reason"
    );
    assert!(d.echo(), "the daemon stopped serving");
}

/// Issue 16 item 1: the associations' receive buffers share `dicom.max_buffered_mb`. With
/// 1 MiB PDUs an association reserves 2 MiB (one PDU plus the 64 KiB head, in whole MiB); with
/// a 2 MiB budget a second association waits, reading nothing, while the first holds it, and
/// goes on (its store succeeds) once the first leaves: back-pressure, not a refusal.
#[test]
fn associations_wait_for_receive_buffer_memory() {
    let d = Daemon::start(Opts {
        max_pdu: 1 << 20,
        dicom_extra: "max_buffered_mb = 2\n".into(),
        ..Opts::default()
    });
    let mut hold = hold_association(&d);
    // The holder keeps its association (and buffers) for 6 s, less than read_timeout_s (10).
    let out = d.store(&pydicom_files().join("CT_small.dcm"));
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let _ = hold.wait();
    assert_eq!(d.instance_count(), 1);
    assert!(
        d.log()
            .contains("association waits for receive-buffer memory (dicom.max_buffered_mb)"),
        "the second association did not wait:\n{}",
        d.log()
    );
    assert!(
        d.metrics().contains("proxyseg_buffer_waits_total 1"),
        "{}",
        d.metrics()
    );
}
