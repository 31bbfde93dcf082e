//! Crash safety of ingest: kill -9 the daemon while 8 associations send 500 instances, restart
//! it, and check that every instance that got a success status survived intact and indexed.
//!
//! The sender (tests/python/crash_sender.py, pynetdicom) logs "<SOP Instance UID> <sha256 of
//! the data set bytes sent>" only after status 0x0000, fsyncing the log, so the log is a lower
//! bound of what the daemon promised. Needs .venv/bin/python with pydicom, pynetdicom, numpy
//! (scripts/test installs them); the test fails, never skips, without them.

use crate::harness::{free_port, python, root, Guard};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOTAL: usize = 500;
const ASSOCS: usize = 8;
const KILL_AFTER_ACKS: usize = 200;
const SENDER_AE: &str = "CRASHSND";

/// .venv/bin/python, checked for the modules the sender needs.
fn venv_python() -> PathBuf {
    let py = python();
    let out = Command::new(&py)
        .args(["-c", "import pydicom, pynetdicom, numpy"])
        .output()
        .expect("cannot run the venv python");
    assert!(
        out.status.success(),
        "crash_safety needs pydicom, pynetdicom and numpy in {}: {}",
        py.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    py
}

fn start_daemon(dir: &Path, config: &Path, port: u16, run: &str) -> Guard {
    let log = fs::File::create(dir.join(format!("daemon-{run}.log"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("cannot start proxyseg");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Bound is not yet served: the port listens before the store is open, and a peer that
        // connects then waits in the backlog.
        let log_text =
            fs::read_to_string(dir.join(format!("daemon-{run}.log"))).unwrap_or_default();
        if log_text.contains("accepting associations")
            && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            return Guard(child);
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "proxyseg ({run}) exited with {st} before listening; log:\n{}",
                fs::read_to_string(dir.join(format!("daemon-{run}.log"))).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "proxyseg ({run}) did not serve associations within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_daemon(mut p: Guard) {
    let child = &mut p.0;
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
}

fn wait_with_deadline(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Byte offset of the data set in a Part 10 file (after preamble, "DICM" and group 0002).
fn dataset_offset(bytes: &[u8]) -> usize {
    assert!(
        bytes.len() >= 132 && &bytes[128..132] == b"DICM",
        "not a Part 10 file"
    );
    let mut pos = 132;
    while pos + 8 <= bytes.len() {
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let vr = &bytes[pos + 4..pos + 6];
        let long = matches!(
            vr,
            b"OB"
                | b"OW"
                | b"OF"
                | b"OD"
                | b"OL"
                | b"OV"
                | b"SQ"
                | b"UT"
                | b"UN"
                | b"UC"
                | b"UR"
                | b"SV"
                | b"UV"
        );
        pos += if long {
            12 + u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize
        } else {
            8 + u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize
        };
    }
    pos
}

/// Digests of the data set stored in a spool file: (sha256 hex, as the sender computed it;
/// `xxh3-128:<hex>`, as the index records it).
fn dataset_digests(path: &Path) -> (String, String) {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let ds = &bytes[dataset_offset(&bytes)..];
    (
        hex::encode(Sha256::digest(ds)),
        format!("xxh3-128:{:032x}", xxhash_rust::xxh3::xxh3_128(ds)),
    )
}

fn count_lines(path: &Path) -> usize {
    fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn spool_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name()
                .is_some_and(|n| n == ".tmp" || n == ".orphans")
            {
                continue;
            }
            spool_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The test's temp folder; kept (and its path printed) when the test fails, for the logs.
struct Workdir(Option<tempfile::TempDir>);

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            if std::thread::panicking() {
                eprintln!(
                    "kept {} (daemon logs, ack logs, data_dir)",
                    t.keep().display()
                );
            }
        }
    }
}

#[test]
fn kill_9_mid_ingest_loses_no_acknowledged_instance() {
    let started = Instant::now();
    let py = venv_python();
    let sender = root().join("tests/python/crash_sender.py");
    let tmp = Workdir(Some(
        tempfile::Builder::new()
            .prefix("proxyseg-crash-")
            .tempdir()
            .unwrap(),
    ));
    let dir = tmp.0.as_ref().unwrap().path().to_path_buf();
    let data_dir = dir.join("data");
    let inputs = dir.join("in");
    let acklog = dir.join("acked.log");

    let gen = Command::new(&py)
        .arg(&sender)
        .args(["generate", "--count", &TOTAL.to_string(), "--dir"])
        .arg(&inputs)
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "crash_sender.py generate failed: {}",
        String::from_utf8_lossy(&gen.stderr)
    );

    let port = free_port();
    let config = dir.join("proxyseg.toml");
    fs::write(
        &config,
        format!(
            r#"[dicom]
ae_title = "PROXYSEG"
listen = "127.0.0.1:{port}"
max_associations = 16
require_known_peers = true
min_free_disk_mb = 16
[[dicom.peers]]
ae_title = "{SENDER_AE}"
host = "127.0.0.1"
port = 11199
[storage]
data_dir = "{}"
[pipeline]
stable_age_s = 3600.0
[log]
filter = "info"
"#,
            data_dir.display()
        ),
    )
    .unwrap();

    // Run 1: send, and kill -9 the daemon once KILL_AFTER_ACKS acknowledgements are logged.
    let mut daemon = start_daemon(&dir, &config, port, "1");
    let mut send = Guard(
        Command::new(&py)
            .arg(&sender)
            .args(["send", "--port", &port.to_string(), "--aet", SENDER_AE])
            .args(["--assocs", &ASSOCS.to_string(), "--dir"])
            .arg(&inputs)
            .arg("--log")
            .arg(&acklog)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let acked_at_kill = loop {
        let n = count_lines(&acklog);
        if n >= KILL_AFTER_ACKS {
            daemon.0.kill().unwrap(); // SIGKILL
            break n;
        }
        if let Some(st) = send.0.try_wait().unwrap() {
            let _ = daemon.0.kill();
            let mut err = String::new();
            send.0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!(
                "the sender ended ({st}) after only {n} acknowledgements, before the kill:\n{err}"
            );
        }
        if Instant::now() > deadline {
            let _ = daemon.0.kill();
            let _ = send.0.kill();
            panic!("only {n} acknowledgements after 30 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    daemon.0.wait().unwrap();
    wait_with_deadline(&mut send.0, 30, "the sender after the kill");
    let mut out = String::new();
    send.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    eprintln!(
        "killed after {acked_at_kill} acknowledgements; sender: {}",
        out.trim()
    );
    assert!(
        acked_at_kill < TOTAL,
        "the kill came after every instance was acknowledged: the test proved nothing"
    );

    let acked: BTreeMap<String, String> = fs::read_to_string(&acklog)
        .unwrap()
        .lines()
        .map(|l| {
            let (uid, sha) = l.split_once(' ').expect("malformed ack log line");
            (uid.to_string(), sha.to_string())
        })
        .collect();
    assert!(acked.len() >= acked_at_kill);

    // Run 2: restart on the same data_dir.
    let daemon = start_daemon(&dir, &config, port, "2");
    let spool = data_dir.join("spool");
    let leftovers: Vec<_> = fs::read_dir(spool.join(".tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        leftovers.is_empty(),
        "spool/.tmp not empty after restart: {leftovers:?}"
    );

    let db = Connection::open_with_flags(
        data_dir.join("proxyseg.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let rows: HashMap<String, (String, String, i64)> = db
        .prepare("SELECT sop_instance_uid, digest, path, size_bytes FROM instances")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();

    // Rows committed while their file's fsync still ran were checked at startup.
    let unchecked: i64 = db
        .query_row("SELECT COUNT(*) FROM unsynced", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        unchecked, 0,
        "the startup check left rows listed as unsynced"
    );

    // Every index row points to a complete spool file outside .tmp whose data set matches.
    let spool_abs = fs::canonicalize(&spool).unwrap();
    let mut indexed_paths = HashSet::new();
    let mut stored_sha = HashMap::new();
    for (uid, (digest, path, size)) in &rows {
        let p = dir.join(path); // absolute paths stay as they are
        assert!(
            p.is_file(),
            "index row {uid} points to a missing file {path}"
        );
        let p = fs::canonicalize(&p).unwrap();
        assert!(
            p.starts_with(&spool_abs) && !p.starts_with(spool_abs.join(".tmp")),
            "index row {uid} points outside the spool or into .tmp: {path}"
        );
        assert_eq!(
            fs::metadata(&p).unwrap().len() as i64,
            *size,
            "index row {uid}: size_bytes differs from the file"
        );
        let (sha, b3) = dataset_digests(&p);
        assert_eq!(
            &b3, digest,
            "index row {uid}: the stored data set does not match the indexed digest"
        );
        stored_sha.insert(uid.clone(), sha);
        indexed_paths.insert(p);
    }

    // Every acknowledged instance is indexed, with the bytes that were sent.
    for (uid, sent_sha) in &acked {
        let (_, path, _) = rows
            .get(uid)
            .unwrap_or_else(|| panic!("acknowledged instance {uid} is not in the index"));
        assert_eq!(
            &stored_sha[uid], sent_sha,
            "{uid}: the stored data set differs from what was sent"
        );
        let p = dir.join(path);
        let obj = dicom_object::open_file(&p)
            .unwrap_or_else(|e| panic!("acknowledged instance {uid}: {path} does not parse: {e}"));
        let stored_uid = obj
            .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_string();
        assert_eq!(&stored_uid, uid, "{path} holds another SOP Instance UID");
    }

    let mut files = Vec::new();
    spool_files(&spool, &mut files);
    let orphans: Vec<_> = files
        .iter()
        .map(|p| fs::canonicalize(p).unwrap())
        .filter(|p| !indexed_paths.contains(p))
        .collect();
    eprintln!(
        "after restart: {} acknowledged, {} indexed, {} spool files, {} not indexed {:?}; {:.1} s",
        acked.len(),
        rows.len(),
        files.len(),
        orphans.len(),
        orphans,
        started.elapsed().as_secs_f64()
    );

    // The restarted daemon serves: resending everything succeeds (identical copies are kept,
    // the rest stored), and then every instance is indexed with the bytes that were sent.
    let acklog2 = dir.join("acked-after-restart.log");
    let resend = Command::new(&py)
        .arg(&sender)
        .args(["send", "--port", &port.to_string(), "--aet", SENDER_AE])
        .args(["--assocs", &ASSOCS.to_string(), "--dir"])
        .arg(&inputs)
        .arg("--log")
        .arg(&acklog2)
        .output()
        .unwrap();
    let resent = fs::read_to_string(&acklog2).unwrap_or_default();
    assert_eq!(
        resent.lines().count(),
        TOTAL,
        "resending after the restart: not every instance was acknowledged: {}{}",
        String::from_utf8_lossy(&resend.stdout),
        String::from_utf8_lossy(&resend.stderr)
    );
    stop_daemon(daemon);
    let db = Connection::open_with_flags(
        data_dir.join("proxyseg.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let rows: HashMap<String, (String, String)> = db
        .prepare("SELECT sop_instance_uid, digest, path FROM instances")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), TOTAL, "index rows after the resend");
    for l in resent.lines() {
        let (uid, sent_sha) = l.split_once(' ').unwrap();
        let (digest, path) = rows.get(uid).unwrap_or_else(|| panic!("{uid} not indexed"));
        let (sha, b3) = dataset_digests(&dir.join(path));
        assert_eq!(&sha, sent_sha, "{uid}: stored bytes after the resend");
        assert_eq!(&b3, digest, "{uid}: indexed digest after the resend");
    }
    eprintln!(
        "resent {TOTAL} after restart; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Review M3: after an unclean stop the daemon reconciles the spool with the index. Restarted
/// on the same data through another spelling of its path (relative `var` from the install
/// directory, then the absolute path, as an admin editing the config would), it must not take
/// the acknowledged instances for unindexed leftovers and delete them.
#[test]
fn another_spelling_of_the_data_dir_loses_no_instance_after_kill_9() {
    const COUNT: usize = 12;
    let py = venv_python();
    let sender = root().join("tests/python/crash_sender.py");
    let tmp = Workdir(Some(
        tempfile::Builder::new()
            .prefix("proxyseg-datadir-")
            .tempdir()
            .unwrap(),
    ));
    let dir = tmp.0.as_ref().unwrap().path().to_path_buf();
    let inputs = dir.join("in");
    let acklog = dir.join("acked.log");
    let gen = Command::new(&py)
        .arg(&sender)
        .args(["generate", "--count", &COUNT.to_string(), "--dir"])
        .arg(&inputs)
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let (port, metrics_port) = (free_port(), free_port());
    let config = dir.join("proxyseg.toml");
    let write_config = |data_dir: &str| {
        fs::write(
            &config,
            format!(
                "[dicom]\nae_title = \"PROXYSEG\"\nlisten = \"127.0.0.1:{port}\"\nrequire_known_peers = true\n\
                 min_free_disk_mb = 1\n[[dicom.peers]]\nae_title = \"{SENDER_AE}\"\nhost = \"127.0.0.1\"\nport = 11199\n\
                 [storage]\ndata_dir = \"{data_dir}\"\n[pipeline]\nstable_age_s = 3600.0\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
                 [log]\nfilter = \"info\"\n"
            ),
        )
        .unwrap()
    };

    // Run 1: data_dir "var", relative to the daemon's working directory; all acknowledged.
    write_config("var");
    let mut daemon = start_daemon(&dir, &config, port, "1");
    let send = Command::new(&py)
        .arg(&sender)
        .args(["send", "--port", &port.to_string(), "--aet", SENDER_AE])
        .args(["--assocs", "1", "--dir"])
        .arg(&inputs)
        .arg("--log")
        .arg(&acklog)
        .output()
        .unwrap();
    assert_eq!(
        count_lines(&acklog),
        COUNT,
        "acknowledged before the kill: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    daemon.0.kill().unwrap(); // SIGKILL: the next start reconciles spool and index
    let _ = daemon.0.wait();

    // Run 2: the same directory, spelled absolute (a symlink or "./var" is the same case).
    write_config(&dir.join("var").display().to_string());
    let daemon = start_daemon(&dir, &config, port, "2");
    let log = fs::read_to_string(dir.join("daemon-2.log")).unwrap_or_default();
    let mut files = Vec::new();
    spool_files(&dir.join("var/spool"), &mut files);
    let db = Connection::open_with_flags(
        dir.join("var/proxyseg.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let paths: Vec<String> = db
        .prepare("SELECT path FROM instances")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    stop_daemon(daemon);
    assert_eq!(
        files.len(),
        COUNT,
        "acknowledged instance files deleted after the restart; log:\n{log}"
    );
    assert_eq!(
        paths.len(),
        COUNT,
        "index rows after the restart; log:\n{log}"
    );
    for p in &paths {
        let abs = Path::new(p);
        let abs = if abs.is_absolute() {
            abs.to_path_buf()
        } else {
            dir.join("var").join(abs)
        };
        assert!(abs.is_file(), "indexed {p} names no file");
    }
}
