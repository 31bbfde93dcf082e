//! Manifest `[[resolution]]` rules and `[weights]` on real ONNX Runtime (from .venv):
//! the phantom bundle with a roi rule (optic disc, optic cup around the disc) and a tiles rule
//! (vessels, 2 x 2) segments the phantom fundus demo image with full-size masks in set order,
//! caches 1 + 1 + 4 support contexts (memory and disk), is deterministic, and rules whose
//! objects are absent change nothing. A `[weights]` file that is missing or wrong refuses the
//! bundle with a reason naming the file, the expected sha256 and the setup text.

use std::path::Path;

use crate::harness::engine::*;
use proxyseg::config::EngineConfig;
use proxyseg::dicom::pixels::{frames_from_file, Frame};
use proxyseg::engine::offline::load_support_set;
use proxyseg::engine::views::{self, BACKGROUND_LOGIT};
use proxyseg::engine::{Engine, SegmentOptions, Segmentation, SupportSet};

const RULES: &str = r#"
[[resolution]]
strategy = "roi"
objects = ["optic disc", "Optic Cup"]
anchor = "optic disc"
scale = 2.0
min_side = 64
note = "test rule"

[[resolution]]
strategy = "tiles"
objects = ["vessels"]
grid = 2
overlap = 0.125
"#;

/// Rules that never apply to the fundus set: absent objects, or an absent anchor.
const ABSENT_RULES: &str = r#"
[[resolution]]
strategy = "roi"
objects = ["liver"]
anchor = "liver"

[[resolution]]
strategy = "roi"
objects = ["optic cup"]
anchor = "kidney"

[[resolution]]
strategy = "tiles"
objects = ["spleen"]
grid = 3
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A models folder holding a copy of the phantom bundle with `extra` appended to its manifest.
fn phantom_models(base: &Path, extra: &str) -> std::path::PathBuf {
    let models = base.join("models");
    copy_bundle(&phantom_dir(), &models.join("phantom-tiny"));
    append_manifest(&models.join("phantom-tiny"), extra);
    models
}

fn fundus() -> (Vec<Frame>, SupportSet) {
    let frames =
        frames_from_file(&phantom_dir().join("demo-studies/fundus/image.dcm")).expect("demo");
    let (set, _) = load_support_set(&phantom_dir().join("support-sets/fundus-disc-cup-vessels"))
        .expect("support set");
    (frames, set)
}

async fn segment(engine: &Engine, set: &SupportSet, frames: &[Frame]) -> Segmentation {
    engine
        .segment_with(
            "phantom-tiny",
            set,
            frames.to_vec(),
            SegmentOptions { keep_tensors: true },
        )
        .await
        .expect("segment")
}

