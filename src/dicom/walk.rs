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

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

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

/// Where the walked bytes come from.
pub trait Source {
    /// Fills `buf` completely; `Ok(false)` on a clean end before its first byte.
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool>;
    /// Moves `n` bytes forward (the walker checked they exist, or are within the cap).
    fn skip(&mut self, n: u64) -> std::io::Result<()>;
}

fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Source for &[u8] {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        fill(self, buf)
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > self.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        *self = &self[n..];
        Ok(())
    }
}

/// A stream that can only be read forward (an inflating reader): skipping reads and drops
/// through one fixed buffer.
pub struct Streamed<R> {
    inner: R,
    scratch: Vec<u8>,
}

impl<R: Read> Streamed<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Streamed<R> {
        Streamed {
            inner,
            scratch: vec![0; 64 * 1024],
        }
    }
}

impl<R: Read> Source for Streamed<R> {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        fill(&mut self.inner, buf)
    }
    fn skip(&mut self, mut n: u64) -> std::io::Result<()> {
        while n > 0 {
            let k = n.min(self.scratch.len() as u64) as usize;
            if !fill(&mut self.inner, &mut self.scratch[..k])? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            n -= k as u64;
        }
        Ok(())
    }
}

/// A data set whose first bytes are in memory and whose rest is in a file: the file is
/// opened only when the walk reads beyond the bytes in memory (skipped values are seeked
/// over, never read).
pub struct HeadThenFile<'a> {
    head: &'a [u8],
    path: &'a Path,
    /// Where the data set starts in the file.
    base: u64,
    /// Position in the data set.
    at: u64,
    file: Option<(BufReader<std::fs::File>, u64)>,
}

impl<'a> HeadThenFile<'a> {
    /// `head` holds the data set's first bytes; the data set starts at `base` in `path`.
    pub fn new(head: &'a [u8], path: &'a Path, base: u64) -> HeadThenFile<'a> {
        HeadThenFile {
            head,
            path,
            base,
            at: 0,
            file: None,
        }
    }
}

impl Source for HeadThenFile<'_> {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let in_head = (self.head.len() as u64).saturating_sub(self.at) as usize;
        let n = in_head.min(buf.len());
        if n > 0 {
            let from = self.at as usize;
            buf[..n].copy_from_slice(&self.head[from..from + n]);
            self.at += n as u64;
        }
        if n == buf.len() {
            return Ok(true);
        }
        let want = self.base + self.at;
        let (file, pos) = match &mut self.file {
            Some(f) => f,
            None => {
                let f = std::fs::File::open(self.path)?;
                self.file
                    .insert((BufReader::with_capacity(64 * 1024, f), u64::MAX))
            }
        };
        if *pos != want {
            file.seek(SeekFrom::Start(want))?;
        }
        let rest = &mut buf[n..];
        let got = fill(file, rest)?;
        if !got && n > 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if got {
            self.at += rest.len() as u64;
        }
        *pos = self.base + self.at;
        Ok(got)
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.at += n;
        Ok(())
    }
}

/// Walks a data set. `length` is its length when known (received bytes); `None` for a
/// deflated data set, which may then inflate to at most `cap` bytes. Top-level elements whose
/// tag is in `keep` (first occurrence, value up to [`MAX_KEPT_VALUE`]) are copied out.
pub fn walk<S: Source>(
    source: S,
    encoding: Encoding,
    length: Option<u64>,
    cap: u64,
    keep: &[Tag],
) -> Result<Walked, WalkError> {
    let mut w = Walker {
        src: source,
        enc: encoding,
        pos: 0,
        end: length.unwrap_or(cap),
        known: length.is_some(),
        containers: Vec::new(),
        keep,
        kept_tags: Vec::new(),
        ragged: None,
        out: Walked::default(),
    };
    w.dataset(0, encoding.explicit, Until::End)?;
    w.out.length = w.pos;
    Ok(w.out)
}

