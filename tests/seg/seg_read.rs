//! Reading SEGs with `dicom::seg::read_seg`: highdicom-written SEGs (BINARY and FRACTIONAL, with
//! and without omitted frames) give back the masks they were written from; bad input gives typed
//! errors; writing is deterministic; an all-empty SEG with omitted frames stays valid.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::seg::*;
use crate::harness::{python, require_tool, root, run_cmd};
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use proxyseg::dicom::seg::{
    bitpack, read_seg, save_seg, write_seg, SegError, SegInput, SegMasks, SourceImage,
};

/// Every key's masks in `read` equal the ones `case` wrote (absent = empty).
fn assert_masks_match(read: &SegMasks, case: &Case, what: &str) {
    let flat: Vec<&Vec<Vec<u8>>> = case.masks.iter().flatten().collect();
    assert_eq!(flat.len(), case.keys.len());
    for ((uid, frame, _), per_seg) in case.keys.iter().zip(flat) {
        for (s, m) in per_seg.iter().enumerate() {
            let got = read.mask_or_empty(uid, *frame, s as u16 + 1);
            assert!(
                got == *m,
                "{what}: mask differs for {uid} frame {frame} segment {}",
                s + 1
            );
        }
    }
}

/// Runs the highdicom writer helper.
fn highdicom_seg(case: &Case, out: &PathBuf, kind: &str, omit: bool) {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/make_highdicom_seg.py"))
        .arg(&case.manifest)
        .arg(out)
        .arg(kind);
    if omit {
        cmd.arg("omit");
    }
    let o = run_cmd(&mut cmd);
    assert!(
        o.status.success(),
        "highdicom could not write {}: {}",
        out.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn highdicom_written_segs_read_back_into_the_same_masks() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    // highdicom 0.28 refuses multi-frame sources without a frame of reference (US cine, the
    // OP fundus), so its SEGs are made from the CT and MR sources.
    let kinds: Vec<(&str, Vec<PathBuf>)> = vec![
        ("ct_small", vec![sources.ct_small.clone()]),
        ("mr_small", vec![sources.mr_small.clone()]),
        ("ct5", sources.ct5.clone()),
        ("enhanced_ct", vec![sources.enhanced_ct.clone()]),
    ];
    for (kind, files) in kinds {
        for nseg in [1, 3] {
            // Sparse masks, so that highdicom's omit_empty_frames drops some frames.
            let case = write_case(dir.path(), &format!("{kind}-{nseg}"), &files, nseg, true);
            for (seg_type, omit) in [("BINARY", false), ("BINARY", true), ("FRACTIONAL", false)] {
                let what = format!("highdicom {seg_type} omit={omit} {}", case.name);
                let out = dir
                    .path()
                    .join(format!("{}-hd-{seg_type}-{omit}.dcm", case.name));
                highdicom_seg(&case, &out, seg_type, omit);
                let read = read_seg(&open(&out)).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(read.segments.len(), nseg, "{what}");
                assert_eq!(read.segments[0].description.label, "Liver", "{what}");
                assert_eq!(
                    read.segments[0].description.type_.value, "10200004",
                    "{what}"
                );
                assert_masks_match(&read, &case, &what);
            }
        }
    }
}

/// The CT5 volume with 3 segments, written with `omit` and all-empty masks when `empty`.
fn ct5_seg(
    sources: &Sources,
    omit: bool,
    empty: bool,
) -> (DefaultDicomObject, Vec<DefaultDicomObject>) {
    let files: Vec<DefaultDicomObject> = sources.ct5.iter().map(|p| open(p)).collect();
    let objs: Vec<&InMemDicomObject> = files.iter().map(|f| &**f).collect();
    let mut masks = make_masks(&objs, 3, false);
    if empty {
        masks.iter_mut().flatten().flatten().for_each(|m| m.fill(0));
    }
    let input = SegInput {
        segments: segments(3),
        sources: objs
            .iter()
            .zip(&masks)
            .map(|(ds, m)| SourceImage {
                dataset: ds,
                masks: m
                    .iter()
                    .map(|f| f.iter().map(|v| v.as_slice()).collect())
                    .collect(),
            })
            .collect(),
    };
    let seg = write_seg(&input, &options("ct5-det", omit)).expect("write");
    drop(input);
    (seg, files)
}

#[test]
fn rewriting_the_same_job_gives_the_same_bytes() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    let (a, _) = ct5_seg(&sources, false, false);
    let (b, _) = ct5_seg(&sources, false, false);
    let (pa, pb) = (dir.path().join("a.dcm"), dir.path().join("b.dcm"));
    save_seg(&a, &pa).expect("save a");
    save_seg(&b, &pb).expect("save b");
    let (ba, bb) = (
        std::fs::read(&pa).expect("a"),
        std::fs::read(&pb).expect("b"),
    );
    assert_eq!(ba, bb, "two writes of the same job differ");
    assert_eq!(&ba[128..132], b"DICM", "not a Part 10 file");
    // 5 slices x 3 segments of 128x128, bit-packed: 2048 bytes per frame.
    let pixel = a
        .get(tags::PIXEL_DATA)
        .expect("PixelData")
        .to_bytes()
        .expect("bytes");
    assert_eq!(pixel.len() as u64, bitpack::packed_len(128 * 128, 15));
    assert_eq!(pixel.len(), 15 * 2048);
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn all_empty_masks_with_omit_keep_one_valid_frame() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    let (seg, _) = ct5_seg(&sources, true, true);
    let path = dir.path().join("empty.dcm");
    save_seg(&seg, &path).expect("save");
    let frames = seg
        .get(tags::NUMBER_OF_FRAMES)
        .expect("NumberOfFrames")
        .to_int::<u32>()
        .expect("int");
    assert_eq!(frames, 1, "an all-empty SEG keeps exactly one frame");
    require_tool("dciodvfy");
    let out = run_cmd(Command::new("dciodvfy").arg(&path));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("Error"),
        "dciodvfy rejects the all-empty SEG:\n{text}"
    );
    let read = read_seg(&seg).expect("read");
    assert_eq!(read.segments.len(), 3);
    for masks in read.masks.values() {
        for m in masks.values() {
            assert!(m.iter().all(|&b| b == 0));
        }
    }
}

