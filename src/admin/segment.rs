//! The boundary between the admin API and the segmentation engine.
//!
//! Evaluate and Preview segment images with a support set. The engine (`crate::engine`)
//! implements [`Segmenter`]; the daemon hands an implementation to [`super::start`]. Without
//! one, those two calls answer UNAVAILABLE and everything else works.
//!
//! The adapter, checked against the `engine` branch (branch `admin-seg-trial` holds it with
//! `cargo test --test admin_engine` passing): decode the image with
//! `dicom::pixels::frames_from_object(&image.object)` and each support image with
//! `frames_from_file(&pair.image_path)` (first frame), build an `engine::SupportSet` whose
//! `version` is `"{version}"` or `"{version}-{variant}"`, copy the masks field by field, and run
//! `handle.block_on(engine.segment(&set.bundle, &engine_set, vec![frame]))` (the caller is a
//! blocking thread); the first frame result's masks are the answer. The daemon creates it with
//! `Engine::new(&cfg.engine, &data_dir)` and passes `None` when that fails.

use crate::store::support::{Mask, SupportSetData};
use dicom_object::DefaultDicomObject;
use std::path::PathBuf;

/// A parsed, validated single-frame DICOM image.
#[derive(Debug, Clone)]
pub struct DicomImage {
    /// The whole object (file meta + dataset), for pixel decoding.
    pub object: DefaultDicomObject,
    /// Where it is stored, if it is a stored support image.
    pub path: Option<PathBuf>,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Modality.
    pub modality: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// A segmentation failure, as the engine reports it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SegmentError(pub String);

/// Segments one image with a support set: one mask per object of `set`, in object order, at
/// the image's size. Called on blocking threads (it may run ONNX Runtime).
///
/// Implementations must key any support-context cache by `(set.name, set.version,
/// set.variant)`: evaluation passes leave-one-out subsets that share name and version.
pub trait Segmenter: Send + Sync {
    /// Masks for `image`, one per object of `set`.
    fn segment(&self, set: &SupportSetData, image: &DicomImage) -> Result<Vec<Mask>, SegmentError>;
}
