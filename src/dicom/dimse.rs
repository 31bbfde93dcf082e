//! DIMSE command sets: parsing requests and building responses (PS3.7).
//!
//! Command sets are always Implicit VR Little Endian. Every response answers the request's
//! own Message ID (dicom-storescp's C-ECHO answers ID 1 whatever was asked: we do not).

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values we handle (PS3.7 E.1).
pub mod field {
    /// C-STORE-RQ.
    pub const C_STORE_RQ: u16 = 0x0001;
    /// C-STORE-RSP.
    pub const C_STORE_RSP: u16 = 0x8001;
    /// C-ECHO-RQ.
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// C-ECHO-RSP.
    pub const C_ECHO_RSP: u16 = 0x8030;
}

/// DIMSE status codes we send (PS3.4 B.2.3, PS3.7 C).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATASET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Refused: not authorized (a peer replacing an instance another peer stored).
    pub const NOT_AUTHORIZED: u16 = 0x0124;
    /// Failure: unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Failure: processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
}

/// "No data set" value of Command Data Set Type.
const NO_DATASET: u16 = 0x0101;

/// A parsed DIMSE request command.
#[derive(Debug, Clone)]
pub struct Command {
    /// Command Field (0000,0100).
    pub field: u16,
    /// Message ID (0000,0110).
    pub message_id: u16,
    /// Affected SOP Class UID (0000,0002), trimmed.
    pub sop_class_uid: String,
    /// Affected SOP Instance UID (0000,1000), trimmed; empty when absent.
    pub sop_instance_uid: String,
    /// Whether a data set follows the command.
    pub has_dataset: bool,
}

/// Errors while parsing a command set.
#[derive(Debug, thiserror::Error)]
pub enum DimseError {
    /// The bytes are not an Implicit VR LE data set.
    #[error("command set does not parse: {0}")]
    Parse(String),
    /// A required command element is absent.
    #[error("command set lacks {0}")]
    Missing(&'static str),
    /// Encoding a response failed.
    #[error("cannot encode command: {0}")]
    Encode(String),
}

/// A command set's elements, parsed by [`crate::dicom::walk::command_elements`]: every
/// declared length must fit in the bytes received, so nothing is reserved from a length.
struct Elements<'a>(Vec<(dicom_core::Tag, &'a [u8])>);

impl<'a> Elements<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Elements<'a>, DimseError> {
        crate::dicom::walk::command_elements(bytes)
            .map(Elements)
            .map_err(|e| DimseError::Parse(e.to_string()))
    }

    fn value(&self, tag: dicom_core::Tag) -> Option<&'a [u8]> {
        self.0.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
    }

    /// A US value.
    fn u16(&self, tag: dicom_core::Tag, name: &'static str) -> Result<u16, DimseError> {
        match self.value(tag) {
            Some([a, b, ..]) => Ok(u16::from_le_bytes([*a, *b])),
            _ => Err(DimseError::Missing(name)),
        }
    }

    /// A text value (UI, LO), padding trimmed; empty when absent.
    fn text(&self, tag: dicom_core::Tag) -> String {
        self.value(tag)
            .map(|v| {
                String::from_utf8_lossy(v)
                    .trim_end_matches(['\0', ' '])
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    }
}

impl Command {
    /// Parses a complete command set (bounded: see [`Elements`]).
    pub fn parse(bytes: &[u8]) -> Result<Command, DimseError> {
        let els = Elements::parse(bytes)?;
        let field = els.u16(tags::COMMAND_FIELD, "Command Field")?;
        let message_id = els.u16(tags::MESSAGE_ID, "Message ID")?;
        let dst = els.u16(tags::COMMAND_DATA_SET_TYPE, "Command Data Set Type")?;
        Ok(Command {
            field,
            message_id,
            sop_class_uid: els.text(tags::AFFECTED_SOP_CLASS_UID),
            sop_instance_uid: els.text(tags::AFFECTED_SOP_INSTANCE_UID),
            has_dataset: dst != NO_DATASET,
        })
    }

    /// The Command Field of a response command set, if it parses.
    pub fn parse_response_field(bytes: &[u8]) -> Option<u16> {
        Elements::parse(bytes)
            .ok()?
            .u16(tags::COMMAND_FIELD, "Command Field")
            .ok()
    }
}

/// Builds a C-ECHO-RSP answering `message_id`.
pub fn echo_response(message_id: u16, sop_class_uid: &str) -> Result<Vec<u8>, DimseError> {
    encode(response_object(
        field::C_ECHO_RSP,
        message_id,
        sop_class_uid,
        None,
        status::SUCCESS,
        None,
    ))
}

/// Builds a C-STORE-RSP answering `message_id`, with an optional Error Comment (<= 64 chars).
pub fn store_response(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    status: u16,
    error_comment: Option<&str>,
) -> Result<Vec<u8>, DimseError> {
    encode(response_object(
        field::C_STORE_RSP,
        message_id,
        sop_class_uid,
        Some(sop_instance_uid),
        status,
        error_comment,
    ))
}

/// Builds a C-STORE-RQ for sending `sop_instance_uid` with `message_id`.
pub fn store_request(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<Vec<u8>, DimseError> {
    let mut o = InMemDicomObject::new_empty();
    put_uid(&mut o, tags::AFFECTED_SOP_CLASS_UID, sop_class_uid);
    o.put(DataElement::new(
        tags::COMMAND_FIELD,
        VR::US,
        PrimitiveValue::from(field::C_STORE_RQ),
    ));
    o.put(DataElement::new(
        tags::MESSAGE_ID,
        VR::US,
        PrimitiveValue::from(message_id),
    ));
    o.put(DataElement::new(
        tags::PRIORITY,
        VR::US,
        PrimitiveValue::from(0u16),
    ));
    o.put(DataElement::new(
        tags::COMMAND_DATA_SET_TYPE,
        VR::US,
        PrimitiveValue::from(0x0000u16),
    ));
    put_uid(&mut o, tags::AFFECTED_SOP_INSTANCE_UID, sop_instance_uid);
    encode(o)
}

/// Reads Status (0000,0900) and Error Comment (0000,0902) out of a response command set.
pub fn response_status(bytes: &[u8]) -> Result<(u16, Option<String>), DimseError> {
    let els = Elements::parse(bytes)?;
    let st = els.u16(tags::STATUS, "Status")?;
    let comment = els
        .value(tags::ERROR_COMMENT)
        .map(|_| els.text(tags::ERROR_COMMENT));
    Ok((st, comment))
}

fn put_uid(o: &mut InMemDicomObject, tag: dicom_core::Tag, uid: &str) {
    let mut v = uid.to_string();
    if v.len() % 2 == 1 {
        v.push('\0');
    }
    o.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(v)));
}

