//! Validation of a received C-STORE data set, pure apart from reading the spool file it was
//! streamed into: a bounded walk over its element headers ([`walk::walk`]), then a parse of the
//! few small attributes ingest needs, checked against the command that announced it and
//! against the size limits, giving the instance's index record.
//!
//! The storage SCP ([`crate::dicom::scp`]) runs [`validate`] on every data set it received
//! before anything is stored; [`validate_bytes`] does the same on a data set held in memory
//! (tests and the fuzz targets under `fuzz/`). A refusal is an [`Invalid`]: the DIMSE status
//! and Error Comment the SCP answers with.
//!
//! Must never: allocate from a length read off the wire (the walk checks every declared length
//! against the bytes received, and a deflated data set may inflate to at most
//! [`Limits::max_object`]), decode pixels, or panic on any input.

use crate::dicom::dimse::{status, Command};
use crate::dicom::sop;
use crate::dicom::walk::{self, PixelHeader};
use crate::store::instances::InstanceRecord;
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use std::io::Read;
use std::path::Path;

/// Largest Rows or Columns we accept.
pub const MAX_DIM: u32 = 32768;
/// Largest Number of Frames we accept.
pub const MAX_FRAMES: u64 = 100_000;

/// Size limits a received data set is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest data set (`dicom.max_object_mb`), inflated size included, in bytes.
    pub max_object: u64,
    /// Largest decoded pixel data (`pipeline.max_decoded_mb`), in bytes.
    pub max_decoded: u64,
}

/// Why a data set was refused: the DIMSE status (PS3.4 B.2.3) and the Error Comment that the
/// C-STORE-RSP carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{comment} (status {status:#06x})")]
pub struct Invalid {
    /// DIMSE status: 0xA700 (too large), 0xA900 (does not match its SOP class, bad pixel
    /// header) or 0xC000 (cannot understand).
    pub status: u16,
    /// Error Comment.
    pub comment: String,
}

impl Invalid {
    /// A refusal with `status` and `comment`.
    pub fn new(status: u16, comment: impl Into<String>) -> Invalid {
        Invalid {
            status,
            comment: comment.into(),
        }
    }
}

/// Checks a received data set against its command and presentation context and builds its
/// index record. The data set is first walked element header by element header
/// ([`walk::walk`]): every declared length must fit in the bytes received (a deflated data set
/// is inflated through the walk, and may inflate to at most `limits.max_object` bytes), and
/// only the few small top-level attributes ingest needs are copied out and parsed, so neither
/// a declared length nor bulk data (pixels, private OB, float pixels) costs memory. `path` is
/// the spool file, `offset` where the data set starts in it, `len` how many data set bytes
/// were received, `head` the file's first bytes.
pub fn validate(
    path: &Path,
    head: &[u8],
    cmd: &Command,
    ts: &str,
    offset: u64,
    len: u64,
    limits: Limits,
) -> Result<InstanceRecord, Invalid> {
    checked(cmd, ts, limits, |encoding, deflated| {
        if deflated {
            use std::io::{Seek, SeekFrom};
            let mut f = std::fs::File::open(path).map_err(walk::WalkError::Io)?;
            f.seek(SeekFrom::Start(offset))
                .map_err(walk::WalkError::Io)?;
            let compressed = std::io::BufReader::with_capacity(64 * 1024, f.take(len));
            inflate_and_walk(compressed, limits.max_object)
        } else {
            let head = head.get(offset as usize..).unwrap_or_default();
            walk::walk(
                walk::HeadThenFile::new(head, path, offset),
                encoding,
                Some(len),
                limits.max_object,
                walk::INGEST_TAGS,
            )
        }
    })
}

