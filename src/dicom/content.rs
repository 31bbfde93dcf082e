//! The content key of an instance: what segmentation and the SEG depend on, independent of how
//! the instance was encoded (review M2). A PACS that routes a study back transcoded (another
//! transfer syntax, compressed or not, explicit or implicit VR) or with coerced demographics
//! sends copies whose bytes differ but whose key is the same; the loop guard counts such a copy
//! as nothing new.
//!
//! The key covers the instance's identity (SOP Class, Study and Series Instance UIDs; the SOP
//! Instance UID is the index row's own key) and its image: Rows, Columns, Number of Frames,
//! Samples per Pixel, Bits Allocated and Stored, Pixel Representation, and the geometry
//! (Image Position / Orientation (Patient), Pixel Spacing) read as numbers, so that "0.50" and
//! "0.5" agree. It leaves out what a transcoding or a coercion changes without changing the
//! image: the transfer syntax, Photometric Interpretation and Planar Configuration (a JPEG
//! becomes RGB when decompressed), and every patient or study demographic.
//!
//! It does not hash the pixels: by the standard a SOP Instance UID names one image, and a copy
//! whose pixels changed (a lossy recompression included) must carry a new one. A peer that
//! re-sends changed pixels under the same UID and the same geometry is stored, but not
//! segmented again. Must never decode pixel data (ingest never decodes); every attribute it
//! reads is one ingest keeps ([`crate::dicom::walk::INGEST_TAGS`]).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Version of the key's definition, part of every key: a key of another version never equals
/// one of this version (a copy is then counted as new once, never wrongly as old).
const VERSION: &str = "content-v1";

/// Text attributes of the key, compared trimmed.
const TEXT: &[Tag] = &[
    tags::SOP_CLASS_UID,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
];

/// Integer attributes of the key (absent: empty; Number of Frames absent counts as 1).
const INTEGERS: &[Tag] = &[
    tags::ROWS,
    tags::COLUMNS,
    tags::NUMBER_OF_FRAMES,
    tags::SAMPLES_PER_PIXEL,
    tags::BITS_ALLOCATED,
    tags::BITS_STORED,
    tags::PIXEL_REPRESENTATION,
];

/// Decimal attributes of the key (multi-valued), compared as numbers to 1e-4.
const DECIMALS: &[Tag] = &[
    tags::IMAGE_POSITION_PATIENT,
    tags::IMAGE_ORIENTATION_PATIENT,
    tags::PIXEL_SPACING,
];

/// The content key of `obj`: `content-v1:<32 hex digits>`.
pub fn content_key(obj: &InMemDicomObject) -> String {
    let element = |tag: Tag| obj.element_opt(tag).ok().flatten();
    let mut canonical = String::from(VERSION);
    for &tag in TEXT {
        let v = element(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
            .unwrap_or_default();
        canonical.push_str(&format!("|{tag}={v}"));
    }
    for &tag in INTEGERS {
        let v = element(tag).and_then(|e| e.to_int::<i64>().ok());
        let v = match (tag, v) {
            (tags::NUMBER_OF_FRAMES, None) => "1".to_string(),
            (_, Some(v)) => v.to_string(),
            (_, None) => String::new(),
        };
        canonical.push_str(&format!("|{tag}={v}"));
    }
    for &tag in DECIMALS {
        // Read as text and split here: values arrive as one string or as several.
        let text = element(tag)
            .and_then(|e| e.to_str().ok())
            .unwrap_or_default();
        let v: Vec<String> = text
            .split('\\')
            .map(|x| x.trim_matches(['\0', ' ']))
            .filter(|x| !x.is_empty())
            .map(|x| match x.parse::<f64>() {
                Ok(x) => format!("{:.4}", x + 0.0),
                Err(_) => x.to_string(),
            })
            .collect();
        canonical.push_str(&format!("|{tag}={}", v.join("\\")));
    }
    format!(
        "{VERSION}:{:032x}",
        xxhash_rust::xxh3::xxh3_128(canonical.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn image(position: &str, photometric: &str, name: &str) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        let mut text = |tag, vr, v: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        text(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4\0");
        text(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3");
        text(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4");
        text(tags::IMAGE_POSITION_PATIENT, VR::DS, position);
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric);
        text(tags::PATIENT_NAME, VR::PN, name);
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(64_u16),
        ));
        o.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(64_u16),
        ));
        o
    }

    /// Ingest keeps every attribute the key reads when it walks a data set.
    #[test]
    fn ingest_keeps_what_the_key_reads() {
        for tag in TEXT.iter().chain(INTEGERS).chain(DECIMALS) {
            assert!(
                crate::dicom::walk::INGEST_TAGS.contains(tag),
                "{tag} is not in walk::INGEST_TAGS"
            );
        }
    }

    /// A transcoded or coerced copy keeps its key; a change of geometry or identity does not.
    #[test]
    fn encoding_and_demographics_do_not_change_the_key() {
        let k = content_key(&image("0.5\\-10\\3", "RGB", "A^B"));
        assert!(k.starts_with("content-v1:") && k.len() == "content-v1:".len() + 32);
        assert_eq!(
            content_key(&image("0.50\\-10.0\\3.000 ", "YBR_FULL_422", "C^D")),
            k
        );
        assert_ne!(content_key(&image("0.5\\-10\\4", "RGB", "A^B")), k);
        let mut other_series = image("0.5\\-10\\3", "RGB", "A^B");
        other_series.put(DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.5"),
        ));
        assert_ne!(content_key(&other_series), k);
        let mut one_frame = image("0.5\\-10\\3", "RGB", "A^B");
        one_frame.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("1"),
        ));
        assert_eq!(content_key(&one_frame), k, "absent Number of Frames is 1");
    }
}
