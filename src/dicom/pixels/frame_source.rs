//! [`FrameSource`]: an instance opened (from a file or an object in memory) and checked once,
//! then decoded one frame at a time by its transfer syntax's codec, each frame handed to
//! [`super::display`] for conversion. Also the all-frames helpers [`frames_from_file`] and
//! [`frames_from_object`].

use super::codecs::{self, HeaderCheck, RLE_LOSSLESS};
use super::display::{first_window, Palette, RawFrame};
use super::{Frame, ImageSize, PixelError};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::{DecodedPixelData, PixelDecoder, PixelRepresentation, PlanarConfiguration};
use std::path::Path;

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
            obj = std::borrow::Cow::Owned(codecs::expand_native_422(&obj, size, &ts)?);
        }
        let header_check = codecs::header_check(&ts_uid);
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
            src.obj = std::borrow::Cow::Owned(codecs::rle_to_native(&src.obj, &src.ts)?);
        }
        if native {
            check_native_length(&src.obj, size, frames)?;
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
        let decoded = self.decode(f)?;
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
        RawFrame {
            index: f,
            rows: rows as usize,
            cols: cols as usize,
            spp,
            bits,
            bits_stored,
            signed,
            pi,
            planar,
            raw,
            rescale: (slope, intercept),
            window,
        }
        .convert(self.palette.as_ref())
    }

    /// Runs the transfer syntax's codec on frame `f`.
    fn decode(&self, f: u32) -> Result<DecodedPixelData<'_>, PixelError> {
        // The codecs' own stream parsing (openjp2's packet headers, say) cannot all be checked
        // beforehand: a codec that panics on a hostile frame fails this frame, with the reason.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
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

/// Native pixel data must hold the `frames` frames of `size` the attributes declare.
fn check_native_length(
    obj: &DefaultDicomObject,
    size: ImageSize,
    frames: u32,
) -> Result<(), PixelError> {
    let have = obj
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
    Ok(())
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

fn str_attr(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}
