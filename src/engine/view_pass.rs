//! The second passes of a bundle's resolution rules ([`super::views`]) on crops of each frame:
//! which crops a frame's first pass asks for, segmenting them (batched through the image
//! encoder) and merging their logits back into the frame's. Blocking, like [`super::infer`].

use std::sync::Arc;

use super::bundle::Bundle;
use super::context::SupportContext;
use super::infer::{
    decode, encode_images, object_logits, stack, StageTimings, Tensor, ViewTensors,
};
use super::preprocess::{prepare_image, Geometry};
use super::views::{self, Crop, MatchedRule, Strategy, TileMean};
use super::EngineError;
use crate::dicom::pixels::Frame;

/// A resolution rule that applies to this call, with its support contexts.
#[derive(Debug, Clone)]
pub struct ViewPass {
    /// The rule, matched to the set's objects.
    pub rule: MatchedRule,
    /// Its support contexts: one for roi; `grid * grid` for tiles, row-major.
    pub contexts: Vec<Arc<SupportContext>>,
}

/// One crop a view segments: which view, which of its contexts (tile index), where.
struct ViewJob {
    view: usize,
    tile: usize,
    crop: Crop,
}

/// The second passes of one frame. `logits` holds the first pass per object at the frame's
/// size on entry and the final logits on return. Crops come from the first pass only; rules
/// merge in manifest order. Returns the crops' tensors when `keep` is set.
pub(crate) fn apply_views(
    bundle: &Bundle,
    views: &[ViewPass],
    frame: &Frame,
    logits: &mut [Vec<f32>],
    max_batch: usize,
    keep: bool,
    timings: &mut StageTimings,
) -> Result<Vec<ViewTensors>, EngineError> {
    let jobs = view_jobs(views, frame, logits);
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let (crop_logits, kept) = segment_crops(bundle, views, &jobs, frame, max_batch, keep, timings)?;
    merge_views(views, &jobs, &crop_logits, frame, logits);
    Ok(kept)
}

/// The crops the views segment, from the first pass: a roi view's box around its anchor
/// object (none when the anchor is empty), every tile of a tiles view.
fn view_jobs(views: &[ViewPass], frame: &Frame, logits: &[Vec<f32>]) -> Vec<ViewJob> {
    let (rows, cols) = (frame.rows, frame.cols);
    let mut jobs = Vec::new();
    for (vi, v) in views.iter().enumerate() {
        match &v.rule.rule.strategy {
            Strategy::Roi {
                scale, min_side, ..
            } => {
                let Some(anchor) = v.rule.anchor.and_then(|a| logits.get(a)) else {
                    continue;
                };
                let mask: Vec<u8> = anchor.iter().map(|&x| u8::from(x > 0.0)).collect();
                // An empty anchor leaves the first pass for the rule's objects.
                if let Some(crop) = views::roi_crop(&mask, rows, cols, *scale, *min_side) {
                    jobs.push(ViewJob {
                        view: vi,
                        tile: 0,
                        crop,
                    });
                }
            }
            Strategy::Tiles { grid, overlap } => {
                for (tile, crop) in views::tile_crops(rows, cols, *grid, *overlap)
                    .into_iter()
                    .enumerate()
                {
                    jobs.push(ViewJob {
                        view: vi,
                        tile,
                        crop,
                    });
                }
            }
        }
    }
    jobs
}

/// The logits of a view's objects on one crop, one plane per object, at the crop's size.
type CropLogits = Vec<Vec<f32>>;

