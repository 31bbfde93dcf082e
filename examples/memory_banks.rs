//! Harness for scripts/bench/sam2/run (issue 15): a bundle with memory graphs on the CPU (a
//! contract-2 SAM 2 bundle, or a contract-1 bundle's memory mode such as litemedsam-ppg).
//!
//! `cargo run --release --example memory_banks -- MODELS BUNDLE SERIES FRAMES` prints one JSON
//! line: milliseconds per frame in memory mode (one sequence) and frame by frame (SAM 2: each
//! frame a sequence of one, the prompt generator on every frame, memory attention over the
//! prompt alone; contract 1: the still path, `Engine::segment`), then SERIES cine series kept
//! open side by side (one bank each, frames round robin, as concurrent jobs would hold them):
//! the process's RSS growth per open series against the bytes each bank holds, after every
//! round.

use proxyseg::config::EngineConfig;
use proxyseg::dicom::pixels::Frame;
use proxyseg::engine::{Engine, Mask, MemoryBank, SupportObject, SupportPair, SupportSet};
use std::time::Instant;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
        / 1024.0
}

/// A grey frame with a bright disc (moving with `t`) and its mask.
fn disc(t: usize, seed: usize) -> (Frame, Mask) {
    let (rows, cols) = (240, 320);
    let (cy, cx, r) = (
        100.0 + 2.0 * t as f32 + seed as f32,
        150.0 + 3.0 * t as f32,
        45.0,
    );
    let mut data = vec![30f32; rows * cols];
    let mut mask = vec![0u8; rows * cols];
    for y in 0..rows {
        for x in 0..cols {
            let noise = ((x * 7 + y * 13 + t * 31 + seed * 17) % 23) as f32;
            data[y * cols + x] += noise;
            if ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt() <= r {
                data[y * cols + x] = 200.0 + noise;
                mask[y * cols + x] = 1;
            }
        }
    }
    let frame = Frame {
        index: t as u32,
        rows,
        cols,
        channels: 1,
        data,
    };
    (
        frame,
        Mask {
            rows,
            cols,
            data: mask,
        },
    )
}

fn support() -> SupportSet {
    let pairs = (0..2)
        .map(|i| {
            let (image, mask) = disc(i * 5, 7);
            SupportPair {
                image,
                masks: vec![mask],
            }
        })
        .collect();
    SupportSet {
        name: "bench".into(),
        version: "1".into(),
        objects: vec![SupportObject {
            label: "disc".into(),
            ..Default::default()
        }],
        pairs,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, models, bundle, series, frames] = args.as_slice() else {
        eprintln!("usage: memory_banks MODELS BUNDLE SERIES FRAMES");
        std::process::exit(2);
    };
    let (series, frames): (usize, usize) = (series.parse().unwrap(), frames.parse().unwrap());
    let cfg = EngineConfig {
        providers: vec!["cpu".into()],
        models_dir: models.into(),
        intra_threads: 2,
        ..EngineConfig::default()
    };
    let data = std::env::temp_dir().join(format!("memory-banks-{}", std::process::id()));
    let engine = Engine::new(&cfg, &data).expect("engine");
    let set = support();
    let clip: Vec<Frame> = (0..frames).map(|t| disc(t, 0).0).collect();
    let bank = |n| engine.memory_bank(bundle, n, None).unwrap().expect("bank");
    // warm-up: sessions, support context
    engine
        .segment_sequence(bundle, &set, clip[..1].to_vec(), bank(1))
        .await
        .expect("warm-up");
    let t0 = Instant::now();
    engine
        .segment_sequence(bundle, &set, clip.clone(), bank(frames))
        .await
        .expect("memory mode");
    let memory_ms = t0.elapsed().as_secs_f64() * 1e3 / frames as f64;
    let always = engine.bundle(bundle).expect("bundle").always_tracks();
    if !always {
        engine
            .segment(bundle, &set, clip[..1].to_vec())
            .await
            .expect("warm-up");
    }
    let t0 = Instant::now();
    for f in &clip {
        if always {
            engine
                .segment_sequence(bundle, &set, vec![f.clone()], bank(1))
                .await
                .expect("per frame");
        } else {
            engine
                .segment(bundle, &set, vec![f.clone()])
                .await
                .expect("per frame");
        }
    }
    let per_frame_ms = t0.elapsed().as_secs_f64() * 1e3 / frames as f64;
    let base = rss_mib();
    let mut banks: Vec<Option<MemoryBank>> = (0..series).map(|_| Some(bank(frames))).collect();
    let mut rounds = Vec::new();
    for t in 0..frames {
        for (i, b) in banks.iter_mut().enumerate() {
            let f = disc(t, i).0;
            let (_, next) = engine
                .segment_sequence(bundle, &set, vec![f], b.take().unwrap())
                .await
                .expect("series frame");
            *b = Some(next);
        }
        let held: usize = banks.iter().flatten().map(MemoryBank::bytes).sum();
        rounds.push(serde_json::json!({
            "frame": t + 1,
            "rss_growth_per_series_mib": (rss_mib() - base) / series as f64,
            "bank_mib_per_series": held as f64 / series as f64 / 1048576.0,
        }));
    }
    let _ = std::fs::remove_dir_all(&data);
    println!(
        "{}",
        serde_json::json!({
            "bundle": bundle,
            "frames": frames,
            "series": series,
            "memory_ms_per_frame": memory_ms,
            "per_frame_ms_per_frame": per_frame_ms,
            "rounds": rounds,
        })
    );
}
