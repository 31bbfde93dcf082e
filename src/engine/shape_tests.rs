use super::*;
use crate::dicom::pixels::Frame;
use crate::engine::support::{SupportObject, SupportPair};

/// A mask from rows of '#' (inside) and '.' (outside).
pub(crate) fn mask(rows: &[&str]) -> Mask {
    Mask {
        rows: rows.len(),
        cols: rows[0].len(),
        data: rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect(),
    }
}

/// The rows of a mask as '#' and '.'.
pub(crate) fn text(m: &Mask) -> Vec<String> {
    m.data
        .chunks(m.cols)
        .map(|r| r.iter().map(|&v| if v != 0 { '#' } else { '.' }).collect())
        .collect()
}

#[test]
fn one_region_means_one_eight_connected_region() {
    let disc = mask(&[".....", ".###.", ".###.", "....."]);
    assert!(is_one_region(&disc.data, disc.rows, disc.cols));
    // diagonal neighbours are one region
    let diag = mask(&["#...", ".#..", "..#.", "...#"]);
    assert!(is_one_region(&diag.data, diag.rows, diag.cols));
    let two = mask(&["##..", "....", "..##"]);
    assert!(!is_one_region(&two.data, two.rows, two.cols));
    // a ring is one region (holes are left alone)
    let ring = mask(&["#####", "#...#", "#####"]);
    assert!(is_one_region(&ring.data, ring.rows, ring.cols));
    let empty = mask(&["...", "..."]);
    assert!(!is_one_region(&empty.data, empty.rows, empty.cols));
}

#[test]
fn keep_largest_region_drops_the_other_regions_only() {
    let mut m = mask(&[
        "#.......", // a stray pixel
        "..#####.", //
        "..#..##.", // a hole stays
        "..#####.", //
        "........", //
        "......##", // a smaller island
    ]);
    keep_largest_region(&mut m);
    assert_eq!(
        text(&m),
        ["........", "..#####.", "..#..##.", "..#####.", "........", "........"]
    );
    // equal sizes: the first region in raster order stays
    let mut m = mask(&["##...", ".....", "...##"]);
    keep_largest_region(&mut m);
    assert_eq!(text(&m), ["##...", ".....", "....."]);
    let mut m = mask(&["...", "..."]);
    keep_largest_region(&mut m);
    assert_eq!(m.area(), 0);
}

fn set(labels: &[&str], masks: Vec<Vec<Mask>>) -> SupportSet {
    SupportSet {
        name: "s".into(),
        version: "1".into(),
        objects: labels
            .iter()
            .map(|l| SupportObject {
                label: (*l).into(),
                category: None,
                property_type: None,
                color: None,
            })
            .collect(),
        pairs: masks
            .into_iter()
            .map(|m| SupportPair {
                image: Frame {
                    index: 0,
                    rows: m[0].rows,
                    cols: m[0].cols,
                    channels: 1,
                    data: vec![0.0; m[0].rows * m[0].cols],
                },
                masks: m,
            })
            .collect(),
    }
}

/// A `size x size` mask with the given inclusive boxes filled.
fn boxes(size: usize, bs: &[(usize, usize, usize, usize)]) -> Mask {
    let mut data = vec![0u8; size * size];
    for &(r0, c0, r1, c1) in bs {
        for r in r0..=r1 {
            data[r * size + c0..=r * size + c1].fill(1);
        }
    }
    Mask {
        rows: size,
        cols: size,
        data,
    }
}

#[test]
fn a_rule_applies_only_to_listed_objects_whose_support_masks_are_one_region() {
    let rules = [ShapeRule {
        form: Form::Region,
        objects: vec!["Optic Disc".into(), "lesion".into(), "cup".into()],
        note: String::new(),
    }];
    let blob = boxes(64, &[(10, 10, 30, 30)]);
    let two = boxes(64, &[(5, 5, 15, 15), (40, 40, 50, 50)]);
    let empty = boxes(64, &[]);
    let s = set(
        &["optic disc", "lesion", "vessels", "cup"],
        vec![
            vec![blob.clone(), blob.clone(), blob.clone(), empty.clone()],
            vec![blob.clone(), two, blob.clone(), empty.clone()],
            vec![empty.clone(), blob.clone(), blob.clone(), empty],
        ],
    );
    // disc: listed (case-insensitive), one region where present; lesion: one pair shows two;
    // vessels: not listed; cup: listed but never present
    let region = Some(Form::Region);
    assert_eq!(object_forms(&rules, &s, 32), [region, None, None, None]);
    assert_eq!(object_forms(&[], &s, 32), [None; 4]);
    let mut masks = vec![
        boxes(8, &[(0, 0, 3, 3), (6, 6, 7, 7)]),
        boxes(8, &[(0, 0, 3, 3), (6, 6, 7, 7)]),
    ];
    apply(&[region, None], &mut masks);
    assert_eq!(masks[0], boxes(8, &[(0, 0, 3, 3)]));
    assert_eq!(masks[1], boxes(8, &[(0, 0, 3, 3), (6, 6, 7, 7)]));
}

