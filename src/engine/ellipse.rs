//! The ellipse of a region, for `[[shape]] form = "ellipse"` ([`super::shape`]): a
//! least-squares ellipse through the region's boundary pixels, filled. An optic cup's
//! prediction overreaches along vessels and its outline is ragged; the annotators draw an
//! ellipse-like outline.
//!
//! The fit is Fitzgibbon, Pilu and Fisher's direct least-squares ellipse in Halir and Flusser's
//! numerically stable form (the 6 x 6 generalised eigenproblem reduced to a 3 x 3 one):
//! - points: the region's boundary pixels (a 4-neighbour outside the region or the image), less
//!   those on the image's own border (a cut, not the object's edge), as (column, row) relative
//!   to the integer centre of their bounding box, scaled by a power of two at least their
//!   largest |coordinate|;
//! - the moment sums are exact integers and the power-of-two scale is exact in floating point;
//!   the 3 x 3 solve (Cramer), the eigenvalues (the characteristic cubic) and the eigenvector
//!   (the largest cross product of two rows of `M - lambda I`) are a fixed sequence of `f64`
//!   operations, the same as the Python reference's (`scripts/model/proxyseg_model/ellipse.py`),
//!   so both give the same pixels;
//! - the ellipse is the eigenvector with `4ac - b^2 > 0` (the smallest such eigenvalue on a tie);
//! - fill: per row, the span between the conic's roots in x (ceil of the smaller, floor of the
//!   larger, in pixels).
//!
//! [`fill_ellipse`] gives `None` when there is no ellipse to trust: fewer than [`MIN_POINTS`]
//! points, a singular system, no eigenvector with `4ac - b^2 > 0` (or one with a coefficient
//! that is not finite), or a filled area outside
//! [`AREA_RANGE`] times the region's.

use super::support::Mask;

/// Fewer boundary points than this: no fit (a conic has 5 degrees of freedom).
pub const MIN_POINTS: usize = 6;

/// The filled ellipse's area must lie within these multiples of the region's.
pub const AREA_RANGE: (f64, f64) = (0.5, 2.0);

type M3 = [[f64; 3]; 3];

/// A fitted conic `A x^2 + B xy + C y^2 + D x + E y + F = 0` (an ellipse) in scaled
/// coordinates `x = (column - cx) / s`, `y = (row - cy) / s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conic {
    /// `[A, B, C, D, E, F]`.
    pub coef: [f64; 6],
    /// The integer centre `(cx, cy)` the coordinates are taken from.
    pub centre: (i64, i64),
    /// The power-of-two scale.
    pub scale: i64,
}

/// (column, row) of the region's boundary pixels in raster order, less the image border.
pub fn boundary_points(mask: &Mask) -> Vec<(i64, i64)> {
    let (rows, cols) = (mask.rows, mask.cols);
    let at = |r: usize, c: usize| mask.data[r * cols + c] != 0;
    let mut out = Vec::new();
    if rows < 3 || cols < 3 {
        return out;
    }
    for r in 1..rows - 1 {
        // only between the row's first and last pixel inside (most rows of a fundus are empty)
        let row = &mask.data[r * cols + 1..(r + 1) * cols - 1];
        let Some(first) = row.iter().position(|&v| v != 0) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
        for c in first + 1..=last + 1 {
            if at(r, c) && !(at(r - 1, c) && at(r + 1, c) && at(r, c - 1) && at(r, c + 1)) {
                out.push((c as i64, r as i64));
            }
        }
    }
    out
}

fn det3(a: &M3) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

fn mul3(a: &M3, b: &M3) -> M3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    out
}

