//! The loop guard (issue 16 item 4, review M2): a PACS that routes a study back to proxyseg,
//! re-encoded (another transfer syntax) and with our own SEGs in it, does not make it segment
//! the study again; a study that keeps coming back with new images is segmented at most
//! `pipeline.max_jobs_per_study` times per window; re-runs add SEG instances to one SEG series
//! per (study, series, support-set version, peer) instead of a new series each time. Real
//! peers: dcmtk `storescu` (which transcodes with `-xi`), `storescp` as the PACS, the bundled
//! phantom-tiny model.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// A daemon with peer PACS delivering to `pacs_port`, with the bundled models.
fn daemon(pacs_port: u16, pipeline_extra: &str) -> Daemon {
    Daemon::start(Opts {
        extra: format!(
            "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n[engine]\nmodels_dir = \"{}\"\nproviders = [\"cpu\"]\n[delivery]\nbackoff_initial_s = 0.3\npoll_interval_ms = 100\n",
            root().join("models").display()
        ),
        pipeline_extra: pipeline_extra.into(),
        stable_age_s: 1.0,
        ..Opts::default()
    })
}

/// The bundled MR demo slices `slices` as one study with UIDs of its own.
fn mr_study(dir: &Path, study: &str, slices: std::ops::Range<usize>) -> Vec<PathBuf> {
    let demo = root().join("models/phantom-tiny/demo-studies/mr");
    slices
        .map(|n| {
            let dst = dir.join(format!("slice-{n}.dcm"));
            std::fs::copy(demo.join(format!("slice-{:02}.dcm", n + 1)), &dst).unwrap();
            let o = run(
                "dcmodify",
                &[
                    "-nb",
                    "-m",
                    &format!("(0020,000d)={study}"),
                    "-m",
                    &format!("(0020,000e)={study}.1"),
                    "-m",
                    &format!("(0008,0018)={study}.1.{}", n + 1),
                    dst.to_str().unwrap(),
                ],
            );
            assert!(o.status.success(), "dcmodify: {}", text(&o));
            dst
        })
        .collect()
}

/// storescu -R as PACS with `files`, `extra` options first (e.g. "-xi": propose implicit VR
/// only, so dcmtk transcodes explicit VR files on the way).
fn send(d: &Daemon, extra: &[&str], files: &[PathBuf]) {
    let o = storescu(d.port)
        .opts(extra)
        .required_only()
        .calling("PACS")
        .files(files)
        .run();
    assert!(o.status.success(), "storescu {extra:?}: {}", text(&o));
}

/// (state, error or last event detail) of every job, oldest first.
fn jobs(d: &Daemon) -> Vec<(String, String)> {
    let db = d.db();
    let mut st = db
        .prepare(
            "SELECT state, COALESCE(error, (SELECT detail FROM job_events e
                WHERE e.job_id = jobs.id ORDER BY seq DESC LIMIT 1), '')
             FROM jobs ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn settled(d: &Daemon, n: usize) -> Vec<(String, String)> {
    wait_for("the jobs to settle", 120, d, || {
        let j = jobs(d);
        j.len() == n
            && j.iter()
                .all(|(s, _)| ["delivered", "failed", "unmatched"].contains(&s.as_str()))
    });
    jobs(d)
}

/// The files the PACS received.
fn received(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Review M2: the PACS routes the study back transcoded to Implicit VR, with our SEG
/// transcoded too. The re-encoded images replace the stored copies (same peer) but are not
/// new images, so the study is not segmented again and no second SEG is sent.
#[test]
fn a_study_routed_back_re_encoded_is_not_segmented_again() {
    require_tool("dcmodify");
    let pacs_port = free_port();
    let out = tempfile::tempdir().unwrap();
    let _pacs = storescp(pacs_port, out.path()).start();
    let d = daemon(pacs_port, "");
    let work = tempfile::tempdir().unwrap();
    let study = "1.2.826.0.1.3680043.9.7777.500";
    let files = mr_study(work.path(), study, 0..2);
    send(&d, &[], &files);
    let j = settled(&d, 1);
    assert_eq!(j[0].0, "delivered", "{j:?}\n{}", d.log());
    let segs = received(out.path());
    assert_eq!(segs.len(), 1);

    // Back from the PACS: every image and our SEG, in Implicit VR Little Endian.
    let mut back = files.clone();
    back.extend(segs.iter().cloned());
    send(&d, &["-xi"], &back);
    let j = settled(&d, 2);
    assert_eq!(j[1].0, "unmatched", "{j:?}\n{}", d.log());
    assert!(j[1].1.contains("not segmented again"), "{j:?}");
    let implicit: i64 = d
        .db()
        .query_row(
            "SELECT COUNT(*) FROM instances WHERE transfer_syntax = '1.2.840.10008.1.2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        implicit, 3,
        "the re-encoded copies were not stored as replacements"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(received(out.path()).len(), 1, "a second SEG was sent");
}

/// A study that keeps coming back with a new image each time is segmented at most
/// `pipeline.max_jobs_per_study` times per window; the SEGs of its re-runs are instances of one
/// SEG series, not a new series each time.
#[test]
fn a_study_that_keeps_changing_is_capped_and_stays_in_one_seg_series() {
    require_tool("dcmodify");
    let pacs_port = free_port();
    let out = tempfile::tempdir().unwrap();
    let _pacs = storescp(pacs_port, out.path()).start();
    let d = daemon(pacs_port, "max_jobs_per_study = 2\n");
    let work = tempfile::tempdir().unwrap();
    let study = "1.2.826.0.1.3680043.9.7777.600";
    let files = mr_study(work.path(), study, 0..3);
    for (round, file) in files.iter().enumerate() {
        send(&d, &[], std::slice::from_ref(file));
        settled(&d, round + 1);
    }
    let j = jobs(&d);
    assert_eq!(
        j.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["delivered", "delivered", "unmatched"],
        "{j:?}\n{}",
        d.log()
    );
    assert!(
        j[2].1
            .starts_with("loop guard: 2 jobs of this study from PACS"),
        "{j:?}"
    );
    let segs = received(out.path());
    assert_eq!(segs.len(), 2, "{segs:?}");
    let args: Vec<&str> = segs.iter().map(|p| p.to_str().unwrap()).collect();
    let o = run_py("seg_refs.py", &args);
    assert!(o.status.success(), "{}", text(&o));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v[0]["series_uid"], v[1]["series_uid"],
        "a re-run opened a new SEG series: {v:?}"
    );
    assert_ne!(v[0]["referenced_sops"], v[1]["referenced_sops"]);
}
