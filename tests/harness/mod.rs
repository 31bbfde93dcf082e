//! The one harness of the integration tests, shared by every test binary (`tests/<area>/main.rs`
//! declares it with `#[path = "../harness/mod.rs"] mod harness;`):
//!
//! - [`daemon`]: the real daemon binary on a temp data dir ([`Daemon`], [`Opts`], free ports);
//! - [`dcmtk`]: the dcmtk peers ([`storescu`], [`echoscu`], [`storescp`]) and [`run`] for any
//!   other tool;
//! - [`python`]: the project venv's Python, the scripts of tests/python, pydicom's test files and
//!   the pynetdicom PACS;
//! - [`wait`]: polling helpers ([`wait_for`], [`wait_port`]);
//! - [`pki`]: a test CA and certificates (openssl);
//! - [`admin`], [`engine`], [`seg`]: helpers of the admin API, engine and SEG tests (used by path:
//!   `use crate::harness::engine::*`).
//!
//! The real peer tools are used, never mocks: a missing tool is a test failure with a message
//! saying how to install it, never a silent skip.
#![allow(dead_code)]

pub mod admin;
pub mod daemon;
pub mod dcmtk;
pub mod engine;
pub mod pki;
pub mod python;
pub mod seg;
pub mod wait;

// Not every test binary uses every part.
#[allow(unused_imports)]
pub use {daemon::*, dcmtk::*, pki::*, python::*, wait::*};

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Debian package that ships `tool`, for install hints.
fn package_of(tool: &str) -> &str {
    match tool {
        "storescu" | "echoscu" | "storescp" | "dcmodify" | "dcmdump" | "dcm2pnm" => "dcmtk",
        "dciodvfy" | "dcentvfy" => "dicom3tools",
        "Orthanc" => "orthanc",
        "systemd-analyze" => "systemd",
        "ip" => "iproute2",
        "unshare" => "util-linux",
        "node" => "nodejs",
        other => other,
    }
}

/// Asserts a command-line tool is on PATH; the failure names the package to install.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not on PATH: install it with `apt-get install -y {}` (scripts/test installs \
         every test peer: dcmtk, dicom3tools, orthanc, ...)",
        package_of(name)
    );
}

/// Runs a command and returns its output, failing with the command line when it cannot start.
pub fn run_cmd(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Output as text for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A child process killed (and reaped) when dropped, so a failing test leaves no peer behind.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// For a test that needs a process of its own (state that lives once per process, such as
/// ONNX Runtime's environment): in the test binary's own run it starts the binary again with
/// only this test (`module` is the test's `module_path!()`, `test` its function name) and
/// asserts that it passed there, then returns false (the caller returns); in that fresh
/// process it returns true (the caller runs the body).
pub fn alone_in_a_fresh_process(module: &str, test: &str) -> bool {
    const VAR: &str = "PROXYSEG_TEST_ALONE";
    // Test names are module paths without the crate (the test binary) name.
    let name = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{test}"),
        None => test.to_string(),
    };
    if std::env::var(VAR).is_ok_and(|v| v == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, &name)
        .output()
        .expect("start the test binary again");
    let t = text(&out);
    assert!(
        out.status.success() && t.contains(" 1 passed;"),
        "{name} in a fresh process failed:\n{t}"
    );
    false
}
