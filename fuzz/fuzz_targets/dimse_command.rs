//! A complete command set as the SCP reassembles it from command PDVs (at most 64 KiB):
//! `dimse::Command::parse` (requests), and the SCU's response readers.
#![no_main]

#[global_allocator]
static ALLOC: proxyseg_fuzz::Capped = proxyseg_fuzz::Capped;

use libfuzzer_sys::fuzz_target;
use proxyseg::dicom::dimse;

fuzz_target!(|data: &[u8]| {
    // The SCP aborts an association whose command set grows past 64 KiB before parsing it.
    if data.len() > 64 * 1024 {
        return;
    }
    if let Ok(cmd) = dimse::Command::parse(data) {
        // What the SCP sends back (an encoding error ends the association, no panic).
        dimse::store_response(
            cmd.message_id,
            &cmd.sop_class_uid,
            &cmd.sop_instance_uid,
            dimse::status::CANNOT_UNDERSTAND,
            Some("fuzz"),
        )
        .ok();
    }
    let _ = dimse::response_status(data);
    let _ = dimse::Command::parse_response_field(data);
});
