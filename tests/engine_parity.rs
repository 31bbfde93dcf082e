//! Parity with the Python reference (scripts/model, `bundle_data.write_fixtures`) through the
//! full Rust path: DICOM file -> display frames -> model input -> four graphs -> masks.
//!
//! Needs the real bundle: `models/phantom-tiny` (or PROXYSEG_PARITY_BUNDLE); without it the test
//! fails. Checks per frame: model input, image embeddings, prompt tokens, low-res mask logits
//! (max abs diff <= the fixtures' tolerance, 1e-3) and final masks (>= 99.9 % equal pixels);
//! per case the support masks (SEG read + mask preprocessing) and the support context.

mod engine_common;

use std::path::{Path, PathBuf};

use engine_common::*;
use proxyseg::dicom::pixels::frames_from_file;
use proxyseg::engine::offline::load_support_set;
use proxyseg::engine::preprocess::prepare_mask;
use proxyseg::engine::{Engine, SegmentOptions};
use serde_json::Value;

fn bundle_dir() -> Option<PathBuf> {
    let p = std::env::var_os("PROXYSEG_PARITY_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/phantom-tiny"));
    // The bundle and its fixtures are committed: their absence is a failure, never a skip.
    assert!(
        p.join("fixtures/fixtures.json").is_file(),
        "{} has no fixtures/fixtures.json (regenerate with scripts/model: finalize)",
        p.display()
    );
    Some(p)
}

/// Fixture paths are relative to the bundle folder (older fixtures: to fixtures/).
fn resolve(bundle: &Path, rel: &str) -> PathBuf {
    let p = bundle.join(rel);
    if p.exists() {
        p
    } else {
        bundle.join("fixtures").join(rel)
    }
}

