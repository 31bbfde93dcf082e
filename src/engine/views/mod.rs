//! Resolution views: where the engine looks again, at native resolution, after the first pass
//! on the whole frame. The geometry reproduces the Python reference
//! (`scripts/model/proxyseg_model/views.py`, functions `roi_crop` and `tile_crops`) exactly,
//! including Python's round-half-to-even.
//!
//! A bundle's `manifest.toml` may list `[[resolution]]` rules (see
//! [`super::Manifest::resolution`]). Each names the objects it applies to (support-set labels,
//! case-insensitive) and one strategy:
//!
//! ```toml
//! [[resolution]]
//! strategy = "roi"                     # a square crop around the anchor's first-pass mask
//! objects = ["optic disc", "optic cup"]
//! anchor = "optic disc"
//! scale = 2.0                          # crop side / anchor bbox side (default 2.0)
//! min_side = 64                        # smallest crop side in native pixels (default 64)
//! note = "free text"
//!
//! [[resolution]]
//! strategy = "tiles"                   # grid x grid overlapping crops over the whole frame
//! objects = ["vessels"]
//! grid = 2                             # default 2
//! overlap = 0.125                      # extra tile length, fraction of L / grid (default 0.125)
//! ```
//!
//! * `roi`: anchor bbox (inclusive) `x0..x1`, `y0..y1`; `side = round(max(x1-x0+1, y1-y0+1) *
//!   scale)` clamped to `[min_side, min(rows, cols)]` (and never above `min(rows, cols)`);
//!   centre `c = (lo + hi + 1) / 2` per axis; origin `clamp(round(c - side / 2), 0, dim - side)`.
//!   The frame is cropped around its anchor's first-pass mask (an empty anchor leaves the
//!   first-pass result); each support pair is cropped around its own anchor mask (a pair whose
//!   anchor mask is empty is left out; when none remains the rule is skipped with a warning).
//!   The rule's objects take the crop's logits inside the crop and [`BACKGROUND_LOGIT`] outside.
//! * `tiles`: per axis of length `L`, tile `t = min(L, ceil(L / grid * (1 + overlap)))`, origin
//!   of tile `i` = `round(i * (L - t) / (grid - 1))` (0 when `grid = 1`); tiles in row-major
//!   order. Tile `(r, c)` of the frame is segmented with the support context built from the
//!   tiles `(r, c)` of the support pairs (each tiled at its own size). The rule's objects take,
//!   per pixel, the mean of the logits of the tiles covering it.
//!
//! A rule applies to a segmentation only when at least one of its objects is in the support set
//! (and, for `roi`, its anchor is); otherwise it is ignored. Rules apply in manifest order (a
//! later rule wins for an object two rules name); roi crops always come from the first pass.
//!
//! Outputs stay one full-size mask per object, in the set's order (`final logits > 0`); the
//! IoU score of a replaced object stays the first pass's. With `keep_tensors`,
//! [`super::FrameTensors`] keeps the first pass (`logits`, ...), the final per-object logits
//! at native size (`final_logits`) and each crop's tensors (`views`). Support contexts of
//! views are cached like the first one, under a [`super::ContextKey`] whose `view` is
//! [`ResolutionRule::view_id`]. Timings: [`super::StageTimings::views`] and `view_passes`.
//!
//! This module owns only the pure part: rule types, crop geometry, cropping images, masks and
//! support sets, and merging crop logits back. It never runs a graph or touches a cache.

use crate::dicom::pixels::Frame;

use super::support::{Mask, SupportSet};

/// The logit the rule's objects get outside a roi crop (finite, so that logits can be compared
/// and averaged; far below any threshold).
pub const BACKGROUND_LOGIT: f32 = -1.0e4;

