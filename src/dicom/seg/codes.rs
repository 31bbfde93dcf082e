//! Coded concepts (PS3.3 Table 8.8-1 Code Sequence Macro) and the fixed codes a SEG uses.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::elements::{get_str, put_str};
use dicom_core::VR;

/// A coded concept: Coding Scheme Designator, Code Value and Code Meaning.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Code {
    /// Coding Scheme Designator, e.g. `SCT` (SNOMED CT) or `DCM`.
    pub scheme: String,
    /// Code Value, e.g. `T-D0050` or `85756007`.
    pub value: String,
    /// Code Meaning, e.g. `Tissue`.
    pub meaning: String,
}

impl Code {
    /// A code in any scheme.
    pub fn new(
        scheme: impl Into<String>,
        value: impl Into<String>,
        meaning: impl Into<String>,
    ) -> Self {
        Self {
            scheme: scheme.into(),
            value: value.into(),
            meaning: meaning.into(),
        }
    }

    /// A SNOMED CT code (scheme `SCT`).
    pub fn sct(value: impl Into<String>, meaning: impl Into<String>) -> Self {
        Self::new("SCT", value, meaning)
    }

    /// A DICOM code (scheme `DCM`).
    pub fn dcm(value: impl Into<String>, meaning: impl Into<String>) -> Self {
        Self::new("DCM", value, meaning)
    }

    /// The code as one sequence item (Code Value, Coding Scheme Designator, Code Meaning). A
    /// value longer than 16 characters (SH), such as an 18-digit SNOMED CT extension concept,
    /// goes to Long Code Value (UC) instead; a URN or URL to URN Code Value (UR).
    pub fn to_item(&self) -> InMemDicomObject {
        let mut item = InMemDicomObject::new_empty();
        if self.value.contains(':') {
            put_str(&mut item, tags::URN_CODE_VALUE, VR::UR, &self.value);
        } else if self.value.chars().count() > 16 {
            put_str(&mut item, tags::LONG_CODE_VALUE, VR::UC, &self.value);
        } else {
            put_str(&mut item, tags::CODE_VALUE, VR::SH, &self.value);
        }
        put_str(
            &mut item,
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            &self.scheme,
        );
        put_str(&mut item, tags::CODE_MEANING, VR::LO, &self.meaning);
        item
    }

    /// Reads a code from a sequence item; `None` when Code Value (or Long/URN Code Value),
    /// scheme or meaning is missing.
    pub fn from_item(item: &InMemDicomObject) -> Option<Self> {
        let value = get_str(item, tags::CODE_VALUE)
            .or_else(|| get_str(item, tags::LONG_CODE_VALUE))
            .or_else(|| get_str(item, tags::URN_CODE_VALUE))?;
        Some(Self {
            scheme: get_str(item, tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default(),
            value,
            meaning: get_str(item, tags::CODE_MEANING).unwrap_or_default(),
        })
    }
}

/// Derivation Code Sequence value of every SEG frame: (113076, DCM, "Segmentation").
pub fn derivation_segmentation() -> Code {
    Code::dcm("113076", "Segmentation")
}

/// Purpose of Reference of each source image: (121322, DCM, "Source image for image processing
/// operation").
pub fn purpose_source_image() -> Code {
    Code::dcm("121322", "Source image for image processing operation")
}

/// Algorithm Family (CID 7162) of proxyseg's models: (123110, DCM, "Artificial Intelligence").
pub fn algorithm_family_ai() -> Code {
    Code::dcm("123110", "Artificial Intelligence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_urn_values_use_their_own_attributes() {
        let short = Code::sct("10200004", "Liver").to_item();
        assert!(short.get(tags::CODE_VALUE).is_some());
        let long = Code::sct("999000011000000100", "An extension concept").to_item();
        assert!(long.get(tags::CODE_VALUE).is_none());
        assert!(long.get(tags::LONG_CODE_VALUE).is_some());
        let urn = Code::new("RADLEX", "urn:oid:1.2.3", "Something").to_item();
        assert!(urn.get(tags::URN_CODE_VALUE).is_some());
        for item in [short, long, urn] {
            let back = Code::from_item(&item).expect("code");
            assert!(!back.value.is_empty() && !back.meaning.is_empty());
        }
    }
}
