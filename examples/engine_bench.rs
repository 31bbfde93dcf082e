//! Benchmark harness for scripts/bench/engine/run: `cargo run --release --example engine_bench`
//! runs the benchmark; with `decode-profile` as argument, the decode profile of BENCH_FILE.
//!
//! Environment: BENCH_MODELS (models folder), BENCH_BUNDLE (bundle name), BENCH_SUPPORT
//! (support-set folder), BENCH_INPUTS (comma-separated DICOM files), BENCH_REPEAT (default 5),
//! BENCH_THREADS (intra-op threads, default 2), BENCH_PROVIDERS (default "cpu"), BENCH_INT8
//! (`[engine] int8`: 1 runs the bundle's CPU int8 graphs and labels the rows "rust-int8";
//! default 0, the float graphs), BENCH_SPINNING (`[engine] spinning`: 1 lets ONNX Runtime's
//! idle threads spin and adds "-spin" to the label; default 0, as the daemon), BENCH_MIRROR
//! (`[engine] mirror`: 0 takes one look where the manifest has a `[mirror]` table and adds
//! "-onelook" to the label; default 1, as the daemon), BENCH_OUT (JSON lines file). Per input: decode (file -> display frames) and each engine stage, in ms
//! per frame (the stages count the first pass, and the `[mirror]` second look when it runs; `views` is everything of the resolution views'
//! second passes on crops, `view_passes` the crops per frame), images/s over the whole wall
//! time, and the process's peak RSS at the end.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proxyseg::config::EngineConfig;
use proxyseg::dicom::pixels::frames_from_file;
use proxyseg::engine::offline::load_support_set;
use proxyseg::engine::{Engine, StageTimings};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n.max(1) as f64
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("decode-profile") {
        decode_profile();
    } else {
        engine_benchmark();
    }
}

