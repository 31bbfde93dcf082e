//! The engine end to end on the contract-conforming test bundle (real onnxruntime from .venv):
//! support context computed once and reused (memory, disk, restart), new version recomputed,
//! bad bundles refused with reasons while good ones are served, clear errors, no panics.

use crate::harness::engine::*;
use proxyseg::engine::{Engine, EngineError, SupportSet};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn support_context_is_computed_once_per_version_and_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("test-tiny"), "test-tiny", "1");
    let data = tmp.path().join("var");
    let cfg = cpu_config(&models);
    rt().block_on(async {
        let engine = Engine::new(&cfg, &data).expect("engine starts");
        assert_eq!(
            engine.bundle_names(),
            vec!["test-tiny".to_string()],
            "refused: {:?}",
            engine.refused()
        );
        let set = disc_set("discs", "v1", 3);
        for i in 0..10 {
            let (frame, truth) = disc_frame(120, 100, 50.0 + i as f32, 50.0, 25.0);
            let seg = engine
                .segment("test-tiny", &set, vec![frame])
                .await
                .expect("segment");
            assert_eq!(seg.frames.len(), 1);
            let m = &seg.frames[0].masks[0];
            assert_eq!((m.rows, m.cols, m.data.len()), (120, 100, 12000));
            assert_eq!(truth.data.len(), m.data.len());
        }
        let s = engine.support_stats();
        assert_eq!(
            (s.computed, s.memory_hits, s.disk_hits),
            (1, 9, 0),
            "10 segmentations, one context: {s:?}"
        );

        let v2 = SupportSet {
            version: "v2".into(),
            ..disc_set("discs", "v2", 2)
        };
        engine
            .segment(
                "test-tiny",
                &v2,
                vec![disc_frame(64, 64, 30.0, 30.0, 10.0).0],
            )
            .await
            .unwrap();
        assert_eq!(
            engine.support_stats().computed,
            2,
            "a new version is computed again"
        );
        assert_eq!(
            engine.support_stats().in_memory,
            1,
            "the old version is dropped from memory"
        );
        // v2's two pairs are v1's first two: their images are not encoded again
        let s = engine.support_stats();
        assert_eq!(
            (s.embeddings_computed, s.embeddings_reused),
            (3, 2),
            "support images encoded once: {s:?}"
        );
    });
    let files = std::fs::read_dir(data.join("cache/support"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "one cache file per version");

    rt().block_on(async {
        let engine = Engine::new(&cfg, &data).expect("engine restarts");
        let set = disc_set("discs", "v1", 3);
        let frames = (0..5)
            .map(|i| disc_frame(80, 80, 40.0, 30.0 + i as f32, 15.0).0)
            .collect();
        let seg = engine.segment("test-tiny", &set, frames).await.unwrap();
        assert_eq!(
            seg.frames.iter().map(|f| f.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        let s = engine.support_stats();
        assert_eq!(
            (s.computed, s.disk_hits),
            (0, 1),
            "after a restart the context comes from disk: {s:?}"
        );
    });

    // The bundle replaced in place under the same version: the old context is not reused.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let g = models.join("test-tiny/support_encoder.onnx");
    std::fs::write(&g, std::fs::read(&g).unwrap()).unwrap();
    rt().block_on(async {
        let engine = Engine::new(&cfg, &data).expect("engine restarts");
        let set = disc_set("discs", "v1", 3);
        engine
            .segment(
                "test-tiny",
                &set,
                vec![disc_frame(30, 30, 15.0, 15.0, 5.0).0],
            )
            .await
            .unwrap();
        let s = engine.support_stats();
        assert_eq!(
            (s.computed, s.disk_hits),
            (1, 0),
            "a rewritten graph invalidates the context: {s:?}"
        );
    });
}

#[test]
fn concurrent_requests_compute_the_context_once() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("t"), "t", "1");
    let mut cfg = cpu_config(&models);
    cfg.workers = 2;
    rt().block_on(async {
        let engine = Engine::new(&cfg, &tmp.path().join("var")).unwrap();
        let set = disc_set("s", "1", 2);
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (e, s) = (engine.clone(), set.clone());
            tasks.push(tokio::spawn(async move {
                e.segment("t", &s, vec![disc_frame(50, 70, 20.0, 20.0, 8.0).0])
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let s = engine.support_stats();
        assert_eq!((s.computed, s.memory_hits), (1, 5), "{s:?}");
    });
}

#[test]
fn clear_errors_for_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("t"), "t", "1");
    rt().block_on(async {
        let engine = Engine::new(&cpu_config(&models), &tmp.path().join("var")).unwrap();
        let frame = || vec![disc_frame(32, 32, 10.0, 10.0, 5.0).0];
        let empty = SupportSet {
            pairs: vec![],
            ..disc_set("empty", "1", 1)
        };
        match engine.segment("t", &empty, frame()).await {
            Err(e @ EngineError::EmptySupportSet { .. }) => assert!(
                e.to_string().contains("\"empty\" has no image/mask pairs"),
                "{e}"
            ),
            other => panic!("expected EmptySupportSet, got {other:?}"),
        }
        let too_many = disc_set("big", "1", 5);
        let e = engine
            .segment("t", &too_many, frame())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("5 pairs, but bundle t accepts at most 4"), "{e}");
        let mut blank = disc_set("blank", "1", 1);
        blank.pairs[0].masks[0].data.fill(0);
        let e = engine
            .segment("t", &blank, frame())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty mask in every pair"), "{e}");
        let e = engine
            .segment("nope", &disc_set("s", "1", 1), frame())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"nope\" is not served") && e.contains("[\"t\"]"),
            "{e}"
        );
        let e = engine
            .segment("t", &disc_set("s", "1", 1), vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no frames"), "{e}");
        let mut bad = disc_frame(8, 8, 4.0, 4.0, 2.0).0;
        bad.data.pop();
        let e = engine
            .segment("t", &disc_set("s", "1", 1), vec![bad])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("frame 0 is malformed: 8x8x1 with 63 values"),
            "{e}"
        );
    });
}

