//! Decoded pixel data -> display frames (f32, 0..255) ready for the engine's preprocessing.
//!
//! Owns pixel decoding (dicom-pixeldata: native, RLE, deflate, JPEG, JPEG 2000, JPEG-LS), the
//! Modality LUT, the VOI window (the instance's first WindowCenter/WindowWidth with the DICOM
//! linear function, else a 0.5 %..99.5 % percentile window per frame), MONOCHROME1 inversion,
//! RGB / YBR_FULL / YBR_FULL_422 / PALETTE COLOR, planar configuration, 8/16/32-bit
//! signed/unsigned samples and multi-frame objects. It reproduces
//! `scripts/model/proxyseg_model/preprocess.py` (`to_display`) in f32, operation by operation.
//! It never guesses: an input it cannot read exactly fails with a precise [`PixelError`].

#![warn(missing_docs)]

use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::{
    PhotometricInterpretation, PixelDecoder, PixelRepresentation, PlanarConfiguration,
};

/// Why a DICOM object could not be turned into frames.
#[derive(Debug, thiserror::Error)]
pub enum PixelError {
    /// The file could not be opened or parsed.
    #[error("cannot read DICOM file {path}: {message}")]
    Open {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The object has no Pixel Data.
    #[error("the object has no Pixel Data (SOP class {sop_class})")]
    NoPixelData {
        /// The SOP Class UID, for the message.
        sop_class: String,
    },
    /// The transfer syntax's codec failed or is missing.
    #[error("cannot decode pixel data ({transfer_syntax}): {message}")]
    Decode {
        /// Transfer syntax UID and name.
        transfer_syntax: String,
        /// The decoder's message.
        message: String,
    },
    /// Fewer pixel bytes than the image attributes announce.
    #[error("pixel data is truncated: {got} bytes, {expected} expected for {frames} frame(s) of {rows}x{cols}x{samples} at {bits} bits")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        expected: usize,
        /// Number of frames.
        frames: u32,
        /// Rows.
        rows: u32,
        /// Columns.
        cols: u32,
        /// Samples per pixel.
        samples: u16,
        /// Bits allocated.
        bits: u16,
    },
    /// A combination of attributes this module does not handle.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// Decoding would take more memory than the per-instance budget allows.
    #[error("pixels not decoded: {what} need {need_mib} MiB decoded, more than pipeline.max_decoded_mb ({budget_mib} MiB)")]
    OverBudget {
        /// Bytes needed, in MiB.
        need_mib: u64,
        /// The budget, in MiB.
        budget_mib: u64,
        /// The declared geometry.
        what: String,
    },
    /// A needed attribute is missing or malformed.
    #[error("bad attribute {name}: {message}")]
    Attribute {
        /// Attribute keyword.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// One display frame: `channels` planes of `rows x cols` f32 values on the 0..255 scale.
///
/// Monochrome frames keep one plane (the engine replicates it to three channels); colour
/// frames have three planes (R, G, B).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Zero-based frame number within its object.
    pub index: u32,
    /// Rows of the source image.
    pub rows: usize,
    /// Columns of the source image.
    pub cols: usize,
    /// 1 (grey, replicated to RGB by the engine) or 3 (R, G, B planes).
    pub channels: usize,
    /// Planar values, `channels * rows * cols`, each in 0..=255.
    pub data: Vec<f32>,
}

impl Frame {
    /// Plane `c` (for a grey frame every `c` gives the single plane).
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.rows * self.cols;
        let c = if self.channels == 1 { 0 } else { c };
        &self.data[c * n..(c + 1) * n]
    }
}

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
/// ([`FrameSource`]): its pixel data held twice (as read, and as bytes or as the whole-object
/// decode that RLE of 32-bit samples needs), the masks of one segment, and
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

/// Opens a DICOM file and converts every frame (all at once: for one image or a small
/// series; the pipeline reads frame by frame with [`FrameSource`]).
pub fn frames_from_file(path: &Path) -> Result<Vec<Frame>, PixelError> {
    FrameSource::open(path)?.collect_all()
}

/// Converts every frame of a DICOM object into display frames (see [`frames_from_file`]).
pub fn frames_from_object(obj: &DefaultDicomObject) -> Result<Vec<Frame>, PixelError> {
    FrameSource::new(obj)?.collect_all()
}

