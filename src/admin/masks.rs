//! Validation of uploaded support pairs: the DICOM image and its masks (PNG or DICOM SEG).
//!
//! Everything here is pure and runs before anything is written, so a bad upload changes
//! nothing. Each error names the problem (and the object or file) for the INVALID_ARGUMENT
//! status the client sees.

use crate::admin::segment::DicomImage;
use crate::dicom::sop;
use crate::store::support::Mask;
use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

/// Largest image side we accept for support images and previews.
pub const MAX_SIDE: usize = 16384;

/// Problems with an upload.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The image is not readable DICOM.
    #[error("image: not a readable DICOM file: {0}")]
    BrokenDicom(String),
    /// A required attribute is missing or wrong.
    #[error("image: {0}")]
    BadImage(String),
    /// The SOP class is not one we segment.
    #[error("image: SOP class {0:?} is not an image storage class proxyseg accepts")]
    UnknownSopClass(String),
    /// Pixel data does not decode.
    #[error("image: pixel data cannot be decoded: {0}")]
    BadPixels(String),
    /// A mask is not a readable PNG.
    #[error("mask {object}: not a readable PNG: {message}")]
    BadPng {
        /// 1-based object index.
        object: usize,
        /// Decoder message.
        message: String,
    },
    /// A mask's size differs from the image's.
    #[error("mask {object}: {got_rows}x{got_cols} (rows x columns) does not match the image's {rows}x{cols}")]
    SizeMismatch {
        /// 1-based object index.
        object: usize,
        /// Mask rows.
        got_rows: usize,
        /// Mask columns.
        got_cols: usize,
        /// Image rows.
        rows: usize,
        /// Image columns.
        cols: usize,
    },
    /// A mask has more than one foreground value.
    #[error("mask {object}: not binary: it holds {values} distinct non-zero values (use 0 and one foreground value)")]
    NotBinary {
        /// 1-based object index.
        object: usize,
        /// Number of distinct non-zero values.
        values: usize,
    },
    /// A mask has colour channels.
    #[error("mask {object}: colour PNG ({color}); masks must be greyscale")]
    Colour {
        /// 1-based object index.
        object: usize,
        /// The colour type.
        color: String,
    },
    /// A mask is empty.
    #[error(
        "mask {object} ({label}): empty (no foreground pixel); an empty mask spoils the prompt"
    )]
    Empty {
        /// 1-based object index.
        object: usize,
        /// Object label.
        label: String,
    },
    /// A mask whose every pixel is foreground (all ones): it outlines nothing, usually an
    /// inverted or unthresholded export.
    #[error(
        "mask {object} ({label}): every pixel is foreground (the mask outlines nothing; check for an inverted or unthresholded mask)"
    )]
    Full {
        /// 1-based object index.
        object: usize,
        /// Object label.
        label: String,
    },
    /// Wrong number of masks.
    #[error("masks: {got} given, the support set has {want} object(s)")]
    Count {
        /// Masks given.
        got: usize,
        /// Objects of the set.
        want: usize,
    },
    /// A mask refers to an object the set does not have.
    #[error("masks: object index {index} is outside 1..={objects}")]
    BadIndex {
        /// The index given.
        index: u32,
        /// Objects of the set.
        objects: usize,
    },
    /// The SEG does not fit.
    #[error("mask SEG: {0}")]
    BadSeg(String),
    /// The upload was malformed.
    #[error("{0}")]
    Protocol(String),
    /// The upload was too large.
    #[error("upload exceeds admin.max_upload_mb = {0} MiB")]
    TooLarge(u64),
}

