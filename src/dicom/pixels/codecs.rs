//! What proxyseg checks or decodes itself around dicom-pixeldata's codecs: the JPEG, JPEG-LS
//! and JPEG 2000 codestream headers checked against the declared image before a codec runs
//! ([`header_check`]), RLE Lossless of any bit depth ([`rle_to_native`]) and native
//! YBR_FULL_422 expanded to full resolution ([`expand_native_422`]). Each turns a hostile
//! input into a [`PixelError`] rather than a codec's panic or out-of-bounds write.

use super::{ImageSize, PixelError};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

/// The codestream header check of transfer syntax `ts_uid` (with the codec's name for
/// messages), if its codec needs one (see [`super::FrameSource`]).
pub(super) fn header_check(ts_uid: &str) -> Option<(&'static str, HeaderCheck)> {
    if J2K_SYNTAXES.contains(&ts_uid) {
        Some(("JPEG 2000", check_siz))
    } else if JPEG_SYNTAXES.contains(&ts_uid) {
        Some(("JPEG", check_sof))
    } else {
        None
    }
}

/// A check of a frame's codestream header against the declared image.
pub(super) type HeaderCheck = fn(&[u8], ImageSize) -> Result<(), String>;

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
pub(super) fn expand_native_422(
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

pub(super) const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Decodes RLE Lossless (PS3.5 G) of any bit depth into a copy of the object with native
/// little-endian pixel data (interleaved samples).
pub(super) fn rle_to_native(
    obj: &DefaultDicomObject,
    ts: &str,
) -> Result<DefaultDicomObject, PixelError> {
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
    let frame_len = pixels * nseg;
    for (f, frag) in fragments.iter().enumerate() {
        let frame_out = &mut out[f * frame_len..(f + 1) * frame_len];
        decode_rle_frame(frag, f, pixels, spp, bytes, frame_out).map_err(fail)?;
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

/// Decodes frame `f`'s RLE fragment (`spp` samples of `bytes` bytes each per pixel, one RLE
/// segment per sample byte, most significant first) into `out`, that frame's native
/// little-endian interleaved samples. Every header word and segment length is checked.
fn decode_rle_frame(
    frag: &[u8],
    f: usize,
    pixels: usize,
    spp: usize,
    bytes: usize,
    out: &mut [u8],
) -> Result<(), String> {
    let nseg = spp * bytes;
    if frag.len() < 64 {
        return Err(format!("frame {}: RLE header cut short", f + 1));
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
        return Err(format!(
            "frame {}: {} RLE segments, {nseg} expected",
            f + 1,
            word(0)
        ));
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
            .ok_or_else(|| format!("frame {}: bad RLE offset", f + 1))?;
        let seg = unpack_bits(src, pixels);
        if seg.len() < pixels {
            return Err(format!(
                "frame {}: RLE segment {} has {} of {pixels} bytes",
                f + 1,
                s + 1,
                seg.len()
            ));
        }
        let (sample, b) = (s / bytes, s % bytes);
        for (i, v) in seg.iter().take(pixels).enumerate() {
            out[(i * spp + sample) * bytes + (bytes - 1 - b)] = *v;
        }
    }
    Ok(())
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
