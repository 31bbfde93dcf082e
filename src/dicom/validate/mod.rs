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
//!
//! One file per concern: this one (the entry points, the walk in each encoding, refusals),
//! `inspect` (the kept attributes checked against the command and the size limits, giving the
//! index record), `part10` (the same length checks on a Part 10 file before dicom-object
//! parses it).

mod inspect;
mod part10;

pub use inspect::{check_pixels, inspect};
pub use part10::check_part10;

use crate::dicom::dimse::{status, Command};
use crate::dicom::walk;
use dicom_dictionary_std::uids;
use std::io::Read;
use std::path::Path;

/// Everything the index keeps about one received instance, as validation reads it from the
/// data set (the store indexes it as one row, `store::instances`).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    /// SOP Instance UID (primary key).
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Modality.
    pub modality: String,
    /// Body Part Examined.
    pub body_part: String,
    /// Series Description.
    pub series_description: String,
    /// Series Number.
    pub series_number: Option<i64>,
    /// Instance Number.
    pub instance_number: Option<i64>,
    /// Transfer syntax the instance was received (and is stored) in.
    pub transfer_syntax: String,
    /// Calling AE title of the sender.
    pub calling_ae: String,
    /// IP address of the sender.
    pub source_host: String,
    /// Size of the spool file in bytes.
    pub size_bytes: u64,
    /// Digest of the data set bytes as received, labelled with its algorithm (see
    /// `store::spool::DatasetHasher`; older rows: `blake3:` or `sha256:`). Equal
    /// digests mean identical copies.
    pub digest: String,
    /// Spool file path.
    pub path: String,
    /// Reception time (Unix seconds).
    pub received_at: f64,
    /// What segmentation depends on, independent of the encoding
    /// ([`crate::dicom::content::content_key`]; empty for rows from before migration 8). A
    /// re-sent copy with the same key is not a new image to the loop guard (review M2).
    pub content_key: String,
}

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

#[cfg(test)]
mod fixtures;

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use dicom_transfer_syntax_registry::entries;

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
}
