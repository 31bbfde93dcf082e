//! Contract 2 (SAM 2 + PPG with a memory bank) in the Rust engine, on the real SAM 2.1
//! hiera-tiny architecture with random weights (no SAM 2 checkpoint can be fetched here):
//! the bundle and its 16-frame fixtures come from scripts/model (`sam2_export`), where PyTorch
//! (SAM 2's own modules) and ONNX Runtime already agree; here the Rust frame loop and bank
//! must reproduce ONNX Runtime's logits over the whole clip.

use crate::harness::engine::*;
use proxyseg::engine::infer::{support_context_of, StageTimings, Tensor};
use proxyseg::engine::memory::track::track_frame;
use proxyseg::engine::{Engine, MemoryBank};

#[test]
fn rust_frame_loop_matches_onnxruntime_over_a_16_frame_clip() {
    let dir = sam2_random_bundle();
    let doc = read_fixtures(&dir);
    let tol = doc["tolerance"]["mask_logits_max_abs"].as_f64().unwrap() as f32;
    let data = tempfile::tempdir().unwrap();
    let engine = engine_for(&dir, data.path());
    let b = engine
        .bundle("sam2-random")
        .expect("contract-2 bundle served");
    assert!(b.tracks_frames());
    let (fs, frames) = clip_tensor(&dir, &doc, "frames");
    let (ss, simg) = clip_tensor(&dir, &doc, "support_images");
    let (ms, smask) = clip_tensor(&dir, &doc, "support_masks");
    let (ls, want) = clip_tensor(&dir, &doc, "mask_logits");
    let k = ms[1];
    let ctx = support_context_of(
        &b,
        &Tensor::new(ss, simg).unwrap(),
        &Tensor::new(ms, smask).unwrap(),
        k,
        1,
        None,
    )
    .expect("support context");
    let n = fs[0];
    let per: usize = fs[1..].iter().product();
    let per_out: usize = ls[1..].iter().product();
    let recent = doc["recent_frames"].as_u64().map(|v| v as usize);
    let mut bank = MemoryBank::new(b.manifest.memory.as_ref().unwrap(), n, recent);
    let mut timings = StageTimings::default();
    let mut worst = 0f32;
    for t in 0..n {
        let image = Tensor::new(
            vec![1, 3, fs[2], fs[3]],
            frames[t * per..(t + 1) * per].to_vec(),
        )
        .unwrap();
        let step = track_frame(&b, &ctx, &mut bank, &image, &mut timings).expect("frame");
        let d = max_abs(
            &step.mask_logits.data,
            &want[t * per_out..(t + 1) * per_out],
        );
        assert!(d <= tol, "frame {t}: logits differ by {d} (> {tol})");
        worst = worst.max(d);
    }
    println!("Rust vs ONNX Runtime over {n} frames: max abs diff {worst:.2e}");
    // the bank holds the conditioning frame plus what the next frames can still name
    assert!(bank.held_frames() <= b.manifest.memory.as_ref().unwrap().pointer_slots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_segmented_in_chunks_equals_one_call() {
    let dir = sam2_random_bundle();
    let data = tempfile::tempdir().unwrap();
    let engine = engine_for(&dir, data.path());
    let set = disc_set("discs", "1", 2);
    let frames: Vec<_> = (0..7)
        .map(|i| disc_frame(96, 128, 40.0 + i as f32 * 2.0, 60.0 + i as f32, 18.0).0)
        .collect();
    let whole = engine
        .segment("sam2-random", &set, frames.clone())
        .await
        .expect("one call");
    assert_eq!(whole.frames.len(), 7);
    assert!(whole
        .frames
        .iter()
        .all(|f| f.masks.len() == 1 && f.masks[0].rows == 96 && f.masks[0].cols == 128));
    let mut bank = engine
        .memory_bank("sam2-random", 7, None)
        .unwrap()
        .expect("a contract-2 bundle has a bank");
    let mut chunked = Vec::new();
    for chunk in frames.chunks(3) {
        let (seg, next) = engine
            .segment_sequence("sam2-random", &set, chunk.to_vec(), bank)
            .await
            .expect("chunk");
        bank = next;
        chunked.extend(seg.frames);
    }
    assert_eq!(
        chunked.iter().map(|f| f.index).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    for (a, b) in whole.frames.iter().zip(&chunked) {
        assert_eq!(a.masks, b.masks, "frame {}", a.index);
        assert_eq!(a.iou_scores, b.iou_scores, "frame {}", a.index);
    }
    // a contract-1 bundle has no bank
    let tiny = tempfile::tempdir().unwrap();
    make_test_bundle(&tiny.path().join("t"), "t", "1");
    let e1 = Engine::new(&cpu_config(tiny.path()), &tiny.path().join("var")).unwrap();
    assert!(e1.memory_bank("t", 7, None).unwrap().is_none());
}
