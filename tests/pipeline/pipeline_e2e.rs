//! The whole pipeline on the bundled model: demo studies in over DICOM, SEGs out to a PACS
//! (pynetdicom SCP), valid per dciodvfy, in the source study, with the support context
//! computed once per support set; a study no rule claims is recorded as unmatched.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub(crate) fn demo(family: &str) -> PathBuf {
    let p = root().join("models/phantom-tiny/demo-studies").join(family);
    assert!(
        p.is_dir(),
        "{} missing: the bundled model's demo studies are part of the repository",
        p.display()
    );
    p
}

pub(crate) fn dcm_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

pub(crate) fn job_states(d: &Daemon) -> Vec<(String, String)> {
    let db = d.db();
    let mut st = db
        .prepare("SELECT study_uid, state FROM jobs ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits (at most `secs`) until `n` jobs have ended, delivered or failed; returns their
/// states.
pub(crate) fn settle(d: &Daemon, n: usize, secs: u64) -> Vec<(String, String)> {
    wait_for(&format!("{n} job(s) to end"), secs, d, || {
        let s = job_states(d);
        s.len() == n && s.iter().all(|(_, st)| st == "delivered" || st == "failed")
    });
    job_states(d)
}

#[test]
fn demo_studies_come_back_as_valid_segs_in_their_study() {
    require_tool("dciodvfy");
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let extra = pacs_delivery_tables(pacs_port);
    let d = Daemon::start(Opts {
        extra,
        stable_age_s: 1.0,
        ..Opts::default()
    });
    let mut sent_studies = 0;
    for family in ["fundus", "us", "mr"] {
        let out = storescu(d.port)
            .required_only()
            .calling("PACS")
            .files(dcm_files(&demo(family)))
            .run();
        assert!(out.status.success(), "storescu {family}:\n{}", text(&out));
        sent_studies += 1;
    }
    // A study no support set claims.
    let ct = pydicom_files().join("CT_small.dcm");
    let out = storescu(d.port)
        .required_only()
        .calling("PACS")
        .file(&ct)
        .run();
    assert!(out.status.success(), "{}", text(&out));

    wait_for("every job to settle", 240, &d, || {
        let s = job_states(&d);
        s.len() == sent_studies + 1
            && s.iter()
                .all(|(_, st)| st == "delivered" || st == "unmatched" || st == "failed")
    });
    let states = job_states(&d);
    assert_eq!(
        states.iter().filter(|(_, s)| s == "delivered").count(),
        sent_studies,
        "{states:?}\n{}",
        d.log()
    );
    assert_eq!(
        states.iter().filter(|(_, s)| s == "unmatched").count(),
        1,
        "{states:?}"
    );

    let received: Vec<PathBuf> = std::fs::read_dir(pacs_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    assert_eq!(
        received.len(),
        sent_studies,
        "one SEG per segmented series: {received:?}"
    );
    let studies: Vec<String> = states.iter().map(|(s, _)| s.clone()).collect();
    for seg in &received {
        let o = Command::new("dciodvfy").arg(seg).output().unwrap();
        let errs: Vec<String> = String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.starts_with("Error"))
            .map(String::from)
            .collect();
        assert!(
            o.status.success() && errs.is_empty(),
            "{} fails dciodvfy: {errs:?}",
            seg.display()
        );
        let chk = run_py("seg_check.py", &[seg.to_str().unwrap()]);
        assert!(chk.status.success(), "{}", text(&chk));
        let v: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap();
        assert_eq!(v["modality"], "SEG");
        assert!(
            studies.contains(&v["study_uid"].as_str().unwrap().to_string()),
            "SEG not in a source study: {v}"
        );
    }
    // The support context was computed once per support set (3), never per study.
    let computed = d.db();
    drop(computed);
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut m = String::new();
        s.read_to_string(&mut m).unwrap();
        m
    };
    assert!(
        metrics.contains("proxyseg_support_cache_total{result=\"computed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxyseg_stage_seconds_count{stage=\"inference_per_image\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxyseg_jobs{state=\"delivered\"} 3"),
        "{metrics}"
    );

    // Loop guard: a PACS without its own SEG filter routes our SEGs back with the study.
    let out = storescu(d.port)
        .required_only()
        .calling("PACS")
        .files(&received)
        .run();
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the returned SEGs to be judged", 60, &d, || {
        let s = job_states(&d);
        s.len() == sent_studies * 2 + 1
            && s.iter()
                .all(|(_, st)| st == "delivered" || st == "unmatched" || st == "failed")
    });
    let reasons: Vec<String> = {
        let db = d.db();
        let mut st = db
            .prepare("SELECT detail FROM job_events WHERE state = 'unmatched' ORDER BY job_id")
            .unwrap();
        st.query_map([], |r| r.get::<_, Option<String>>(0))
            .unwrap()
            .map(|r| r.unwrap().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("not segmented again"))
            .count(),
        sent_studies,
        "{reasons:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let again: usize = std::fs::read_dir(pacs_dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "dcm"))
        .count();
    assert_eq!(
        again, sent_studies,
        "a SEG routed back made proxyseg send another one (loop)"
    );
}

