//! Shape rules: a bundle's `[[shape]]` tables name objects that are one connected region (the
//! optic disc, a fetal head), with `form = "convex"` objects that are one convex region, and
//! with `form = "ellipse"` objects with an elliptical outline (the optic cup).
//! For such an object the prediction keeps its largest region, so the overlay a radiologist
//! opens has no stray islands; a convex object's region is then filled to its convex hull (a
//! fetal skull whose far side the model missed, an optic disc notched where vessels cross it),
//! and an ellipse object's region is replaced by its least-squares ellipse
//! ([`super::ellipse`]; kept as it is when no ellipse can be trusted).
//!
//! A rule applies to an object of a support set only when its label is listed and every
//! non-empty support mask of that object is itself one region on the model grid: the support
//! set, not the label alone, decides, so a set whose masks show two lesions is left as
//! predicted. A convex or ellipse rule also needs every such mask to fill at least
//! [`MIN_SOLIDITY`] of its own hull; a listed object that fails only that keeps the region
//! form, and an object listed for several forms gets the first of ellipse, convex, region
//! whose checks pass. Regions are
//! 8-connected. Holes of a region-form object are left as they are: filling them flipped
//! hundreds of pixels when a ring-like prediction closed or opened by one pixel (float vs int8
//! graphs) and gained at most 0.2 Dice on the validation cases. The hull is integer arithmetic
//! throughout, and the Python reference (`scripts/model/proxyseg_model/shape.py`) follows the
//! same steps, ties included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::ellipse::fill_ellipse;
use super::infer::FrameResult;
use super::preprocess::prepare_mask;
use super::support::{Mask, SupportSet};
use super::support_cache::ContextKey;
use super::views::{check_labels, same_label};

/// A convex or ellipse rule applies when every non-empty support mask of the object fills at least this
/// share of its convex hull on the model grid (the shipped sets' masks: 0.979 to 0.996).
pub const MIN_SOLIDITY: f64 = 0.95;

/// What a `[[shape]]` table says of its objects (`form`, default `region`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// One connected region: the prediction keeps its largest region.
    #[default]
    Region,
    /// One convex region: the largest region, filled to its convex hull.
    Convex,
    /// An elliptical outline: the largest region, replaced by its least-squares ellipse
    /// ([`fill_ellipse`]) when there is one to trust.
    Ellipse,
}

/// One `[[shape]]` table of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRule {
    /// What the listed objects are.
    pub form: Form,
    /// Object labels the rule names (matched case-insensitively).
    pub objects: Vec<String>,
    /// Free text.
    pub note: String,
}

impl ShapeRule {
    /// Checks the rule; the message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        check_labels(&self.objects)
    }
}

/// A horizontal run of non-zero pixels: row, first and last column (inclusive).
#[derive(Debug, Clone, Copy)]
struct Run {
    row: usize,
    start: usize,
    end: usize,
}

/// 8-connected components of the non-zero pixels, as runs.
struct Components {
    runs: Vec<Run>,
    /// Union-find parent per run.
    parent: Vec<usize>,
}

impl Components {
    /// Labels `data` (`rows x cols`, non-zero = inside).
    fn of(data: &[u8], rows: usize, cols: usize) -> Components {
        let mut runs = Vec::new();
        let mut row_start = Vec::with_capacity(rows + 1);
        for r in 0..rows {
            row_start.push(runs.len());
            let line = &data[r * cols..(r + 1) * cols];
            let mut c = 0;
            while c < cols {
                if line[c] != 0 {
                    let start = c;
                    while c < cols && line[c] != 0 {
                        c += 1;
                    }
                    runs.push(Run {
                        row: r,
                        start,
                        end: c - 1,
                    });
                } else {
                    c += 1;
                }
            }
        }
        row_start.push(runs.len());
        let mut comps = Components {
            parent: (0..runs.len()).collect(),
            runs,
        };
        // 8-connected: a run touches the runs above that reach one column past its ends
        let reach = 1;
        for r in 1..rows {
            let (above, here) = (
                row_start[r - 1]..row_start[r],
                row_start[r]..row_start[r + 1],
            );
            let mut j = above.start;
            for i in here {
                let a = comps.runs[i];
                // runs above that end before this one can reach are done for later runs too
                while j < above.end && comps.runs[j].end + reach < a.start {
                    j += 1;
                }
                let mut k = j;
                while k < above.end && comps.runs[k].start <= a.end + reach {
                    comps.union(i, k);
                    k += 1;
                }
            }
        }
        comps
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        // the root is the run met first in raster order, so ties resolve the same way in Python
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo;
        }
    }

    /// Root per run.
    fn roots(&mut self) -> Vec<usize> {
        (0..self.runs.len()).map(|i| self.find(i)).collect()
    }
}

