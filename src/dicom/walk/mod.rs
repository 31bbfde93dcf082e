//! A bounded walk over an encoded data set's element headers (PS3.5 7.1, 7.5, A.4), run on
//! every received data set before anything else parses it.
//!
//! It checks each defined length against the bytes that can still follow (the received data
//! set, or `dicom.max_object_mb` for a deflated one whose inflated size is unknown) before
//! reading or reserving anything, reports the top-level Pixel Data header, and copies out the
//! few small top-level elements that ingest needs (see [`INGEST_TAGS`]), so that the parser
//! proper only ever sees a buffer of bounded size.
//!
//! Sequences are walked item by item, the way dicom-parser reads them (explicit VR: VR SQ;
//! implicit VR: SQ in the standard dictionary; undefined length: always but for Pixel Data, and
//! in the data set's own encoding, also for UN), and every element inside a defined-length item
//! or sequence must fit in it, so that the parsers that open the stored file later (the
//! pipeline's) never meet a length that overruns its container.
//!
//! Must never: allocate from a length read off the wire, hold a value bigger than
//! [`MAX_KEPT_VALUE`], or nest deeper than [`MAX_DEPTH`]. Values other than the kept ones are
//! skipped (seek, or read and dropped through one fixed buffer).
//!
//! One file per concern: `walker` (the walk itself: [`walk`], element by element, sequence by
//! sequence), `source` (where the walked bytes come from: a slice, a forward-only inflating
//! stream, or a data set whose head is in memory and whose rest is in a file), `command` (the
//! bounded parser of DIMSE command sets, [`command_elements`]).

mod command;
mod source;
mod walker;

pub use command::command_elements;
pub use source::{HeadThenFile, Source, Streamed};
pub use walker::walk;

use dicom_core::Tag;
use dicom_dictionary_std::tags;

/// Deepest nesting of sequences accepted.
pub const MAX_DEPTH: usize = 32;

/// Largest value copied out for the parser; longer occurrences of a kept tag are left out
/// (no attribute ingest reads is anywhere near this long).
pub const MAX_KEPT_VALUE: u32 = 64 * 1024;

/// The top-level attributes ingest reads: the index record, the pixel checks, the content key
/// ([`crate::dicom::content`]), and the character set their text is decoded with.
pub const INGEST_TAGS: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::MODALITY,
    tags::SERIES_DESCRIPTION,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::BODY_PART_EXAMINED,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::INSTANCE_NUMBER,
    tags::SAMPLES_PER_PIXEL,
    tags::PHOTOMETRIC_INTERPRETATION,
    tags::NUMBER_OF_FRAMES,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
    tags::BITS_STORED,
    tags::PIXEL_REPRESENTATION,
    tags::IMAGE_POSITION_PATIENT,
    tags::IMAGE_ORIENTATION_PATIENT,
    tags::PIXEL_SPACING,
];

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);

/// How the walked bytes are encoded (the data set of a deflated transfer syntax is Explicit
/// VR Little Endian once inflated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Explicit VR (else implicit).
    pub explicit: bool,
    /// Big endian (Explicit VR Big Endian, retired but still accepted).
    pub big_endian: bool,
}

impl Encoding {
    /// The encoding of a transfer syntax's data set; `None` for a syntax we do not know.
    #[allow(deprecated)] // Explicit VR Big Endian is retired, but PACS still send it.
    pub fn of(ts: &str) -> Option<Encoding> {
        use dicom_dictionary_std::uids;
        let ts = crate::dicom::sop::trim_uid(ts);
        Some(match ts {
            uids::IMPLICIT_VR_LITTLE_ENDIAN => Encoding {
                explicit: false,
                big_endian: false,
            },
            uids::EXPLICIT_VR_BIG_ENDIAN => Encoding {
                explicit: true,
                big_endian: true,
            },
            _ if crate::dicom::sop::TRANSFER_SYNTAXES.contains(&ts) => Encoding {
                explicit: true,
                big_endian: false,
            },
            _ => return None,
        })
    }
}

/// What the top-level Pixel Data element looks like, without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelHeader {
    /// Native pixels: declared length (which always fits in the data set).
    Native {
        /// Its declared length.
        declared: u64,
    },
    /// Encapsulated (compressed) pixels.
    Encapsulated {
        /// Fragments after the Basic Offset Table item.
        fragments: u64,
    },
}

/// The outcome of a successful walk.
#[derive(Debug, Default)]
pub struct Walked {
    /// The kept top-level elements, header and value as encoded in the source, in order.
    pub kept: Vec<u8>,
    /// The top-level Pixel Data header, if there is one.
    pub pixel: Option<PixelHeader>,
    /// Data set bytes walked (for a deflated data set: its inflated length).
    pub length: u64,
}

/// Why a data set was refused. Display strings fit a DIMSE Error Comment (64 characters).
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A defined length runs past the end of the data set.
    #[error("{tag} declares {declared} bytes; {left} follow")]
    Overrun {
        /// The element.
        tag: Tag,
        /// Its declared length.
        declared: u32,
        /// Bytes left in the data set.
        left: u64,
    },
    /// In a data set of unknown length (deflated), a defined length beyond the cap.
    #[error("{tag} of {declared} bytes: inflated > max_object_mb")]
    BeyondCap {
        /// The element.
        tag: Tag,
        /// Its declared length.
        declared: u32,
    },
    /// A deflated data set inflates to more than the cap.
    #[error("inflated data set larger than dicom.max_object_mb ({} MiB)", .cap / 1048576)]
    InflatedTooLarge {
        /// The cap in bytes.
        cap: u64,
    },
    /// Sequences nested too deep.
    #[error("sequences nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Not a data set at all.
    #[error("{0}")]
    Malformed(String),
    /// Reading the spool file (or inflating) failed.
    #[error("cannot read the data set: {0}")]
    Io(std::io::Error),
}

impl WalkError {
    /// True when the data set is refused for its size rather than for its form.
    pub fn is_size(&self) -> bool {
        matches!(
            self,
            WalkError::BeyondCap { .. } | WalkError::InflatedTooLarge { .. }
        )
    }
}

#[cfg(test)]
mod tests;
