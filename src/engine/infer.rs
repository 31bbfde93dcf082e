//! Running the four graphs: image encoder (batched), support encoder, prompt generator, mask
//! decoder, and turning logits into masks at the source size.
//!
//! Owns tensor plumbing between the graphs and the per-stage timings. These functions block:
//! the engine calls them on `spawn_blocking` threads behind its worker semaphore. They never
//! touch the support-context cache or the disk.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use ort::session::SessionInputValue;
use ort::value::TensorRef;

use super::bundle::{Bundle, Graph};
use super::preprocess::{postprocess_logits, prepare_image, prepare_mask, Geometry};
use super::support::{Mask, SupportSet};
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
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, String> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(format!(
                "shape {shape:?} needs {n} values, got {}",
                data.len()
            ));
        }
        Ok(Tensor { shape, data })
    }
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
    /// Support context (image_encoder + support_encoder on the support pairs), when it was
    /// computed or loaded during this call.
    pub support_context: Duration,
    /// Frames processed.
    pub frames: usize,
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
        self.frames += o.frames;
    }

    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.preprocess
            + self.image_encoder
            + self.prompt_generator
            + self.mask_decoder
            + self.postprocess
            + self.support_context
    }
}

/// Runs one graph on named f32 inputs and returns the named outputs.
pub fn run_graph(
    graph: &Graph,
    inputs: &[(&str, &Tensor)],
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

fn expect_shape(
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

/// The support context: support_encoder's outputs for one support set and bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct SupportContext {
    /// `support_keys`.
    pub keys: Tensor,
    /// `support_values`.
    pub values: Tensor,
    /// Objects of the set (the first `objects` of the K outputs are used).
    pub objects: usize,
    /// Pairs that went in.
    pub pairs: usize,
}

/// image_encoder on the support images, then support_encoder (CSM steps 1-2).
pub fn compute_support_context(
    bundle: &Bundle,
    set: &SupportSet,
    max_batch: usize,
) -> Result<SupportContext, EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let n = set.pairs.len();
    let k_real = set.objects.len();
    let k = bundle.dims.objects.unwrap_or(k_real);
    if let Some(fixed_n) = bundle.dims.pairs {
        if fixed_n != n {
            return Err(EngineError::SupportSet {
                name: set.name.clone(),
                message: format!(
                    "bundle {} needs exactly {fixed_n} pairs, the set has {n}",
                    m.name
                ),
            });
        }
    }
    let mut images = Vec::with_capacity(n * 3 * s * s);
    let mut masks = vec![0f32; n * k * s * s];
    for (i, p) in set.pairs.iter().enumerate() {
        let (t, _) = prepare_image(&p.image, s, m.pixel_mean, m.pixel_std);
        images.extend_from_slice(&t);
        for (j, mk) in p.masks.iter().enumerate() {
            let pm = prepare_mask(&mk.data, mk.rows, mk.cols, s);
            masks[(i * k + j) * s * s..(i * k + j + 1) * s * s].copy_from_slice(&pm);
        }
    }
    let emb = encode_images(bundle, &images, n, max_batch)?;
    let images = Tensor {
        shape: vec![n, 3, s, s],
        data: images,
    };
    let masks = Tensor {
        shape: vec![n, k, s, s],
        data: masks,
    };
    let mut r = run_graph(
        &bundle.support_encoder,
        &[
            ("support_images", &images),
            ("support_masks", &masks),
            ("support_embeddings", &emb),
        ],
        &["support_keys", "support_values"],
    )?;
    let values = r.remove(1);
    let keys = r.remove(0);
    Ok(SupportContext {
        keys,
        values,
        objects: k_real,
        pairs: n,
    })
}

/// Masks (and optionally logits) of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameResult {
    /// Position of the frame in the input list.
    pub index: usize,
    /// The model input geometry (source size, resized size, S).
    pub geometry: Geometry,
    /// One mask per object of the support set, at the source size.
    pub masks: Vec<Mask>,
    /// mask_decoder's IoU estimate per object.
    pub iou_scores: Vec<f32>,
    /// Present with [`SegmentOptions::keep_tensors`]: intermediate tensors for checks.
    pub tensors: Option<FrameTensors>,
}

/// Intermediate tensors of one frame (for parity tests and debugging).
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
    /// Logits at the source size, `[K_objects, rows, cols]`.
    pub logits: Tensor,
}

/// Options of one segmentation call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentOptions {
    /// Keep intermediate tensors in each [`FrameResult`].
    pub keep_tensors: bool,
}

/// Segments frames with a computed support context: per batch of frames, preprocess and
/// image_encoder; per frame, prompt_generator, mask_decoder and postprocess.
pub fn segment_frames(
    bundle: &Bundle,
    ctx: &SupportContext,
    frames: &[Frame],
    max_batch: usize,
    opts: SegmentOptions,
    timings: &mut StageTimings,
) -> Result<Vec<FrameResult>, EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let (c, h, w) = (m.embed_dim, m.embed_size[0], m.embed_size[1]);
    let (lh, lw) = (m.low_res_size[0], m.low_res_size[1]);
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
            let t2 = Instant::now();
            let mut r = run_graph(
                &bundle.prompt_generator,
                &[
                    ("image_embeddings", &e1),
                    ("support_keys", &ctx.keys),
                    ("support_values", &ctx.values),
                ],
                &["prompt_tokens"],
            )?;
            let tokens = r.remove(0);
            let t3 = Instant::now();
            timings.prompt_generator += t3 - t2;
            let k = tokens.shape.first().copied().unwrap_or(0);
            expect_shape(
                "prompt_generator",
                "prompt_tokens",
                &tokens,
                &[k, m.prompt_tokens, c],
            )?;
            let mut r = run_graph(
                &bundle.mask_decoder,
                &[("image_embeddings", &e1), ("prompt_tokens", &tokens)],
                &["mask_logits", "iou_scores"],
            )?;
            let iou = r.remove(1);
            let low = r.remove(0);
            let t4 = Instant::now();
            timings.mask_decoder += t4 - t3;
            expect_shape("mask_decoder", "mask_logits", &low, &[k, 1, lh, lw])?;
            if k < ctx.objects {
                return Err(EngineError::Inference {
                    graph: "mask_decoder",
                    message: format!("{k} masks for {} objects", ctx.objects),
                });
            }
            let mut masks = Vec::with_capacity(ctx.objects);
            let mut full_logits = Vec::new();
            for j in 0..ctx.objects {
                let l = postprocess_logits(&low.data[j * lh * lw..(j + 1) * lh * lw], lh, lw, &g);
                masks.push(Mask {
                    rows: g.rows,
                    cols: g.cols,
                    data: l.iter().map(|&v| u8::from(v > 0.0)).collect(),
                });
                if opts.keep_tensors {
                    full_logits.extend_from_slice(&l);
                }
            }
            timings.postprocess += t4.elapsed();
            timings.frames += 1;
            let tensors = opts.keep_tensors.then(|| FrameTensors {
                image: Tensor {
                    shape: vec![1, 3, s, s],
                    data: inputs[i * 3 * s * s..(i + 1) * 3 * s * s].to_vec(),
                },
                image_embeddings: e1.clone(),
                prompt_tokens: tokens.clone(),
                low_res_logits: low.clone(),
                logits: Tensor {
                    shape: vec![ctx.objects, g.rows, g.cols],
                    data: full_logits,
                },
            });
            results.push(FrameResult {
                index: chunk_no * batch + i,
                geometry: g,
                masks,
                iou_scores: iou.data.iter().take(ctx.objects).copied().collect(),
                tensors,
            });
        }
    }
    Ok(results)
}
