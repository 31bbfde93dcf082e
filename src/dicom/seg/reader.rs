//! Reading SEG objects (ours, highdicom's, any conforming writer's) into masks per referenced
//! source instance and frame, and per segment. BINARY and FRACTIONAL (thresholded at 0.5)
//! segmentations with native (uncompressed) pixel data are supported; anything else is a typed
//! error, never a panic.

use std::borrow::Cow;
use std::collections::BTreeMap;

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::bitpack::unpack_frame;
use super::codes::Code;
use super::color::{dicom_to_lab, lab_to_srgb};
use super::elements::{first_item, get_int, get_str, items};
use super::{SegError, SegmentDescription, SEGMENTATION_STORAGE};

/// Which source image frame a mask belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    /// Referenced SOP Instance UID; `None` when the SEG frame references no source (the masks
    /// are then keyed by their order within the segment, see `frame_number`).
    pub sop_instance_uid: Option<String>,
    /// 1-based frame number of the source (1 for a single-frame source).
    pub frame_number: u32,
}

/// One segment read from the Segment Sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Segment Number.
    pub number: u16,
    /// Label, codes, colour (back from CIELab, nearest sRGB) and algorithm name. Missing codes
    /// read as empty codes; a missing colour reads as white.
    pub description: SegmentDescription,
}

/// The masks of a SEG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegMasks {
    /// Rows of every mask.
    pub rows: u16,
    /// Columns of every mask.
    pub columns: u16,
    /// The segments in Segment Sequence order.
    pub segments: Vec<SegmentInfo>,
    /// Referenced SOP Class UID of each referenced source instance.
    pub source_classes: BTreeMap<String, String>,
    /// Masks (Rows x Columns bytes, 0 or 1) per source frame, then per segment number. Frames
    /// the SEG omitted (empty) are absent: use [`SegMasks::mask_or_empty`].
    pub masks: BTreeMap<SourceKey, BTreeMap<u16, Vec<u8>>>,
}

impl SegMasks {
    /// The mask of `segment` on frame `frame_number` (1-based; 1 for single-frame sources) of the
    /// source instance `sop_instance_uid`, if the SEG holds a frame for it.
    pub fn mask(&self, sop_instance_uid: &str, frame_number: u32, segment: u16) -> Option<&[u8]> {
        let key = SourceKey {
            sop_instance_uid: Some(sop_instance_uid.to_string()),
            frame_number,
        };
        self.masks.get(&key)?.get(&segment).map(|m| m.as_slice())
    }

    /// Like [`SegMasks::mask`], but an all-zero mask when the SEG omitted that frame.
    pub fn mask_or_empty(
        &self,
        sop_instance_uid: &str,
        frame_number: u32,
        segment: u16,
    ) -> Vec<u8> {
        self.mask(sop_instance_uid, frame_number, segment)
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| vec![0; usize::from(self.rows) * usize::from(self.columns)])
    }
}

/// Reads the masks and segment descriptions of a SEG data set (a `FileDicomObject` derefs to
/// it).
///
/// Each frame is attributed to the source named by its per-frame Derivation Image / Source Image
/// reference; a frame without one falls back to the only referenced instance (top-level Source
/// Image or Referenced Series Sequence), or else to `sop_instance_uid: None` and its order within
/// its segment.
pub fn read_seg(obj: &InMemDicomObject) -> Result<SegMasks, SegError> {
    let header = read_header(obj)?;
    let segments = read_segments(obj)?;
    let numbers: Vec<u16> = segments.iter().map(|s| s.number).collect();
    let pixel_data = pixel_bytes(obj)?;
    let pixel_data: &[u8] = &pixel_data;
    let (pixels, need) = header.check_length(pixel_data.len())?;
    let frames = header.frames;

    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    if !per_frame.is_empty() && per_frame.len() != frames {
        return Err(SegError::BadValue {
            attribute: "PerFrameFunctionalGroupsSequence",
            reason: format!("{} items for {frames} frames", per_frame.len()),
        });
    }
    let mut source_classes = BTreeMap::new();
    let only_source = sole_referenced_instance(obj, &mut source_classes);

    let mut masks: BTreeMap<SourceKey, BTreeMap<u16, Vec<u8>>> = BTreeMap::new();
    let mut order_in_segment: BTreeMap<u16, u32> = BTreeMap::new();
    for f in 0..frames {
        let group = per_frame.get(f);
        let segment = frame_segment(group, shared, segments.len(), f)?;
        if !numbers.contains(&segment) {
            return Err(SegError::SegmentOutOfRange {
                frame: f + 1,
                segment: u32::from(segment),
                count: segments.len(),
            });
        }
        let counter = order_in_segment.entry(segment).or_insert(0);
        *counter += 1;
        let key = match group.and_then(|g| frame_source(g, &mut source_classes)) {
            Some(key) => key,
            // The n-th frame of a segment is the source's frame n (1 for single-frame).
            None => SourceKey {
                sop_instance_uid: only_source.clone(),
                frame_number: *counter,
            },
        };
        let mask = header.frame_mask(pixel_data, pixels, f, need)?;
        let slot = masks.entry(key).or_default();
        match slot.get_mut(&segment) {
            // Two frames for the same source frame and segment: their union.
            Some(existing) => existing.iter_mut().zip(&mask).for_each(|(a, b)| *a |= b),
            None => {
                slot.insert(segment, mask);
            }
        }
    }
    Ok(SegMasks {
        rows: header.rows,
        columns: header.columns,
        segments,
        source_classes,
        masks,
    })
}

