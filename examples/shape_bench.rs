//! Times the engine's `[[shape]]` operations (`keep_largest_region`, then `fill_convex` or
//! `fill_ellipse`) on the
//! masks written by `scripts/bench/shape/gen_masks.py` (run it through `scripts/bench/shape/run`).
//!
//! Usage: `cargo run --release --example shape_bench -- DIR [REPEATS]`
//!
//! DIR holds `index.txt` (`name rows cols` per line) and `<name>.u8` (rows x cols bytes, non-zero
//! = inside). Prints `name largest_ms convex_ms ellipse_ms convex_area ellipse_area` per mask:
//! the median of REPEATS runs (default 15) of each step on a fresh copy of the largest region,
//! and the pixels set after the convex and after the ellipse step (the region's own when no
//! ellipse is trusted).

use std::path::PathBuf;
use std::time::Instant;

use proxyseg::engine::ellipse::fill_ellipse;
use proxyseg::engine::shape::{fill_convex, keep_largest_region};
use proxyseg::engine::support::Mask;

/// Median of `repeats` timings (ms) of `f` on fresh copies of `m`; returns it and the last result.
fn median_ms(m: &Mask, repeats: usize, f: impl Fn(&mut Mask)) -> (f64, Mask) {
    let mut times = Vec::with_capacity(repeats);
    let mut out = m.clone();
    for _ in 0..repeats {
        out = m.clone();
        let t = Instant::now();
        f(&mut out);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: shape_bench DIR [REPEATS]")?);
    let repeats: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(15);
    for line in std::fs::read_to_string(dir.join("index.txt"))?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, rows, cols] = f[..] else {
            return Err(format!("index.txt: bad line {line:?}").into());
        };
        let (rows, cols): (usize, usize) = (rows.parse()?, cols.parse()?);
        let data = std::fs::read(dir.join(format!("{name}.u8")))?;
        if data.len() != rows * cols {
            return Err(
                format!("{name}.u8: {} bytes, expected {}", data.len(), rows * cols).into(),
            );
        }
        let m = Mask { rows, cols, data };
        let (largest_ms, region) = median_ms(&m, repeats.max(1), keep_largest_region);
        let (convex_ms, filled) = median_ms(&region, repeats.max(1), fill_convex);
        let (ellipse_ms, ellipse) = median_ms(&region, repeats.max(1), |m| {
            if let Some(e) = fill_ellipse(m) {
                *m = e;
            }
        });
        println!(
            "{name} {largest_ms:.3} {convex_ms:.3} {ellipse_ms:.3} {} {}",
            filled.area(),
            ellipse.area()
        );
    }
    Ok(())
}
