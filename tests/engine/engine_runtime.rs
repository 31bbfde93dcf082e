//! ONNX Runtime loading: a missing or wrong library is a clear error naming what was tried,
//! never a panic; the right one then loads in the same process.
//!
//! One test function on purpose: the library is loaded once per process, so the failing
//! cases must run before the successful load, in this order, and in a process where no other
//! test of the engine binary loaded it first: the test runs itself again alone in a fresh one.

use crate::harness::alone_in_a_fresh_process;
use crate::harness::engine::*;
use proxyseg::engine::{Engine, EngineError, RuntimeError};

#[test]
fn missing_then_wrong_then_right_library() {
    if !alone_in_a_fresh_process(module_path!(), "missing_then_wrong_then_right_library") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let data = tmp.path().join("var");

    let mut cfg = cpu_config(&models);
    cfg.onnxruntime = Some(tmp.path().join("no/libonnxruntime.so.1.32.0"));
    match Engine::new(&cfg, &data) {
        Err(EngineError::Runtime(e @ RuntimeError::NotFound { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no/libonnxruntime.so.1.32.0 (no such file)")
                    && msg.contains("[engine] onnxruntime"),
                "{msg}"
            );
        }
        other => panic!("missing library: expected NotFound, got {other:?}"),
    }

    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"this is not a shared library").unwrap();
    cfg.onnxruntime = Some(fake.clone());
    match Engine::new(&cfg, &data) {
        Err(EngineError::Runtime(e @ RuntimeError::Load { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("cannot load ONNX Runtime from")
                    && msg.contains(&fake.display().to_string()),
                "{msg}"
            );
        }
        other => panic!("wrong library: expected Load, got {other:?}"),
    }

    // A real shared library that is not ONNX Runtime.
    let libc = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists());
    if let Some(libz) = libc {
        cfg.onnxruntime = Some(libz.clone());
        match Engine::new(&cfg, &data) {
            Err(EngineError::Runtime(e @ RuntimeError::Load { .. })) => {
                assert!(e.to_string().contains("OrtGetApiBase"), "{e}");
            }
            other => panic!("libz: expected Load, got {other:?}"),
        }
    }

    // The default search finds the wheel in .venv.
    cfg.onnxruntime = None;
    let engine = Engine::new(&cfg, &data).expect("onnxruntime from ORT_DYLIB_PATH or .venv loads");
    let lib = engine.library().to_string_lossy().into_owned();
    match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(p) => assert_eq!(lib, p.to_string_lossy(), "ORT_DYLIB_PATH wins over .venv"),
        None => assert!(lib.contains("onnxruntime/capi/libonnxruntime.so"), "{lib}"),
    }
    assert!(engine.bundle_names().is_empty());
}