/// (demo family, Body Part Examined, support set it must route to or "unmatched"): the cases
/// where the admin store's and the bundled folders' synonym tables used to disagree
/// (PELVIS_PROSTATE, FETUS routed only with admin off; OPHTHALMIC only with it on), and
/// controls.
const ROUTING_CASES: &[(&str, &str, &str)] = &[
    ("mr", "PROSTATE", "mr-prostate"),
    ("mr", "PELVIS_PROSTATE", "mr-prostate"),
    ("mr", "prostate", "mr-prostate"),
    ("mr", "KNEE", "unmatched"),
    ("fundus", "EYE", "fundus-disc-cup-vessels"),
    ("fundus", "OPHTHALMIC", "fundus-disc-cup-vessels"),
    ("fundus", "RETINA", "fundus-disc-cup-vessels"),
    ("fundus", "CHEST", "unmatched"),
    ("us", "PELVIS", "us-intrapartum-ps-fh"),
    ("us", "FETUS", "us-intrapartum-ps-fh"),
];

/// One single-instance study per routing case: the first file of the demo family with the
/// case's body part and UIDs of its own (dcmodify).
fn routing_studies(dir: &Path) -> Vec<(String, PathBuf)> {
    ROUTING_CASES
        .iter()
        .enumerate()
        .map(|(i, (family, body_part, _))| {
            let src = &dcm_files(&demo(family))[0];
            let dst = dir.join(format!("case-{i}.dcm"));
            std::fs::copy(src, &dst).unwrap();
            let study = format!("1.2.826.0.1.3680043.9.7777.{}", i + 1);
            let out = run(
                "dcmodify",
                &[
                    "-nb",
                    "-m",
                    &format!("(0018,0015)={body_part}"),
                    "-m",
                    &format!("(0020,000d)={study}"),
                    "-m",
                    &format!("(0020,000e)={study}.1"),
                    "-m",
                    &format!("(0008,0018)={study}.1.1"),
                    dst.to_str().unwrap(),
                ],
            );
            assert!(out.status.success(), "dcmodify: {}", text(&out));
            (study, dst)
        })
        .collect()
}

/// Sends every routing case to a daemon with `admin` (TOML, may be empty) and returns, per
/// case, the support set its job was routed to or "unmatched".
fn route_cases(studies: &[(String, PathBuf)], admin: &str) -> Vec<String> {
    let extra = format!(
        "[engine]\nmodels_dir = \"{}\"\nproviders = [\"cpu\"]\n{admin}",
        root().join("models").display()
    );
    let d = Daemon::start(Opts {
        extra,
        stable_age_s: 0.5,
        ..Opts::default()
    });
    let out = storescu(d.port)
        .required_only()
        .files(studies.iter().map(|(_, p)| p))
        .run();
    assert!(out.status.success(), "storescu:\n{}", text(&out));
    let routed = || -> Vec<(String, Option<String>, String)> {
        let db = d.db();
        let mut st = db
            .prepare("SELECT study_uid, support_set, state FROM jobs ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    wait_for("every case to be routed", 120, &d, || {
        let r = routed();
        r.len() == studies.len()
            && r.iter()
                .all(|(_, set, state)| set.is_some() || state == "unmatched")
    });
    let r = routed();
    studies
        .iter()
        .map(|(uid, _)| {
            let (_, set, state) = r.iter().find(|(s, _, _)| s == uid).unwrap();
            match set {
                Some(s) => s.clone(),
                None => state.clone(),
            }
        })
        .collect()
}

