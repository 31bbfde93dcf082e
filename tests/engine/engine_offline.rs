//! The offline command (`proxyseg segment`): support set by name or folder, SEG masks read,
//! every input segmented, PNG + raw written.

use crate::harness::engine::*;
use crate::harness::root;
use proxyseg::config::Config;
use proxyseg::engine::offline::{find_support_set, load_support_set, segment_files};

#[test]
fn support_set_folder_is_read_with_its_seg_masks() {
    let tmp = tempfile::tempdir().unwrap();
    make_inputs(tmp.path());
    let models = tmp.path().join("models");
    let set_dir = models.join("test-tiny/support-sets/bench-lesion");
    std::fs::create_dir_all(set_dir.parent().unwrap()).unwrap();
    std::fs::rename(tmp.path().join("support-sets/bench-lesion"), &set_dir).unwrap();

    assert_eq!(find_support_set(&models, "bench-lesion").unwrap(), set_dir);
    assert_eq!(
        find_support_set(&models, set_dir.to_str().unwrap()).unwrap(),
        set_dir
    );
    let e = find_support_set(&models, "nope").unwrap_err().to_string();
    assert!(e.contains("support set \"nope\" not found"), "{e}");

    let (set, _) = load_support_set(&set_dir).unwrap();
    assert_eq!(set.name, "bench-lesion");
    assert!(set.version.starts_with("sha256:"), "{}", set.version);
    assert_eq!(set.pairs.len(), 1);
    let m = &set.pairs[0].masks[0];
    assert_eq!((m.rows, m.cols), (512, 512));
    // make_inputs.py: disc at (250, 260), radius 80
    let mut want = 0;
    for y in 0..512i64 {
        for x in 0..512i64 {
            let inside = (y - 250).pow(2) + (x - 260).pow(2) <= 80 * 80;
            want += inside as usize;
            assert_eq!(
                m.data[(y * 512 + x) as usize] != 0,
                inside,
                "pixel ({y}, {x})"
            );
        }
    }
    assert_eq!(m.area(), want);
}

#[test]
fn segment_files_writes_png_and_raw_per_input() {
    let tmp = tempfile::tempdir().unwrap();
    make_inputs(tmp.path());
    let models = tmp.path().join("models");
    make_test_bundle(&models.join("test-tiny"), "test-tiny", "1");
    // the lesion takes the mirrored second look: result.toml gives its looks' agreement
    append_manifest(
        &models.join("test-tiny"),
        "[mirror]\nobjects = [\"lesion\"]\n",
    );
    let mut cfg = Config {
        engine: cpu_config(&models),
        ..Config::default()
    };
    cfg.storage.data_dir = tmp.path().join("var");
    let out = tmp.path().join("out");
    let set = tmp.path().join("support-sets/bench-lesion");
    let inputs = vec![
        tmp.path().join("ct512.dcm"),
        tmp.path().join("fundus_rgb.dcm"),
        tmp.path().join("us_cine.dcm"),
    ];
    // bench-lesion names no bundle: it runs on engine.default_bundle, which must be served.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(segment_files(&cfg, set.to_str().unwrap(), &out, &inputs))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("names no bundle and engine.default_bundle = \"litemedsam-ppg\""),
        "{e}"
    );
    cfg.engine.default_bundle = "test-tiny".into();
    let report = rt
        .block_on(segment_files(&cfg, set.to_str().unwrap(), &out, &inputs))
        .expect("offline segmentation");
    assert_eq!(report.frames, 1 + 1 + 30);
    assert_eq!(report.bundle, "test-tiny@1");
    let raw = std::fs::read(out.join("ct512/masks.u8")).unwrap();
    assert_eq!(raw.len(), 512 * 512);
    assert!(raw.iter().all(|&v| v <= 1));
    assert_eq!(
        std::fs::read(out.join("us_cine/masks.u8")).unwrap().len(),
        30 * 480 * 640
    );
    assert!(out.join("us_cine/frame-0030/1-lesion.png").is_file());
    assert!(out.join("fundus_rgb/frame-0001/1-lesion.png").is_file());
    let toml = std::fs::read_to_string(out.join("ct512/result.toml")).unwrap();
    let doc: toml::Table =
        toml::from_str(&toml).unwrap_or_else(|e| panic!("result.toml: {e}\n{toml}"));
    assert_eq!(
        doc["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_integer().unwrap())
            .collect::<Vec<_>>(),
        [1, 1, 512, 512]
    );
    assert_eq!(
        doc["labels"].as_array().unwrap()[0].as_str(),
        Some("lesion")
    );
    assert_eq!(doc["frames"].as_array().unwrap().len(), 1);
    let agreement = doc["frames"][0]["look_agreement"]["lesion"]
        .as_float()
        .unwrap_or_else(|| panic!("no look agreement for the lesion:\n{toml}"));
    assert!((0.0..=1.0).contains(&agreement), "{agreement}");

    let missing = rt
        .block_on(segment_files(
            &cfg,
            set.to_str().unwrap(),
            &out,
            &[tmp.path().join("nothing.dcm")],
        ))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot read DICOM file") && missing.contains("nothing.dcm"),
        "{missing}"
    );
}

/// With the real bundle (PROXYSEG_PARITY_BUNDLE or models/phantom-tiny): its demo studies are
/// segmented with its support sets, found by name.
#[test]
fn demo_studies_with_the_bundle_support_sets() {
    let bundle = std::env::var_os("PROXYSEG_PARITY_BUNDLE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("models/phantom-tiny"));
    assert!(
        bundle.join("demo-studies").is_dir(),
        "no demo studies in {} (they are committed with the bundle)",
        bundle.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        engine: cpu_config(bundle.parent().unwrap()),
        ..Config::default()
    };
    cfg.storage.data_dir = tmp.path().join("var");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (set, input, frames) in [
        ("us-intrapartum-ps-fh", "demo-studies/us/cine.dcm", 8),
        (
            "fundus-disc-cup-vessels",
            "demo-studies/fundus/image.dcm",
            1,
        ),
        ("mr-prostate", "demo-studies/mr/slice-04.dcm", 1),
    ] {
        let out = tmp.path().join(set);
        let r = rt
            .block_on(segment_files(&cfg, set, &out, &[bundle.join(input)]))
            .unwrap_or_else(|e| panic!("{set}: {e}"));
        assert_eq!(r.frames, frames, "{set}");
        eprintln!(
            "{set}: {} frames, {:?} per frame",
            r.frames,
            r.timings.total() / r.frames as u32
        );
    }
}