/// An instance's frames, decoded one at a time: only the frame asked for is decoded (by the
/// transfer syntax's codec for encapsulated data, as a slice for native data) and converted,
/// so memory holds the pixel data as read plus one frame, whatever the number of frames.
///
/// Native pixel data read as 16-bit words is re-held as bytes once (so that no frame copies
/// the whole value); native YBR_FULL_422 and RLE Lossless of 32-bit samples (which
/// dicom-pixeldata cannot decode) are decoded whole once, into a native copy.
pub struct FrameSource<'a> {
    obj: std::borrow::Cow<'a, DefaultDicomObject>,
    ts: String,
    frames: u32,
    /// The declared image size, read once.
    size: ImageSize,
    /// The codestream header check of the transfer syntax, if its codec needs one.
    header_check: Option<(&'static str, HeaderCheck)>,
    top_window: Option<(f32, f32)>,
    palette: Option<Palette>,
}

impl std::fmt::Debug for FrameSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSource")
            .field("ts", &self.ts)
            .field("frames", &self.frames)
            .finish()
    }
}

impl FrameSource<'static> {
    /// Opens a DICOM file for frame-by-frame reading.
    pub fn open(path: &Path) -> Result<FrameSource<'static>, PixelError> {
        let obj = dicom_object::open_file(path).map_err(|e| {
            let mut message = error_chain(&e);
            if message.contains("fill whole buffer") || message.contains("UnexpectedEof") {
                message.push_str(" (the file ends early: it is truncated)");
            }
            PixelError::Open {
                path: path.display().to_string(),
                message,
            }
        })?;
        FrameSource::prepare(std::borrow::Cow::Owned(obj))
    }
}