/// `x` with `a x = b` (the columns of `b` are the right-hand sides), by Cramer's rule; None
/// when `det(a)` is 0 or not finite.
fn solve3(a: &M3, b: &M3) -> Option<M3> {
    let det = det3(a);
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let inv = [
        [
            (a[1][1] * a[2][2] - a[1][2] * a[2][1]) / det,
            (a[0][2] * a[2][1] - a[0][1] * a[2][2]) / det,
            (a[0][1] * a[1][2] - a[0][2] * a[1][1]) / det,
        ],
        [
            (a[1][2] * a[2][0] - a[1][0] * a[2][2]) / det,
            (a[0][0] * a[2][2] - a[0][2] * a[2][0]) / det,
            (a[0][2] * a[1][0] - a[0][0] * a[1][2]) / det,
        ],
        [
            (a[1][0] * a[2][1] - a[1][1] * a[2][0]) / det,
            (a[0][1] * a[2][0] - a[0][0] * a[2][1]) / det,
            (a[0][0] * a[1][1] - a[0][1] * a[1][0]) / det,
        ],
    ];
    Some(mul3(&inv, b))
}

/// Real roots of `t^3 + c2 t^2 + c1 t + c0`, ascending.
fn cubic_roots(c2: f64, c1: f64, c0: f64) -> Vec<f64> {
    let p = c1 - c2 * c2 / 3.0;
    let q = 2.0 * c2 * c2 * c2 / 27.0 - c2 * c1 / 3.0 + c0;
    let shift = -c2 / 3.0;
    if p < 0.0 {
        let r = (-p / 3.0).sqrt();
        let arg = if r > 0.0 { -q / (2.0 * r * r * r) } else { 0.0 };
        if (-1.0..=1.0).contains(&arg) {
            let phi = arg.acos();
            let mut roots: Vec<f64> = (0..3)
                .map(|k| {
                    2.0 * r * ((phi - 2.0 * std::f64::consts::PI * f64::from(k)) / 3.0).cos()
                        + shift
                })
                .collect();
            roots.sort_by(f64::total_cmp);
            return roots;
        }
    }
    // one real root (Cardano)
    let d = q * q / 4.0 + p * p * p / 27.0;
    let sd = if d > 0.0 { d.sqrt() } else { 0.0 };
    let (u, v) = (-q / 2.0 + sd, -q / 2.0 - sd);
    let cbrt = |x: f64| x.abs().powf(1.0 / 3.0).copysign(x);
    vec![cbrt(u) + cbrt(v) + shift]
}

/// A null vector of `m - lambda I`: the largest cross product of two of its rows.
fn eigenvector(m: &M3, lambda: f64) -> Option<[f64; 3]> {
    let mut a = *m;
    for (i, row) in a.iter_mut().enumerate() {
        row[i] -= lambda;
    }
    let mut best = None;
    let mut norm = 0.0;
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let (r, s) = (a[i], a[j]);
        let v = [
            r[1] * s[2] - r[2] * s[1],
            r[2] * s[0] - r[0] * s[2],
            r[0] * s[1] - r[1] * s[0],
        ];
        let n = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        if n > norm {
            best = Some(v);
            norm = n;
        }
    }
    best
}

