//! Parity with the Python reference (scripts/model, `bundle_data.write_fixtures`) through the
//! full Rust path: DICOM file -> display frames -> model input -> four graphs -> masks.
//!
//! Needs the real bundle: `models/phantom-tiny` (or PROXYSEG_PARITY_BUNDLE); without it the test
//! fails. Checks per frame: model input, image embeddings, prompt tokens, low-res mask logits
//! (max abs diff <= the fixtures' tolerance, 1e-3) and final masks (>= 99.9 % equal pixels);
//! per case the support masks (SEG read + mask preprocessing) and the support context.
//! Bundles with resolution views have their own test (engine_parity_views.rs).

use crate::harness::engine::*;
use proxyseg::dicom::pixels::frames_from_file;
use proxyseg::engine::offline::load_support_set;
use proxyseg::engine::preprocess::prepare_mask;
use proxyseg::engine::{Engine, SegmentOptions};

#[test]
fn rust_path_matches_the_python_reference() {
    let bundle = parity_bundle(
        "PROXYSEG_PARITY_BUNDLE",
        "models/phantom-tiny",
        "regenerate with scripts/model: finalize",
    );
    let doc = read_fixtures(&bundle);
    let (tol, agree_min) = tolerances(&doc);
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
    let mut p = Parity::default();
    for case in doc["cases"].as_array().unwrap() {
        let cname = case["name"].as_str().unwrap();
        let (mut set, _) = load_support_set(&bundle.join(case["support_set"].as_str().unwrap()))
            .unwrap_or_else(|e| panic!("{cname}: {e}"));
        select_pairs(&mut set, case);
        // Support masks: SEG reader + mask preprocessing against the reference.
        let (mshape, want_masks) = load_u8(&bundle, &case["support"]["support_masks"]);
        let mut got_masks = Vec::new();
        for pair in &set.pairs {
            for m in &pair.masks {
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
        p.note(format!(
            "{cname}: support masks {mshape:?}: {diff} pixels differ"
        ));
        if got_masks.len() != want_masks.len() || diff > 0 {
            p.fail(format!(
                "{cname}: support masks differ ({} vs {} values, {diff} differ)",
                got_masks.len(),
                want_masks.len()
            ));
        }
        let ctx = rt
            .block_on(engine.support_context(&name, &set))
            .unwrap_or_else(|e| panic!("{cname}: {e}"));
        for (key, got) in [("support_keys", &ctx.keys), ("support_values", &ctx.values)] {
            let want = load_f32(&bundle, &case["support"][key]);
            p.f32(cname, key, (&got.shape, &got.data), want, tol);
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
                p.fail(format!(
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
                let want = load_f32(&bundle, &spec["tensors"][key]);
                p.f32(&tag, key, (&got.shape, &got.data), want, tol);
            }
            let got: Vec<u8> = fr
                .masks
                .iter()
                .flat_map(|m| m.data.iter().copied())
                .collect();
            p.masks(
                &tag,
                &got,
                load_u8(&bundle, &spec["tensors"]["masks"]),
                agree_min,
            );
        }
    }
    p.finish();
}