impl<'a> FrameSource<'a> {
    /// Reads the frames of an object already in memory (borrowed unless it must be
    /// converted, see [`FrameSource`]).
    pub fn new(obj: &'a DefaultDicomObject) -> Result<FrameSource<'a>, PixelError> {
        FrameSource::prepare(std::borrow::Cow::Borrowed(obj))
    }

    fn prepare(
        mut obj: std::borrow::Cow<'a, DefaultDicomObject>,
    ) -> Result<FrameSource<'a>, PixelError> {
        use dicom_core::{DicomValue, PrimitiveValue};
        let Some(px) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
            let sop_class = str_attr(&obj, tags::SOP_CLASS_UID).unwrap_or_default();
            return Err(PixelError::NoPixelData { sop_class });
        };
        let native = matches!(px.value(), DicomValue::Primitive(_));
        let as_bytes = matches!(px.value(), DicomValue::Primitive(PrimitiveValue::U8(_)));
        let ts_uid = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let ts_name = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(&ts_uid)
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "unknown transfer syntax".into());
        let ts = format!("{ts_uid} {ts_name}");
        let size = ImageSize::of(&obj)?;
        if size.rows == 0 || size.cols == 0 {
            return Err(PixelError::Unsupported(format!(
                "image size {}x{}",
                size.rows, size.cols
            )));
        }
        let frames = u32::try_from(size.frames).map_err(|_| PixelError::Attribute {
            name: "NumberOfFrames",
            message: format!("{} is too large", size.frames),
        })?;
        if let (false, DicomValue::Primitive(p)) = (as_bytes, px.value()) {
            // 16-bit words (OW) -> bytes, once: a frame is then a slice, not a copy of all.
            let bytes = p.to_bytes().into_owned();
            let vr = px.vr();
            obj.to_mut().put(dicom_core::DataElement::new(
                tags::PIXEL_DATA,
                vr,
                PrimitiveValue::U8(bytes.into()),
            ));
        }
        let pi = str_attr(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
        if native && pi == "YBR_FULL_422" {
            obj = std::borrow::Cow::Owned(expand_native_422(&obj, size, &ts)?);
        }
        let header_check: Option<(&'static str, HeaderCheck)> =
            if J2K_SYNTAXES.contains(&ts_uid.as_str()) {
                Some(("JPEG 2000", check_siz))
            } else if JPEG_SYNTAXES.contains(&ts_uid.as_str()) {
                Some(("JPEG", check_sof))
            } else {
                None
            };
        let mut src = FrameSource {
            top_window: first_window(&obj),
            palette: None,
            obj,
            ts,
            frames,
            size,
            header_check,
        };
        if ts_uid == RLE_LOSSLESS {
            // Always proxyseg's own RLE decoder, which checks every header word and segment
            // length: dicom-pixeldata 0.10.1 decodes 8 and 16 bits only, and panics on a
            // header that announces more segments than its fragment holds, or on a segment
            // that decodes short (found by fuzzing, issue 16 item 8).
            src.obj = std::borrow::Cow::Owned(rle_to_native(&src.obj, &src.ts)?);
        }
        if native {
            let have = src
                .obj
                .element(tags::PIXEL_DATA)
                .ok()
                .and_then(|e| e.value().primitive().map(|p| p.to_bytes().len() as u64))
                .unwrap_or(0);
            let frame_bytes = if size.bits == 1 {
                (size.rows * size.cols * size.samples).div_ceil(8)
            } else {
                size.rows * size.cols * size.samples * size.bits.div_ceil(8)
            };
            let expected = frame_bytes.saturating_mul(size.frames);
            if have < expected {
                return Err(PixelError::Truncated {
                    got: have as usize,
                    expected: expected as usize,
                    frames,
                    rows: size.rows as u32,
                    cols: size.cols as u32,
                    samples: size.samples as u16,
                    bits: size.bits as u16,
                });
            }
        }
        if pi == "PALETTE COLOR" {
            src.palette = Some(Palette::read(&src.obj)?);
        }
        Ok(src)
    }

    /// Number of frames.
    pub fn len(&self) -> u32 {
        self.frames
    }

    /// True when the object has no frame (never: an object without pixel data is refused).
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Every frame, in order.
    pub fn collect_all(&self) -> Result<Vec<Frame>, PixelError> {
        (0..self.frames).map(|f| self.frame(f)).collect()
    }

    /// Decodes and converts frame `f` (0-based).
    pub fn frame(&self, f: u32) -> Result<Frame, PixelError> {
        self.check_codestream(f)?;
        // The codecs' own stream parsing (openjp2's packet headers, say) cannot all be checked
        // beforehand: a codec that panics on a hostile frame fails this frame, with the reason.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.obj.decode_pixel_data_frame(f)
        }))
        .map_err(|panic| PixelError::Decode {
            transfer_syntax: self.ts.clone(),
            message: format!(
                "the codec failed on frame {}: {}",
                f + 1,
                panic_text(&panic)
            ),
        })?
        .map_err(|e| PixelError::Decode {
            transfer_syntax: self.ts.clone(),
            message: error_chain(&e),
        })?;
        let rows = decoded.rows();
        let cols = decoded.columns();
        let spp = decoded.samples_per_pixel();
        let mut bits = decoded.bits_allocated();
        let bits_stored = decoded.bits_stored();
        let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
        let pi = decoded.photometric_interpretation().clone();
        // PixelFirst (1) = colour-by-plane: R plane, G plane, B plane.
        let planar = spp == 3 && decoded.planar_configuration() == PlanarConfiguration::PixelFirst;
        if bits == 1 {
            // dicom-pixeldata expands 1-bit samples to one byte of 0 or 255 each.
            bits = 8;
        }
        if !matches!(bits, 8 | 16 | 32) {
            return Err(PixelError::Unsupported(format!("BitsAllocated {bits}")));
        }
        let bytes = bits as usize / 8;
        let pixels = rows as usize * cols as usize;
        let frame_bytes = pixels * spp as usize * bytes;
        let raw = decoded.data();
        if raw.len() < frame_bytes {
            return Err(PixelError::Truncated {
                got: raw.len(),
                expected: frame_bytes,
                frames: 1,
                rows,
                cols,
                samples: spp,
                bits: decoded.bits_allocated(),
            });
        }
        let raw = &raw[..frame_bytes];
        // The frame's own rescale (enhanced objects: its functional group).
        let (slope, intercept) = decoded
            .rescale()
            .ok()
            .and_then(|r| r.first().map(|r| (r.slope as f32, r.intercept as f32)))
            .unwrap_or((1.0, 0.0));
        // The top-level first WindowCenter/Width (as the reference); else, for enhanced
        // multi-frame objects, the frame's own window from the functional groups.
        let window = self.top_window.or_else(|| {
            decoded
                .window()
                .ok()
                .flatten()
                .and_then(|w| w.first().map(|w| (w.center as f32, w.width as f32)))
        });
        let (rows, cols) = (rows as usize, cols as usize);
        // 8-bit interleaved RGB (photographs, most colour images): one pass, bytes to planes.
        if pi == PhotometricInterpretation::Rgb && spp == 3 && bits == 8 && !signed && !planar {
            let mut planes = vec![0f32; 3 * pixels];
            let (r, gb) = planes.split_at_mut(pixels);
            let (g, b) = gb.split_at_mut(pixels);
            for (i, px) in raw.chunks_exact(3).enumerate() {
                r[i] = px[0] as f32;
                g[i] = px[1] as f32;
                b[i] = px[2] as f32;
            }
            return Ok(Frame {
                index: f,
                rows,
                cols,
                channels: 3,
                data: planes,
            });
        }
        let samples = read_samples(raw, bits, bits_stored, signed);
        let data = match &pi {
            PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => {
                if spp != 1 {
                    return Err(PixelError::Unsupported(format!(
                        "{pi} with {spp} samples per pixel"
                    )));
                }
                let x: Vec<f32> = samples.iter().map(|&v| v * slope + intercept).collect();
                let mut y = match window {
                    Some((c, w)) => voi_linear(&x, c, w),
                    None => percentile_window(&x),
                };
                if pi == PhotometricInterpretation::Monochrome1 {
                    y.iter_mut().for_each(|v| *v = 255.0 - *v);
                }
                y
            }
            PhotometricInterpretation::Rgb => {
                check_spp(&pi, spp, 3)?;
                let mut planes = to_planes(&samples, pixels, planar);
                if bits > 8 {
                    // Wider colour samples are scaled onto 0..255 by their stored range.
                    let max = ((1u64 << bits_stored.min(32)) - 1) as f32;
                    planes.iter_mut().for_each(|v| *v = *v * 255.0 / max);
                }
                planes
            }
            PhotometricInterpretation::YbrFull => {
                check_spp(&pi, spp, 3)?;
                check_8bit(&pi, bits)?;
                ybr_to_rgb(&to_planes(&samples, pixels, planar), pixels)
            }
            PhotometricInterpretation::YbrFull422 => {
                // Codecs hand back full-resolution samples; native 4:2:2 was expanded when
                // the source was prepared.
                check_spp(&pi, spp, 3)?;
                check_8bit(&pi, bits)?;
                ybr_to_rgb(&to_planes(&samples, pixels, planar), pixels)
            }
            PhotometricInterpretation::PaletteColor => {
                check_spp(&pi, spp, 1)?;
                match &self.palette {
                    Some(p) => p.apply(&samples),
                    None => {
                        return Err(PixelError::Unsupported("PALETTE COLOR without LUT".into()))
                    }
                }
            }
            other => {
                return Err(PixelError::Unsupported(format!(
                    "photometric interpretation {other} is not supported"
                )))
            }
        };
        let channels = data.len() / pixels;
        Ok(Frame {
            index: f,
            rows,
            cols,
            channels,
            data,
        })
    }
}

