//! Every pydicom bundled test file that pydicom itself decodes becomes display frames; the
//! truncated and deliberately broken ones fail with a clear reason.

use std::path::PathBuf;

use crate::harness::{python, root};
use proxyseg::dicom::pixels::{frames_from_file, frames_from_object, PixelError};

fn test_files() -> PathBuf {
    let pattern = format!(
        "{}/.venv/lib/python3*/site-packages/pydicom/data/test_files",
        root().display()
    );
    glob::glob(&pattern)
        .ok()
        .and_then(|mut g| g.find_map(Result::ok))
        .unwrap_or_else(|| {
            panic!("pydicom's test_files not found ({pattern}); run scripts/test to create .venv")
        })
}

/// Files pydicom 3.0.2 decodes (`ds.pixel_array` works), with (rows, cols, frames, channels).
const DECODABLE: &[(&str, usize, usize, usize, usize)] = &[
    ("693_J2KI.dcm", 512, 512, 1, 1),
    ("CT_small.dcm", 128, 128, 1, 1),
    ("ExplVR_BigEnd.dcm", 60, 80, 1, 3),
    ("J2K_pixelrep_mismatch.dcm", 512, 512, 1, 1),
    ("JPEG2000.dcm", 1024, 256, 1, 1),
    ("JPEGLSNearLossless_08.dcm", 45, 10, 1, 1),
    ("JPEGLSNearLossless_16.dcm", 50, 10, 1, 1),
    ("MR_small.dcm", 64, 64, 1, 1),
    ("MR_small_RLE.dcm", 64, 64, 1, 1),
    ("MR_small_bigendian.dcm", 64, 64, 1, 1),
    ("MR_small_expb.dcm", 64, 64, 1, 1),
    ("MR_small_implicit.dcm", 64, 64, 1, 1),
    ("MR_small_jp2klossless.dcm", 64, 64, 1, 1),
    ("MR_small_jpeg_ls_lossless.dcm", 64, 64, 1, 1),
    ("MR_small_padded.dcm", 64, 64, 1, 1),
    ("SC_jpeg_no_color_transform.dcm", 256, 256, 1, 3),
    ("SC_jpeg_no_color_transform_2.dcm", 256, 256, 1, 3),
    ("SC_rgb_dcmtk_+eb+cr.dcm", 100, 100, 1, 3),
    ("SC_rgb_dcmtk_+eb+cy+n1.dcm", 100, 100, 1, 3),
    ("SC_rgb_dcmtk_+eb+cy+n2.dcm", 100, 100, 1, 3),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", 100, 100, 1, 3),
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 100, 100, 1, 3),
    ("SC_rgb_dcmtk_+eb+cy+s4.dcm", 100, 100, 1, 3),
    ("SC_rgb_gdcm_KY.dcm", 100, 100, 1, 3),
    ("SC_rgb_jls_lossy_line.dcm", 100, 100, 1, 3),
    ("SC_rgb_jls_lossy_sample.dcm", 100, 100, 1, 3),
    ("SC_rgb_jpeg_app14_dcmd.dcm", 256, 256, 1, 3),
    ("SC_rgb_jpeg_dcmd.dcm", 256, 256, 1, 3),
    ("SC_rgb_jpeg_dcmtk.dcm", 100, 100, 1, 3),
    ("SC_rgb_jpeg_lossy_gdcm.dcm", 100, 100, 1, 3),
    ("SC_rgb_rle.dcm", 100, 100, 1, 3),
    ("SC_rgb_rle_16bit.dcm", 100, 100, 1, 3),
    ("SC_rgb_rle_16bit_2frame.dcm", 100, 100, 2, 3),
    ("SC_rgb_rle_2frame.dcm", 100, 100, 2, 3),
    ("SC_rgb_small_odd.dcm", 3, 3, 1, 3),
    ("SC_rgb_small_odd_big_endian.dcm", 3, 3, 1, 3),
    ("SC_rgb_small_odd_jpeg.dcm", 3, 3, 1, 3),
    ("SC_ybr_full_422_uncompressed.dcm", 100, 100, 1, 3),
    ("examples_jpeg2k.dcm", 480, 640, 1, 3),
    ("examples_overlay.dcm", 300, 484, 1, 1),
    ("examples_palette.dcm", 350, 800, 1, 3),
    ("examples_rgb_color.dcm", 240, 320, 1, 3),
    ("examples_ybr_color.dcm", 240, 320, 30, 3),
    ("image_dfl.dcm", 512, 512, 1, 1),
    ("liver_1frame.dcm", 512, 512, 1, 1),
    ("liver_expb_1frame.dcm", 512, 512, 1, 1),
    ("rtdose.dcm", 10, 10, 15, 1),
    ("rtdose_1frame.dcm", 10, 10, 1, 1),
    ("rtdose_expb.dcm", 10, 10, 15, 1),
    ("rtdose_expb_1frame.dcm", 10, 10, 1, 1),
    // 32-bit RLE: decoded by pixels.rs itself (dicom-pixeldata handles 8/16 bits only).
    ("SC_rgb_rle_32bit.dcm", 100, 100, 1, 3),
    ("SC_rgb_rle_32bit_2frame.dcm", 100, 100, 2, 3),
    ("rtdose_rle.dcm", 10, 10, 15, 1),
    ("rtdose_rle_1frame.dcm", 10, 10, 1, 1),
];