struct Walker<'k, S> {
    src: S,
    enc: Encoding,
    pos: u64,
    /// Where the data set ends (its length), or the cap when the length is unknown.
    end: u64,
    known: bool,
    /// Where the defined-length sequences and items being walked end, innermost last.
    containers: Vec<u64>,
    keep: &'k [Tag],
    kept_tags: Vec<Tag>,
    /// A binary value whose length is not a whole number of its values (tag, VR, length):
    /// dicom-parser reads only the whole values but counts the full length, so anything after
    /// it would be read misaligned (see [`Walker::header`]).
    ragged: Option<(Tag, VR, u32)>,
    out: Walked,
}

/// Where the elements of a data set being walked stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The end of the whole data set.
    End,
    /// An Item Delimitation (an undefined-length item).
    Delimiter,
    /// This position (a defined-length item).
    At(u64),
}

/// One element header as read.
struct Header {
    tag: Tag,
    vr: Option<VR>,
    len: u32,
    /// Its encoded bytes.
    raw: [u8; 12],
    raw_len: usize,
}

impl<S: Source> Walker<'_, S> {
    fn left(&self) -> u64 {
        self.containers
            .last()
            .copied()
            .unwrap_or(self.end)
            .saturating_sub(self.pos)
    }

    /// True when what is left is exactly known (a container, or a data set of known length).
    fn exact(&self) -> bool {
        self.known || !self.containers.is_empty()
    }

    /// Reads `buf.len()` bytes of a header; `Ok(false)` when `may_end` and the data set ends
    /// right here.
    fn read(&mut self, buf: &mut [u8], may_end: bool) -> Result<bool, WalkError> {
        let n = buf.len() as u64;
        let ends_inside = |pos: u64| {
            WalkError::Malformed(format!(
                "data set ends inside an element header at byte {pos}"
            ))
        };
        if n > self.left() {
            if !self.containers.is_empty() {
                return Err(WalkError::Malformed(format!(
                    "element header crosses the end of its item at byte {}",
                    self.pos
                )));
            }
            if self.known {
                return if may_end && self.left() == 0 {
                    Ok(false)
                } else {
                    Err(ends_inside(self.pos))
                };
            }
            // Unknown length: past the cap only if more bytes really follow.
            let mut probe = [0u8; 1];
            return match self.src.read_or_end(&mut probe) {
                Ok(false) if may_end => Ok(false),
                Ok(false) => Err(ends_inside(self.pos)),
                Ok(true) => Err(WalkError::InflatedTooLarge { cap: self.end }),
                Err(e) => Err(WalkError::Io(e)),
            };
        }
        match self.src.read_or_end(buf) {
            Ok(true) => {
                self.pos += n;
                Ok(true)
            }
            Ok(false) if may_end && !self.known => Ok(false),
            Ok(false) => Err(ends_inside(self.pos)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ends_inside(self.pos)),
            Err(e) => Err(WalkError::Io(e)),
        }
    }

    fn u16(&self, b: [u8; 2]) -> u16 {
        if self.enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Reads an element (or item) header; `None` at a clean end of the data set.
    fn header(&mut self, explicit: bool, may_end: bool) -> Result<Option<Header>, WalkError> {
        let mut raw = [0u8; 12];
        if !self.read(&mut raw[..4], may_end)? {
            return Ok(None);
        }
        // dicom-parser reads a US, UL, FL, FD, AT... value of a length that is not a whole
        // number of values short (it reads `len / size` values) while it counts the whole
        // length: every header after it is read from the wrong offset, where any bytes may
        // declare 4 GiB (found by fuzz/fuzz_targets/dataset_validate.rs). Harmless only when
        // nothing follows.
        if let Some((tag, vr, len)) = self.ragged {
            return Err(WalkError::Malformed(format!(
                "{tag} {vr:?} of {len} bytes: not a whole number of values"
            )));
        }
        let tag = Tag(self.u16([raw[0], raw[1]]), self.u16([raw[2], raw[3]]));
        if tag.0 == 0xFFFE || !explicit {
            self.read(&mut raw[4..8], false)?;
            let len = self.u32([raw[4], raw[5], raw[6], raw[7]]);
            return Ok(Some(Header {
                tag,
                vr: None,
                len,
                raw,
                raw_len: 8,
            }));
        }
        self.read(&mut raw[4..8], false)?;
        let vr = VR::from_binary([raw[4], raw[5]]).unwrap_or(VR::UN);
        let short = matches!(
            vr,
            VR::AE
                | VR::AS
                | VR::AT
                | VR::CS
                | VR::DA
                | VR::DS
                | VR::DT
                | VR::FL
                | VR::FD
                | VR::IS
                | VR::LO
                | VR::LT
                | VR::PN
                | VR::SH
                | VR::SL
                | VR::SS
                | VR::ST
                | VR::TM
                | VR::UI
                | VR::UL
                | VR::US
        );
        if short {
            let len = self.u16([raw[6], raw[7]]) as u32;
            return Ok(Some(Header {
                tag,
                vr: Some(vr),
                len,
                raw,
                raw_len: 8,
            }));
        }
        self.read(&mut raw[8..12], false)?;
        let len = self.u32([raw[8], raw[9], raw[10], raw[11]]);
        Ok(Some(Header {
            tag,
            vr: Some(vr),
            len,
            raw,
            raw_len: 12,
        }))
    }

    /// Checks a defined length against what can follow.
    fn fits(&self, tag: Tag, len: u32) -> Result<(), WalkError> {
        if len as u64 <= self.left() {
            Ok(())
        } else if self.exact() {
            Err(WalkError::Overrun {
                tag,
                declared: len,
                left: self.left(),
            })
        } else {
            Err(WalkError::BeyondCap { tag, declared: len })
        }
    }

    fn skip(&mut self, tag: Tag, len: u32) -> Result<(), WalkError> {
        self.fits(tag, len)?;
        self.src.skip(len as u64).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                WalkError::Malformed(format!("data set ends inside {tag}"))
            } else {
                WalkError::Io(e)
            }
        })?;
        self.pos += len as u64;
        Ok(())
    }

    /// Walks the elements of a data set: the whole data set at depth 0, or an item's.
    fn dataset(&mut self, depth: usize, explicit: bool, until: Until) -> Result<(), WalkError> {
        loop {
            if until == Until::At(self.pos) {
                return Ok(());
            }
            let Some(h) = self.header(explicit, until == Until::End)? else {
                return Ok(());
            };
            match h.tag {
                ITEM_DELIMITER if until == Until::Delimiter => return Ok(()),
                ITEM | ITEM_DELIMITER | SEQUENCE_DELIMITER => {
                    return Err(WalkError::Malformed(format!(
                        "unexpected {} at byte {}",
                        h.tag,
                        self.pos - h.raw_len as u64
                    )))
                }
                _ => {}
            }
            if h.len == UNDEFINED {
                // As dicom-parser reads it (the parser that opens the stored file later): Pixel
                // Data of undefined length, at any depth, is a sequence of fragments; any other
                // element of undefined length, whatever its VR, a sequence of items whose data
                // sets are in this data set's own encoding. PS3.5 6.2.2 puts the items of an
                // undefined-length UN in Implicit VR LE, but the parser reads them explicit:
                // walked the standard's way, their lengths were checked for a reading the
                // parser does not do, and a 674-byte data set made the worker reserve and zero
                // 3.7 GB (found by fuzz/fuzz_targets/dataset_validate.rs).
                if h.tag == tags::PIXEL_DATA {
                    let fragments = self.fragments()?;
                    if depth == 0 {
                        self.out.pixel = Some(PixelHeader::Encapsulated { fragments });
                    }
                } else {
                    self.sequence(depth + 1, explicit, None)?;
                }
                continue;
            }
            self.fits(h.tag, h.len)?;
            if depth == 0 && h.tag == tags::PIXEL_DATA {
                self.out.pixel = Some(PixelHeader::Native {
                    declared: h.len as u64,
                });
            }
            // A defined-length sequence, as a parser would see it (in implicit VR, the
            // dictionary says): its items are walked within its length.
            let sequence = match h.vr {
                Some(vr) => vr == VR::SQ,
                None => is_sequence_in_dictionary(h.tag),
            };
            if sequence && h.len > 0 {
                let end = self.pos + h.len as u64;
                self.containers.push(end);
                let r = self.sequence(depth + 1, explicit, Some(end));
                self.containers.pop();
                r?;
                continue;
            }
            let vr = h.vr.unwrap_or_else(|| implicit_vr(h.tag));
            if h.len % value_size(vr) != 0 {
                self.ragged = Some((h.tag, vr, h.len));
            }
            // Only primitive values are copied (never a sequence or UN, whose content the
            // parser would interpret).
            let keep = depth == 0
                && h.len <= MAX_KEPT_VALUE
                && !matches!(h.vr, Some(VR::SQ) | Some(VR::UN))
                && self.keep.contains(&h.tag)
                && !self.kept_tags.contains(&h.tag);
            if keep {
                self.kept_tags.push(h.tag);
                let at = self.out.kept.len();
                self.out.kept.extend_from_slice(&h.raw[..h.raw_len]);
                self.out.kept.resize(at + h.raw_len + h.len as usize, 0);
                let value = &mut self.out.kept[at + h.raw_len..];
                match self.src.read_or_end(value) {
                    Ok(true) => self.pos += h.len as u64,
                    Ok(false) => {
                        return Err(WalkError::Malformed(format!(
                            "data set ends inside {}",
                            h.tag
                        )))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(WalkError::Malformed(format!(
                            "data set ends inside {}",
                            h.tag
                        )))
                    }
                    Err(e) => return Err(WalkError::Io(e)),
                }
            } else {
                self.skip(h.tag, h.len)?;
            }
        }
    }

    /// The items of a sequence: up to its Sequence Delimitation, or (defined length) up to
    /// `end`. Each item's elements are walked within the item.
    fn sequence(
        &mut self,
        depth: usize,
        explicit: bool,
        end: Option<u64>,
    ) -> Result<(), WalkError> {
        if depth > MAX_DEPTH {
            return Err(WalkError::TooDeep);
        }
        loop {
            if end == Some(self.pos) {
                return Ok(());
            }
            let Some(h) = self.header(false, false)? else {
                return Ok(());
            };
            match (h.tag, h.len) {
                (SEQUENCE_DELIMITER, _) if end.is_none() => return Ok(()),
                (ITEM, UNDEFINED) => self.dataset(depth, explicit, Until::Delimiter)?,
                (ITEM, len) => {
                    self.fits(h.tag, len)?;
                    let item_end = self.pos + len as u64;
                    self.containers.push(item_end);
                    let r = self.dataset(depth, explicit, Until::At(item_end));
                    self.containers.pop();
                    r?;
                }
                (tag, _) => {
                    return Err(WalkError::Malformed(format!(
                        "{tag} where a sequence item should be"
                    )))
                }
            }
        }
    }

    /// The fragments of encapsulated data, up to the Sequence Delimitation; returns how many
    /// follow the first item (the Basic Offset Table).
    fn fragments(&mut self) -> Result<u64, WalkError> {
        let mut items = 0u64;
        loop {
            let Some(h) = self.header(false, false)? else {
                return Ok(items.saturating_sub(1));
            };
            match (h.tag, h.len) {
                (SEQUENCE_DELIMITER, _) => return Ok(items.saturating_sub(1)),
                (ITEM, len) if len != UNDEFINED => {
                    self.skip(h.tag, len)?;
                    items += 1;
                }
                (tag, _) => {
                    return Err(WalkError::Malformed(format!(
                        "{tag} where a pixel data fragment should be"
                    )))
                }
            }
        }
    }
}

