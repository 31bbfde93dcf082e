//! SEGs written by `dicom::seg::write_seg`, checked with the real tools: dciodvfy (IOD),
//! dcentvfy (consistency with the sources), highdicom (masks in the right frames and positions),
//! dcmdump (coded segment descriptions), dcm2pnm (frames render), and our own read_seg.
//! Each source kind is written with 1 and 3 segments, with omit_empty_frames off and on.

use std::path::PathBuf;

use crate::harness::seg::*;

/// Writes the four variants of one source kind and runs every check on them.
fn check_source_kind(kind: &str, pick: impl Fn(&Sources) -> Vec<PathBuf>) {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    let files = pick(&sources);
    let mut cases = Vec::new();
    for nseg in [1, 3] {
        for omit in [false, true] {
            let name = format!("{kind}-{nseg}seg-{}", if omit { "omit" } else { "full" });
            cases.push(write_case(dir.path(), &name, &files, nseg, omit));
        }
    }
    for case in &cases {
        assert_dciodvfy(case);
        assert_dcentvfy(case);
        assert_read_back(case);
        assert_dcmdump_codes(case);
        assert_dcm2pnm(case, dir.path());
    }
    assert_highdicom(&cases.iter().collect::<Vec<_>>());
    // The sparse variants really dropped frames, the full ones kept all.
    for case in &cases {
        let all: usize = case.masks.iter().flatten().flatten().count();
        if case.name.ends_with("full") {
            assert_eq!(case.frames, all, "{}", case.name);
        }
    }
}

#[test]
fn ct_small_seg_is_valid_and_reads_back() {
    check_source_kind("ct_small", |s| vec![s.ct_small.clone()]);
}

#[test]
fn mr_small_seg_is_valid_and_reads_back() {
    check_source_kind("mr_small", |s| vec![s.mr_small.clone()]);
}

#[test]
fn ct_volume_seg_is_valid_sorted_and_reads_back() {
    check_source_kind("ct5", |s| s.ct5.clone());
}

#[test]
fn enhanced_ct_multiframe_volume_seg_is_valid_sorted_and_reads_back() {
    check_source_kind("enhanced_ct", |s| vec![s.enhanced_ct.clone()]);
}

#[test]
fn rgb_fundus_seg_is_valid_and_reads_back() {
    check_source_kind("fundus", |s| vec![s.fundus.clone()]);
}

#[test]
fn us_multiframe_seg_is_valid_and_reads_back() {
    check_source_kind("us_cine", |s| vec![s.us_cine.clone()]);
}

#[test]
fn latin1_patient_name_is_kept_in_the_source_character_set() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    let case = write_case(
        dir.path(),
        "latin1",
        std::slice::from_ref(&sources.ct_latin1),
        1,
        false,
    );
    assert_dciodvfy(&case);
    // dcentvfy compares Patient's Name byte for byte with the source's.
    assert_dcentvfy(&case);
    let bytes = std::fs::read(&case.seg).expect("read SEG");
    let latin1: &[u8] = b"M\xfcller^J\xf6rg";
    assert!(
        bytes.windows(latin1.len()).any(|w| w == latin1),
        "the SEG does not hold the ISO 8859-1 encoded patient name"
    );
    assert!(
        bytes.windows(10).any(|w| w == b"ISO_IR 100"),
        "Specific Character Set not copied"
    );
}