/// Encodes every crop of a frame (batched), then decodes each with its view's context: the
/// logits of the view's objects per crop (at the crop's size), and the crops' tensors when
/// `keep`.
fn segment_crops(
    bundle: &Bundle,
    views: &[ViewPass],
    jobs: &[ViewJob],
    frame: &Frame,
    max_batch: usize,
    keep: bool,
    timings: &mut StageTimings,
) -> Result<(Vec<CropLogits>, Vec<ViewTensors>), EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let (c, h, w) = (m.embed_dim, m.embed_size[0], m.embed_size[1]);
    let (inputs, geoms) = crop_inputs(bundle, jobs, frame)?;
    let emb = encode_images(bundle, &inputs, jobs.len(), max_batch)?;
    let per = c * h * w;
    let mut scratch = StageTimings::default();
    let mut crop_logits: Vec<CropLogits> = Vec::with_capacity(jobs.len());
    let mut kept = Vec::new();
    for (n, j) in jobs.iter().enumerate() {
        let v = &views[j.view];
        let ctx = v.contexts.get(j.tile).ok_or_else(|| {
            EngineError::Internal(format!(
                "resolution rule {} has no support context for view {}",
                v.rule.index + 1,
                j.tile
            ))
        })?;
        let e1 = Tensor {
            shape: vec![1, c, h, w],
            data: emb.data[n * per..(n + 1) * per].to_vec(),
        };
        let img = &inputs[n * 3 * s * s..(n + 1) * 3 * s * s];
        let (tokens, low, _iou) = decode(bundle, ctx, &e1, img, &mut scratch)?;
        let planes: Vec<Vec<f32>> = v
            .rule
            .objects
            .iter()
            .map(|&o| object_logits(bundle, &low, o, &geoms[n]))
            .collect();
        timings.view_passes += 1;
        if keep {
            kept.push(ViewTensors {
                rule: v.rule.index,
                view: v.rule.rule.view_id(j.tile),
                crop: j.crop,
                image: Tensor {
                    shape: vec![1, 3, s, s],
                    data: inputs[n * 3 * s * s..(n + 1) * 3 * s * s].to_vec(),
                },
                image_embeddings: e1,
                prompt_tokens: tokens,
                low_res_logits: low,
                objects: v.rule.objects.clone(),
                logits: stack(&planes, j.crop.h, j.crop.w),
            });
        }
        crop_logits.push(planes);
    }
    Ok((crop_logits, kept))
}

/// The model inputs of every crop, one after the other, with their geometries.
fn crop_inputs(
    bundle: &Bundle,
    jobs: &[ViewJob],
    frame: &Frame,
) -> Result<(Vec<f32>, Vec<Geometry>), EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let mut inputs = Vec::with_capacity(jobs.len() * 3 * s * s);
    let mut geoms = Vec::with_capacity(jobs.len());
    for j in jobs {
        let f = j.crop.frame(frame).ok_or_else(|| {
            EngineError::Internal(format!(
                "view crop {:?} does not fit the {}x{} frame",
                j.crop, frame.rows, frame.cols
            ))
        })?;
        let (t, g) = prepare_image(&f, s, m.pixel_mean, m.pixel_std);
        inputs.extend_from_slice(&t);
        geoms.push(g);
    }
    Ok((inputs, geoms))
}

/// Merges each view's crops into `logits`, rule by rule in manifest order: a roi crop is pasted
/// back, the tiles are averaged where they overlap.
fn merge_views(
    views: &[ViewPass],
    jobs: &[ViewJob],
    crop_logits: &[CropLogits],
    frame: &Frame,
    logits: &mut [Vec<f32>],
) {
    let (rows, cols) = (frame.rows, frame.cols);
    for (vi, v) in views.iter().enumerate() {
        let mine: Vec<usize> = (0..jobs.len()).filter(|&n| jobs[n].view == vi).collect();
        let Some(&first) = mine.first() else {
            continue;
        };
        for (k, &o) in v.rule.objects.iter().enumerate() {
            let merged = match v.rule.rule.strategy {
                Strategy::Roi { .. } => {
                    views::paste_roi(jobs[first].crop, &crop_logits[first][k], rows, cols)
                }
                Strategy::Tiles { .. } => {
                    let mut acc = TileMean::new(rows, cols);
                    for &n in &mine {
                        acc.add(jobs[n].crop, &crop_logits[n][k]);
                    }
                    acc.finish(&logits[o])
                }
            };
            logits[o] = merged;
        }
    }
}
