//! The whole pipeline on the bundled model: demo studies in over DICOM, SEGs out to a PACS
//! (pynetdicom SCP), valid per dciodvfy, in the source study, with the support context
//! computed once per support set; a study no rule claims is recorded as unmatched.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn demo(family: &str) -> PathBuf {
    let p = root().join("models/phantom-tiny/demo-studies").join(family);
    assert!(
        p.is_dir(),
        "{} missing: the bundled model's demo studies are part of the repository",
        p.display()
    );
    p
}

fn dcm_files(dir: &Path) -> Vec<String> {
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

fn job_states(d: &Daemon) -> Vec<(String, String)> {
    let db = d.db();
    let mut st = db
        .prepare("SELECT study_uid, state FROM jobs ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn demo_studies_come_back_as_valid_segs_in_their_study() {
    require_tool("dciodvfy");
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let mut child = Command::new(python())
        .arg(root().join("tests/python/pacs_scp.py"))
        .arg(pacs_port.to_string())
        .arg(pacs_dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _pacs = Guard(child);
    let extra = format!(
        "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n[engine]\nmodels_dir = \"{}\"\n[delivery]\nbackoff_initial_s = 0.5\npoll_interval_ms = 100\n",
        root().join("models").display()
    );
    let d = Daemon::start(Opts {
        extra,
        stable_age_s: 1.0,
        ..Opts::default()
    });
    let port = d.port.to_string();
    let mut sent_studies = 0;
    for family in ["fundus", "us", "mr"] {
        let mut args = vec![
            "-R".to_string(),
            "-aet".into(),
            "PACS".into(),
            "-aec".into(),
            "PROXYSEG".into(),
            "127.0.0.1".into(),
            port.clone(),
        ];
        args.extend(dcm_files(&demo(family)));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run("storescu", &a);
        assert!(out.status.success(), "storescu {family}:\n{}", text(&out));
        sent_studies += 1;
    }
    // A study no support set claims.
    let ct = pydicom_files().join("CT_small.dcm");
    let out = run(
        "storescu",
        &[
            "-R",
            "-aet",
            "PACS",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &port,
            ct.to_str().unwrap(),
        ],
    );
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
    let mut args = vec![
        "-R".to_string(),
        "-aet".into(),
        "PACS".into(),
        "-aec".into(),
        "PROXYSEG".into(),
        "127.0.0.1".into(),
        port.clone(),
    ];
    args.extend(received.iter().map(|p| p.display().to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("storescu", &a);
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
