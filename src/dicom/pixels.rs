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

/// Bytes one instance costs when decoded the way [`frames_from_object`] does it: the decoded
/// samples (`BitsAllocated` rounded up to whole bytes) plus their f32 copy, for every frame at
/// once. `None` when the product does not even fit in 64 bits.
pub fn decoded_bytes(rows: u64, cols: u64, samples: u64, bits: u64, frames: u64) -> Option<u64> {
    rows.checked_mul(cols)?
        .checked_mul(samples)?
        .checked_mul(frames)?
        .checked_mul(bits.div_ceil(8) + 4)
}

/// Checks an object's declared image size (Rows, Columns, Samples per Pixel, Bits Allocated,
/// Number of Frames, read from its header) against `budget` bytes before anything is decoded
/// (see [`decoded_bytes`]).
pub fn check_budget(obj: &InMemDicomObject, budget: u64) -> Result<(), PixelError> {
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
    let rows = int(tags::ROWS, "Rows", None)?;
    let cols = int(tags::COLUMNS, "Columns", None)?;
    let spp = int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", Some(1))?;
    let bits = int(tags::BITS_ALLOCATED, "BitsAllocated", None)?;
    let frames = int(tags::NUMBER_OF_FRAMES, "NumberOfFrames", Some(1))?.max(1);
    let need = decoded_bytes(rows, cols, spp, bits, frames).unwrap_or(u64::MAX);
    if need > budget {
        return Err(PixelError::OverBudget {
            need_mib: need / 1048576,
            budget_mib: budget / 1048576,
            what: format!("{frames} frame(s) of {rows}x{cols}x{spp} at {bits} bits"),
        });
    }
    Ok(())
}

/// Opens a DICOM file and converts every frame.
pub fn frames_from_file(path: &Path) -> Result<Vec<Frame>, PixelError> {
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
    frames_from_object(&obj)
}

