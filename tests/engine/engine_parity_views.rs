//! Parity with the Python reference for a bundle with resolution views (manifest
//! `[[resolution]]`: roi and tiles second passes, src/engine/views.rs), through the full Rust
//! path: DICOM file -> display frame -> first pass -> crops -> second passes -> merged logits
//! -> the `[mirror]` second look averaged in -> masks (cut at the manifest's `[[threshold]]`
//! logits, with its `[[shape]]` rules). The reference is scripts/model (`bundle_data.write_view_fixtures`, through
//! `runtime.OrtBundle.view_contexts` and `segment_views`).
//!
//! Needs the real bundle: `models/litemedsam-ppg` (or PROXYSEG_VIEW_PARITY_BUNDLE) with its
//! fixtures and its third-party checkpoint `lite_medsam.pth` beside the graphs (scripts/test
//! fetches it before cargo test runs); without them the test fails, it never skips. Inputs and
//! support sets are the phantom bundle's (fixture paths relative to the bundle folder). Per case:
//! the support context is built from the first `support_pairs` of the set, as the engine builds
//! it for any support set (one per view, cached), then one frame is segmented and its first-pass
//! mask logits `[K, 1, 4h, 4w]` and final logits `[K, rows, cols]` (after the views) must be
//! within the fixtures' tolerance (max abs diff; 2e-3 for litemedsam-ppg, whose box tokens
//! amplify f32 input differences, see bundle_data.py), its masks >= 99.9 % equal.

use crate::harness::engine::*;
use proxyseg::dicom::pixels::frames_from_file;
use proxyseg::engine::offline::load_support_set;
use proxyseg::engine::shape::{apply, fill_convex, is_one_region, object_forms, Form};
use proxyseg::engine::threshold::object_thresholds;
use proxyseg::engine::Mask;
use proxyseg::engine::{Engine, SegmentOptions};

