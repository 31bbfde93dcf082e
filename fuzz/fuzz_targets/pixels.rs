//! Pixel decoding as the worker and the admin upload run it: a DICOM Part 10 file (with or
//! without its preamble) parsed by dicom-object (`admin::masks::parse_dicom`), its declared
//! size checked against a budget (`dicom::pixels::check_budget`, 64 MiB here), then every
//! frame decoded (`dicom::pixels::frames_from_object`).
#![no_main]

#[global_allocator]
static ALLOC: proxyseg_fuzz::Capped = proxyseg_fuzz::Capped;

use libfuzzer_sys::fuzz_target;
use proxyseg::admin::masks::parse_dicom;
use proxyseg::dicom::pixels;

const BUDGET: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = parse_dicom(data) else {
        return;
    };
    if pixels::check_budget(&obj, BUDGET).is_err() {
        return;
    }
    let _ = pixels::frames_from_object(&obj);
});