#[test]
fn every_decodable_pydicom_file_becomes_frames() {
    let dir = test_files();
    let mut failures = Vec::new();
    for &(name, rows, cols, nframes, channels) in DECODABLE {
        match frames_from_file(&dir.join(name)) {
            Ok(frames) => {
                let shape: Vec<_> = frames
                    .iter()
                    .map(|f| (f.rows, f.cols, f.channels))
                    .collect();
                if frames.len() != nframes || shape.iter().any(|&s| s != (rows, cols, channels)) {
                    failures.push(format!(
                        "{name}: got {} frames {:?}, want {nframes} x {:?}",
                        frames.len(),
                        shape.first(),
                        (rows, cols, channels)
                    ));
                }
                for f in &frames {
                    if f.data.len() != f.rows * f.cols * f.channels {
                        failures.push(format!(
                            "{name}: frame {} has {} values",
                            f.index,
                            f.data.len()
                        ));
                    }
                    if let Some(v) = f.data.iter().find(|v| !(0.0..=255.0).contains(*v)) {
                        failures.push(format!(
                            "{name}: frame {} has value {v} outside 0..255",
                            f.index
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} files failed:\n{}",
        failures.len(),
        DECODABLE.len(),
        failures.join("\n")
    );
}

/// Files pydicom decodes but this engine refuses, each with the reason it must give.
const KNOWN_REFUSALS: &[(&str, &str)] = &[
    // Implicit VR body under an explicit VR transfer syntax: pydicom guesses, dicom-rs refuses.
    ("SC_rgb_jpeg.dcm", "cannot read DICOM file"),
];

#[test]
fn known_refusals_say_why() {
    let dir = test_files();
    for &(name, needle) in KNOWN_REFUSALS {
        match frames_from_file(&dir.join(name)) {
            Err(e) => assert!(e.to_string().contains(needle), "{name}: {e}"),
            Ok(f) => panic!(
                "{name} now decodes ({} frames): move it to DECODABLE",
                f.len()
            ),
        }
    }
}

#[test]
fn broken_files_fail_with_a_clear_reason() {
    let dir = test_files();
    match frames_from_file(&dir.join("MR_truncated.dcm")) {
        Err(
            e @ PixelError::Truncated {
                got: 8130,
                expected: 8192,
                ..
            },
        ) => {
            assert!(
                e.to_string()
                    .contains("truncated: 8130 bytes, 8192 expected"),
                "{e}"
            )
        }
        // The parser already stops at the short Pixel Data element.
        Err(e @ PixelError::Open { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("8192 value bytes") && msg.contains("truncated"),
                "{msg}"
            )
        }
        other => panic!("MR_truncated.dcm: expected Truncated 8130/8192, got {other:?}"),
    }
    for name in ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"] {
        match frames_from_file(&dir.join(name)) {
            Err(e @ PixelError::Decode { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("cannot decode pixel data (1.2.840.10008.1.2.4."),
                    "{name}: {msg}"
                );
            }
            other => panic!("{name}: expected a decode error, got {other:?}"),
        }
    }
    // Its pixel data has no Rows: the size is read (and refused) before any decoding.
    match frames_from_file(&dir.join("nested_priv_SQ.dcm")) {
        Err(e @ PixelError::Attribute { name: "Rows", .. }) => {
            assert_eq!(e.to_string(), "bad attribute Rows: missing")
        }
        other => panic!("nested_priv_SQ.dcm: expected a missing-attribute error, got {other:?}"),
    }
}

#[test]
fn short_pixel_data_in_memory_is_reported_as_truncated() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut obj =
        dicom_object::open_file(test_files().join("MR_small.dcm")).expect("MR_small.dcm opens");
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U8(vec![0u8; 8130].into()),
    ));
    match proxyseg::dicom::pixels::frames_from_object(&obj) {
        Err(PixelError::Truncated {
            got: 8130,
            expected: 8192,
            ..
        }) => {}
        other => panic!("expected Truncated 8130/8192, got {other:?}"),
    }
}

/// (file, max abs difference allowed on the 0..255 scale). Lossy codecs differ between
/// decoders (libjpeg via Pillow vs jpeg-decoder) by a few grey levels; everything else must
/// agree to float rounding.
const VALUE_CHECKS: &[(&str, f32)] = &[
    ("CT_small.dcm", 1e-3),
    ("MR_small.dcm", 1e-3),
    ("MR_small_bigendian.dcm", 1e-3),
    ("MR_small_RLE.dcm", 1e-3),
    ("MR_small_jp2klossless.dcm", 1e-3),
    ("MR_small_jpeg_ls_lossless.dcm", 1e-3),
    ("JPEG2000.dcm", 1e-3),
    ("image_dfl.dcm", 1e-3),
    ("rtdose.dcm", 1e-3),
    ("rtdose_rle.dcm", 1e-3),
    ("examples_overlay.dcm", 1e-3),
    ("ExplVR_BigEnd.dcm", 1e-3),
    ("SC_rgb_small_odd.dcm", 1e-3),
    ("SC_rgb_rle.dcm", 1e-3),
    ("examples_rgb_color.dcm", 1e-3),
    ("SC_ybr_full_422_uncompressed.dcm", 1.0),
    ("examples_palette.dcm", 1e-3),
    ("SC_rgb_jpeg_dcmtk.dcm", 4.0),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", 4.0),
    ("examples_ybr_color.dcm", 4.0),
];

#[test]
fn display_values_match_pydicom_and_the_reference() {
    let dir = test_files();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(python());
    cmd.arg(root().join("tests/python/pydicom_displays.py"))
        .arg(out.path());
    for (f, _) in VALUE_CHECKS {
        cmd.arg(dir.join(f));
    }
    let res = cmd.output().expect("run pydicom_displays.py");
    assert!(
        res.status.success(),
        "pydicom_displays.py failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for &(name, tol) in VALUE_CHECKS {
        let bytes = std::fs::read(out.path().join(format!("{name}.f32"))).unwrap();
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let frames = match frames_from_file(&dir.join(name)) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        // reference layout: F x H x W x 3
        let mut got = Vec::with_capacity(want.len());
        for f in &frames {
            for i in 0..f.rows * f.cols {
                for c in 0..3 {
                    got.push(f.plane(c)[i]);
                }
            }
        }
        if got.len() != want.len() {
            failures.push(format!(
                "{name}: {} values vs {} from pydicom",
                got.len(),
                want.len()
            ));
            continue;
        }
        let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().copied().fold(0.0, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        report.push(format!("{name}: max abs diff {max:.3e}, mean {mean:.3e}"));
        if max > tol {
            failures.push(format!("{name}: max abs diff {max} > {tol} (mean {mean})"));
        }
    }
    eprintln!("display value report:\n  {}", report.join("\n  "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Inputs the fuzzer found (issue 16 item 8) that made dicom-pixeldata's codecs panic: RLE
/// headers announcing more segments than the fragment holds, an RLE segment that decodes
/// short, a JPEG 2000 codestream with more components than Samples per Pixel, a JPEG whose frame
/// header is larger than Rows x Columns. Each now fails
/// with a clear decode error before any codec indexes past its buffer.
#[test]
fn fuzzer_found_codec_inputs_fail_cleanly() {
    let dir = root().join("tests/data/fuzz");
    for (name, want) in [
        ("pixels-rle-header.dcm", "RLE"),
        ("pixels-rle-short-segment.dcm", "RLE"),
        ("pixels-j2k-components.dcm", "JPEG 2000 frame 1"),
        ("pixels-jpeg-sof-larger.dcm", "JPEG frame 1"),
        // openjp2 overflows an addition in its packet headers (a panic with overflow checks,
        // as in this test build): caught, the frame fails with the reason.
        (
            "pixels-j2k-packet-overflow.dcm",
            "the codec failed on frame 1",
        ),
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let obj = proxyseg::admin::masks::parse_dicom(&bytes)
            .unwrap_or_else(|e| panic!("{name} parses (the codec is what failed): {e}"));
        match frames_from_object(&obj) {
            Err(e @ PixelError::Decode { .. }) => {
                assert!(e.to_string().contains(want), "{name}: {e}")
            }
            other => panic!("{name}: expected a decode error, got {other:?}"),
        }
    }
}
