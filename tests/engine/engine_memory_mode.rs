//! The bundled model's memory mode (contract 1 with `[memory]`, engine::memory::proxy) against
//! the Python reference: `models/litemedsam-ppg/fixtures/memory.json`, written by
//! `python -m proxyseg_model.memory_export --fixtures 8`, holds an ultrasound phantom clip, one
//! support pair and ONNX Runtime's mask logits per frame from the reference frame loop (which
//! PyTorch already matches). The Rust frame loop and bank must reproduce them over the clip;
//! and the same clip through `Engine::segment_sequence` in two chunks must give the masks of
//! one call. That stills keep the frame-by-frame path (no memory graphs) is what
//! `engine_parity_views` checks on the same bundle: its fixtures are frame-by-frame results.
//!
//! Needs the real bundle with its checkpoint `lite_medsam.pth` (scripts/test fetches it before
//! cargo test runs); without it the test fails, it never skips.

use crate::harness::engine::*;
use proxyseg::dicom::pixels::Frame;
use proxyseg::engine::infer::{support_context_of, StageTimings, Tensor};
use proxyseg::engine::memory::proxy::{revisit_first, track_frame};
use proxyseg::engine::memory::FirstFrame;
use proxyseg::engine::preprocess::Geometry;
use proxyseg::engine::{MemoryBank, SupportObject, SupportPair, SupportSet};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn bundle_dir() -> PathBuf {
    parity_bundle(
        "PROXYSEG_MEMORY_PARITY_BUNDLE",
        "models/litemedsam-ppg",
        "the bundle ships with the project; its memory graphs and fixtures come from \
         scripts/model: python -m proxyseg_model.memory_export --bundle ../../models/litemedsam-ppg \
         --fixtures 8",
    )
}

