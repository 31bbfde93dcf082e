//! What [`super::write_seg`] takes: the source images with their masks, the segments and the
//! options; and the checks that reject inconsistent input before anything is built (counts,
//! sizes, one study, attribute value representations). Never reads pixel data.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::elements::{get_int, get_str};
use super::{SegError, SegmentDescription};

/// One source image and its masks.
#[derive(Debug, Clone)]
pub struct SourceImage<'a> {
    /// The source data set (header only is enough: pixel data is never read). A
    /// `FileDicomObject` derefs to it.
    pub dataset: &'a InMemDicomObject,
    /// `masks[frame][segment]`: one mask per source frame (a single-frame image has one) and per
    /// segment of [`SegInput::segments`], in that order. A mask holds Rows x Columns bytes, row
    /// by row; any non-zero byte marks a pixel inside the segment.
    pub masks: Vec<Vec<&'a [u8]>>,
}

/// What to segment: the segments and the source images with their masks.
#[derive(Debug, Clone)]
pub struct SegInput<'a> {
    /// The segments; segment number `i + 1` is `segments[i]`.
    pub segments: Vec<SegmentDescription>,
    /// The source images: one image, the frames of one multi-frame image, or the slices of a
    /// series (any order: frames with patient geometry are sorted along the normal).
    pub sources: Vec<SourceImage<'a>>,
}

/// Identification and presentation choices for the SEG instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegOptions {
    /// Series Description (LO), e.g. naming the support set.
    pub series_description: String,
    /// Content Label (CS: `A`-`Z`, `0`-`9`, `_` and space, at most 16 characters).
    pub content_label: String,
    /// Content Description (LO).
    pub content_description: String,
    /// Content Creator's Name (PN), e.g. `proxyseg`.
    pub content_creator: String,
    /// Instance Number.
    pub instance_number: u32,
    /// Series Number.
    pub series_number: u32,
    /// Manufacturer (Enhanced General Equipment).
    pub manufacturer: String,
    /// Manufacturer's Model Name.
    pub manufacturer_model_name: String,
    /// Device Serial Number.
    pub device_serial_number: String,
    /// Software Versions.
    pub software_versions: String,
    /// Algorithm Version (LO, at most 64 characters): model bundle name + version and support
    /// set name + version, e.g. `sam-tiny 1.0; liver-ct 3`.
    pub algorithm_version: String,
    /// Drop frames whose mask is empty. When every frame is empty, the first frame is kept so
    /// the object still has pixel data (Number of Frames must be at least 1).
    pub omit_empty_frames: bool,
    /// SOP Instance UID, deterministic per job (see [`super::deterministic_uid`]).
    pub sop_instance_uid: String,
    /// Series Instance UID of the new SEG series.
    pub series_instance_uid: String,
    /// Content Date and Time (`YYYYMMDD`, `HHMMSS`); `None` = now (UTC).
    pub content_date_time: Option<(String, String)>,
}

impl SegOptions {
    /// Options with proxyseg's defaults and the given UIDs.
    pub fn new(
        sop_instance_uid: impl Into<String>,
        series_instance_uid: impl Into<String>,
    ) -> Self {
        Self {
            series_description: "proxyseg segmentation".into(),
            content_label: "PROXYSEG".into(),
            content_description: "Automatic segmentation by proxyseg".into(),
            content_creator: "proxyseg".into(),
            instance_number: 1,
            series_number: 9001,
            manufacturer: "proxyseg".into(),
            manufacturer_model_name: "proxyseg".into(),
            device_serial_number: "1".into(),
            software_versions: env!("CARGO_PKG_VERSION").into(),
            algorithm_version: env!("CARGO_PKG_VERSION").into(),
            omit_empty_frames: false,
            sop_instance_uid: sop_instance_uid.into(),
            series_instance_uid: series_instance_uid.into(),
            content_date_time: None,
        }
    }
}

