//! The declared size of an instance's pixels ([`ImageSize`], read from its header) and what
//! decoding them costs: per instance at ingest ([`decoded_bytes`], [`check_budget`]) and per
//! series in the worker ([`series_bytes`]), checked before anything is decoded.

use super::PixelError;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Frames of one instance that the pipeline worker holds decoded at the same time with the
/// default `pipeline.chunk_frames` (8): the chunk in the engine, the chunk waiting for it and
/// the frame being converted. The ingest check ([`decoded_bytes`]) assumes this many; the
/// worker's own check ([`series_bytes`]) uses the configured chunk.
pub const FRAMES_IN_FLIGHT: u64 = 17;

/// The declared size of an instance's pixels, read from its header (Rows, Columns, Samples
/// per Pixel, Bits Allocated, Number of Frames), before anything is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    /// Rows.
    pub rows: u64,
    /// Columns.
    pub cols: u64,
    /// Samples per pixel.
    pub samples: u64,
    /// Bits allocated per sample.
    pub bits: u64,
    /// Number of frames (1 when absent).
    pub frames: u64,
}

impl ImageSize {
    /// Reads the size attributes of `obj` (a header is enough).
    pub fn of(obj: &InMemDicomObject) -> Result<ImageSize, PixelError> {
        let int = |tag: Tag, name: &'static str, default: Option<u64>| -> Result<u64, PixelError> {
            match obj.element_opt(tag).ok().flatten() {
                Some(e) => e
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .or_else(|| e.to_int::<u64>().ok())
                    .ok_or(PixelError::Attribute {
                        name,
                        message: "not a number".into(),
                    }),
                None => default.ok_or(PixelError::Attribute {
                    name,
                    message: "missing".into(),
                }),
            }
        };
        Ok(ImageSize {
            rows: int(tags::ROWS, "Rows", None)?,
            cols: int(tags::COLUMNS, "Columns", None)?,
            samples: int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", Some(1))?,
            bits: int(tags::BITS_ALLOCATED, "BitsAllocated", None)?,
            frames: int(tags::NUMBER_OF_FRAMES, "NumberOfFrames", Some(1))?.max(1),
        })
    }

    /// Pixels per frame.
    fn pixels(&self) -> Option<u64> {
        self.rows.checked_mul(self.cols)
    }

    /// The instance's samples as bytes, all frames: what its pixel data takes in memory at
    /// most while it is read (native size; compressed data is smaller).
    pub fn sample_bytes(&self) -> Option<u64> {
        self.pixels()?
            .checked_mul(self.samples)?
            .checked_mul(self.frames)?
            .checked_mul(self.bits.div_ceil(8))
    }

    /// What one frame costs while it is converted: its decoded samples, their f32 copy and
    /// the three f32 display planes.
    pub fn frame_work_bytes(&self) -> Option<u64> {
        self.pixels()?.checked_mul(
            self.samples
                .checked_mul(self.bits.div_ceil(8) + 4)?
                .checked_add(12)?,
        )
    }

    /// One byte per pixel per frame: the size of one segment's masks for this instance.
    pub fn mask_bytes(&self) -> Option<u64> {
        self.pixels()?.checked_mul(self.frames)
    }

    /// A readable description for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} frame(s) of {}x{}x{} at {} bits",
            self.frames, self.rows, self.cols, self.samples, self.bits
        )
    }
}

/// Bytes one instance costs in the worker, which decodes it frame by frame
/// ([`super::FrameSource`]): its pixel data held twice (as read, and as bytes or as the
/// whole-object decode that RLE of 32-bit samples needs), the masks of one segment, and
/// [`FRAMES_IN_FLIGHT`] frames being converted. `None` when the product does not fit in 64
/// bits.
pub fn decoded_bytes(rows: u64, cols: u64, samples: u64, bits: u64, frames: u64) -> Option<u64> {
    let size = ImageSize {
        rows,
        cols,
        samples,
        bits,
        frames,
    };
    size.sample_bytes()?
        .checked_mul(2)?
        .checked_add(size.mask_bytes()?)?
        .checked_add(size.frame_work_bytes()?.checked_mul(FRAMES_IN_FLIGHT)?)
}

