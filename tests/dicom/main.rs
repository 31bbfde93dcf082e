//! The DICOM side of the real daemon: dcmtk and hostile SCUs, limits, TLS, crash safety, file
//! modes, peers, the loop guard, metrics, delivery, retention and the systemd unit. One test
//! binary (`cargo test --test dicom`); each module was a test binary of its own, and keeps its name
//! as the test path prefix (`cargo test --test dicom limits::`).

#[path = "../harness/mod.rs"]
mod harness;

mod crash_safety;
mod delivery;
mod file_modes;
mod hostile_input;
mod limits;
mod loop_guard;
mod metrics;
mod peers;
mod retention;
mod scp_dcmtk;
mod scp_edge;
mod systemd_unit;
mod tls;
