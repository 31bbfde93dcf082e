//! Running the four graphs: image encoder (batched), support encoder, prompt generator, mask
//! decoder, and turning logits into masks at the source size.
//!
//! Owns tensor plumbing between the graphs and the per-stage timings; the second passes of the
//! bundle's resolution rules on crops of each frame are [`super::view_pass`]'s. These functions block:
//! the engine calls them on `spawn_blocking` threads behind its worker semaphore. They never
//! touch the support-context cache or the disk.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use ort::session::SessionInputValue;
use ort::value::TensorRef;

use super::bundle::{Bundle, Graph};
pub use super::context::{compute_support_context, support_context_of, SupportContext};
use super::mirror;
use super::preprocess::{postprocess_logits, prepare_image, Geometry};
use super::support::Mask;
use super::threshold;
pub(crate) use super::view_pass::apply_views;
pub use super::view_pass::ViewPass;
use super::views::Crop;
use super::EngineError;
use crate::dicom::pixels::Frame;

/// A dense f32 tensor (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and data (checked).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, ShapeError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ShapeError {
                shape,
                values: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }
}

/// A shape and a number of values that do not agree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape {shape:?} needs {} values, got {values}", shape.iter().product::<usize>())]
pub struct ShapeError {
    /// The shape asked for.
    pub shape: Vec<usize>,
    /// The values given.
    pub values: usize,
}

/// Time spent in each stage, summed over the frames of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Display frames -> model inputs (resize, normalise, pad).
    pub preprocess: Duration,
    /// image_encoder runs (frames).
    pub image_encoder: Duration,
    /// prompt_generator runs.
    pub prompt_generator: Duration,
    /// mask_decoder runs.
    pub mask_decoder: Duration,
    /// Logits -> masks at source size.
    pub postprocess: Duration,
    /// Support contexts (image_encoder + support_encoder on the support pairs, for the first
    /// pass and every resolution view), when one was computed or loaded during this call.
    pub support_context: Duration,
    /// Resolution views ([`super::views`]): everything of the second passes on crops
    /// (crop, preprocess, image_encoder, prompt_generator, mask_decoder, postprocess, merge).
    /// The stages above count the first pass (whole frames) only.
    pub views: Duration,
    /// Frames processed.
    pub frames: usize,
    /// Crops segmented by resolution views (one per roi crop, one per tile).
    pub view_passes: usize,
}

impl StageTimings {
    /// Adds another set of timings to this one.
    pub fn add(&mut self, o: &StageTimings) {
        self.preprocess += o.preprocess;
        self.image_encoder += o.image_encoder;
        self.prompt_generator += o.prompt_generator;
        self.mask_decoder += o.mask_decoder;
        self.postprocess += o.postprocess;
        self.support_context += o.support_context;
        self.views += o.views;
        self.frames += o.frames;
        self.view_passes += o.view_passes;
    }

    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.preprocess
            + self.image_encoder
            + self.prompt_generator
            + self.mask_decoder
            + self.postprocess
            + self.support_context
            + self.views
    }
}

/// Runs one graph on named f32 inputs and returns the named outputs.
pub fn run_graph(
    graph: &Graph,
    inputs: &[(&str, &Tensor)],
    outputs: &[&str],
) -> Result<Vec<Tensor>, EngineError> {
    run_graph_with_ints(graph, inputs, &[], outputs)
}

/// [`run_graph`] with some 1-D int64 inputs as well (contract 2's `frame_tpos`).
pub fn run_graph_with_ints(
    graph: &Graph,
    inputs: &[(&str, &Tensor)],
    ints: &[(&str, &[i64])],
    outputs: &[&str],
) -> Result<Vec<Tensor>, EngineError> {
    let ort_err = |e: &dyn std::fmt::Display| EngineError::Inference {
        graph: graph.kind.as_str(),
        message: e.to_string(),
    };
    let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, t) in inputs {
        let v = TensorRef::from_array_view((t.shape.clone(), t.data.as_slice()))
            .map_err(|e| ort_err(&e))?;
        values.push((Cow::Owned(name.to_string()), v.into()));
    }
    for (name, v) in ints {
        let v = TensorRef::from_array_view((vec![v.len()], *v)).map_err(|e| ort_err(&e))?;
        values.push((Cow::Owned(name.to_string()), v.into()));
    }
    let mut session = graph
        .session
        .lock()
        .map_err(|_| ort_err(&"session lock poisoned by an earlier panic"))?;
    let out = session.run(values).map_err(|e| ort_err(&e))?;
    let mut res = Vec::with_capacity(outputs.len());
    for name in outputs {
        let v = out
            .get(*name)
            .ok_or_else(|| ort_err(&format!("output {name} missing")))?;
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| ort_err(&e))?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        res.push(Tensor {
            shape,
            data: data.to_vec(),
        });
    }
    Ok(res)
}

