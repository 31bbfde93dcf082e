//! Test fixtures shared by the tests of `validate`'s files: a small CT image, its command,
//! limits, and encoders for every native and the deflated transfer syntax.

use super::Limits;
use crate::dicom::dimse::Command;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

pub(super) const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
pub(super) const SOP: &str = "1.2.826.0.1.3680043.8.498.1";

pub(super) fn limits() -> Limits {
    Limits {
        max_object: 64 << 20,
        max_decoded: 64 << 20,
    }
}

pub(super) fn cmd() -> Command {
    Command {
        field: crate::dicom::dimse::field::C_STORE_RQ,
        message_id: 1,
        sop_class_uid: CT.into(),
        sop_instance_uid: SOP.into(),
        has_dataset: true,
    }
}

/// A 4x4 16-bit CT image, `pixels` bytes of native pixel data.
pub(super) fn image(pixels: usize) -> InMemDicomObject {
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

pub(super) fn encode(o: &InMemDicomObject, ts: &dicom_encoding::TransferSyntax) -> Vec<u8> {
    let mut out = Vec::new();
    o.write_dataset_with_ts(&mut out, ts).unwrap();
    out
}

/// Raw deflate of an Explicit VR LE data set, as the deflate transfer syntax carries it.
pub(super) fn deflate(plain: &[u8]) -> Vec<u8> {
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
