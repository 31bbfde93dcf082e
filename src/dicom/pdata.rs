//! Receiving PDUs on an accepted association with P-DATA read in place.
//!
//! dicom-ul's `receive` copies every presentation data value twice (out of the read buffer,
//! then into a `Vec` of its own): for a 0.5 MB instance that is two extra copies and 16
//! allocations. Here a complete P-DATA-TF PDU is split off the association's read buffer and
//! each PDV's data is a slice of it. Every other PDU type is left to dicom-ul.

use bytes::{Buf, Bytes, BytesMut};
use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// PDU type of P-DATA-TF.
const P_DATA_TF: u8 = 0x04;

/// Most presentation data values accepted in one P-DATA-TF PDU. Senders put one (sometimes a
/// command and its data set: two) in each PDU; a PDU of thousands of empty PDVs would cost
/// about 7 times its size in [`Pdv`] records (review finding L4).
pub const MAX_PDVS_PER_PDU: usize = 1024;

/// One presentation data value; `data` shares the received PDU's bytes.
#[derive(Debug, Clone)]
pub struct Pdv {
    /// Presentation context ID.
    pub presentation_context_id: u8,
    /// Command or data set fragment.
    pub value_type: PDataValueType,
    /// Last fragment of its command or data set.
    pub is_last: bool,
    /// The fragment.
    pub data: Bytes,
}

impl From<PDataValue> for Pdv {
    fn from(v: PDataValue) -> Pdv {
        Pdv {
            presentation_context_id: v.presentation_context_id,
            value_type: v.value_type,
            is_last: v.is_last,
            data: Bytes::from(v.data),
        }
    }
}

/// What [`receive`] got.
#[derive(Debug)]
pub enum Received {
    /// The PDVs of one P-DATA-TF PDU.
    PData(Vec<Pdv>),
    /// Any other PDU, as dicom-ul decoded it.
    Other(Pdu),
}

/// Why [`receive`] failed; the association cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A P-DATA-TF PDU larger than the maximum we announced.
    #[error("P-DATA-TF of {len} bytes exceeds the negotiated maximum of {max}")]
    TooLarge {
        /// Its declared length.
        len: usize,
        /// Our maximum PDU length.
        max: usize,
    },
    /// A PDV item whose length does not fit its PDU.
    #[error("malformed P-DATA-TF: {0}")]
    Malformed(&'static str),
    /// More PDVs in one PDU than [`MAX_PDVS_PER_PDU`].
    #[error("P-DATA-TF holds more than {MAX_PDVS_PER_PDU} presentation data values")]
    TooManyPdvs,
    /// The peer closed the connection between or inside PDUs.
    #[error("connection closed by the peer")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the socket: {0}")]
    Io(#[from] std::io::Error),
    /// dicom-ul could not read another PDU type.
    #[error("{0}")]
    Ul(#[from] dicom_ul::association::Error),
}

/// Receives the next PDU. Cancel-safe: bytes already read stay in the association's buffer.
pub async fn receive<A, S>(assoc: &mut A, max_pdu: u32) -> Result<Received, ReceiveError>
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let (socket, buf) = assoc.get_mut();
        if buf.len() >= 6 && buf[0] != P_DATA_TF {
            break;
        }
        if let Some(pdvs) = take_pdvs(buf, max_pdu as usize)? {
            return Ok(Received::PData(pdvs));
        }
        // Room for the rest of this PDU (or a whole one when its header is still missing).
        let want = if buf.len() >= 6 {
            6 + be_u32(&buf[2..6]) as usize - buf.len()
        } else {
            64 * 1024
        };
        buf.reserve(want);
        if socket.read_buf(buf).await? == 0 {
            return Err(ReceiveError::Closed);
        }
    }
    Ok(Received::Other(AsyncAssociation::receive(assoc).await?))
}

/// The pure part of [`receive`]: when `buf` (the bytes received so far, starting with a
/// P-DATA-TF PDU's header) holds a complete P-DATA-TF PDU, splits it off the front of `buf` and
/// returns its presentation data values; `Ok(None)` while it is incomplete. A PDU longer than
/// `max` (our maximum PDU length), a PDV whose length does not fit its PDU, or more than
/// [`MAX_PDVS_PER_PDU`] PDVs is an error. The PDU type byte is not checked.
pub fn take_pdvs(buf: &mut BytesMut, max: usize) -> Result<Option<Vec<Pdv>>, ReceiveError> {
    match take_pdata(buf, max)? {
        Some(pdu) => split_pdvs(pdu).map(Some),
        None => Ok(None),
    }
}

