//! Bit packing of BINARY segmentation frames (PS3.5 §8.1.1 / PS3.3 C.8.20.2).
//!
//! With Bits Allocated 1, frames are packed back to back with no padding between them: pixel `i`
//! of the whole multi-frame pixel matrix is bit `i % 8` (least significant bit first) of byte
//! `i / 8`, so a frame whose pixel count is not a multiple of 8 starts inside a byte. Only the end
//! of the Pixel Data is padded, to an even length. This module must never pad between frames.

/// Packs 0/non-zero mask frames into one bit stream, frame after frame.
///
/// Each pushed frame continues at the bit where the previous one stopped. Any non-zero byte is a
/// set pixel.
#[derive(Debug, Default)]
pub struct BitPacker {
    bytes: Vec<u8>,
    bits: u64,
}

impl BitPacker {
    /// A packer whose buffer already holds room for `total_pixels` pixels.
    pub fn with_capacity(total_pixels: u64) -> Self {
        let cap = usize::try_from(total_pixels.div_ceil(8) + 1).unwrap_or(0);
        Self {
            bytes: Vec::with_capacity(cap),
            bits: 0,
        }
    }

    /// Appends one frame (one byte per pixel, non-zero = set).
    pub fn push_frame(&mut self, mask: &[u8]) {
        let mut rest = mask;
        if self.bits.is_multiple_of(8) {
            // Aligned: 16 pixels become two bytes (SSE2), then 8 pixels one byte (SWAR).
            let done = pack16_into(rest, &mut self.bytes);
            self.bits += done as u64;
            rest = &rest[done..];
            let chunks = rest.chunks_exact(8);
            let tail = chunks.remainder();
            self.bytes.reserve(rest.len() / 8 + 1);
            for chunk in chunks {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                self.bytes.push(pack8(u64::from_le_bytes(word)));
            }
            self.bits += (rest.len() - tail.len()) as u64;
            rest = tail;
        }
        for &px in rest {
            self.push_bit(px != 0);
        }
    }

    fn push_bit(&mut self, set: bool) {
        let bit = (self.bits % 8) as u32;
        if bit == 0 {
            self.bytes.push(0);
        }
        if set {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 1 << bit;
            }
        }
        self.bits += 1;
    }

    /// Number of pixels pushed so far.
    pub fn bit_len(&self) -> u64 {
        self.bits
    }

    /// The packed bytes, padded with one zero byte when their count is odd.
    pub fn finish(mut self) -> Vec<u8> {
        if !self.bytes.len().is_multiple_of(2) {
            self.bytes.push(0);
        }
        self.bytes
    }
}

/// Packs the largest multiple of 16 leading pixels of `mask` onto `out` with SSE2 (part of the
/// x86_64 baseline, so always available there); returns how many pixels it packed.
#[cfg(target_arch = "x86_64")]
fn pack16_into(mask: &[u8], out: &mut Vec<u8>) -> usize {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_setzero_si128,
    };
    let chunks = mask.chunks_exact(16);
    let done = mask.len() - chunks.remainder().len();
    out.reserve(done / 8);
    for chunk in chunks {
        // SAFETY: SSE2 is enabled on every x86_64 target, and the unaligned load reads exactly
        // the 16 bytes of `chunk`.
        let zero_bits = unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))
        };
        // Bit i of the mask is set iff byte i is zero: invert to get "pixel i is set".
        let bits = !(zero_bits as u16);
        out.extend_from_slice(&bits.to_le_bytes());
    }
    done
}

/// Without SSE2, nothing is packed here and the SWAR path does all the work.
#[cfg(not(target_arch = "x86_64"))]
fn pack16_into(_mask: &[u8], _out: &mut Vec<u8>) -> usize {
    0
}

/// Packs 8 mask bytes (byte `i` = pixel `i`, non-zero = set) into one byte, pixel `i` at bit `i`.
#[inline]
fn pack8(word: u64) -> u8 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte set iff the byte is non-zero, then moved to the byte's low bit.
    let nonzero = (((word & LOW7) + LOW7) | word) & HIGH;
    let ones = nonzero >> 7;
    // Gather the 8 low bits into the top byte: byte i lands on bit 56 + i.
    (ones.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// Whether a mask (one byte per pixel) has no set pixel. Reduces 64-byte blocks with OR, which
/// vectorises, and stops at the first block with a set pixel.
pub fn is_empty_mask(mask: &[u8]) -> bool {
    let blocks = mask.chunks_exact(64);
    let tail = blocks.remainder();
    for block in blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    tail.iter().all(|&b| b == 0)
}

/// Packs whole frames; a shorthand for [`BitPacker`].
pub fn pack_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut packer = BitPacker::default();
    for frame in frames {
        packer.push_frame(frame);
    }
    packer.finish()
}

/// The byte length of packed Pixel Data for `pixels_per_frame * frames` pixels, padding included.
pub fn packed_len(pixels_per_frame: u64, frames: u64) -> u64 {
    let bytes = (pixels_per_frame * frames).div_ceil(8);
    bytes + bytes % 2
}