pub(crate) fn expect_shape(
    graph: &'static str,
    what: &str,
    t: &Tensor,
    want: &[usize],
) -> Result<(), EngineError> {
    if t.shape != want {
        return Err(EngineError::Inference {
            graph,
            message: format!("{what} has shape {:?}, expected {want:?}", t.shape),
        });
    }
    Ok(())
}

/// Runs image_encoder on model inputs (`n` images of `[3, S, S]` back to back), in batches of
/// at most `max_batch` (or exactly the graph's static B, zero-padded). Returns `[n, C, h, w]`.
pub fn encode_images(
    bundle: &Bundle,
    inputs: &[f32],
    n: usize,
    max_batch: usize,
) -> Result<Tensor, EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let img = 3 * s * s;
    let (c, h, w) = (m.embed_dim, m.embed_size[0], m.embed_size[1]);
    let per = c * h * w;
    let (batch, fixed) = match bundle.dims.batch {
        Some(b) => (b, true),
        None => (max_batch.max(1), false),
    };
    let mut out = Vec::with_capacity(n * per);
    let mut start = 0;
    while start < n {
        let take = batch.min(n - start);
        let b = if fixed { batch } else { take };
        let mut data = inputs[start * img..(start + take) * img].to_vec();
        data.resize(b * img, 0.0);
        let x = Tensor {
            shape: vec![b, 3, s, s],
            data,
        };
        let mut r = run_graph(
            &bundle.image_encoder,
            &[("image", &x)],
            &["image_embeddings"],
        )?;
        let e = r.remove(0);
        expect_shape("image_encoder", "image_embeddings", &e, &[b, c, h, w])?;
        out.extend_from_slice(&e.data[..take * per]);
        start += take;
    }
    Ok(Tensor {
        shape: vec![n, c, h, w],
        data: out,
    })
}

/// Masks (and optionally logits) of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameResult {
    /// Position of the frame in the input list.
    pub index: usize,
    /// The model input geometry (source size, resized size, S).
    pub geometry: Geometry,
    /// One mask per object of the support set, at the source size (after resolution views).
    pub masks: Vec<Mask>,
    /// mask_decoder's IoU estimate per object (first pass, also for objects a view replaced).
    pub iou_scores: Vec<f32>,
    /// Per object, how far the `[mirror]` looks agreed ([`mirror::agreement`]); `None` for an
    /// object that took one look (not listed, mirror off, memory mode).
    pub look_agreement: Vec<Option<f32>>,
    /// Present with [`SegmentOptions::keep_tensors`]: intermediate tensors for checks.
    pub tensors: Option<FrameTensors>,
}

/// Intermediate tensors of one frame (for parity tests and debugging). Everything but
/// `final_logits` and `views` is the first pass on the whole frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameTensors {
    /// Model input `[1, 3, S, S]`.
    pub image: Tensor,
    /// `[1, C, h, w]`.
    pub image_embeddings: Tensor,
    /// `[K, T, C]`.
    pub prompt_tokens: Tensor,
    /// `[K, 1, 4h, 4w]`.
    pub low_res_logits: Tensor,
    /// First-pass logits at the source size, `[K_objects, rows, cols]`.
    pub logits: Tensor,
    /// Final logits at the source size after the resolution views, `[K_objects, rows, cols]`
    /// (the masks are `final_logits` > each object's threshold, [`super::threshold`]); equal to
    /// `logits` when no view applied.
    pub final_logits: Tensor,
    /// One entry per crop a resolution view segmented, in the order they ran.
    pub views: Vec<ViewTensors>,
}

/// Tensors of one crop of a resolution view.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewTensors {
    /// Position of the rule in the manifest's `[[resolution]]` list.
    pub rule: usize,
    /// The view (as in the support-context key), e.g. `tiles:2:0.125:0,1`.
    pub view: String,
    /// The crop in source pixels.
    pub crop: Crop,
    /// Model input of the crop `[1, 3, S, S]`.
    pub image: Tensor,
    /// `[1, C, h, w]`.
    pub image_embeddings: Tensor,
    /// `[K, T, C]` (with the view's support context).
    pub prompt_tokens: Tensor,
    /// `[K, 1, 4h, 4w]`.
    pub low_res_logits: Tensor,
    /// Indices (into the set's objects) of the rule's objects.
    pub objects: Vec<usize>,
    /// The rule's objects' logits at the crop's size, `[objects.len(), crop.h, crop.w]`.
    pub logits: Tensor,
}

