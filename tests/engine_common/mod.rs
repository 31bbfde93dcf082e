//! Shared helpers of the engine tests: the test bundle, synthetic frames and support sets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use proxyseg::config::EngineConfig;
use proxyseg::dicom::pixels::Frame;
use proxyseg::engine::{Mask, SupportObject, SupportPair, SupportSet};

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, with a clear message when missing.
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/test to create the venv",
        p.display()
    );
    p
}

/// Writes the contract-conforming test bundle (scripts/bench/engine/make_test_bundle.py).
pub fn make_test_bundle(dir: &Path, name: &str, version: &str) {
    let out = Command::new(python())
        .arg(root().join("scripts/bench/engine/make_test_bundle.py"))
        .arg(dir)
        .args(["--name", name, "--version", version])
        .output()
        .expect("run make_test_bundle.py");
    assert!(
        out.status.success(),
        "make_test_bundle.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An engine config on CPU with the given models folder.
pub fn cpu_config(models: &Path) -> EngineConfig {
    EngineConfig {
        providers: vec!["cpu".into()],
        models_dir: models.to_owned(),
        intra_threads: 1,
        ..EngineConfig::default()
    }
}

/// A grey frame with a bright disc at (cy, cx) of radius r.
pub fn disc_frame(rows: usize, cols: usize, cy: f32, cx: f32, r: f32) -> (Frame, Mask) {
    let mut data = vec![20f32; rows * cols];
    let mut mask = vec![0u8; rows * cols];
    for y in 0..rows {
        for x in 0..cols {
            let d = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt();
            if d <= r {
                data[y * cols + x] = 230.0;
                mask[y * cols + x] = 1;
            }
        }
    }
    (
        Frame {
            index: 0,
            rows,
            cols,
            channels: 1,
            data,
        },
        Mask {
            rows,
            cols,
            data: mask,
        },
    )
}

/// A one-object support set of `n` disc images.
pub fn disc_set(name: &str, version: &str, n: usize) -> SupportSet {
    let pairs = (0..n)
        .map(|i| {
            let (image, mask) = disc_frame(96, 128, 40.0 + i as f32 * 5.0, 60.0, 20.0);
            SupportPair {
                image,
                masks: vec![mask],
            }
        })
        .collect();
    SupportSet {
        name: name.into(),
        version: version.into(),
        objects: vec![SupportObject {
            label: "disc".into(),
            ..Default::default()
        }],
        pairs,
    }
}

/// Writes the benchmark inputs and the `bench-lesion` support set (make_inputs.py).
pub fn make_inputs(dir: &Path) {
    let out = Command::new(python())
        .arg(root().join("scripts/bench/engine/make_inputs.py"))
        .arg(dir)
        .output()
        .expect("run make_inputs.py");
    assert!(
        out.status.success(),
        "make_inputs.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The committed phantom bundle (`models/phantom-tiny`).
pub fn phantom_dir() -> PathBuf {
    root().join("models/phantom-tiny")
}

/// Copies a bundle's top-level files (manifest and graphs; not its sub-folders such as
/// support sets, demo studies or fixtures) into `dst`.
pub fn copy_bundle(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap()))
                .unwrap_or_else(|e| panic!("copy {}: {e}", p.display()));
        }
    }
}

/// Appends TOML (e.g. `[[resolution]]` or `[weights]` tables) to a bundle's manifest.
pub fn append_manifest(dir: &Path, toml_text: &str) {
    let p = dir.join("manifest.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push('\n');
    text.push_str(toml_text);
    std::fs::write(&p, text).unwrap();
}