fn engine_benchmark() {
    let (Some(models), Some(bundle), Some(support), Some(inputs)) = (
        env("BENCH_MODELS"),
        env("BENCH_BUNDLE"),
        env("BENCH_SUPPORT"),
        env("BENCH_INPUTS"),
    ) else {
        panic!("set BENCH_MODELS, BENCH_BUNDLE, BENCH_SUPPORT and BENCH_INPUTS (scripts/bench/engine/run does)");
    };
    let repeat: usize = env("BENCH_REPEAT")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let threads: usize = env("BENCH_THREADS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let providers: Vec<String> = env("BENCH_PROVIDERS")
        .unwrap_or("cpu".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let int8 = env("BENCH_INT8").is_some_and(|v| v == "1");
    let spinning = env("BENCH_SPINNING").is_some_and(|v| v == "1");
    let mirror = env("BENCH_MIRROR").is_none_or(|v| v != "0");
    let data = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        providers: providers.clone(),
        models_dir: PathBuf::from(&models),
        intra_threads: threads,
        spinning,
        workers: 1,
        int8,
        mirror,
        ..EngineConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::new(&cfg, data.path()).expect("engine");
    let b = engine.bundle(&bundle).unwrap_or_else(|e| panic!("{e}"));
    let int8_graphs = b
        .providers()
        .iter()
        .filter(|(g, _)| b.graph(*g).is_some_and(|g| g.int8))
        .count();
    if int8 && int8_graphs == 0 {
        panic!("BENCH_INT8=1 but {bundle} loaded no int8 graph (manifest [int8]; scripts/model/derive_int8.py)");
    }
    let label = match (int8, spinning) {
        (false, false) => "rust",
        (true, false) => "rust-int8",
        (false, true) => "rust-spin",
        (true, true) => "rust-int8-spin",
    };
    let one_look = !mirror && b.manifest.mirror.is_some();
    let label = format!("{label}{}", if one_look { "-onelook" } else { "" });
    let provider = b
        .providers()
        .iter()
        .map(|(g, p)| format!("{}={}", g.as_str(), p))
        .collect::<Vec<_>>()
        .join(" ");
    let (set, _) = load_support_set(std::path::Path::new(&support)).expect("support set");
    // 2 when the [mirror] second look runs for this set (`[engine] mirror` and a listed object)
    let labels: Vec<&str> = set.objects.iter().map(|o| o.label.as_str()).collect();
    let looks = match &b.manifest.mirror {
        Some(r) if mirror && !r.object_indices(&labels).is_empty() => 2,
        _ => 1,
    };
    let t = Instant::now();
    let ctx_frames =
        frames_from_file(std::path::Path::new(inputs.split(',').next().unwrap())).unwrap();
    rt.block_on(engine.segment(&bundle, &set, ctx_frames))
        .expect("warm-up");
    let warmup_s = t.elapsed().as_secs_f64();
    // one context per view the set needs (the first pass, and each roi or tile view)
    let contexts = engine.support_stats().computed;
    let mut out = match env("BENCH_OUT") {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap(),
        ) as Box<dyn Write>,
        None => Box::new(std::io::stdout()),
    };
    for input in inputs.split(',') {
        let name = std::path::Path::new(input)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut decode = Duration::ZERO;
        let mut stages = StageTimings::default();
        let mut frames = 0;
        let mut size = (0, 0, 0);
        let wall = Instant::now();
        for _ in 0..repeat {
            let t0 = Instant::now();
            let f = frames_from_file(std::path::Path::new(input)).expect("decode");
            decode += t0.elapsed();
            size = (f[0].rows, f[0].cols, f.len());
            let seg = rt
                .block_on(engine.segment(&bundle, &set, f))
                .expect("segment");
            frames += seg.frames.len();
            stages.add(&seg.timings);
        }
        let wall = wall.elapsed();
        writeln!(
            out,
            "{{\"impl\": \"{label}\", \"input\": \"{name}\", \"rows\": {}, \"cols\": {}, \"frames_per_file\": {}, \"frames\": {frames}, \
             \"decode_ms\": {:.3}, \"preprocess_ms\": {:.3}, \"image_encoder_ms\": {:.3}, \"prompt_generator_ms\": {:.3}, \
             \"mask_decoder_ms\": {:.3}, \"postprocess_ms\": {:.3}, \"views_ms\": {:.3}, \"view_passes\": {:.2}, \"total_ms\": {:.3}, \"images_per_s\": {:.3}, \
             \"peak_rss_mb\": {:.1}, \"looks\": {looks}, \"threads\": {threads}, \"providers\": \"{provider}\", \"support_context_s\": {warmup_s:.3}}}",
            size.0,
            size.1,
            size.2,
            ms(decode, frames),
            ms(stages.preprocess, frames),
            ms(stages.image_encoder, frames),
            ms(stages.prompt_generator, frames),
            ms(stages.mask_decoder, frames),
            ms(stages.postprocess, frames),
            ms(stages.views, frames),
            stages.view_passes as f64 / frames.max(1) as f64,
            ms(wall, frames),
            frames as f64 / wall.as_secs_f64(),
            peak_rss_mb(),
        )
        .unwrap();
    }
    let s = engine.support_stats();
    assert_eq!(
        s.computed, contexts,
        "the support contexts are computed once, at the warm-up, for the whole benchmark: {s:?}"
    );
}

/// Where decoding time goes for one file (BENCH_FILE): open + parse, pixel decode, display.
fn decode_profile() {
    use dicom_pixeldata::PixelDecoder;
    let Some(file) = env("BENCH_FILE") else {
        eprintln!("decode_profile: set BENCH_FILE to a DICOM file");
        return;
    };
    let n = 10;
    let (mut open, mut dec, mut all) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        let obj = dicom_object::open_file(&file).unwrap();
        open += t.elapsed();
        let t = Instant::now();
        let d = obj.decode_pixel_data().unwrap();
        std::hint::black_box(d.data().len());
        dec += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(proxyseg::dicom::pixels::frames_from_object(&obj).unwrap());
        all += t.elapsed();
    }
    eprintln!(
        "open {:.1} ms, decode_pixel_data {:.1} ms, frames_from_object {:.1} ms",
        ms(open, n),
        ms(dec, n),
        ms(all, n)
    );
}