/// Options of one segmentation call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentOptions {
    /// Keep intermediate tensors in each [`FrameResult`].
    pub keep_tensors: bool,
}

/// prompt_generator on one image's embeddings `[1, C, h, w]` with a support context: the proxy
/// prompt `[K, T, C]`, shape checked (every path runs the PPG through here).
pub(crate) fn proxy_prompt(
    bundle: &Bundle,
    ctx: &SupportContext,
    embeddings: &Tensor,
    timings: &mut StageTimings,
) -> Result<Tensor, EngineError> {
    let m = &bundle.manifest;
    let t0 = Instant::now();
    let tokens = run_graph(
        &bundle.prompt_generator,
        &[
            ("image_embeddings", embeddings),
            ("support_keys", &ctx.keys),
            ("support_values", &ctx.values),
        ],
        &["prompt_tokens"],
    )?
    .remove(0);
    timings.prompt_generator += t0.elapsed();
    let k = tokens.shape.first().copied().unwrap_or(0);
    expect_shape(
        "prompt_generator",
        "prompt_tokens",
        &tokens,
        &[k, m.prompt_tokens, m.embed_dim],
    )?;
    Ok(tokens)
}

/// prompt_generator and mask_decoder on one image's embeddings `[1, C, h, w]` with a context:
/// `(prompt_tokens, mask_logits, iou_scores)`, shapes checked. `image` is the model input the
/// embeddings are of (`3 * S * S` values), given to the decoder when the bundle's takes it.
pub(crate) fn decode(
    bundle: &Bundle,
    ctx: &SupportContext,
    e1: &Tensor,
    image: &[f32],
    timings: &mut StageTimings,
) -> Result<(Tensor, Tensor, Tensor), EngineError> {
    let m = &bundle.manifest;
    let (lh, lw) = (m.low_res_size[0], m.low_res_size[1]);
    let tokens = proxy_prompt(bundle, ctx, e1, timings)?;
    let t3 = Instant::now();
    let k = tokens.shape[0];
    let mut r = run_decoder(bundle, e1, &tokens, image)?;
    let iou = r.remove(1);
    let low = r.remove(0);
    timings.mask_decoder += t3.elapsed();
    expect_shape("mask_decoder", "mask_logits", &low, &[k, 1, lh, lw])?;
    if k < ctx.objects {
        return Err(EngineError::Inference {
            graph: "mask_decoder",
            message: format!("{k} masks for {} objects", ctx.objects),
        });
    }
    Ok((tokens, low, iou))
}

/// The mask decoder on embeddings `[1, C, h, w]` and prompt tokens `[K, T, C]`, with the model
/// input `image` (`3 * S * S` values, copied only when the bundle's decoder takes it,
/// [`crate::engine::bundle::Manifest::decoder_image`]): `[mask_logits, iou_scores]`.
pub(crate) fn run_decoder(
    bundle: &Bundle,
    embeddings: &Tensor,
    tokens: &Tensor,
    image: &[f32],
) -> Result<Vec<Tensor>, EngineError> {
    let m = &bundle.manifest;
    let mut inputs = vec![("image_embeddings", embeddings), ("prompt_tokens", tokens)];
    let full;
    if m.decoder_image {
        let s = m.input_size;
        if image.len() != 3 * s * s {
            return Err(EngineError::Internal(format!(
                "mask_decoder takes the model input: {} values given, {} expected",
                image.len(),
                3 * s * s
            )));
        }
        full = Tensor {
            shape: vec![1, 3, s, s],
            data: image.to_vec(),
        };
        inputs.push(("image", &full));
    }
    run_graph(
        &bundle.mask_decoder,
        &inputs,
        &["mask_logits", "iou_scores"],
    )
}

/// Object `j`'s low-resolution logits -> logits at the source size of `g`.
pub(crate) fn object_logits(bundle: &Bundle, low: &Tensor, j: usize, g: &Geometry) -> Vec<f32> {
    let (lh, lw) = (
        bundle.manifest.low_res_size[0],
        bundle.manifest.low_res_size[1],
    );
    postprocess_logits(&low.data[j * lh * lw..(j + 1) * lh * lw], lh, lw, g)
}

