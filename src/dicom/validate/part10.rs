//! [`check_part10`]: the length checks of [`super::validate`] on a DICOM Part 10 file held in
//! memory (meta group, then the data set in its transfer syntax), run before dicom-object
//! parses it (the admin API's uploads, the SEG reader, the fuzz targets).

use super::inflate_and_walk;
use crate::dicom::{sop, walk};
use dicom_core::Tag;
use dicom_dictionary_std::uids;

/// Checks a DICOM Part 10 file held in memory (with or without its 128-byte preamble) before
/// dicom-object parses it, the way [`super::validate`] checks a received data set: dicom-object's
/// meta reader and dicom-parser reserve and zero-fill each value's declared length before reading
/// it (4 GiB from a few bytes, found by fuzz/fuzz_targets/pixels.rs), so every length in the meta
/// group (read as dicom-object reads it: elements up to its group length) and in the data set
/// ([`walk::walk`] in the file's transfer syntax; a deflated one inflated up to `cap` bytes) must
/// first fit in the bytes there are. Bytes without the "DICM" prefix pass unchecked: dicom-object
/// refuses them before reading a length. A transfer syntax dicom-rs does not know is an error.
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::validate_bytes;
    use super::*;
    use crate::dicom::dimse::status;
    use dicom_transfer_syntax_registry::entries;

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

    /// What an upload does (`admin::masks::parse_dicom`): the length check, then dicom-object.
    fn parse_checked(bytes: &[u8]) -> Result<dicom_object::DefaultDicomObject, String> {
        check_part10(bytes, 1 << 20).map_err(|e| e.to_string())?;
        let preamble = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
            dicom_object::file::ReadPreamble::Always
        } else {
            dicom_object::file::ReadPreamble::Never
        };
        dicom_object::OpenFileOptions::new()
            .read_preamble(preamble)
            .from_reader(bytes)
            .map_err(|e| e.to_string())
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
        parse_checked(&file).unwrap();
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
        assert!(parse_checked(&part10(ts, &huge)).is_err());
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
        assert!(parse_checked(b"not dicom").is_err());
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
            let e = parse_checked(&bytes).unwrap_err();
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
}
