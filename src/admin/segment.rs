//! The boundary between the admin API and the segmentation engine.
//!
//! Evaluate and Preview segment images with a support set. The engine (`crate::engine`)
//! implements [`Segmenter`]; the daemon hands an implementation to [`super::start`]. Without
//! one, those two calls answer UNAVAILABLE and everything else works.
//! [`EngineSegmenter`] is the engine's implementation.

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

/// Why an image could not be segmented.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The image's pixels could not be decoded (`what`: which image).
    #[error("{what}: {source}")]
    Pixels {
        /// Which image ("image").
        what: &'static str,
        /// The decoder's error.
        source: crate::dicom::pixels::PixelError,
    },
    /// The image has no frames.
    #[error("{0}: no frames")]
    NoFrames(&'static str),
    /// The engine refused the set or failed (bundle, support set, a graph run).
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The engine's answer does not fit the request.
    #[error("{0}")]
    Result(&'static str),
}

/// Segments one image with a support set: one mask per object of `set`, in object order, at
/// the image's size. Called on blocking threads (it may run ONNX Runtime).
///
/// Implementations must key any support-context cache by `(set.name, set.version,
/// set.variant)`: evaluation passes leave-one-out subsets that share name and version.
pub trait Segmenter: Send + Sync {
    /// Masks for `image`, one per object of `set`.
    fn segment(&self, set: &SupportSetData, image: &DicomImage) -> Result<Vec<Mask>, SegmentError>;

    /// [`Segmenter::segment`] with each object's look agreement
    /// (`crate::engine::mirror::agreement`; `None` where it took one look).
    fn segment_with_agreement(
        &self,
        set: &SupportSetData,
        image: &DicomImage,
    ) -> Result<(Vec<Mask>, Vec<Option<f32>>), SegmentError> {
        let masks = self.segment(set, image)?;
        let none = vec![None; masks.len()];
        Ok((masks, none))
    }

    /// Why `bundle` (empty: the default bundle) would segment a series of a set with these
    /// object labels frame by frame even when its sequence mode asks for the memory bank; None
    /// when it can track.
    fn track_refusal(&self, bundle: &str, labels: &[&str]) -> Option<String>;

    /// The masks of `set` that keep an object from the form its bundle's `[[shape]]` rules
    /// list (`crate::engine::shape::form_blockers`); empty when the bundle lists none.
    fn shape_blockers(&self, set: &SupportSetData) -> Result<Vec<ShapeBlocker>, SegmentError>;
}

/// A support mask that turns a bundle's `[[shape]]` rule off for its object: while the pair is
/// in the set, every result of the set gets a weaker form (or none) for that object.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeBlocker {
    /// Pair number.
    pub pair: u32,
    /// 0-based object index.
    pub object: usize,
    /// What is wrong with the mask and what the set loses, with the numbers.
    pub detail: String,
}

/// The admin API's handle on the engine. The API is served from before the engine loads
/// (seconds on CPU, minutes while TensorRT builds its engines), so the handle is settled
/// later: then to the engine's [`Segmenter`], or to none when the engine could not load.
#[derive(Clone, Default)]
pub struct EngineSlot(std::sync::Arc<std::sync::OnceLock<Option<std::sync::Arc<dyn Segmenter>>>>);

/// Why an [`EngineSlot`] gives no segmenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSegmenter {
    /// The engine is still loading.
    Loading,
    /// This daemon runs without an engine (it could not load).
    Absent,
}

impl EngineSlot {
    /// A slot settled to `segmenter` at once.
    pub fn settled(segmenter: Option<std::sync::Arc<dyn Segmenter>>) -> EngineSlot {
        let slot = EngineSlot::default();
        slot.settle(segmenter);
        slot
    }

    /// Settles the slot once the engine has loaded (or could not); later calls change nothing.
    pub fn settle(&self, segmenter: Option<std::sync::Arc<dyn Segmenter>>) {
        let _ = self.0.set(segmenter);
    }

    /// The engine's segmenter, or why there is none now.
    pub fn get(&self) -> Result<std::sync::Arc<dyn Segmenter>, NoSegmenter> {
        match self.0.get() {
            None => Err(NoSegmenter::Loading),
            Some(None) => Err(NoSegmenter::Absent),
            Some(Some(s)) => Ok(s.clone()),
        }
    }
}

