//! Support-set storage tests: mask packing, names, and old versions keeping their content.

use super::*;
use crate::store::Db;

fn obj(label: &str) -> ObjectDef {
    ObjectDef {
        label: label.into(),
        category: default_code(),
        property_type: default_code(),
        color: PALETTE[0],
    }
}

fn pair(dir: &str, sop: &str, px: Vec<u64>) -> NewPair {
    NewPair {
        dir: dir.into(),
        sop_instance_uid: sop.into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        modality: "CT".into(),
        rows: 4,
        cols: 4,
        image_sha256: "00".into(),
        masks_sha256: "00".into(),
        mask_pixels: px,
        mask_source: "png",
    }
}

#[test]
fn mask_packing_round_trips() {
    let m = Mask {
        rows: 3,
        cols: 5,
        data: (0..15).map(|i| (i % 3 == 0) as u8).collect(),
    };
    let p = m.pack();
    assert_eq!(p.len(), 2);
    assert_eq!(Mask::unpack(3, 5, &p), Some(m.clone()));
    let two = encode_masks(&[m.clone(), m.clone()]);
    assert_eq!(decode_masks(&two, 2, 3, 5), Some(vec![m.clone(), m]));
    assert_eq!(decode_masks(&two, 3, 3, 5), None);
}

#[test]
fn names_are_checked() {
    assert!(check_name("fundus-demo_1.2").is_ok());
    for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn old_versions_keep_their_content() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
    let meta = SetMeta {
        bundle: "phantom-tiny".into(),
        ..Default::default()
    };
    db.write_blocking(move |c| {
        create(c, "s", &meta, &[obj("a")], "t", 1.0).map_err(|e| panic!("{e}"))
    })
    .unwrap();
    let (v2, n1) = db
        .write_blocking(|c| {
            let id = set_id(c, "s").unwrap();
            Ok(add_pair(c, "s", id, 1, &pair("d1", "1.1", vec![3]), "t", 2.0).unwrap())
        })
        .unwrap();
    let (v3, n2) = db
        .write_blocking(|c| {
            let id = set_id(c, "s").unwrap();
            Ok(add_pair(c, "s", id, 0, &pair("d2", "1.2", vec![5]), "t", 3.0).unwrap())
        })
        .unwrap();
    assert_eq!((v2, n1, v3, n2), (2, 1, 3, 2));
    // A stale expected version is refused and changes nothing.
    let stale = db
        .write_blocking(|c| Ok(remove_pair(c, "s", 1, 2, "t", 4.0)))
        .unwrap();
    assert!(matches!(stale, Err(SupportError::VersionMismatch { .. })));
    let v4 = db
        .write_blocking(|c| Ok(remove_pair(c, "s", 1, 3, "t", 4.0).unwrap()))
        .unwrap();
    let v5 = db
        .write_blocking(|c| {
            let up = SetUpdate {
                objects: Some(vec![obj("renamed")]),
                ..Default::default()
            };
            Ok(update(c, "s", &up, "t", 5.0).unwrap())
        })
        .unwrap();
    assert_eq!((v4, v5), (4, 5));
    let at = |v| db.read(|c| Ok(get(c, "s", Some(v)).unwrap())).unwrap();
    let nums = |s: &SetInfo| s.pairs.iter().map(|p| p.number).collect::<Vec<_>>();
    assert_eq!(nums(&at(2)), [1]);
    assert_eq!(nums(&at(3)), [1, 2]);
    assert_eq!(nums(&at(4)), [2]);
    assert_eq!(at(4).objects[0].label, "a");
    assert_eq!(at(5).objects[0].label, "renamed");
    assert_eq!(at(1).meta.bundle, "phantom-tiny");
    let audits = db.read(crate::store::audit::count).unwrap();
    assert_eq!(audits, 5);
    // Changing the number of objects while pairs exist is refused.
    let more = db
        .write_blocking(|c| {
            let up = SetUpdate {
                objects: Some(vec![obj("x"), obj("y")]),
                ..Default::default()
            };
            Ok(update(c, "s", &up, "t", 6.0))
        })
        .unwrap();
    assert!(matches!(more, Err(SupportError::Invalid(_))));
}

/// A set's sequence mode is version metadata: setting it is a new version (audited, old ->
/// new), older versions keep theirs, and `Some(None)` goes back to inheriting.
#[test]
fn sequence_mode_is_kept_per_version() {
    use crate::config::SequenceMode;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
    db.write_blocking(|c| {
        create(c, "s", &SetMeta::default(), &[obj("a")], "t", 1.0).map_err(|e| panic!("{e}"))
    })
    .unwrap();
    let set = |mode: Option<SequenceMode>| {
        db.write_blocking(move |c| {
            let up = SetUpdate {
                sequence_mode: Some(mode),
                ..Default::default()
            };
            Ok(update(c, "s", &up, "t", 2.0).unwrap())
        })
        .unwrap()
    };
    assert_eq!(set(Some(SequenceMode::PerFrame)), 2);
    assert_eq!(
        set(Some(SequenceMode::PerFrame)),
        2,
        "no change, no version"
    );
    assert_eq!(set(None), 3);
    let at = |v| db.read(|c| Ok(get(c, "s", Some(v)).unwrap())).unwrap();
    assert_eq!(at(1).meta.sequence_mode, None);
    assert_eq!(at(2).meta.sequence_mode, Some(SequenceMode::PerFrame));
    assert_eq!(at(3).meta.sequence_mode, None);
    let detail: String = db
        .read(|c| {
            c.query_row(
                "SELECT detail FROM audit WHERE action = 'support_set.update' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(
        detail,
        "version 2: updated sequence_mode inherit -> per-frame"
    );
}
