//! proxyseg: a DICOM-native PACS plugin daemon.
//!
//! A PACS routes studies to proxyseg over DICOM (C-STORE). Each study is matched to a curated
//! support set, segmented with SAM prompted by the Proxy Prompt Generator, and returned to the
//! PACS as a DICOM SEG object. The modules follow the data flow of `DESIGN.md`.

pub mod admin;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dicom;
pub mod engine;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod routing;
pub mod sequence_mode;
pub mod sop;
pub mod store;
pub mod support_folder;

/// Implementation Class UID written in every file meta group and association we originate.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.81540919461728474236106372858512394137";
/// Implementation Version Name.
pub const IMPLEMENTATION_VERSION_NAME: &str = "PROXYSEG_010";
