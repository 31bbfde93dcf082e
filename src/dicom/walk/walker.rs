//! The walk itself ([`walk`]): element headers read one by one, each defined length checked
//! against what can still follow (the data set, or the innermost defined-length sequence or
//! item) before anything is read or skipped, sequences walked item by item the way
//! dicom-parser reads them, and the kept top-level elements copied out.

use super::{
    Encoding, PixelHeader, Source, WalkError, Walked, ITEM, ITEM_DELIMITER, MAX_DEPTH,
    MAX_KEPT_VALUE, SEQUENCE_DELIMITER, UNDEFINED,
};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

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
