//! SAM 2's memory bank (contract 2): which earlier frames a frame attends to, and the bounded
//! store of their memories and object pointers for one sequence (a cine loop, or a volume's
//! slices in order along their normal).
//!
//! The policy is SAM 2's (`sam2_base._prepare_memory_conditioned_features` with temporal
//! stride 1 and past pointers only), with the series' first frame as the conditioning frame
//! and the PPG's proxy prompt as prompt memory: scripts/model/proxyseg_model/sam2_track.py is
//! the reference, `slots()` there and [`slots`] here agree (tests on both sides). The frame loop
//! that runs the graphs is [`track`].

pub mod proxy;
pub mod track;

use std::collections::BTreeMap;

use serde::Deserialize;

use super::bundle::Dim;
use super::infer::Tensor;
use super::preprocess::Geometry;

/// The `[memory]` table of a manifest: SAM 2's bank (contract 2), or the proxy memory mode of
/// a contract-1 bundle (a small memory attention and memory encoder the project trained on
/// top of its image encoder; no pointers, no high-resolution features).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemorySpec {
    /// The SAM 2 config the graphs were exported from (e.g. `sam2.1_hiera_t`); contract 2.
    #[serde(default)]
    pub config: String,
    /// Channels Dm of a frame memory (64 for every SAM 2 size).
    pub memory_dim: usize,
    /// M: spatial memory slots of memory_attention (SAM 2's `num_maskmem`): the
    /// conditioning frame plus up to M - 1 recent frames; rows of its temporal encoding.
    pub frame_slots: usize,
    /// P: object-pointer slots (SAM 2's `max_obj_ptrs_in_encoder`); 0 in contract 1.
    #[serde(default)]
    pub pointer_slots: usize,
    /// Recent frames of spatial memory a frame attends to (1..=M - 1; SAM 2: M - 1).
    pub recent_frames: usize,
    /// Channels of the two high-resolution feature maps (image encoder -> mask decoder);
    /// contract 2.
    #[serde(default)]
    pub high_res_channels: Option<[usize; 2]>,
    /// Grid of one frame memory when it is not the embedding grid (contract 1).
    #[serde(default)]
    pub memory_size: Option<[usize; 2]>,
    /// Contract 1: once frame r = min(recent_frames, F - 1) is banked, frame 0 is decoded
    /// again attending to its own memory and frames 1..=r ([`revisit_slots`]), and that mask
    /// replaces its first one. Frame 0 has no memory to lean on, so its first mask is the
    /// model's frame-by-frame one; on a hard first frame it is far worse than the tracked
    /// frames after it, and the jump from it to frame 1 was most of a sequence's instability
    /// (scripts/model/proxyseg_model/lite_track.py is the reference).
    #[serde(default)]
    pub revisit_first: bool,
}

impl MemorySpec {
    /// The table's numbers are usable for `contract` (2: SAM 2; 1: proxy memory mode).
    pub fn check(&self, contract: i64) -> Result<(), String> {
        if self.memory_dim == 0 || self.frame_slots < 2 {
            return Err(format!(
                "[memory] needs memory_dim > 0 and frame_slots >= 2: {self:?}"
            ));
        }
        if !(1..self.frame_slots).contains(&self.recent_frames) {
            return Err(format!(
                "[memory] recent_frames = {} must be 1..={}",
                self.recent_frames,
                self.frame_slots - 1
            ));
        }
        let sam2 = contract == super::bundle::CONTRACT_SAM2;
        if sam2 && self.revisit_first {
            return Err(
                "[memory] revisit_first is a contract-1 (proxy memory mode) setting: SAM 2 keeps its prompted frame".into(),
            );
        }
        match (sam2, self.pointer_slots, self.high_res_channels, self.memory_size) {
            (true, 1.., Some(_), None) => Ok(()),
            (true, ..) => Err(format!(
                "contract 2's [memory] needs pointer_slots > 0 and high_res_channels, and no memory_size: {self:?}"
            )),
            (false, 0, None, Some([h, w])) if h > 0 && w > 0 => Ok(()),
            (false, ..) => Err(format!(
                "contract 1's [memory] (the proxy memory mode) needs memory_size, and no pointer_slots or high_res_channels: {self:?}"
            )),
        }
    }