/// Python's `round()` on a float: half to even.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// How a rule looks again.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// A square crop around the anchor object's first-pass mask.
    Roi {
        /// The object (label) whose mask places the crop.
        anchor: String,
        /// Crop side / anchor bbox side.
        scale: f64,
        /// Smallest crop side in native pixels.
        min_side: usize,
    },
    /// `grid x grid` overlapping tiles.
    Tiles {
        /// Tiles per axis.
        grid: usize,
        /// Extra tile length as a fraction of `L / grid`.
        overlap: f64,
    },
}

/// One `[[resolution]]` rule of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolutionRule {
    /// The strategy and its parameters.
    pub strategy: Strategy,
    /// Object labels the rule replaces (matched case-insensitively).
    pub objects: Vec<String>,
    /// Free text.
    pub note: String,
}

impl ResolutionRule {
    /// Checks parameters; the message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        check_labels(&self.objects)?;
        match &self.strategy {
            Strategy::Roi {
                anchor,
                scale,
                min_side,
            } => {
                if anchor.trim().is_empty() {
                    return Err("a roi rule needs an anchor object".into());
                }
                if !(scale.is_finite() && *scale > 0.0) {
                    return Err(format!("scale = {scale} must be finite and > 0"));
                }
                if *min_side == 0 {
                    return Err("min_side must be > 0".into());
                }
            }
            Strategy::Tiles { grid, overlap } => {
                if *grid == 0 {
                    return Err("grid must be > 0".into());
                }
                if !(overlap.is_finite() && *overlap >= 0.0) {
                    return Err(format!("overlap = {overlap} must be finite and >= 0"));
                }
            }
        }
        Ok(())
    }

    /// The view part of a support-context cache key: `roi:<anchor>:<scale>:<min_side>` or
    /// `tiles:<grid>:<overlap>:<r>,<c>` (never empty; the first pass has the empty view).
    /// `tile` is the tile's index in row-major order (ignored for roi).
    pub fn view_id(&self, tile: usize) -> String {
        match &self.strategy {
            Strategy::Roi {
                anchor,
                scale,
                min_side,
            } => format!("roi:{}:{scale}:{min_side}", anchor.to_lowercase()),
            Strategy::Tiles { grid, overlap } => {
                format!("tiles:{grid}:{overlap}:{},{}", tile / grid, tile % grid)
            }
        }
    }

    /// The number of support contexts (and crops per frame) the rule needs.
    pub fn views(&self) -> usize {
        match &self.strategy {
            Strategy::Roi { .. } => 1,
            Strategy::Tiles { grid, .. } => grid * grid,
        }
    }
}

/// A rule matched against a support set's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedRule {
    /// Position of the rule in the manifest.
    pub index: usize,
    /// The rule.
    pub rule: ResolutionRule,
    /// Indices (into the set's objects) of the objects the rule replaces, ascending.
    pub objects: Vec<usize>,
    /// roi: index of the anchor object.
    pub anchor: Option<usize>,
}

/// A rule's `objects`: at least one label, none blank (shared with [`super::shape`]).
pub(crate) fn check_labels(objects: &[String]) -> Result<(), String> {
    if objects.is_empty() || objects.iter().any(|o| o.trim().is_empty()) {
        return Err("objects must list at least one non-empty label".into());
    }
    Ok(())
}

pub(crate) fn same_label(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// The rules that apply to a set with these object labels (in manifest order): at least one
/// object in the set and, for roi, the anchor in the set.
pub fn match_rules(rules: &[ResolutionRule], labels: &[&str]) -> Vec<MatchedRule> {
    let mut out = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let objects: Vec<usize> = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| rule.objects.iter().any(|o| same_label(o, l)))
            .map(|(i, _)| i)
            .collect();
        if objects.is_empty() {
            continue;
        }
        let anchor = match &rule.strategy {
            Strategy::Roi { anchor, .. } => {
                match labels.iter().position(|l| same_label(anchor, l)) {
                    Some(a) => Some(a),
                    None => continue,
                }
            }
            Strategy::Tiles { .. } => None,
        };
        out.push(MatchedRule {
            index,
            rule: rule.clone(),
            objects,
            anchor,
        });
    }
    out
}