impl From<UploadError> for tonic::Status {
    fn from(e: UploadError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

/// Largest data set a deflated upload may inflate to.
const MAX_INFLATED: u64 = 256 * 1024 * 1024;

/// Parses DICOM Part 10 bytes (with or without the 128-byte preamble). Every declared length is
/// first checked against the bytes there are ([`crate::dicom::validate::check_part10`]):
/// dicom-object would reserve and zero-fill it before reading the value.
pub fn parse_dicom(bytes: &[u8]) -> Result<DefaultDicomObject, UploadError> {
    crate::dicom::validate::check_part10(bytes, MAX_INFLATED)
        .map_err(|e| UploadError::BrokenDicom(e.to_string()))?;
    let preamble = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        ReadPreamble::Always
    } else {
        ReadPreamble::Never
    };
    OpenFileOptions::new()
        .read_preamble(preamble)
        .from_reader(bytes)
        .map_err(|e| UploadError::BrokenDicom(e.to_string()))
}

/// Parses and validates a support or preview image: an accepted image SOP class (not SEG), a
/// valid SOP Instance UID, one frame, a sane size, and pixel data that decodes.
pub fn parse_image(bytes: &[u8]) -> Result<DicomImage, UploadError> {
    let object = parse_dicom(bytes)?;
    let sop_class_uid = text(&object, tags::SOP_CLASS_UID);
    if sop_class_uid.is_empty() {
        return Err(UploadError::BadImage("SOP Class UID is missing".into()));
    }
    if !sop::is_accepted_sop_class(&sop_class_uid) || sop_class_uid == uids::SEGMENTATION_STORAGE {
        return Err(UploadError::UnknownSopClass(sop_class_uid));
    }
    let sop_instance_uid = text(&object, tags::SOP_INSTANCE_UID);
    if !sop::is_valid_uid(&sop_instance_uid) {
        return Err(UploadError::BadImage(format!(
            "SOP Instance UID {sop_instance_uid:?} is not a valid UID"
        )));
    }
    let int = |tag, name: &str| -> Result<usize, UploadError> {
        object
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .map(|v| v as usize)
            .ok_or_else(|| UploadError::BadImage(format!("{name} is missing")))
    };
    let rows = int(tags::ROWS, "Rows")?;
    let cols = int(tags::COLUMNS, "Columns")?;
    if rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
        return Err(UploadError::BadImage(format!(
            "{rows}x{cols} is not a usable image size (1..={MAX_SIDE} per side)"
        )));
    }
    let frames = object
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1);
    if frames != 1 {
        return Err(UploadError::BadImage(format!(
            "{frames} frames: support and preview images must be single-frame (export the annotated frame)"
        )));
    }
    // Decoded as the engine will decode it (the codec guards of `dicom::pixels` included):
    // an image the engine cannot read is refused at upload.
    crate::dicom::pixels::frames_from_object(&object)
        .map_err(|e| UploadError::BadPixels(e.to_string()))?;
    Ok(DicomImage {
        modality: text(&object, tags::MODALITY),
        object,
        path: None,
        sop_instance_uid,
        sop_class_uid,
        rows,
        cols,
    })
}

/// Decodes one PNG mask for object `object` (1-based) and checks it against the image size.
/// Accepts 1/2/4/8/16-bit greyscale (alpha ignored); any single non-zero value is foreground.
pub fn decode_png_mask(
    bytes: &[u8],
    object: usize,
    rows: usize,
    cols: usize,
) -> Result<Mask, UploadError> {
    let bad = |message: String| UploadError::BadPng { object, message };
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
    let (w, h) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    if (h, w) != (rows, cols) {
        return Err(UploadError::SizeMismatch {
            object,
            got_rows: h,
            got_cols: w,
            rows,
            cols,
        });
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    let (channels, color) = match info.color_type {
        png::ColorType::Grayscale => (1, None),
        png::ColorType::GrayscaleAlpha => (2, None),
        other => (0, Some(format!("{other:?}"))),
    };
    if let Some(color) = color {
        return Err(UploadError::Colour { object, color });
    }
    let bytes_per = if info.bit_depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    let stride = channels * bytes_per;
    let mut data = Vec::with_capacity(rows * cols);
    let mut values = std::collections::BTreeSet::new();
    for y in 0..rows {
        let line = &buf[y * info.line_size..y * info.line_size + cols * stride];
        for x in 0..cols {
            let p = &line[x * stride..x * stride + bytes_per];
            let v = if bytes_per == 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                p[0] as u16
            };
            if v != 0 {
                values.insert(v);
            }
            data.push((v != 0) as u8);
        }
    }
    if values.len() > 1 {
        return Err(UploadError::NotBinary {
            object,
            values: values.len(),
        });
    }
    Ok(Mask { rows, cols, data })
}

/// The masks of `image` in a DICOM SEG (read with `dicom::seg::read_seg`), one per object,
/// segments in Segment Number order. The SEG must have one segment per object, the image's
/// size, and reference the image (or no source at all); an omitted frame is an empty mask.
pub fn decode_seg_masks(
    seg: &[u8],
    image: &DicomImage,
    objects: usize,
) -> Result<Vec<Mask>, UploadError> {
    let obj = parse_dicom(seg).map_err(|e| UploadError::BadSeg(e.to_string()))?;
    let class = text(&obj, tags::SOP_CLASS_UID);
    if class != uids::SEGMENTATION_STORAGE {
        return Err(UploadError::BadSeg(format!(
            "SOP class {class:?} is not Segmentation Storage"
        )));
    }
    let m = crate::dicom::seg::read_seg(&obj).map_err(|e| UploadError::BadSeg(e.to_string()))?;
    if m.segments.len() != objects {
        return Err(UploadError::BadSeg(format!(
            "{} segment(s), the support set has {objects} object(s)",
            m.segments.len()
        )));
    }
    let (rows, cols) = (usize::from(m.rows), usize::from(m.columns));
    if (rows, cols) != (image.rows, image.cols) {
        return Err(UploadError::BadSeg(format!(
            "{rows}x{cols} (rows x columns) does not match the image's {}x{}",
            image.rows, image.cols
        )));
    }
    let uid = image.sop_instance_uid.as_str();
    if !m.masks.is_empty()
        && !m
            .masks
            .keys()
            .any(|k| k.sop_instance_uid.as_deref() == Some(uid))
    {
        return Err(UploadError::BadSeg(format!(
            "it does not reference the image (SOP Instance UID {uid})"
        )));
    }
    let mut numbers: Vec<u16> = m.segments.iter().map(|s| s.number).collect();
    numbers.sort_unstable();
    Ok(numbers
        .into_iter()
        .map(|n| Mask {
            rows,
            cols,
            data: m
                .mask_or_empty(uid, 1, n)
                .into_iter()
                .map(|v| u8::from(v != 0))
                .collect(),
        })
        .collect())
}

