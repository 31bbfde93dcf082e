use super::*;
use crate::engine::shape::tests::{mask, text};

/// Pixels whose centre lies inside the ellipse (semi-axes `a`, `b`, `angle` in radians).
fn drawn(rows: usize, cols: usize, (cy, cx): (f64, f64), (a, b): (f64, f64), angle: f64) -> Mask {
    let mut data = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let (x, y) = (c as f64 - cx, r as f64 - cy);
            let u = x * angle.cos() + y * angle.sin();
            let v = -x * angle.sin() + y * angle.cos();
            data[r * cols + c] = u8::from((u / a).powi(2) + (v / b).powi(2) <= 1.0);
        }
    }
    Mask { rows, cols, data }
}

fn dice(a: &Mask, b: &Mask) -> f64 {
    let both = a
        .data
        .iter()
        .zip(&b.data)
        .filter(|(x, y)| **x != 0 && **y != 0);
    2.0 * both.count() as f64 / (a.area() + b.area()) as f64
}

#[test]
fn the_fit_is_the_same_as_the_python_reference() {
    // scripts/model/tests/test_ellipse.py expects the same pixels
    let blob = mask(&[
        "............",
        "....####....",
        "..#######...",
        ".#########..",
        ".##########.",
        ".#########..",
        "..#######...",
        "...####.....",
        "............",
    ]);
    let got = fill_ellipse(&blob).expect("an ellipse");
    assert_eq!(
        text(&got),
        [
            "............",
            "............",
            "...######...",
            "..########..",
            ".#########..",
            ".#########..",
            "..#######...",
            "............",
            "............",
        ]
    );
}

#[test]
fn a_drawn_ellipse_comes_back() {
    for (centre, axes, angle) in [
        ((40.3, 52.6), (30.0, 14.0), 0.5),
        ((60.0, 60.0), (45.0, 44.0), 0.0),
        ((35.5, 70.2), (50.0, 9.0), 2.0),
    ] {
        let e = drawn(120, 140, centre, axes, angle);
        let got = fill_ellipse(&e).expect("an ellipse");
        // the boundary pixels' centres lie up to a pixel inside the drawn outline
        let d = dice(&got, &e);
        assert!(d > 0.96, "{centre:?} {axes:?} {angle}: Dice {d}");
    }
}

#[test]
fn a_wavy_outline_is_smoothed_to_its_ellipse() {
    let (rows, cols) = (100, 100);
    let (cy, cx, t) = (49.7f64, 50.4f64, 0.3f64);
    let mut wavy = Mask {
        rows,
        cols,
        data: vec![0; rows * cols],
    };
    for r in 0..rows {
        for c in 0..cols {
            let (x, y) = (c as f64 - cx, r as f64 - cy);
            let (u, v) = (x * t.cos() + y * t.sin(), -x * t.sin() + y * t.cos());
            let theta = (v / 20.0).atan2(u / 30.0);
            let inside = (u / 30.0).hypot(v / 20.0) <= 1.0 + 0.12 * (6.0 * theta).sin();
            wavy.data[r * cols + c] = u8::from(inside);
        }
    }
    let e = drawn(rows, cols, (cy, cx), (30.0, 20.0), t);
    let got = fill_ellipse(&wavy).expect("an ellipse");
    let (before, after) = (dice(&wavy, &e), dice(&got, &e));
    assert!(after > before + 0.02 && after > 0.96, "{before} -> {after}");
}

#[test]
fn no_trusted_ellipse_gives_none() {
    // 4 boundary points
    assert!(fill_ellipse(&mask(&["....", ".##.", ".##.", "...."])).is_none());
    // collinear points: no conic
    let mut line = mask(&["...................."; 20]);
    line.data[10 * 20 + 2..10 * 20 + 18].fill(1);
    assert!(fill_ellipse(&line).is_none());
    // a ring: whatever the fit, the area guard holds
    let outer = drawn(80, 80, (40.0, 40.0), (30.0, 30.0), 0.0);
    let inner = drawn(80, 80, (40.0, 40.0), (26.0, 26.0), 0.0);
    let ring = Mask {
        data: outer
            .data
            .iter()
            .zip(&inner.data)
            .map(|(a, b)| a & (1 - b))
            .collect(),
        ..outer
    };
    if let Some(got) = fill_ellipse(&ring) {
        let (a, f) = (ring.area() as f64, got.area() as f64);
        assert!(AREA_RANGE.0 * a <= f && f <= AREA_RANGE.1 * a);
    }
    assert!(fill_ellipse(&mask(&["....."; 5])).is_none());
}

#[test]
fn the_image_border_is_not_an_edge() {
    let e = drawn(60, 80, (30.0, -5.0), (30.0, 20.0), 0.0); // cut by the left border
    let pts = boundary_points(&e);
    assert!(!pts.is_empty() && pts.iter().all(|&(x, _)| x > 0));
    let got = fill_ellipse(&e).expect("an ellipse");
    assert!(dice(&got, &e) > 0.95);
}

#[test]
fn a_conic_that_is_not_finite_fills_nothing() {
    for bad in [f64::NAN, f64::INFINITY] {
        let conic = Conic {
            coef: [1.0, 0.0, 1.0, 0.0, 0.0, bad],
            centre: (5, 5),
            scale: 8,
        };
        assert_eq!(fill(&conic, 10, 10).area(), 0, "{bad}");
    }
    // a unit circle of radius 4 px: the same conic with F = -0.25 fills pixels
    let conic = Conic {
        coef: [1.0, 0.0, 1.0, 0.0, 0.0, -0.25],
        centre: (5, 5),
        scale: 8,
    };
    assert_eq!(fill(&conic, 10, 10).area(), 49);
}
