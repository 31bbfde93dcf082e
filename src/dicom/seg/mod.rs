//! DICOM Segmentation (SEG) objects: writing proxyseg's results and reading support masks.
//!
//! [`write_seg`] turns binary masks over a set of source images into one Segmentation Storage
//! object (BINARY, bit-packed, Explicit VR Little Endian) in a new series of the source study;
//! [`read_seg`] reads BINARY or FRACTIONAL SEGs (ours or any other writer's) back into masks keyed
//! by the source instance and frame they reference; [`save_seg`] stores one as a Part 10 file and
//! fsyncs it. This module only builds and parses objects: it never sends anything over the
//! network and never invents random UIDs (the caller supplies deterministic ones, see
//! [`deterministic_uid`]), so a retried job writes the very same SOP Instance.
//!
//! Layout of a written SEG: frames go segment by segment; within a segment, source frames go
//! along the slice normal for a volume (single-frame slices with Image Orientation/Position,
//! Pixel Spacing and a Frame of Reference, or enhanced multi-frame images whose functional
//! groups hold them), or in the given order and source frame order otherwise (US cine,
//! photographs: no Frame of Reference, no plane geometry). Dimensions are Referenced Segment
//! Number then Image Position (Patient) (volumes) or Temporal Position Index (several frames
//! without geometry). With `omit_empty_frames`, frames whose mask is empty are left out; when
//! all are, one empty frame is kept so the object stays valid.
//!
//! ```no_run
//! use proxyseg::dicom::seg::{
//!     deterministic_uid, read_seg, save_seg, write_seg, Code, SegInput, SegOptions,
//!     SegmentDescription, SourceImage,
//! };
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ct = dicom_object::open_file("slice.dcm")?; // header only is enough
//! let liver_mask = vec![0u8; 512 * 512]; // Rows x Columns, non-zero = inside
//! let input = SegInput {
//!     segments: vec![SegmentDescription {
//!         label: "Liver".into(),
//!         category: Code::sct("123037004", "Anatomical Structure"),
//!         type_: Code::sct("10200004", "Liver"),
//!         color_rgb: [221, 130, 101],
//!         algorithm_name: "proxyseg PPG+SAM".into(),
//!     }],
//!     // masks[frame][segment] for each source image
//!     sources: vec![SourceImage { dataset: &ct, masks: vec![vec![&liver_mask]] }],
//! };
//! let mut options = SegOptions::new(
//!     deterministic_uid("job-42/seg/sop"),
//!     deterministic_uid("job-42/seg/series"),
//! );
//! options.series_description = "proxyseg liver-ct v3".into();
//! options.algorithm_version = "sam-tiny 1.0; liver-ct 3".into();
//! let seg = write_seg(&input, &options)?;
//! save_seg(&seg, std::path::Path::new("out/seg.dcm"))?;
//! let masks = read_seg(&seg)?; // masks.mask(sop_instance_uid, frame_number, segment)
//! # let _ = masks;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod attributes;
pub mod bitpack;
mod clock;
mod codes;
pub mod color;
mod elements;
mod file;
mod functional_groups;
mod geometry;
mod input;
mod layout;
mod reader;
mod uid;
mod writer;

pub use codes::Code;
pub use file::save_seg;
pub use input::{SegInput, SegOptions, SourceImage};
pub use reader::{read_seg, SegMasks, SegmentInfo, SourceKey};
pub use uid::deterministic_uid;
pub use writer::write_seg;

/// The SOP Class UID of Segmentation Storage.
pub const SEGMENTATION_STORAGE: &str = dicom_dictionary_std::uids::SEGMENTATION_STORAGE;

/// One segment (one object class of the support set): what it is and how to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDescription {
    /// Segment Label (LO, at most 64 characters), e.g. `Liver`.
    pub label: String,
    /// Segmented Property Category (CID 7150), e.g. SCT 91723000 "Anatomical structure".
    pub category: Code,
    /// Segmented Property Type (CID 7151 ...), e.g. SCT 10200004 "Liver".
    pub type_: Code,
    /// Display colour as sRGB; written as Recommended Display CIELab Value.
    pub color_rgb: [u8; 3],
    /// Segment Algorithm Name, e.g. the model family (`proxyseg PPG+SAM`).
    pub algorithm_name: String,
}

/// Why a SEG could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    /// The input to [`write_seg`] is inconsistent (counts, sizes, studies).
    #[error("invalid SEG input: {0}")]
    InvalidInput(String),
    /// An option does not fit its DICOM attribute (too long, not a UID ...).
    #[error("invalid SEG option {name}: {reason}")]
    InvalidOption {
        /// The option's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A source dataset lacks an attribute the SEG must copy or reference.
    #[error("source image {index} lacks {attribute}")]
    SourceMissing {
        /// Index of the source in [`SegInput::sources`].
        index: usize,
        /// The missing attribute's keyword.
        attribute: &'static str,
    },
    /// Sources with patient geometry disagree (orientation, pixel spacing, frame of reference).
    #[error("inconsistent source geometry: {0}")]
    InconsistentGeometry(String),
    /// The object read is not a Segmentation Storage instance.
    #[error("not a DICOM SEG: SOP Class UID is {0:?}")]
    NotSeg(String),
    /// The SEG lacks a required attribute.
    #[error("SEG lacks {0}")]
    Missing(&'static str),
    /// An attribute of the SEG holds a value we cannot use.
    #[error("SEG attribute {attribute} is invalid: {reason}")]
    BadValue {
        /// The attribute's keyword.
        attribute: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Pixel Data holds fewer bytes than Rows x Columns x Number of Frames need.
    #[error("SEG pixel data too short: {got} bytes, {need} needed")]
    PixelDataTooShort {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A frame references a segment number that is not in the Segment Sequence.
    #[error(
        "frame {frame} references segment {segment}, but the SEG defines segments 1..={count}"
    )]
    SegmentOutOfRange {
        /// 1-based frame number.
        frame: usize,
        /// The Referenced Segment Number found.
        segment: u32,
        /// Number of segments defined.
        count: usize,
    },
    /// The SEG uses an encoding we do not decode (compressed pixel data, bits allocated ...).
    #[error("unsupported SEG encoding: {0}")]
    Unsupported(String),
    /// Building the file meta group failed.
    #[error("cannot build the file meta information: {0}")]
    Meta(String),
    /// Writing the SEG file failed.
    #[error("cannot write SEG file {path}: {reason}")]
    Io {
        /// The file being written.
        path: std::path::PathBuf,
        /// The underlying error.
        reason: String,
    },
}
