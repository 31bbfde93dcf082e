//! Decoded pixel data -> display frames (f32, 0..255) ready for the engine's preprocessing.
//!
//! Owns pixel decoding (dicom-pixeldata: native, RLE, deflate, JPEG, JPEG 2000, JPEG-LS), the
//! Modality LUT, the VOI window (the instance's first WindowCenter/WindowWidth with the DICOM
//! linear function, else a 0.5 %..99.5 % percentile window per frame), MONOCHROME1 inversion,
//! RGB / YBR_FULL / YBR_FULL_422 / PALETTE COLOR, planar configuration, 8/16/32-bit
//! signed/unsigned samples and multi-frame objects. It reproduces
//! `scripts/model/proxyseg_model/preprocess.py` (`to_display`) in f32, operation by operation.
//! It never guesses: an input it cannot read exactly fails with a precise [`PixelError`].
//!
//! One file per concern: `frame_source` ([`FrameSource`]: opening an object and decoding one
//! frame at a time), `codecs` (what proxyseg checks or decodes itself around dicom-pixeldata's
//! codecs: JPEG / JPEG 2000 header checks, RLE Lossless, native YBR_FULL_422), `display`
//! (samples -> display frames: Modality LUT, VOI window, colour spaces, palettes) and `budget`
//! ([`ImageSize`] and the memory an instance or a series costs once decoded).

#![warn(missing_docs)]

mod budget;
mod codecs;
mod display;
mod frame_source;

pub use budget::{check_budget, decoded_bytes, series_bytes, ImageSize, FRAMES_IN_FLIGHT};
pub use display::{percentile_window, voi_linear};
pub use frame_source::{frames_from_file, frames_from_object, FrameSource};

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
