//! Running the mirrored second look ([`super`]): the mirrored frame through the mirrored set's
//! support context and resolution views, inside [`crate::engine::infer::segment_frames`].

use std::sync::Arc;
use std::time::Instant;

use crate::dicom::pixels::Frame;
use crate::engine::bundle::Bundle;
use crate::engine::context::SupportContext;
use crate::engine::infer::{
    apply_views, decode, encode_images, object_logits, StageTimings, ViewPass,
};
use crate::engine::preprocess::prepare_image;
use crate::engine::EngineError;

/// The mirrored second look of a call ([`super`]): the objects that take it and the
/// mirrored set's support context and resolution views.
#[derive(Debug, Clone)]
pub struct MirrorLook {
    /// Indices (mask order) of the objects whose logits average the two looks.
    pub objects: Vec<usize>,
    /// The mirrored set's first-pass context.
    pub context: Arc<SupportContext>,
    /// The mirrored set's resolution views.
    pub views: Vec<ViewPass>,
}

/// The mirrored frame through the mirrored set's context and views: its final logits per
/// object, as segmented (still mirrored). Its stages count in `timings` like the first look's.
pub(crate) fn second_look(
    bundle: &Bundle,
    look: &MirrorLook,
    frame: &Frame,
    max_batch: usize,
    timings: &mut StageTimings,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let m = &bundle.manifest;
    let flipped = super::frame(frame);
    let t0 = Instant::now();
    let (input, g) = prepare_image(&flipped, m.input_size, m.pixel_mean, m.pixel_std);
    let t1 = Instant::now();
    timings.preprocess += t1 - t0;
    let emb = encode_images(bundle, &input, 1, max_batch)?;
    timings.image_encoder += t1.elapsed();
    let (_, low, _) = decode(bundle, &look.context, &emb, &input, timings)?;
    let t2 = Instant::now();
    let mut logits: Vec<Vec<f32>> = (0..look.context.objects)
        .map(|j| object_logits(bundle, &low, j, &g))
        .collect();
    timings.postprocess += t2.elapsed();
    if !look.views.is_empty() {
        let t3 = Instant::now();
        apply_views(
            bundle,
            &look.views,
            &flipped,
            &mut logits,
            max_batch,
            false,
            timings,
        )?;
        timings.views += t3.elapsed();
    }
    Ok(logits)
}