/// The same studies route to the same support sets whether the admin store routes (`[admin]`
/// on, the bundled folders seeded as rules) or the bundled folders do (`[admin]` off): one
/// synonym table, one routing function.
#[test]
fn routing_is_the_same_with_admin_on_and_off() {
    require_tool("dcmodify");
    let work = tempfile::tempdir().unwrap();
    let studies = routing_studies(work.path());
    let tokens = crate::harness::admin::write_tokens(work.path(), 0o600);
    let admin = format!(
        "[admin]\nlisten = \"127.0.0.1:{}\"\ntokens_file = \"{}\"\n",
        free_port(),
        tokens.display()
    );
    let expected: Vec<String> = ROUTING_CASES.iter().map(|c| c.2.to_string()).collect();
    let cases: Vec<String> = ROUTING_CASES
        .iter()
        .map(|c| format!("{} {}", c.0, c.1))
        .collect();
    let off = route_cases(&studies, "");
    let on = route_cases(&studies, &admin);
    assert_eq!(off, on, "admin off vs on differ for the cases {cases:?}");
    assert_eq!(on, expected, "cases {cases:?}");
}

/// Issue 17 item 1: with the admin API off the bundled folders are seeded into the store too
/// (the pipeline reads support sets and rules from the store only), each with the rule of its
/// `[match]` table, audited as `seed`; a restart adds neither sets nor rules.
#[test]
fn bundled_sets_are_seeded_into_the_store_once_with_admin_off() {
    let mut d = Daemon::start(Opts {
        extra: format!(
            "[engine]\nmodels_dir = \"{}\"\nproviders = [\"cpu\"]\n",
            root().join("models").display()
        ),
        ..Opts::default()
    });
    let mut bundled: Vec<String> =
        std::fs::read_dir(root().join("models/phantom-tiny/support-sets"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("supportset.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    bundled.sort();
    assert!(!bundled.is_empty());
    let store = |d: &Daemon| -> (Vec<String>, Vec<String>, i64, i64) {
        let db = d.db();
        let list = |sql: &str| -> Vec<String> {
            let mut st = db.prepare(sql).unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
        (
            list("SELECT name FROM support_sets ORDER BY name"),
            list("SELECT support_set FROM rules ORDER BY support_set"),
            count("SELECT COUNT(*) FROM support_pairs"),
            count(
                "SELECT COUNT(*) FROM audit WHERE token_name = 'seed' AND action = 'rule.create'",
            ),
        )
    };
    // The DICOM listener is bound (and accepts into its backlog) before the seeding runs.
    let seeded = |d: &Daemon, starts: usize| {
        wait_for("the seeding to finish", 60, d, || {
            d.log()
                .matches("bundled support sets seeded into the store")
                .count()
                >= starts
        })
    };
    seeded(&d, 1);
    let first = store(&d);
    assert_eq!(first.0, bundled, "{}", d.log());
    assert_eq!(first.1, bundled, "one rule per set");
    assert!(first.2 >= bundled.len() as i64, "pairs: {}", first.2);
    assert_eq!(first.3, bundled.len() as i64, "seeding is audited");
    let log = d.log();
    assert!(
        log.contains("seeded a bundled support set") && !log.contains("cannot seed"),
        "{log}"
    );
    d.restart();
    seeded(&d, 2);
    assert_eq!(
        store(&d),
        first,
        "a restart must not seed again:\n{}",
        d.log()
    );
}

/// Issue 16 item 1: jobs share `pipeline.memory_budget_mb`. Two workers, and a budget that
/// holds the fundus series or the US cine but not both (42 + 26 MiB by
/// `dicom::pixels::series_bytes`, against 50): both studies arrive in one association and
/// become complete together, so one job must wait for the other's memory instead of
/// decoding beside it; both are still segmented and delivered. A series over the per-job
/// budget fails before decoding (hostile_input covers that).
#[test]
fn jobs_wait_for_pixel_memory_instead_of_exceeding_the_budget() {
    use proxyseg::dicom::pixels::{series_bytes, ImageSize};
    let size = |family: &str| -> Vec<ImageSize> {
        dcm_files(&demo(family))
            .iter()
            .map(|p| {
                let o = dicom_object::OpenFileOptions::new()
                    .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
                    .open_file(p)
                    .unwrap();
                ImageSize::of(&o).unwrap()
            })
            .collect()
    };
    // Segments of the bundled sets: disc, cup, vessels; symphysis, head. 17 = 2 x 8 + 1.
    let mib = |b: u64| b.div_ceil(1 << 20);
    let fundus = mib(series_bytes(&size("fundus"), 3, 17).unwrap());
    let us = mib(series_bytes(&size("us"), 2, 17).unwrap());
    let budget = fundus.max(us) + 4;
    assert!(
        fundus + us > budget,
        "the test needs two series that do not fit together: {fundus} + {us} MiB"
    );

    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let d = Daemon::start(Opts {
        extra: pacs_delivery_tables(pacs_port).replace("[engine]\n", "[engine]\nworkers = 2\n"),
        stable_age_s: 2.0,
        pipeline_extra: format!("max_decoded_mb = {budget}\n"),
        ..Opts::default()
    });
    let out = storescu(d.port)
        .required_only()
        .calling("PACS")
        .files(dcm_files(&demo("us")))
        .files(dcm_files(&demo("fundus")))
        .run();
    assert!(out.status.success(), "storescu:\n{}", text(&out));
    let states = settle(&d, 2, 240);
    assert!(
        states.iter().all(|(_, s)| s == "delivered"),
        "{states:?}\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains("waiting for memory"),
        "neither job waited although {fundus} + {us} MiB > {budget} MiB:\n{log}"
    );
    let metrics = d.metrics();
    assert!(
        metrics.contains("proxyseg_memory_waits_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxyseg_memory_reserved_bytes 0"),
        "every reservation is given back: {metrics}"
    );
}

/// A models folder holding `bundle` (linked in as `name`) and copies of the phantom bundle's
/// support sets `sets`, each pointed at `name`.
pub(crate) fn models_for(bundle: &Path, name: &str, sets: &[&str]) -> tempfile::TempDir {
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bundle, models.path().join(name)).unwrap();
    let dir = models.path().join("sets/support-sets");
    std::fs::create_dir_all(&dir).unwrap();
    for set in sets {
        let src = root().join("models/phantom-tiny/support-sets").join(set);
        let out = run("cp", &["-r", src.to_str().unwrap(), dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let toml = dir.join(set).join("supportset.toml");
        let t = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(
            &toml,
            t.replace("bundle = \"phantom-tiny\"", &format!("bundle = \"{name}\"")),
        )
        .unwrap();
    }
    models
}

/// [`models_for`] the SAM 2 random bundle (contract 2: the real hiera-tiny architecture).
pub(crate) fn sam2_models(sets: &[&str]) -> tempfile::TempDir {
    models_for(
        &crate::harness::engine::sam2_random_bundle(),
        "sam2-random",
        sets,
    )
}

/// The delivery tables ([`pacs_delivery_tables`]) with the [engine] table pointed at a
/// [`models_for`] folder whose default bundle is `bundle`, on the CPU.
pub(crate) fn engine_tables(pacs_port: u16, models: &Path, bundle: &str) -> String {
    pacs_delivery_tables(pacs_port).replace(
        &format!("models_dir = \"{}\"", root().join("models").display()),
        &format!(
            "models_dir = \"{}\"\nproviders = [\"cpu\"]\ndefault_bundle = \"{bundle}\"",
            models.display()
        ),
    )
}

/// [`engine_tables`] for a [`sam2_models`] folder.
pub(crate) fn sam2_tables(pacs_port: u16, models: &Path) -> String {
    engine_tables(pacs_port, models, "sam2-random")
}

/// A SAM 2 bundle (contract 2: the real hiera-tiny architecture, random weights) tracks the US
/// cine (one multi-frame instance, in frame order) and the MR volume (8 single-frame slices, sent
/// in reverse and tracked along the slice normal) through its memory bank, and every frame
/// comes back in a valid SEG (issue 15 items 2 and 4).
#[test]
fn a_sam2_bundle_tracks_cine_and_volumes_through_the_pipeline() {
    let models = sam2_models(&["us-intrapartum-ps-fh", "mr-prostate"]);
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let d = Daemon::start(Opts {
        extra: sam2_tables(pacs_port, models.path()),
        stable_age_s: 1.0,
        ..Opts::default()
    });
    let mut mr = dcm_files(&demo("mr"));
    mr.reverse();
    // a copy of the volume as a study of its own, with slice 2 moved onto slice 1's position
    let dup_dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, pydicom
from pydicom.uid import generate_uid
out, files = sys.argv[1], sys.argv[2:]
study, series, first = generate_uid(), generate_uid(), None
for i, f in enumerate(sorted(files)):
    ds = pydicom.dcmread(f)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    first = first or list(ds.ImagePositionPatient)
    if i == 1:
        ds.ImagePositionPatient = first
    ds.save_as(f"{out}/dup-{i}.dcm")
"#;
    let mut py = vec!["-c", script, dup_dir.path().to_str().unwrap()];
    py.extend(mr.iter().map(String::as_str));
    let out = Command::new(python()).args(&py).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dup = dcm_files(dup_dir.path());
    for files in [dcm_files(&demo("us")), mr, dup] {
        let out = storescu(d.port)
            .required_only()
            .calling("PACS")
            .files(files)
            .run();
        assert!(out.status.success(), "storescu:\n{}", text(&out));
    }
    let states = settle(&d, 3, 300);
    let delivered = states.iter().filter(|(_, s)| s == "delivered").count();
    assert_eq!(delivered, 2, "{states:?}\n{}", d.log());
    // the volume with two slices at one position fails with the reason, nothing half-tracked
    let errors: Vec<String> = d
        .db()
        .prepare("SELECT error FROM jobs WHERE state = 'failed'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("duplicated slices"), "{errors:?}");
    assert!(d.echo(), "the daemon keeps serving");
    let log = d.log();
    assert_eq!(
        log.matches("series tracked through the memory bank")
            .count(),
        2,
        "{log}"
    );
    // neither rule nor set names a mode: every job records the config's, auto
    let modes: Vec<(String, String)> = d
        .db()
        .prepare("SELECT sequence_mode, sequence_mode_from FROM jobs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        modes.len() == 3 && modes.iter().all(|(m, f)| m == "auto" && f == "config"),
        "{modes:?}"
    );
    let mut frames: Vec<u64> = std::fs::read_dir(pacs_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .map(|seg| {
            let o = Command::new("dciodvfy").arg(&seg).output().unwrap();
            let errs = String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| l.starts_with("Error"))
                .count();
            assert!(
                o.status.success() && errs == 0,
                "{} fails dciodvfy",
                seg.display()
            );
            let chk = run_py("seg_check.py", &[seg.to_str().unwrap()]);
            assert!(chk.status.success(), "{}", text(&chk));
            let v: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap();
            v["frames"].as_u64().unwrap()
        })
        .collect();
    frames.sort_unstable();
    // every source frame referenced once per segment: MR 8 slices x 1, US 8 frames x 2
    assert_eq!(frames, vec![8, 16], "SEG frames");
}