#[test]
fn bad_bundles_are_refused_with_reasons_and_good_ones_served() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("good"), "good", "1");
    let edit = |dir: &str, from: &str, to: &str| {
        make_test_bundle(&models.join(dir), dir, "1");
        let p = models.join(dir).join("manifest.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{from} not in manifest");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    };
    edit("dim", "embed_dim = 8", "embed_dim = 16");
    edit("contract", "contract = 1", "contract = 3");
    edit("family", "contract = 1", "contract = 2");
    edit(
        "missing",
        "mask_decoder = \"mask_decoder.onnx\"",
        "mask_decoder = \"gone.onnx\"",
    );
    edit("toml", "family = \"sam\"", "family = ");
    // Right manifest, wrong graph: the prompt generator's graph swapped for the mask decoder.
    make_test_bundle(&models.join("swap"), "swap", "1");
    std::fs::copy(
        models.join("swap/mask_decoder.onnx"),
        models.join("swap/prompt_generator.onnx"),
    )
    .unwrap();
    // metadata_props disagree: graphs from another bundle name.
    make_test_bundle(&models.join("meta"), "other-name", "1");
    let p = models.join("meta/manifest.toml");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("name = \"other-name\"", "name = \"meta\""),
    )
    .unwrap();

    let engine = Engine::new(&cpu_config(&models), &tmp.path().join("var"))
        .expect("engine starts despite bad bundles");
    assert_eq!(engine.bundle_names(), vec!["good".to_string()]);
    let reasons: Vec<(String, String)> = engine
        .refused()
        .iter()
        .map(|r| {
            (
                r.dir.file_name().unwrap().to_string_lossy().into_owned(),
                r.reason.clone(),
            )
        })
        .collect();
    let expect = [
        ("contract", "contract = 3 but this engine implements contracts 1 and 2"),
        ("dim", "metadata_props embed_dim = \"8\" but the manifest says 16"),
        ("family", "family = \"sam\" does not go with contract = 2"),
        ("meta", "metadata_props name = \"other-name\" but the manifest says \"meta\""),
        ("missing", "mask_decoder graph file is missing"),
        ("swap", "inputs are [\"image_embeddings\", \"prompt_tokens\"] but the contract says [\"image_embeddings\", \"support_keys\", \"support_values\"]"),
        ("toml", "is not a valid manifest"),
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    for ((dir, reason), (want_dir, want)) in reasons.iter().zip(expect) {
        assert_eq!(dir, want_dir);
        assert!(reason.contains(want), "{dir}: {reason}");
    }
}