#[test]
fn resolution_views_segment_cache_and_repeat() {
    let tmp = tempfile::tempdir().unwrap();
    let models = phantom_models(tmp.path(), RULES);
    let data = tmp.path().join("var");
    let (frames, set) = fundus();
    assert_eq!(frames.len(), 1);
    let (rows, cols) = (frames[0].rows, frames[0].cols);
    let labels: Vec<&str> = set.objects.iter().map(|o| o.label.as_str()).collect();
    assert_eq!(labels, ["optic disc", "optic cup", "vessels"]);
    let first = rt().block_on(async {
        let engine = Engine::new(&cpu_config(&models), &data).unwrap();
        let b = engine.bundle("phantom-tiny").unwrap();
        assert_eq!(b.manifest.resolution.len(), 2);
        assert_eq!(b.manifest.resolution[0].note, "test rule");
        let seg = segment(&engine, &set, &frames).await;
        // (a) shapes and order: one full-size mask per object, in the set's order.
        assert_eq!(seg.objects, set.objects);
        assert_eq!(seg.frames.len(), 1);
        let f = &seg.frames[0];
        assert_eq!(f.masks.len(), 3);
        assert_eq!(f.iou_scores.len(), 3);
        for m in &f.masks {
            assert_eq!((m.rows, m.cols, m.data.len()), (rows, cols, rows * cols));
        }
        // (b) 1 first-pass + 1 roi + 4 tile contexts, computed once.
        let s = engine.support_stats();
        assert_eq!((s.computed, s.in_memory, s.disk_hits), (6, 6, 0), "{s:?}");
        assert_eq!(seg.timings.frames, 1);
        assert_eq!(seg.timings.view_passes, 5, "one roi crop and four tiles");
        assert!(seg.timings.views > std::time::Duration::ZERO);

        let t = f.tensors.as_ref().unwrap();
        assert_eq!(t.logits.shape, [3, rows, cols]);
        assert_eq!(t.final_logits.shape, [3, rows, cols]);
        let plane = rows * cols;
        for (o, m) in f.masks.iter().enumerate() {
            let fin = &t.final_logits.data[o * plane..(o + 1) * plane];
            let want: Vec<u8> = fin.iter().map(|&v| u8::from(v > 0.0)).collect();
            assert_eq!(m.data, want, "mask {o} is final_logits > 0");
        }
        // The roi crop comes from the first-pass disc mask; the disc and cup take the crop's
        // logits inside it and background outside.
        let disc: Vec<u8> = t.logits.data[..plane]
            .iter()
            .map(|&v| u8::from(v > 0.0))
            .collect();
        let crop = views::roi_crop(&disc, rows, cols, 2.0, 64).expect("the disc is found");
        assert_eq!(t.views.len(), 5);
        let roi = &t.views[0];
        assert_eq!((roi.rule, roi.view.as_str()), (0, "roi:optic disc:2:64"));
        assert_eq!(roi.crop, crop);
        assert_eq!(roi.objects, [0, 1]);
        assert_eq!(roi.logits.shape, [2, crop.h, crop.w]);
        for (k, o) in [0usize, 1].into_iter().enumerate() {
            let fin = &t.final_logits.data[o * plane..(o + 1) * plane];
            let pasted = views::paste_roi(
                crop,
                &roi.logits.data[k * crop.h * crop.w..(k + 1) * crop.h * crop.w],
                rows,
                cols,
            );
            assert_eq!(fin, &pasted[..], "object {o}");
            assert_eq!(fin[0], BACKGROUND_LOGIT);
        }
        // The vessels take the mean of the four tiles.
        let tiles = views::tile_crops(rows, cols, 2, 0.125);
        let mut acc = views::TileMean::new(rows, cols);
        for (i, v) in t.views[1..].iter().enumerate() {
            assert_eq!(v.crop, tiles[i]);
            assert_eq!(v.view, format!("tiles:2:0.125:{},{}", i / 2, i % 2));
            acc.add(v.crop, &v.logits.data);
        }
        assert_eq!(
            &t.final_logits.data[2 * plane..],
            &acc.finish(&t.logits.data[2 * plane..])[..]
        );
        assert_ne!(t.final_logits, t.logits, "the views changed something");

        // (b) and (c): a second call computes no context and gives the same result.
        let again = segment(&engine, &set, &frames).await;
        let s = engine.support_stats();
        assert_eq!((s.computed, s.in_memory), (6, 6), "{s:?}");
        assert_eq!(again.frames, seg.frames, "deterministic");
        assert_eq!(again.timings.support_context, std::time::Duration::ZERO);
        seg
    });
    let files = std::fs::read_dir(data.join("cache/support"))
        .unwrap()
        .count();
    assert_eq!(files, 6, "one cache file per view");

    // A restart loads every view's context from disk and gives the same result.
    rt().block_on(async {
        let engine = Engine::new(&cpu_config(&models), &data).unwrap();
        let seg = segment(&engine, &set, &frames).await;
        let s = engine.support_stats();
        assert_eq!((s.computed, s.disk_hits, s.disk_errors), (0, 6, 0), "{s:?}");
        assert_eq!(seg.frames, first.frames);
    });
}

#[test]
fn rules_whose_objects_are_absent_change_nothing() {
    let (frames, set) = fundus();
    let run = |extra: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let models = phantom_models(tmp.path(), extra);
        rt().block_on(async {
            let engine = Engine::new(&cpu_config(&models), &tmp.path().join("var")).unwrap();
            assert!(engine.refused().is_empty(), "{:?}", engine.refused());
            let seg = segment(&engine, &set, &frames).await;
            (seg, engine.support_stats())
        })
    };
    let (plain, s_plain) = run("");
    let (absent, s_absent) = run(ABSENT_RULES);
    assert_eq!((s_plain.computed, s_absent.computed), (1, 1));
    assert_eq!(absent.timings.view_passes, 0);
    assert_eq!(
        absent.frames, plain.frames,
        "masks, scores and tensors are equal"
    );
    let t = plain.frames[0].tensors.as_ref().unwrap();
    assert_eq!(t.final_logits, t.logits);
    assert!(t.views.is_empty());

    // The first pass does not depend on the rules either.
    let (viewed, _) = run(RULES);
    let tv = viewed.frames[0].tensors.as_ref().unwrap();
    assert_eq!(tv.logits, t.logits);
    assert_eq!(tv.low_res_logits, t.low_res_logits);
    assert_eq!(viewed.frames[0].iou_scores, plain.frames[0].iou_scores);
}