/// A rectangle of a frame in native pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// First row.
    pub y0: usize,
    /// First column.
    pub x0: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
}

impl Crop {
    /// `(y0, x0, h, w)`, as the reference writes crops.
    pub fn tuple(&self) -> (usize, usize, usize, usize) {
        (self.y0, self.x0, self.h, self.w)
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        self.h > 0 && self.w > 0 && self.y0 + self.h <= rows && self.x0 + self.w <= cols
    }

    fn plane<T: Copy>(&self, src: &[T], cols: usize, out: &mut Vec<T>) {
        for y in self.y0..self.y0 + self.h {
            out.extend_from_slice(&src[y * cols + self.x0..y * cols + self.x0 + self.w]);
        }
    }

    /// The crop of a frame (all channels); `None` when it does not fit the frame.
    pub fn frame(&self, f: &Frame) -> Option<Frame> {
        if !self.fits(f.rows, f.cols) || f.data.len() != f.rows * f.cols * f.channels {
            return None;
        }
        let mut data = Vec::with_capacity(self.h * self.w * f.channels);
        for c in 0..f.channels {
            self.plane(f.plane(c), f.cols, &mut data);
        }
        Some(Frame {
            index: f.index,
            rows: self.h,
            cols: self.w,
            channels: f.channels,
            data,
        })
    }

    /// The crop of a mask; `None` when it does not fit the mask.
    pub fn mask(&self, m: &Mask) -> Option<Mask> {
        if !self.fits(m.rows, m.cols) || m.data.len() != m.rows * m.cols {
            return None;
        }
        let mut data = Vec::with_capacity(self.h * self.w);
        self.plane(&m.data, m.cols, &mut data);
        Some(Mask {
            rows: self.h,
            cols: self.w,
            data,
        })
    }
}

/// The square roi crop around a mask (`rows x cols`, non-zero = inside), or `None` when the
/// mask is empty. Reference: `views.roi_crop`.
pub fn roi_crop(
    mask: &[u8],
    rows: usize,
    cols: usize,
    scale: f64,
    min_side: usize,
) -> Option<Crop> {
    if rows == 0 || cols == 0 || mask.len() != rows * cols {
        return None;
    }
    let (mut y0, mut y1, mut x0, mut x1) = (usize::MAX, 0, usize::MAX, 0);
    for (y, row) in mask.chunks_exact(cols).enumerate() {
        let Some(first) = row.iter().position(|&v| v != 0) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
        y0 = y0.min(y);
        y1 = y;
        x0 = x0.min(first);
        x1 = x1.max(last);
    }
    if y0 == usize::MAX {
        return None;
    }
    let extent = (x1 - x0 + 1).max(y1 - y0 + 1);
    let side = round_half_even(extent as f64 * scale) as usize;
    let small = rows.min(cols);
    let side = min_side.max(side.min(small)).min(small);
    let origin = |lo: usize, hi: usize, length: usize| -> usize {
        let c = (lo + hi + 1) as f64 / 2.0;
        let o = round_half_even(c - side as f64 / 2.0).max(0.0) as usize;
        o.min(length - side)
    };
    Some(Crop {
        y0: origin(y0, y1, rows),
        x0: origin(x0, x1, cols),
        h: side,
        w: side,
    })
}

/// The `grid x grid` tiles of a `rows x cols` image, row-major. Reference: `views.tile_crops`.
pub fn tile_crops(rows: usize, cols: usize, grid: usize, overlap: f64) -> Vec<Crop> {
    let grid = grid.max(1);
    let axis = |length: usize| -> (Vec<usize>, usize) {
        let t = (length as f64 / grid as f64 * (1.0 + overlap)).ceil() as usize;
        let t = length.min(t);
        if grid == 1 {
            return (vec![0], t);
        }
        let origins = (0..grid)
            .map(|i| round_half_even((i * (length - t)) as f64 / (grid - 1) as f64) as usize)
            .collect();
        (origins, t)
    };
    let (ys, th) = axis(rows);
    let (xs, tw) = axis(cols);
    ys.iter()
        .flat_map(|&y0| {
            xs.iter().map(move |&x0| Crop {
                y0,
                x0,
                h: th,
                w: tw,
            })
        })
        .collect()
}

