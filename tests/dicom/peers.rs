//! One patient's data goes only where it came from (issue 16 item 4, review H4). A study that
//! two peers send is answered to each with SEGs of what that peer sent, carrying its own
//! patient; a series UID reused in another study pulls in none of that study's images; an
//! instance can be replaced only by the peer that stored it; a peer mixing patients under one
//! study gets no SEG. Real peers: dcmtk `storescu` sends, a dcmtk `storescp` per peer is its
//! PACS, the bundled phantom-tiny model segments.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// A peer: its AE title and its own PACS (storescp) where its results arrive.
struct Peer {
    ae: &'static str,
    port: u16,
    out: tempfile::TempDir,
    _pacs: Guard,
}

impl Peer {
    fn new(ae: &'static str) -> Peer {
        let port = free_port();
        let out = tempfile::tempdir().unwrap();
        let pacs = storescp(port, out.path()).start();
        Peer {
            ae,
            port,
            out,
            _pacs: pacs,
        }
    }

    /// What its PACS received, as seg_refs.py reads it.
    fn segs(&self) -> Vec<serde_json::Value> {
        let files: Vec<String> = std::fs::read_dir(self.out.path())
            .unwrap()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        if files.is_empty() {
            return Vec::new();
        }
        let args: Vec<&str> = files.iter().map(String::as_str).collect();
        let o = run_py("seg_refs.py", &args);
        assert!(o.status.success(), "seg_refs.py: {}", text(&o));
        serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap()
    }
}

/// A daemon that knows `peers` (each delivered to its own storescp) and segments with the
/// bundled models.
fn daemon(peers: &[&Peer]) -> Daemon {
    let mut extra = String::new();
    for p in peers {
        extra += &format!(
            "[[dicom.peers]]\nae_title = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            p.ae, p.port
        );
    }
    extra += &format!(
        "[engine]\nmodels_dir = \"{}\"\nproviders = [\"cpu\"]\n[delivery]\nbackoff_initial_s = 0.3\npoll_interval_ms = 100\n",
        root().join("models").display()
    );
    Daemon::start(Opts {
        extra,
        stable_age_s: 1.0,
        ..Opts::default()
    })
}

/// Copies of the bundled MR demo slices `slices` as series `series` of `study` for patient
/// (ID, name); instance n gets SOP Instance UID `<series>.<n>`. Returns the files and UIDs.
fn series(
    dir: &Path,
    study: &str,
    series: &str,
    patient: (&str, &str),
    slices: std::ops::Range<usize>,
) -> (Vec<PathBuf>, Vec<String>) {
    let demo = root().join("models/phantom-tiny/demo-studies/mr");
    let mut files = Vec::new();
    let mut uids = Vec::new();
    for n in slices {
        let src = demo.join(format!("slice-{:02}.dcm", n + 1));
        let sop = format!("{series}.{}", n + 1);
        let dst = dir.join(format!("{sop}.dcm"));
        std::fs::copy(&src, &dst).unwrap();
        modify(
            &dst,
            &[
                ("0010,0020", patient.0),
                ("0010,0010", patient.1),
                ("0020,000d", study),
                ("0020,000e", series),
                ("0008,0018", &sop),
            ],
        );
        files.push(dst);
        uids.push(sop);
    }
    (files, uids)
}

/// dcmodify -nb with (tag, value) pairs.
fn modify(file: &Path, values: &[(&str, &str)]) {
    let mut args = vec!["-nb".to_string()];
    for (tag, v) in values {
        args.push("-m".into());
        args.push(format!("({tag})={v}"));
    }
    args.push(file.display().to_string());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run("dcmodify", &a);
    assert!(o.status.success(), "dcmodify: {}", text(&o));
}

/// storescu -R from `ae` with `files`.
fn send(d: &Daemon, ae: &str, files: &[PathBuf]) -> std::process::Output {
    storescu(d.port)
        .required_only()
        .calling(ae)
        .files(files)
        .run()
}