#[test]
fn rules_are_checked() {
    let ok = ShapeRule {
        form: Form::Convex,
        objects: vec!["fetal head".into()],
        note: String::new(),
    };
    assert!(ok.check().is_ok());
    for objects in [vec![], vec![" ".to_string()]] {
        let r = ShapeRule {
            form: Form::Region,
            objects,
            note: String::new(),
        };
        assert!(r.check().unwrap_err().contains("objects"));
    }
}

/// Flood-fill reference: the largest 8-connected region, the one whose first pixel comes
/// first in raster order on a tie.
fn brute_keep_largest(m: &Mask) -> Mask {
    let (rows, cols) = (m.rows as isize, m.cols as isize);
    let mut label = vec![usize::MAX; m.data.len()];
    let mut sizes = Vec::new();
    for start in 0..m.data.len() {
        if m.data[start] == 0 || label[start] != usize::MAX {
            continue;
        }
        let id = sizes.len();
        let (mut stack, mut n) = (vec![start], 0);
        label[start] = id;
        while let Some(i) = stack.pop() {
            n += 1;
            let (r, c) = ((i / m.cols) as isize, (i % m.cols) as isize);
            for dr in -1..=1 {
                for dc in -1..=1 {
                    let (rr, cc) = (r + dr, c + dc);
                    if rr >= 0 && rr < rows && cc >= 0 && cc < cols {
                        let j = (rr * cols + cc) as usize;
                        if m.data[j] != 0 && label[j] == usize::MAX {
                            label[j] = id;
                            stack.push(j);
                        }
                    }
                }
            }
        }
        sizes.push(n);
    }
    let mut out = m.clone();
    if let Some(best) = (0..sizes.len()).max_by_key(|&i| (sizes[i], std::cmp::Reverse(i))) {
        for (i, v) in out.data.iter_mut().enumerate() {
            *v = u8::from(label[i] == best);
        }
    }
    out
}