impl NoSegmenter {
    /// The gRPC status of `call` (e.g. "Preview") without a segmenter: UNAVAILABLE, saying
    /// whether to retry.
    pub fn status(self, call: &str) -> tonic::Status {
        tonic::Status::unavailable(match self {
            NoSegmenter::Loading => format!(
                "{call} needs the segmentation engine, which is still loading: try again once the daemon logs \"engine ready\""
            ),
            NoSegmenter::Absent => format!(
                "{call} needs the segmentation engine, and this daemon runs without one"
            ),
        })
    }
}

/// The engine as the admin API's [`Segmenter`]: decodes the support images
/// ([`crate::engine::SupportSet::from_stored`]) and the image with `dicom::pixels`, and runs `Engine::segment` on the daemon's runtime (called from a blocking
/// thread). The support set's `variant` becomes part of the engine's version key, so
/// leave-one-out subsets never share a cache entry with the full set.
#[derive(Clone)]
pub struct EngineSegmenter {
    engine: crate::engine::Engine,
    handle: tokio::runtime::Handle,
    default_bundle: String,
}

impl EngineSegmenter {
    /// Wraps an engine; `handle` is the runtime that drives its async calls. A set that names
    /// no bundle runs on `default_bundle` (`[engine] default_bundle`).
    pub fn new(
        engine: crate::engine::Engine,
        handle: tokio::runtime::Handle,
        default_bundle: String,
    ) -> EngineSegmenter {
        EngineSegmenter {
            engine,
            handle,
            default_bundle,
        }
    }
}

fn first_frame(
    frames: Result<Vec<crate::dicom::pixels::Frame>, crate::dicom::pixels::PixelError>,
    what: &'static str,
) -> Result<crate::dicom::pixels::Frame, SegmentError> {
    frames
        .map_err(|source| SegmentError::Pixels { what, source })?
        .into_iter()
        .next()
        .ok_or(SegmentError::NoFrames(what))
}

impl Segmenter for EngineSegmenter {
    fn segment(&self, set: &SupportSetData, image: &DicomImage) -> Result<Vec<Mask>, SegmentError> {
        self.segment_with_agreement(set, image)
            .map(|(masks, _)| masks)
    }

    fn segment_with_agreement(
        &self,
        set: &SupportSetData,
        image: &DicomImage,
    ) -> Result<(Vec<Mask>, Vec<Option<f32>>), SegmentError> {
        let frame = first_frame(
            crate::dicom::pixels::frames_from_object(&image.object),
            "image",
        )?;
        let engine_set = crate::engine::SupportSet::from_stored(set)?;
        let bundle = if set.bundle.trim().is_empty() {
            &self.default_bundle
        } else {
            &set.bundle
        };
        let seg = self
            .handle
            .block_on(self.engine.segment(bundle, &engine_set, vec![frame]))?;
        let result = seg
            .frames
            .into_iter()
            .next()
            .ok_or(SegmentError::Result("the engine returned no frame"))?;
        // the engine's masks are the store's type, already 0/1
        Ok((result.masks, result.look_agreement))
    }

    fn track_refusal(&self, bundle: &str, labels: &[&str]) -> Option<String> {
        let name = if bundle.trim().is_empty() {
            &self.default_bundle
        } else {
            bundle
        };
        match self.engine.bundle(name) {
            Ok(b) => b
                .track_refusal(labels)
                .map(|why| format!("{why} (bundle {name})")),
            Err(e) => Some(format!("bundle {name} cannot be used: {e}")),
        }
    }

    fn shape_blockers(&self, set: &SupportSetData) -> Result<Vec<ShapeBlocker>, SegmentError> {
        let name = if set.bundle.trim().is_empty() {
            &self.default_bundle
        } else {
            &set.bundle
        };
        let b = self.engine.bundle(name)?;
        if b.manifest.shape.is_empty() {
            return Ok(Vec::new());
        }
        let engine_set = crate::engine::SupportSet::from_stored(set)?;
        let found = crate::engine::shape::form_blockers(
            &b.manifest.shape,
            &engine_set,
            b.manifest.input_size,
        );
        Ok(found
            .into_iter()
            .map(|f| {
                let label = &set.objects[f.object].label;
                let gets = match f.given {
                    Some(form) => format!("gets the {} form instead", form.name()),
                    None => "keeps the shape the model predicted".to_string(),
                };
                ShapeBlocker {
                    pair: set.pairs[f.pair].number,
                    object: f.object,
                    detail: format!(
                        "{label}: {}; while it is in the set, bundle {name}'s {} rule for \
                         {label} is off: every result {gets} (redraw the mask, or remove the \
                         pair)",
                        f.reason,
                        f.listed.name()
                    ),
                }
            })
            .collect())
    }
}
