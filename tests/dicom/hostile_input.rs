//! Issue 16, "hostile input cannot take the daemon down": the real daemon against raw
//! upper-layer clients (tests/python/scu_edge.py), plain TCP sockets and dcmtk's echoscu.
//! Memory is measured from the daemon's /proc/<pid>/status (VmHWM, the peak resident set).
//!
//! Daemons fed memory bombs run under an address-space limit (RLIMIT_AS): an unbounded
//! allocation then fails inside the daemon (which aborts, and the test fails on that) instead
//! of exhausting the machine that runs the tests.

use crate::harness::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// RLIMIT_AS for daemons fed memory bombs, in MiB (an idle daemon maps about 430 MiB).
const ADDRESS_SPACE_MB: u64 = 3072;
/// The peak resident set a daemon may reach while refusing bombs, in MiB.
const PEAK_RSS_MB: u64 = 500;

/// Asserts the daemon is still running, answers C-ECHO and stores a valid instance.
fn still_serving(d: &mut Daemon, after: &str) {
    if let Some(st) = d.exited() {
        panic!("the daemon died ({st}) after {after}; log:\n{}", d.log());
    }
    assert!(d.echo(), "C-ECHO failed after {after}; log:\n{}", d.log());
    let before = d.instance_count();
    let v = scu_edge(d, "valid_store", &[]);
    assert_eq!(
        v["status"],
        0,
        "valid store after {after}: {v}\n{}",
        d.log()
    );
    assert!(d.instance_count() >= before, "valid store after {after}");
    assert_eq!(d.temp_files(), 0, "{after} left a temp file in the spool");
}

fn peak_rss_below(d: &Daemon, limit_mb: u64, after: &str) -> u64 {
    let peak = d.peak_rss_mib();
    assert!(
        peak < limit_mb,
        "peak RSS {peak} MiB after {after} (limit {limit_mb} MiB); log:\n{}",
        d.log()
    );
    peak
}

/// H2: eight associations at once, each sending a 12-byte data set whose only element (UT)
/// declares a length of about 4 GiB. Before the fix each one made the parser reserve and zero
/// 4 GiB (VmHWM 4.2 GB for a single one; eight took the daemon to 24 GiB and an OOM kill).
#[test]
fn declared_lengths_beyond_the_data_are_refused_before_any_allocation() {
    let mut d = Daemon::start(Opts {
        address_space_mb: Some(ADDRESS_SPACE_MB),
        ..Opts::default()
    });
    assert!(d.echo(), "serving; log:\n{}", d.log());
    eprintln!("peak RSS before: {} MiB", d.peak_rss_mib());
    let v = scu_edge(&d, "huge_element_parallel", &["8"]);
    if let Some(st) = d.exited() {
        panic!(
            "the daemon died ({st}) on 8 x 4 GiB declared lengths; log:\n{}",
            d.log()
        );
    }
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 8, "{v}");
    for r in results {
        assert_eq!(
            r["status"],
            0xC000,
            "a refusal (cannot understand): {v}\n{}",
            d.log()
        );
        let comment = r["comment"].as_str().unwrap_or_default();
        assert!(
            comment.contains("(0008,0005)") && comment.contains("declares"),
            "the Error Comment names the element and its declared length: {r}"
        );
    }
    assert!(
        v["seconds"].as_f64().unwrap_or(f64::MAX) < 10.0,
        "refusals must come at once: {v}"
    );
    let peak = peak_rss_below(&d, PEAK_RSS_MB, "8 x 4 GiB declared lengths");
    eprintln!("peak RSS after 8 x 4 GiB declared lengths: {peak} MiB");

    // The same in a command set (Implicit VR LE, parsed before any data set).
    let v = scu_edge(&d, "huge_command", &[]);
    assert!(
        matches!(v["after"].as_str(), Some("abort") | Some("closed")),
        "a command set that does not fit must abort the association: {v}"
    );
    assert!(v["seconds"].as_f64().unwrap_or(f64::MAX) < 5.0, "{v}");
    let peak = peak_rss_below(&d, PEAK_RSS_MB, "a 4 GiB command element");
    eprintln!("peak RSS after a 4 GiB command element: {peak} MiB");
    assert!(d.log().contains("command set"), "abort reason not logged");
    // Review L4: a PDU of 10 000 empty PDVs is refused, not expanded into 10 000 records.
    let v = scu_edge(&d, "many_pdvs", &[]);
    assert!(
        matches!(v["after"].as_str(), Some("abort") | Some("closed")),
        "a PDU of 10 000 PDVs must end the association: {v}"
    );
    assert!(
        v["seconds"].as_f64().unwrap_or(f64::MAX) < 3.0,
        "at once: {v}"
    );
    still_serving(&mut d, "huge declared lengths");
    assert_eq!(d.instance_count(), 1, "only the valid instance is indexed");
}

