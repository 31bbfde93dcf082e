//! PHI at rest (issue 16, item 5; review M4): started with `umask 000`, the daemon still keeps
//! every file under its data dir 0600 and every directory 0700: the spool, the SQLite index and
//! its -wal/-shm, support sets, the engine cache, results, the outbox (written by a separate
//! `proxyseg send` process, also under `umask 000`) and the clean-shutdown marker.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every entry under `dir` whose mode is not 0600 (files) or 0700 (directories), with its mode,
/// and how many entries were checked.
fn loose_modes(dir: &Path) -> (Vec<String>, usize) {
    let mut bad = Vec::new();
    let mut seen = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        seen += 1;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            bad.push(format!("{:o} {}", mode, p.display()));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    (bad, seen)
}

/// Files under `dir` whose path starts with `prefix`.
fn files_under(dir: &Path, prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.starts_with(prefix) {
            out.push(p);
        }
    }
    out
}

#[test]
fn data_dir_is_private_whatever_the_umask() {
    let image = root().join("models/phantom-tiny/demo-studies/fundus/image.dcm");
    // With the admin API on, the first start imports the bundled demo support sets into
    // data_dir/support.
    let admin = tempfile::tempdir().unwrap();
    let tokens = admin.path().join("tokens");
    std::fs::write(&tokens, "admin admin 0123456789abcdef0123456789\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = Daemon::start(Opts {
        umask: Some(0),
        extra: format!(
            "[engine]\nmodels_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\ntokens_file = \"{}\"\n",
            root().join("models").display(),
            free_port(),
            tokens.display()
        ),
        ..Opts::default()
    });
    let out = d.store(&image);
    assert!(out.status.success(), "storescu: {}", text(&out));
    // The SEG is written under results/ (its delivery to the unreachable STORESCU peer retries).
    wait_for("the job's SEG", 240, &d, || {
        let state: Option<String> = d
            .db()
            .query_row("SELECT state FROM jobs", [], |r| r.get(0))
            .ok();
        assert_ne!(state.as_deref(), Some("failed"), "job failed:\n{}", d.log());
        matches!(state.as_deref(), Some("written" | "delivered"))
    });
    // The outbox, from another process started under umask 000 as well.
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" send --config \"$1\" --to STORESCU \"$2\"")
        .arg(env!("CARGO_BIN_EXE_proxyseg"))
        .arg(&d.config)
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "proxyseg send: {}", text(&out));

    let data = d.data_dir();
    for (what, under) in [
        ("spool instance", "spool"),
        ("SQLite journal", "proxyseg.sqlite-wal"),
        ("SEG result", "results"),
        ("outbox file", "outbox"),
        ("support set file", "support"),
    ] {
        let under = data.join(under);
        assert!(
            !files_under(&data, &under).is_empty(),
            "no {what} at {}; data dir holds:\n{:#?}",
            under.display(),
            files_under(&data, &data)
        );
    }
    let (bad, seen) = loose_modes(&data);
    assert!(
        bad.is_empty(),
        "while running, of {seen} entries:\n{}",
        bad.join("\n")
    );

    assert!(d.terminate(), "clean stop:\n{}", d.log());
    assert!(data.join(".clean-shutdown").exists());
    let (bad, seen) = loose_modes(&data);
    assert!(
        bad.is_empty(),
        "after stop, of {seen} entries:\n{}",
        bad.join("\n")
    );
}
