//! The SEG reader (`dicom::seg::read_seg`) on a DICOM Part 10 file (with or without its
//! preamble) parsed the way the admin upload of support-set masks parses it
//! (`admin::masks::parse_dicom`).
#![no_main]

#[global_allocator]
static ALLOC: proxyseg_fuzz::Capped = proxyseg_fuzz::Capped;

use libfuzzer_sys::fuzz_target;
use proxyseg::admin::masks::parse_dicom;
use proxyseg::dicom::seg::read_seg;

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = parse_dicom(data) else {
        return;
    };
    if let Ok(m) = read_seg(&obj) {
        let plane = usize::from(m.rows) * usize::from(m.columns);
        for masks in m.masks.values() {
            for mask in masks.values() {
                assert_eq!(mask.len(), plane);
            }
        }
    }
});
