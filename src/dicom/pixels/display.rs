//! Decoded samples -> display frames on the 0..255 scale, as the Python reference's
//! `to_display`: samples read as f32 (masked to Bits Stored, sign-extended), the Modality LUT
//! (rescale), the VOI window (DICOM linear function, else a 0.5 %..99.5 % percentile window),
//! MONOCHROME1 inversion, RGB / YBR_FULL / YBR_FULL_422 to R, G, B planes, and PALETTE COLOR
//! lookup tables ([`Palette`]).

use super::{Frame, PixelError};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::PhotometricInterpretation;

/// One decoded frame's samples as the codec handed them back, with what converting them
/// needs.
pub(super) struct RawFrame<'a> {
    /// Zero-based frame number within its object.
    pub index: u32,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Samples per pixel.
    pub spp: u16,
    /// Bits allocated: 8, 16 or 32 (1-bit samples come expanded to one byte each).
    pub bits: u16,
    /// Bits stored.
    pub bits_stored: u16,
    /// Signed samples (Pixel Representation 1).
    pub signed: bool,
    /// The frame's photometric interpretation.
    pub pi: PhotometricInterpretation,
    /// Colour-by-plane (Planar Configuration 1): R plane, G plane, B plane.
    pub planar: bool,
    /// The frame's bytes, exactly `rows * cols * spp * bits / 8`.
    pub raw: &'a [u8],
    /// The frame's own rescale slope and intercept.
    pub rescale: (f32, f32),
    /// The VOI window (center, width), if there is one.
    pub window: Option<(f32, f32)>,
}

impl RawFrame<'_> {
    /// The display frame (`palette`: the object's PALETTE COLOR tables, if it has them).
    pub(super) fn convert(&self, palette: Option<&Palette>) -> Result<Frame, PixelError> {
        let (f, rows, cols) = (self.index, self.rows, self.cols);
        let (spp, bits, bits_stored, signed) = (self.spp, self.bits, self.bits_stored, self.signed);
        let (pi, planar, raw) = (&self.pi, self.planar, self.raw);
        let (slope, intercept) = self.rescale;
        let window = self.window;
        let pixels = rows * cols;
        // 8-bit interleaved RGB (photographs, most colour images): one pass, bytes to planes.
        if *pi == PhotometricInterpretation::Rgb && spp == 3 && bits == 8 && !signed && !planar {
            let mut planes = vec![0f32; 3 * pixels];
            let (r, gb) = planes.split_at_mut(pixels);
            let (g, b) = gb.split_at_mut(pixels);
            for (i, px) in raw.chunks_exact(3).enumerate() {
                r[i] = px[0] as f32;
                g[i] = px[1] as f32;
                b[i] = px[2] as f32;
            }
            return Ok(Frame {
                index: f,
                rows,
                cols,
                channels: 3,
                data: planes,
            });
        }
        let samples = read_samples(raw, bits, bits_stored, signed);
        let data = match pi {
            PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => {
                if spp != 1 {
                    return Err(PixelError::Unsupported(format!(
                        "{pi} with {spp} samples per pixel"
                    )));
                }
                let x: Vec<f32> = samples.iter().map(|&v| v * slope + intercept).collect();
                let mut y = match window {
                    Some((c, w)) => voi_linear(&x, c, w),
                    None => percentile_window(&x),
                };
                if *pi == PhotometricInterpretation::Monochrome1 {
                    y.iter_mut().for_each(|v| *v = 255.0 - *v);
                }
                y
            }
            PhotometricInterpretation::Rgb => {
                check_spp(pi, spp, 3)?;
                let mut planes = to_planes(&samples, pixels, planar);
                if bits > 8 {
                    // Wider colour samples are scaled onto 0..255 by their stored range.
                    let max = ((1u64 << bits_stored.min(32)) - 1) as f32;
                    planes.iter_mut().for_each(|v| *v = *v * 255.0 / max);
                }
                planes
            }
            PhotometricInterpretation::YbrFull => {
                check_spp(pi, spp, 3)?;
                check_8bit(pi, bits)?;
                ybr_to_rgb(&to_planes(&samples, pixels, planar), pixels)
            }
            PhotometricInterpretation::YbrFull422 => {
                // Codecs hand back full-resolution samples; native 4:2:2 was expanded when
                // the source was prepared.
                check_spp(pi, spp, 3)?;
                check_8bit(pi, bits)?;
                ybr_to_rgb(&to_planes(&samples, pixels, planar), pixels)
            }
            PhotometricInterpretation::PaletteColor => {
                check_spp(pi, spp, 1)?;
                match palette {
                    Some(p) => p.apply(&samples),
                    None => {
                        return Err(PixelError::Unsupported("PALETTE COLOR without LUT".into()))
                    }
                }
            }
            other => {
                return Err(PixelError::Unsupported(format!(
                    "photometric interpretation {other} is not supported"
                )))
            }
        };
        let channels = data.len() / pixels;
        Ok(Frame {
            index: f,
            rows,
            cols,
            channels,
            data,
        })
    }
}