fn load_f32(dir: &Path, spec: &Value) -> (Vec<usize>, Vec<f32>) {
    let file = spec["file"].as_str().expect("file");
    assert_eq!(spec["dtype"], "f32", "{file}");
    let bytes = std::fs::read(resolve(dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let shape: Vec<usize> = spec["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
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

fn load_u8(dir: &Path, spec: &Value) -> (Vec<usize>, Vec<u8>) {
    let file = spec["file"].as_str().expect("file");
    assert_eq!(spec["dtype"], "u8", "{file}");
    let data = std::fs::read(resolve(dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let shape: Vec<usize> = spec["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{file}: size does not match shape {shape:?}"
    );
    (shape, data)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn rust_path_matches_the_python_reference() {
    let Some(bundle) = bundle_dir() else { return };
    let fx = bundle.join("fixtures");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("fixtures.json")).unwrap())
            .expect("fixtures.json parses");
    let tol = doc["tolerance"]["mask_logits_max_abs"]
        .as_f64()
        .unwrap_or(1e-3) as f32;
    let agree_min = doc["tolerance"]["mask_agreement_min"]
        .as_f64()
        .unwrap_or(0.999);
    let models = bundle.parent().unwrap().to_path_buf();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = cpu_config(&models);
    cfg.intra_threads = 2;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Engine::new(&cfg, data.path()).expect("engine");
    let name = doc["bundle"].as_str().unwrap().to_string();
    let b = engine
        .bundle(&name)
        .unwrap_or_else(|e| panic!("bundle not served: {e}"));
    let s = b.manifest.input_size;
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in doc["cases"].as_array().unwrap() {
        let cname = case["name"].as_str().unwrap();
        let (mut set, _) = load_support_set(&bundle.join(case["support_set"].as_str().unwrap()))
            .unwrap_or_else(|e| panic!("{cname}: {e}"));
        // `support_pairs`: the 1-based subset of pairs the reference used (all when absent).
        if let Some(sel) = case["support_pairs"].as_array() {
            let idx: Vec<usize> = sel.iter().map(|v| v.as_u64().unwrap() as usize).collect();
            set.pairs = idx.iter().map(|&i| set.pairs[i - 1].clone()).collect();
            set.version = format!("{}-pairs{idx:?}", set.version);
        }
        // Support masks: SEG reader + mask preprocessing against the reference.
        let (mshape, want_masks) = load_u8(&bundle, &case["support"]["support_masks"]);
        let mut got_masks = Vec::new();
        for p in &set.pairs {
            for m in &p.masks {
                got_masks.extend(
                    prepare_mask(&m.data, m.rows, m.cols, s)
                        .iter()
                        .map(|&v| v as u8),
                );
            }
        }
        let diff = got_masks
            .iter()
            .zip(&want_masks)
            .filter(|(a, b)| a != b)
            .count();
        report.push(format!(
            "{cname}: support masks {mshape:?}: {diff} pixels differ"
        ));
        if got_masks.len() != want_masks.len() || diff > 0 {
            failures.push(format!(
                "{cname}: support masks differ ({} vs {} values, {diff} differ)",
                got_masks.len(),
                want_masks.len()
            ));
        }
        let ctx = rt
            .block_on(engine.support_context(&name, &set))
            .unwrap_or_else(|e| panic!("{cname}: {e}"));
        for (key, got) in [("support_keys", &ctx.keys), ("support_values", &ctx.values)] {
            let (shape, want) = load_f32(&bundle, &case["support"][key]);
            let d = if shape == got.shape {
                max_abs(&got.data, &want)
            } else {
                f32::INFINITY
            };
            report.push(format!("{cname}: {key} {shape:?}: max abs diff {d:.2e}"));
            if d > tol {
                failures.push(format!(
                    "{cname}: {key} shape {:?} vs {shape:?}, max abs diff {d:.2e} > {tol:e}",
                    got.shape
                ));
            }
        }
        // Frames through the whole path.
        let input = resolve(&bundle, case["input"].as_str().unwrap());
        let all = frames_from_file(&input).unwrap_or_else(|e| panic!("{cname}: {e}"));
        let wanted: Vec<usize> = case["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["frame"].as_u64().unwrap() as usize)
            .collect();
        let frames = wanted.iter().map(|&i| all[i].clone()).collect();
        let seg = rt
            .block_on(engine.segment_with(
                &name,
                &set,
                frames,
                SegmentOptions { keep_tensors: true },
            ))
            .unwrap_or_else(|e| panic!("{cname}: {e}"));
        for (fr, spec) in seg.frames.iter().zip(case["frames"].as_array().unwrap()) {
            let tag = format!("{cname} frame {}", spec["frame"]);
            let t = fr.tensors.as_ref().unwrap();
            let g = &fr.geometry;
            let hw: Vec<usize> = spec["resized_hw"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            if hw != [g.new_h, g.new_w] {
                failures.push(format!(
                    "{tag}: resized size {:?} vs reference {hw:?}",
                    (g.new_h, g.new_w)
                ));
            }
            for (key, got) in [
                ("image", &t.image),
                ("image_embeddings", &t.image_embeddings),
                ("prompt_tokens", &t.prompt_tokens),
                ("mask_logits", &t.low_res_logits),
            ] {
                let (shape, want) = load_f32(&bundle, &spec["tensors"][key]);
                let d = if shape == got.shape {
                    max_abs(&got.data, &want)
                } else {
                    f32::INFINITY
                };
                report.push(format!("{tag}: {key} {shape:?}: max abs diff {d:.2e}"));
                if d > tol {
                    failures.push(format!(
                        "{tag}: {key} shape {:?} vs {shape:?}, max abs diff {d:.2e} > {tol:e}",
                        got.shape
                    ));
                }
            }
            let (shape, want) = load_u8(&bundle, &spec["tensors"]["masks"]);
            let got: Vec<u8> = fr
                .masks
                .iter()
                .flat_map(|m| m.data.iter().copied())
                .collect();
            let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
            let frac = same as f64 / want.len().max(1) as f64;
            report.push(format!(
                "{tag}: masks {shape:?}: {:.5} % equal",
                frac * 100.0
            ));
            if got.len() != want.len() || frac < agree_min {
                failures.push(format!(
                    "{tag}: masks {} vs {} values, {:.4} % equal < {:.1} %",
                    got.len(),
                    want.len(),
                    frac * 100.0,
                    agree_min * 100.0
                ));
            }
        }
    }
    eprintln!("parity report:\n  {}", report.join("\n  "));
    assert!(
        failures.is_empty(),
        "parity failures:\n  {}\nfull report:\n  {}",
        failures.join("\n  "),
        report.join("\n  ")
    );
}
