//! The proxy memory mode of a contract-1 bundle: a small memory attention and memory encoder
//! the project trained on top of the bundle's frozen image encoder, so that a bundle without
//! SAM 2 weights still carries the object from frame to frame (issue 15, item 3).
//!
//! Per frame: image_encoder -> the frame's embeddings; prompt_generator on them with the
//! support context (every frame, as frame by frame); memory_attention conditions the
//! embeddings per object on the bank (frame 0 and the recent frames, SAM 2's slot policy,
//! [`super::slots`]); mask_decoder runs once per object on its conditioned embeddings with its
//! proxy prompt; memory_encoder turns the embeddings and the frame's mask logits into the
//! frame's memory. No object pointers, no high-resolution features. The reference is
//! scripts/model (the export's fixtures; tests/engine/engine_memory_mode.rs).

use super::{MemoryBank, MemorySpec};
use crate::engine::bundle::{Bundle, Dim, Graph};
use crate::engine::infer::{
    encode_images, expect_shape, proxy_prompt, run_decoder, run_graph, run_graph_with_ints,
    SupportContext, Tensor,
};
use crate::engine::EngineError;

use super::track::Step;

/// Expected names and shapes of the two proxy-mode graphs.
pub(crate) struct Signatures {
    pub(crate) attention_in: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) attention_out: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) encoder_in: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) encoder_out: Vec<(&'static str, Vec<Dim>)>,
}

/// The proxy-mode signatures for embeddings `c` x `hw`.
pub(crate) fn signatures(m: &MemorySpec, c: usize, hw: [usize; 2]) -> Signatures {
    use Dim::{Is, Var};
    let [h, w] = hw;
    let [mh, mw] = m.grid(hw);
    let (dm, ms) = (m.memory_dim, m.frame_slots);
    let embed = vec![Is(1), Is(c), Is(h), Is(w)];
    Signatures {
        attention_in: vec![
            ("image_embeddings", embed.clone()),
            (
                "frame_memory",
                vec![Var("K"), Is(ms), Is(dm), Is(mh), Is(mw)],
            ),
            ("frame_tpos", vec![Is(ms)]),
            ("frame_valid", vec![Is(ms)]),
        ],
        attention_out: vec![(
            "conditioned_embeddings",
            vec![Var("K"), Is(c), Is(h), Is(w)],
        )],
        encoder_in: vec![
            ("image_embeddings", embed),
            ("mask_logits", vec![Var("K"), Is(1), Is(4 * h), Is(4 * w)]),
        ],
        encoder_out: vec![("frame_memory", vec![Var("K"), Is(dm), Is(mh), Is(mw)])],
    }
}

/// Tracks the next frame of `bank`'s sequence through a contract-1 bundle's proxy memory
/// mode: `image` is its model input `[1, 3, S, S]`. Returns the step and the frame's proxy
/// prompt.
pub fn track_frame(
    bundle: &Bundle,
    ctx: &SupportContext,
    bank: &mut MemoryBank,
    image: &Tensor,
    timings: &mut crate::engine::infer::StageTimings,
) -> Result<(Step, Tensor), EngineError> {
    use std::time::Instant;
    let mem = bundle.memory.as_ref().ok_or_else(|| no_memory(bundle))?;
    let spec = bundle
        .manifest
        .memory
        .as_ref()
        .ok_or_else(|| no_memory(bundle))?;
    let m = &bundle.manifest;
    let t0 = Instant::now();
    let embeddings = encode_images(bundle, &image.data, 1, 1)?;
    let (c, [h, w]) = (m.embed_dim, m.embed_size);
    timings.image_encoder += t0.elapsed();
    let prompt = proxy_prompt(bundle, ctx, &embeddings, timings)?;
    let k = prompt.shape[0];
    let t2 = Instant::now();
    let a = bank.attention_inputs(k, c, spec.grid([h, w]));
    let cond = attend(bundle, &mem.attention, &embeddings, &a, k)?;
    let (mask_logits, iou_scores) = decode_per_object(bundle, &cond, &prompt, &image.data)?;
    let memory = run_graph(
        &mem.encoder,
        &[
            ("image_embeddings", &embeddings),
            ("mask_logits", &mask_logits),
        ],
        &["frame_memory"],
    )?
    .remove(0);
    timings.mask_decoder += t2.elapsed();
    bank.push(None, memory, None);
    let step = Step {
        embeddings,
        mask_logits,
        iou_scores,
        object_scores: None,
    };
    Ok((step, prompt))
}

