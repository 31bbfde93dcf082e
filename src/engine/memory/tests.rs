//! The bank's slot policy, bounds and frame 0's revisit.

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
        revisit_first: false,
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
    assert_eq!(MemoryBank::max_bytes(&s, 1, 4, [2, 2], 3, 0), most);
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
        revisit_first: false,
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
    assert_eq!(MemoryBank::max_bytes(&s, 1, 4, [8, 8], 0, 0), most);
}

fn proxy_spec(revisit_first: bool) -> MemorySpec {
    MemorySpec {
        config: String::new(),
        memory_dim: 1,
        frame_slots: 4,
        pointer_slots: 0,
        recent_frames: 3,
        high_res_channels: None,
        memory_size: Some([1, 1]),
        revisit_first,
    }
}

fn first_frame() -> FirstFrame {
    FirstFrame {
        embeddings: tensor(vec![1, 4, 2, 2], 0.5),
        prompt: tensor(vec![1, 3, 4], 1.0),
        image: tensor(vec![1, 3, 2, 2], 0.25),
        geometry: Geometry::new(8, 8, 8),
    }
}

#[test]
fn frame_0_is_revisited_once_after_frame_r_with_frames_1_to_r_at_their_distance() {
    let s = proxy_spec(true);
    assert_eq!(s.check(1), Ok(()));
    assert!(s.check(2).is_err(), "SAM 2 does not revisit");
    // r = min(recent, F - 1); none for a single frame
    for (frames, r) in [(1, None), (2, Some(1)), (3, Some(2)), (100, Some(3))] {
        assert_eq!(MemoryBank::new(&s, frames, None).revisit_frame(), r);
    }
    assert_eq!(
        revisit_slots(3, &s).frames,
        vec![(0, 3), (3, 2), (2, 1), (1, 0)]
    );
    let mut bank = MemoryBank::new(&s, 100, None);
    let mut most = 0;
    let mut revisits = Vec::new();
    for t in 0..10 {
        bank.push(None, tensor(vec![1, 1, 1, 1], t as f32 + 1.0), None);
        if t == 0 {
            bank.keep_first(first_frame());
        }
        most = most.max(bank.bytes());
        if let Some((first, a)) = bank.take_revisit(1, 4, [1, 1]) {
            assert_eq!(first.embeddings.data, vec![0.5; 16]);
            assert_eq!(
                first.image.data,
                vec![0.25; 12],
                "frame 0's model input, for its decoder"
            );
            // frame 0 (row 3), frames 3, 2, 1 (rows 2, 1, 0): values 1, 4, 3, 2
            assert_eq!(a.frame_tpos, vec![3, 2, 1, 0]);
            assert_eq!(a.frame_valid.data, vec![1.0; 4]);
            assert_eq!(a.frame_memory.data, vec![1.0, 4.0, 3.0, 2.0]);
            revisits.push(t);
        }
    }
    assert_eq!(revisits, vec![3], "once, right after frame r = 3 is banked");
    assert_eq!(bank.first_objects(), None, "frame 0's inputs left the bank");
    // 4 memories of 1 value, and frame 0's embeddings (16), prompt (12) and image (12) while kept
    assert_eq!(most, (4 + 16 + 12 + 12) * 4);
    assert!(MemoryBank::max_bytes(&s, 1, 4, [2, 2], 3, 12) >= most);
    assert!(
        MemoryBank::max_bytes(&s, 1, 4, [2, 2], 3, 0) < most,
        "the bound counts the kept image"
    );
    // without revisit_first nothing is kept and nothing is revisited
    let mut plain = MemoryBank::new(&proxy_spec(false), 100, None);
    for t in 0..5 {
        plain.push(None, tensor(vec![1, 1, 1, 1], 1.0), None);
        if t == 0 {
            plain.keep_first(first_frame());
        }
        assert!(plain.take_revisit(1, 4, [1, 1]).is_none());
    }
    assert_eq!(plain.bytes(), 4 * 4);
}