impl FrameSource<'_> {
    /// JPEG 2000 (and HTJ2K), JPEG and JPEG-LS: the codestream's header (SIZ, SOF) must
    /// describe the image the attributes declare (as many components as samples per pixel,
    /// Columns x Rows, no deeper than Bits Allocated) before the codec runs. dicom-pixeldata's
    /// adapters write the decoded samples into a buffer sized from the attributes and index
    /// past it otherwise (found by fuzzing, issue 16 item 8).
    fn check_codestream(&self, f: u32) -> Result<(), PixelError> {
        use dicom_encoding::adapters::PixelDataObject;
        let Some((kind, check)) = self.header_check else {
            return Ok(());
        };
        let fail = |m: String| PixelError::Decode {
            transfer_syntax: self.ts.clone(),
            message: format!("{kind} frame {}: {m}", f + 1),
        };
        let data = self
            .obj
            .frame_pixel_data(f)
            .ok_or_else(|| fail("no such frame in the pixel data".into()))?;
        check(&data, self.size).map_err(fail)
    }
}

/// A check of a frame's codestream header against the declared image.
type HeaderCheck = fn(&[u8], ImageSize) -> Result<(), String>;

/// Transfer syntaxes whose frames are JPEG (ISO 10918-1) or JPEG-LS (ISO 14495-1) streams.
const JPEG_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
];

/// Checks a JPEG or JPEG-LS stream's frame header (SOFn, or SOF55 for JPEG-LS; ITU-T T.81
/// B.2.2) against the declared image: walks the marker segments from SOI to the first SOF.
fn check_sof(data: &[u8], size: ImageSize) -> Result<(), String> {
    if data.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return Err("no SOI marker at the start".into());
    }
    let mut i = 2;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while data.get(i) == Some(&0xFF) && data.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let (Some(&0xFF), Some(&code)) = (data.get(i), data.get(i + 1)) else {
            return Err("no frame header (SOF) before the data ends".into());
        };
        if matches!(code, 0x01 | 0xD0..=0xD7) {
            // Markers without a segment (TEM, RSTn).
            i += 2;
            continue;
        }
        let len = data
            .get(i + 2..i + 4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or("marker segment cut short")?;
        let is_sof = matches!(code, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xF7);
        if code == 0xDA {
            return Err("scan (SOS) before any frame header (SOF)".into());
        }
        if is_sof {
            // P (1), Y (2), X (2), Nf (1)
            let seg = data.get(i + 4..i + 10).ok_or("frame header cut short")?;
            let precision = seg[0] as u64;
            let rows = u16::from_be_bytes([seg[1], seg[2]]) as u64;
            let cols = u16::from_be_bytes([seg[3], seg[4]]) as u64;
            check_header_size(seg[5] as u64, cols, rows, size)?;
            if precision.div_ceil(8) > size.bits.div_ceil(8) {
                return Err(format!(
                    "{precision}-bit samples, more than Bits Allocated ({})",
                    size.bits
                ));
            }
            return Ok(());
        }
        if len < 2 {
            return Err(format!("marker FF{code:02X} has length {len}"));
        }
        i += 2 + len;
    }
}