fn response_object(
    command: u16,
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: Option<&str>,
    status: u16,
    error_comment: Option<&str>,
) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    if !sop_class_uid.is_empty() {
        put_uid(&mut o, tags::AFFECTED_SOP_CLASS_UID, sop_class_uid);
    }
    o.put(DataElement::new(
        tags::COMMAND_FIELD,
        VR::US,
        PrimitiveValue::from(command),
    ));
    o.put(DataElement::new(
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        VR::US,
        PrimitiveValue::from(message_id),
    ));
    o.put(DataElement::new(
        tags::COMMAND_DATA_SET_TYPE,
        VR::US,
        PrimitiveValue::from(NO_DATASET),
    ));
    o.put(DataElement::new(
        tags::STATUS,
        VR::US,
        PrimitiveValue::from(status),
    ));
    if let Some(uid) = sop_instance_uid.filter(|u| !u.is_empty()) {
        put_uid(&mut o, tags::AFFECTED_SOP_INSTANCE_UID, uid);
    }
    if let Some(c) = error_comment {
        let mut c: String = c
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
            .take(64)
            .collect();
        if c.len() % 2 == 1 {
            c.push(' ');
        }
        o.put(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(c),
        ));
    }
    o
}

/// Encodes a command set in Implicit VR LE with its Command Group Length first.
fn encode(mut o: InMemDicomObject) -> Result<Vec<u8>, DimseError> {
    let mut body = Vec::new();
    o.write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| DimseError::Encode(e.to_string()))?;
    o.put(DataElement::new(
        tags::COMMAND_GROUP_LENGTH,
        VR::UL,
        PrimitiveValue::from(body.len() as u32),
    ));
    let mut out = Vec::with_capacity(body.len() + 12);
    o.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| DimseError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_response_answers_the_request_id() {
        let bytes = echo_response(4242, "1.2.840.10008.1.1").unwrap();
        let obj =
            InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
        assert_eq!(
            obj.element(tags::MESSAGE_ID_BEING_RESPONDED_TO)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            4242
        );
        let gl = obj
            .element(tags::COMMAND_GROUP_LENGTH)
            .unwrap()
            .to_int::<u32>()
            .unwrap();
        assert_eq!(gl as usize, bytes.len() - 12);
    }

    #[test]
    fn command_lengths_beyond_the_bytes_are_refused() {
        // (0000,0002) declaring about 4 GiB (issue 16): refused, nothing reserved.
        let mut c = vec![0, 0, 2, 0, 0xF0, 0xFF, 0xFF, 0xFF];
        c.extend_from_slice(b"1.2.840.10008.5.1.4.1.1.2\0");
        let e = Command::parse(&c).unwrap_err();
        assert!(e.to_string().contains("declares 4294967280 bytes"), "{e}");
        assert!(response_status(&c).is_err());
        assert!(Command::parse_response_field(&c).is_none());
    }

    #[test]
    fn store_roundtrip() {
        let rq = store_request(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3").unwrap();
        let c = Command::parse(&rq).unwrap();
        assert_eq!(
            (c.field, c.message_id, c.has_dataset),
            (field::C_STORE_RQ, 7, true)
        );
        assert_eq!(c.sop_instance_uid, "1.2.3");
        let rsp = store_response(
            7,
            &c.sop_class_uid,
            "1.2.3",
            status::CANNOT_UNDERSTAND,
            Some("bad\\thing"),
        )
        .unwrap();
        let (st, comment) = response_status(&rsp).unwrap();
        assert_eq!(st, 0xC000);
        assert_eq!(comment.as_deref(), Some("badthing"));
    }
}
