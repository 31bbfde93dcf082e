//! The admin API (tonic clients, TLS, SEG uploads, demo sets, the engine behind Preview) and the
//! command line (`proxyseg config check`, `segment`, `demo`). One test binary
//! (`cargo test --test admin`); each module was a test binary of its own and keeps its name as
//! the test path prefix (`cargo test --test admin admin_api::`).

#[path = "../harness/mod.rs"]
mod harness;

mod admin_api;
mod admin_demo_sets;
mod admin_engine;
mod admin_seg;
mod admin_tls;
mod cli;
mod demo;
mod segment_cli;
mod sequence_mode;