/// Transfer syntaxes whose frames are JPEG 2000 codestreams.
const J2K_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
];

/// A codestream header's components and size against the declared image.
fn check_header_size(components: u64, cols: u64, rows: u64, size: ImageSize) -> Result<(), String> {
    if components != size.samples {
        return Err(format!(
            "{components} component(s), but Samples per Pixel is {}",
            size.samples
        ));
    }
    if (cols, rows) != (size.cols, size.rows) {
        return Err(format!(
            "{cols}x{rows} pixels, but Columns x Rows is {}x{}",
            size.cols, size.rows
        ));
    }
    Ok(())
}

/// Checks a JPEG 2000 codestream's SIZ marker segment (ITU-T T.800 A.5.1; found after the SOC
/// marker, also inside a JP2 wrapper) against the declared image.
fn check_siz(data: &[u8], size: ImageSize) -> Result<(), String> {
    const SOC_SIZ: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    let at = data
        .windows(4)
        .position(|w| w == SOC_SIZ)
        .ok_or("no codestream header (SOC + SIZ markers)")?;
    let siz = &data[at + 4..];
    let u16_at = |i: usize| {
        siz.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as u64)
    };
    let u32_at = |i: usize| {
        siz.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64)
    };
    let short = || "SIZ marker segment cut short".to_string();
    // Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz, then Csiz x (Ssiz XRsiz YRsiz).
    let (xsiz, ysiz) = (u32_at(4).ok_or_else(short)?, u32_at(8).ok_or_else(short)?);
    let (xo, yo) = (u32_at(12).ok_or_else(short)?, u32_at(16).ok_or_else(short)?);
    let csiz = u16_at(36).ok_or_else(short)?;
    let (width, height) = (xsiz.saturating_sub(xo), ysiz.saturating_sub(yo));
    check_header_size(csiz, width, height, size)?;
    for c in 0..csiz as usize {
        let at = 38 + 3 * c;
        let comp = siz.get(at..at + 3).ok_or_else(short)?;
        let depth = (comp[0] & 0x7F) as u64 + 1;
        if comp[1] != 1 || comp[2] != 1 {
            return Err(format!(
                "component {} is subsampled ({}x{})",
                c + 1,
                comp[1],
                comp[2]
            ));
        }
        if depth > size.bits {
            return Err(format!(
                "component {} has {depth}-bit samples, more than Bits Allocated ({})",
                c + 1,
                size.bits
            ));
        }
    }
    Ok(())
}

