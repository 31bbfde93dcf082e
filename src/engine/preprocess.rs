//! Geometry shared with the Python reference (`scripts/model/proxyseg_model/preprocess.py`):
//! longest side to S with torch's bilinear (`align_corners=False`, no antialias), per-channel
//! normalisation, zero padding; masks on the same geometry; logits back to source size.
//!
//! Owns only arithmetic on f32 buffers, in the same order of operations as torch's CPU
//! kernel, so that tensors agree with the reference to float rounding. It never reads files.

use crate::dicom::pixels::Frame;

/// The size a source image takes inside the S x S model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Source rows.
    pub rows: usize,
    /// Source columns.
    pub cols: usize,
    /// Rows after resizing (the rest of S is padding).
    pub new_h: usize,
    /// Columns after resizing.
    pub new_w: usize,
    /// The model input size S.
    pub size: usize,
}

impl Geometry {
    /// `new = int(dim * S / max(rows, cols) + 0.5)`, as the reference.
    pub fn new(rows: usize, cols: usize, size: usize) -> Geometry {
        let m = rows.max(cols).max(1) as f64;
        let f = |d: usize| (((d as f64) * size as f64 / m + 0.5) as usize).clamp(1, size);
        Geometry {
            rows,
            cols,
            new_h: f(rows),
            new_w: f(cols),
            size,
        }
    }
}

/// One axis of torch's bilinear interpolation: for each output index, the two source
/// indices and their weights.
struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f32>,
    w1: Vec<f32>,
}