/// True when the mask's pixels are one 8-connected region (false when empty).
pub fn is_one_region(data: &[u8], rows: usize, cols: usize) -> bool {
    let mut fg = Components::of(data, rows, cols);
    let roots = fg.roots();
    !roots.is_empty() && roots.iter().all(|&r| r == roots[0])
}

/// Keeps the mask's largest 8-connected region (the first in raster order on a tie). An empty
/// mask stays empty.
pub fn keep_largest_region(mask: &mut Mask) {
    let cols = mask.cols;
    let mut fg = Components::of(&mask.data, mask.rows, cols);
    let roots = fg.roots();
    let mut size = vec![0usize; fg.runs.len()];
    for (i, run) in fg.runs.iter().enumerate() {
        size[roots[i]] += run.end - run.start + 1;
    }
    // first largest: only a strictly greater size replaces it, and roots are raster-ordered
    let Some(best) = (0..size.len()).fold(None, |best: Option<usize>, i| match best {
        Some(b) if size[b] >= size[i] => Some(b),
        _ if size[i] > 0 => Some(i),
        b => b,
    }) else {
        return;
    };
    for (i, run) in fg.runs.iter().enumerate() {
        if roots[i] != best {
            mask.data[run.row * cols + run.start..=run.row * cols + run.end].fill(0);
        }
    }
}

/// A pixel centre as (column, row).
type Point = (i64, i64);

/// The first and last pixel of every row that has any, sorted by column then row.
fn row_extremes(mask: &Mask) -> Vec<Point> {
    let mut pts = Vec::new();
    for (r, line) in mask.data.chunks_exact(mask.cols.max(1)).enumerate() {
        let (Some(a), Some(b)) = (
            line.iter().position(|&v| v != 0),
            line.iter().rposition(|&v| v != 0),
        ) else {
            continue;
        };
        pts.push((a as i64, r as i64));
        if b != a {
            pts.push((b as i64, r as i64));
        }
    }
    pts.sort_unstable();
    pts
}

/// Vertices of the convex hull of the mask's pixel centres (Andrew's monotone chain, no
/// collinear points); empty for an empty mask.
fn convex_hull(mask: &Mask) -> Vec<Point> {
    let pts = row_extremes(mask);
    if pts.len() < 3 {
        return pts;
    }
    let cross =
        |o: Point, a: Point, b: Point| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let chain = |it: &mut dyn Iterator<Item = Point>| {
        let mut half: Vec<Point> = Vec::new();
        for p in it {
            while half.len() >= 2 && cross(half[half.len() - 2], half[half.len() - 1], p) <= 0 {
                half.pop();
            }
            half.push(p);
        }
        half.pop();
        half
    };
    let mut hull = chain(&mut pts.iter().copied());
    hull.extend(chain(&mut pts.iter().rev().copied()));
    hull
}

