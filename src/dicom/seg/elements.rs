//! Small helpers to put and get data elements on `InMemDicomObject`, shared by writer and reader.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;

/// Puts a single-valued string element (empty string = empty type 2 value).
pub fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

/// Puts a multi-valued string element.
pub fn put_strs(obj: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[String]) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().cloned().collect()),
    ));
}

/// Puts an empty element (type 2 attribute with no value).
pub fn put_empty(obj: &mut InMemDicomObject, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

/// Puts a US element.
pub fn put_u16s(obj: &mut InMemDicomObject, tag: Tag, values: &[u16]) {
    obj.put(DataElement::new(
        tag,
        VR::US,
        PrimitiveValue::U16(values.iter().copied().collect()),
    ));
}

/// Puts a UL element.
pub fn put_u32s(obj: &mut InMemDicomObject, tag: Tag, values: &[u32]) {
    obj.put(DataElement::new(
        tag,
        VR::UL,
        PrimitiveValue::U32(values.iter().copied().collect()),
    ));
}

/// Puts an AT element holding one tag.
pub fn put_tag(obj: &mut InMemDicomObject, tag: Tag, value: Tag) {
    obj.put(DataElement::new(
        tag,
        VR::AT,
        PrimitiveValue::Tags([value].into_iter().collect()),
    ));
}

/// Puts a sequence.
pub fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// Copies `tag` from `src` when present; when absent and `vr_if_missing` is given, puts an empty
/// value of that VR (a type 2 attribute).
pub fn copy(
    dst: &mut InMemDicomObject,
    src: &InMemDicomObject,
    tag: Tag,
    vr_if_missing: Option<VR>,
) {
    match src.get(tag) {
        Some(elem) => {
            dst.put(elem.clone());
        }
        None => {
            if let Some(vr) = vr_if_missing {
                put_empty(dst, tag, vr);
            }
        }
    }
}

/// A string value, trimmed of DICOM padding; `None` when absent, empty or not a string.
pub fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let elem = obj.get(tag)?;
    let s = elem.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

/// An integer value; `None` when absent, empty or not numeric.
pub fn get_int<T>(obj: &InMemDicomObject, tag: Tag) -> Option<T>
where
    T: num_like::FromValue,
{
    T::from_element(obj.get(tag)?)
}

/// The items of a sequence; an empty slice when absent or not a sequence.
pub fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

/// The first item of a sequence.
pub fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    items(obj, tag).first()
}

/// Integer conversion for the types the SEG code reads.
pub mod num_like {
    use dicom_object::mem::InMemElement;

    /// An integer type readable from an element.
    pub trait FromValue: Sized {
        /// Converts the element's first value.
        fn from_element(elem: &InMemElement) -> Option<Self>;
    }

    macro_rules! impl_from_value {
        ($($t:ty),*) => {$(
            impl FromValue for $t {
                fn from_element(elem: &InMemElement) -> Option<Self> {
                    elem.to_int::<$t>().ok()
                }
            }
        )*};
    }
    impl_from_value!(u16, u32, i32, i64, u64, usize);
}
