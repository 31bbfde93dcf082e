//! The project venv's Python (pydicom, pynetdicom, highdicom): the scripts of tests/python,
//! pydicom's bundled test files, and the pynetdicom PACS.

use super::{root, text, wait_port, Daemon, Guard};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The venv's Python; panics with instructions when absent.
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} missing: run scripts/test (it creates .venv with pydicom, pynetdicom, highdicom)",
        p.display()
    );
    p
}

/// pydicom's bundled test files.
pub fn pydicom_files() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import pydicom.data, os; print(os.path.dirname(pydicom.data.__file__))",
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "pydicom is not importable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("test_files")
}

/// Runs a Python script from tests/python with the venv's Python.
pub fn run_py(script: &str, args: &[&str]) -> Output {
    Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap()
}

/// Runs one case of tests/python/scu_edge.py (hostile and broken SCUs) against the daemon and
/// returns the JSON object it prints.
pub fn scu_edge(d: &Daemon, case: &str, args: &[&str]) -> serde_json::Value {
    let port = d.port.to_string();
    let mut all = vec![case, port.as_str()];
    all.extend_from_slice(args);
    let out = run_py("scu_edge.py", &all);
    assert!(
        out.status.success(),
        "case {case} crashed:\n{}\ndaemon log:\n{}",
        text(&out),
        d.log()
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("case {case}: bad JSON ({e}):\n{}", text(&out)))
}

/// Starts tests/python/pacs_scp.py (a pynetdicom storage SCP, AE "PACS", writing what it
/// receives into `dir`) on `port` with `extra` arguments; returns once it accepts connections.
pub fn pacs_scp(port: u16, dir: &Path, extra: &[&str]) -> Guard {
    let mut c = Command::new(python())
        .arg(root().join("tests/python/pacs_scp.py"))
        .arg(port.to_string())
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let g = Guard(c);
    wait_port(port, "pacs_scp");
    g
}
