//! The bytes an association receives after it was accepted, and the A-ASSOCIATE-RQ before:
//! PDU after PDU as `dicom::pdata::receive` reads them. P-DATA-TF PDUs are split by our
//! `take_pdvs`; every other PDU type goes to dicom-ul's reader with the acceptor's maximum PDU
//! length (`dicom.max_pdu`, default 65536) and `strict` as the SCP negotiates it.
#![no_main]

#[global_allocator]
static ALLOC: proxyseg_fuzz::Capped = proxyseg_fuzz::Capped;

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use proxyseg::dicom::pdata;

/// `dicom.max_pdu`'s default.
const MAX_PDU: u32 = 65536;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // At most as many PDUs as 6-byte headers fit in the input: every step consumes bytes or
    // stops.
    loop {
        if buf.len() < 6 {
            break;
        }
        if buf[0] == 0x04 {
            match pdata::take_pdvs(&mut buf, MAX_PDU as usize) {
                Ok(Some(pdvs)) => {
                    for p in &pdvs {
                        assert!(p.data.len() <= MAX_PDU as usize);
                    }
                    continue;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut cursor = std::io::Cursor::new(&buf[..]);
        match dicom_ul::pdu::read_pdu(&mut cursor, MAX_PDU, true) {
            Ok(Some(pdu)) => {
                let used = cursor.position() as usize;
                assert!(used >= 6, "a PDU of {used} bytes");
                let _ = pdu.short_description();
                buf.advance(used);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
