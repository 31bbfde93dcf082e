//! `proxyseg segment` writes a valid DICOM SEG per input (plus PNG / raw masks), offline, under
//! a name unique among the inputs.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// A config on the committed models (CPU), data under `dir`.
fn config(dir: &Path) -> PathBuf {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dicom]\nrequire_known_peers = false\n[storage]\ndata_dir = \"{}\"\n[engine]\nmodels_dir = \"{}\"\n",
            dir.join("var").display(),
            root().join("models").display()
        ),
    )
    .unwrap();
    cfg
}

fn segment(cfg: &Path, set: &str, out: &Path, inputs: &[&Path]) -> std::process::Output {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["segment", "--config"])
        .arg(cfg)
        .args(["--support-set", set, "-o"])
        .arg(out)
        .args(inputs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    o
}

/// dciodvfy finds no error in `seg`, and dcentvfy none against its source `src`.
fn check_seg(seg: &Path, src: &Path) {
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
}

#[test]
fn segment_writes_valid_segs_for_demo_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = dir.path().join("out");
    for (set, input) in [
        ("fundus-disc-cup-vessels", "fundus/image.dcm"),
        ("us-intrapartum-ps-fh", "us/cine.dcm"),
    ] {
        let src = root().join("models/phantom-tiny/demo-studies").join(input);
        let o = segment(&cfg, set, &out, &[&src]);
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let seg = out.join(format!("{stem}.seg.dcm"));
        assert!(seg.is_file(), "{} missing:\n{}", seg.display(), text(&o));
        check_seg(&seg, &src);
        assert!(
            out.join(&stem).join("masks.u8").is_file(),
            "raw masks missing"
        );
    }
}

/// Two inputs named `image.dcm` in different folders: each gets its own SEG and raw folder,
/// named after its folder, and each SEG references its own source.
#[test]
fn same_file_names_in_different_folders_do_not_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = dir.path().join("out");
    let a = root().join("models/phantom-tiny/demo-studies/fundus/image.dcm");
    let b =
        root().join("models/phantom-tiny/support-sets/fundus-disc-cup-vessels/pairs/01/image.dcm");
    let o = segment(&cfg, "fundus-disc-cup-vessels", &out, &[&a, &b]);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "01_image",
            "01_image.seg.dcm",
            "fundus_image",
            "fundus_image.seg.dcm"
        ],
        "{}",
        text(&o)
    );
    let (seg_a, seg_b) = (
        out.join("fundus_image.seg.dcm"),
        out.join("01_image.seg.dcm"),
    );
    check_seg(&seg_a, &a);
    check_seg(&seg_b, &b);
    assert_ne!(
        std::fs::read(&seg_a).unwrap(),
        std::fs::read(&seg_b).unwrap()
    );
    for name in ["fundus_image", "01_image"] {
        let result = std::fs::read_to_string(out.join(name).join("result.toml")).unwrap();
        let want = if name == "01_image" { &b } else { &a };
        assert!(
            result.contains(&format!("input = {:?}", want.display().to_string())),
            "{name}: {result}"
        );
    }
}

/// An input whose frames and masks would not fit `pipeline.max_decoded_mb` is refused before
/// anything is decoded, with the numbers and the setting to change (offline, an input's frames
/// are decoded together: a cine of thousands of frames would otherwise exhaust the memory).
#[test]
fn an_input_over_the_memory_bound_is_refused_with_the_setting_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut text_cfg = std::fs::read_to_string(&cfg).unwrap();
    text_cfg += "[pipeline]\nmax_decoded_mb = 8\n";
    std::fs::write(&cfg, text_cfg).unwrap();
    let out = dir.path().join("out");
    let cine = root().join("models/phantom-tiny/demo-studies/us/cine.dcm");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["segment", "--config"])
        .arg(&cfg)
        .args(["--support-set", "us-intrapartum-ps-fh", "-o"])
        .arg(&out)
        .arg(&cine)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("cine.dcm: 8 frame(s) of 256x320 with 2 object(s)")
            && t.contains("over pipeline.max_decoded_mb = 8 MiB")
            && t.contains("raise [pipeline] max_decoded_mb"),
        "{t}"
    );
    assert!(!out.join("cine.seg.dcm").exists(), "nothing written: {t}");
}
