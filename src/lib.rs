//! proxyseg: a DICOM-native PACS plugin daemon.
//!
//! A PACS routes studies to proxyseg over DICOM (C-STORE). Each study is matched to a curated
//! support set, segmented with SAM prompted by the Proxy Prompt Generator, and returned to the
//! PACS as a DICOM SEG object. The modules follow the data flow of `DESIGN.md`.

pub mod config;
pub mod dicom;
pub mod engine;
