//! Harness for scripts/bench/decode/run: decodes one DICOM file into display frames and prints
//! one JSON line with the frame count, the wall time and the process's peak RSS.
//!
//! `cargo run --release --example decode_memory -- stream FILE` reads frame by frame the way
//! the pipeline worker does ([`FrameSource`]: one frame decoded and converted at a time);
//! `all FILE` converts every frame and keeps them ([`frames_from_file`], what the worker did
//! before issue 16 item 1 without its whole-object decode copy).

use proxyseg::dicom::pixels::{frames_from_file, FrameSource};
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
        / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, file) = match args.as_slice() {
        [_, m, f] if m == "stream" || m == "all" => (m.clone(), f.clone()),
        _ => {
            eprintln!("usage: decode_memory stream|all FILE");
            std::process::exit(2);
        }
    };
    let path = std::path::Path::new(&file);
    let t0 = Instant::now();
    // A checksum of every display value, so that neither mode can skip work.
    let (frames, checksum) = if mode == "stream" {
        let src = FrameSource::open(path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut sum = 0f64;
        for f in 0..src.len() {
            let frame = src.frame(f).unwrap_or_else(|e| panic!("{file}: {e}"));
            sum += frame.data.iter().map(|&v| v as f64).sum::<f64>();
        }
        (src.len() as usize, sum)
    } else {
        let all = frames_from_file(path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let sum = all
            .iter()
            .map(|f| f.data.iter().map(|&v| v as f64).sum::<f64>())
            .sum();
        (all.len(), sum)
    };
    println!(
        "{}",
        serde_json::json!({
            "tool": format!("proxyseg {mode}"),
            "file": file,
            "frames": frames,
            "ms": t0.elapsed().as_secs_f64() * 1000.0,
            "peak_rss_mib": peak_rss_mib(),
            "checksum": checksum,
        })
    );
}
