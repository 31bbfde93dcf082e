//! DICOM SEG writing and reading checked by the real tools (dciodvfy, dcentvfy, dcmtk,
//! highdicom). One test binary (`cargo test --test seg`); each module was a test binary of its own
//! and keeps its name as the test path prefix.

#[path = "../harness/mod.rs"]
mod harness;

mod seg_read;
mod seg_tools;