/// [`validate`] for a data set held in memory (`dataset`: the data set bytes as received,
/// still deflated for the deflate transfer syntax).
pub fn validate_bytes(
    dataset: &[u8],
    cmd: &Command,
    ts: &str,
    limits: Limits,
) -> Result<InstanceRecord, Invalid> {
    checked(cmd, ts, limits, |encoding, deflated| {
        if deflated {
            inflate_and_walk(dataset, limits.max_object)
        } else {
            walk::walk(
                dataset,
                encoding,
                Some(dataset.len() as u64),
                limits.max_object,
                walk::INGEST_TAGS,
            )
        }
    })
}

/// The steps common to [`validate`] and [`validate_bytes`]: `walk_it` walks the data set (in
/// the encoding of `ts`; inflating it when the flag says it is deflated), then the kept
/// attributes are parsed and inspected.
fn checked(
    cmd: &Command,
    ts: &str,
    limits: Limits,
    walk_it: impl FnOnce(walk::Encoding, bool) -> Result<walk::Walked, walk::WalkError>,
) -> Result<InstanceRecord, Invalid> {
    let deflated = ts == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    let Some(encoding) = walk::Encoding::of(ts) else {
        return Err(unparsable(format!("unknown transfer syntax {ts}")));
    };
    let walked = walk_it(encoding, deflated).map_err(|e| walk_refusal(e, deflated))?;
    use dicom_transfer_syntax_registry::entries;
    let kept_ts = match (encoding.explicit, encoding.big_endian) {
        (false, _) => entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        (true, true) => entries::EXPLICIT_VR_BIG_ENDIAN.erased(),
        (true, false) => entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    };
    let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(&walked.kept[..], &kept_ts)
        .map_err(|e| unparsable(e.to_string()))?;
    inspect(&obj, walked.pixel, cmd, ts, limits.max_decoded)
}

/// [`walk::walk`] over a deflated data set read from `compressed`, inflated as it is walked
/// (never whole), up to `cap` inflated bytes.
pub fn inflate_and_walk<R: Read>(compressed: R, cap: u64) -> Result<walk::Walked, walk::WalkError> {
    use dicom_encoding::{Codec, TransferSyntaxIndex};
    let syntax = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| walk::WalkError::Malformed("deflate is not supported".into()))?;
    let Codec::Dataset(Some(adapter)) = syntax.codec() else {
        return Err(walk::WalkError::Malformed(
            "deflate is not supported".into(),
        ));
    };
    let inflating = adapter.adapt_reader(Box::new(compressed));
    let explicit_le = walk::Encoding {
        explicit: true,
        big_endian: false,
    };
    walk::walk(
        walk::Streamed::new(inflating),
        explicit_le,
        None,
        cap,
        walk::INGEST_TAGS,
    )
}

