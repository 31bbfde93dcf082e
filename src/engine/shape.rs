//! Shape rules: a bundle's `[[shape]]` tables name objects that are one connected region (the
//! optic disc, a fetal head). For such an object the prediction keeps its largest region, so
//! the overlay a radiologist opens has no stray islands.
//!
//! A rule applies to an object of a support set only when its label is listed and every
//! non-empty support mask of that object is itself one region on the model grid: the support
//! set, not the label alone, decides, so a set whose masks show two lesions is left as
//! predicted. Regions are 8-connected. Holes are left as they are: filling them flipped
//! hundreds of pixels when a ring-like prediction closed or opened by one pixel (float vs
//! int8 graphs) and gained at most 0.2 Dice on the validation cases. The Python reference
//! (`scripts/model/proxyseg_model/shape.py`) follows the same steps, ties included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::infer::FrameResult;
use super::preprocess::prepare_mask;
use super::support::{Mask, SupportSet};
use super::support_cache::ContextKey;
use super::views::{check_labels, same_label};

/// One `[[shape]]` table of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRule {
    /// Object labels that are one connected region (matched case-insensitively).
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

/// Per object of `set`: whether a rule applies (its label is listed, and every non-empty
/// support mask of it is one region on the `size x size` model grid, at least one non-empty).
pub fn region_objects(rules: &[ShapeRule], set: &SupportSet, size: usize) -> Vec<bool> {
    set.objects
        .iter()
        .enumerate()
        .map(|(j, o)| {
            if !rules
                .iter()
                .any(|r| r.objects.iter().any(|l| same_label(l, &o.label)))
            {
                return false;
            }
            let mut seen = false;
            for p in &set.pairs {
                let Some(m) = p.masks.get(j) else {
                    return false;
                };
                let grid: Vec<u8> = prepare_mask(&m.data, m.rows, m.cols, size)
                    .iter()
                    .map(|&v| u8::from(v > 0.5))
                    .collect();
                if grid.iter().all(|&v| v == 0) {
                    continue;
                }
                if !is_one_region(&grid, size, size) {
                    return false;
                }
                seen = true;
            }
            seen
        })
        .collect()
}

/// Applies [`keep_largest_region`] to the masks of the objects marked in `one_region` (mask order).
pub fn apply(one_region: &[bool], masks: &mut [Mask]) {
    for (m, _) in masks.iter_mut().zip(one_region).filter(|(_, &s)| s) {
        keep_largest_region(m);
    }
}

/// [`region_objects`] per support context (set version and bundle), so a set's masks are
/// looked at once, not per image. Holds at most [`RegionMemo::CAPACITY`] entries (then starts
/// again).
#[derive(Debug, Default)]
pub struct RegionMemo {
    map: Mutex<HashMap<ContextKey, Arc<Vec<bool>>>>,
}

impl RegionMemo {
    /// Entries kept before the memo is cleared.
    pub const CAPACITY: usize = 1024;

    /// The flags of `key`, computed by `f` when not yet known.
    pub fn get(&self, key: &ContextKey, f: impl FnOnce() -> Vec<bool>) -> Arc<Vec<bool>> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContextKey, Arc<Vec<bool>>>> {
        // the map holds plain flags: a panic elsewhere cannot leave it half written
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shape rules on every frame of a segmentation (`one_region` per object, mask order).
pub fn apply_frames(one_region: &[bool], frames: &mut [FrameResult]) {
    if one_region.iter().any(|&s| s) {
        for f in frames {
            apply(one_region, &mut f.masks);
        }
    }
}

#[cfg(test)]
#[path = "shape_tests.rs"]
mod tests;