/// H2, deflate: a data set sent deflated is inflated through a cap (dicom.max_object_mb), one
/// element at a time; it is never held in memory as a whole.
#[test]
fn deflated_data_sets_inflate_under_the_object_cap() {
    let mut d = Daemon::start(Opts {
        address_space_mb: Some(ADDRESS_SPACE_MB),
        dicom_extra: "max_object_mb = 64\n".into(),
        ..Opts::default()
    });
    assert!(d.echo(), "serving; log:\n{}", d.log());
    eprintln!("peak RSS before: {} MiB", d.peak_rss_mib());
    // 100 MiB of zeros in private OB elements: about 100 KiB on the wire.
    let v = scu_edge(&d, "deflate_bomb", &[]);
    assert!(
        v["sent_bytes"].as_u64().unwrap_or(u64::MAX) < 1024 * 1024,
        "the bomb is small on the wire: {v}"
    );
    assert_eq!(
        v["status"],
        0xA700,
        "refused as too large: {v}\n{}",
        d.log()
    );
    let comment = v["comment"].as_str().unwrap_or_default();
    assert!(
        comment.contains("inflate") && comment.contains("max_object_mb"),
        "{v}"
    );
    // An element declaring about 4 GiB over 4 MiB of zeros: refused before inflating.
    let v = scu_edge(&d, "deflate_declared_huge", &[]);
    assert_eq!(
        v["status"],
        0xA700,
        "refused as too large: {v}\n{}",
        d.log()
    );
    assert!(
        v["comment"]
            .as_str()
            .unwrap_or_default()
            .contains("(0029,1001)"),
        "{v}"
    );
    let peak = peak_rss_below(&d, PEAK_RSS_MB, "deflate bombs");
    eprintln!("peak RSS after deflate bombs: {peak} MiB");
    assert_eq!(d.instance_count(), 0, "a refused bomb was indexed");

    // A genuine deflated instance is still stored.
    let v = scu_edge(&d, "deflated_store", &[]);
    assert_eq!(v["status"], 0, "deflated MR_small: {v}\n{}", d.log());
    assert_eq!(d.instance_count(), 1);
    still_serving(&mut d, "deflate bombs");
}

/// Whether the peer closed `s` (EOF or reset) before `deadline`.
fn closed_by_peer(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// H3: 40 TCP connections that never send a PDU. Before the fix each held one of the 32
/// association slots for read_timeout_s, and a known PACS got "too many associations". Now
/// they wait in a small pool of their own, for dicom.association_request_timeout_s (5 s).
#[test]
fn idle_connections_cannot_lock_out_a_known_peer() {
    let d = Daemon::start(Opts {
        max_associations: 32,
        read_timeout_s: 60,
        ..Opts::default()
    });
    // Serving (the listener is bound before the engine has loaded).
    assert!(d.echo(), "C-ECHO before the test; log:\n{}", d.log());
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", d.port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert!(
        d.echo(),
        "a known peer's C-ECHO must succeed while 40 idle connections are open; log:\n{}",
        d.log()
    );
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "C-ECHO took {took:?}");
    // Every idle connection is closed by the daemon: the oldest at once when the pending pool
    // overflows, the rest when the association-request deadline (5 s) passes.
    let deadline = opened + Duration::from_secs(5 + 3);
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, deadline),
            "idle connection {i} still open {:?} after it was opened; log:\n{}",
            opened.elapsed(),
            d.log()
        );
    }
    assert!(
        d.log().contains("no A-ASSOCIATE-RQ"),
        "closing idle connections is logged"
    );
    assert!(d.echo(), "C-ECHO after the idle connections were closed");
}

/// `[engine]` on the bundled models, so that MR PROSTATE studies match the phantom set.
fn with_models() -> String {
    format!(
        "[engine]\nmodels_dir = \"{}\"\n",
        root().join("models").display()
    )
}