/// Adds every pixel whose centre lies inside or on the convex hull of the mask's pixels. Per
/// row, the hull's edges give the span from the ceiling of the smallest to the floor of the
/// largest crossing column, in integers.
pub fn fill_convex(mask: &mut Mask) {
    let hull = convex_hull(mask);
    if hull.is_empty() {
        return;
    }
    let mut span: Vec<Option<(i64, i64)>> = vec![None; mask.rows];
    let mut widen = |r: i64, a: i64, b: i64| {
        let s = &mut span[r as usize];
        *s = Some(s.map_or((a, b), |(lo, hi)| (lo.min(a), hi.max(b))));
    };
    for (i, &p) in hull.iter().enumerate() {
        let q = hull[(i + 1) % hull.len()];
        if p.1 == q.1 {
            widen(p.1, p.0.min(q.0), p.0.max(q.0));
            continue;
        }
        let ((ax, ay), (bx, by)) = if p.1 < q.1 { (p, q) } else { (q, p) };
        let d = by - ay;
        for r in ay..=by {
            // the edge crosses row r at x = n / d
            let n = ax * d + (r - ay) * (bx - ax);
            widen(r, -(-n).div_euclid(d), n.div_euclid(d));
        }
    }
    let cols = mask.cols;
    for (r, s) in span.into_iter().enumerate() {
        if let Some((lo, hi)) = s.filter(|&(lo, hi)| lo <= hi) {
            mask.data[r * cols + lo as usize..=r * cols + hi as usize].fill(1);
        }
    }
}

/// Pixels of the mask over pixels of its [`fill_convex`] (0 when empty).
fn solidity(mask: &Mask) -> f64 {
    let n = mask.area();
    if n == 0 {
        return 0.0;
    }
    let mut filled = mask.clone();
    fill_convex(&mut filled);
    n as f64 / filled.area() as f64
}

/// Per object of `set`: the form a rule gives it, or `None`. A rule applies when the label is
/// listed and every non-empty support mask of the object is one region on the
/// `size x size` model grid (at least one non-empty); a convex or ellipse rule also needs each
/// of them to reach [`MIN_SOLIDITY`], or the object gets [`Form::Region`]. Ellipse comes before
/// convex when both list the object.
pub fn object_forms(rules: &[ShapeRule], set: &SupportSet, size: usize) -> Vec<Option<Form>> {
    set.objects
        .iter()
        .enumerate()
        .map(|(j, o)| {
            let listed = listed_forms(rules, &o.label);
            if listed.is_empty() {
                return None;
            }
            let mut grids = Vec::new();
            for p in &set.pairs {
                let grid = model_grid(p.masks.get(j)?, size);
                if grid.area() != 0 {
                    grids.push(grid);
                }
            }
            if grids.is_empty() || !grids.iter().all(|g| is_one_region(&g.data, size, size)) {
                return None;
            }
            let convex = grids.iter().all(|g| solidity(g) >= MIN_SOLIDITY);
            Some(if convex && listed.contains(&Form::Ellipse) {
                Form::Ellipse
            } else if convex && listed.contains(&Form::Convex) {
                Form::Convex
            } else {
                Form::Region
            })
        })
        .collect()
}

/// A support mask that keeps a `[[shape]]` rule from its object: with it in the set the
/// object gets `given` instead of `listed` (see [`object_forms`]). Admins see these in the
/// support set's QC, since one loosely drawn mask changes what every result of the set gets.
#[derive(Debug, Clone, PartialEq)]
pub struct FormBlocker {
    /// Index of the pair in the set's `pairs`.
    pub pair: usize,
    /// Object index.
    pub object: usize,
    /// The form the rules list for the object (the first of ellipse, convex, region).
    pub listed: Form,
    /// The form the set's masks give the object: `None` (no rule applies) or a weaker form.
    pub given: Option<Form>,
    /// What is wrong with the mask, with the numbers.
    pub reason: String,
}

impl Form {
    /// The manifest's name of the form.
    pub fn name(self) -> &'static str {
        match self {
            Form::Region => "region",
            Form::Convex => "convex",
            Form::Ellipse => "ellipse",
        }
    }
}