/// The set whose pairs are cropped around their own `anchor` masks (roi rule). Pairs with an
/// empty anchor mask are left out; `None` when no pair remains.
pub fn roi_support_set(
    set: &SupportSet,
    anchor: usize,
    scale: f64,
    min_side: usize,
) -> Option<SupportSet> {
    crop_support_set(set, |p| {
        let a = p.masks.get(anchor)?;
        if (a.rows, a.cols) != (p.image.rows, p.image.cols) {
            return None;
        }
        roi_crop(&a.data, a.rows, a.cols, scale, min_side)
    })
}

/// The set whose pairs are cut to their tile `index` (row-major) of a `grid x grid` tiling
/// at each pair's own size.
pub fn tile_support_set(
    set: &SupportSet,
    grid: usize,
    overlap: f64,
    index: usize,
) -> Option<SupportSet> {
    crop_support_set(set, |p| {
        tile_crops(p.image.rows, p.image.cols, grid, overlap)
            .get(index)
            .copied()
    })
}

fn crop_support_set(
    set: &SupportSet,
    mut crop_of: impl FnMut(&super::support::SupportPair) -> Option<Crop>,
) -> Option<SupportSet> {
    let pairs: Vec<_> = set
        .pairs
        .iter()
        .filter_map(|p| {
            let c = crop_of(p)?;
            let image = c.frame(&p.image)?;
            let masks = p
                .masks
                .iter()
                .map(|m| c.mask(m))
                .collect::<Option<Vec<_>>>()?;
            Some(super::support::SupportPair { image, masks })
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some(SupportSet {
        name: set.name.clone(),
        version: set.version.clone(),
        objects: set.objects.clone(),
        pairs,
    })
}

/// A roi crop's logits (`crop.h x crop.w`) on a `rows x cols` plane: the crop's values inside,
/// [`BACKGROUND_LOGIT`] outside.
pub fn paste_roi(crop: Crop, logits: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![BACKGROUND_LOGIT; rows * cols];
    for (y, row) in logits.chunks_exact(crop.w).take(crop.h).enumerate() {
        let start = (crop.y0 + y) * cols + crop.x0;
        out[start..start + crop.w].copy_from_slice(row);
    }
    out
}

/// Per-pixel mean of tile logits on a `rows x cols` plane.
#[derive(Debug, Clone)]
pub struct TileMean {
    cols: usize,
    sum: Vec<f32>,
    count: Vec<u32>,
}

impl TileMean {
    /// An empty accumulator.
    pub fn new(rows: usize, cols: usize) -> TileMean {
        TileMean {
            cols,
            sum: vec![0.0; rows * cols],
            count: vec![0; rows * cols],
        }
    }

    /// Adds one tile's logits (`crop.h x crop.w`).
    pub fn add(&mut self, crop: Crop, logits: &[f32]) {
        for (y, row) in logits.chunks_exact(crop.w).take(crop.h).enumerate() {
            let start = (crop.y0 + y) * self.cols + crop.x0;
            for (i, &v) in row.iter().enumerate() {
                self.sum[start + i] += v;
                self.count[start + i] += 1;
            }
        }
    }

    /// The mean where tiles cover a pixel, `fallback` where none does.
    pub fn finish(self, fallback: &[f32]) -> Vec<f32> {
        self.sum
            .iter()
            .zip(&self.count)
            .zip(fallback)
            .map(|((&s, &n), &f)| if n == 0 { f } else { s / n as f32 })
            .collect()
    }
}

#[cfg(test)]
mod tests;