fn read_doc(bundle: &Path) -> Value {
    let p = bundle.join("fixtures/memory.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A fixture tensor as f32 values (u8 files widened) and its shape.
fn tensor(bundle: &Path, doc: &Value, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = &doc["tensors"][key];
    let shape: Vec<usize> = t["shape"]
        .as_array()
        .expect(key)
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let bytes = std::fs::read(bundle.join(t["file"].as_str().expect(key))).expect(key);
    let data: Vec<f32> = match t["dtype"].as_str() {
        Some("u8") => bytes.iter().map(|&b| f32::from(b)).collect(),
        Some("f32") => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => panic!("{key}: dtype {other:?}"),
    };
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{key}");
    (shape, data)
}

#[test]
fn rust_memory_loop_matches_the_python_reference() {
    let dir = bundle_dir();
    let doc = read_doc(&dir);
    let tol = doc["tolerance"]["mask_logits_max_abs"].as_f64().unwrap() as f32;
    let data = tempfile::tempdir().unwrap();
    let engine = engine_for(&dir, data.path());
    let name = doc["bundle"].as_str().unwrap();
    let b = engine.bundle(name).expect("bundle served");
    assert!(b.tracks_frames() && !b.always_tracks());
    let (fs, frames) = tensor(&dir, &doc, "frames");
    let (ss, simg) = tensor(&dir, &doc, "support_images");
    let (ms, smask) = tensor(&dir, &doc, "support_masks");
    let (ls, want) = tensor(&dir, &doc, "mask_logits");
    let (_, first_pass) = tensor(&dir, &doc, "first_pass_logits");
    assert_eq!(
        doc["revisit_first"].as_bool(),
        Some(true),
        "the shipped loop revisits frame 0"
    );
    // display values -> model input (pixel_mean 0, pixel_std 255), as the fixtures say
    let scale = |v: Vec<f32>| v.into_iter().map(|x| x / 255.0).collect::<Vec<f32>>();
    let ctx = support_context_of(
        &b,
        &Tensor::new(ss, scale(simg)).unwrap(),
        &Tensor::new(ms.clone(), smask).unwrap(),
        ms[1],
        1,
        None,
    )
    .expect("support context");
    let frames = scale(frames);
    let (n, per, per_out) = (
        fs[0],
        fs[1..].iter().product::<usize>(),
        ls[1..].iter().product::<usize>(),
    );
    let recent = doc["recent_frames"].as_u64().map(|v| v as usize);
    let mut bank = MemoryBank::new(b.manifest.memory.as_ref().unwrap(), n, recent);
    let mut timings = StageTimings::default();
    let mut worst = 0f32;
    let mut revisited = Vec::new();
    let size = fs[2];
    for t in 0..n {
        let image = Tensor::new(
            fs[1..].iter().fold(vec![1], |mut v, d| {
                v.push(*d);
                v
            }),
            frames[t * per..(t + 1) * per].to_vec(),
        )
        .unwrap();
        let (step, prompt) = track_frame(&b, &ctx, &mut bank, &image, &mut timings).expect("frame");
        // frame 0's first pass, then (after frame r) its revisit, stand for it in the fixtures
        let expected = if t == 0 {
            &first_pass[..]
        } else {
            &want[t * per_out..(t + 1) * per_out]
        };
        let d = max_abs(&step.mask_logits.data, expected);
        worst = worst.max(d);
        assert!(d <= tol, "frame {t}: max abs diff {d} > {tol}");
        if t == 0 {
            bank.keep_first(FirstFrame {
                embeddings: step.embeddings.clone(),
                prompt,
                // the bundle's decoder takes the frame itself (decoder_image): kept for the revisit
                image: image.clone(),
                geometry: Geometry::new(size, size, size),
            });
        }
        if let Some((again, _)) = revisit_first(&b, &mut bank, &mut timings).expect("revisit") {
            let d = max_abs(&again.mask_logits.data, &want[..per_out]);
            worst = worst.max(d);
            assert!(
                d <= tol,
                "frame 0 revisited after frame {t}: max abs diff {d} > {tol}"
            );
            revisited.push(t);
        }
    }
    let r = bank
        .revisit_frame()
        .expect("the clip is long enough to revisit");
    assert_eq!(
        revisited,
        vec![r],
        "frame 0 is revisited once, after frame {r}"
    );
    let spec = b.manifest.memory.as_ref().unwrap();
    assert!(bank.held_frames() <= spec.frame_slots);
    eprintln!("memory mode parity over {n} frames: max abs diff {worst:e} (tolerance {tol})");
}

/// The clip's frames as display frames and its support pair as a support set.
fn clip_and_set(dir: &Path, doc: &Value) -> (Vec<Frame>, SupportSet) {
    let (fs, frames) = tensor(dir, doc, "frames");
    let (ss, simg) = tensor(dir, doc, "support_images");
    let (ms, smask) = tensor(dir, doc, "support_masks");
    let (s, plane) = (fs[2], fs[2] * fs[3]);
    // planar u8 display values, as the fixtures hold them
    let frame = |v: &[f32]| Frame {
        index: 0,
        rows: s,
        cols: s,
        channels: 3,
        data: v.to_vec(),
    };
    let clip = (0..fs[0])
        .map(|t| frame(&frames[t * 3 * plane..(t + 1) * 3 * plane]))
        .collect();
    let objects: Vec<SupportObject> = doc["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| SupportObject {
            label: o.as_str().unwrap().into(),
            category: None,
            property_type: None,
            color: None,
        })
        .collect();
    let pairs = (0..ss[0])
        .map(|p| SupportPair {
            image: frame(&simg[p * 3 * plane..(p + 1) * 3 * plane]),
            masks: (0..ms[1])
                .map(|k| {
                    let at = (p * ms[1] + k) * plane;
                    proxyseg::engine::Mask {
                        rows: s,
                        cols: s,
                        data: smask[at..at + plane].iter().map(|&v| v as u8).collect(),
                    }
                })
                .collect(),
        })
        .collect();
    let set = SupportSet {
        name: "memory-clip".into(),
        version: "1".into(),
        objects,
        pairs,
    };
    (clip, set)
}

#[test]
fn a_sequence_in_chunks_equals_one_call() {
    let dir = bundle_dir();
    let doc = read_doc(&dir);
    let data = tempfile::tempdir().unwrap();
    let engine = engine_for(&dir, data.path());
    let name = doc["bundle"].as_str().unwrap().to_string();
    let (clip, set) = clip_and_set(&dir, &doc);
    let n = clip.len();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let masks = |seg: &proxyseg::engine::Segmentation| -> Vec<Vec<Vec<u8>>> {
        seg.frames
            .iter()
            .map(|f| f.masks.iter().map(|m| m.data.clone()).collect())
            .collect()
    };
    // a call's revised frames (frame 0 after its revisit) replace what was given for them
    let revise = |m: &mut Vec<Vec<Vec<u8>>>, seg: &proxyseg::engine::Segmentation| {
        for r in &seg.revised {
            m[r.index] = r.masks.iter().map(|x| x.data.clone()).collect();
        }
    };
    let one = rt.block_on(async {
        let bank = engine
            .memory_bank(&name, n, None)
            .unwrap()
            .expect("memory mode");
        engine
            .segment_sequence(&name, &set, clip.clone(), bank)
            .await
            .expect("one call")
            .0
    });
    assert_eq!(
        one.revised.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0],
        "one call revises frame 0 once"
    );
    let (first_pass, mut whole) = (masks(&one)[0].clone(), masks(&one));
    revise(&mut whole, &one);
    let chunked = rt.block_on(async {
        let bank = engine.memory_bank(&name, n, None).unwrap().unwrap();
        let (a, bank) = engine
            .segment_sequence(&name, &set, clip[..3].to_vec(), bank)
            .await
            .expect("chunk 1");
        let (b, _) = engine
            .segment_sequence(&name, &set, clip[3..].to_vec(), bank)
            .await
            .expect("chunk 2");
        // frames 0..3 come first; frame 0 is revised in the second call, after frame r
        assert!(a.revised.is_empty(), "revised before frame r");
        assert_eq!(b.revised.len(), 1);
        let mut m = masks(&a);
        assert_eq!(m[0], first_pass, "frame 0's first pass");
        m.extend(masks(&b));
        revise(&mut m, &b);
        m
    });
    assert_eq!(whole, chunked, "chunks must not change the result");
    assert!(
        whole.iter().flatten().any(|m| m.contains(&1)),
        "the memory mode found nothing on the clip"
    );
}