/// Every support mask that keeps its object from the form its `[[shape]]` rules list (the
/// checks of [`object_forms`], mask by mask): one that is more than one region on the
/// `size x size` model grid, or, for a convex or ellipse rule, one that fills less than
/// [`MIN_SOLIDITY`] of its hull. Empty masks are never blockers.
pub fn form_blockers(rules: &[ShapeRule], set: &SupportSet, size: usize) -> Vec<FormBlocker> {
    let given = object_forms(rules, set, size);
    let mut out = Vec::new();
    for (j, o) in set.objects.iter().enumerate() {
        let listed = listed_forms(rules, &o.label);
        let Some(&best) = [Form::Ellipse, Form::Convex, Form::Region]
            .iter()
            .find(|f| listed.contains(f))
        else {
            continue;
        };
        for (i, p) in set.pairs.iter().enumerate() {
            let Some(m) = p.masks.get(j) else { continue };
            let grid = model_grid(m, size);
            if grid.area() == 0 {
                continue;
            }
            let regions = region_count(&grid.data, size, size);
            let reason = if regions > 1 {
                format!("the mask is {regions} separate regions on the {size} x {size} model grid")
            } else if best != Form::Region && solidity(&grid) < MIN_SOLIDITY {
                format!(
                    "the mask fills {:.3} of its convex hull on the {size} x {size} model grid \
                     (a {} rule needs {MIN_SOLIDITY} or more)",
                    solidity(&grid),
                    best.name()
                )
            } else {
                continue;
            };
            out.push(FormBlocker {
                pair: i,
                object: j,
                listed: best,
                given: given.get(j).copied().flatten(),
                reason,
            });
        }
    }
    out
}

/// The forms the rules that list `label` give it.
fn listed_forms(rules: &[ShapeRule], label: &str) -> Vec<Form> {
    rules
        .iter()
        .filter(|r| r.objects.iter().any(|l| same_label(l, label)))
        .map(|r| r.form)
        .collect()
}

/// A support mask on the `size x size` model grid, as the rules judge it (resized as the
/// engine prepares support masks, then > 0.5).
fn model_grid(m: &Mask, size: usize) -> Mask {
    Mask {
        rows: size,
        cols: size,
        data: prepare_mask(&m.data, m.rows, m.cols, size)
            .iter()
            .map(|&v| u8::from(v > 0.5))
            .collect(),
    }
}

/// Number of 8-connected regions of the non-zero pixels.
fn region_count(data: &[u8], rows: usize, cols: usize) -> usize {
    let mut fg = Components::of(data, rows, cols);
    let mut roots = fg.roots();
    roots.sort_unstable();
    roots.dedup();
    roots.len()
}

/// Applies each object's form to its mask (mask order): [`keep_largest_region`], then
/// [`fill_convex`] for [`Form::Convex`] or [`fill_ellipse`] for [`Form::Ellipse`].
pub fn apply(forms: &[Option<Form>], masks: &mut [Mask]) {
    for (m, form) in masks.iter_mut().zip(forms) {
        let Some(form) = form else { continue };
        keep_largest_region(m);
        match form {
            Form::Region => {}
            Form::Convex => fill_convex(m),
            Form::Ellipse => {
                if let Some(e) = fill_ellipse(m) {
                    *m = e;
                }
            }
        }
    }
}

/// [`object_forms`] per support context (set version and bundle), so a set's masks are looked
/// at once, not per image. Holds at most [`FormMemo::CAPACITY`] entries (then starts again).
#[derive(Debug, Default)]
pub struct FormMemo {
    map: Mutex<HashMap<ContextKey, Arc<Vec<Option<Form>>>>>,
}

impl FormMemo {
    /// Entries kept before the memo is cleared.
    pub const CAPACITY: usize = 1024;

    /// The forms of `key`, computed by `f` when not yet known.
    pub fn get(
        &self,
        key: &ContextKey,
        f: impl FnOnce() -> Vec<Option<Form>>,
    ) -> Arc<Vec<Option<Form>>> {
        if let Some(v) = self.lock().get(key) {
            return v.clone();
        }
        let v = Arc::new(f());
        let mut map = self.lock();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(key.clone(), v.clone());
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContextKey, Arc<Vec<Option<Form>>>>> {
        // the map holds plain values: a panic elsewhere cannot leave it half written
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shape rules on every frame of a segmentation (`forms` per object, mask order).
pub fn apply_frames(forms: &[Option<Form>], frames: &mut [FrameResult]) {
    if forms.iter().any(Option::is_some) {
        for f in frames {
            apply(forms, &mut f.masks);
        }
    }
}

#[cfg(test)]
#[path = "shape_tests.rs"]
pub(crate) mod tests;