#[test]
fn weights_that_are_missing_or_wrong_refuse_the_bundle() {
    use sha2::{Digest, Sha256};
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let content = b"not really a checkpoint, but bytes with a known hash\n".repeat(1000);
    let sha = hex::encode(Sha256::digest(&content));
    let size = content.len();
    let setup = "scripts/run (or: python3 scripts/model/fetch_weights.py models/NAME)";
    let weights = |file: &str, sha: &str, size: usize| {
        format!(
            "[weights]\nfile = {file:?}\nsha256 = {sha:?}\nsize = {size}\n\
             source = \"a test\"\nsetup = {setup:?}\n"
        )
    };
    let bundle = |name: &str, file_on_disk: Option<&[u8]>, manifest_extra: String| {
        let dir = models.join(name);
        make_test_bundle(&dir, name, "1");
        if let Some(bytes) = file_on_disk {
            std::fs::write(dir.join("ckpt.pth"), bytes).unwrap();
        }
        append_manifest(&dir, &manifest_extra);
    };
    make_test_bundle(&models.join("plain"), "plain", "1");
    bundle("w-ok", Some(&content), weights("ckpt.pth", &sha, size));
    bundle("w-missing", None, weights("ckpt.pth", &sha, size));
    let mut short = content.clone();
    short.pop();
    bundle("w-size", Some(&short), weights("ckpt.pth", &sha, size));
    let mut flipped = content.clone();
    flipped[7] ^= 1;
    bundle("w-sha", Some(&flipped), weights("ckpt.pth", &sha, size));
    bundle(
        "w-escape",
        Some(&content),
        weights("../w-ok/ckpt.pth", &sha, size),
    );

    let engine = Engine::new(&cpu_config(&models), &tmp.path().join("var"))
        .expect("engine starts despite bad bundles");
    assert_eq!(engine.bundle_names(), ["plain", "w-ok"]);
    let b = engine.bundle("w-ok").unwrap();
    let w = b.manifest.weights.as_ref().unwrap();
    assert_eq!(
        (w.file.as_str(), w.size, w.source.as_str()),
        ("ckpt.pth", size as u64, "a test")
    );
    assert!(engine.bundle("plain").unwrap().manifest.weights.is_none());

    let refused: Vec<(String, String)> = engine
        .refused()
        .iter()
        .map(|r| {
            (
                r.dir.file_name().unwrap().to_string_lossy().into_owned(),
                r.reason.clone(),
            )
        })
        .collect();
    let names: Vec<&str> = refused.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        names,
        ["w-escape", "w-missing", "w-sha", "w-size"],
        "{refused:#?}"
    );
    for (dir, reason) in &refused {
        if dir == "w-escape" {
            assert!(
                reason.contains("must be a relative path inside the bundle"),
                "{reason}"
            );
            continue;
        }
        let file = models.join(dir).join("ckpt.pth");
        assert!(reason.contains(&file.display().to_string()), "{reason}");
        assert!(
            reason.contains(&format!("expected sha256 {sha}")),
            "{reason}"
        );
        assert!(reason.contains(setup), "{reason}");
        let problem = match dir.as_str() {
            "w-missing" => "is missing".to_string(),
            "w-size" => format!("has {} bytes", size - 1),
            _ => format!("has sha256 {}", hex::encode(Sha256::digest(&flipped))),
        };
        assert!(reason.contains(&problem), "{dir}: {reason}");
    }
}

/// `[mirror]` on the cup alone, beside the roi and tiles rules.
const MIRROR: &str = r#"
[mirror]
objects = ["Optic Cup"]
note = "test mirror"
"#;

/// The CPU config with one frame per image_encoder run: a crop's embeddings then do not depend
/// on which crops share its batch (the mirrored call below batches its roi crop with tiles the
/// first call's second look skips), so the symmetry can be checked bit for bit.
fn one_at_a_time(models: &Path) -> EngineConfig {
    EngineConfig {
        batch: 1,
        ..cpu_config(models)
    }
}

