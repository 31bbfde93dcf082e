//! `proxyseg segment` writes a valid DICOM SEG per input (plus PNG / raw masks), offline.

mod common;
use common::*;

#[test]
fn segment_writes_valid_segs_for_demo_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dicom]\nrequire_known_peers = false\n[storage]\ndata_dir = \"{}\"\n[engine]\nmodels_dir = \"{}\"\n",
            dir.path().join("var").display(),
            root().join("models").display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    for (set, input) in [
        ("fundus-disc-cup-vessels", "fundus/image.dcm"),
        ("us-intrapartum-ps-fh", "us/cine.dcm"),
    ] {
        let src = root().join("models/phantom-tiny/demo-studies").join(input);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_proxyseg"))
            .args(["segment", "--config"])
            .arg(&cfg)
            .args(["--support-set", set, "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let seg = out.join(format!("{stem}.seg.dcm"));
        assert!(seg.is_file(), "{} missing:\n{}", seg.display(), text(&o));
        let v = run("dciodvfy", &[seg.to_str().unwrap()]);
        assert!(
            !String::from_utf8_lossy(&v.stderr)
                .lines()
                .any(|l| l.starts_with("Error")),
            "{}",
            text(&v)
        );
        let e = run("dcentvfy", &[seg.to_str().unwrap(), src.to_str().unwrap()]);
        assert!(
            !String::from_utf8_lossy(&e.stderr)
                .lines()
                .chain(String::from_utf8_lossy(&e.stdout).lines())
                .any(|l| l.starts_with("Error")),
            "{}",
            text(&e)
        );
        assert!(
            out.join(&stem).join("masks.u8").is_file(),
            "raw masks missing"
        );
    }
}
