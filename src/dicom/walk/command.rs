//! The command set of a DIMSE message (PS3.7 6.3), split into its elements by a bounded
//! parser: every declared length must fit in the bytes received.

use super::WalkError;
use dicom_core::Tag;

/// The command set elements (PS3.7 6.3: group 0000, Implicit VR Little Endian), each tag with
/// its value, parsed without allocating from any declared length: each must fit in `bytes`.
pub fn command_elements(bytes: &[u8]) -> Result<Vec<(Tag, &[u8])>, WalkError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(WalkError::Malformed(
                "command set ends inside an element header".into(),
            ));
        }
        let tag = Tag(
            u16::from_le_bytes([rest[0], rest[1]]),
            u16::from_le_bytes([rest[2], rest[3]]),
        );
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        rest = &rest[8..];
        if len as u64 > rest.len() as u64 {
            return Err(WalkError::Overrun {
                tag,
                declared: len,
                left: rest.len() as u64,
            });
        }
        let (value, next) = rest.split_at(len as usize);
        out.push((tag, value));
        rest = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_elements_must_fit() {
        let mut c = vec![0, 0, 0x00, 0x01, 2, 0, 0, 0, 0x30, 0];
        let els = command_elements(&c).unwrap();
        assert_eq!(els, vec![(Tag(0, 0x0100), &[0x30u8, 0][..])]);
        c.extend([0, 0, 2, 0, 0xF0, 0xFF, 0xFF, 0xFF, b'1']);
        assert!(matches!(
            command_elements(&c),
            Err(WalkError::Overrun {
                declared: 0xFFFF_FFF0,
                left: 1,
                ..
            })
        ));
        assert!(command_elements(&c[..13]).is_err());
    }
}
