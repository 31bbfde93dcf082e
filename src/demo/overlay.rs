//! Overlay pictures for the demo: the source image in grey or colour, each segment blended in
//! its display colour with its outline, and a legend drawn with a tiny built-in bitmap font
//! (no font files needed).

use std::path::Path;

/// An RGB picture.
pub struct Canvas {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// RGB bytes, row by row.
    pub rgb: Vec<u8>,
}

impl Canvas {
    /// A canvas from planar 0..255 values (1 or 3 channels), as decoded by `dicom::pixels`.
    pub fn from_frame(f: &crate::dicom::pixels::Frame, legend_rows: usize) -> Canvas {
        let (w, h) = (f.cols, f.rows);
        let mut rgb = vec![0u8; w * (h + legend_rows) * 3];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let plane = if f.channels == 3 { c } else { 0 };
                    rgb[(y * w + x) * 3 + c] =
                        f.data[plane * w * h + y * w + x].clamp(0.0, 255.0) as u8;
                }
            }
        }
        Canvas {
            width: w,
            height: h + legend_rows,
            rgb,
        }
    }

    fn put(&mut self, x: usize, y: usize, c: [u8; 3], alpha: f32) {
        if x >= self.width || y >= self.height {
            return;
        }
        let i = (y * self.width + x) * 3;
        for (dst, src) in self.rgb[i..i + 3].iter_mut().zip(c) {
            *dst = (*dst as f32 * (1.0 - alpha) + src as f32 * alpha).round() as u8;
        }
    }

    /// Blends a mask (rows x cols, non-zero inside) in `color`, with an opaque outline.
    pub fn blend(&mut self, mask: &[u8], cols: usize, rows: usize, color: [u8; 3]) {
        let inside = |x: isize, y: isize| {
            x >= 0
                && y >= 0
                && (x as usize) < cols
                && (y as usize) < rows
                && mask[y as usize * cols + x as usize] != 0
        };
        for y in 0..rows {
            for x in 0..cols {
                if mask[y * cols + x] == 0 {
                    continue;
                }
                let (xi, yi) = (x as isize, y as isize);
                let edge = !(inside(xi - 1, yi)
                    && inside(xi + 1, yi)
                    && inside(xi, yi - 1)
                    && inside(xi, yi + 1));
                self.put(x, y, color, if edge { 1.0 } else { 0.35 });
            }
        }
    }

    /// Writes `text` at (x, y) with a 5x7 font scaled by `scale`.
    pub fn text(&mut self, x: usize, y: usize, text: &str, color: [u8; 3], scale: usize) {
        let mut cx = x;
        for ch in text.chars() {
            let g = glyph(ch.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.put(cx + col * scale + dx, y + row * scale + dy, color, 1.0);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, color: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, color, 1.0);
            }
        }
    }

    /// Saves as PNG.
    pub fn save_png(&self, path: &Path) -> Result<(), String> {
        let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(f),
            self.width as u32,
            self.height as u32,
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&self.rgb).map_err(|e| e.to_string())
    }
}

/// 5x7 glyphs (each row's low 5 bits, MSB left) for the characters the legend uses.
fn glyph(c: char) -> [u8; 7] {
    match c {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_and_legend_draw_pixels() {
        let f = crate::dicom::pixels::Frame {
            index: 0,
            rows: 4,
            cols: 4,
            channels: 1,
            data: vec![100.0; 16],
        };
        let mut c = Canvas::from_frame(&f, 10);
        let mut m = vec![0u8; 16];
        m[5] = 1;
        c.blend(&m, 4, 4, [255, 0, 0]);
        assert_eq!(
            &c.rgb[15..18],
            &[255, 0, 0],
            "an isolated pixel is its own outline"
        );
        assert_eq!(&c.rgb[0..3], &[100, 100, 100]);
        c.text(0, 4, "A", [0, 255, 0], 1);
        assert!(c.rgb.chunks(3).any(|p| p == [0, 255, 0]));
    }
}