#[test]
fn default_providers_fall_back_to_cpu_and_say_why() {
    use proxyseg::engine::{GraphKind, Provider};
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("t"), "t", "1");
    let cfg = proxyseg::config::EngineConfig {
        models_dir: models,
        ..Default::default()
    };
    assert_eq!(cfg.providers, ["tensorrt", "cuda", "cpu"]);
    let engine = Engine::new(&cfg, &tmp.path().join("var")).unwrap();
    let b = engine.bundle("t").unwrap();
    for kind in GraphKind::ALL {
        let g = b.graph(kind).expect("a contract-1 graph");
        assert_eq!(g.provider.active, Provider::Cpu, "{kind:?}");
        let skipped: Vec<Provider> = g.provider.skipped.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            skipped,
            [Provider::TensorRt, Provider::Cuda],
            "{kind:?}: {:?}",
            g.provider
        );
        assert!(g
            .provider
            .skipped
            .iter()
            .all(|(_, why)| why.contains("not built into this ONNX Runtime library")));
    }
    // and it segments
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(engine.segment(
            "t",
            &disc_set("s", "1", 1),
            vec![disc_frame(40, 40, 20.0, 20.0, 8.0).0],
        ))
        .unwrap();
}

/// Graph runs and pixel work happen on blocking threads: an async task on a single-threaded
/// runtime keeps ticking while a long segmentation runs (ingest never stalls).
#[test]
fn async_tasks_keep_running_during_inference() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("t"), "t", "1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::new(&cpu_config(&models), &tmp.path().join("var")).unwrap();
        let frames: Vec<_> = (0..40)
            .map(|i| disc_frame(512, 512, 200.0 + i as f32, 250.0, 60.0).0)
            .collect();
        let started = std::time::Instant::now();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = done.clone();
        let ticker = tokio::spawn(async move {
            let (mut last, mut worst, mut ticks) =
                (std::time::Instant::now(), std::time::Duration::ZERO, 0u32);
            while !d2.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                worst = worst.max(last.elapsed());
                last = std::time::Instant::now();
                ticks += 1;
            }
            (worst, ticks)
        });
        let seg = engine
            .segment("t", &disc_set("s", "1", 2), frames)
            .await
            .unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (worst, ticks) = ticker.await.unwrap();
        let took = started.elapsed();
        assert_eq!(seg.frames.len(), 40);
        assert!(ticks >= 5, "only {ticks} ticks in {took:?}");
        assert!(
            worst < std::time::Duration::from_millis(250),
            "the async thread stalled for {worst:?} (segmentation took {took:?})"
        );
    });
}

/// `[engine] spinning` only changes how ONNX Runtime's idle threads wait: either setting loads
/// every graph and gives the same masks (spinning off is the default, `scripts/bench/engine`).
#[test]
fn spinning_threads_or_not_give_the_same_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("t"), "t", "1");
    let set = disc_set("s", "1", 2);
    let masks = |spinning: bool| {
        let mut cfg = cpu_config(&models);
        cfg.intra_threads = 2;
        cfg.spinning = spinning;
        let data = tmp.path().join(format!("var-{spinning}"));
        rt().block_on(async {
            let engine = Engine::new(&cfg, &data).expect("engine");
            assert_eq!(engine.bundle_names(), vec!["t".to_string()]);
            let frames = (0..3)
                .map(|i| disc_frame(96, 80, 40.0 + 3.0 * i as f32, 40.0, 18.0).0)
                .collect();
            let seg = engine.segment("t", &set, frames).await.expect("segment");
            seg.frames
                .iter()
                .flat_map(|f| f.masks.iter().map(|m| m.data.clone()))
                .collect::<Vec<_>>()
        })
    };
    let (off, on) = (masks(false), masks(true));
    assert_eq!(off.len(), 3, "3 frames x 1 object");
    assert!(
        off.iter().any(|m| m.iter().any(|&v| v != 0)),
        "a mask is drawn"
    );
    assert_eq!(off, on);
}