/// `count` random masks of 1 to `max_side` rows and columns (xorshift from `seed`); the share of
/// set pixels cycles through `densities` (percent).
fn random_masks(seed: u64, count: usize, max_side: u64, densities: [u64; 4]) -> Vec<Mask> {
    let mut state = seed;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|round| {
            let (rows, cols) = (
                1 + (next() % max_side) as usize,
                1 + (next() % max_side) as usize,
            );
            let density = densities[round % 4];
            Mask {
                rows,
                cols,
                data: (0..rows * cols)
                    .map(|_| u8::from(next() % 100 < density))
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn keep_largest_region_agrees_with_flood_fill_on_random_masks() {
    for (round, m) in random_masks(0x2545_f491_4f6c_dd1d, 300, 40, [20, 40, 55, 70])
        .into_iter()
        .enumerate()
    {
        let (rows, cols) = (m.rows, m.cols);
        let mut got = m.clone();
        keep_largest_region(&mut got);
        assert_eq!(got, brute_keep_largest(&m), "round {round}: {:?}", text(&m));
        if got.area() > 0 {
            assert!(is_one_region(&got.data, rows, cols), "round {round}");
        }
    }
}

#[test]
fn fill_convex_fills_the_hull_of_the_pixel_centres() {
    // a C opening to the right: the hull closes it, and nothing outside the hull is added
    let mut c = mask(&[
        ".......", ".#####.", ".#.....", ".#.....", ".#.....", ".#####.", ".......",
    ]);
    fill_convex(&mut c);
    assert_eq!(
        text(&c),
        [".......", ".#####.", ".#####.", ".#####.", ".#####.", ".#####.", "......."]
    );
    // a diagonal edge: a pixel is added only when its centre is on or inside the hull
    let mut tri = mask(&["#....", ".....", ".....", "#...#"]);
    fill_convex(&mut tri);
    assert_eq!(text(&tri), ["#....", "##...", "###..", "#####"]);
    // a line, a point and nothing stay as they are
    for rows in [
        &["....", ".##.", "...."][..],
        &["...", ".#.", "..."],
        &["..", ".."],
    ] {
        let mut m = mask(rows);
        fill_convex(&mut m);
        assert_eq!(text(&m), rows);
    }
}

/// True when `p` lies in a triangle (or on a segment) of points of `pts`: inside their convex
/// hull, by Caratheodory, with no hull computed.
fn brute_in_hull(pts: &[(i64, i64)], p: (i64, i64)) -> bool {
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let on_segment = |a: (i64, i64), b: (i64, i64)| {
        cross(a, b, p) == 0
            && p.0 >= a.0.min(b.0)
            && p.0 <= a.0.max(b.0)
            && p.1 >= a.1.min(b.1)
            && p.1 <= a.1.max(b.1)
    };
    for (i, &a) in pts.iter().enumerate() {
        for (j, &b) in pts.iter().enumerate().skip(i) {
            if on_segment(a, b) {
                return true;
            }
            for &c in &pts[j + 1..] {
                let (d1, d2, d3) = (cross(a, b, p), cross(b, c, p), cross(c, a, p));
                let neg = d1 < 0 || d2 < 0 || d3 < 0;
                let pos = d1 > 0 || d2 > 0 || d3 > 0;
                if !(neg && pos) && cross(a, b, c) != 0 {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn fill_convex_agrees_with_triangles_of_the_pixels_on_random_masks() {
    for (round, m) in random_masks(0x9e37_79b9_7f4a_7c15, 200, 9, [5, 10, 25, 45])
        .into_iter()
        .enumerate()
    {
        let (rows, cols) = (m.rows, m.cols);
        let pts: Vec<(i64, i64)> = (0..rows * cols)
            .filter(|&i| m.data[i] != 0)
            .map(|i| ((i % cols) as i64, (i / cols) as i64))
            .collect();
        let mut got = m.clone();
        fill_convex(&mut got);
        for i in 0..rows * cols {
            let p = ((i % cols) as i64, (i / cols) as i64);
            assert_eq!(
                got.data[i] != 0,
                brute_in_hull(&pts, p),
                "round {round}, pixel {p:?}: {:?}",
                text(&m)
            );
        }
    }
}

#[test]
fn a_convex_rule_needs_convex_support_masks() {
    let rules = [
        ShapeRule {
            form: Form::Region,
            objects: vec!["fetal head".into(), "cup".into()],
            note: String::new(),
        },
        ShapeRule {
            form: Form::Convex,
            objects: vec!["Fetal Head".into(), "disc".into()],
            note: String::new(),
        },
    ];
    let blob = boxes(64, &[(10, 10, 40, 40)]);
    // an L: one region that fills about half of its hull
    let ell = boxes(64, &[(10, 10, 50, 20), (40, 10, 50, 50)]);
    let s = set(
        &["fetal head", "disc", "cup"],
        vec![
            vec![blob.clone(), blob.clone(), blob.clone()],
            vec![blob.clone(), ell, blob.clone()],
        ],
    );
    // head: convex; disc: listed convex only, but one support mask is an L, so the region form;
    // cup: region only
    assert_eq!(
        object_forms(&rules, &s, 32),
        [Some(Form::Convex), Some(Form::Region), Some(Form::Region)]
    );
    let c = mask(&[
        ".......", ".#####.", ".#.....", ".#....#", ".#.....", ".#####.", ".......",
    ]);
    let mut masks = vec![c.clone(), c.clone(), c];
    apply(&[Some(Form::Convex), Some(Form::Region), None], &mut masks);
    // the convex object drops its stray pixel first, then is filled
    let closed = [
        ".......", ".#####.", ".#####.", ".#####.", ".#####.", ".#####.", ".......",
    ];
    assert_eq!(text(&masks[0]), closed);
    let open = [
        ".......", ".#####.", ".#.....", ".#.....", ".#.....", ".#####.", ".......",
    ];
    assert_eq!(text(&masks[1]), open);
    assert_eq!(masks[2].area(), 14, "no rule: as predicted");
}

#[test]
fn an_ellipse_rule_needs_convex_support_masks_and_wins_over_convex() {
    let rule = |form, objects: &[&str]| ShapeRule {
        form,
        objects: objects.iter().map(|s| s.to_string()).collect(),
        note: String::new(),
    };
    let rules = [
        rule(Form::Convex, &["cup", "disc"]),
        rule(Form::Ellipse, &["Cup", "lesion"]),
    ];
    let blob = boxes(64, &[(10, 10, 40, 40)]);
    let ell = boxes(64, &[(10, 10, 50, 20), (40, 10, 50, 50)]);
    let s = set(
        &["cup", "disc", "lesion"],
        vec![
            vec![blob.clone(), blob.clone(), ell],
            vec![blob.clone(), blob.clone(), blob],
        ],
    );
    assert_eq!(
        object_forms(&rules, &s, 32),
        [Some(Form::Ellipse), Some(Form::Convex), Some(Form::Region)]
    );
    // an ellipse with a spur: the spur goes (the Python reference's test, same shape)
    let mut disc = Mask {
        rows: 40,
        cols: 40,
        data: vec![0; 1600],
    };
    for r in 0..40 {
        for c in 0..40 {
            let (x, y) = ((c as f64 - 20.0) / 12.0, (r as f64 - 18.0) / 8.0);
            disc.data[r * 40 + c] = u8::from(x * x + y * y <= 1.0);
        }
    }
    disc.data[18 * 40 + 30..18 * 40 + 38].fill(1);
    let mut masks = vec![disc.clone(), disc.clone()];
    apply(&[Some(Form::Ellipse), None], &mut masks);
    assert!(masks[0].data[18 * 40 + 34..18 * 40 + 40]
        .iter()
        .all(|&v| v == 0));
    assert_eq!(masks[1], disc);
    // no ellipse to trust: the largest region stays
    let tiny = mask(&["....", ".##.", ".##.", "...."]);
    let mut masks = vec![tiny.clone()];
    apply(&[Some(Form::Ellipse)], &mut masks);
    assert_eq!(masks[0], tiny);
}

#[test]
fn form_blockers_name_each_mask_that_weakens_its_object_and_why() {
    let rule = |form, objects: &[&str]| ShapeRule {
        form,
        objects: objects.iter().map(|s| s.to_string()).collect(),
        note: String::new(),
    };
    let rules = [
        rule(Form::Ellipse, &["cup"]),
        rule(Form::Convex, &["disc"]),
        rule(Form::Region, &["head"]),
    ];
    let blob = boxes(64, &[(10, 10, 40, 40)]);
    let ell = boxes(64, &[(10, 10, 50, 20), (40, 10, 50, 50)]);
    let two = boxes(64, &[(4, 4, 14, 14), (40, 40, 54, 54)]);
    let empty = boxes(64, &[]);
    let s = set(
        &["cup", "disc", "head", "vessels"],
        vec![
            vec![blob.clone(), blob.clone(), blob.clone(), two.clone()],
            vec![ell.clone(), two.clone(), ell.clone(), blob.clone()],
            vec![empty, blob.clone(), two, blob],
        ],
    );
    let found = form_blockers(&rules, &s, 32);
    let got: Vec<(usize, usize, Form, Option<Form>)> = found
        .iter()
        .map(|b| (b.pair, b.object, b.listed, b.given))
        .collect();
    // cup: the L loses the ellipse (region form left); disc: two regions, no rule at all;
    // head: an L is fine for a region rule, two regions are not; vessels: listed nowhere; the
    // empty cup mask is never a blocker
    assert_eq!(
        got,
        [
            (1, 0, Form::Ellipse, Some(Form::Region)),
            (1, 1, Form::Convex, None),
            (2, 2, Form::Region, None),
        ]
    );
    assert_eq!(
        object_forms(&rules, &s, 32),
        [Some(Form::Region), None, None, None]
    );
    assert!(
        found[0].reason.contains("of its convex hull")
            && found[0].reason.contains("ellipse rule needs 0.95"),
        "{}",
        found[0].reason
    );
    assert_eq!(
        found[1].reason,
        "the mask is 2 separate regions on the 32 x 32 model grid"
    );
    // a clean set has none
    let clean = set(&["cup"], vec![vec![boxes(64, &[(10, 10, 40, 40)])]; 3]);
    assert!(form_blockers(&rules, &clean, 32).is_empty());
}