fn check_spp(pi: &PhotometricInterpretation, spp: u16, want: u16) -> Result<(), PixelError> {
    if spp == want {
        Ok(())
    } else {
        Err(PixelError::Unsupported(format!(
            "{pi} with {spp} samples per pixel"
        )))
    }
}

fn check_8bit(pi: &PhotometricInterpretation, bits: u16) -> Result<(), PixelError> {
    if bits == 8 {
        Ok(())
    } else {
        Err(PixelError::Unsupported(format!(
            "{pi} with {bits} bits allocated"
        )))
    }
}

/// The first WindowCenter and first WindowWidth of the top-level dataset, if both parse.
pub(super) fn first_window(obj: &InMemDicomObject) -> Option<(f32, f32)> {
    let first = |tag| -> Option<f32> {
        let e = obj.element_opt(tag).ok().flatten()?;
        let v: Vec<f64> = e.to_multi_float64().ok()?;
        v.first().map(|&x| x as f32)
    };
    Some((first(tags::WINDOW_CENTER)?, first(tags::WINDOW_WIDTH)?))
}

/// Samples as f32 (numpy's `astype(float32)`), masked to BitsStored and sign-extended when
/// signed.
fn read_samples(raw: &[u8], bits: u16, bits_stored: u16, signed: bool) -> Vec<f32> {
    let stored = bits_stored.clamp(1, bits) as u32;
    let fix = |v: u64| -> f32 {
        let mask = if stored >= 64 {
            u64::MAX
        } else {
            (1u64 << stored) - 1
        };
        let v = v & mask;
        if signed && stored < 64 && (v >> (stored - 1)) & 1 == 1 {
            (v | !mask) as i64 as f32
        } else {
            v as f32
        }
    };
    match bits {
        8 if !signed && stored == 8 => raw.iter().map(|&b| b as f32).collect(),
        8 => raw.iter().map(|&b| fix(b as u64)).collect(),
        16 => raw
            .chunks_exact(2)
            .map(|c| fix(u16::from_le_bytes([c[0], c[1]]) as u64))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| fix(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64))
            .collect(),
    }
}

/// Interleaved or planar 3-sample pixels -> R, G, B planes (f32).
fn to_planes(samples: &[f32], pixels: usize, planar: bool) -> Vec<f32> {
    let mut out = vec![0f32; 3 * pixels];
    if planar {
        for (o, s) in out.iter_mut().zip(samples) {
            *o = *s;
        }
    } else {
        for i in 0..pixels {
            for c in 0..3 {
                out[c * pixels + i] = samples[3 * i + c];
            }
        }
    }
    out
}

/// YBR_FULL -> RGB as pydicom's `convert_color_space` (PS3.3 C.7.6.3.1.2), rounded and
/// clipped to 0..255 like its uint8 result.
fn ybr_to_rgb(planes: &[f32], pixels: usize) -> Vec<f32> {
    let mut out = vec![0f32; 3 * pixels];
    for i in 0..pixels {
        let y = planes[i] as f64;
        let cb = planes[pixels + i] as f64 - 128.0;
        let cr = planes[2 * pixels + i] as f64 - 128.0;
        let r = y + 1.402 * cr;
        let g = y - 0.344136 * cb - 0.714136 * cr;
        let b = y + 1.772 * cb;
        for (c, v) in [r, g, b].into_iter().enumerate() {
            out[c * pixels + i] = v.round().clamp(0.0, 255.0) as f32;
        }
    }
    out
}

/// DICOM linear VOI function onto 0..255, in f32 as the Python reference.
pub fn voi_linear(x: &[f32], c: f32, w: f32) -> Vec<f32> {
    if w <= 1.0 {
        return x
            .iter()
            .map(|&v| if v <= c - 0.5 { 0.0 } else { 255.0 })
            .collect();
    }
    let c5 = c - 0.5;
    let w1 = w - 1.0;
    x.iter()
        .map(|&v| (((v - c5) / w1 + 0.5) * 255.0).clamp(0.0, 255.0))
        .collect()
}