/// Facts about one source read once.
pub(super) struct SourceHeader {
    /// SOP Class UID.
    pub(super) sop_class: String,
    /// SOP Instance UID.
    pub(super) sop_instance: String,
    /// Series Instance UID.
    pub(super) series: String,
    /// Number of Frames (1 when absent).
    pub(super) frames: usize,
    /// Whether the source is a multi-frame IOD (has Number of Frames): its frames are then
    /// referenced by Referenced Frame Number.
    pub(super) multi_frame: bool,
}

/// Checks the options against their attributes' value representations.
pub(super) fn check_options(o: &SegOptions) -> Result<(), SegError> {
    for (name, uid) in [
        ("sop_instance_uid", &o.sop_instance_uid),
        ("series_instance_uid", &o.series_instance_uid),
    ] {
        if !is_uid(uid) {
            return Err(SegError::InvalidOption {
                name,
                reason: format!("{uid:?} is not a UID (digits and dots, at most 64 characters)"),
            });
        }
    }
    let label_ok = o.content_label.len() <= 16
        && !o.content_label.is_empty()
        && o.content_label
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == ' ');
    if !label_ok {
        return Err(SegError::InvalidOption {
            name: "content_label",
            reason: format!(
                "{:?} is not a CS value (A-Z, 0-9, _ and space, 1 to 16 characters)",
                o.content_label
            ),
        });
    }
    for (name, value) in [
        ("series_description", &o.series_description),
        ("content_description", &o.content_description),
        ("manufacturer", &o.manufacturer),
        ("manufacturer_model_name", &o.manufacturer_model_name),
        ("device_serial_number", &o.device_serial_number),
        ("software_versions", &o.software_versions),
        ("algorithm_version", &o.algorithm_version),
    ] {
        if value.chars().count() > 64 || value.contains('\\') {
            return Err(SegError::InvalidOption {
                name,
                reason: format!(
                    "{value:?} is not a LO value (at most 64 characters, no backslash)"
                ),
            });
        }
    }
    for (name, value) in [
        ("manufacturer", &o.manufacturer),
        ("manufacturer_model_name", &o.manufacturer_model_name),
        ("device_serial_number", &o.device_serial_number),
        ("software_versions", &o.software_versions),
        ("algorithm_version", &o.algorithm_version),
    ] {
        if value.trim().is_empty() {
            return Err(SegError::InvalidOption {
                name,
                reason: "must not be empty (type 1 attribute)".into(),
            });
        }
    }
    if let Some((d, t)) = &o.content_date_time {
        let date_ok = d.len() == 8 && d.chars().all(|c| c.is_ascii_digit());
        let time_ok = t.len() >= 2 && t.chars().all(|c| c.is_ascii_digit() || c == '.');
        if !date_ok || !time_ok {
            return Err(SegError::InvalidOption {
                name: "content_date_time",
                reason: format!("{d:?} {t:?} is not YYYYMMDD and HHMMSS"),
            });
        }
    }
    Ok(())
}