/// Replaces a sequence's items.
fn put_items(obj: &mut InMemDicomObject, tag: dicom_core::Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

#[test]
fn bad_segs_give_typed_errors() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));

    let ct = open(&sources.ct_small);
    assert!(
        matches!(read_seg(&ct), Err(SegError::NotSeg(_))),
        "a CT is not a SEG"
    );

    let (seg, _) = ct5_seg(&sources, false, false);

    let mut short = seg.clone();
    short.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![0u8; 1000]),
    ));
    match read_seg(&short) {
        Err(SegError::PixelDataTooShort { got: 1000, need }) => assert_eq!(need, 15 * 2048),
        other => panic!("short pixel data: {other:?}"),
    }

    let mut out_of_range = seg.clone();
    let mut frames = out_of_range
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .expect("per-frame items")
        .to_vec();
    let mut ident = InMemDicomObject::new_empty();
    ident.put(DataElement::new(
        tags::REFERENCED_SEGMENT_NUMBER,
        VR::US,
        PrimitiveValue::from(4u16),
    ));
    put_items(
        &mut frames[2],
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![ident],
    );
    put_items(
        &mut out_of_range,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        frames,
    );
    match read_seg(&out_of_range) {
        Err(SegError::SegmentOutOfRange {
            frame: 3,
            segment: 4,
            count: 3,
        }) => {}
        other => panic!("segment 4 of 3: {other:?}"),
    }

    let mut no_segments = seg.clone();
    no_segments.remove_element(tags::SEGMENT_SEQUENCE);
    assert!(matches!(
        read_seg(&no_segments),
        Err(SegError::Missing("SegmentSequence"))
    ));

    let mut no_rows = seg.clone();
    no_rows.remove_element(tags::ROWS);
    assert!(matches!(read_seg(&no_rows), Err(SegError::Missing("Rows"))));

    let mut labelmap = seg.clone();
    labelmap.put(DataElement::new(
        tags::SEGMENTATION_TYPE,
        VR::CS,
        PrimitiveValue::from("LABELMAP"),
    ));
    assert!(matches!(read_seg(&labelmap), Err(SegError::Unsupported(_))));

    let mut wrong_frames = seg.clone();
    wrong_frames.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("14"),
    ));
    assert!(matches!(
        read_seg(&wrong_frames),
        Err(SegError::BadValue {
            attribute: "PerFrameFunctionalGroupsSequence",
            ..
        })
    ));
}