/// Converts every frame of a DICOM object into display frames.
pub fn frames_from_object(obj: &DefaultDicomObject) -> Result<Vec<Frame>, PixelError> {
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        let sop_class = str_attr(obj, tags::SOP_CLASS_UID).unwrap_or_default();
        return Err(PixelError::NoPixelData { sop_class });
    }
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
    let decoded = match obj.decode_pixel_data() {
        Ok(d) => d,
        // dicom-pixeldata 0.10.1 decodes RLE for 8 and 16 bits only: decode it here instead.
        Err(_) if ts_uid == RLE_LOSSLESS => return frames_from_object(&rle_to_native(obj, &ts)?),
        Err(e) => {
            return Err(PixelError::Decode {
                transfer_syntax: ts.clone(),
                message: error_chain(&e),
            })
        }
    };
    let rows = decoded.rows();
    let cols = decoded.columns();
    let nframes = decoded.number_of_frames().max(1);
    let spp = decoded.samples_per_pixel();
    let mut bits = decoded.bits_allocated();
    let bits_stored = decoded.bits_stored();
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let pi = decoded.photometric_interpretation().clone();
    // PixelFirst (1) = colour-by-plane: R plane, G plane, B plane.
    let planar = spp == 3 && decoded.planar_configuration() == PlanarConfiguration::PixelFirst;
    if rows == 0 || cols == 0 {
        return Err(PixelError::Unsupported(format!("image size {rows}x{cols}")));
    }
    if bits == 1 {
        // dicom-pixeldata expands 1-bit samples to one byte of 0 or 255 each.
        bits = 8;
    }
    if !matches!(bits, 8 | 16 | 32) {
        return Err(PixelError::Unsupported(format!("BitsAllocated {bits}")));
    }
    // Codecs (encapsulated pixel data) hand back interleaved RGB and relabel it; only native
    // data keeps its photometric interpretation and planar configuration.
    let encapsulated = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .map(|e| matches!(e.value(), dicom_core::DicomValue::PixelSequence(_)))
        .unwrap_or(false);
    // Native YBR_FULL_422 stores two luma samples and one chroma pair per two pixels.
    let subsampled = !encapsulated && pi == PhotometricInterpretation::YbrFull422;
    let bytes = bits as usize / 8;
    let pixels = rows as usize * cols as usize;
    let frame_bytes = if subsampled {
        pixels.div_ceil(2) * 4 * bytes
    } else {
        pixels * spp as usize * bytes
    };
    let data = decoded.data();
    let expected = frame_bytes * nframes as usize;
    if data.len() < expected {
        return Err(PixelError::Truncated {
            got: data.len(),
            expected,
            frames: nframes,
            rows,
            cols,
            samples: spp,
            bits: decoded.bits_allocated(),
        });
    }
    let rescale: Vec<(f32, f32)> = decoded
        .rescale()
        .map(|r| {
            r.iter()
                .map(|r| (r.slope as f32, r.intercept as f32))
                .collect()
        })
        .unwrap_or_default();
    // The top-level first WindowCenter/Width (as the reference); else, for enhanced
    // multi-frame objects, the frame's own window from the functional groups.
    let top_window = first_window(obj);
    let fg_windows: Vec<(f32, f32)> = decoded
        .window()
        .ok()
        .flatten()
        .map(|w| {
            w.iter()
                .map(|w| (w.center as f32, w.width as f32))
                .collect()
        })
        .unwrap_or_default();
    let palette = if pi == PhotometricInterpretation::PaletteColor {
        Some(Palette::read(obj)?)
    } else {
        None
    };

    let mut out = Vec::with_capacity(nframes as usize);
    for f in 0..nframes {
        let raw = &data[f as usize * frame_bytes..(f as usize + 1) * frame_bytes];
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
            out.push(Frame {
                index: f,
                rows: rows as usize,
                cols: cols as usize,
                channels: 3,
                data: planes,
            });
            continue;
        }
        let samples = read_samples(raw, bits, bits_stored, signed);
        let frame = match &pi {
            PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => {
                if spp != 1 {
                    return Err(PixelError::Unsupported(format!(
                        "{pi} with {spp} samples per pixel"
                    )));
                }
                let (slope, intercept) = rescale
                    .get(f as usize)
                    .or_else(|| rescale.first())
                    .copied()
                    .unwrap_or((1.0, 0.0));
                let x: Vec<f32> = samples.iter().map(|&v| v * slope + intercept).collect();
                let window = top_window
                    .or_else(|| fg_windows.get(f as usize).or(fg_windows.first()).copied());
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
                check_spp(&pi, spp, 3)?;
                check_8bit(&pi, bits)?;
                let planes = if subsampled {
                    expand_422(&samples, rows as usize, cols as usize)
                } else {
                    to_planes(&samples, pixels, planar)
                };
                ybr_to_rgb(&planes, pixels)
            }
            PhotometricInterpretation::PaletteColor => {
                check_spp(&pi, spp, 1)?;
                match &palette {
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
        let channels = frame.len() / pixels;
        out.push(Frame {
            index: f,
            rows: rows as usize,
            cols: cols as usize,
            channels,
            data: frame,
        });
    }
    Ok(out)
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

/// Native YBR_FULL_422 (Y0 Y1 Cb Cr per pixel pair) -> full-resolution Y, Cb, Cr planes.
fn expand_422(samples: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let pixels = rows * cols;
    let mut out = vec![0f32; 3 * pixels];
    for i in 0..pixels.div_ceil(2) {
        let (y0, y1, cb, cr) = (
            samples[4 * i],
            samples[4 * i + 1],
            samples[4 * i + 2],
            samples[4 * i + 3],
        );
        for (k, y) in [(2 * i, y0), (2 * i + 1, y1)] {
            if k < pixels {
                out[k] = y;
                out[pixels + k] = cb;
                out[2 * pixels + k] = cr;
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
    fn the_decoding_budget_counts_samples_and_their_f32_copy() {
        // 512x512 CT, 16 bits: 2 bytes + 4 bytes (f32) per sample.
        assert_eq!(decoded_bytes(512, 512, 1, 16, 1), Some(512 * 512 * 6));
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