/// Whether the standard dictionary makes `tag` a sequence (what an Implicit VR parser goes by).
fn is_sequence_in_dictionary(tag: Tag) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|e| e.vr().relaxed() == VR::SQ)
}

/// The VR dicom-encoding's Implicit VR decoder gives `tag`: OW for Pixel Data and Overlay
/// Data, else the standard dictionary's (relaxed), else UN.
fn implicit_vr(tag: Tag) -> VR {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if tag == tags::PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
        return VR::OW;
    }
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr().relaxed())
        .unwrap_or(VR::UN)
}

/// Bytes per value of the binary VRs dicom-parser reads value by value (1 for the others).
fn value_size(vr: VR) -> u32 {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::AT | VR::UL | VR::SL | VR::FL | VR::OF | VR::OL => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

/// The command set elements (PS3.7 6.3: group 0000, Implicit VR Little Endian), each tag with
/// its value, parsed without allocating from any declared length: each must fit in `bytes`.
pub fn command_elements(bytes: &[u8]) -> Result<Vec<(Tag, &[u8])>, WalkError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(WalkError::Malformed(
                "command set ends inside an element header".into(),
            ));
        }
        let tag = Tag(
            u16::from_le_bytes([rest[0], rest[1]]),
            u16::from_le_bytes([rest[2], rest[3]]),
        );
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        rest = &rest[8..];
        if len as u64 > rest.len() as u64 {
            return Err(WalkError::Overrun {
                tag,
                declared: len,
                left: rest.len() as u64,
            });
        }
        let (value, next) = rest.split_at(len as usize);
        out.push((tag, value));
        rest = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLICIT: Encoding = Encoding {
        explicit: true,
        big_endian: false,
    };
    const IMPLICIT: Encoding = Encoding {
        explicit: false,
        big_endian: false,
    };

    fn el(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = group.to_le_bytes().to_vec();
        v.extend(elem.to_le_bytes());
        v.extend(vr);
        if matches!(vr, b"OB" | b"SQ" | b"UT" | b"UN" | b"OW") {
            v.extend([0, 0]);
            v.extend((value.len() as u32).to_le_bytes());
        } else {
            v.extend((value.len() as u16).to_le_bytes());
        }
        v.extend(value);
        v
    }

    fn item_hdr(tag: Tag, len: u32) -> Vec<u8> {
        let mut v = tag.0.to_le_bytes().to_vec();
        v.extend(tag.1.to_le_bytes());
        v.extend(len.to_le_bytes());
        v
    }

    fn run(bytes: &[u8], enc: Encoding) -> Result<Walked, WalkError> {
        walk(bytes, enc, Some(bytes.len() as u64), u64::MAX, INGEST_TAGS)
    }

    /// Fuzzing regression (fuzz/dataset_validate, pydicom's UN_sequence.dcm): an undefined-length
    /// UN whose item holds Implicit VR elements, as PS3.5 6.2.2 has it. dicom-parser reads the
    /// item in the data set's Explicit VR, where `(0008,1115)`'s length bytes read as a VR and
    /// its value's first bytes as a 4-byte length (here 0xE000FFFE: the parser reserved and
    /// zeroed 3.7 GB). The walk reads it as the parser does, so the data set is refused.
    #[test]
    fn an_undefined_length_un_is_walked_as_the_parser_reads_it() {
        let mut inner = Vec::new(); // Implicit VR: (0008,1150) UI, 4 bytes
        inner.extend(item_hdr(Tag(0x0008, 0x1150), 4));
        inner.extend(b"1.2\0");
        let mut implicit_item = Vec::new(); // (0008,1115) of undefined length, then its item
        implicit_item.extend(item_hdr(Tag(0x0008, 0x1115), UNDEFINED));
        implicit_item.extend(item_hdr(ITEM, UNDEFINED));
        implicit_item.extend(&inner);
        implicit_item.extend(item_hdr(ITEM_DELIMITER, 0));
        implicit_item.extend(item_hdr(SEQUENCE_DELIMITER, 0));
        let un = |content: &[u8]| {
            let mut ds = vec![
                0x53, 0x44, 0x0C, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ];
            ds.extend(item_hdr(ITEM, UNDEFINED));
            ds.extend(content);
            ds.extend(item_hdr(ITEM_DELIMITER, 0));
            ds.extend(item_hdr(SEQUENCE_DELIMITER, 0));
            ds.extend(el(0x0008, 0x0060, b"CS", b"OT"));
            ds
        };
        assert!(run(&un(&implicit_item), EXPLICIT).is_err());
        // The same content in Explicit VR is walked (and kept elements after it are found).
        let mut explicit_item = el(0x0008, 0x1150, b"UI", b"1.2\0");
        explicit_item.extend(el(0x0009, 0x0010, b"LO", b"ACME"));
        let w = run(&un(&explicit_item), EXPLICIT).unwrap();
        assert_eq!(w.kept, el(0x0008, 0x0060, b"CS", b"OT"));
        // Any other undefined-length element is a sequence too, never opaque fragments: an
        // item of an undefined-length OB holding an element that overruns it is refused.
        let mut ob = vec![
            0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        let bad = el(0x0009, 0x1011, b"OB", &[1, 2, 3, 4]);
        ob.extend(item_hdr(ITEM, bad.len() as u32 - 2));
        ob.extend(&bad[..bad.len() - 2]);
        ob.extend(item_hdr(SEQUENCE_DELIMITER, 0));
        assert!(run(&ob, EXPLICIT).is_err());
    }

    /// Fuzzing regression (fuzz/dataset_validate, a mutated highdicom SEG in Implicit VR): a
    /// UL of 6 bytes. dicom-parser reads one value (4 bytes) but counts 6, so it read the next
    /// header 2 bytes early, and the text after it as a length of 892 219 484 bytes, which it
    /// reserved and zeroed. A binary value of a length that is not a whole number of values is
    /// refused unless nothing follows it.
    #[test]
    fn a_binary_value_of_a_partial_length_must_end_the_data_set() {
        let mut ds = item_hdr(Tag(0x0000, 0x0000), 6); // implicit: UL by the dictionary
        ds.extend(b"CT_SEG");
        let last = run(&ds, IMPLICIT).unwrap();
        assert_eq!(last.length, 14);
        ds.extend(item_hdr(Tag(0x0070, 0x0081), 0));
        let e = run(&ds, IMPLICIT).unwrap_err();
        assert!(
            e.to_string().contains("not a whole number of values"),
            "{e}"
        );
        assert!(e.to_string().len() <= 64, "{e}");
        // Explicit VR: the header's VR decides; US of 3 bytes inside an item.
        let us = el(0x0028, 0x0010, b"US", &[1, 0, 0]);
        let mut item = us.clone();
        item.extend(el(0x0008, 0x0060, b"CS", b"OT"));
        let mut sq = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0];
        sq.extend(((item.len() + 8) as u32).to_le_bytes());
        sq.extend(item_hdr(ITEM, item.len() as u32));
        sq.extend(&item);
        assert!(run(&sq, EXPLICIT).is_err());
        // A string of odd length is read whole: not affected.
        let mut ok = el(0x0008, 0x0060, b"CS", b"OTX");
        ok.extend(el(0x0010, 0x0020, b"LO", b"P1"));
        run(&ok, EXPLICIT).unwrap();
        // Odd native Pixel Data at the end (8-bit, odd pixel count, implicit VR: OW) is kept.
        let mut px = item_hdr(tags::PIXEL_DATA, 9);
        px.extend([7u8; 9]);
        let w = run(&px, IMPLICIT).unwrap();
        assert_eq!(w.pixel, Some(PixelHeader::Native { declared: 9 }));
    }

    #[test]
    fn the_issue_16_element_is_an_overrun() {
        let ds = [0x08, 0, 0x05, 0, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF];
        let e = run(&ds, EXPLICIT).unwrap_err();
        assert!(matches!(
            e,
            WalkError::Overrun {
                declared: 0xFFFF_FFF0,
                left: 0,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "(0008,0005) declares 4294967280 bytes; 0 follow"
        );
        assert!(e.to_string().len() <= 64);
        // Implicit VR: any tag.
        let ds = [0x09, 0, 0x10, 0x10, 0xF0, 0xFF, 0xFF, 0xFF];
        assert!(matches!(run(&ds, IMPLICIT), Err(WalkError::Overrun { .. })));
    }

    #[test]
    fn kept_elements_and_pixel_headers() {
        let mut ds = el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
        ds.extend(el(0x0009, 0x1001, b"OB", &[7; 100_000])); // private bulk: skipped
        ds.extend(el(0x0010, 0x0010, b"PN", b"Doe^Jane"));
        ds.extend(el(0x0028, 0x0010, b"US", &16u16.to_le_bytes()));
        ds.extend(el(0x7FE0, 0x0010, b"OW", &[0; 512]));
        let w = run(&ds, EXPLICIT).unwrap();
        assert_eq!(w.pixel, Some(PixelHeader::Native { declared: 512 }));
        assert_eq!(w.length, ds.len() as u64);
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(
            &w.kept[..],
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        assert_eq!(
            obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(),
            16
        );
        assert!(obj.element(tags::PIXEL_DATA).is_err());
        assert!(
            w.kept.len() < 100,
            "bulk data is not kept: {}",
            w.kept.len()
        );

        // Encapsulated: offset table + 3 fragments; then a trailing element.
        let mut ds = el(0x0028, 0x0008, b"IS", b"3 ");
        ds.extend([
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        ds.extend(item_hdr(ITEM, 0));
        for _ in 0..3 {
            ds.extend(item_hdr(ITEM, 4));
            ds.extend([1, 2, 3, 4]);
        }
        ds.extend(item_hdr(SEQUENCE_DELIMITER, 0));
        ds.extend(el(0xFFFC, 0xFFFC, b"OB", &[0; 8]));
        let w = run(&ds, EXPLICIT).unwrap();
        assert_eq!(w.pixel, Some(PixelHeader::Encapsulated { fragments: 3 }));
        // A fragment that overruns.
        let mut bad = ds[..ds.len() - 20 - 8 - 12].to_vec();
        bad.extend(item_hdr(ITEM, 1000));
        assert!(matches!(
            run(&bad, EXPLICIT),
            Err(WalkError::Overrun { tag: ITEM, .. })
        ));
    }

    #[test]
    fn sequences_nest_and_are_bounded() {
        // Undefined-length SQ with an undefined-length item holding an element.
        let mut ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
        ds.extend([
            0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        ds.extend(item_hdr(ITEM, UNDEFINED));
        ds.extend(el(0x0008, 0x1150, b"UI", b"1.2\0"));
        ds.extend(item_hdr(ITEM_DELIMITER, 0));
        ds.extend(item_hdr(SEQUENCE_DELIMITER, 0));
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
        let w = run(&ds, EXPLICIT).unwrap();
        assert_eq!(w.length, ds.len() as u64);
        // A nested element that overruns is caught too.
        let mut bad = el(0x0008, 0x0016, b"UI", b"1.2\0");
        bad.extend([
            0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        bad.extend(item_hdr(ITEM, UNDEFINED));
        bad.extend([
            0x08, 0, 0x50, 0x11, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ]);
        assert!(matches!(
            run(&bad, EXPLICIT),
            Err(WalkError::Overrun { .. })
        ));
        // Deep nesting.
        let mut deep = Vec::new();
        for _ in 0..(MAX_DEPTH + 2) {
            deep.extend([
                0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ]);
            deep.extend(item_hdr(ITEM, UNDEFINED));
        }
        assert!(matches!(run(&deep, EXPLICIT), Err(WalkError::TooDeep)));
        // Truncated: inside the last value, inside its header.
        assert!(matches!(
            run(&ds[..ds.len() - 3], EXPLICIT),
            Err(WalkError::Overrun {
                declared: 4,
                left: 1,
                ..
            })
        ));
        assert!(matches!(
            run(&ds[..ds.len() - 6], EXPLICIT),
            Err(WalkError::Malformed(_))
        ));
    }

    #[test]
    fn defined_length_sequences_are_walked_within_their_items() {
        // SOP Class UID disguised as a defined-length SQ hiding a UT that declares ~4 GiB:
        // the overrun is caught inside its item, and nothing of it would be kept.
        let mut item = item_hdr(ITEM, 12);
        item.extend([
            0x08, 0, 0x50, 0x11, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ]);
        let mut ds = el(0x0008, 0x0016, b"SQ", &item);
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
        assert!(matches!(
            run(&ds, EXPLICIT),
            Err(WalkError::Overrun {
                tag: Tag(0x0008, 0x1150),
                left: 0,
                ..
            })
        ));
        // A well-formed one is walked and not kept.
        let inner = el(0x0008, 0x1150, b"UI", b"1.2\0");
        let mut item = item_hdr(ITEM, inner.len() as u32);
        item.extend(&inner);
        let mut ds = el(0x0008, 0x0016, b"SQ", &item);
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
        let w = run(&ds, EXPLICIT).unwrap();
        assert_eq!(w.kept, el(0x0020, 0x000D, b"UI", b"1.3\0"));
        // An element header that crosses its item's end.
        let mut item = item_hdr(ITEM, 6);
        item.extend(&inner);
        let ds = el(0x0008, 0x1115, b"SQ", &item);
        assert!(matches!(run(&ds, EXPLICIT), Err(WalkError::Malformed(_))));
        // Implicit VR: (0008,1115) is a sequence by the dictionary, so its items are walked.
        let mut nested = item_hdr(Tag(0x0008, 0x1150), 0xFFFF_FFF0);
        nested.extend(b"1.2\0");
        let mut item = item_hdr(ITEM, nested.len() as u32);
        item.extend(&nested);
        let mut ds = item_hdr(Tag(0x0008, 0x1115), item.len() as u32);
        ds.extend(&item);
        assert!(matches!(
            run(&ds, IMPLICIT),
            Err(WalkError::Overrun {
                tag: Tag(0x0008, 0x1150),
                left: 4,
                ..
            })
        ));
        // ... while a private tag is not (a parser reads it as UN bytes).
        let mut ds = item_hdr(Tag(0x0009, 0x1001), item.len() as u32);
        ds.extend(&item);
        run(&ds, IMPLICIT).unwrap();
    }

    #[test]
    fn unknown_length_streams_are_capped() {
        let mut ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
        for i in 0..10u16 {
            ds.extend(el(0x0029, 0x1000 + i, b"OB", &[0; 1000]));
        }
        // A value that would cross the cap, and a header that does.
        let e = walk(Streamed::new(&ds[..]), EXPLICIT, None, 5000, INGEST_TAGS).unwrap_err();
        assert!(
            matches!(e, WalkError::BeyondCap { declared: 1000, .. }),
            "{e}"
        );
        assert!(e.is_size());
        let cap = 12 + 4 * 1012 + 2;
        let e = walk(Streamed::new(&ds[..]), EXPLICIT, None, cap, INGEST_TAGS).unwrap_err();
        assert!(matches!(e, WalkError::InflatedTooLarge { .. }), "{e}");
        assert!(e.is_size());
        let w = walk(Streamed::new(&ds[..]), EXPLICIT, None, 1 << 20, INGEST_TAGS).unwrap();
        assert_eq!(w.length, ds.len() as u64);
        // Exactly at the cap is fine.
        let w = walk(
            Streamed::new(&ds[..]),
            EXPLICIT,
            None,
            ds.len() as u64,
            INGEST_TAGS,
        )
        .unwrap();
        assert_eq!(w.length, ds.len() as u64);
    }

    #[test]
    fn head_then_file_reads_past_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        let mut ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
        ds.extend(el(0x0009, 0x1001, b"OB", &[7; 300]));
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
        ds.extend(el(0x7FE0, 0x0010, b"OB", &[0; 64]));
        let mut file = vec![0xAA; 10];
        file.extend(&ds);
        std::fs::write(&path, &file).unwrap();
        let head = &file[10..40];
        let w = walk(
            HeadThenFile::new(head, &path, 10),
            EXPLICIT,
            Some(ds.len() as u64),
            u64::MAX,
            INGEST_TAGS,
        )
        .unwrap();
        assert_eq!(w.pixel, Some(PixelHeader::Native { declared: 64 }));
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(
            &w.kept[..],
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        assert_eq!(
            obj.element(tags::STUDY_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            "1.3"
        );
    }

    #[test]
    fn command_elements_must_fit() {
        let mut c = vec![0, 0, 0x00, 0x01, 2, 0, 0, 0, 0x30, 0];
        let els = command_elements(&c).unwrap();
        assert_eq!(els, vec![(Tag(0, 0x0100), &[0x30u8, 0][..])]);
        c.extend([0, 0, 2, 0, 0xF0, 0xFF, 0xFF, 0xFF, b'1']);
        assert!(matches!(
            command_elements(&c),
            Err(WalkError::Overrun {
                declared: 0xFFFF_FFF0,
                left: 1,
                ..
            })
        ));
        assert!(command_elements(&c[..13]).is_err());
    }
}
