//! The viewer check (issue 18): the SEGs the daemon returns, opened through OHIF's SEG code path
//! (cornerstone3D + `@cornerstonejs/adapters`, `tests/viewer/`) in headless Chromium, with the
//! overlay compared pixel by pixel with the SEG's own masks (`tests/python/viewer_check.py`).
//!
//! The real daemon runs twice, with `seg.omit_empty_frames` off and on; each time three studies
//! made from the bundled demo studies (`tests/python/make_viewer_studies.py`: an OP colour fundus
//! photograph, a US multi-frame cine and an MR volume of 8 slices, the last two with black frames
//! where the model finds nothing, so that frames are omitted) go in over DICOM and the SEGs come
//! back to a pynetdicom PACS. The MR volumes are also opened in dwv (the DICOM Web Viewer, whose
//! SEG reader handles volumes only). Screenshots and the SEGs stay under `target/viewer-check/`
//! for a person to look at.
//!
//! Then Orthanc (with the Debian `orthanc-webviewer` plugin) takes the sources and SEGs: each
//! SEG must land in its sources' study, and `target/viewer-check/orthanc/` gets screenshots of
//! Orthanc Explorer's study page and of the Orthanc Web Viewer on the source and SEG series
//! (`tests/python/orthanc_viewer_shot.py`; root, for the private network namespace).
//!
//! Needs node and `npm ci` in tests/viewer, the Debian `chromium` and `orthanc-webviewer`
//! (scripts/test installs them); a missing one fails the test with a message naming it.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    v.sort();
    v
}

fn study_uid(path: &Path) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    obj.element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// Runs the daemon with `omit_empty_frames = omit`, sends the three studies under `studies`
/// (`fundus`, `us`, `mr`), and returns (family, source files, SEG) for each once its SEG reached
/// the PACS.
fn daemon_segs(
    omit: bool,
    studies: &Path,
    pacs_dir: &Path,
) -> Vec<(String, Vec<PathBuf>, PathBuf)> {
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir, &[]);
    let extra = format!(
        "{}[seg]\nomit_empty_frames = {omit}\n",
        pacs_delivery_tables(pacs_port)
    );
    let d = Daemon::start(Opts {
        extra,
        stable_age_s: 1.0,
        ..Opts::default()
    });
    let families = ["fundus", "us", "mr"];
    for family in families {
        let out = storescu(d.port)
            .required_only()
            .calling("PACS")
            .files(dcm_files(&studies.join(family)))
            .run();
        assert!(out.status.success(), "storescu {family}:\n{}", text(&out));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let received = loop {
        let segs = dcm_files(pacs_dir);
        if segs.len() >= families.len() {
            break segs;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} SEGs reached the PACS (omit_empty_frames = {omit}):\n{}",
            segs.len(),
            families.len(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    families
        .iter()
        .map(|family| {
            let sources = dcm_files(&studies.join(family));
            let study = study_uid(&sources[0]);
            let seg = received
                .iter()
                .find(|s| study_uid(s) == study)
                .unwrap_or_else(|| panic!("no SEG in the {family} study: {received:?}"))
                .clone();
            (family.to_string(), sources, seg)
        })
        .collect()
}

#[test]
fn daemon_segs_overlay_in_ohif_cornerstone_viewer() {
    let started = Instant::now();
    require_tool("node");
    require_tool("chromium");
    require_tool("storescu");
    let viewer = root().join("tests/viewer");
    assert!(
        viewer.join("node_modules/@cornerstonejs/adapters").is_dir(),
        "{}/node_modules is missing: run `npm ci` there (scripts/test does)",
        viewer.display()
    );
    let build = Command::new("node")
        .arg("build.mjs")
        .current_dir(&viewer)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "bundling the viewer page:\n{}",
        text(&build)
    );

    let out = root().join("target/viewer-check");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let studies = tempfile::tempdir().unwrap();
    let made = run_py(
        "make_viewer_studies.py",
        &[studies.path().to_str().unwrap()],
    );
    assert!(made.status.success(), "{}", text(&made));
    let mut cases = Vec::new();
    for omit in [false, true] {
        let pacs = tempfile::tempdir().unwrap();
        for (family, sources, seg) in daemon_segs(omit, studies.path(), pacs.path()) {
            let name = format!("{family}-{}", if omit { "omit" } else { "full" });
            let keep = out.join(format!("{name}.seg.dcm"));
            std::fs::copy(&seg, &keep).unwrap();
            cases.push(serde_json::json!({
                "name": name,
                "sources": sources,
                "seg": keep,
            }));
        }
    }
    let spec = out.join("cases.json");
    std::fs::write(
        &spec,
        serde_json::to_string_pretty(&serde_json::json!({"out": out, "cases": cases})).unwrap(),
    )
    .unwrap();
    let check = run_py("viewer_check.py", &[spec.to_str().unwrap()]);
    let report = text(&check);
    std::fs::write(out.join("report.txt"), &report).unwrap();
    assert!(check.status.success(), "{report}");
    println!("{}", String::from_utf8_lossy(&check.stdout));

    // Orthanc as the PACS: the SEGs in their sources' studies, Orthanc Explorer's study page
    // and the Orthanc Web Viewer (orthanc-webviewer) screenshots, in a private network
    // namespace (Orthanc binds 0.0.0.0).
    require_tool("Orthanc");
    require_tool("unshare");
    let shot = Command::new(root().join("tests/orthanc/netns.sh"))
        .arg(python())
        .arg(root().join("tests/python/orthanc_viewer_shot.py"))
        .arg(&out)
        .args(["fundus-omit", "us-omit", "mr-omit"])
        .output()
        .unwrap();
    let report = text(&shot);
    std::fs::write(out.join("orthanc-report.txt"), &report).unwrap();
    assert!(shot.status.success(), "{report}");
    println!("{}", String::from_utf8_lossy(&shot.stdout));
    println!("viewer check: {:.1} s", started.elapsed().as_secs_f64());
}