/// (state, attempts, error) of the one job.
fn the_job(d: &Daemon) -> Option<(String, i64, String)> {
    d.db()
        .query_row(
            "SELECT state, attempts, COALESCE(error, '') FROM jobs ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
}

/// H1: a few hundred kB of RLE declaring 100 000 frames of 32768 x 32768 x 32 bits. Before
/// the fix it was stored, and the worker's decode allocated ~4e14 bytes: abort, restart, the
/// job re-queued, abort again, forever. Now it is refused at C-STORE and never decoded.
#[test]
fn pixel_bombs_are_refused_at_ingest() {
    let mut d = Daemon::start(Opts {
        address_space_mb: Some(ADDRESS_SPACE_MB),
        extra: with_models(),
        ..Opts::default()
    });
    let v = scu_edge(&d, "pixel_bomb", &[]);
    assert_eq!(v["status"], 0xA900, "refused: {v}\n{}", d.log());
    assert!(
        v["comment"]
            .as_str()
            .unwrap_or_default()
            .contains("pipeline.max_decoded_mb"),
        "{v}"
    );
    assert_eq!(d.instance_count(), 0, "the bomb was indexed");
    std::thread::sleep(Duration::from_secs(2));
    still_serving(&mut d, "a pixel bomb");
}

/// H1: an instance stored while the limit allowed it (here: under a generous
/// pipeline.max_decoded_mb) is checked again before decoding; its job fails with the reason
/// instead of taking the daemon down.
#[test]
fn a_stored_pixel_bomb_fails_its_job_without_being_decoded() {
    let mut d = Daemon::start(Opts {
        address_space_mb: Some(ADDRESS_SPACE_MB),
        extra: with_models(),
        stable_age_s: 3600.0,
        pipeline_extra: "max_decoded_mb = 1048576\n".into(),
        ..Opts::default()
    });
    // 64 frames of 16384 x 16384 x 32 bits: 128 GiB decoded, within 1 TiB.
    let v = scu_edge(&d, "pixel_bomb", &["16384", "32", "64"]);
    assert_eq!(
        v["status"],
        0,
        "stored under the generous limit: {v}\n{}",
        d.log()
    );
    assert!(d.terminate(), "clean stop:\n{}", d.log());
    let cfg = std::fs::read_to_string(&d.config).unwrap();
    let cfg = cfg
        .replace("max_decoded_mb = 1048576\n", "")
        .replace("stable_age_s = 3600", "stable_age_s = 1");
    std::fs::write(&d.config, cfg).unwrap();
    d.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while the_job(&d).is_none_or(|j| j.0 != "failed") {
        if let Some(st) = d.exited() {
            panic!(
                "the daemon died ({st}) on a stored pixel bomb; log:\n{}",
                d.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the job did not fail; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, _, error) = the_job(&d).unwrap();
    assert!(
        error.starts_with("pixels not decoded:") && error.contains("pipeline.max_decoded_mb"),
        "{error}"
    );
    let peak = peak_rss_below(&d, PEAK_RSS_MB, "a stored pixel bomb");
    eprintln!("peak RSS after a stored pixel bomb's job: {peak} MiB");
    still_serving(&mut d, "a stored pixel bomb");
}

/// H1: a job the daemon dies in (here: SIGKILL while it segments, as the kernel's OOM killer
/// or a crash would) counts an attempt each time, recorded before it starts; after
/// pipeline.max_attempts it is dead-lettered with its reason instead of taking every restart
/// down with it.
#[test]
fn a_job_the_daemon_keeps_dying_in_is_dead_lettered() {
    // pipeline.max_attempts left at its default, 3.
    let mut d = Daemon::start(Opts {
        extra: with_models(),
        ..Opts::default()
    });
    let v = scu_edge(&d, "long_study", &["400"]);
    assert_eq!(v["status"], 0, "{v}\n{}", d.log());
    for attempt in 1..=3 {
        wait_for(&format!("segmentation attempt {attempt}"), 90, &d, || {
            the_job(&d).is_some_and(|j| j.1 == attempt)
        });
        let (state, ..) = the_job(&d).unwrap();
        assert!(
            state == "matched" || state == "inferred",
            "attempt {attempt} is killed while it segments, not after ({state}); log:\n{}",
            d.log()
        );
        d.restart();
    }
    wait_for("the job to be dead-lettered", 60, &d, || {
        the_job(&d).is_some_and(|j| j.0 == "failed")
    });
    let (_, attempts, error) = the_job(&d).unwrap();
    assert_eq!(attempts, 3, "{error}");
    assert!(error.starts_with("dead-lettered:"), "{error}");
    let counted = |m: &str| {
        m.contains("proxyseg_jobs_total{reason=\"dead-lettered\",state=\"failed\"} 1")
            || m.contains("proxyseg_jobs_total{state=\"failed\",reason=\"dead-lettered\"} 1")
    };
    let m = d.metrics_once(30, counted);
    assert!(counted(&m), "dead-lettering is counted:\n{m}");
    still_serving(&mut d, "a dead-lettered job");
}

/// The target "nothing acknowledged is lost through any of this": for each attack
/// (8 x 4 GiB declared lengths, a deflate bomb, a pixel bomb, 40 idle sockets), a peer stores
/// a study (8 new instances) while the attack runs, the daemon is killed with SIGKILL right
/// after the last acknowledgement with the attack still going, and restarted. Every
/// acknowledged instance is then indexed with its file in place, and every job ends: written
/// (its SEG waits for a PACS that is not there), failed or dead-lettered.
#[test]
fn kill_9_during_each_attack_loses_no_acknowledged_instance() {
    require_tool("dcmodify");
    let mut d = Daemon::start(Opts {
        address_space_mb: Some(ADDRESS_SPACE_MB),
        extra: with_models(),
        stable_age_s: 1.0,
        ..Opts::default()
    });
    let demo = root().join("models/phantom-tiny/demo-studies/mr");
    let mut slices: Vec<std::path::PathBuf> = std::fs::read_dir(&demo)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    slices.sort();
    assert_eq!(slices.len(), 8, "{}", demo.display());
    let attacks: [(&str, &[&str]); 4] = [
        ("huge_element_parallel", &["8"]),
        ("deflate_bomb", &[]),
        ("pixel_bomb", &["32768", "32", "100000"]),
        ("idle_sockets", &[]),
    ];
    for (round, (attack, args)) in attacks.iter().enumerate() {
        // This round's study: the demo slices with a study, series and instance UIDs of
        // their own.
        let dir = tempfile::tempdir().unwrap();
        let study = format!("1.2.826.0.1.3680043.9.7.16.{}", round + 1);
        let mut files = Vec::new();
        for s in &slices {
            let f = dir.path().join(s.file_name().unwrap());
            std::fs::copy(s, &f).unwrap();
            files.push(f.display().to_string());
        }
        let mut m: Vec<String> = [
            "-nb",
            "-gin",
            "-m",
            &format!("(0020,000d)={study}"),
            "-m",
            &format!("(0020,000e)={study}.1"),
        ]
        .map(String::from)
        .to_vec();
        m.extend(files.iter().cloned());
        let out = run(
            "dcmodify",
            &m.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(out.status.success(), "{}", text(&out));

        // The attack runs beside the peer's store.
        let mut sockets = Vec::new();
        let mut attacker = None;
        if *attack == "idle_sockets" {
            sockets = (0..40)
                .map(|_| TcpStream::connect(("127.0.0.1", d.port)).expect("connect"))
                .collect::<Vec<_>>();
        } else {
            attacker = Some(
                std::process::Command::new(python())
                    .arg(root().join("tests/python/scu_edge.py"))
                    .arg(attack)
                    .arg(d.port.to_string())
                    .args(args.iter())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        let out = storescu(d.port).files(&files).run();
        assert!(
            out.status.success(),
            "{attack}: the peer's store failed:\n{}\n{}",
            text(&out),
            d.log()
        );
        // Every instance is acknowledged: kill -9 now, the attack still going.
        d.kill9();
        if let Some(mut p) = attacker {
            let _ = p.kill();
            let _ = p.wait();
        }
        drop(sockets);
        d.spawn();
        let db = d.db();
        let paths: Vec<String> = db
            .prepare("SELECT path FROM instances WHERE study_uid = ?1")
            .unwrap()
            .query_map([&study], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            paths.len(),
            8,
            "{attack}: acknowledged instances missing after kill -9:\n{}",
            d.log()
        );
        for p in &paths {
            assert!(
                std::path::Path::new(p).is_file(),
                "{attack}: {p} is indexed but gone"
            );
        }
        assert!(d.echo(), "{attack}: not serving after the restart");
    }
    // Every job ends: nothing crash-loops, nothing is left half-done.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let states: Vec<(String, String)> = d
            .db()
            .prepare("SELECT study_uid, state || ' ' || COALESCE(error, '') FROM jobs ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let state = |st: &str| st.split(' ').next().unwrap_or_default().to_string();
        let done = states.len() >= attacks.len()
            && states.iter().all(|(_, st)| {
                matches!(
                    state(st).as_str(),
                    "written" | "delivered" | "failed" | "unmatched"
                )
            });
        if done {
            // Each round's study was segmented, or, when the kills of later rounds hit its
            // job while it was being segmented max_attempts (3) times, dead-lettered.
            for round in 1..=attacks.len() {
                let study = format!("1.2.826.0.1.3680043.9.7.16.{round}");
                assert!(
                    states.iter().any(|(s, st)| *s == study
                        && (state(st) == "written" || st.starts_with("failed dead-lettered"))),
                    "round {round}'s study neither segmented nor dead-lettered: {states:?}\n{}",
                    d.log()
                );
            }
            eprintln!("jobs after the attacks: {states:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not end: {states:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    still_serving(&mut d, "kill -9 during each attack");
}
