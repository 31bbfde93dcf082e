//! Helpers of the SEG tests: source phantoms (made by `tests/python/make_sources.py`),
//! deterministic masks, writing a SEG case with its manifest for the highdicom checker, and
//! running the real tools (dciodvfy, dcentvfy, dcmdump, dcm2pnm, highdicom). A missing tool
//! fails the test with a message naming it; nothing is mocked.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{python, require_tool, root, run_cmd};

use dicom_object::{open_file, DefaultDicomObject, InMemDicomObject};
use proxyseg::dicom::seg::{
    deterministic_uid, read_seg, save_seg, write_seg, Code, SegInput, SegOptions,
    SegmentDescription, SourceImage,
};

/// A temporary directory for one test; kept (and its path printed) when the environment
/// variable `PROXYSEG_KEEP_TEST_DIRS` is set, to inspect the SEGs by hand.
pub fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("PROXYSEG_KEEP_TEST_DIRS").is_some() {
        let mut dir = dir;
        dir.disable_cleanup(true);
        eprintln!("keeping test dir {}", dir.path().display());
        return dir;
    }
    dir
}

/// The source phantoms.
pub struct Sources {
    pub ct_small: PathBuf,
    pub mr_small: PathBuf,
    pub ct5: Vec<PathBuf>,
    pub fundus: PathBuf,
    pub us_cine: PathBuf,
    pub ct_latin1: PathBuf,
    pub enhanced_ct: PathBuf,
}