/// Checks a DICOM Part 10 file held in memory (with or without its 128-byte preamble) before
/// dicom-object parses it, the way [`validate`] checks a received data set: dicom-object's meta
/// reader and dicom-parser reserve and zero-fill each value's declared length before reading
/// it (4 GiB from a few bytes, found by fuzz/fuzz_targets/pixels.rs), so every length in the
/// meta group (read as dicom-object reads it: elements up to its group length) and in the data
/// set ([`walk::walk`] in the file's transfer syntax; a deflated one inflated up to `cap`
/// bytes) must first fit in the bytes there are. Bytes without the "DICM" prefix pass
/// unchecked: dicom-object refuses them before reading a length. A transfer syntax dicom-rs
/// does not know is an error.
pub fn check_part10(bytes: &[u8], cap: u64) -> Result<(), walk::WalkError> {
    use dicom_encoding::{Codec, TransferSyntaxIndex};
    let bad = |m: &str| walk::WalkError::Malformed(m.to_string());
    let mut at = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        132
    } else if bytes.starts_with(b"DICM") {
        4
    } else {
        return Ok(());
    };
    // The meta group: Explicit VR Little Endian, (0002,0000) first.
    let u16_at = |i: usize| {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // One meta element header at `i`, as dicom-encoding's Explicit VR LE decoder reads it:
    // (tag, value length, header length).
    let header = |i: usize| -> Option<((u16, u16), u32, usize)> {
        let tag = (u16_at(i)?, u16_at(i + 2)?);
        if tag.0 == 0xFFFE {
            return Some((tag, u32_at(i + 4)?, 8));
        }
        let vr = bytes.get(i + 4..i + 6)?;
        let vr = dicom_core::VR::from_binary([vr[0], vr[1]]).unwrap_or(dicom_core::VR::UN);
        use dicom_core::VR::*;
        if matches!(
            vr,
            AE | AS
                | AT
                | CS
                | DA
                | DS
                | DT
                | FL
                | FD
                | IS
                | LO
                | LT
                | PN
                | SH
                | SL
                | SS
                | ST
                | TM
                | UI
                | UL
                | US
        ) {
            Some((tag, u16_at(i + 6)? as u32, 8))
        } else {
            Some((tag, u32_at(i + 8)?, 12))
        }
    };
    let ((0x0002, 0x0000), 4, h) = header(at).ok_or_else(|| bad("meta group cut short"))? else {
        // dicom-object refuses it before reading anything else.
        return Ok(());
    };
    let group_length = u32_at(at + h).ok_or_else(|| bad("meta group cut short"))? as u64;
    at += h + 4;
    let mut ts = None;
    let mut read = 0u64;
    while read < group_length {
        let (tag, len, h) = header(at).ok_or_else(|| bad("meta group cut short"))?;
        if len == u32::MAX {
            return Err(bad("meta element of undefined length"));
        }
        let value = bytes
            .get(at + h..)
            .and_then(|rest| rest.get(..len as usize))
            .ok_or(walk::WalkError::Overrun {
                tag: Tag(tag.0, tag.1),
                declared: len,
                left: bytes.len().saturating_sub(at + h) as u64,
            })?;
        if tag == (0x0002, 0x0010) {
            ts = Some(String::from_utf8_lossy(value).into_owned());
        }
        at += h + len as usize;
        read += (h + len as usize) as u64;
    }
    let ts = ts.ok_or_else(|| bad("meta group without Transfer Syntax UID"))?;
    let ts = sop::trim_uid(&ts);
    let syntax = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| walk::WalkError::Malformed(format!("unknown transfer syntax {ts}")))?;
    let dataset = &bytes[at.min(bytes.len())..];
    if let Codec::Dataset(Some(_)) = syntax.codec() {
        return inflate_and_walk(dataset, cap).map(|_| ());
    }
    let encoding = walk::Encoding {
        // The registry's own UID: it finds a syntax whatever padding follows the UID.
        explicit: syntax.uid() != uids::IMPLICIT_VR_LITTLE_ENDIAN,
        big_endian: syntax.endianness() == dicom_encoding::Endianness::Big,
    };
    walk::walk(dataset, encoding, Some(dataset.len() as u64), cap, &[]).map(|_| ())
}

/// The refusal for a data set the walk rejected: too large (after inflating) is 0xA700, a
/// malformed one (a length that overruns, nesting, truncation, corrupt deflate data) 0xC000.
pub fn walk_refusal(e: walk::WalkError, deflated: bool) -> Invalid {
    let comment = e.to_string();
    match e {
        _ if e.is_size() => Invalid::new(status::OUT_OF_RESOURCES, comment),
        walk::WalkError::Io(_) if !deflated => Invalid::new(status::OUT_OF_RESOURCES, comment),
        walk::WalkError::Io(io) => Invalid::new(
            status::CANNOT_UNDERSTAND,
            format!("deflated data set does not inflate: {io}"),
        ),
        _ => Invalid::new(status::CANNOT_UNDERSTAND, comment),
    }
}

/// The refusal for a data set that does not parse.
fn unparsable(m: String) -> Invalid {
    Invalid::new(
        status::CANNOT_UNDERSTAND,
        format!("data set does not parse: {m}"),
    )
}

