//! Tests of the resolution views' geometry and merging.
use super::*;
use crate::engine::support::{SupportObject, SupportPair};

/// A `rows x cols` mask with the inclusive rectangle y0..=y1, x0..=x1 set.
fn rect(rows: usize, cols: usize, y0: usize, y1: usize, x0: usize, x1: usize) -> Vec<u8> {
    let mut m = vec![0u8; rows * cols];
    for y in y0..=y1 {
        for x in x0..=x1 {
            m[y * cols + x] = 1;
        }
    }
    m
}

fn t(c: &[Crop]) -> Vec<(usize, usize, usize, usize)> {
    c.iter().map(Crop::tuple).collect()
}

#[test]
fn rounding_is_half_to_even_like_python() {
    assert_eq!(round_half_even(0.5), 0.0);
    assert_eq!(round_half_even(1.5), 2.0);
    assert_eq!(round_half_even(2.5), 2.0);
    assert_eq!(round_half_even(-0.5), 0.0);
    assert_eq!(round_half_even(-1.5), -2.0);
    assert_eq!(round_half_even(2.4999), 2.0);
}

/// Expected values: `views.roi_crop` of scripts/model (Python), on the same masks.
#[test]
fn roi_crop_matches_the_python_reference() {
    // (name, [rows, cols], bbox [y0, y1, x0, x1], scale, min_side, crop [y0, x0, h, w])
    type Case = (&'static str, [usize; 2], [usize; 4], f64, usize, [usize; 4]);
    #[rustfmt::skip]
    let cases: [Case; 10] = [
        ("centre", [100, 120], [40, 59, 50, 69], 2.0, 16, [30, 40, 40, 40]),
        ("top_left", [100, 120], [0, 9, 2, 11], 2.0, 8, [0, 0, 20, 20]),
        ("bottom_right", [100, 120], [95, 99, 110, 119], 2.0, 8, [80, 100, 20, 20]),
        ("half_even_side_up", [100, 120], [10, 14, 20, 24], 1.5, 1, [8, 18, 8, 8]),
        ("half_even_side_down", [100, 120], [10, 12, 20, 22], 1.5, 1, [10, 20, 4, 4]),
        ("half_even_origin", [100, 120], [3, 6, 2, 5], 1.75, 7, [2, 0, 7, 7]),
        ("min_side", [200, 300], [100, 102, 150, 152], 2.0, 64, [70, 120, 64, 64]),
        ("small_image", [50, 40], [5, 44, 5, 34], 2.0, 64, [5, 0, 40, 40]),
        ("wide_bbox", [300, 400], [100, 109, 50, 79], 2.5, 16, [68, 28, 75, 75]),
        ("single_pixel", [584, 565], [300, 300, 282, 282], 2.0, 64, [268, 250, 64, 64]),
    ];
    for (name, [rows, cols], [y0, y1, x0, x1], scale, min_side, [cy, cx, ch, cw]) in cases {
        let want = (cy, cx, ch, cw);
        let m = rect(rows, cols, y0, y1, x0, x1);
        let got = roi_crop(&m, rows, cols, scale, min_side).map(|c| c.tuple());
        assert_eq!(got, Some(want), "{name}");
    }
    // Two blobs and a stray pixel: the bbox spans them all.
    let mut m = vec![0u8; 90 * 70];
    m[10 * 70 + 60] = 1;
    m[33 * 70 + 5] = 1;
    for y in 20..25 {
        for x in 30..40 {
            m[y * 70 + x] = 1;
        }
    }
    assert_eq!(
        roi_crop(&m, 90, 70, 1.2, 4).map(|c| c.tuple()),
        Some((0, 0, 67, 67))
    );
    assert_eq!(roi_crop(&[0u8; 100], 10, 10, 2.0, 64), None);
    assert_eq!(roi_crop(&[1u8; 3], 2, 2, 2.0, 64), None, "bad buffer size");
}

/// Expected values: `views.tile_crops` of scripts/model (Python).
#[test]
fn tile_crops_match_the_python_reference() {
    assert_eq!(
        t(&tile_crops(584, 565, 2, 0.125)),
        [
            (0, 0, 329, 318),
            (0, 247, 329, 318),
            (255, 0, 329, 318),
            (255, 247, 329, 318)
        ]
    );
    assert_eq!(
        t(&tile_crops(565, 584, 2, 0.125)),
        [
            (0, 0, 318, 329),
            (0, 255, 318, 329),
            (247, 0, 318, 329),
            (247, 255, 318, 329)
        ]
    );
    assert_eq!(
        t(&tile_crops(2047, 1760, 2, 0.125)),
        [
            (0, 0, 1152, 990),
            (0, 770, 1152, 990),
            (895, 0, 1152, 990),
            (895, 770, 1152, 990)
        ]
    );
    assert_eq!(t(&tile_crops(584, 565, 1, 0.125)), [(0, 0, 584, 565)]);
    assert_eq!(
        t(&tile_crops(584, 565, 3, 0.125)),
        [
            (0, 0, 219, 212),
            (0, 176, 219, 212),
            (0, 353, 219, 212),
            (182, 0, 219, 212),
            (182, 176, 219, 212),
            (182, 353, 219, 212),
            (365, 0, 219, 212),
            (365, 176, 219, 212),
            (365, 353, 219, 212)
        ]
    );
    assert_eq!(
        t(&tile_crops(2047, 1760, 3, 0.25)),
        [
            (0, 0, 853, 734),
            (0, 513, 853, 734),
            (0, 1026, 853, 734),
            (597, 0, 853, 734),
            (597, 513, 853, 734),
            (597, 1026, 853, 734),
            (1194, 0, 853, 734),
            (1194, 513, 853, 734),
            (1194, 1026, 853, 734)
        ]
    );
    assert_eq!(
        t(&tile_crops(100, 7, 3, 0.0)),
        [
            (0, 0, 34, 3),
            (0, 2, 34, 3),
            (0, 4, 34, 3),
            (33, 0, 34, 3),
            (33, 2, 34, 3),
            (33, 4, 34, 3),
            (66, 0, 34, 3),
            (66, 2, 34, 3),
            (66, 4, 34, 3)
        ]
    );
    let ten = t(&tile_crops(10, 10, 4, 0.5));
    assert_eq!(ten.len(), 16);
    assert_eq!(
        &ten[..5],
        [
            (0, 0, 4, 4),
            (0, 2, 4, 4),
            (0, 4, 4, 4),
            (0, 6, 4, 4),
            (2, 0, 4, 4)
        ]
    );
    assert_eq!(ten[15], (6, 6, 4, 4));
    assert_eq!(t(&tile_crops(1, 1, 2, 0.125)), [(0, 0, 1, 1); 4]);
    // Half-to-even origins: 1.5 -> 2 on rows, 0.5 -> 0 on columns.
    assert_eq!(
        t(&tile_crops(5, 3, 3, 0.125)),
        [
            (0, 0, 2, 2),
            (0, 0, 2, 2),
            (0, 1, 2, 2),
            (2, 0, 2, 2),
            (2, 0, 2, 2),
            (2, 1, 2, 2),
            (3, 0, 2, 2),
            (3, 0, 2, 2),
            (3, 1, 2, 2)
        ]
    );
}

#[test]
fn tiles_cover_every_pixel() {
    for (rows, cols, grid, overlap) in [
        (584, 565, 2, 0.125),
        (2047, 1760, 3, 0.0),
        (5, 3, 3, 0.125),
        (101, 67, 4, 0.0),
    ] {
        let mut acc = TileMean::new(rows, cols);
        for c in tile_crops(rows, cols, grid, overlap) {
            acc.add(c, &vec![1.0; c.h * c.w]);
        }
        let mean = acc.finish(&vec![-5.0; rows * cols]);
        assert!(mean.iter().all(|&v| v == 1.0), "{rows}x{cols} grid {grid}");
    }
}

fn rule(strategy: Strategy, objects: &[&str]) -> ResolutionRule {
    ResolutionRule {
        strategy,
        objects: objects.iter().map(|s| s.to_string()).collect(),
        note: String::new(),
    }
}

#[test]
fn rules_match_labels_case_insensitively() {
    let roi = rule(
        Strategy::Roi {
            anchor: "Optic Disc".into(),
            scale: 2.0,
            min_side: 64,
        },
        &["optic disc", "OPTIC CUP"],
    );
    let tiles = rule(
        Strategy::Tiles {
            grid: 2,
            overlap: 0.125,
        },
        &["vessels"],
    );
    let rules = [roi.clone(), tiles.clone()];
    let m = match_rules(&rules, &["optic disc", "optic cup", "vessels"]);
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[0].index, &m[0].objects, m[0].anchor),
        (0, &vec![0, 1], Some(0))
    );
    assert_eq!(
        (m[1].index, &m[1].objects, m[1].anchor),
        (1, &vec![2], None)
    );
    // Anchor missing: the roi rule is ignored even though the cup is there.
    let m = match_rules(&rules, &["Optic cup", "Vessels"]);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].index, 1);
    assert_eq!(m[0].objects, vec![1]);
    assert!(match_rules(&rules, &["liver"]).is_empty());
    assert_eq!(roi.view_id(0), "roi:optic disc:2:64");
    assert_eq!(tiles.view_id(3), "tiles:2:0.125:1,1");
    assert_eq!(tiles.views(), 4);
}