/// Bytes a job costs while it segments one series of `sizes` with `segments` segments and
/// `in_flight` frames decoded at once: every frame's masks (the SEG writer needs them all)
/// plus their bit-packed copy in the SEG, the largest instance's pixel data held twice, and
/// the frames in flight at the largest frame's cost. `None` on overflow.
pub fn series_bytes(sizes: &[ImageSize], segments: u64, in_flight: u64) -> Option<u64> {
    let mut masks = 0u64;
    let mut held = 0u64;
    let mut frame = 0u64;
    for s in sizes {
        masks = masks.checked_add(s.mask_bytes()?.checked_mul(segments.max(1))?)?;
        held = held.max(s.sample_bytes()?.checked_mul(2)?);
        frame = frame.max(s.frame_work_bytes()?);
    }
    masks
        .checked_add(masks / 8 + 1)?
        .checked_add(held)?
        .checked_add(frame.checked_mul(in_flight)?)
}

/// Checks an object's declared image size ([`ImageSize::of`]) against `budget` bytes before
/// anything is decoded (see [`decoded_bytes`]).
pub fn check_budget(obj: &InMemDicomObject, budget: u64) -> Result<(), PixelError> {
    let size = ImageSize::of(obj)?;
    let need = decoded_bytes(size.rows, size.cols, size.samples, size.bits, size.frames)
        .unwrap_or(u64::MAX);
    if need > budget {
        return Err(PixelError::OverBudget {
            need_mib: need / 1048576,
            budget_mib: budget / 1048576,
            what: size.describe(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoding_budget_counts_held_samples_masks_and_frames_in_flight() {
        // 512x512 CT, 16 bits: the samples held twice (2 x 2 bytes) and one mask byte per
        // pixel, plus 17 frames in flight at 2 + 4 (f32) + 12 (display planes) bytes.
        assert_eq!(
            decoded_bytes(512, 512, 1, 16, 1),
            Some(512 * 512 * (5 + 17 * 18))
        );
        // A 1000-frame cine costs its frames once, not its f32 copies of every frame.
        let one = decoded_bytes(256, 256, 1, 8, 1).unwrap();
        let cine = decoded_bytes(256, 256, 1, 8, 1000).unwrap();
        assert_eq!(cine - one, 999 * 256 * 256 * 3);
        assert_eq!(decoded_bytes(u64::MAX, 2, 1, 8, 1), None);
        let mut obj = InMemDicomObject::new_empty();
        use dicom_core::{DataElement, PrimitiveValue, VR};
        for (tag, v) in [
            (tags::ROWS, 32768u16),
            (tags::COLUMNS, 32768),
            (tags::BITS_ALLOCATED, 32),
            (tags::SAMPLES_PER_PIXEL, 1),
        ] {
            obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
        obj.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("100000"),
        ));
        let e = check_budget(&obj, 4096 << 20).unwrap_err();
        assert!(
            e.to_string()
                .contains("100000 frame(s) of 32768x32768x1 at 32 bits"),
            "{e}"
        );
        obj.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("1"),
        ));
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(512u16),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(512u16),
        ));
        check_budget(&obj, 4096 << 20).unwrap();
    }

    #[test]
    fn a_series_costs_all_its_masks_but_one_instance_held_at_a_time() {
        let slice = ImageSize {
            rows: 512,
            cols: 512,
            samples: 1,
            bits: 16,
            frames: 1,
        };
        let px = 512 * 512;
        let need = series_bytes(&[slice; 100], 3, 17).unwrap();
        let masks = 100 * px * 3;
        assert_eq!(need, masks + masks / 8 + 1 + 2 * px * 2 + 17 * px * 18);
        assert_eq!(
            series_bytes(
                &[ImageSize {
                    rows: u64::MAX,
                    ..slice
                }],
                1,
                1
            ),
            None
        );
    }
}