/// Native YBR_FULL_422 (Y0 Y1 Cb Cr per pixel pair, 8 bits) of every frame -> a copy of the
/// object with full-resolution interleaved YBR_FULL samples, so that frames slice evenly.
fn expand_native_422(
    obj: &DefaultDicomObject,
    size: ImageSize,
    ts: &str,
) -> Result<DefaultDicomObject, PixelError> {
    if size.samples != 3 || size.bits != 8 {
        return Err(PixelError::Unsupported(format!(
            "YBR_FULL_422 with {} samples at {} bits",
            size.samples, size.bits
        )));
    }
    let pixels = (size.rows * size.cols) as usize;
    let pairs = pixels.div_ceil(2);
    let frames = size.frames as usize;
    let px = obj
        .element(tags::PIXEL_DATA)
        .map_err(|e| PixelError::Decode {
            transfer_syntax: ts.to_string(),
            message: e.to_string(),
        })?;
    let data = px
        .value()
        .primitive()
        .map(|p| p.to_bytes())
        .unwrap_or_default();
    let expected = pairs * 4 * frames;
    if data.len() < expected {
        return Err(PixelError::Truncated {
            got: data.len(),
            expected,
            frames: frames as u32,
            rows: size.rows as u32,
            cols: size.cols as u32,
            samples: 3,
            bits: 8,
        });
    }
    let mut out = vec![0u8; pixels * 3 * frames];
    for f in 0..frames {
        let src = &data[f * pairs * 4..(f + 1) * pairs * 4];
        let dst = &mut out[f * pixels * 3..(f + 1) * pixels * 3];
        for (i, q) in src.chunks_exact(4).enumerate() {
            for (k, y) in [(2 * i, q[0]), (2 * i + 1, q[1])] {
                if k < pixels {
                    dst[3 * k..3 * k + 3].copy_from_slice(&[y, q[2], q[3]]);
                }
            }
        }
    }
    let mut copy = obj.clone();
    copy.put(dicom_core::DataElement::new(
        tags::PIXEL_DATA,
        dicom_core::VR::OB,
        dicom_core::PrimitiveValue::U8(out.into()),
    ));
    copy.put(dicom_core::DataElement::new(
        tags::PLANAR_CONFIGURATION,
        dicom_core::VR::US,
        dicom_core::PrimitiveValue::from(0u16),
    ));
    Ok(copy)
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Decodes RLE Lossless (PS3.5 G) of any bit depth into a copy of the object with native
/// little-endian pixel data (interleaved samples).
fn rle_to_native(obj: &DefaultDicomObject, ts: &str) -> Result<DefaultDicomObject, PixelError> {
    let fail = |m: String| PixelError::Decode {
        transfer_syntax: ts.to_string(),
        message: m,
    };
    let int = |tag: Tag, name: &'static str| -> Result<usize, PixelError> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .map(|v| v as usize)
            .ok_or(PixelError::Attribute {
                name,
                message: "missing or not a number".into(),
            })
    };
    let rows = int(tags::ROWS, "Rows")?;
    let cols = int(tags::COLUMNS, "Columns")?;
    let spp = int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let bytes = int(tags::BITS_ALLOCATED, "BitsAllocated")? / 8;
    let nframes = obj
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1) as usize;
    if bytes == 0 || spp == 0 {
        return Err(fail("RLE with BitsAllocated below 8".into()));
    }
    let px = obj
        .element(tags::PIXEL_DATA)
        .map_err(|e| fail(e.to_string()))?;
    let fragments = px
        .value()
        .fragments()
        .ok_or_else(|| fail("RLE pixel data is not encapsulated".into()))?;
    if fragments.len() != nframes {
        return Err(fail(format!(
            "{} RLE fragments for {nframes} frames",
            fragments.len()
        )));
    }
    let pixels = rows * cols;
    let nseg = spp * bytes;
    // The RLE header has room for 15 segment offsets (PS3.5 G.5).
    if nseg > 15 {
        return Err(fail(format!(
            "{nseg} RLE segments per frame: at most 15 fit the RLE header"
        )));
    }
    let total = nframes
        .checked_mul(pixels)
        .and_then(|n| n.checked_mul(nseg))
        .ok_or_else(|| fail("image size overflows".into()))?;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| {
        fail(format!(
            "cannot allocate {total} bytes for the decoded frames"
        ))
    })?;
    out.resize(total, 0u8);
    for (f, frag) in fragments.iter().enumerate() {
        if frag.len() < 64 {
            return Err(fail(format!("frame {}: RLE header cut short", f + 1)));
        }
        let word = |i: usize| {
            u32::from_le_bytes([
                frag[4 * i],
                frag[4 * i + 1],
                frag[4 * i + 2],
                frag[4 * i + 3],
            ]) as usize
        };
        if word(0) != nseg {
            return Err(fail(format!(
                "frame {}: {} RLE segments, {nseg} expected",
                f + 1,
                word(0)
            )));
        }
        for s in 0..nseg {
            let start = word(1 + s);
            let end = if s + 1 < nseg {
                word(2 + s)
            } else {
                frag.len()
            };
            let src = frag
                .get(start..end.min(frag.len()))
                .ok_or_else(|| fail(format!("frame {}: bad RLE offset", f + 1)))?;
            let seg = unpack_bits(src, pixels);
            if seg.len() < pixels {
                return Err(fail(format!(
                    "frame {}: RLE segment {} has {} of {pixels} bytes",
                    f + 1,
                    s + 1,
                    seg.len()
                )));
            }
            let (sample, b) = (s / bytes, s % bytes);
            let base = f * pixels * nseg;
            for (i, v) in seg.iter().take(pixels).enumerate() {
                out[base + (i * spp + sample) * bytes + (bytes - 1 - b)] = *v;
            }
        }
    }
    let mut copy = obj.clone();
    copy.put(dicom_core::DataElement::new(
        tags::PIXEL_DATA,
        dicom_core::VR::OB,
        dicom_core::PrimitiveValue::U8(out.into()),
    ));
    if spp > 1 {
        copy.put(dicom_core::DataElement::new(
            tags::PLANAR_CONFIGURATION,
            dicom_core::VR::US,
            dicom_core::PrimitiveValue::from(0u16),
        ));
    }
    copy.update_meta(|m| m.transfer_syntax = format!("{EXPLICIT_VR_LE}\0"));
    Ok(copy)
}