#[test]
fn bad_rules_say_why() {
    let r = rule(
        Strategy::Roi {
            anchor: " ".into(),
            scale: 2.0,
            min_side: 64,
        },
        &["a"],
    );
    assert!(r.check().unwrap_err().contains("anchor"));
    let r = rule(
        Strategy::Tiles {
            grid: 0,
            overlap: 0.1,
        },
        &["a"],
    );
    assert!(r.check().unwrap_err().contains("grid"));
    let r = rule(
        Strategy::Tiles {
            grid: 2,
            overlap: 0.1,
        },
        &[],
    );
    assert!(r.check().unwrap_err().contains("objects"));
}

#[test]
fn crops_paste_and_support_sets() {
    let f = Frame {
        index: 0,
        rows: 3,
        cols: 4,
        channels: 3,
        data: (0..36).map(|v| v as f32).collect(),
    };
    let c = Crop {
        y0: 1,
        x0: 2,
        h: 2,
        w: 2,
    };
    let cf = c.frame(&f).unwrap();
    assert_eq!(
        cf.data,
        vec![6., 7., 10., 11., 18., 19., 22., 23., 30., 31., 34., 35.]
    );
    assert!(Crop { y0: 2, ..c }.frame(&f).is_none());
    let pasted = paste_roi(c, &[1., 2., 3., 4.], 3, 4);
    assert_eq!(pasted[6], 1.0);
    assert_eq!(pasted[11], 4.0);
    assert_eq!(pasted[0], BACKGROUND_LOGIT);

    let pair = |anchor: Vec<u8>| SupportPair {
        image: f.clone(),
        masks: vec![
            Mask {
                rows: 3,
                cols: 4,
                data: anchor,
            },
            Mask {
                rows: 3,
                cols: 4,
                data: vec![1; 12],
            },
        ],
    };
    let set = SupportSet {
        name: "s".into(),
        version: "1".into(),
        objects: vec![SupportObject::default(), SupportObject::default()],
        pairs: vec![pair(rect(3, 4, 1, 1, 1, 1)), pair(vec![0; 12])],
    };
    let roi = roi_support_set(&set, 0, 2.0, 2).unwrap();
    assert_eq!(
        roi.pairs.len(),
        1,
        "the pair with an empty anchor is left out"
    );
    assert_eq!((roi.pairs[0].image.rows, roi.pairs[0].image.cols), (2, 2));
    assert_eq!(roi.pairs[0].masks[1].data, vec![1; 4]);
    let mut none = set.clone();
    none.pairs.truncate(0);
    none.pairs.push(pair(vec![0; 12]));
    assert!(roi_support_set(&none, 0, 2.0, 2).is_none());
    let tile = tile_support_set(&set, 2, 0.0, 3).unwrap();
    assert_eq!(tile.pairs.len(), 2);
    assert_eq!(tile.pairs[0].image.plane(0), &[6., 7., 10., 11.]);
}