/// Whether `s` is a syntactically valid UID.
fn is_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|c| {
            !c.is_empty()
                && c.chars().all(|d| d.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

/// Checks counts and sizes; returns Rows, Columns and the sources' identifying attributes.
pub(super) fn check_input(input: &SegInput<'_>) -> Result<(u16, u16, Vec<SourceHeader>), SegError> {
    if input.segments.is_empty() {
        return Err(SegError::InvalidInput("no segments".into()));
    }
    if input.segments.len() > usize::from(u16::MAX) {
        return Err(SegError::InvalidInput(format!(
            "{} segments (at most 65535)",
            input.segments.len()
        )));
    }
    for (i, s) in input.segments.iter().enumerate() {
        let lo = |v: &str| !v.trim().is_empty() && v.chars().count() <= 64 && !v.contains('\\');
        if !lo(&s.label) || !lo(&s.algorithm_name) {
            return Err(SegError::InvalidInput(format!(
                "segment {}: label and algorithm name must be 1 to 64 characters without a \
                 backslash (LO)",
                i + 1
            )));
        }
        for (what, code) in [("category", &s.category), ("type", &s.type_)] {
            if code.scheme.is_empty()
                || code.scheme.len() > 16
                || code.value.is_empty()
                || code.meaning.is_empty()
                || code.meaning.chars().count() > 64
            {
                return Err(SegError::InvalidInput(format!(
                    "segment {}: {what} code needs a scheme (SH), a value and a meaning (LO)",
                    i + 1
                )));
            }
        }
    }
    let Some(first) = input.sources.first() else {
        return Err(SegError::InvalidInput("no source images".into()));
    };
    let need_u16 = |index: usize, ds: &InMemDicomObject, tag: Tag, attribute: &'static str| {
        get_int::<u16>(ds, tag)
            .filter(|v| *v > 0)
            .ok_or(SegError::SourceMissing { index, attribute })
    };
    let rows = need_u16(0, first.dataset, tags::ROWS, "Rows")?;
    let columns = need_u16(0, first.dataset, tags::COLUMNS, "Columns")?;
    let study =
        get_str(first.dataset, tags::STUDY_INSTANCE_UID).ok_or(SegError::SourceMissing {
            index: 0,
            attribute: "StudyInstanceUID",
        })?;
    let pixels = usize::from(rows) * usize::from(columns);
    let mut headers = Vec::with_capacity(input.sources.len());
    let mut seen = std::collections::HashSet::new();
    for (index, src) in input.sources.iter().enumerate() {
        let ds = src.dataset;
        let need_str = |tag: Tag, attribute: &'static str| {
            get_str(ds, tag).ok_or(SegError::SourceMissing { index, attribute })
        };
        let sop_class = need_str(tags::SOP_CLASS_UID, "SOPClassUID")?;
        let sop_instance = need_str(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
        let series = need_str(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
        if need_str(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")? != study {
            return Err(SegError::InvalidInput(format!(
                "source {index} belongs to another study than source 0"
            )));
        }
        if !seen.insert(sop_instance.clone()) {
            return Err(SegError::InvalidInput(format!(
                "source {index} repeats SOP Instance UID {sop_instance}"
            )));
        }
        let (r, c) = (
            need_u16(index, ds, tags::ROWS, "Rows")?,
            need_u16(index, ds, tags::COLUMNS, "Columns")?,
        );
        if (r, c) != (rows, columns) {
            return Err(SegError::InvalidInput(format!(
                "source {index} is {r}x{c}, source 0 is {rows}x{columns}"
            )));
        }
        let multi_frame = ds.get(tags::NUMBER_OF_FRAMES).is_some();
        let frames = get_int::<u32>(ds, tags::NUMBER_OF_FRAMES)
            .unwrap_or(1)
            .max(1) as usize;
        if src.masks.len() != frames {
            return Err(SegError::InvalidInput(format!(
                "source {index} has {frames} frame(s) but {} mask frame(s)",
                src.masks.len()
            )));
        }
        for (f, per_segment) in src.masks.iter().enumerate() {
            if per_segment.len() != input.segments.len() {
                return Err(SegError::InvalidInput(format!(
                    "source {index} frame {f}: {} masks for {} segments",
                    per_segment.len(),
                    input.segments.len()
                )));
            }
            if let Some((s, m)) = per_segment
                .iter()
                .enumerate()
                .find(|(_, m)| m.len() != pixels)
            {
                return Err(SegError::InvalidInput(format!(
                    "source {index} frame {f} segment {}: mask has {} bytes, {rows}x{columns} = {pixels} expected",
                    s + 1,
                    m.len()
                )));
            }
        }
        headers.push(SourceHeader {
            sop_class,
            sop_instance,
            series,
            frames,
            multi_frame,
        });
    }
    Ok((rows, columns, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_syntax() {
        assert!(is_uid("1.2.840.10008.5.1.4.1.1.66.4"));
        assert!(is_uid("2.25.0"));
        assert!(!is_uid("1.02.3"));
        assert!(!is_uid("1..2"));
        assert!(!is_uid(""));
        assert!(!is_uid(&format!("1.{}", "2".repeat(70))));
    }
}