/// What the top level says about the frames: size, count and how a pixel is stored.
struct FramesHeader {
    /// Rows of every frame.
    rows: u16,
    /// Columns of every frame.
    columns: u16,
    /// Number of Frames (1 when absent).
    frames: usize,
    /// `None` for BINARY (1 bit a pixel); the Maximum Fractional Value for FRACTIONAL (a byte a
    /// pixel, thresholded at half of it).
    fractional_max: Option<u16>,
}

/// Checks that `obj` is a SEG and reads its [`FramesHeader`].
fn read_header(obj: &InMemDicomObject) -> Result<FramesHeader, SegError> {
    let sop_class = get_str(obj, tags::SOP_CLASS_UID).unwrap_or_default();
    if sop_class != SEGMENTATION_STORAGE {
        return Err(SegError::NotSeg(sop_class));
    }
    let rows = get_int::<u16>(obj, tags::ROWS).ok_or(SegError::Missing("Rows"))?;
    let columns = get_int::<u16>(obj, tags::COLUMNS).ok_or(SegError::Missing("Columns"))?;
    if rows == 0 || columns == 0 {
        return Err(SegError::BadValue {
            attribute: "Rows/Columns",
            reason: format!("{rows}x{columns}"),
        });
    }
    let frames = get_int::<u32>(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1) as usize;
    if frames == 0 {
        return Err(SegError::BadValue {
            attribute: "NumberOfFrames",
            reason: "0".into(),
        });
    }
    let seg_type =
        get_str(obj, tags::SEGMENTATION_TYPE).ok_or(SegError::Missing("SegmentationType"))?;
    let bits =
        get_int::<u16>(obj, tags::BITS_ALLOCATED).ok_or(SegError::Missing("BitsAllocated"))?;
    let fractional_max = match (seg_type.as_str(), bits) {
        ("BINARY", 1) => None,
        ("FRACTIONAL", 8) => Some(
            get_int::<u16>(obj, tags::MAXIMUM_FRACTIONAL_VALUE)
                .filter(|m| *m > 0)
                .ok_or(SegError::Missing("MaximumFractionalValue"))?,
        ),
        (t, b) => {
            return Err(SegError::Unsupported(format!(
                "SegmentationType {t} with BitsAllocated {b}"
            )))
        }
    };
    Ok(FramesHeader {
        rows,
        columns,
        frames,
        fractional_max,
    })
}

impl FramesHeader {
    /// Pixels per frame and the bytes all frames need, checked against the `got` bytes of
    /// Pixel Data.
    fn check_length(&self, got: usize) -> Result<(usize, usize), SegError> {
        let (rows, columns, frames) = (self.rows, self.columns, self.frames);
        let pixels = usize::from(rows) * usize::from(columns);
        let total = pixels
            .checked_mul(frames)
            .ok_or_else(|| SegError::BadValue {
                attribute: "NumberOfFrames",
                reason: format!("{frames} frames of {rows}x{columns} overflow"),
            })?;
        let need = match self.fractional_max {
            None => total.div_ceil(8),
            Some(_) => total,
        };
        if got < need {
            return Err(SegError::PixelDataTooShort { got, need });
        }
        Ok((pixels, need))
    }

    /// Frame `f` (0-based) as a 0/1 mask of `pixels` bytes.
    fn frame_mask(
        &self,
        pixel_data: &[u8],
        pixels: usize,
        f: usize,
        need: usize,
    ) -> Result<Vec<u8>, SegError> {
        Ok(match self.fractional_max {
            None => unpack_frame(pixel_data, pixels, f).ok_or(SegError::PixelDataTooShort {
                got: pixel_data.len(),
                need,
            })?,
            Some(max) => pixel_data[f * pixels..(f + 1) * pixels]
                .iter()
                .map(|&v| u8::from(u32::from(v) * 2 >= u32::from(max)))
                .collect(),
        })
    }
}

/// The Pixel Data as bytes: OB as is, OW as its little-endian byte stream.
fn pixel_bytes(obj: &InMemDicomObject) -> Result<Cow<'_, [u8]>, SegError> {
    let pixel_elem = obj
        .get(tags::PIXEL_DATA)
        .ok_or(SegError::Missing("PixelData"))?;
    match pixel_elem.value() {
        Value::Primitive(dicom_core::PrimitiveValue::U8(bytes)) => Ok(bytes.as_slice().into()),
        // Implicit VR files may hold it as OW: the byte stream is the little-endian words.
        Value::Primitive(dicom_core::PrimitiveValue::U16(words)) => Ok(words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()),
        Value::Primitive(_) => Err(SegError::Unsupported("PixelData is not OB or OW".into())),
        Value::PixelSequence(_) => Err(SegError::Unsupported(
            "encapsulated (compressed) pixel data".into(),
        )),
        Value::Sequence(_) => Err(SegError::Missing("PixelData")),
    }
}