#[test]
fn views_match_the_python_reference() {
    let bundle = parity_bundle(
        "PROXYSEG_VIEW_PARITY_BUNDLE",
        "models/litemedsam-ppg",
        "the bundle ships with the project; its fixtures come from scripts/model: \
         python -m proxyseg_model.bundle_data --bundle models/litemedsam-ppg \
         --view-fixtures models/phantom-tiny",
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
        .unwrap_or_else(|e| panic!("bundle {name} not served: {e}"));
    assert_eq!(
        doc["input_size"].as_u64(),
        Some(b.manifest.input_size as u64),
        "fixtures were written for another input size"
    );
    assert!(
        !b.manifest.resolution.is_empty(),
        "{name}: the manifest has no [[resolution]] rules, nothing for this test to check"
    );
    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "fixtures list no case");
    let mut p = Parity::default();
    let (mut views_ran, mut shaped, mut convex, mut ellipse, mut cut) = (0, 0, 0, 0, 0);
    let mut mirrored = 0;
    let mut agreements = 0;
    for case in cases {
        let cname = case["name"].as_str().unwrap();
        let (mut set, _) =
            load_support_set(&resolve(&bundle, case["support_set"].as_str().unwrap()))
                .unwrap_or_else(|e| panic!("{cname}: {e}"));
        select_pairs(&mut set, case);
        let labels: Vec<&str> = set.objects.iter().map(|o| o.label.as_str()).collect();
        if let Some(want) = case["objects"].as_array() {
            let want: Vec<&str> = want.iter().map(|v| v.as_str().unwrap()).collect();
            assert_eq!(labels, want, "{cname}: objects of the support set");
        }
        let input = resolve(&bundle, case["input"].as_str().unwrap());
        let frame_no = case["frame"].as_u64().expect("frame") as usize;
        let frame = frames_from_file(&input)
            .unwrap_or_else(|e| panic!("{cname}: {e}"))
            .into_iter()
            .nth(frame_no)
            .unwrap_or_else(|| panic!("{cname}: {} has no frame {frame_no}", input.display()));
        if let Some(hw) = case["orig_hw"].as_array() {
            let hw: Vec<usize> = hw.iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(hw, [frame.rows, frame.cols], "{cname}: frame size");
        }
        let seg = rt
            .block_on(engine.segment_with(
                &name,
                &set,
                vec![frame],
                SegmentOptions { keep_tensors: true },
            ))
            .unwrap_or_else(|e| panic!("{cname}: {e}"));
        let fr = &seg.frames[0];
        let t = fr.tensors.as_ref().unwrap();
        let tag = format!("{cname} frame {frame_no}");
        // The rules the reference applied ran here too (a roi rule may still find no anchor).
        let rules = case["rules"].as_array().map_or(0, Vec::len);
        let mut ran: Vec<usize> = t.views.iter().map(|v| v.rule).collect();
        ran.dedup();
        p.note(format!(
            "{tag}: {rules} rule(s) apply; crops segmented: {}",
            if t.views.is_empty() {
                "none".to_string()
            } else {
                t.views
                    .iter()
                    .map(|v| format!("{} {:?}", v.view, v.crop.tuple()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        if ran.len() > rules {
            p.fail(format!(
                "{tag}: {} rules ran, the reference applied {rules}",
                ran.len()
            ));
        }
        views_ran += t.views.len();
        let tensors = &case["tensors"];
        p.f32(
            &tag,
            "mask_logits (first pass)",
            (&t.low_res_logits.shape, &t.low_res_logits.data),
            load_f32(&bundle, &tensors["mask_logits"]),
            tol,
        );
        p.f32(
            &tag,
            "final_logits",
            (&t.final_logits.shape, &t.final_logits.data),
            load_f32(&bundle, &tensors["final_logits"]),
            tol,
        );
        let got: Vec<u8> = fr
            .masks
            .iter()
            .flat_map(|m| m.data.iter().copied())
            .collect();
        p.masks(&tag, &got, load_u8(&bundle, &tensors["masks"]), agree_min);
        // the looks' agreement per object: null where the reference took one look; else the
        // same Dice within 0.005 (pixels at a cut may fall either side, as for the masks)
        let want: Vec<Option<f64>> = case["look_agreement"]
            .as_array()
            .expect("look_agreement in the fixtures")
            .iter()
            .map(|v| v.as_f64())
            .collect();
        let same = want.len() == fr.look_agreement.len()
            && want
                .iter()
                .zip(&fr.look_agreement)
                .all(|(w, g)| match (w, g) {
                    (Some(w), Some(g)) => (w - f64::from(*g)).abs() <= 0.005,
                    (None, None) => true,
                    _ => false,
                });
        if !same {
            p.fail(format!(
                "{tag}: look agreement {:?}, the reference {want:?}",
                fr.look_agreement
            ));
        }
        agreements += fr.look_agreement.iter().flatten().count();
        // the manifest's [[shape]] rules: a listed object whose support masks are one region
        // comes back as one region (and convex when its form is), while its raw logits > 0 had
        // more regions (the rule did something)
        let forms = object_forms(&b.manifest.shape, &set, b.manifest.input_size);
        // the masks are the engine's own final logits cut at each object's [[threshold]] logit,
        // then the [[shape]] forms, pixel for pixel
        let cuts = object_thresholds(&b.manifest.threshold, &set.objects);
        let mut again: Vec<Mask> = fr
            .masks
            .iter()
            .enumerate()
            .map(|(o, m)| Mask {
                rows: m.rows,
                cols: m.cols,
                data: t.final_logits.data[o * m.rows * m.cols..(o + 1) * m.rows * m.cols]
                    .iter()
                    .map(|&v| u8::from(v > cuts[o]))
                    .collect(),
            })
            .collect();
        apply(&forms, &mut again);
        assert!(
            again == fr.masks,
            "{tag}: masks are not the final logits cut and shaped"
        );
        cut += cuts.iter().filter(|&&c| c != 0.0).count();
        mirrored += b
            .manifest
            .mirror
            .as_ref()
            .map_or(0, |r| r.object_indices(&labels).len());
        ellipse += forms.iter().filter(|f| **f == Some(Form::Ellipse)).count();
        for (o, m) in fr.masks.iter().enumerate() {
            let Some(form) = forms[o] else { continue };
            assert!(
                is_one_region(&m.data, m.rows, m.cols),
                "{tag}: {} is listed in [[shape]] but came back in pieces",
                labels[o]
            );
            if form == Form::Convex {
                let mut filled = m.clone();
                fill_convex(&mut filled);
                assert!(filled == *m, "{tag}: {} should be convex", labels[o]);
                convex += 1;
            }
            let plane = &t.final_logits.data[o * m.rows * m.cols..(o + 1) * m.rows * m.cols];
            let raw: Vec<u8> = plane.iter().map(|&v| u8::from(v > 0.0)).collect();
            shaped += usize::from(!is_one_region(&raw, m.rows, m.cols));
        }
    }
    assert!(
        shaped > 0,
        "no listed object had stray regions: the fixtures do not exercise the [[shape]] rule"
    );
    assert!(
        convex > 0,
        "no object had the convex form: the fixtures do not exercise it"
    );
    assert!(
        ellipse > 0,
        "no object had the ellipse form: the fixtures do not exercise it"
    );
    assert!(
        cut > 0,
        "no object had a [[threshold]] logit: the fixtures do not exercise it"
    );
    assert!(
        mirrored > 0,
        "no object took the [mirror] second look: the fixtures do not exercise it"
    );
    assert_eq!(
        agreements, mirrored,
        "every listed object has its looks' agreement"
    );
    assert!(
        views_ran > 0,
        "no case ran a resolution view: the fixtures do not exercise the views"
    );
    p.finish();
}