/// Splits a complete P-DATA-TF PDU (header included) off the front of `buf`, if there is one.
fn take_pdata(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, ReceiveError> {
    if buf.len() < 6 {
        return Ok(None);
    }
    let len = be_u32(&buf[2..6]) as usize;
    if len > max {
        return Err(ReceiveError::TooLarge { len, max });
    }
    if buf.len() < 6 + len {
        return Ok(None);
    }
    let mut pdu = buf.split_to(6 + len).freeze();
    pdu.advance(6);
    Ok(Some(pdu))
}

/// The PDV items of a P-DATA-TF body: 4-byte length, context ID, message control header,
/// then the fragment.
fn split_pdvs(mut body: Bytes) -> Result<Vec<Pdv>, ReceiveError> {
    let mut pdvs = Vec::with_capacity(1);
    while !body.is_empty() {
        if body.len() < 4 {
            return Err(ReceiveError::Malformed("PDV item header cut short"));
        }
        let len = be_u32(&body[..4]) as usize;
        body.advance(4);
        if len < 2 || len > body.len() {
            return Err(ReceiveError::Malformed("PDV item length outside its PDU"));
        }
        if pdvs.len() == MAX_PDVS_PER_PDU {
            return Err(ReceiveError::TooManyPdvs);
        }
        let mut item = body.split_to(len);
        let (presentation_context_id, header) = (item[0], item[1]);
        item.advance(2);
        pdvs.push(Pdv {
            presentation_context_id,
            value_type: if header & 1 == 1 {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: header & 2 == 2,
            data: item,
        });
    }
    Ok(pdvs)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pc: u8, header: u8, data: &[u8]) -> Vec<u8> {
        let mut v = ((data.len() + 2) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&[pc, header]);
        v.extend_from_slice(data);
        v
    }

    fn pdu(body: &[u8]) -> Vec<u8> {
        let mut v = vec![P_DATA_TF, 0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn pdvs_are_sliced_out_of_complete_pdus_only() {
        let mut body = item(1, 0b01, b"cmd");
        body.extend(item(3, 0b10, b"last data"));
        let wire = pdu(&body);
        let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
        assert!(take_pdata(&mut buf, 1 << 16).unwrap().is_none());
        buf.extend_from_slice(&wire[wire.len() - 1..]);
        buf.extend_from_slice(&[7, 0]); // the start of the next PDU stays
        let pdvs = split_pdvs(take_pdata(&mut buf, 1 << 16).unwrap().unwrap()).unwrap();
        assert_eq!(&buf[..], &[7, 0]);
        let got: Vec<_> = pdvs
            .iter()
            .map(|p| {
                let kind = p.value_type.clone();
                (p.presentation_context_id, kind, p.is_last, &p.data[..])
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, PDataValueType::Command, false, &b"cmd"[..]),
                (3, PDataValueType::Data, true, &b"last data"[..]),
            ]
        );
    }

    #[test]
    fn take_pdvs_waits_for_a_whole_pdu_then_splits_it() {
        let wire = pdu(&item(5, 0b11, b"command"));
        let mut buf = BytesMut::from(&wire[..4]);
        assert!(take_pdvs(&mut buf, 1 << 16).unwrap().is_none());
        buf = BytesMut::from(&wire[..]);
        let pdvs = take_pdvs(&mut buf, 1 << 16).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(pdvs.len(), 1);
        assert_eq!(
            (pdvs[0].presentation_context_id, pdvs[0].is_last),
            (5, true)
        );
        assert_eq!(&pdvs[0].data[..], b"command");
        let mut big = BytesMut::from(&pdu(&[0; 100])[..]);
        assert!(matches!(
            take_pdvs(&mut big, 64),
            Err(ReceiveError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut buf = BytesMut::from(&pdu(&[0; 100])[..]);
        assert!(matches!(
            take_pdata(&mut buf, 64),
            Err(ReceiveError::TooLarge { len: 100, max: 64 })
        ));
        for body in [
            vec![0, 0, 0],                // item header cut short
            vec![0, 0, 0, 1, 1],          // item length 1 < 2
            vec![0, 0, 0, 9, 1, 2, 3, 4], // item longer than the PDU
        ] {
            assert!(
                matches!(
                    split_pdvs(Bytes::from(body.clone())),
                    Err(ReceiveError::Malformed(_))
                ),
                "{body:?}"
            );
        }
        assert!(split_pdvs(Bytes::new()).unwrap().is_empty());
        // Empty PDVs (6 bytes each): at most MAX_PDVS_PER_PDU of them.
        let many =
            |n: usize| Bytes::from((0..n).flat_map(|_| item(1, 0, b"")).collect::<Vec<u8>>());
        assert_eq!(
            split_pdvs(many(MAX_PDVS_PER_PDU)).unwrap().len(),
            MAX_PDVS_PER_PDU
        );
        assert!(matches!(
            split_pdvs(many(MAX_PDVS_PER_PDU + 1)),
            Err(ReceiveError::TooManyPdvs)
        ));
    }
}