/// Checks a data set's ingest attributes (see [`walk::INGEST_TAGS`]) against its command and
/// its pixel header, and makes its index row.
pub fn inspect(
    obj: &dicom_object::InMemDicomObject,
    pixel: Option<PixelHeader>,
    cmd: &Command,
    ts: &str,
    max_decoded: u64,
) -> Result<InstanceRecord, Invalid> {
    let text = |tag: Tag| -> String {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
            .unwrap_or_default()
    };
    let int = |tag: Tag| -> Option<i64> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<i64>().ok())
    };
    let sop_class = text(tags::SOP_CLASS_UID);
    let sop_instance = text(tags::SOP_INSTANCE_UID);
    if sop_class != cmd.sop_class_uid {
        return Err(Invalid::new(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!(
                "SOPClassUID {sop_class:?} differs from the command's {}",
                cmd.sop_class_uid
            ),
        ));
    }
    if sop_instance != cmd.sop_instance_uid {
        return Err(Invalid::new(
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPInstanceUID differs from the command's",
        ));
    }
    let study = text(tags::STUDY_INSTANCE_UID);
    let series = text(tags::SERIES_INSTANCE_UID);
    for (name, v) in [("StudyInstanceUID", &study), ("SeriesInstanceUID", &series)] {
        if !sop::is_valid_uid(v) {
            return Err(Invalid::new(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                format!("missing or invalid {name}"),
            ));
        }
    }
    if let Some(pixel) = pixel {
        check_pixels(obj, pixel, max_decoded)?;
    }
    Ok(InstanceRecord {
        sop_instance_uid: sop_instance,
        sop_class_uid: sop_class,
        study_uid: study,
        series_uid: series,
        patient_id: text(tags::PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        modality: text(tags::MODALITY),
        body_part: text(tags::BODY_PART_EXAMINED),
        series_description: text(tags::SERIES_DESCRIPTION),
        series_number: int(tags::SERIES_NUMBER),
        instance_number: int(tags::INSTANCE_NUMBER),
        transfer_syntax: ts.to_string(),
        calling_ae: String::new(),
        source_host: String::new(),
        size_bytes: 0,
        digest: String::new(),
        path: String::new(),
        received_at: crate::store::db::now(),
        content_key: crate::dicom::content::content_key(obj),
    })
}