/// The Segment Sequence.
fn read_segments(obj: &InMemDicomObject) -> Result<Vec<SegmentInfo>, SegError> {
    let seq = items(obj, tags::SEGMENT_SEQUENCE);
    if seq.is_empty() {
        return Err(SegError::Missing("SegmentSequence"));
    }
    let mut out = Vec::with_capacity(seq.len());
    for item in seq {
        let number =
            get_int::<u16>(item, tags::SEGMENT_NUMBER).ok_or(SegError::Missing("SegmentNumber"))?;
        if number == 0 || out.iter().any(|s: &SegmentInfo| s.number == number) {
            return Err(SegError::BadValue {
                attribute: "SegmentNumber",
                reason: format!("{number} is zero or repeated"),
            });
        }
        let code = |tag| {
            first_item(item, tag)
                .and_then(Code::from_item)
                .unwrap_or_else(|| Code::new("", "", ""))
        };
        let color_rgb = item
            .get(tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE)
            .and_then(|e| e.to_multi_int::<u16>().ok())
            .filter(|v| v.len() == 3)
            .map(|v| lab_to_srgb(dicom_to_lab([v[0], v[1], v[2]])))
            .unwrap_or([255, 255, 255]);
        out.push(SegmentInfo {
            number,
            description: SegmentDescription {
                label: get_str(item, tags::SEGMENT_LABEL).unwrap_or_default(),
                category: code(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE),
                type_: code(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE),
                color_rgb,
                algorithm_name: get_str(item, tags::SEGMENT_ALGORITHM_NAME).unwrap_or_default(),
            },
        });
    }
    Ok(out)
}

/// The Referenced Segment Number of a frame (per-frame, else shared, else the only segment).
fn frame_segment(
    group: Option<&InMemDicomObject>,
    shared: Option<&InMemDicomObject>,
    segment_count: usize,
    frame: usize,
) -> Result<u16, SegError> {
    let from = |g: &InMemDicomObject| {
        first_item(g, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .and_then(|i| i.get(tags::REFERENCED_SEGMENT_NUMBER))
            .map(|e| e.to_int::<u32>())
    };
    match group.and_then(from).or_else(|| shared.and_then(from)) {
        Some(Ok(n)) => u16::try_from(n).map_err(|_| SegError::SegmentOutOfRange {
            frame: frame + 1,
            segment: n,
            count: segment_count,
        }),
        Some(Err(e)) => Err(SegError::BadValue {
            attribute: "ReferencedSegmentNumber",
            reason: e.to_string(),
        }),
        None if segment_count == 1 => Ok(1),
        None => Err(SegError::Missing("ReferencedSegmentNumber")),
    }
}

/// The source frame a per-frame item references, from Derivation Image > Source Image.
fn frame_source(
    group: &InMemDicomObject,
    classes: &mut BTreeMap<String, String>,
) -> Option<SourceKey> {
    let derivation = first_item(group, tags::DERIVATION_IMAGE_SEQUENCE)?;
    let source = first_item(derivation, tags::SOURCE_IMAGE_SEQUENCE)?;
    let uid = get_str(source, tags::REFERENCED_SOP_INSTANCE_UID)?;
    if let Some(class) = get_str(source, tags::REFERENCED_SOP_CLASS_UID) {
        classes.insert(uid.clone(), class);
    }
    let frame_number = get_int::<u32>(source, tags::REFERENCED_FRAME_NUMBER).unwrap_or(1);
    Some(SourceKey {
        sop_instance_uid: Some(uid),
        frame_number,
    })
}

/// The referenced instance when the SEG references exactly one (top-level Source Image Sequence,
/// else Referenced Series Sequence).
fn sole_referenced_instance(
    obj: &InMemDicomObject,
    classes: &mut BTreeMap<String, String>,
) -> Option<String> {
    let mut found: Vec<String> = Vec::new();
    let mut note = |item: &InMemDicomObject| {
        if let Some(uid) = get_str(item, tags::REFERENCED_SOP_INSTANCE_UID) {
            if let Some(class) = get_str(item, tags::REFERENCED_SOP_CLASS_UID) {
                classes.insert(uid.clone(), class);
            }
            if !found.contains(&uid) {
                found.push(uid);
            }
        }
    };
    for item in items(obj, tags::SOURCE_IMAGE_SEQUENCE) {
        note(item);
    }
    for series in items(obj, tags::REFERENCED_SERIES_SEQUENCE) {
        for item in items(series, tags::REFERENCED_INSTANCE_SEQUENCE) {
            note(item);
        }
    }
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}
