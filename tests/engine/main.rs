//! The engine in-process: ONNX Runtime loading, the test and phantom bundles, parity with the
//! Python reference, pixel decoding, SAM 2 and resolution views. One test binary
//! (`cargo test --test engine`); each module was a test binary of its own and keeps its name as
//! the test path prefix (`cargo test --test engine engine_parity::`). ONNX Runtime is loaded once
//! per process, so `engine_runtime`, which must load it first, runs itself again alone in a
//! fresh process of this binary.

#[path = "../harness/mod.rs"]
mod harness;

mod engine_core;
mod engine_int8;
mod engine_memory_mode;
mod engine_offline;
mod engine_parity;
mod engine_parity_views;
mod engine_pixels;
mod engine_runtime;
mod engine_sam2;
mod engine_views;