/// Frame 0's revisit ([`super::MemorySpec::revisit_first`]), when `bank` has just banked the
/// frame it waits for: memory_attention on frame 0's kept embeddings over [`super::revisit_slots`],
/// then mask_decoder per object with frame 0's proxy prompt. Returns frame 0's new step (its
/// mask replaces the first one) and its geometry; the bank's memories are not changed. None
/// when no revisit is due.
pub fn revisit_first(
    bundle: &Bundle,
    bank: &mut MemoryBank,
    timings: &mut crate::engine::infer::StageTimings,
) -> Result<Option<(Step, crate::engine::preprocess::Geometry)>, EngineError> {
    let (Some(mem), Some(spec)) = (bundle.memory.as_ref(), bundle.manifest.memory.as_ref()) else {
        return Ok(None);
    };
    let m = &bundle.manifest;
    let (c, [h, w]) = (m.embed_dim, m.embed_size);
    let k = match bank.first_objects() {
        Some(k) => k,
        None => return Ok(None),
    };
    let Some((first, a)) = bank.take_revisit(k, c, spec.grid([h, w])) else {
        return Ok(None);
    };
    let t0 = std::time::Instant::now();
    let cond = attend(bundle, &mem.attention, &first.embeddings, &a, k)?;
    let (mask_logits, iou_scores) =
        decode_per_object(bundle, &cond, &first.prompt, &first.image.data)?;
    timings.mask_decoder += t0.elapsed();
    let step = Step {
        embeddings: first.embeddings,
        mask_logits,
        iou_scores,
        object_scores: None,
    };
    Ok(Some((step, first.geometry)))
}

/// memory_attention on one frame's `embeddings` over the bank inputs `a` for `k` objects:
/// the conditioned embeddings `[K, C, h, w]`.
fn attend(
    bundle: &Bundle,
    attention: &Graph,
    embeddings: &Tensor,
    a: &super::AttentionInputs,
    k: usize,
) -> Result<Tensor, EngineError> {
    let m = &bundle.manifest;
    let cond = run_graph_with_ints(
        attention,
        &[
            ("image_embeddings", embeddings),
            ("frame_memory", &a.frame_memory),
            ("frame_valid", &a.frame_valid),
        ],
        &[("frame_tpos", &a.frame_tpos)],
        &["conditioned_embeddings"],
    )?
    .remove(0);
    expect_shape(
        "memory_attention",
        "conditioned_embeddings",
        &cond,
        &[k, m.embed_dim, m.embed_size[0], m.embed_size[1]],
    )?;
    Ok(cond)
}

/// mask_decoder once per object: object `j`'s conditioned embeddings with its proxy prompt
/// (and the frame's model input `image`, for a decoder that takes it). Returns the stacked
/// `[K, 1, 4h, 4w]` logits and `[K, 1]` scores.
fn decode_per_object(
    bundle: &Bundle,
    cond: &Tensor,
    prompt: &Tensor,
    image: &[f32],
) -> Result<(Tensor, Tensor), EngineError> {
    let m = &bundle.manifest;
    let k = prompt.shape[0];
    let per_embed = cond.data.len() / k.max(1);
    let per_prompt = prompt.data.len() / k.max(1);
    let (lh, lw) = (m.low_res_size[0], m.low_res_size[1]);
    let mut logits = Vec::with_capacity(k * lh * lw);
    let mut scores = Vec::with_capacity(k);
    for j in 0..k {
        let e = Tensor {
            shape: vec![1, m.embed_dim, m.embed_size[0], m.embed_size[1]],
            data: cond.data[j * per_embed..(j + 1) * per_embed].to_vec(),
        };
        let p = Tensor {
            shape: vec![1, prompt.shape[1], prompt.shape[2]],
            data: prompt.data[j * per_prompt..(j + 1) * per_prompt].to_vec(),
        };
        let mut r = run_decoder(bundle, &e, &p, image)?;
        expect_shape("mask_decoder", "mask_logits", &r[0], &[1, 1, lh, lw])?;
        scores.extend_from_slice(&r.remove(1).data);
        logits.extend_from_slice(&r.remove(0).data);
    }
    Ok((
        Tensor {
            shape: vec![k, 1, lh, lw],
            data: logits,
        },
        Tensor {
            shape: vec![k, 1],
            data: scores,
        },
    ))
}

fn no_memory(bundle: &Bundle) -> EngineError {
    EngineError::Inference {
        graph: "memory_attention",
        message: format!("bundle {} has no memory mode", bundle.id()),
    }
}
