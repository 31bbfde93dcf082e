//! `proxyseg demo` runs end to end from the repository: real daemon, bundled model, demo
//! studies over DICOM, SEGs back to the in-process PACS, a table and overlay PNGs.

use crate::harness::*;

#[test]
fn demo_prints_a_row_per_study_and_writes_overlays() {
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["demo", "--models-dir"])
        .arg(root().join("models"))
        .arg("-o")
        .arg(out.path())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    for study in ["fundus", "mr", "us"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(study))
            .unwrap_or_else(|| panic!("no row for {study}:\n{t}"));
        assert!(row.contains(" s"), "{row}");
        assert!(
            out.path()
                .join("overlays")
                .join(format!("{study}.png"))
                .is_file(),
            "overlay for {study} missing"
        );
        let seg = out.path().join(format!("{study}.seg.dcm"));
        let v = run("dciodvfy", &[seg.to_str().unwrap()]);
        assert!(
            !String::from_utf8_lossy(&v.stderr)
                .lines()
                .any(|l| l.starts_with("Error")),
            "{}",
            text(&v)
        );
    }
    assert!(
        stdout.contains("optic disc")
            && stdout.contains("prostate")
            && stdout.contains("fetal head"),
        "{stdout}"
    );
}