/// Checks that there is one mask per object, each at the image size, neither empty nor full
/// (every pixel foreground).
pub fn check_masks(
    masks: &[Mask],
    labels: &[String],
    rows: usize,
    cols: usize,
) -> Result<(), UploadError> {
    if masks.len() != labels.len() {
        return Err(UploadError::Count {
            got: masks.len(),
            want: labels.len(),
        });
    }
    for (k, m) in masks.iter().enumerate() {
        if (m.rows, m.cols) != (rows, cols) || m.data.len() != rows * cols {
            return Err(UploadError::SizeMismatch {
                object: k + 1,
                got_rows: m.rows,
                got_cols: m.cols,
                rows,
                cols,
            });
        }
        if m.area() == 0 {
            return Err(UploadError::Empty {
                object: k + 1,
                label: labels[k].clone(),
            });
        }
        if m.area() == m.data.len() {
            return Err(UploadError::Full {
                object: k + 1,
                label: labels[k].clone(),
            });
        }
    }
    Ok(())
}

/// Encodes a mask as an 8-bit greyscale PNG (0 / 255).
pub fn mask_png(m: &Mask) -> Vec<u8> {
    let data: Vec<u8> = m
        .data
        .iter()
        .map(|&v| if v != 0 { 255 } else { 0 })
        .collect();
    encode_png(
        m.cols as u32,
        m.rows as u32,
        png::ColorType::Grayscale,
        &data,
    )
}

/// Encodes a mask as an RGBA overlay PNG: `color` at 50 % opacity inside, transparent outside.
pub fn overlay_png(m: &Mask, color: [u8; 3]) -> Vec<u8> {
    let mut data = Vec::with_capacity(m.data.len() * 4);
    for &v in &m.data {
        if v != 0 {
            data.extend_from_slice(&[color[0], color[1], color[2], 128]);
        } else {
            data.extend_from_slice(&[0, 0, 0, 0]);
        }
    }
    encode_png(m.cols as u32, m.rows as u32, png::ColorType::Rgba, &data)
}

fn encode_png(w: u32, h: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        // Writing to a Vec cannot fail for a buffer of the right size.
        if let Ok(mut wr) = enc.write_header() {
            let _ = wr.write_image_data(data);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_masks_round_trip_and_are_checked() {
        let m = Mask {
            rows: 3,
            cols: 4,
            data: vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        };
        let png = mask_png(&m);
        assert_eq!(decode_png_mask(&png, 1, 3, 4).unwrap(), m);
        assert!(matches!(
            decode_png_mask(&png, 2, 4, 3),
            Err(UploadError::SizeMismatch {
                object: 2,
                got_rows: 3,
                got_cols: 4,
                ..
            })
        ));
        let grey = encode_png(2, 1, png::ColorType::Grayscale, &[0, 0]);
        let mut two = grey.clone();
        two.clear();
        two.extend(encode_png(3, 1, png::ColorType::Grayscale, &[0, 100, 200]));
        assert!(matches!(
            decode_png_mask(&two, 1, 1, 3),
            Err(UploadError::NotBinary { values: 2, .. })
        ));
        assert!(matches!(
            decode_png_mask(b"not a png", 1, 1, 1),
            Err(UploadError::BadPng { .. })
        ));
        let rgb = encode_png(1, 1, png::ColorType::Rgb, &[1, 2, 3]);
        assert!(matches!(
            decode_png_mask(&rgb, 1, 1, 1),
            Err(UploadError::Colour { .. })
        ));
        let empty = decode_png_mask(&grey, 1, 1, 2).unwrap();
        let e = check_masks(&[empty], &["disc".into()], 1, 2).unwrap_err();
        assert!(e.to_string().contains("mask 1 (disc): empty"), "{e}");
        let full = |object: usize| Mask {
            rows: 2,
            cols: 2,
            data: if object == 2 {
                vec![1; 4]
            } else {
                vec![0, 1, 0, 0]
            },
        };
        let labels = ["disc".to_string(), "cup".to_string()];
        let e = check_masks(&[full(1), full(2)], &labels, 2, 2).unwrap_err();
        assert!(matches!(e, UploadError::Full { object: 2, .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("mask 2 (cup): every pixel is foreground"),
            "{e}"
        );
        // One background pixel is enough.
        let mut almost = full(2);
        almost.data[3] = 0;
        check_masks(&[full(1), almost], &labels, 2, 2).unwrap();
    }

    #[test]
    fn broken_dicom_is_named() {
        assert!(matches!(
            parse_image(b"garbage"),
            Err(UploadError::BrokenDicom(_))
        ));
    }
}