/// `[planes.len(), rows, cols]` from per-object planes.
pub(crate) fn stack(planes: &[Vec<f32>], rows: usize, cols: usize) -> Tensor {
    Tensor {
        shape: vec![planes.len(), rows, cols],
        data: planes.concat(),
    }
}

/// Segments frames with a computed support context: per batch of frames, preprocess and
/// image_encoder; per frame, prompt_generator, mask_decoder and postprocess; then, per frame,
/// the resolution `views` (second passes on crops, see [`super::views`]) replace their
/// objects' logits, the `mirror` look (when given) is averaged in for its objects, and the
/// masks are cut at `thresholds` (per object, mask order; see [`super::threshold`]).
pub fn segment_frames(
    bundle: &Bundle,
    ctx: &SupportContext,
    views: &[ViewPass],
    frames: &[Frame],
    max_batch: usize,
    (opts, thresholds, mirror): (SegmentOptions, &[f32], Option<&mirror::MirrorLook>),
    timings: &mut StageTimings,
) -> Result<Vec<FrameResult>, EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let (c, h, w) = (m.embed_dim, m.embed_size[0], m.embed_size[1]);
    let batch = bundle.dims.batch.unwrap_or(max_batch.max(1));
    let mut results = Vec::with_capacity(frames.len());
    for (chunk_no, chunk) in frames.chunks(batch).enumerate() {
        let t0 = Instant::now();
        let mut inputs = Vec::with_capacity(chunk.len() * 3 * s * s);
        let mut geoms = Vec::with_capacity(chunk.len());
        for f in chunk {
            let (t, g) = prepare_image(f, s, m.pixel_mean, m.pixel_std);
            inputs.extend_from_slice(&t);
            geoms.push(g);
        }
        let t1 = Instant::now();
        timings.preprocess += t1 - t0;
        let emb = encode_images(bundle, &inputs, chunk.len(), max_batch)?;
        timings.image_encoder += t1.elapsed();
        let per = c * h * w;
        for (i, g) in geoms.into_iter().enumerate() {
            let e1 = Tensor {
                shape: vec![1, c, h, w],
                data: emb.data[i * per..(i + 1) * per].to_vec(),
            };
            let img = &inputs[i * 3 * s * s..(i + 1) * 3 * s * s];
            let (tokens, low, iou) = decode(bundle, ctx, &e1, img, timings)?;
            let t4 = Instant::now();
            let mut logits: Vec<Vec<f32>> = (0..ctx.objects)
                .map(|j| object_logits(bundle, &low, j, &g))
                .collect();
            timings.postprocess += t4.elapsed();
            let mut first = None;
            let mut view_tensors = Vec::new();
            if !views.is_empty() {
                if opts.keep_tensors {
                    first = Some(stack(&logits, g.rows, g.cols));
                }
                let t5 = Instant::now();
                view_tensors = apply_views(
                    bundle,
                    views,
                    &chunk[i],
                    &mut logits,
                    max_batch,
                    opts.keep_tensors,
                    timings,
                )?;
                timings.views += t5.elapsed();
            }
            let mut look_agreement = vec![None; logits.len()];
            if let Some(look) = mirror {
                if first.is_none() && opts.keep_tensors {
                    first = Some(stack(&logits, g.rows, g.cols));
                }
                let second = mirror::second_look(bundle, look, &chunk[i], max_batch, timings)?;
                look_agreement =
                    mirror::agreement(&logits, &second, g.cols, &look.objects, thresholds);
                mirror::merge(&mut logits, &second, g.cols, &look.objects);
            }
            let t6 = Instant::now();
            let masks = threshold::masks(&logits, &g, thresholds);
            timings.postprocess += t6.elapsed();
            timings.frames += 1;
            let tensors = opts.keep_tensors.then(|| {
                let final_logits = stack(&logits, g.rows, g.cols);
                FrameTensors {
                    image: Tensor {
                        shape: vec![1, 3, s, s],
                        data: inputs[i * 3 * s * s..(i + 1) * 3 * s * s].to_vec(),
                    },
                    image_embeddings: e1,
                    prompt_tokens: tokens,
                    low_res_logits: low,
                    logits: first.unwrap_or_else(|| final_logits.clone()),
                    final_logits,
                    views: view_tensors,
                }
            });
            results.push(FrameResult {
                index: chunk_no * batch + i,
                geometry: g,
                masks,
                iou_scores: iou.data.iter().take(ctx.objects).copied().collect(),
                look_agreement,
                tensors,
            });
        }
    }
    Ok(results)
}