#[test]
fn the_mirrored_second_look_is_cached_symmetric_and_only_for_its_objects() {
    let (frames, set) = fundus();
    let (rows, cols) = (frames[0].rows, frames[0].cols);
    let plane = rows * cols;
    let flip = |v: &[f32]| -> Vec<f32> {
        v.chunks_exact(cols)
            .flat_map(|r| r.iter().rev().copied())
            .collect()
    };
    let mirrored_frames: Vec<Frame> = frames.iter().map(proxyseg::engine::mirror::frame).collect();
    let mirrored_set = proxyseg::engine::mirror::support_set(&set);
    let tmp = tempfile::tempdir().unwrap();
    let (plain, with, back, s) = rt().block_on(async {
        let plain_engine = Engine::new(
            &one_at_a_time(&phantom_models(&tmp.path().join("a"), RULES)),
            &tmp.path().join("var-a"),
        )
        .unwrap();
        let plain = segment(&plain_engine, &set, &frames).await;
        let engine = Engine::new(
            &one_at_a_time(&phantom_models(
                &tmp.path().join("b"),
                &format!("{RULES}{MIRROR}"),
            )),
            &tmp.path().join("var-b"),
        )
        .unwrap();
        let b = engine.bundle("phantom-tiny").unwrap();
        assert_eq!(b.manifest.mirror.as_ref().unwrap().note, "test mirror");
        let with = segment(&engine, &set, &frames).await;
        // the mirrored set's first pass and roi contexts, once (the vessels' tiles are not the
        // listed cup's: the second look skips them); a second call computes none
        assert_eq!(engine.support_stats().computed, 8);
        let again = segment(&engine, &set, &frames).await;
        assert_eq!(engine.support_stats().computed, 8);
        assert_eq!(again.frames, with.frames, "deterministic");
        assert_eq!(with.timings.frames, 1);
        assert_eq!(
            with.timings.view_passes, 6,
            "the first look's roi crop and tiles, the second look's roi crop"
        );
        // `[engine] mirror = false`: the same bundle takes one look.
        let mut off = one_at_a_time(&tmp.path().join("b").join("models"));
        off.mirror = false;
        let one = Engine::new(&off, &tmp.path().join("var-c")).unwrap();
        let single = segment(&one, &set, &frames).await;
        assert_eq!(
            single.frames, plain.frames,
            "mirror off: the first look alone"
        );
        assert_eq!(single.frames[0].look_agreement, vec![None; 3]);
        assert_eq!(one.support_stats().computed, 6);
        // The mirrored frame with the mirrored set: its two looks are this call's, swapped.
        let back = segment(&engine, &mirrored_set, &mirrored_frames).await;
        (plain, with, back, engine.support_stats())
    });
    // The mirrored set's own first pass and roi contexts are the ones cached as the set's
    // mirror (same version "<v>-mirror", same content); new are its tiles (its first look
    // runs them) and its mirror's ("<v>-mirror-mirror") first pass and roi.
    assert_eq!(s.computed, 14);
    let (p, w, m) = (
        plain.frames[0].tensors.as_ref().unwrap(),
        with.frames[0].tensors.as_ref().unwrap(),
        back.frames[0].tensors.as_ref().unwrap(),
    );
    assert_eq!(
        w.logits, p.logits,
        "the first look's first pass is unchanged"
    );
    for o in [0, 2] {
        assert_eq!(
            w.final_logits.data[o * plane..(o + 1) * plane],
            p.final_logits.data[o * plane..(o + 1) * plane],
            "object {o} is not listed: the first look's logits"
        );
        assert_eq!(with.frames[0].masks[o], plain.frames[0].masks[o]);
    }
    // the looks' agreement: the cup's alone, the same either way round
    let agree = &with.frames[0].look_agreement;
    assert!(agree[0].is_none() && agree[2].is_none(), "{agree:?}");
    assert!(
        agree[1].is_some_and(|a| (0.0..=1.0).contains(&a)),
        "{agree:?}"
    );
    assert_eq!(back.frames[0].look_agreement, *agree);
    let cup = |t: &proxyseg::engine::FrameTensors| t.final_logits.data[plane..2 * plane].to_vec();
    assert_ne!(cup(w), cup(p), "the cup took the second look");
    assert_eq!(
        cup(m),
        flip(&cup(w)),
        "mirrored input, mirrored output: the second look is mirrored back"
    );
    let want: Vec<u8> = cup(w).iter().map(|&v| u8::from(v > 0.0)).collect();
    assert_eq!(
        with.frames[0].masks[1].data, want,
        "the cup's mask is the merged logits > 0"
    );
}