/// Checks image dimensions, that decoding them fits `max_decoded` bytes, and, for native
/// (uncompressed) pixel data, that its length agrees with Rows x Columns x Samples x Bits
/// Allocated x Frames (encapsulated: at least one fragment per frame).
pub fn check_pixels(
    obj: &dicom_object::InMemDicomObject,
    pixel: PixelHeader,
    max_decoded: u64,
) -> Result<(), Invalid> {
    let bad = |m: String| Invalid::new(status::DATASET_DOES_NOT_MATCH_SOP_CLASS, m);
    let u = |tag: Tag, name: &str| -> Result<u64, Invalid> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u64>().ok())
            .ok_or_else(|| {
                bad(format!(
                    "Pixel Data present but {name} missing or not a number"
                ))
            })
    };
    let rows = u(tags::ROWS, "Rows")?;
    let cols = u(tags::COLUMNS, "Columns")?;
    let spp = u(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let bits = u(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let frames = match obj.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
        Some(e) => e
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("NumberOfFrames is not a number".into()))?,
        None => 1,
    };
    if rows == 0 || cols == 0 || rows > MAX_DIM as u64 || cols > MAX_DIM as u64 {
        return Err(bad(format!("absurd image size {rows}x{cols}")));
    }
    if !matches!(spp, 1 | 3 | 4) {
        return Err(bad(format!("SamplesPerPixel {spp} is not 1, 3 or 4")));
    }
    if !matches!(bits, 1 | 8 | 16 | 32 | 64) {
        return Err(bad(format!(
            "BitsAllocated {bits} is not 1, 8, 16, 32 or 64"
        )));
    }
    if frames == 0 || frames > MAX_FRAMES {
        return Err(bad(format!("absurd NumberOfFrames {frames}")));
    }
    // What the worker would allocate to decode it (review H1: a few hundred kB declaring
    // 100 000 frames of 32768 x 32768 x 32 bits). Refused now, never decoded later.
    let need =
        crate::dicom::pixels::decoded_bytes(rows, cols, spp, bits, frames).unwrap_or(u64::MAX);
    if need > max_decoded {
        return Err(bad(format!(
            "decoded pixels need {} MiB > pipeline.max_decoded_mb",
            need / 1048576
        )));
    }
    match pixel {
        PixelHeader::Native { declared } => {
            // YBR_FULL_422 stores two luminance and two chroma samples per two pixels.
            let photometric = obj
                .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let samples = if spp == 3 && photometric == "YBR_FULL_422" {
                2
            } else {
                spp
            };
            let expected = (rows * cols * samples * bits * frames).div_ceil(8);
            if declared != expected && declared != expected + (expected % 2) {
                return Err(bad(format!(
                    "Pixel Data holds {declared} bytes; Rows x Columns x Samples x Bits x Frames needs {expected}"
                )));
            }
        }
        PixelHeader::Encapsulated { fragments: 0 } => {
            return Err(bad("encapsulated Pixel Data has no fragments".into()));
        }
        // Each frame takes one fragment or more (PS3.5 A.4).
        PixelHeader::Encapsulated { fragments } if fragments < frames => {
            return Err(bad(format!(
                "encapsulated Pixel Data has {fragments} fragments for {frames} frames"
            )));
        }
        PixelHeader::Encapsulated { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::InMemDicomObject;
    use dicom_transfer_syntax_registry::entries;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const SOP: &str = "1.2.826.0.1.3680043.8.498.1";

    fn limits() -> Limits {
        Limits {
            max_object: 64 << 20,
            max_decoded: 64 << 20,
        }
    }

    fn cmd() -> Command {
        Command {
            field: crate::dicom::dimse::field::C_STORE_RQ,
            message_id: 1,
            sop_class_uid: CT.into(),
            sop_instance_uid: SOP.into(),
            has_dataset: true,
        }
    }

    /// A 4x4 16-bit CT image, `pixels` bytes of native pixel data.
    fn image(pixels: usize) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        let mut put = |tag: Tag, vr: VR, v: PrimitiveValue| {
            o.put(DataElement::new(tag, vr, v));
        };
        put(tags::SOP_CLASS_UID, VR::UI, CT.into());
        put(tags::SOP_INSTANCE_UID, VR::UI, SOP.into());
        put(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4".into());
        put(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.5".into());
        put(tags::MODALITY, VR::CS, "CT".into());
        put(tags::PATIENT_ID, VR::LO, "P1".into());
        put(tags::SERIES_NUMBER, VR::IS, "3".into());
        put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        );
        put(tags::ROWS, VR::US, PrimitiveValue::from(4u16));
        put(tags::COLUMNS, VR::US, PrimitiveValue::from(4u16));
        put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16));
        put(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        );
        put(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![7u8; pixels]),
        );
        o
    }

    fn encode(o: &InMemDicomObject, ts: &dicom_encoding::TransferSyntax) -> Vec<u8> {
        let mut out = Vec::new();
        o.write_dataset_with_ts(&mut out, ts).unwrap();
        out
    }

    /// Raw deflate of an Explicit VR LE data set, as the deflate transfer syntax carries it.
    fn deflate(plain: &[u8]) -> Vec<u8> {
        use dicom_encoding::{Codec, TransferSyntaxIndex};
        let syntax = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
            .unwrap();
        let Codec::Dataset(Some(adapter)) = syntax.codec() else {
            panic!("no deflate")
        };
        let mut out = Vec::new();
        {
            let mut w = adapter.adapt_writer(Box::new(&mut out));
            std::io::Write::write_all(&mut w, plain).unwrap();
        }
        out
    }

    #[test]
    fn a_good_data_set_gives_its_record_in_every_native_syntax() {
        let o = image(32);
        #[allow(deprecated)]
        let cases = [
            (
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                encode(&o, &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()),
            ),
            (
                uids::IMPLICIT_VR_LITTLE_ENDIAN,
                encode(&o, &entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()),
            ),
            (
                uids::EXPLICIT_VR_BIG_ENDIAN,
                encode(&o, &entries::EXPLICIT_VR_BIG_ENDIAN.erased()),
            ),
            (
                uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
                deflate(&encode(&o, &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased())),
            ),
        ];
        for (ts, bytes) in cases {
            let rec = validate_bytes(&bytes, &cmd(), ts, limits())
                .unwrap_or_else(|e| panic!("{ts}: {e}"));
            assert_eq!(rec.sop_instance_uid, SOP);
            assert_eq!(rec.study_uid, "1.2.3.4");
            assert_eq!(rec.series_uid, "1.2.3.4.5");
            assert_eq!(rec.modality, "CT");
            assert_eq!(rec.series_number, Some(3));
            assert_eq!(rec.transfer_syntax, ts);
        }
    }

    #[test]
    fn the_spool_file_and_memory_give_the_same_answer() {
        let bytes = encode(&image(32), &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.part");
        // Ten bytes of something before the data set, as the preamble and meta group are.
        let mut file = vec![0xAAu8; 10];
        file.extend_from_slice(&bytes);
        std::fs::write(&path, &file).unwrap();
        let ts = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let len = bytes.len() as u64;
        // Only the first 40 bytes in memory: the rest is read from the file.
        let from_file = validate(&path, &file[..50], &cmd(), ts, 10, len, limits()).unwrap();
        let in_memory = validate_bytes(&bytes, &cmd(), ts, limits()).unwrap();
        assert_eq!(from_file.sop_instance_uid, in_memory.sop_instance_uid);
        assert_eq!(from_file.content_key, in_memory.content_key);
        // Deflated, from the file too.
        let deflated = deflate(&bytes);
        let mut file = vec![0u8; 10];
        file.extend_from_slice(&deflated);
        std::fs::write(&path, &file).unwrap();
        let ts = uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
        let rec = validate(
            &path,
            &file[..10],
            &cmd(),
            ts,
            10,
            deflated.len() as u64,
            limits(),
        );
        assert_eq!(rec.unwrap().sop_instance_uid, SOP);
    }

    #[test]
    fn refusals_carry_their_status() {
        let ts = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let good = encode(&image(32), &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased());
        let status_of = |bytes: &[u8], cmd: &Command, ts: &str| {
            validate_bytes(bytes, cmd, ts, limits()).unwrap_err().status
        };
        // Another SOP class or instance than the command's.
        let mut other = cmd();
        other.sop_class_uid = "1.2.840.10008.5.1.4.1.1.4".into();
        assert_eq!(
            status_of(&good, &other, ts),
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS
        );
        let mut other = cmd();
        other.sop_instance_uid = "1.2.3".into();
        assert_eq!(
            status_of(&good, &other, ts),
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS
        );
        // Cut short: the Pixel Data length overruns.
        assert_eq!(
            status_of(&good[..good.len() - 2], &cmd(), ts),
            status::CANNOT_UNDERSTAND
        );
        // A syntax we do not know.
        let e = validate_bytes(&good, &cmd(), "1.2.3.4.5", limits()).unwrap_err();
        assert_eq!(e.status, status::CANNOT_UNDERSTAND);
        assert!(e.comment.contains("unknown transfer syntax"), "{e}");
        // Not deflate data at all.
        let e = validate_bytes(
            &good,
            &cmd(),
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            limits(),
        )
        .unwrap_err();
        assert_eq!(e.status, status::CANNOT_UNDERSTAND);
        // Pixel Data of the wrong length for 4x4x16 bits.
        let short = encode(&image(30), &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased());
        let e = validate_bytes(&short, &cmd(), ts, limits()).unwrap_err();
        assert_eq!(e.status, status::DATASET_DOES_NOT_MATCH_SOP_CLASS);
        assert!(e.comment.contains("needs 32"), "{e}");
        // Inflating past max_object is a size refusal (0xA700).
        let small = Limits {
            max_object: 64,
            max_decoded: 64 << 20,
        };
        let e = validate_bytes(
            &deflate(&good),
            &cmd(),
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            small,
        )
        .unwrap_err();
        assert_eq!(e.status, status::OUT_OF_RESOURCES, "{e}");
        // Every Error Comment fits a DIMSE response.
        assert!(e.comment.len() <= 64, "{e}");
    }

    /// A Part 10 file: preamble, meta group (Explicit VR LE), then `dataset`.
    fn part10(ts: &str, dataset: &[u8]) -> Vec<u8> {
        let meta = dicom_object::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(CT)
            .media_storage_sop_instance_uid(SOP)
            .transfer_syntax(ts)
            .implementation_class_uid("1.2.3")
            .build()
            .unwrap();
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        meta.write(&mut out).unwrap();
        out.extend_from_slice(dataset);
        out
    }

    /// Fuzzing regression (fuzz/pixels): dicom-object reserved and zero-filled a value's declared
    /// length before reading it, 1.2 to 3.7 GB for a few KB of upload; now such lengths are
    /// refused before it parses anything.
    #[test]
    fn part10_lengths_must_fit_before_dicom_object_parses() {
        let ts = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let good = encode(&image(32), &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased());
        let file = part10(ts, &good);
        check_part10(&file, 1 << 20).unwrap();
        check_part10(&file[128..], 1 << 20).unwrap();
        crate::admin::masks::parse_dicom(&file).unwrap();
        // A private OB declaring 4 GiB - 16 after the good elements.
        let mut huge = good.clone();
        huge.extend([
            0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ]);
        let e = check_part10(&part10(ts, &huge), 1 << 20).unwrap_err();
        assert!(
            matches!(
                e,
                walk::WalkError::Overrun {
                    declared: 0xFFFF_FFF0,
                    ..
                }
            ),
            "{e}"
        );
        assert!(crate::admin::masks::parse_dicom(&part10(ts, &huge)).is_err());
        // The same in the meta group: an unknown (0002,0100) OB.
        let mut meta = part10(ts, &good);
        let group_length = u32::from_le_bytes(meta[140..144].try_into().unwrap());
        meta[140..144].copy_from_slice(&(group_length + 12).to_le_bytes());
        let at = 144 + group_length as usize;
        let el = [
            0x02, 0x00, 0x00, 0x01, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ];
        meta.splice(at..at, el);
        assert!(matches!(
            check_part10(&meta, 1 << 20),
            Err(walk::WalkError::Overrun { .. })
        ));
        // Implicit VR data set behind an Explicit VR syntax: read as the parser reads it.
        let implicit = encode(&image(32), &entries::IMPLICIT_VR_LITTLE_ENDIAN.erased());
        assert!(check_part10(&part10(ts, &implicit), 1 << 20).is_err());
        // Fuzzing regression (fuzz/seg_reader, 424 bytes): a Transfer Syntax UID padded with
        // a carriage return. dicom-rs's registry trims any whitespace, so dicom-object read
        // the data set as Implicit VR while the check compared the padded text and walked it
        // as Explicit VR: the syntax is now the registry's.
        let implicit_ts = part10("1.2.840.10008.1.2\r", &implicit);
        check_part10(&implicit_ts, 1 << 20).unwrap();
        let mut huge = implicit.clone();
        huge.extend([0x08, 0x00, 0x00, 0x01, 0xF0, 0xFF, 0xFF, 0xFF]); // (0008,0100)
        let e = check_part10(&part10("1.2.840.10008.1.2\r", &huge), 1 << 20).unwrap_err();
        assert!(matches!(e, walk::WalkError::Overrun { .. }), "{e}");
        // Deflated: inflated under the cap.
        let dfl = uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
        check_part10(&part10(dfl, &deflate(&good)), 1 << 20).unwrap();
        let e = check_part10(&part10(dfl, &deflate(&good)), 64).unwrap_err();
        assert!(e.is_size(), "{e}");
        // Not DICOM at all: left to dicom-object, which refuses it.
        check_part10(b"not dicom", 1 << 20).unwrap();
        assert!(crate::admin::masks::parse_dicom(b"not dicom").is_err());
    }

    /// The fuzz targets' out-of-memory inputs (tests/data/fuzz/): dicom-object reserved and
    /// zeroed 3.7 GB for pydicom's UN_sequence.dcm (an undefined-length UN holding Implicit VR
    /// items in an Explicit VR file, fuzz/pixels), about 2 GB for a mutated highdicom SEG
    /// (fuzz/seg_reader: a declared length), and 1.1 GB for another (a UL of 6 bytes, after
    /// which dicom-parser read misaligned: see walk::tests), and 436 MB for a 424-byte file
    /// whose Transfer Syntax UID ends in a carriage return (see
    /// `part10_lengths_must_fit_before_dicom_object_parses`). All are now refused before
    /// dicom-object reads them.
    #[test]
    fn fuzzing_out_of_memory_inputs_are_refused_before_parsing() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
        for name in [
            "un-sequence-4gib-alloc.dcm",
            "seg-declared-length-alloc.dcm",
            "seg-ragged-ul-alloc.dcm",
            "seg-ts-padding-cr.dcm",
        ] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let e = check_part10(&bytes, 1 << 20).unwrap_err();
            assert!(!e.is_size(), "{name}: {e}");
            let e = crate::admin::masks::parse_dicom(&bytes).unwrap_err();
            let e = e.to_string();
            assert!(
                e.contains("declares") || e.contains("whole number"),
                "{name}: {e}"
            );
        }
        // The UN one as a C-STORE data set (JPEG Lossless SV1, CT): the walk that reads it as
        // the worker's parser will refuse it at ingest (it used to accept it, see
        // walk::tests::an_undefined_length_un_is_walked_as_the_parser_reads_it).
        let bytes = std::fs::read(dir.join("un-sequence-4gib-alloc.dcm")).unwrap();
        let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..]).unwrap();
        let dataset = &bytes[132 + 12 + meta.information_group_length as usize..];
        let e = validate_bytes(dataset, &cmd(), uids::JPEG_LOSSLESS_SV1, limits()).unwrap_err();
        assert_eq!(e.status, status::CANNOT_UNDERSTAND, "{e}");
    }

    #[test]
    fn pixel_headers_are_checked_against_the_limits() {
        let mut o = image(32);
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
        let e = check_pixels(&o, PixelHeader::Native { declared: 32 }, 1 << 20).unwrap_err();
        assert!(e.comment.contains("absurd image size"), "{e}");
        let o = image(32);
        // What the worker needs for 4x4 16-bit samples: one byte less is refused.
        let need = crate::dicom::pixels::decoded_bytes(4, 4, 1, 16, 1).unwrap();
        let e = check_pixels(&o, PixelHeader::Native { declared: 32 }, need - 1).unwrap_err();
        assert!(e.comment.contains("max_decoded_mb"), "{e}");
        assert!(check_pixels(&o, PixelHeader::Native { declared: 32 }, need).is_ok());
        let e = check_pixels(&o, PixelHeader::Encapsulated { fragments: 0 }, 1 << 20).unwrap_err();
        assert!(e.comment.contains("no fragments"), "{e}");
        let mut o = image(32);
        o.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("3"),
        ));
        let e = check_pixels(&o, PixelHeader::Encapsulated { fragments: 2 }, 1 << 20).unwrap_err();
        assert!(e.comment.contains("2 fragments for 3 frames"), "{e}");
        assert_eq!(e.status, status::DATASET_DOES_NOT_MATCH_SOP_CLASS);
    }
}
