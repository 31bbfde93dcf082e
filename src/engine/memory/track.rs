//! The frame loop of contract 2: each frame of a sequence through image_encoder,
//! memory_attention (the proxy prompt, the conditioning frame and recent frames from the
//! [`MemoryBank`]), mask_decoder and memory_encoder; the prompt generator runs once, on the
//! first frame. Blocking, like [`super::super::infer`].

use std::time::Instant;

use super::MemoryBank;
use crate::dicom::pixels::Frame;
use crate::engine::bundle::Bundle;
use crate::engine::infer::{
    expect_shape, object_logits, proxy_prompt, run_graph, run_graph_with_ints, stack, FrameResult,
    FrameTensors, SegmentOptions, StageTimings, SupportContext, Tensor,
};
use crate::engine::preprocess::{prepare_image, Geometry};
use crate::engine::EngineError;

/// image_encoder's three outputs for one frame.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[1, C, h, w]`.
    pub embeddings: Tensor,
    /// `[1, C0, 4h, 4w]`.
    pub high_res_0: Tensor,
    /// `[1, C1, 2h, 2w]`.
    pub high_res_1: Tensor,
}

/// One tracked frame's outputs.
#[derive(Debug, Clone)]
pub struct Step {
    /// `[1, C, h, w]`.
    pub embeddings: Tensor,
    /// `[K, 1, 4h, 4w]`.
    pub mask_logits: Tensor,
    /// `[K, 1]`.
    pub iou_scores: Tensor,
    /// `[K, 1]`: > 0 where SAM 2 predicts the object present; None in the proxy memory mode,
    /// which has no object-score head.
    pub object_scores: Option<Tensor>,
}

/// image_encoder on one model input `[1, 3, S, S]`.
pub fn encode_frame(bundle: &Bundle, image: &Tensor) -> Result<Encoded, EngineError> {
    let mut r = run_graph(
        &bundle.image_encoder,
        &[("image", image)],
        &["image_embeddings", "high_res_feats_0", "high_res_feats_1"],
    )?;
    let high_res_1 = r.remove(2);
    let high_res_0 = r.remove(1);
    let embeddings = r.remove(0);
    let m = &bundle.manifest;
    expect_shape(
        "image_encoder",
        "image_embeddings",
        &embeddings,
        &[1, m.embed_dim, m.embed_size[0], m.embed_size[1]],
    )?;
    Ok(Encoded {
        embeddings,
        high_res_0,
        high_res_1,
    })
}

/// Tracks the next frame of `bank`'s sequence: `image` is its model input `[1, 3, S, S]`.
pub fn track_frame(
    bundle: &Bundle,
    ctx: &SupportContext,
    bank: &mut MemoryBank,
    image: &Tensor,
    timings: &mut StageTimings,
) -> Result<Step, EngineError> {
    let mem = bundle
        .memory
        .as_ref()
        .ok_or_else(|| EngineError::Inference {
            graph: "memory_attention",
            message: format!("bundle {} has no memory graphs (contract 1)", bundle.id()),
        })?;
    let m = &bundle.manifest;
    let t0 = Instant::now();
    let enc = encode_frame(bundle, image)?;
    let t1 = Instant::now();
    timings.image_encoder += t1 - t0;
    let fresh;
    let prompt = match bank.prompt() {
        Some(p) => p,
        None => {
            fresh = proxy_prompt(bundle, ctx, &enc.embeddings, timings)?;
            &fresh
        }
    };
    let k = prompt.shape[0];
    let t2 = Instant::now();
    let a = bank.attention_inputs(k, m.embed_dim, m.embed_size);
    let cond = run_graph_with_ints(
        &mem.attention,
        &[
            ("image_embeddings", &enc.embeddings),
            ("prompt_tokens", prompt),
            ("frame_memory", &a.frame_memory),
            ("frame_valid", &a.frame_valid),
            ("obj_ptrs", &a.obj_ptrs),
            ("ptr_pos", &a.ptr_pos),
            ("ptr_valid", &a.ptr_valid),
        ],
        &[("frame_tpos", &a.frame_tpos)],
        &["conditioned_embeddings"],
    )?
    .remove(0);
    let mut r = run_graph(
        &bundle.mask_decoder,
        &[
            ("conditioned_embeddings", &cond),
            ("high_res_feats_0", &enc.high_res_0),
            ("high_res_feats_1", &enc.high_res_1),
        ],
        &[
            "mask_logits",
            "iou_scores",
            "obj_ptr",
            "object_score_logits",
        ],
    )?;
    let (object_scores, obj_ptr) = (r.remove(3), r.remove(2));
    let (iou_scores, mask_logits) = (r.remove(1), r.remove(0));
    let (lh, lw) = (m.low_res_size[0], m.low_res_size[1]);
    expect_shape("mask_decoder", "mask_logits", &mask_logits, &[k, 1, lh, lw])?;
    let memory = run_graph(
        &mem.encoder,
        &[
            ("image_embeddings", &enc.embeddings),
            ("mask_logits", &mask_logits),
            ("object_score_logits", &object_scores),
        ],
        &["frame_memory"],
    )?
    .remove(0);
    timings.mask_decoder += t2.elapsed();
    let new_prompt = bank.is_empty().then(|| prompt.clone());
    bank.push(new_prompt, memory, Some(obj_ptr));
    Ok(Step {
        embeddings: enc.embeddings,
        mask_logits,
        iou_scores,
        object_scores: Some(object_scores),
    })
}