#[test]
fn bad_input_gives_typed_errors() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    let ct = open(&sources.ct_small);
    let mr = open(&sources.mr_small);
    let full = vec![1u8; 128 * 128];
    let short = vec![1u8; 100];
    let opts = options("errors", false);

    let wrong_size = SegInput {
        segments: segments(1),
        sources: vec![SourceImage {
            dataset: &ct,
            masks: vec![vec![short.as_slice()]],
        }],
    };
    assert!(matches!(
        write_seg(&wrong_size, &opts),
        Err(SegError::InvalidInput(_))
    ));

    let wrong_count = SegInput {
        segments: segments(3),
        sources: vec![SourceImage {
            dataset: &ct,
            masks: vec![vec![full.as_slice()]],
        }],
    };
    assert!(matches!(
        write_seg(&wrong_count, &opts),
        Err(SegError::InvalidInput(_))
    ));

    let no_segments = SegInput {
        segments: vec![],
        sources: vec![SourceImage {
            dataset: &ct,
            masks: vec![vec![]],
        }],
    };
    assert!(matches!(
        write_seg(&no_segments, &opts),
        Err(SegError::InvalidInput(_))
    ));

    let good = SegInput {
        segments: segments(1),
        sources: vec![SourceImage {
            dataset: &ct,
            masks: vec![vec![full.as_slice()]],
        }],
    };
    let mut bad_uid = opts.clone();
    bad_uid.sop_instance_uid = "1.2.abc".into();
    assert!(matches!(
        write_seg(&good, &bad_uid),
        Err(SegError::InvalidOption {
            name: "sop_instance_uid",
            ..
        })
    ));
    let mut bad_label = opts.clone();
    bad_label.content_label = "lower case".into();
    assert!(matches!(
        write_seg(&good, &bad_label),
        Err(SegError::InvalidOption {
            name: "content_label",
            ..
        })
    ));
    let mut long_version = opts.clone();
    long_version.algorithm_version = "v".repeat(65);
    assert!(matches!(
        write_seg(&good, &long_version),
        Err(SegError::InvalidOption {
            name: "algorithm_version",
            ..
        })
    ));

    // CT and MR of different studies cannot share one SEG.
    let mr_mask = vec![1u8; 64 * 64];
    let mixed = SegInput {
        segments: segments(1),
        sources: vec![
            SourceImage {
                dataset: &ct,
                masks: vec![vec![full.as_slice()]],
            },
            SourceImage {
                dataset: &mr,
                masks: vec![vec![mr_mask.as_slice()]],
            },
        ],
    };
    match write_seg(&mixed, &opts) {
        Err(SegError::InvalidInput(why)) => assert!(why.contains("study"), "{why}"),
        other => panic!("mixed studies: {other:?}"),
    }

    // Two slices of one volume with different orientations.
    let a = open(&sources.ct5[0]);
    let mut b = open(&sources.ct5[1]);
    b.put(DataElement::new(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(
            ["0", "1", "0", "0", "0", "-1"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
    ));
    let tilted = SegInput {
        segments: segments(1),
        sources: vec![
            SourceImage {
                dataset: &a,
                masks: vec![vec![full.as_slice()]],
            },
            SourceImage {
                dataset: &b,
                masks: vec![vec![full.as_slice()]],
            },
        ],
    };
    assert!(matches!(
        write_seg(&tilted, &opts),
        Err(SegError::InconsistentGeometry(_))
    ));

    // A source without a Study Instance UID.
    let mut anonymous = open(&sources.ct_small);
    anonymous.remove_element(tags::STUDY_INSTANCE_UID);
    let orphan = SegInput {
        segments: segments(1),
        sources: vec![SourceImage {
            dataset: &anonymous,
            masks: vec![vec![full.as_slice()]],
        }],
    };
    assert!(matches!(
        write_seg(&orphan, &opts),
        Err(SegError::SourceMissing {
            index: 0,
            attribute: "StudyInstanceUID"
        })
    ));
}

#[test]
fn frames_without_source_references_fall_back_to_frame_order() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    let case = write_case(
        dir.path(),
        "us-noref",
        std::slice::from_ref(&sources.us_cine),
        3,
        false,
    );
    let mut seg = open(&case.seg);
    let frames: Vec<InMemDicomObject> = seg
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .expect("per-frame items")
        .iter()
        .cloned()
        .map(|mut item| {
            item.remove_element(tags::DERIVATION_IMAGE_SEQUENCE);
            item
        })
        .collect();
    put_items(&mut seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames);
    // The top-level Source Image Sequence still names the one US instance: frames of each
    // segment are then that instance's frames 1, 2, ... in order.
    let read = read_seg(&seg).expect("read");
    assert_masks_match(&read, &case, "US cine without per-frame references");

    // With no reference at all, masks are keyed by their order within the segment.
    seg.remove_element(tags::SOURCE_IMAGE_SEQUENCE);
    seg.remove_element(tags::REFERENCED_SERIES_SEQUENCE);
    let read = read_seg(&seg).expect("read");
    let flat: Vec<&Vec<Vec<u8>>> = case.masks.iter().flatten().collect();
    for (f, per_seg) in flat.iter().enumerate() {
        for (s, m) in per_seg.iter().enumerate() {
            let key = proxyseg::dicom::seg::SourceKey {
                sop_instance_uid: None,
                frame_number: f as u32 + 1,
            };
            assert_eq!(
                read.masks[&key][&(s as u16 + 1)],
                *m,
                "frame {} segment {}",
                f + 1,
                s + 1
            );
        }
    }
}

