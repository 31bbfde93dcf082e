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

    /// Bytes of tensors held (prompt, memories, pointers).
    pub fn bytes(&self) -> usize {
        let t = |x: &Tensor| x.data.len() * 4;
        self.prompt.as_ref().map_or(0, t)
            + self
                .entries
                .values()
                .map(|e| e.memory.as_ref().map_or(0, t) + e.obj_ptr.as_ref().map_or(0, t))
                .sum::<usize>()
    }

    /// The most bytes a full bank holds for `k` objects: M frame memories (on the spec's
    /// [`MemorySpec::grid`] of the embedding grid `hw`), P pointers and the prompt of
    /// `prompt_tokens` x `embed_dim` ([`MemoryBank::bytes`] never exceeds it).
    pub fn max_bytes(
        spec: &MemorySpec,
        k: usize,
        embed_dim: usize,
        hw: [usize; 2],
        prompt_tokens: usize,
    ) -> usize {
        let [h, w] = spec.grid(hw);
        4 * k
            * (spec.frame_slots * spec.memory_dim * h * w
                + (spec.pointer_slots + prompt_tokens) * embed_dim)
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
        let (ms, ps, dm) = (
            self.spec.frame_slots,
            self.spec.pointer_slots,
            self.spec.memory_dim,
        );
        let plane = dm * hw[0] * hw[1];
        let sl = self.next_slots();
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
mod tests {
    use super::*;

    fn spec() -> MemorySpec {
        MemorySpec {
            config: "sam2.1_hiera_t".into(),
            memory_dim: 2,
            frame_slots: 7,
            pointer_slots: 16,
            recent_frames: 6,
            high_res_channels: Some([32, 64]),
            memory_size: None,
        }
    }

    #[test]
    fn slots_follow_sam2_as_the_python_reference() {
        let s = spec();
        assert_eq!(slots(0, 40, 6, &s).frames, vec![]);
        assert_eq!(slots(1, 40, 6, &s).frames, vec![(0, 6)]);
        assert_eq!(slots(1, 40, 6, &s).pointers, vec![(0, 1.0 / 15.0)]);
        let sl = slots(20, 40, 6, &s);
        assert_eq!(
            sl.frames,
            vec![(0, 6), (14, 5), (15, 4), (16, 3), (17, 2), (18, 1), (19, 0)]
        );
        let frames: Vec<usize> = sl.pointers.iter().map(|p| p.0).collect();
        let mut want = vec![0];
        want.extend((5..=19).rev());
        assert_eq!(frames, want);
        assert_eq!(sl.pointers[1], (19, 1.0 / 15.0));
        assert_eq!(
            slots(3, 4, 6, &s).pointers,
            vec![(0, 1.0), (2, 1.0 / 3.0), (1, 2.0 / 3.0)]
        );
        assert_eq!(slots(20, 40, 2, &s).frames, vec![(0, 6), (18, 1), (19, 0)]);
    }

    fn tensor(shape: Vec<usize>, v: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![v; n],
        }
    }

    #[test]
    fn the_bank_stays_bounded_over_a_long_sequence() {
        let s = spec();
        let mut bank = MemoryBank::new(&s, 10_000, None);
        let mut most = 0;
        for t in 0..10_000 {
            let inputs = bank.attention_inputs(1, 4, [2, 2]);
            // every slot the policy names is filled from the bank
            let sl = bank.next_slots();
            let used = inputs
                .frame_valid
                .data
                .iter()
                .filter(|&&v| v == 1.0)
                .count();
            assert_eq!(used, sl.frames.len(), "frame {t}");
            let ptrs = inputs.ptr_valid.data.iter().filter(|&&v| v == 1.0).count();
            assert_eq!(ptrs, sl.pointers.len(), "frame {t}");
            bank.push(
                (t == 0).then(|| tensor(vec![1, 3, 4], 1.0)),
                tensor(vec![1, 2, 2, 2], t as f32),
                Some(tensor(vec![1, 4], t as f32)),
            );
            most = most.max(bank.bytes());
        }
        assert_eq!(bank.held_frames(), 16);
        // prompt + 7 memories + 16 pointers
        assert_eq!(most, (12 + 7 * 8 + 16 * 4) * 4);
        assert_eq!(MemoryBank::max_bytes(&s, 1, 4, [2, 2], 3), most);
        assert!(bank.prompt().is_some());
    }

    #[test]
    fn slot_inputs_carry_each_frames_own_memory() {
        let s = spec();
        let mut bank = MemoryBank::new(&s, 5, Some(2));
        for t in 0..4 {
            bank.push(
                (t == 0).then(|| tensor(vec![2, 3, 4], 1.0)),
                tensor(vec![2, 2, 1, 1], t as f32 + 1.0),
                Some(tensor(vec![2, 4], 10.0 * (t as f32 + 1.0))),
            );
        }
        // frame 4 attends to frame 0 (row 6), frames 2 and 3 (rows 1, 0)
        let a = bank.attention_inputs(2, 4, [1, 1]);
        assert_eq!(a.frame_tpos, vec![6, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&a.frame_valid.data[..4], &[1.0, 1.0, 1.0, 0.0]);
        // object 1, slots 0..3: frames 0, 2, 3 -> values 1, 3, 4
        let plane = 2;
        let obj1 = &a.frame_memory.data[7 * plane..];
        assert_eq!(&obj1[..3 * plane], &[1.0, 1.0, 3.0, 3.0, 4.0, 4.0]);
        // pointers: frame 0 at 4/4, then frames 3, 2, 1
        assert_eq!(&a.ptr_pos.data[..4], &[1.0, 0.25, 0.5, 0.75]);
        assert_eq!(a.obj_ptrs.data[4], 40.0);
    }

    #[test]
    fn the_proxy_mode_bank_keeps_its_recent_memories_without_pointers() {
        let s = MemorySpec {
            config: String::new(),
            memory_dim: 2,
            frame_slots: 4,
            pointer_slots: 0,
            recent_frames: 3,
            high_res_channels: None,
            memory_size: Some([1, 1]),
        };
        assert_eq!(s.check(1), Ok(()));
        assert!(s.check(2).is_err());
        assert!(spec().check(1).is_err());
        let mut bank = MemoryBank::new(&s, 100, None);
        let mut most = 0;
        for t in 0..100 {
            let a = bank.attention_inputs(1, 4, s.grid([8, 8]));
            let want = if t == 0 { 0 } else { 1 + (t - 1).min(3) };
            let used = a.frame_valid.data.iter().filter(|&&v| v == 1.0).count();
            assert_eq!(used, want, "frame {t}");
            assert!(a.obj_ptrs.data.is_empty());
            bank.push(None, tensor(vec![1, 2, 1, 1], t as f32), None);
            most = most.max(bank.bytes());
        }
        // frame 0 and the last 3 frames: 4 memories of 2 values
        assert_eq!(bank.held_frames(), 4);
        assert_eq!(most, 4 * 2 * 4);
        assert_eq!(MemoryBank::max_bytes(&s, 1, 4, [8, 8], 0), most);
    }
}