    /// The grid of one frame memory: `memory_size`, else the embedding grid `embed`.
    pub fn grid(&self, embed: [usize; 2]) -> [usize; 2] {
        self.memory_size.unwrap_or(embed)
    }
}

/// Expected names and shapes of the contract-2 graphs that differ from contract 1.
pub(crate) struct Signatures {
    pub(crate) decoder_in: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) decoder_out: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) attention_in: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) attention_out: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) encoder_in: Vec<(&'static str, Vec<Dim>)>,
    pub(crate) encoder_out: Vec<(&'static str, Vec<Dim>)>,
}

/// The contract-2 signatures for embeddings `c` x `hw` and `t` prompt tokens.
pub(crate) fn signatures(m: &MemorySpec, c: usize, t: usize, hw: [usize; 2]) -> Signatures {
    use Dim::{Is, Var};
    let [h, w] = hw;
    let [c0, c1] = m.high_res_channels.unwrap_or_default();
    let (dm, ms, ps) = (m.memory_dim, m.frame_slots, m.pointer_slots);
    let embed = vec![Is(1), Is(c), Is(h), Is(w)];
    let logits = vec![Var("K"), Is(1), Is(4 * h), Is(4 * w)];
    Signatures {
        decoder_in: vec![
            (
                "conditioned_embeddings",
                vec![Var("K"), Is(c), Is(h), Is(w)],
            ),
            (
                "high_res_feats_0",
                vec![Is(1), Is(c0), Is(4 * h), Is(4 * w)],
            ),
            (
                "high_res_feats_1",
                vec![Is(1), Is(c1), Is(2 * h), Is(2 * w)],
            ),
        ],
        decoder_out: vec![
            ("mask_logits", logits.clone()),
            ("iou_scores", vec![Var("K"), Is(1)]),
            ("obj_ptr", vec![Var("K"), Is(c)]),
            ("object_score_logits", vec![Var("K"), Is(1)]),
        ],
        attention_in: vec![
            ("image_embeddings", embed.clone()),
            ("prompt_tokens", vec![Var("K"), Is(t), Is(c)]),
            ("frame_memory", vec![Var("K"), Is(ms), Is(dm), Is(h), Is(w)]),
            ("frame_tpos", vec![Is(ms)]),
            ("frame_valid", vec![Is(ms)]),
            ("obj_ptrs", vec![Var("K"), Is(ps), Is(c)]),
            ("ptr_pos", vec![Is(ps)]),
            ("ptr_valid", vec![Is(ps)]),
        ],
        attention_out: vec![(
            "conditioned_embeddings",
            vec![Var("K"), Is(c), Is(h), Is(w)],
        )],
        encoder_in: vec![
            ("image_embeddings", embed),
            ("mask_logits", logits),
            ("object_score_logits", vec![Var("K"), Is(1)]),
        ],
        encoder_out: vec![("frame_memory", vec![Var("K"), Is(dm), Is(h), Is(w)])],
    }
}

/// Borrowed form of a signature list, as the bundle loader takes it.
pub(crate) fn refs<'a>(v: &'a [(&'static str, Vec<Dim>)]) -> Vec<(&'static str, &'a [Dim])> {
    v.iter().map(|(n, d)| (*n, d.as_slice())).collect()
}

/// What frame `t` attends to: `frames` as (frame index, temporal-encoding row), the
/// conditioning frame first, then recent frames oldest first; `pointers` as (frame index,
/// signed distance / SAM 2's `t_diff_max`).
#[derive(Debug, Clone, PartialEq)]
pub struct Slots {
    /// Spatial memories.
    pub frames: Vec<(usize, i64)>,
    /// Object pointers.
    pub pointers: Vec<(usize, f32)>,
}

/// SAM 2's selection for frame `t` of a sequence of `num_frames`, frame 0 conditioning.
pub fn slots(t: usize, num_frames: usize, recent: usize, spec: &MemorySpec) -> Slots {
    if t == 0 {
        return Slots {
            frames: Vec::new(),
            pointers: Vec::new(),
        };
    }
    let mut frames = vec![(0, spec.frame_slots as i64 - 1)];
    for age in (1..=recent).rev() {
        if t > age {
            frames.push((t - age, age as i64 - 1));
        }
    }
    let n_ptr = num_frames.min(spec.pointer_slots);
    let t_diff_max = n_ptr.saturating_sub(1).max(1) as f64;
    let mut pointers = vec![(0, (t as f64 / t_diff_max) as f32)];
    for d in 1..n_ptr {
        if d > t {
            break;
        }
        if t - d >= 1 {
            pointers.push((t - d, (d as f64 / t_diff_max) as f32));
        }
    }
    Slots { frames, pointers }
}

/// The slots of frame 0's revisit after frame `r` is banked: frame 0 itself at row M-1, then
/// frames r..=1 at row f - 1 (their distance from frame 0), farthest first as [`slots`]
/// orders recent frames.
pub fn revisit_slots(r: usize, spec: &MemorySpec) -> Slots {
    let mut frames = vec![(0, spec.frame_slots as i64 - 1)];
    frames.extend((1..=r).rev().map(|f| (f, f as i64 - 1)));
    Slots {
        frames,
        pointers: Vec::new(),
    }
}

/// What frame 0's revisit needs of it: kept from its first pass until the revisit.
#[derive(Debug, Clone)]
pub struct FirstFrame {
    /// Its raw embeddings `[1, C, h, w]`.
    pub embeddings: Tensor,
    /// Its proxy prompt `[K, T, C]`.
    pub prompt: Tensor,
    /// Its model input `[1, 3, S, S]` when the bundle's mask decoder takes it
    /// ([`crate::engine::bundle::Manifest::decoder_image`]), else empty.
    pub image: Tensor,
    /// Its model-input geometry, to bring the revisited logits to the source size.
    pub geometry: Geometry,
}

/// One earlier frame in the bank.
#[derive(Debug, Clone)]
struct Entry {
    /// `[K, Dm, h, w]`; dropped once no later frame can attend to it.
    memory: Option<Tensor>,
    /// `[K, C]` (SAM 2; none in the proxy memory mode).
    obj_ptr: Option<Tensor>,
}

/// The memory bank of one sequence and object set. Bounded: the conditioning frame, the
/// memories of the last `recent` frames and the pointers of the last P - 1 frames; the rest is
/// dropped as the sequence advances, and everything when the bank is dropped.
#[derive(Debug, Clone)]
pub struct MemoryBank {
    spec: MemorySpec,
    recent: usize,
    num_frames: usize,
    next: usize,
    prompt: Option<Tensor>,
    entries: BTreeMap<usize, Entry>,
    first: Option<FirstFrame>,
}

impl MemoryBank {
    /// An empty bank for a sequence of `num_frames` (SAM 2 normalises pointer distances by
    /// the sequence length) attending to `recent` frames (clamped to the bundle's slots).
    pub fn new(spec: &MemorySpec, num_frames: usize, recent: Option<usize>) -> MemoryBank {
        let recent = recent
            .unwrap_or(spec.recent_frames)
            .clamp(1, spec.frame_slots - 1);
        MemoryBank {
            spec: spec.clone(),
            recent,
            num_frames: num_frames.max(1),
            next: 0,
            prompt: None,
            entries: BTreeMap::new(),
            first: None,
        }
    }

    /// Index of the next frame.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Frames of the sequence.
    pub fn len(&self) -> usize {
        self.num_frames
    }

    /// True before the first frame.
    pub fn is_empty(&self) -> bool {
        self.next == 0
    }

    /// The proxy prompt of frame 0 (`[K, T, C]`), once it ran.
    pub fn prompt(&self) -> Option<&Tensor> {
        self.prompt.as_ref()
    }

    /// Bytes of tensors held (prompt, memories, pointers, frame 0 until its revisit).
    pub fn bytes(&self) -> usize {
        let t = |x: &Tensor| x.data.len() * 4;
        self.prompt.as_ref().map_or(0, t)
            + self
                .first
                .as_ref()
                .map_or(0, |f| t(&f.embeddings) + t(&f.prompt) + t(&f.image))
            + self
                .entries
                .values()
                .map(|e| e.memory.as_ref().map_or(0, t) + e.obj_ptr.as_ref().map_or(0, t))
                .sum::<usize>()
    }

    /// The most bytes a full bank holds for `k` objects: M frame memories (on the spec's
    /// [`MemorySpec::grid`] of the embedding grid `hw`), P pointers, the prompt of
    /// `prompt_tokens` x `embed_dim` (SAM 2's, or frame 0's until its revisit) and, with
    /// [`MemorySpec::revisit_first`], frame 0's embeddings and its `first_image` values (the
    /// model input, `3 * S * S` when the decoder takes it, else 0) ([`MemoryBank::bytes`]
    /// never exceeds it).
    pub fn max_bytes(
        spec: &MemorySpec,
        k: usize,
        embed_dim: usize,
        hw: [usize; 2],
        prompt_tokens: usize,
        first_image: usize,
    ) -> usize {
        let [h, w] = spec.grid(hw);
        let first = if spec.revisit_first {
            embed_dim * hw[0] * hw[1] + first_image
        } else {
            0
        };
        4 * (k
            * (spec.frame_slots * spec.memory_dim * h * w
                + (spec.pointer_slots + prompt_tokens) * embed_dim)
            + first)
    }

    /// The frame after which frame 0 is revisited: min(recent, F - 1), when the spec asks
    /// for it and the sequence has more than one frame.
    pub fn revisit_frame(&self) -> Option<usize> {
        let r = self.recent.min(self.num_frames - 1);
        (self.spec.revisit_first && r >= 1).then_some(r)
    }

    /// True right after frame 0 was pushed when the bank will revisit it: then
    /// [`MemoryBank::keep_first`] keeps what it is given.
    pub fn wants_first(&self) -> bool {
        self.next == 1 && self.revisit_frame().is_some()
    }

    /// Keeps frame 0's inputs for its revisit when [`MemoryBank::wants_first`] (otherwise
    /// nothing is kept).
    pub fn keep_first(&mut self, first: FirstFrame) {
        if self.wants_first() {
            self.first = Some(first);
        }
    }

    /// Objects K of frame 0's kept prompt, while it is kept.
    pub fn first_objects(&self) -> Option<usize> {
        self.first.as_ref().map(|f| f.prompt.shape[0])
    }

    /// Frame 0's kept inputs and the memory_attention inputs of its revisit, once the frame
    /// [`MemoryBank::revisit_frame`] is banked; the kept inputs leave the bank. None before,
    /// after, or when the bank does not revisit.
    pub fn take_revisit(
        &mut self,
        k: usize,
        c: usize,
        hw: [usize; 2],
    ) -> Option<(FirstFrame, AttentionInputs)> {
        let r = self.revisit_frame()?;
        if self.next != r + 1 {
            return None;
        }
        let first = self.first.take()?;
        let inputs = self.inputs_for(&revisit_slots(r, &self.spec), k, c, hw);
        Some((first, inputs))
    }

    /// Frames whose memory or pointer is held.
    pub fn held_frames(&self) -> usize {
        self.entries.len()
    }

    /// The slots of the next frame.
    pub fn next_slots(&self) -> Slots {
        slots(self.next, self.num_frames, self.recent, &self.spec)
    }

    /// The inputs of memory_attention for the next frame with `k` objects, `c` channels and
    /// an `hw` grid: (frame_memory, frame_tpos, frame_valid, obj_ptrs, ptr_pos, ptr_valid).
    pub fn attention_inputs(&self, k: usize, c: usize, hw: [usize; 2]) -> AttentionInputs {
        self.inputs_for(&self.next_slots(), k, c, hw)
    }

    /// memory_attention's bank inputs for the slots `sl`.
    fn inputs_for(&self, sl: &Slots, k: usize, c: usize, hw: [usize; 2]) -> AttentionInputs {
        let (ms, ps, dm) = (
            self.spec.frame_slots,
            self.spec.pointer_slots,
            self.spec.memory_dim,
        );
        let plane = dm * hw[0] * hw[1];
        let mut frame_memory = vec![0f32; k * ms * plane];
        let mut frame_tpos = vec![0i64; ms];
        let mut frame_valid = vec![0f32; ms];
        for (i, (f, row)) in sl.frames.iter().enumerate() {
            if let Some(m) = self.entries.get(f).and_then(|e| e.memory.as_ref()) {
                fill_slot(&mut frame_memory, &m.data, k, ms, i, plane);
                frame_tpos[i] = *row;
                frame_valid[i] = 1.0;
            }
        }
        let mut obj_ptrs = vec![0f32; k * ps * c];
        let mut ptr_pos = vec![0f32; ps];
        let mut ptr_valid = vec![0f32; ps];
        for (i, (f, pos)) in sl.pointers.iter().enumerate().take(ps) {
            if let Some(p) = self.entries.get(f).and_then(|e| e.obj_ptr.as_ref()) {
                fill_slot(&mut obj_ptrs, &p.data, k, ps, i, c);
                ptr_pos[i] = *pos;
                ptr_valid[i] = 1.0;
            }
        }
        AttentionInputs {
            frame_memory: Tensor {
                shape: vec![k, ms, dm, hw[0], hw[1]],
                data: frame_memory,
            },
            frame_tpos,
            frame_valid: Tensor {
                shape: vec![ms],
                data: frame_valid,
            },
            obj_ptrs: Tensor {
                shape: vec![k, ps, c],
                data: obj_ptrs,
            },
            ptr_pos: Tensor {
                shape: vec![ps],
                data: ptr_pos,
            },
            ptr_valid: Tensor {
                shape: vec![ps],
                data: ptr_valid,
            },
        }
    }

    /// Stores the frame just segmented and drops what no later frame can attend to.
    pub fn push(&mut self, prompt: Option<Tensor>, memory: Tensor, obj_ptr: Option<Tensor>) {
        if self.next == 0 {
            self.prompt = prompt;
        }
        let t = self.next;
        self.entries.insert(
            t,
            Entry {
                memory: Some(memory),
                obj_ptr,
            },
        );
        self.next += 1;
        // The next frame attends to memories of frames >= next - recent, and to pointers of
        // frames >= next - (P - 1); frame 0 stays (the conditioning frame).
        let keep_mem = self.next.saturating_sub(self.recent);
        let keep_ptr = self
            .next
            .saturating_sub(self.spec.pointer_slots.saturating_sub(1));
        let keep = keep_ptr.min(keep_mem);
        self.entries.retain(|&f, _| f == 0 || f >= keep);
        for (&f, e) in self.entries.iter_mut() {
            if f != 0 && f < keep_mem {
                e.memory = None;
            }
        }
    }
}

/// Copies each of the `k` objects' `per` values of `src` (`[K, per]`) into slot `i` of `dst`
/// (`[K, slots, per]`).
fn fill_slot(dst: &mut [f32], src: &[f32], k: usize, slots: usize, i: usize, per: usize) {
    for j in 0..k {
        let at = (j * slots + i) * per;
        dst[at..at + per].copy_from_slice(&src[j * per..(j + 1) * per]);
    }
}

/// memory_attention's bank inputs for one frame.
#[derive(Debug, Clone)]
pub struct AttentionInputs {
    /// `[K, M, Dm, h, w]`.
    pub frame_memory: Tensor,
    /// `[M]` rows of SAM 2's temporal encoding.
    pub frame_tpos: Vec<i64>,
    /// `[M]` 1 for a used slot.
    pub frame_valid: Tensor,
    /// `[K, P, C]`.
    pub obj_ptrs: Tensor,
    /// `[P]` normalised distances.
    pub ptr_pos: Tensor,
    /// `[P]` 1 for a used slot.
    pub ptr_valid: Tensor,
}

#[cfg(test)]
mod tests;