/// PackBits (PS3.5 G.3.1), stopping once `want` bytes are out.
fn unpack_bits(src: &[u8], want: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(want);
    let mut i = 0;
    while i < src.len() && out.len() < want {
        let n = src[i] as i8;
        i += 1;
        if n >= 0 {
            let len = n as usize + 1;
            let end = (i + len).min(src.len());
            out.extend_from_slice(&src[i..end]);
            i = end;
        } else if n != -128 {
            if let Some(&v) = src.get(i) {
                out.extend(std::iter::repeat_n(v, 1 + (-(n as i32)) as usize));
            }
            i += 1;
        }
    }
    out
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn check_spp(pi: &PhotometricInterpretation, spp: u16, want: u16) -> Result<(), PixelError> {
    if spp == want {
        Ok(())
    } else {
        Err(PixelError::Unsupported(format!(
            "{pi} with {spp} samples per pixel"
        )))
    }
}

fn check_8bit(pi: &PhotometricInterpretation, bits: u16) -> Result<(), PixelError> {
    if bits == 8 {
        Ok(())
    } else {
        Err(PixelError::Unsupported(format!(
            "{pi} with {bits} bits allocated"
        )))
    }
}

fn str_attr(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

/// The first WindowCenter and first WindowWidth of the top-level dataset, if both parse.
fn first_window(obj: &InMemDicomObject) -> Option<(f32, f32)> {
    let first = |tag| -> Option<f32> {
        let e = obj.element_opt(tag).ok().flatten()?;
        let v: Vec<f64> = e.to_multi_float64().ok()?;
        v.first().map(|&x| x as f32)
    };
    Some((first(tags::WINDOW_CENTER)?, first(tags::WINDOW_WIDTH)?))
}

/// Samples as f32 (numpy's `astype(float32)`), masked to BitsStored and sign-extended when
/// signed.
fn read_samples(raw: &[u8], bits: u16, bits_stored: u16, signed: bool) -> Vec<f32> {
    let stored = bits_stored.clamp(1, bits) as u32;
    let fix = |v: u64| -> f32 {
        let mask = if stored >= 64 {
            u64::MAX
        } else {
            (1u64 << stored) - 1
        };
        let v = v & mask;
        if signed && stored < 64 && (v >> (stored - 1)) & 1 == 1 {
            (v | !mask) as i64 as f32
        } else {
            v as f32
        }
    };
    match bits {
        8 if !signed && stored == 8 => raw.iter().map(|&b| b as f32).collect(),
        8 => raw.iter().map(|&b| fix(b as u64)).collect(),
        16 => raw
            .chunks_exact(2)
            .map(|c| fix(u16::from_le_bytes([c[0], c[1]]) as u64))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| fix(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64))
            .collect(),
    }
}

/// Interleaved or planar 3-sample pixels -> R, G, B planes (f32).
fn to_planes(samples: &[f32], pixels: usize, planar: bool) -> Vec<f32> {
    let mut out = vec![0f32; 3 * pixels];
    if planar {
        for (o, s) in out.iter_mut().zip(samples) {
            *o = *s;
        }
    } else {
        for i in 0..pixels {
            for c in 0..3 {
                out[c * pixels + i] = samples[3 * i + c];
            }
        }
    }
    out
}

/// YBR_FULL -> RGB as pydicom's `convert_color_space` (PS3.3 C.7.6.3.1.2), rounded and
/// clipped to 0..255 like its uint8 result.
fn ybr_to_rgb(planes: &[f32], pixels: usize) -> Vec<f32> {
    let mut out = vec![0f32; 3 * pixels];
    for i in 0..pixels {
        let y = planes[i] as f64;
        let cb = planes[pixels + i] as f64 - 128.0;
        let cr = planes[2 * pixels + i] as f64 - 128.0;
        let r = y + 1.402 * cr;
        let g = y - 0.344136 * cb - 0.714136 * cr;
        let b = y + 1.772 * cb;
        for (c, v) in [r, g, b].into_iter().enumerate() {
            out[c * pixels + i] = v.round().clamp(0.0, 255.0) as f32;
        }
    }
    out
}

/// DICOM linear VOI function onto 0..255, in f32 as the Python reference.
pub fn voi_linear(x: &[f32], c: f32, w: f32) -> Vec<f32> {
    if w <= 1.0 {
        return x
            .iter()
            .map(|&v| if v <= c - 0.5 { 0.0 } else { 255.0 })
            .collect();
    }
    let c5 = c - 0.5;
    let w1 = w - 1.0;
    x.iter()
        .map(|&v| (((v - c5) / w1 + 0.5) * 255.0).clamp(0.0, 255.0))
        .collect()
}

/// numpy's `percentile(x, q)` with linear interpolation, on a scratch copy.
fn percentile(scratch: &mut [f32], q: f64) -> f64 {
    let n = scratch.len();
    let pos = q / 100.0 * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let t = pos - lo as f64;
    let (_, a, rest) = scratch.select_nth_unstable_by(lo, f32::total_cmp);
    let a = *a as f64;
    if lo + 1 >= n || t == 0.0 {
        return a;
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    // numpy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) when t >= 0.5.
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Percentile (0.5 %, 99.5 %) window onto 0..255 (hi <= lo gives zeros).
pub fn percentile_window(x: &[f32]) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut scratch = x.to_vec();
    let lo = percentile(&mut scratch, 0.5) as f32;
    let hi = percentile(&mut scratch, 99.5) as f32;
    if hi <= lo {
        return vec![0.0; x.len()];
    }
    let d = hi - lo;
    x.iter()
        .map(|&v| ((v - lo) / d * 255.0).clamp(0.0, 255.0))
        .collect()
}

/// A PALETTE COLOR lookup table (three channels).
struct Palette {
    first: i64,
    luts: [Vec<f32>; 3],
}

impl Palette {
    fn read(obj: &InMemDicomObject) -> Result<Palette, PixelError> {
        let specs = [
            (
                "RedPaletteColorLookupTableDescriptor",
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
            (
                "GreenPaletteColorLookupTableDescriptor",
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
            (
                "BluePaletteColorLookupTableDescriptor",
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
        ];
        let mut luts: [Vec<f32>; 3] = Default::default();
        let mut first = 0;
        for (i, (name, dtag, ltag)) in specs.into_iter().enumerate() {
            let desc: Vec<i64> = obj
                .element_opt(dtag)
                .ok()
                .flatten()
                .and_then(|e| e.to_multi_int::<i64>().ok())
                .ok_or(PixelError::Attribute {
                    name,
                    message: "missing (segmented palettes are not supported)".into(),
                })?;
            if desc.len() != 3 {
                return Err(PixelError::Attribute {
                    name,
                    message: format!("has {} values, 3 expected", desc.len()),
                });
            }
            let entries = if desc[0] <= 0 {
                65536
            } else {
                desc[0] as usize
            };
            first = desc[1] & 0xFFFF;
            let entry_bits = desc[2];
            let data = obj
                .element_opt(ltag)
                .ok()
                .flatten()
                .and_then(|e| e.to_bytes().ok().map(|b| b.into_owned()))
                .ok_or(PixelError::Attribute {
                    name,
                    message: "LUT data missing".into(),
                })?;
            let values: Vec<f32> = if entry_bits == 8 && data.len() == entries {
                data.iter().map(|&b| b as f32).collect()
            } else {
                let words: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                if entry_bits == 8 {
                    words.iter().map(|&w| (w & 0xFF) as f32).collect()
                } else {
                    words.iter().map(|&w| (w >> 8) as f32).collect()
                }
            };
            if values.len() < entries {
                return Err(PixelError::Attribute {
                    name,
                    message: format!("LUT has {} entries, {entries} announced", values.len()),
                });
            }
            luts[i] = values[..entries].to_vec();
        }
        Ok(Palette { first, luts })
    }

    fn apply(&self, samples: &[f32]) -> Vec<f32> {
        let n = samples.len();
        let mut out = vec![0f32; 3 * n];
        for (c, lut) in self.luts.iter().enumerate() {
            let last = lut.len() as i64 - 1;
            for (i, &s) in samples.iter().enumerate() {
                let idx = (s as i64 - self.first).clamp(0, last) as usize;
                out[c * n + i] = lut[idx];
            }
        }
        out
    }
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

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile(np.arange(10, dtype=float32), [0.5, 99.5]) == [0.045, 8.955]
        let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let mut s = x.clone();
        assert!((percentile(&mut s, 0.5) - 0.045).abs() < 1e-9);
        assert!((percentile(&mut s, 99.5) - 8.955).abs() < 1e-9);
    }

    #[test]
    fn window_follows_the_dicom_formula() {
        let y = voi_linear(&[0.0, 40.0, 80.0, 1000.0, -1000.0], 40.0, 80.0);
        assert_eq!(y[3], 255.0);
        assert_eq!(y[4], 0.0);
        assert!((y[1] - ((0.5 / 79.0 + 0.5) * 255.0)).abs() < 1e-4);
        assert_eq!(voi_linear(&[0.0, 1.0], 0.6, 1.0), vec![0.0, 255.0]);
    }

    #[test]
    fn constant_frame_gives_zeros() {
        assert_eq!(percentile_window(&[7.0; 16]), vec![0.0; 16]);
    }

    #[test]
    fn signed_samples_are_sign_extended() {
        // 12 bits stored in 16: 0x0FFF is -1.
        assert_eq!(read_samples(&[0xFF, 0x0F], 16, 12, true), vec![-1.0]);
        assert_eq!(read_samples(&[0xFF, 0x0F], 16, 12, false), vec![4095.0]);
    }
}