impl Axis {
    /// torch `area_pixel_compute_source_index` (align_corners=False) and
    /// `compute_indices_weights_linear`, computed in f32 like its `opmath_t`.
    fn new(input: usize, output: usize) -> Axis {
        let scale = input as f32 / output as f32;
        let mut a = Axis {
            i0: Vec::with_capacity(output),
            i1: Vec::with_capacity(output),
            w0: Vec::with_capacity(output),
            w1: Vec::with_capacity(output),
        };
        for d in 0..output {
            let src = scale * (d as f32 + 0.5) - 0.5;
            let src = if src < 0.0 { 0.0 } else { src };
            let i0 = (src as usize).min(input - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let l0 = 1.0 - l1;
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            a.i0.push(i0);
            a.i1.push(i1);
            a.w0.push(l0);
            a.w1.push(l1);
        }
        a
    }
}

/// Bilinear resize of one plane (row stride `stride`, reading `in_h x in_w`) into
/// `out`, which has row stride `out_stride`. Same arithmetic as torch's CPU kernel:
/// `(x00 * wx0 + x01 * wx1) * wy0 + (x10 * wx0 + x11 * wx1) * wy1`.
#[allow(clippy::too_many_arguments)]
fn resize_plane(
    src: &[f32],
    in_h: usize,
    in_w: usize,
    stride: usize,
    out: &mut [f32],
    out_h: usize,
    out_w: usize,
    out_stride: usize,
    mut map: impl FnMut(f32) -> f32,
) {
    let ay = Axis::new(in_h, out_h);
    let ax = Axis::new(in_w, out_w);
    for y in 0..out_h {
        let r0 = &src[ay.i0[y] * stride..];
        let r1 = &src[ay.i1[y] * stride..];
        let (wy0, wy1) = (ay.w0[y], ay.w1[y]);
        let o = &mut out[y * out_stride..y * out_stride + out_w];
        for (x, ov) in o.iter_mut().enumerate() {
            let (x0, x1, wx0, wx1) = (ax.i0[x], ax.i1[x], ax.w0[x], ax.w1[x]);
            let t0 = r0[x0] * wx0 + r0[x1] * wx1;
            let t1 = r1[x0] * wx0 + r1[x1] * wx1;
            *ov = map(t0 * wy0 + t1 * wy1);
        }
    }
}

/// A display frame -> the model input `[3, S, S]` (resized, normalised, zero-padded).
pub fn prepare_image(
    frame: &Frame,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> (Vec<f32>, Geometry) {
    let g = Geometry::new(frame.rows, frame.cols, size);
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    if frame.channels == 1 {
        let mut tmp = vec![0f32; g.new_h * g.new_w];
        resize_plane(
            frame.plane(0),
            frame.rows,
            frame.cols,
            frame.cols,
            &mut tmp,
            g.new_h,
            g.new_w,
            g.new_w,
            |v| v,
        );
        for c in 0..3 {
            let o = &mut out[c * plane..(c + 1) * plane];
            for y in 0..g.new_h {
                for x in 0..g.new_w {
                    o[y * size + x] = (tmp[y * g.new_w + x] - mean[c]) / std[c];
                }
            }
        }
    } else {
        for c in 0..3 {
            let (m, s) = (mean[c], std[c]);
            resize_plane(
                frame.plane(c),
                frame.rows,
                frame.cols,
                frame.cols,
                &mut out[c * plane..(c + 1) * plane],
                g.new_h,
                g.new_w,
                size,
                |v| (v - m) / s,
            );
        }
    }
    (out, g)
}

/// A binary mask (`rows x cols`, non-zero = inside) -> `[S, S]` 0/1 (bilinear, >= 0.5, padded).
pub fn prepare_mask(mask: &[u8], rows: usize, cols: usize, size: usize) -> Vec<f32> {
    let g = Geometry::new(rows, cols, size);
    let src: Vec<f32> = mask
        .iter()
        .map(|&v| if v != 0 { 1.0 } else { 0.0 })
        .collect();
    let mut out = vec![0f32; size * size];
    resize_plane(
        &src,
        rows,
        cols,
        cols,
        &mut out,
        g.new_h,
        g.new_w,
        size,
        |v| {
            if v >= 0.5 {
                1.0
            } else {
                0.0
            }
        },
    );
    out
}

/// Low-resolution logits of one object (`lh x lw`) -> logits at the source size:
/// bilinear to S x S, crop to the resized size, bilinear to rows x cols.
pub fn postprocess_logits(low: &[f32], lh: usize, lw: usize, g: &Geometry) -> Vec<f32> {
    let s = g.size;
    let mut full = vec![0f32; s * s];
    resize_plane(low, lh, lw, lw, &mut full, s, s, s, |v| v);
    let mut out = vec![0f32; g.rows * g.cols];
    resize_plane(
        &full,
        g.new_h,
        g.new_w,
        s,
        &mut out,
        g.rows,
        g.cols,
        g.cols,
        |v| v,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_like_the_reference() {
        let g = Geometry::new(512, 384, 256);
        assert_eq!((g.new_h, g.new_w), (256, 192));
        let g = Geometry::new(100, 33, 256);
        assert_eq!((g.new_h, g.new_w), (256, 84)); // 33*2.56+0.5 = 84.98
    }

    #[test]
    fn bilinear_matches_torch_on_a_small_case() {
        // torch: F.interpolate(tensor([[[[0.,1.,2.,3.]]]]), size=(1,2), mode="bilinear",
        // align_corners=False) == [[0.5, 2.5]]; and upsampling [0, 1] to 4 gives
        // [0, 0.25, 0.75, 1].
        let mut o = vec![0f32; 2];
        resize_plane(&[0., 1., 2., 3.], 1, 4, 4, &mut o, 1, 2, 2, |v| v);
        assert_eq!(o, vec![0.5, 2.5]);
        let mut o = vec![0f32; 4];
        resize_plane(&[0., 1.], 1, 2, 2, &mut o, 1, 4, 4, |v| v);
        assert_eq!(o, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn padding_stays_zero_after_normalisation() {
        let f = Frame {
            index: 0,
            rows: 2,
            cols: 4,
            channels: 1,
            data: vec![255.0; 8],
        };
        let (t, g) = prepare_image(&f, 8, [100.0; 3], [50.0; 3]);
        assert_eq!((g.new_h, g.new_w), (4, 8));
        assert!((t[0] - 3.1).abs() < 1e-6);
        assert_eq!(t[4 * 8], 0.0);
    }
}
