//! Tests of [`walk`](super::walk) over hand-built data sets: lengths, sequences, kept elements,
//! pixel headers, caps, and the fuzzing regressions of the walk.

use super::*;

pub(super) const EXPLICIT: Encoding = Encoding {
    explicit: true,
    big_endian: false,
};
const IMPLICIT: Encoding = Encoding {
    explicit: false,
    big_endian: false,
};

pub(super) fn el(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut v = group.to_le_bytes().to_vec();
    v.extend(elem.to_le_bytes());
    v.extend(vr);
    if matches!(vr, b"OB" | b"SQ" | b"UT" | b"UN" | b"OW") {
        v.extend([0, 0]);
        v.extend((value.len() as u32).to_le_bytes());
    } else {
        v.extend((value.len() as u16).to_le_bytes());
    }
    v.extend(value);
    v
}

fn item_hdr(tag: Tag, len: u32) -> Vec<u8> {
    let mut v = tag.0.to_le_bytes().to_vec();
    v.extend(tag.1.to_le_bytes());
    v.extend(len.to_le_bytes());
    v
}

fn run(bytes: &[u8], enc: Encoding) -> Result<Walked, WalkError> {
    walk(bytes, enc, Some(bytes.len() as u64), u64::MAX, INGEST_TAGS)
}