/// Writes the source phantoms into `dir` with the Python helper.
pub fn make_sources(dir: &Path) -> Sources {
    let out = run_cmd(
        Command::new(python())
            .arg(root().join("tests/python/make_sources.py"))
            .arg(dir),
    );
    assert!(
        out.status.success(),
        "make_sources.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ct5: Vec<PathBuf> = std::fs::read_dir(dir.join("ct5"))
        .expect("ct5 dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    ct5.sort();
    Sources {
        ct_small: dir.join("ct_small.dcm"),
        mr_small: dir.join("mr_small.dcm"),
        ct5,
        fundus: dir.join("fundus_op.dcm"),
        us_cine: dir.join("us_cine.dcm"),
        ct_latin1: dir.join("ct_latin1.dcm"),
        enhanced_ct: dir.join("enhanced_ct.dcm"),
    }
}

/// Opens a DICOM file.
pub fn open(path: &Path) -> DefaultDicomObject {
    open_file(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Three segment descriptions (liver, spleen, kidney); the first `n`.
pub fn segments(n: usize) -> Vec<SegmentDescription> {
    let anatomy = Code::sct("123037004", "Anatomical Structure");
    let all = [
        ("Liver", Code::sct("10200004", "Liver"), [221, 130, 101]),
        ("Spleen", Code::sct("78961009", "Spleen"), [157, 108, 162]),
        ("Kidney", Code::sct("64033007", "Kidney"), [185, 102, 83]),
    ];
    all.into_iter()
        .take(n)
        .map(|(label, type_, color_rgb)| SegmentDescription {
            label: label.into(),
            category: anatomy.clone(),
            type_,
            color_rgb,
            algorithm_name: "proxyseg PPG+SAM".into(),
        })
        .collect()
}

/// Rows, Columns and Number of Frames of a source.
pub fn dims(ds: &InMemDicomObject) -> (usize, usize, usize) {
    use dicom_dictionary_std::tags;
    let int = |tag| {
        ds.get(tag)
            .map(|e| e.to_int::<usize>().expect("integer attribute"))
    };
    (
        int(tags::ROWS).expect("Rows"),
        int(tags::COLUMNS).expect("Columns"),
        int(tags::NUMBER_OF_FRAMES).unwrap_or(1),
    )
}

/// A deterministic mask for global source frame `g` and segment `s` (0-based). With `sparse`,
/// every third (g + s) combination is empty, so omit_empty_frames has frames to drop.
pub fn pattern(rows: usize, cols: usize, g: usize, s: usize, sparse: bool) -> Vec<u8> {
    if sparse && (g + s) % 3 == 1 {
        return vec![0; rows * cols];
    }
    let top = (g * 3 + s * 5) % (rows / 2).max(1);
    let left = (g * 2 + s * 7) % (cols / 2).max(1);
    let h = rows / 4 + s + 1;
    let w = cols / 3 + g % 3 + 1;
    let mut m = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let in_box = r >= top && r < top + h && c >= left && c < left + w;
            let stripe = r > rows / 2 && (r + 2 * c + g + s).is_multiple_of(11);
            m[r * cols + c] = u8::from(in_box || stripe);
        }
    }
    m
}

/// Masks for the sources: `[source][frame][segment]`.
pub fn make_masks(objs: &[&InMemDicomObject], nseg: usize, sparse: bool) -> Vec<Vec<Vec<Vec<u8>>>> {
    let mut g = 0;
    objs.iter()
        .map(|ds| {
            let (rows, cols, frames) = dims(ds);
            (0..frames)
                .map(|_| {
                    let per_seg = (0..nseg)
                        .map(|s| pattern(rows, cols, g, s, sparse))
                        .collect();
                    g += 1;
                    per_seg
                })
                .collect()
        })
        .collect()
}

/// Options for a test SEG, with a fixed content date/time so outputs are reproducible.
pub fn options(name: &str, omit: bool) -> SegOptions {
    let mut o = SegOptions::new(
        deterministic_uid(&format!("test/{name}/sop")),
        deterministic_uid(&format!("test/{name}/series")),
    );
    o.series_description = format!("proxyseg test {name}");
    o.content_label = "PROXYSEG".into();
    o.content_creator = "proxyseg^test".into();
    o.algorithm_version = "sam-tiny 1.0; support-liver 3".into();
    o.omit_empty_frames = omit;
    o.content_date_time = Some(("20260102".into(), "030405".into()));
    o
}

/// One written SEG case.
pub struct Case {
    pub name: String,
    pub seg: PathBuf,
    pub manifest: PathBuf,
    pub sources: Vec<PathBuf>,
    /// `[source][frame][segment]` masks written.
    pub masks: Vec<Vec<Vec<Vec<u8>>>>,
    /// (SOP Instance UID, frame number, multi-frame) per source frame, in mask order.
    pub keys: Vec<(String, u32, bool)>,
    pub nseg: usize,
    pub frames: usize,
}

/// Image Position (Patient) of frame `f` (0-based) of a source with patient geometry: from the
/// top level of a single-frame image, or from the Plane Position functional group of a
/// multi-frame one; `None` without a frame of reference.
pub fn frame_position(ds: &InMemDicomObject, f: usize) -> Option<Vec<f64>> {
    use dicom_dictionary_std::tags;
    ds.get(tags::FRAME_OF_REFERENCE_UID)?;
    let first = |obj: &InMemDicomObject, tag| {
        obj.get(tag)
            .and_then(|e| e.items())
            .and_then(|i| i.first())
            .cloned()
    };
    let from_groups = first(ds, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|_| {
        let items = ds
            .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)?
            .items()?;
        let position = first(items.get(f)?, tags::PLANE_POSITION_SEQUENCE)?;
        position
            .get(tags::IMAGE_POSITION_PATIENT)?
            .to_multi_float64()
            .ok()
    });
    from_groups.or_else(|| {
        if ds.get(tags::NUMBER_OF_FRAMES).is_some() {
            return None;
        }
        ds.get(tags::IMAGE_POSITION_PATIENT)?
            .to_multi_float64()
            .ok()
    })
}

/// Segment count, omit switch and expected SEG frame count of a case.
pub struct Counts {
    pub nseg: usize,
    pub omit: bool,
    pub frames: usize,
}

/// Writes the masks in key order as raw bytes and a JSON manifest for the Python helpers.
pub fn write_manifest(
    dir: &Path,
    name: &str,
    seg: &Path,
    sources: &[PathBuf],
    objs: &[&InMemDicomObject],
    masks: &[Vec<Vec<Vec<u8>>>],
    counts: Counts,
) -> (PathBuf, Vec<(String, u32, bool)>) {
    let Counts { nseg, omit, frames } = counts;
    use dicom_dictionary_std::tags;
    let masks_path = dir.join(format!("{name}.masks.bin"));
    let mut bytes = Vec::new();
    let mut keys_json = Vec::new();
    let mut keys = Vec::new();
    let (rows, cols, _) = dims(objs[0]);
    for (ds, per_frame) in objs.iter().zip(masks) {
        let uid = ds
            .get(tags::SOP_INSTANCE_UID)
            .expect("SOPInstanceUID")
            .to_str()
            .expect("uid")
            .trim_end_matches('\0')
            .to_string();
        let multi = ds.get(tags::NUMBER_OF_FRAMES).is_some();
        for (f, per_seg) in per_frame.iter().enumerate() {
            for m in per_seg {
                bytes.extend_from_slice(m);
            }
            let ipp = match frame_position(ds, f) {
                Some(v) => format!("[{}, {}, {}]", v[0], v[1], v[2]),
                None => "null".into(),
            };
            keys_json.push(format!(
                "{{\"uid\": \"{uid}\", \"frame\": {}, \"multi\": {multi}, \"ipp\": {ipp}}}",
                f + 1
            ));
            keys.push((uid.clone(), f as u32 + 1, multi));
        }
    }
    std::fs::write(&masks_path, &bytes).expect("write masks");
    let sources_json: Vec<String> = sources
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    let manifest = format!(
        "{{\"name\": \"{name}\", \"seg\": \"{}\", \"masks\": \"{}\", \"rows\": {rows}, \"cols\": {cols}, \
         \"segments\": {nseg}, \"omit\": {omit}, \"frames\": {frames}, \"sources\": [{}], \"keys\": [{}]}}",
        seg.display(),
        masks_path.display(),
        sources_json.join(", "),
        keys_json.join(", ")
    );
    let manifest_path = dir.join(format!("{name}.json"));
    std::fs::write(&manifest_path, manifest).expect("write manifest");
    (manifest_path, keys)
}

/// Writes the SEG of `sources` with `nseg` segments (sparse masks when `omit`), saves it and its
/// manifest in `dir`.
pub fn write_case(dir: &Path, name: &str, sources: &[PathBuf], nseg: usize, omit: bool) -> Case {
    let files: Vec<DefaultDicomObject> = sources.iter().map(|p| open(p)).collect();
    let objs: Vec<&InMemDicomObject> = files.iter().map(|f| &**f).collect();
    let masks = make_masks(&objs, nseg, omit);
    let input = SegInput {
        segments: segments(nseg),
        sources: objs
            .iter()
            .zip(&masks)
            .map(|(ds, m)| SourceImage {
                dataset: ds,
                masks: m
                    .iter()
                    .map(|per_seg| per_seg.iter().map(|v| v.as_slice()).collect())
                    .collect(),
            })
            .collect(),
    };
    let seg = write_seg(&input, &options(name, omit)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = dir.join(format!("{name}.dcm"));
    save_seg(&seg, &path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let total: usize = masks.iter().flatten().flatten().count();
    let nonempty = masks
        .iter()
        .flatten()
        .flatten()
        .filter(|m| m.iter().any(|&b| b != 0))
        .count();
    let frames = if omit { nonempty.max(1) } else { total };
    let (manifest, keys) = write_manifest(
        dir,
        name,
        &path,
        sources,
        &objs,
        &masks,
        Counts { nseg, omit, frames },
    );
    Case {
        name: name.into(),
        seg: path,
        manifest,
        sources: sources.to_vec(),
        masks,
        keys,
        nseg,
        frames,
    }
}

/// dciodvfy must exit 0 and print no `Error` line.
pub fn assert_dciodvfy(case: &Case) {
    require_tool("dciodvfy");
    let out = run_cmd(Command::new("dciodvfy").arg(&case.seg));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("Error"),
        "{}: dciodvfy failed ({}):\n{text}",
        case.name,
        out.status
    );
    assert!(
        text.contains("Segmentation"),
        "{}: dciodvfy did not recognise a Segmentation IOD:\n{text}",
        case.name
    );
}

/// dcentvfy SEG SOURCES... must report no error and no warning (patient, study and frame of
/// reference attributes agree with the sources).
pub fn assert_dcentvfy(case: &Case) {
    require_tool("dcentvfy");
    let out = run_cmd(Command::new("dcentvfy").arg(&case.seg).args(&case.sources));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("Error") && !text.contains("Warning"),
        "{}: dcentvfy failed ({}):\n{text}",
        case.name,
        out.status
    );
}

/// The highdicom checker must print OK for every case.
pub fn assert_highdicom(cases: &[&Case]) {
    let out = run_cmd(
        Command::new(python())
            .arg(root().join("tests/python/check_seg.py"))
            .args(cases.iter().map(|c| &c.manifest)),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "highdicom check failed:\n{text}");
    for c in cases {
        assert!(
            text.contains(&format!("OK {}\n", c.name)),
            "highdicom did not confirm {}:\n{text}",
            c.name
        );
    }
}

/// read_seg must give back exactly the masks written (omitted frames read as empty).
pub fn assert_read_back(case: &Case) {
    let obj = open(&case.seg);
    let read = read_seg(&obj).unwrap_or_else(|e| panic!("{}: read_seg: {e}", case.name));
    assert_eq!(read.segments.len(), case.nseg, "{}", case.name);
    let want = segments(case.nseg);
    for (info, desc) in read.segments.iter().zip(&want) {
        assert_eq!(info.description.label, desc.label);
        assert_eq!(info.description.type_, desc.type_);
        assert_eq!(info.description.category, desc.category);
        assert_eq!(info.description.algorithm_name, desc.algorithm_name);
        for k in 0..3 {
            let d = i16::from(info.description.color_rgb[k]) - i16::from(desc.color_rgb[k]);
            assert!(
                d.abs() <= 1,
                "{}: colour {:?} vs {:?}",
                case.name,
                info.description.color_rgb,
                desc.color_rgb
            );
        }
    }
    let flat: Vec<&Vec<Vec<u8>>> = case.masks.iter().flatten().collect();
    for ((uid, frame, _), per_seg) in case.keys.iter().zip(flat) {
        for (s, m) in per_seg.iter().enumerate() {
            let got = read.mask_or_empty(uid, *frame, s as u16 + 1);
            let want: Vec<u8> = m.iter().map(|&b| u8::from(b != 0)).collect();
            assert!(
                got == want,
                "{}: read_seg mask differs for {uid} frame {frame} segment {}",
                case.name,
                s + 1
            );
        }
    }
}

/// dcmdump must show the coded segment descriptions.
pub fn assert_dcmdump_codes(case: &Case) {
    require_tool("dcmdump");
    let out = run_cmd(
        Command::new("dcmdump")
            .arg("+P")
            .arg("0062,0002")
            .arg("+p")
            .arg(&case.seg),
    );
    assert!(out.status.success(), "{}: dcmdump failed", case.name);
    let text = String::from_utf8_lossy(&out.stdout);
    let full = run_cmd(Command::new("dcmdump").arg(&case.seg));
    let full = String::from_utf8_lossy(&full.stdout);
    for seg in segments(case.nseg) {
        for needle in [
            format!("[{}]", seg.type_.value),
            format!("[{}]", seg.type_.meaning),
            format!("[{}]", seg.label),
            "[123037004]".to_string(),
            "[Anatomical Structure]".to_string(),
            "[SCT]".to_string(),
            "[AUTOMATIC]".to_string(),
        ] {
            assert!(
                text.contains(&needle),
                "{}: dcmdump of SegmentSequence lacks {needle}:\n{text}",
                case.name
            );
        }
    }
    for needle in [
        "(0062,0001) CS [BINARY]",
        "(0028,0100) US 1",
        "RecommendedDisplayCIELabValue",
    ] {
        assert!(
            full.contains(needle),
            "{}: dcmdump lacks {needle}",
            case.name
        );
    }
}

/// dcm2pnm must render every frame to a PNG.
pub fn assert_dcm2pnm(case: &Case, dir: &Path) {
    require_tool("dcm2pnm");
    let prefix = dir.join(format!("{}-render", case.name));
    let out = run_cmd(
        Command::new("dcm2pnm")
            .arg("--all-frames")
            .arg("+on")
            .arg(&case.seg)
            .arg(&prefix),
    );
    assert!(
        out.status.success(),
        "{}: dcm2pnm failed: {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let stem = prefix
        .file_name()
        .and_then(|s| s.to_str())
        .expect("stem")
        .to_string();
    let rendered = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with(&stem) && n.ends_with(".png")
        })
        .count();
    assert_eq!(
        rendered, case.frames,
        "{}: dcm2pnm rendered {rendered} frames",
        case.name
    );
}