#[test]
fn long_snomed_code_value_is_valid_and_reads_back() {
    let dir = test_dir();
    let sources = make_sources(&dir.path().join("sources"));
    let ct = open(&sources.ct_small);
    let mask = pattern(128, 128, 0, 0, false);
    let mut segs = segments(1);
    segs[0].type_ = proxyseg::dicom::seg::Code::sct("999000011000000100", "Extension concept");
    let input = SegInput {
        segments: segs,
        sources: vec![SourceImage {
            dataset: &ct,
            masks: vec![vec![mask.as_slice()]],
        }],
    };
    let seg = write_seg(&input, &options("long-code", false)).expect("write");
    let path = dir.path().join("long-code.dcm");
    save_seg(&seg, &path).expect("save");
    require_tool("dciodvfy");
    let out = run_cmd(Command::new("dciodvfy").arg(&path));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("Error"),
        "dciodvfy rejects a Long Code Value:\n{text}"
    );
    let read = read_seg(&seg).expect("read");
    assert_eq!(
        read.segments[0].description.type_.value,
        "999000011000000100"
    );
    assert_eq!(
        read.mask(
            ct.get(tags::SOP_INSTANCE_UID)
                .expect("uid")
                .to_str()
                .expect("uid")
                .trim_end_matches('\0'),
            1,
            1
        ),
        Some(mask.as_slice())
    );
}
