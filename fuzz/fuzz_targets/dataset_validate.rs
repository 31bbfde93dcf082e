//! A received C-STORE data set through the SCP's validation (`dicom::validate`): the bounded
//! walk (inflating a deflated one), the parse of the kept attributes, the checks against the
//! command and the pixel checks.
//!
//! Input (what `fuzz/seeds.py` writes): one byte choosing the presentation context's transfer
//! syntax (index into `sop::TRANSFER_SYNTAXES`, modulo its length), the command's Affected SOP
//! Class UID and Affected SOP Instance UID (each one length byte, then the text), then the data
//! set bytes as received (still deflated for the deflate syntax).
#![no_main]

#[global_allocator]
static ALLOC: proxyseg_fuzz::Capped = proxyseg_fuzz::Capped;

use dicom_object::InMemDicomObject;
use libfuzzer_sys::fuzz_target;
use proxyseg::dicom::{dimse, sop, validate};

/// Splits off a string of one length byte and that many bytes.
fn text(data: &[u8]) -> Option<(String, &[u8])> {
    let (&n, rest) = data.split_first()?;
    let n = n as usize;
    let s = rest.get(..n)?;
    Some((String::from_utf8_lossy(s).into_owned(), &rest[n..]))
}

/// Parses a validated data set completely, as the worker's dicom-object does with the file.
fn worker_parse(dataset: &[u8], ts: &str, cap: u64) {
    use dicom_encoding::{Codec, TransferSyntaxIndex};
    use dicom_transfer_syntax_registry::{entries, TransferSyntaxRegistry};
    use std::io::Read;
    let Some(syntax) = TransferSyntaxRegistry.get(ts) else {
        return;
    };
    let _ = match syntax.codec() {
        Codec::Dataset(Some(adapter)) => {
            let mut plain = Vec::new();
            let inflating = adapter.adapt_reader(Box::new(dataset));
            if inflating.take(cap).read_to_end(&mut plain).is_err() {
                return;
            }
            InMemDicomObject::read_dataset_with_ts(
                &plain[..],
                &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
            )
        }
        _ => InMemDicomObject::read_dataset_with_ts(dataset, syntax),
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&t, rest)) = data.split_first() else {
        return;
    };
    let Some((class, rest)) = text(rest) else {
        return;
    };
    let Some((instance, dataset)) = text(rest) else {
        return;
    };
    // What the SCP checks before it receives a data set at all (`begin_store`): the command's
    // SOP class is its presentation context's (an accepted storage class) and its SOP Instance
    // UID is valid.
    if !sop::is_accepted_sop_class(&class) || !sop::is_valid_uid(&instance) {
        return;
    }
    let ts = sop::TRANSFER_SYNTAXES[t as usize % sop::TRANSFER_SYNTAXES.len()];
    let cmd = dimse::Command {
        field: dimse::field::C_STORE_RQ,
        message_id: 1,
        sop_class_uid: class,
        sop_instance_uid: instance,
        has_dataset: true,
    };
    // The daemon's defaults are 1024 MiB each; smaller here so that a deflate bomb costs less
    // time (the walk's cost grows with the inflated size up to max_object).
    let limits = validate::Limits {
        max_object: 64 << 20,
        max_decoded: 64 << 20,
    };
    match validate::validate_bytes(dataset, &cmd, ts, limits) {
        Ok(rec) => {
            assert_eq!(rec.sop_instance_uid, cmd.sop_instance_uid);
            assert_eq!(rec.sop_class_uid, cmd.sop_class_uid);
            // Spool paths are built from these: they must be valid UIDs.
            assert!(sop::is_valid_uid(&rec.study_uid) && sop::is_valid_uid(&rec.series_uid));
            // What the worker does with a stored data set: dicom-object parses all of it. The
            // walk checked every length the way that parser reads it, so the parse may fail
            // but never allocate from a length the bytes do not back (the capped allocator
            // aborts on any allocation over 256 MiB).
            worker_parse(dataset, ts, limits.max_object);
        }
        Err(e) => {
            assert!(
                matches!(
                    e.status,
                    dimse::status::OUT_OF_RESOURCES
                        | dimse::status::DATASET_DOES_NOT_MATCH_SOP_CLASS
                        | dimse::status::CANNOT_UNDERSTAND
                ),
                "{e}"
            );
        }
    }
});
