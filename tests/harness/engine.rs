//! Helpers of the engine tests: the test bundle, synthetic frames and support sets, the parity
//! fixtures of the Python reference and the SAM 2 test bundle.

use std::path::{Path, PathBuf};
use std::process::Command;

use proxyseg::config::EngineConfig;
use proxyseg::dicom::pixels::Frame;
use proxyseg::engine::{Mask, SupportObject, SupportPair, SupportSet};
use serde_json::Value;

use super::{python, root};

/// Runs a project script (`rel`, from the repository root) with the venv's Python on `dir`
/// and `args`; panics with its stderr when it fails.
pub fn run_script(rel: &str, dir: &Path, args: &[&str]) {
    let out = Command::new(python())
        .arg(root().join(rel))
        .arg(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {rel}: {e}"));
    assert!(
        out.status.success(),
        "{rel} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the contract-conforming test bundle (scripts/bench/engine/make_test_bundle.py).
pub fn make_test_bundle(dir: &Path, name: &str, version: &str) {
    run_script(
        "scripts/bench/engine/make_test_bundle.py",
        dir,
        &["--name", name, "--version", version],
    );
}

/// An engine on the CPU (2 intra-op threads) serving the bundles beside `bundle`.
pub fn engine_for(bundle: &Path, data: &Path) -> proxyseg::engine::Engine {
    let mut cfg = cpu_config(bundle.parent().unwrap());
    cfg.intra_threads = 2;
    proxyseg::engine::Engine::new(&cfg, data).expect("engine")
}

/// An engine config on CPU with the given models folder, on the float graphs (the parity
/// fixtures are the float graphs'; tests of the int8 variants set `int8`).
pub fn cpu_config(models: &Path) -> EngineConfig {
    EngineConfig {
        providers: vec!["cpu".into()],
        models_dir: models.to_owned(),
        intra_threads: 1,
        int8: false,
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
    run_script("scripts/bench/engine/make_inputs.py", dir, &[]);
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

// --- Parity fixtures written by the Python reference (scripts/model, bundle_data.py) ---------

/// A parity bundle folder: env `var` or `root()/default`. The bundle and its fixtures ship with
/// the project (or are fetched by scripts/test before cargo test runs), so their absence is a
/// failure, never a skip. `hint` says how to get them.
pub fn parity_bundle(var: &str, default: &str, hint: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(default));
    assert!(
        p.join("fixtures/fixtures.json").is_file(),
        "{} has no fixtures/fixtures.json ({hint}; or point {var} at a bundle that has them)",
        p.display()
    );
    p
}

/// A bundle's `fixtures/fixtures.json`.
pub fn read_fixtures(bundle: &Path) -> Value {
    let p = bundle.join("fixtures/fixtures.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fixtures' tolerances: (max abs diff of logits, minimum fraction of equal mask pixels).
pub fn tolerances(doc: &Value) -> (f32, f64) {
    (
        doc["tolerance"]["mask_logits_max_abs"]
            .as_f64()
            .unwrap_or(1e-3) as f32,
        doc["tolerance"]["mask_agreement_min"]
            .as_f64()
            .unwrap_or(0.999),
    )
}

/// Fixture paths are relative to the bundle folder (older fixtures: to fixtures/).
pub fn resolve(bundle: &Path, rel: &str) -> PathBuf {
    let p = bundle.join(rel);
    if p.exists() {
        p
    } else {
        bundle.join("fixtures").join(rel)
    }
}

fn spec_shape(spec: &Value) -> Vec<usize> {
    spec["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

/// A little-endian f32 fixture tensor `{file, dtype: "f32", shape}`: (shape, values).
pub fn load_f32(dir: &Path, spec: &Value) -> (Vec<usize>, Vec<f32>) {
    let file = spec["file"].as_str().expect("file");
    assert_eq!(spec["dtype"], "f32", "{file}");
    let bytes = std::fs::read(resolve(dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let shape = spec_shape(spec);
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{file}: size does not match shape {shape:?}"
    );
    (shape, data)
}

/// A u8 fixture tensor `{file, dtype: "u8", shape}`: (shape, values).
pub fn load_u8(dir: &Path, spec: &Value) -> (Vec<usize>, Vec<u8>) {
    let file = spec["file"].as_str().expect("file");
    assert_eq!(spec["dtype"], "u8", "{file}");
    let data = std::fs::read(resolve(dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let shape = spec_shape(spec);
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{file}: size does not match shape {shape:?}"
    );
    (shape, data)
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Keeps the 1-based pairs a fixture case lists in `support_pairs` (all when absent), in that
/// order, and gives the subset its own version (so its support context is cached apart).
pub fn select_pairs(set: &mut SupportSet, case: &Value) {
    if let Some(sel) = case["support_pairs"].as_array() {
        let idx: Vec<usize> = sel.iter().map(|v| v.as_u64().unwrap() as usize).collect();
        set.pairs = idx.iter().map(|&i| set.pairs[i - 1].clone()).collect();
        set.version = format!("{}-pairs{idx:?}", set.version);
    }
}

/// Report lines and failures of a parity test.
#[derive(Debug, Default)]
pub struct Parity {
    /// One line per comparison.
    pub lines: Vec<String>,
    /// One line per comparison out of tolerance.
    pub failures: Vec<String>,
}

impl Parity {
    /// A free report line.
    pub fn note(&mut self, line: String) {
        self.lines.push(line);
    }

    /// A failure line.
    pub fn fail(&mut self, line: String) {
        self.failures.push(line);
    }

    /// Compares a tensor (`shape`, `got`) with a fixture (shape and max abs diff <= `tol`).
    /// Returns the max abs diff (infinite on a shape mismatch).
    pub fn f32(
        &mut self,
        tag: &str,
        key: &str,
        (shape, got): (&[usize], &[f32]),
        want: (Vec<usize>, Vec<f32>),
        tol: f32,
    ) -> f32 {
        let (want_shape, want) = want;
        let d = if want_shape == shape {
            max_abs(got, &want)
        } else {
            f32::INFINITY
        };
        self.note(format!("{tag}: {key} {want_shape:?}: max abs diff {d:.2e}"));
        if d > tol {
            self.fail(format!(
                "{tag}: {key} shape {shape:?} vs {want_shape:?}, max abs diff {d:.2e} > {tol:e}"
            ));
        }
        d
    }

    /// Compares masks with a fixture (fraction of equal values >= `agree_min`). Returns the
    /// fraction of equal values.
    pub fn masks(
        &mut self,
        tag: &str,
        got: &[u8],
        want: (Vec<usize>, Vec<u8>),
        agree_min: f64,
    ) -> f64 {
        let (shape, want) = want;
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        let frac = same as f64 / want.len().max(1) as f64;
        self.note(format!(
            "{tag}: masks {shape:?}: {:.5} % equal",
            frac * 100.0
        ));
        if got.len() != want.len() || frac < agree_min {
            self.fail(format!(
                "{tag}: masks {} vs {} values, {:.4} % equal < {:.1} %",
                got.len(),
                want.len(),
                frac * 100.0,
                agree_min * 100.0
            ));
        }
        frac
    }

    /// Prints the report and fails the test when any comparison was out of tolerance.
    pub fn finish(self) {
        eprintln!("parity report:\n  {}", self.lines.join("\n  "));
        assert!(
            self.failures.is_empty(),
            "parity failures:\n  {}\nfull report:\n  {}",
            self.failures.join("\n  "),
            self.lines.join("\n  ")
        );
    }
}

/// The contract-2 test bundle: SAM 2.1 hiera-tiny with random weights at input size 256 and
/// its 16-frame parity fixtures, exported by scripts/model (`sam2_export --random-weights`)
/// into `target/sam2-random/<models>/sam2-random` once per change of the export code (~20 s).
/// Returns the bundle folder; its parent is a models folder holding only it.
pub fn sam2_random_bundle() -> PathBuf {
    use sha2::{Digest, Sha256};
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = root().join("scripts/model/proxyseg_model");
    let mut h = Sha256::new();
    for f in [
        "sam2_export.py",
        "sam2_graphs.py",
        "sam2_track.py",
        "memory_attention.py",
        "ppg.py",
        "csm.py",
        "ccm.py",
        "export.py",
    ] {
        h.update(std::fs::read(src.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")));
    }
    let stamp = hex::encode(h.finalize())[..12].to_string();
    let models = root().join("target/sam2-random").join(&stamp);
    let bundle = models.join("sam2-random");
    if bundle.join("fixtures/fixtures.json").is_file() {
        return bundle;
    }
    let _ = std::fs::remove_dir_all(root().join("target/sam2-random"));
    let out = Command::new(python())
        .current_dir(root().join("scripts/model"))
        .args([
            "-m",
            "proxyseg_model.sam2_export",
            "--config",
            "sam2.1_hiera_t",
        ])
        .args([
            "--random-weights",
            "--image-size",
            "256",
            "--fixtures",
            "16",
        ])
        .arg("--out")
        .arg(&bundle)
        .output()
        .expect("run sam2_export");
    assert!(
        out.status.success(),
        "sam2_export failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    bundle
}

/// A raw little-endian f32 file of a fixtures.json with `shapes` and `files` maps.
pub fn clip_tensor(bundle: &Path, doc: &Value, key: &str) -> (Vec<usize>, Vec<f32>) {
    let file = doc["files"][key].as_str().expect(key);
    let shape: Vec<usize> = doc["shapes"][key]
        .as_array()
        .expect(key)
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let bytes = std::fs::read(bundle.join("fixtures").join(file)).expect(file);
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{file}");
    (shape, data)
}