/// Byte value -> its 8 pixels (bit i -> pixel i, 0/1).
const UNPACK: [[u8; 8]; 256] = {
    let mut table = [[0u8; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut bit = 0;
        while bit < 8 {
            table[byte][bit] = ((byte >> bit) & 1) as u8;
            bit += 1;
        }
        byte += 1;
    }
    table
};

/// Unpacks frame `frame` (0-based) of `pixels_per_frame` pixels into one byte (0/1) per pixel.
///
/// Returns `None` when `packed` is too short to hold that frame.
pub fn unpack_frame(packed: &[u8], pixels_per_frame: usize, frame: usize) -> Option<Vec<u8>> {
    let start = frame.checked_mul(pixels_per_frame)?;
    let end = start.checked_add(pixels_per_frame)?;
    if end.div_ceil(8) > packed.len() {
        return None;
    }
    let mut out = Vec::with_capacity(pixels_per_frame);
    let mut i = start;
    // Leading bits up to a byte boundary, then whole bytes, then the tail.
    while i < end && i % 8 != 0 {
        out.push((packed[i / 8] >> (i % 8)) & 1);
        i += 1;
    }
    while i + 8 <= end {
        out.extend_from_slice(&UNPACK[usize::from(packed[i / 8])]);
        i += 8;
    }
    while i < end {
        out.push((packed[i / 8] >> (i % 8)) & 1);
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_pack(frames: &[Vec<u8>]) -> Vec<u8> {
        let bits: Vec<bool> = frames.iter().flatten().map(|&b| b != 0).collect();
        let mut out = vec![0u8; bits.len().div_ceil(8)];
        for (i, &b) in bits.iter().enumerate() {
            if b {
                out[i / 8] |= 1 << (i % 8);
            }
        }
        if out.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    fn pseudo_random_frame(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Mix 0, 1 and other non-zero values (255) to test normalisation.
                match (x >> 33) % 3 {
                    0 => 0,
                    1 => 1,
                    _ => 255,
                }
            })
            .collect()
    }

    #[test]
    fn pack8_matches_bit_order() {
        assert_eq!(
            pack8(u64::from_le_bytes([1, 0, 0, 0, 0, 0, 0, 0])),
            0b0000_0001
        );
        assert_eq!(
            pack8(u64::from_le_bytes([0, 0, 0, 0, 0, 0, 0, 1])),
            0b1000_0000
        );
        assert_eq!(
            pack8(u64::from_le_bytes([255, 0, 7, 0, 128, 0, 0, 1])),
            0b1001_0101
        );
        assert_eq!(pack8(u64::MAX), 0xff);
        assert_eq!(pack8(0), 0);
    }

    #[test]
    fn frames_are_packed_across_byte_boundaries() {
        // 3x3 frames: 9 bits each, so frame 2 starts at bit 1 of byte 1.
        let frames: Vec<Vec<u8>> = (0..5).map(|s| pseudo_random_frame(9, s)).collect();
        let packed = pack_frames(frames.iter().map(|f| f.as_slice()));
        assert_eq!(packed, naive_pack(&frames));
        assert_eq!(packed.len() as u64, packed_len(9, 5));
        for (i, f) in frames.iter().enumerate() {
            let expect: Vec<u8> = f.iter().map(|&b| u8::from(b != 0)).collect();
            assert_eq!(unpack_frame(&packed, 9, i).unwrap(), expect, "frame {i}");
        }
    }

    #[test]
    fn aligned_and_unaligned_sizes_agree_with_naive_packing() {
        for (len, count) in [
            (64usize, 3usize),
            (17, 4),
            (512 * 3, 2),
            (1, 1),
            (7, 9),
            (100, 3),
        ] {
            let frames: Vec<Vec<u8>> = (0..count)
                .map(|s| pseudo_random_frame(len, s as u64 + 7))
                .collect();
            let packed = pack_frames(frames.iter().map(|f| f.as_slice()));
            assert_eq!(packed, naive_pack(&frames), "len {len} count {count}");
            assert_eq!(packed.len() % 2, 0);
            assert_eq!(packed.len() as u64, packed_len(len as u64, count as u64));
            for (i, f) in frames.iter().enumerate() {
                let expect: Vec<u8> = f.iter().map(|&b| u8::from(b != 0)).collect();
                assert_eq!(unpack_frame(&packed, len, i).unwrap(), expect);
            }
        }
    }

    #[test]
    fn simd_and_swar_paths_agree() {
        let frame = pseudo_random_frame(16 * 9 + 8 + 5, 3);
        let mut simd = Vec::new();
        let done = pack16_into(&frame, &mut simd);
        let swar: Vec<u8> = frame[..done]
            .chunks_exact(8)
            .map(|c| pack8(u64::from_le_bytes(c.try_into().unwrap())))
            .collect();
        assert_eq!(simd, swar);
        assert_eq!(pack_frames([frame.as_slice()]), naive_pack(&[frame]));
    }

    #[test]
    fn empty_masks_are_detected_anywhere() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            let mut m = vec![0u8; len];
            assert!(is_empty_mask(&m));
            for i in 0..len {
                m[i] = 3;
                assert!(!is_empty_mask(&m), "len {len}, pixel {i}");
                m[i] = 0;
            }
        }
    }

    #[test]
    fn unpack_rejects_short_data() {
        let packed = vec![0xffu8; 4];
        assert!(unpack_frame(&packed, 16, 1).is_some());
        assert!(unpack_frame(&packed, 16, 2).is_none());
        assert!(unpack_frame(&packed, 33, 0).is_none());
    }

    #[test]
    fn padding_is_only_at_the_end() {
        // 3 frames of 2x2 = 12 bits -> 2 bytes, no padding needed; 1 frame of 2x2 -> 1 byte + pad.
        assert_eq!(packed_len(4, 3), 2);
        assert_eq!(packed_len(4, 1), 2);
        assert_eq!(pack_frames([&[1u8, 0, 0, 1][..]]), vec![0b1001, 0]);
    }
}
