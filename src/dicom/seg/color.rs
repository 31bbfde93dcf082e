//! sRGB display colours to DICOM Recommended Display CIELab Value (PS3.3 C.10.7.1.1).
//!
//! The conversion follows the one dclunie's pixelmed and highdicom use: sRGB companding, the sRGB
//! matrix to CIE XYZ with the D65 white point, then CIE L*a*b*. DICOM stores L* (0..100) and
//! a*, b* (-128..127) each scaled linearly onto 0..65535.

/// CIE L*, a*, b* of an 8-bit sRGB colour (D65 white point).
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f64; 3] {
    fn linear(c: u8) -> f64 {
        let c = f64::from(c) / 255.0;
        if c > 0.04045 {
            ((c + 0.055) / 1.055).powf(2.4)
        } else {
            c / 12.92
        }
    }
    let (r, g, b) = (linear(rgb[0]), linear(rgb[1]), linear(rgb[2]));
    let x = (r * 0.4124 + g * 0.3576 + b * 0.1805) / 0.95047;
    let y = r * 0.2126 + g * 0.7152 + b * 0.0722;
    let z = (r * 0.0193 + g * 0.1192 + b * 0.9505) / 1.08883;
    fn f(t: f64) -> f64 {
        // (6/29)^3 and the linear segment below it.
        if t >= 8.856_451_679_035_631e-3 {
            t.cbrt()
        } else {
            (841.0 / 108.0) * t + 4.0 / 29.0
        }
    }
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// The DICOM encoding of a CIELab colour: L* 0..100 and a*, b* -128..127 onto 0..65535, rounded.
pub fn lab_to_dicom(lab: [f64; 3]) -> [u16; 3] {
    fn scale(v: f64) -> u16 {
        v.round().clamp(0.0, 65535.0) as u16
    }
    [
        scale(lab[0] * 65535.0 / 100.0),
        scale((lab[1] + 128.0) * 65535.0 / 255.0),
        scale((lab[2] + 128.0) * 65535.0 / 255.0),
    ]
}

/// The Recommended Display CIELab Value for an 8-bit sRGB colour.
pub fn srgb_to_dicom_lab(rgb: [u8; 3]) -> [u16; 3] {
    lab_to_dicom(srgb_to_lab(rgb))
}

/// Decodes a DICOM CIELab value back to L*, a*, b*.
pub fn dicom_to_lab(value: [u16; 3]) -> [f64; 3] {
    [
        f64::from(value[0]) * 100.0 / 65535.0,
        f64::from(value[1]) * 255.0 / 65535.0 - 128.0,
        f64::from(value[2]) * 255.0 / 65535.0 - 128.0,
    ]
}

/// Converts CIE L*a*b* (D65) back to the nearest 8-bit sRGB colour.
pub fn lab_to_srgb(lab: [f64; 3]) -> [u8; 3] {
    let fy = (lab[0] + 16.0) / 116.0;
    let fx = fy + lab[1] / 500.0;
    let fz = fy - lab[2] / 200.0;
    fn finv(t: f64) -> f64 {
        if t > 6.0 / 29.0 {
            t * t * t
        } else {
            (t - 4.0 / 29.0) * 108.0 / 841.0
        }
    }
    let (x, y, z) = (finv(fx) * 0.95047, finv(fy), finv(fz) * 1.08883);
    let r = x * 3.2406 - y * 1.5372 - z * 0.4986;
    let g = -x * 0.9689 + y * 1.8758 + z * 0.0415;
    let b = x * 0.0557 - y * 0.2040 + z * 1.0570;
    fn gamma(c: f64) -> u8 {
        let c = if c > 0.003_130_8 {
            1.055 * c.powf(1.0 / 2.4) - 0.055
        } else {
            12.92 * c
        };
        (c * 255.0).round().clamp(0.0, 255.0) as u8
    }
    [gamma(r), gamma(g), gamma(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values printed by highdicom 0.28.2 `CIELabColor.from_rgb(r, g, b).value`.
    const HIGHDICOM: &[([u8; 3], [u16; 3])] = &[
        ([255, 0, 0], [34886, 53484, 50172]),
        ([0, 255, 0], [57498, 10747, 54274]),
        ([0, 0, 255], [21170, 53250, 5175]),
        ([255, 255, 255], [65535, 32897, 32893]),
        ([0, 0, 0], [0, 32896, 32896]),
        ([128, 174, 128], [43803, 26565, 37722]),
        ([241, 214, 145], [56638, 32899, 42533]),
    ];

    #[test]
    fn matches_highdicom_within_one_unit() {
        for (rgb, expect) in HIGHDICOM {
            let got = srgb_to_dicom_lab(*rgb);
            for k in 0..3 {
                let diff = (i32::from(got[k]) - i32::from(expect[k])).abs();
                assert!(diff <= 1, "{rgb:?}: got {got:?}, highdicom {expect:?}");
            }
        }
    }

    #[test]
    fn white_and_black_hit_the_ends_of_the_scale() {
        let white = srgb_to_lab([255, 255, 255]);
        assert!((white[0] - 100.0).abs() < 0.01, "{white:?}");
        assert!(white[1].abs() < 0.05 && white[2].abs() < 0.05, "{white:?}");
        assert_eq!(srgb_to_dicom_lab([0, 0, 0]), [0, 0x8080, 0x8080]);
    }

    #[test]
    fn round_trips_through_dicom_encoding() {
        for r in (0..=255u16).step_by(51) {
            for g in (0..=255u16).step_by(51) {
                for b in (0..=255u16).step_by(51) {
                    let rgb = [r as u8, g as u8, b as u8];
                    let back = lab_to_srgb(dicom_to_lab(srgb_to_dicom_lab(rgb)));
                    for k in 0..3 {
                        assert!(
                            (i16::from(back[k]) - i16::from(rgb[k])).abs() <= 1,
                            "{rgb:?} -> {back:?}"
                        );
                    }
                }
            }
        }
    }
}