/// numpy's `percentile(x, q)` with linear interpolation, on a scratch copy.
fn percentile(scratch: &mut [f32], q: f64) -> f64 {
    let n = scratch.len();
    let pos = q / 100.0 * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let t = pos - lo as f64;
    let (_, a, rest) = scratch.select_nth_unstable_by(lo, f32::total_cmp);
    let a = *a as f64;
    if lo + 1 >= n || t == 0.0 {
        return a;
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    // numpy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) when t >= 0.5.
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Percentile (0.5 %, 99.5 %) window onto 0..255 (hi <= lo gives zeros).
pub fn percentile_window(x: &[f32]) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut scratch = x.to_vec();
    let lo = percentile(&mut scratch, 0.5) as f32;
    let hi = percentile(&mut scratch, 99.5) as f32;
    if hi <= lo {
        return vec![0.0; x.len()];
    }
    let d = hi - lo;
    x.iter()
        .map(|&v| ((v - lo) / d * 255.0).clamp(0.0, 255.0))
        .collect()
}

/// A PALETTE COLOR lookup table (three channels).
pub(super) struct Palette {
    first: i64,
    luts: [Vec<f32>; 3],
}

impl Palette {
    /// Reads the three tables of `obj`.
    pub(super) fn read(obj: &InMemDicomObject) -> Result<Palette, PixelError> {
        let specs = [
            (
                "RedPaletteColorLookupTableDescriptor",
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
            (
                "GreenPaletteColorLookupTableDescriptor",
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
            (
                "BluePaletteColorLookupTableDescriptor",
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
        ];
        let mut luts: [Vec<f32>; 3] = Default::default();
        let mut first = 0;
        for (i, (name, dtag, ltag)) in specs.into_iter().enumerate() {
            let desc: Vec<i64> = obj
                .element_opt(dtag)
                .ok()
                .flatten()
                .and_then(|e| e.to_multi_int::<i64>().ok())
                .ok_or(PixelError::Attribute {
                    name,
                    message: "missing (segmented palettes are not supported)".into(),
                })?;
            if desc.len() != 3 {
                return Err(PixelError::Attribute {
                    name,
                    message: format!("has {} values, 3 expected", desc.len()),
                });
            }
            let entries = if desc[0] <= 0 {
                65536
            } else {
                desc[0] as usize
            };
            first = desc[1] & 0xFFFF;
            let entry_bits = desc[2];
            let data = obj
                .element_opt(ltag)
                .ok()
                .flatten()
                .and_then(|e| e.to_bytes().ok().map(|b| b.into_owned()))
                .ok_or(PixelError::Attribute {
                    name,
                    message: "LUT data missing".into(),
                })?;
            let values: Vec<f32> = if entry_bits == 8 && data.len() == entries {
                data.iter().map(|&b| b as f32).collect()
            } else {
                let words: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                if entry_bits == 8 {
                    words.iter().map(|&w| (w & 0xFF) as f32).collect()
                } else {
                    words.iter().map(|&w| (w >> 8) as f32).collect()
                }
            };
            if values.len() < entries {
                return Err(PixelError::Attribute {
                    name,
                    message: format!("LUT has {} entries, {entries} announced", values.len()),
                });
            }
            luts[i] = values[..entries].to_vec();
        }
        Ok(Palette { first, luts })
    }

    /// The R, G, B planes of `samples`.
    pub(super) fn apply(&self, samples: &[f32]) -> Vec<f32> {
        let n = samples.len();
        let mut out = vec![0f32; 3 * n];
        for (c, lut) in self.luts.iter().enumerate() {
            let last = lut.len() as i64 - 1;
            for (i, &s) in samples.iter().enumerate() {
                let idx = (s as i64 - self.first).clamp(0, last) as usize;
                out[c * n + i] = lut[idx];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile(np.arange(10, dtype=float32), [0.5, 99.5]) == [0.045, 8.955]
        let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let mut s = x.clone();
        assert!((percentile(&mut s, 0.5) - 0.045).abs() < 1e-9);
        assert!((percentile(&mut s, 99.5) - 8.955).abs() < 1e-9);
    }

    #[test]
    fn window_follows_the_dicom_formula() {
        let y = voi_linear(&[0.0, 40.0, 80.0, 1000.0, -1000.0], 40.0, 80.0);
        assert_eq!(y[3], 255.0);
        assert_eq!(y[4], 0.0);
        assert!((y[1] - ((0.5 / 79.0 + 0.5) * 255.0)).abs() < 1e-4);
        assert_eq!(voi_linear(&[0.0, 1.0], 0.6, 1.0), vec![0.0, 255.0]);
    }

    #[test]
    fn constant_frame_gives_zeros() {
        assert_eq!(percentile_window(&[7.0; 16]), vec![0.0; 16]);
    }

    #[test]
    fn signed_samples_are_sign_extended() {
        // 12 bits stored in 16: 0x0FFF is -1.
        assert_eq!(read_samples(&[0xFF, 0x0F], 16, 12, true), vec![-1.0]);
        assert_eq!(read_samples(&[0xFF, 0x0F], 16, 12, false), vec![4095.0]);
    }
}