/// Fuzzing regression (fuzz/dataset_validate, pydicom's UN_sequence.dcm): an undefined-length
/// UN whose item holds Implicit VR elements, as PS3.5 6.2.2 has it. dicom-parser reads the
/// item in the data set's Explicit VR, where `(0008,1115)`'s length bytes read as a VR and
/// its value's first bytes as a 4-byte length (here 0xE000FFFE: the parser reserved and
/// zeroed 3.7 GB). The walk reads it as the parser does, so the data set is refused.
#[test]
fn an_undefined_length_un_is_walked_as_the_parser_reads_it() {
    let mut inner = Vec::new(); // Implicit VR: (0008,1150) UI, 4 bytes
    inner.extend(item_hdr(Tag(0x0008, 0x1150), 4));
    inner.extend(b"1.2\0");
    let mut implicit_item = Vec::new(); // (0008,1115) of undefined length, then its item
    implicit_item.extend(item_hdr(Tag(0x0008, 0x1115), UNDEFINED));
    implicit_item.extend(item_hdr(ITEM, UNDEFINED));
    implicit_item.extend(&inner);
    implicit_item.extend(item_hdr(ITEM_DELIMITER, 0));
    implicit_item.extend(item_hdr(SEQUENCE_DELIMITER, 0));
    let un = |content: &[u8]| {
        let mut ds = vec![
            0x53, 0x44, 0x0C, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        ds.extend(item_hdr(ITEM, UNDEFINED));
        ds.extend(content);
        ds.extend(item_hdr(ITEM_DELIMITER, 0));
        ds.extend(item_hdr(SEQUENCE_DELIMITER, 0));
        ds.extend(el(0x0008, 0x0060, b"CS", b"OT"));
        ds
    };
    assert!(run(&un(&implicit_item), EXPLICIT).is_err());
    // The same content in Explicit VR is walked (and kept elements after it are found).
    let mut explicit_item = el(0x0008, 0x1150, b"UI", b"1.2\0");
    explicit_item.extend(el(0x0009, 0x0010, b"LO", b"ACME"));
    let w = run(&un(&explicit_item), EXPLICIT).unwrap();
    assert_eq!(w.kept, el(0x0008, 0x0060, b"CS", b"OT"));
    // Any other undefined-length element is a sequence too, never opaque fragments: an
    // item of an undefined-length OB holding an element that overruns it is refused.
    let mut ob = vec![
        0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    let bad = el(0x0009, 0x1011, b"OB", &[1, 2, 3, 4]);
    ob.extend(item_hdr(ITEM, bad.len() as u32 - 2));
    ob.extend(&bad[..bad.len() - 2]);
    ob.extend(item_hdr(SEQUENCE_DELIMITER, 0));
    assert!(run(&ob, EXPLICIT).is_err());
}

/// Fuzzing regression (fuzz/dataset_validate, a mutated highdicom SEG in Implicit VR): a
/// UL of 6 bytes. dicom-parser reads one value (4 bytes) but counts 6, so it read the next
/// header 2 bytes early, and the text after it as a length of 892 219 484 bytes, which it
/// reserved and zeroed. A binary value of a length that is not a whole number of values is
/// refused unless nothing follows it.
#[test]
fn a_binary_value_of_a_partial_length_must_end_the_data_set() {
    let mut ds = item_hdr(Tag(0x0000, 0x0000), 6); // implicit: UL by the dictionary
    ds.extend(b"CT_SEG");
    let last = run(&ds, IMPLICIT).unwrap();
    assert_eq!(last.length, 14);
    ds.extend(item_hdr(Tag(0x0070, 0x0081), 0));
    let e = run(&ds, IMPLICIT).unwrap_err();
    assert!(
        e.to_string().contains("not a whole number of values"),
        "{e}"
    );
    assert!(e.to_string().len() <= 64, "{e}");
    // Explicit VR: the header's VR decides; US of 3 bytes inside an item.
    let us = el(0x0028, 0x0010, b"US", &[1, 0, 0]);
    let mut item = us.clone();
    item.extend(el(0x0008, 0x0060, b"CS", b"OT"));
    let mut sq = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0];
    sq.extend(((item.len() + 8) as u32).to_le_bytes());
    sq.extend(item_hdr(ITEM, item.len() as u32));
    sq.extend(&item);
    assert!(run(&sq, EXPLICIT).is_err());
    // A string of odd length is read whole: not affected.
    let mut ok = el(0x0008, 0x0060, b"CS", b"OTX");
    ok.extend(el(0x0010, 0x0020, b"LO", b"P1"));
    run(&ok, EXPLICIT).unwrap();
    // Odd native Pixel Data at the end (8-bit, odd pixel count, implicit VR: OW) is kept.
    let mut px = item_hdr(tags::PIXEL_DATA, 9);
    px.extend([7u8; 9]);
    let w = run(&px, IMPLICIT).unwrap();
    assert_eq!(w.pixel, Some(PixelHeader::Native { declared: 9 }));
}

#[test]
fn the_issue_16_element_is_an_overrun() {
    let ds = [0x08, 0, 0x05, 0, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF];
    let e = run(&ds, EXPLICIT).unwrap_err();
    assert!(matches!(
        e,
        WalkError::Overrun {
            declared: 0xFFFF_FFF0,
            left: 0,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "(0008,0005) declares 4294967280 bytes; 0 follow"
    );
    assert!(e.to_string().len() <= 64);
    // Implicit VR: any tag.
    let ds = [0x09, 0, 0x10, 0x10, 0xF0, 0xFF, 0xFF, 0xFF];
    assert!(matches!(run(&ds, IMPLICIT), Err(WalkError::Overrun { .. })));
}

#[test]
fn kept_elements_and_pixel_headers() {
    let mut ds = el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
    ds.extend(el(0x0009, 0x1001, b"OB", &[7; 100_000])); // private bulk: skipped
    ds.extend(el(0x0010, 0x0010, b"PN", b"Doe^Jane"));
    ds.extend(el(0x0028, 0x0010, b"US", &16u16.to_le_bytes()));
    ds.extend(el(0x7FE0, 0x0010, b"OW", &[0; 512]));
    let w = run(&ds, EXPLICIT).unwrap();
    assert_eq!(w.pixel, Some(PixelHeader::Native { declared: 512 }));
    assert_eq!(w.length, ds.len() as u64);
    let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(
        &w.kept[..],
        &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    assert_eq!(
        obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(),
        16
    );
    assert!(obj.element(tags::PIXEL_DATA).is_err());
    assert!(
        w.kept.len() < 100,
        "bulk data is not kept: {}",
        w.kept.len()
    );

    // Encapsulated: offset table + 3 fragments; then a trailing element.
    let mut ds = el(0x0028, 0x0008, b"IS", b"3 ");
    ds.extend([
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    ds.extend(item_hdr(ITEM, 0));
    for _ in 0..3 {
        ds.extend(item_hdr(ITEM, 4));
        ds.extend([1, 2, 3, 4]);
    }
    ds.extend(item_hdr(SEQUENCE_DELIMITER, 0));
    ds.extend(el(0xFFFC, 0xFFFC, b"OB", &[0; 8]));
    let w = run(&ds, EXPLICIT).unwrap();
    assert_eq!(w.pixel, Some(PixelHeader::Encapsulated { fragments: 3 }));
    // A fragment that overruns.
    let mut bad = ds[..ds.len() - 20 - 8 - 12].to_vec();
    bad.extend(item_hdr(ITEM, 1000));
    assert!(matches!(
        run(&bad, EXPLICIT),
        Err(WalkError::Overrun { tag: ITEM, .. })
    ));
}

#[test]
fn sequences_nest_and_are_bounded() {
    // Undefined-length SQ with an undefined-length item holding an element.
    let mut ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
    ds.extend([
        0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    ds.extend(item_hdr(ITEM, UNDEFINED));
    ds.extend(el(0x0008, 0x1150, b"UI", b"1.2\0"));
    ds.extend(item_hdr(ITEM_DELIMITER, 0));
    ds.extend(item_hdr(SEQUENCE_DELIMITER, 0));
    ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
    let w = run(&ds, EXPLICIT).unwrap();
    assert_eq!(w.length, ds.len() as u64);
    // A nested element that overruns is caught too.
    let mut bad = el(0x0008, 0x0016, b"UI", b"1.2\0");
    bad.extend([
        0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    bad.extend(item_hdr(ITEM, UNDEFINED));
    bad.extend([
        0x08, 0, 0x50, 0x11, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
    ]);
    assert!(matches!(
        run(&bad, EXPLICIT),
        Err(WalkError::Overrun { .. })
    ));
    // Deep nesting.
    let mut deep = Vec::new();
    for _ in 0..(MAX_DEPTH + 2) {
        deep.extend([
            0x08, 0, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        deep.extend(item_hdr(ITEM, UNDEFINED));
    }
    assert!(matches!(run(&deep, EXPLICIT), Err(WalkError::TooDeep)));
    // Truncated: inside the last value, inside its header.
    assert!(matches!(
        run(&ds[..ds.len() - 3], EXPLICIT),
        Err(WalkError::Overrun {
            declared: 4,
            left: 1,
            ..
        })
    ));
    assert!(matches!(
        run(&ds[..ds.len() - 6], EXPLICIT),
        Err(WalkError::Malformed(_))
    ));
}

#[test]
fn defined_length_sequences_are_walked_within_their_items() {
    // SOP Class UID disguised as a defined-length SQ hiding a UT that declares ~4 GiB:
    // the overrun is caught inside its item, and nothing of it would be kept.
    let mut item = item_hdr(ITEM, 12);
    item.extend([
        0x08, 0, 0x50, 0x11, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
    ]);
    let mut ds = el(0x0008, 0x0016, b"SQ", &item);
    ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
    assert!(matches!(
        run(&ds, EXPLICIT),
        Err(WalkError::Overrun {
            tag: Tag(0x0008, 0x1150),
            left: 0,
            ..
        })
    ));
    // A well-formed one is walked and not kept.
    let inner = el(0x0008, 0x1150, b"UI", b"1.2\0");
    let mut item = item_hdr(ITEM, inner.len() as u32);
    item.extend(&inner);
    let mut ds = el(0x0008, 0x0016, b"SQ", &item);
    ds.extend(el(0x0020, 0x000D, b"UI", b"1.3\0"));
    let w = run(&ds, EXPLICIT).unwrap();
    assert_eq!(w.kept, el(0x0020, 0x000D, b"UI", b"1.3\0"));
    // An element header that crosses its item's end.
    let mut item = item_hdr(ITEM, 6);
    item.extend(&inner);
    let ds = el(0x0008, 0x1115, b"SQ", &item);
    assert!(matches!(run(&ds, EXPLICIT), Err(WalkError::Malformed(_))));
    // Implicit VR: (0008,1115) is a sequence by the dictionary, so its items are walked.
    let mut nested = item_hdr(Tag(0x0008, 0x1150), 0xFFFF_FFF0);
    nested.extend(b"1.2\0");
    let mut item = item_hdr(ITEM, nested.len() as u32);
    item.extend(&nested);
    let mut ds = item_hdr(Tag(0x0008, 0x1115), item.len() as u32);
    ds.extend(&item);
    assert!(matches!(
        run(&ds, IMPLICIT),
        Err(WalkError::Overrun {
            tag: Tag(0x0008, 0x1150),
            left: 4,
            ..
        })
    ));
    // ... while a private tag is not (a parser reads it as UN bytes).
    let mut ds = item_hdr(Tag(0x0009, 0x1001), item.len() as u32);
    ds.extend(&item);
    run(&ds, IMPLICIT).unwrap();
}

#[test]
fn unknown_length_streams_are_capped() {
    let mut ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
    for i in 0..10u16 {
        ds.extend(el(0x0029, 0x1000 + i, b"OB", &[0; 1000]));
    }
    // A value that would cross the cap, and a header that does.
    let e = walk(Streamed::new(&ds[..]), EXPLICIT, None, 5000, INGEST_TAGS).unwrap_err();
    assert!(
        matches!(e, WalkError::BeyondCap { declared: 1000, .. }),
        "{e}"
    );
    assert!(e.is_size());
    let cap = 12 + 4 * 1012 + 2;
    let e = walk(Streamed::new(&ds[..]), EXPLICIT, None, cap, INGEST_TAGS).unwrap_err();
    assert!(matches!(e, WalkError::InflatedTooLarge { .. }), "{e}");
    assert!(e.is_size());
    let w = walk(Streamed::new(&ds[..]), EXPLICIT, None, 1 << 20, INGEST_TAGS).unwrap();
    assert_eq!(w.length, ds.len() as u64);
    // Exactly at the cap is fine.
    let w = walk(
        Streamed::new(&ds[..]),
        EXPLICIT,
        None,
        ds.len() as u64,
        INGEST_TAGS,
    )
    .unwrap();
    assert_eq!(w.length, ds.len() as u64);
}
