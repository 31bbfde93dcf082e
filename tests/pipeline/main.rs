//! Whole pipeline runs: studies in, SEGs out to a PACS (pynetdicom, Orthanc), and the SEGs opened
//! the way OHIF does. One test binary (`cargo test --test pipeline`); each module was a test
//! binary of its own and keeps its name as the test path prefix
//! (`cargo test --test pipeline viewer_check`).

#[path = "../harness/mod.rs"]
mod harness;

mod e2e_orthanc;
mod pipeline_e2e;
mod review;
mod sequence_mode;
mod start_order;
mod viewer_check;