/// The least-squares ellipse through `points` (column, row), or None (see the module docs).
pub fn fit(points: &[(i64, i64)]) -> Option<Conic> {
    if points.len() < MIN_POINTS {
        return None;
    }
    let (x_lo, x_hi) = points
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y_lo, y_hi) = points
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (cx, cy) = ((x_lo + x_hi).div_euclid(2), (y_lo + y_hi).div_euclid(2));
    let ext = points
        .iter()
        .map(|&(x, y)| (x - cx).abs().max((y - cy).abs()))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut s: i64 = 1;
    while s < ext {
        s *= 2;
    }
    // exact sums of x^i y^j for i + j <= 4
    let mut sums = [[0i128; 5]; 5];
    for &(x0, y0) in points {
        let (x, y) = (i128::from(x0 - cx), i128::from(y0 - cy));
        let mut xi = 1i128;
        for (i, row) in sums.iter_mut().enumerate() {
            let mut yj = 1i128;
            for cell in row.iter_mut().take(5 - i) {
                *cell += xi * yj;
                yj *= y;
            }
            xi *= x;
        }
    }
    let f = |i: usize, j: usize| sums[i][j] as f64 / (s as f64).powi((i + j) as i32);
    // D1 = [x^2, xy, y^2], D2 = [x, y, 1]
    let e1 = [(2, 0), (1, 1), (0, 2)];
    let e2 = [(1, 0), (0, 1), (0, 0)];
    let block = |a: &[(usize, usize); 3], b: &[(usize, usize); 3]| -> M3 {
        let mut out = [[0.0; 3]; 3];
        for (i, p) in a.iter().enumerate() {
            for (j, q) in b.iter().enumerate() {
                out[i][j] = f(p.0 + q.0, p.1 + q.1);
            }
        }
        out
    };
    let (s1, s2, s3) = (block(&e1, &e1), block(&e1, &e2), block(&e2, &e2));
    let mut s2t = [[0.0; 3]; 3];
    for (i, row) in s2t.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = s2[j][i];
        }
    }
    let mut t = solve3(&s3, &s2t)?;
    for v in t.iter_mut().flatten() {
        *v = -*v;
    }
    let st = mul3(&s2, &t);
    let mut m = [[0.0; 3]; 3];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = s1[i][j] + st[i][j];
        }
    }
    let mut mr = [[0.0; 3]; 3];
    for j in 0..3 {
        mr[0][j] = m[2][j] / 2.0;
        mr[1][j] = -m[1][j];
        mr[2][j] = m[0][j] / 2.0;
    }
    let tr = mr[0][0] + mr[1][1] + mr[2][2];
    let c1 = (mr[0][0] * mr[1][1] - mr[0][1] * mr[1][0])
        + (mr[0][0] * mr[2][2] - mr[0][2] * mr[2][0])
        + (mr[1][1] * mr[2][2] - mr[1][2] * mr[2][1]);
    let det = det3(&mr);
    for lambda in cubic_roots(-tr, c1, -det) {
        let Some(v) = eigenvector(&mr, lambda) else {
            continue;
        };
        let cond = 4.0 * v[0] * v[2] - v[1] * v[1];
        if cond.is_nan() || cond <= 0.0 {
            continue;
        }
        let rest = t.map(|row| row[0] * v[0] + row[1] * v[1] + row[2] * v[2]);
        let coef = [v[0], v[1], v[2], rest[0], rest[1], rest[2]];
        if !coef.iter().all(|c| c.is_finite()) {
            return None;
        }
        return Some(Conic {
            coef,
            centre: (cx, cy),
            scale: s,
        });
    }
    None
}

/// The pixels of a `rows x cols` grid whose centres are inside or on `conic`, row by row.
pub fn fill(conic: &Conic, rows: usize, cols: usize) -> Mask {
    let [a, b, c, d, e, f] = conic.coef;
    let (cx, cy) = conic.centre;
    let s = conic.scale as f64;
    let mut data = vec![0u8; rows * cols];
    for (r, row) in data.chunks_mut(cols.max(1)).enumerate() {
        let y = (r as i64 - cy) as f64 / s;
        let bb = b * y + d;
        let cc = (c * y + e) * y + f;
        let disc = bb * bb - 4.0 * a * cc;
        if !(disc >= 0.0 && disc.is_finite()) {
            continue;
        }
        let root = disc.sqrt();
        let (x1, x2) = ((-bb - root) / (2.0 * a), (-bb + root) / (2.0 * a));
        let lo = x1.min(x2) * s + cx as f64;
        let hi = x1.max(x2) * s + cx as f64;
        let first = lo.ceil().max(0.0);
        let last = hi.floor().min(cols as f64 - 1.0);
        if first <= last {
            row[first as usize..=last as usize].fill(1);
        }
    }
    Mask { rows, cols, data }
}

/// The filled least-squares ellipse of a region, or None (see the module docs).
pub fn fill_ellipse(region: &Mask) -> Option<Mask> {
    let conic = fit(&boundary_points(region))?;
    let out = fill(&conic, region.rows, region.cols);
    let (area, filled) = (region.area() as f64, out.area() as f64);
    (AREA_RANGE.0 * area <= filled && filled <= AREA_RANGE.1 * area).then_some(out)
}

#[cfg(test)]
#[path = "ellipse_tests.rs"]
mod tests;