/// What [`segment_tracked`] returns for a call's frames.
#[derive(Debug)]
pub struct Tracked {
    /// One result per frame of the call, in order (`index`: position in the call).
    pub frames: Vec<FrameResult>,
    /// Earlier frames segmented again in this call (`index`: position in the sequence):
    /// frame 0 after its revisit ([`super::MemorySpec::revisit_first`]). Each replaces the
    /// result given for that frame before.
    pub revised: Vec<FrameResult>,
}

/// Segments the next frames of a sequence, in order, through the bank: the tracked
/// counterpart of [`crate::engine::infer::segment_frames`] (no resolution views), through
/// SAM 2's frame loop (contract 2) or the proxy memory mode (contract 1, [`super::proxy`],
/// with frame 0's revisit when the bundle asks for it). The masks are cut at `thresholds` (per
/// object, [`crate::engine::threshold`]); the bank is fed the same either way.
pub fn segment_tracked(
    bundle: &Bundle,
    ctx: &SupportContext,
    bank: &mut MemoryBank,
    frames: &[Frame],
    (opts, thresholds): (SegmentOptions, &[f32]),
    timings: &mut StageTimings,
) -> Result<Tracked, EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let mut results = Vec::with_capacity(frames.len());
    let mut revised = Vec::new();
    for (index, f) in frames.iter().enumerate() {
        let t0 = Instant::now();
        let (input, g) = prepare_image(f, s, m.pixel_mean, m.pixel_std);
        let image = Tensor {
            shape: vec![1, 3, s, s],
            data: input,
        };
        timings.preprocess += t0.elapsed();
        let first = bank.is_empty();
        let (step, prompt) = if bundle.always_tracks() {
            let step = track_frame(bundle, ctx, bank, &image, timings)?;
            let prompt = first.then(|| bank.prompt().cloned()).flatten();
            (step, prompt)
        } else {
            let (step, prompt) = super::proxy::track_frame(bundle, ctx, bank, &image, timings)?;
            // frame 0's embeddings (4 MiB at S = 256) are copied only when they will be kept
            if bank.wants_first() {
                bank.keep_first(super::FirstFrame {
                    embeddings: step.embeddings.clone(),
                    prompt: prompt.clone(),
                    image: if m.decoder_image {
                        image.clone()
                    } else {
                        empty()
                    },
                    geometry: g,
                });
            }
            if let Some((again, g0)) = super::proxy::revisit_first(bundle, bank, timings)? {
                // frame 0's own result, again: its input image and prompt are not kept
                let r = frame_result(
                    bundle,
                    ctx,
                    (0, again, empty(), None, g0),
                    (opts, thresholds),
                    timings,
                );
                revised.push(r);
            }
            (step, Some(prompt))
        };
        results.push(frame_result(
            bundle,
            ctx,
            (index, step, image, prompt, g),
            (opts, thresholds),
            timings,
        ));
        timings.frames += 1;
    }
    Ok(Tracked {
        frames: results,
        revised,
    })
}

/// The result of frame `index` from its step: masks at the source size (cut at `thresholds`),
/// and with `keep_tensors` its input, prompt and logits.
fn frame_result(
    bundle: &Bundle,
    ctx: &SupportContext,
    (index, step, image, prompt, g): (usize, Step, Tensor, Option<Tensor>, Geometry),
    (opts, thresholds): (SegmentOptions, &[f32]),
    timings: &mut StageTimings,
) -> FrameResult {
    let t1 = Instant::now();
    let logits: Vec<Vec<f32>> = (0..ctx.objects)
        .map(|j| object_logits(bundle, &step.mask_logits, j, &g))
        .collect();
    let masks = crate::engine::threshold::masks(&logits, &g, thresholds);
    timings.postprocess += t1.elapsed();
    let iou_scores = step
        .iou_scores
        .data
        .iter()
        .take(ctx.objects)
        .copied()
        .collect();
    let tensors = opts.keep_tensors.then(|| {
        let full = stack(&logits, g.rows, g.cols);
        FrameTensors {
            image,
            image_embeddings: step.embeddings,
            prompt_tokens: prompt.unwrap_or_else(empty),
            low_res_logits: step.mask_logits,
            logits: full.clone(),
            final_logits: full,
            views: Vec::new(),
        }
    });
    FrameResult {
        index,
        geometry: g,
        look_agreement: vec![None; masks.len()],
        masks,
        iou_scores,
        tensors,
    }
}

fn empty() -> Tensor {
    Tensor {
        shape: vec![0],
        data: Vec::new(),
    }
}