/// (study, calling AE, state, error) of every job, oldest first.
fn jobs(d: &Daemon) -> Vec<(String, String, String, Option<String>)> {
    let db = d.db();
    let mut st = db
        .prepare("SELECT study_uid, calling_ae, state, error FROM jobs ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until `n` jobs exist and all have settled.
fn settled(d: &Daemon, n: usize) -> Vec<(String, String, String, Option<String>)> {
    wait_for("the jobs to settle", 180, d, || {
        let j = jobs(d);
        j.len() == n
            && j.iter()
                .all(|(_, _, s, _)| ["delivered", "failed", "unmatched"].contains(&s.as_str()))
    });
    jobs(d)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Two peers send different series of one Study UID, B last (the sender that used to take
/// the whole study): each receives one SEG, of its own series and instances only, carrying
/// its own patient.
#[test]
fn two_peers_sending_one_study_each_get_only_their_own_series() {
    require_tool("dcmodify");
    let (a, b) = (Peer::new("PACSA"), Peer::new("PACSB"));
    let d = daemon(&[&a, &b]);
    let work = tempfile::tempdir().unwrap();
    let study = "1.2.826.0.1.3680043.9.7777.200";
    let (fa, ua) = series(
        work.path(),
        study,
        &format!("{study}.1"),
        ("PAT-A", "ALPHA^ANNE"),
        0..2,
    );
    let (fb, ub) = series(
        work.path(),
        study,
        &format!("{study}.2"),
        ("PAT-B", "BETA^BEN"),
        2..4,
    );
    for (peer, files) in [(&a, &fa), (&b, &fb)] {
        let o = send(&d, peer.ae, files);
        assert!(o.status.success(), "storescu {}: {}", peer.ae, text(&o));
    }
    let j = settled(&d, 2);
    assert!(
        j.iter().all(|(_, _, s, _)| s == "delivered"),
        "{j:?}\n{}",
        d.log()
    );
    for (peer, series_uid, uids, patient) in [
        (&a, format!("{study}.1"), &ua, ("PAT-A", "ALPHA^ANNE")),
        (&b, format!("{study}.2"), &ub, ("PAT-B", "BETA^BEN")),
    ] {
        let segs = peer.segs();
        assert_eq!(segs.len(), 1, "{}: {segs:?}", peer.ae);
        let s = &segs[0];
        assert_eq!(s["study_uid"], study, "{}: {s}", peer.ae);
        assert_eq!(s["patient_id"], patient.0, "{}: {s}", peer.ae);
        assert_eq!(s["patient_name"], patient.1, "{}: {s}", peer.ae);
        assert_eq!(s["referenced_series"], serde_json::json!([series_uid]));
        let sops: Vec<String> = serde_json::from_value(s["referenced_sops"].clone()).unwrap();
        assert_eq!(sops, sorted(uids.clone()), "{}: {s}", peer.ae);
    }
}

/// One peer sends two studies whose series share a Series Instance UID: each study's SEG
/// references that study's images and patient only.
#[test]
fn a_series_uid_reused_in_another_study_pulls_in_none_of_its_images() {
    require_tool("dcmodify");
    let a = Peer::new("PACSA");
    let d = daemon(&[&a]);
    let work = tempfile::tempdir().unwrap();
    let shared = "1.2.826.0.1.3680043.9.7777.301.1";
    let (s1, s2) = (
        "1.2.826.0.1.3680043.9.7777.301",
        "1.2.826.0.1.3680043.9.7777.302",
    );
    let d1 = work.path().join("1");
    let d2 = work.path().join("2");
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let (f1, u1) = series(&d1, s1, shared, ("PAT-1", "ONE^ONA"), 0..2);
    let (f2, u2) = series(&d2, s2, shared, ("PAT-2", "TWO^TOM"), 2..4);
    let all: Vec<PathBuf> = f1.iter().chain(&f2).cloned().collect();
    let o = send(&d, a.ae, &all);
    assert!(o.status.success(), "storescu: {}", text(&o));
    let j = settled(&d, 2);
    assert!(
        j.iter().all(|(_, _, s, _)| s == "delivered"),
        "{j:?}\n{}",
        d.log()
    );
    let segs = a.segs();
    assert_eq!(segs.len(), 2, "{segs:?}");
    for (study, uids, patient) in [(s1, &u1, "PAT-1"), (s2, &u2, "PAT-2")] {
        let s = segs
            .iter()
            .find(|s| s["study_uid"] == study)
            .unwrap_or_else(|| panic!("no SEG for {study}: {segs:?}"));
        assert_eq!(s["patient_id"], patient, "{s}");
        let sops: Vec<String> = serde_json::from_value(s["referenced_sops"].clone()).unwrap();
        assert_eq!(sops, sorted(uids.clone()), "{s}");
    }
}

/// A peer that sends two patients under one Study UID gets no SEG: its job fails with the
/// reason (no Patient ID in it), and the metrics count it under a fixed word.
#[test]
fn a_peer_mixing_patients_in_one_study_fails_its_job() {
    require_tool("dcmodify");
    let a = Peer::new("PACSA");
    let d = daemon(&[&a]);
    let work = tempfile::tempdir().unwrap();
    let study = "1.2.826.0.1.3680043.9.7777.400";
    let (mut files, _) = series(
        work.path(),
        study,
        &format!("{study}.1"),
        ("PAT-1", "ONE^ONA"),
        0..2,
    );
    modify(&files[1], &[("0010,0020", "PAT-2")]);
    files.truncate(2);
    let o = send(&d, a.ae, &files);
    assert!(o.status.success(), "storescu: {}", text(&o));
    let j = settled(&d, 1);
    assert_eq!(j[0].2, "failed", "{j:?}");
    let why = j[0].3.clone().unwrap_or_default();
    assert!(
        why.starts_with("patients:") && why.contains("2 different Patient IDs"),
        "{why}"
    );
    assert!(
        !why.contains("PAT-"),
        "the reason names a Patient ID: {why}"
    );
    assert!(a.segs().is_empty());
    let counted = |m: &str| {
        m.contains("proxyseg_jobs_total{reason=\"mixed_patients\",state=\"failed\"} 1")
            || m.contains("proxyseg_jobs_total{state=\"failed\",reason=\"mixed_patients\"} 1")
    };
    let m = d.metrics_once(30, counted);
    assert!(counted(&m), "{m}");
}

/// (calling AE, source host, digest, path) of an instance's row.
fn row(d: &Daemon, sop: &str) -> (String, String, String, String) {
    d.db()
        .query_row(
            "SELECT calling_ae, source_host, digest, path FROM instances WHERE sop_instance_uid = ?1",
            [sop],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

/// Peer B sends an instance under peer A's SOP Instance UID with other content: refused
/// with 0x0124 (refused: not authorized) and a short comment without server paths; A's file
/// and row stay as they were, and nothing of B's is stored. An identical copy from B is
/// acknowledged and not stored either: the instance stays A's.
#[test]
fn another_peer_cannot_replace_an_instance() {
    require_tool("dcmodify");
    let d = Daemon::start(Opts {
        extra: "[[dicom.peers]]\nae_title = \"PACSA\"\nhost = \"127.0.0.1\"\nport = 104\n[[dicom.peers]]\nae_title = \"PACSB\"\nhost = \"127.0.0.1\"\nport = 105\n".into(),
        stable_age_s: 3600.0,
        ..Opts::default()
    });
    let work = tempfile::tempdir().unwrap();
    let original = work.path().join("a.dcm");
    std::fs::copy(pydicom_files().join("CT_small.dcm"), &original).unwrap();
    let sop = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322";
    let o = send(&d, "PACSA", std::slice::from_ref(&original));
    assert!(o.status.success(), "storescu A: {}", text(&o));
    let before = row(&d, sop);
    let bytes_before = std::fs::read(&before.3).unwrap();

    let altered = work.path().join("b.dcm");
    std::fs::copy(&original, &altered).unwrap();
    modify(
        &altered,
        &[("0010,0010", "MALLORY^M"), ("0010,0020", "OTHER")],
    );
    let o = storescu(d.port)
        .opts(&["-d"])
        .required_only()
        .calling("PACSB")
        .file(&altered)
        .run();
    let out = text(&o);
    assert!(
        out.contains("DIMSE Status                  : 0x0124: Refused: Not authorized")
            && out.contains("[SOP instance stored earlier by another peer: not replaced]"),
        "storescu B must see the refusal:\n{out}"
    );
    assert!(!out.contains(&d.data_dir().display().to_string()), "{out}");
    assert_eq!(row(&d, sop), before, "A's row changed");
    assert_eq!(
        std::fs::read(&before.3).unwrap(),
        bytes_before,
        "A's file changed"
    );
    assert_eq!(d.instance_count(), 1);
    let spooled = std::fs::read_dir(before.3.rsplit_once('/').unwrap().0)
        .unwrap()
        .count();
    assert_eq!(spooled, 1, "B's copy left a file beside A's");
    assert!(
        d.log().contains("may not replace it"),
        "refusal not logged:\n{}",
        d.log()
    );

    // An identical copy from B: acknowledged, not stored, still A's.
    let o = send(&d, "PACSB", std::slice::from_ref(&original));
    assert!(o.status.success(), "storescu B identical: {}", text(&o));
    assert!(!text(&o).contains("0x0124"), "{}", text(&o));
    assert_eq!(row(&d, sop), before);
    assert!(d
        .log()
        .contains("identical copy of an instance another peer stored"));
    let parts: i64 = d
        .db()
        .query_row(
            "SELECT COUNT(*) FROM study_peers WHERE calling_ae = 'PACSB'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        parts, 0,
        "B's refused and duplicate copies opened a study part of B"
    );
}
