//! dcmtk against the real daemon: echoscu, and storescu with every pydicom test file in its
//! own transfer syntax (the stored data set must equal the sent one element by element), with
//! and without -R, with small PDUs, with --abort and with 8 parallel processes.

use crate::harness::*;

/// pydicom test files and the storescu option that proposes their own transfer syntax.
const FILES: &[(&str, &str)] = &[
    ("CT_small.dcm", "-xe"),
    ("MR_small.dcm", "-xe"),
    ("MR_small_implicit.dcm", "-xi"),
    ("MR_small_bigendian.dcm", "-xb"),
    ("MR_small_expb.dcm", "-xb"),
    ("MR_small_RLE.dcm", "-xr"),
    ("MR_small_jp2klossless.dcm", "-xv"),
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),
    ("JPEG2000.dcm", "-xw"),
    ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),
    ("JPGExtended.dcm", "-xx"),
    ("SC_rgb_rle.dcm", "-xr"),
    ("SC_rgb_small_odd.dcm", "-xe"),
    ("image_dfl.dcm", "-xd"),
    ("SC_ybr_full_422_uncompressed.dcm", "-xe"),
    ("examples_palette.dcm", "-xe"),
    ("SC_rgb_jpeg_gdcm.dcm", "-xs"),
];

fn sop_uid(path: &std::path::Path) -> String {
    let o = std::process::Command::new(python())
        .args(["-c", "import sys,pydicom; print(pydicom.dcmread(sys.argv[1], stop_before_pixels=True).SOPInstanceUID)"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn ts_of(path: &std::path::Path) -> String {
    let o = std::process::Command::new(python())
        .args(["-c", "import sys,pydicom; print(pydicom.dcmread(sys.argv[1], stop_before_pixels=True).file_meta.TransferSyntaxUID)"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn echoscu_is_answered() {
    let d = Daemon::start(Opts::default());
    let out = echoscu(d.port).opts(&["-v"]).run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Success"),
        "{}",
        text(&out)
    );
}

#[test]
fn every_pydicom_file_is_stored_unchanged_in_its_own_transfer_syntax() {
    let d = Daemon::start(Opts::default());
    let dir = pydicom_files();
    let mut uids = std::collections::HashSet::new();
    for (name, opt) in FILES {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} is not in the pydicom wheel",
            path.display()
        );
        let out = storescu(d.port)
            .required_only()
            .opts(&[opt])
            .file(&path)
            .run();
        assert!(
            out.status.success(),
            "storescu {opt} {name} failed:\n{}\ndaemon log:\n{}",
            text(&out),
            d.log()
        );
        let sop = sop_uid(&path);
        uids.insert(sop.clone());
        let stored = stored_path(&d, &sop).unwrap_or_else(|| panic!("{name} not indexed"));
        let cmp = run_py(
            "same_dataset.py",
            &[path.to_str().unwrap(), stored.to_str().unwrap()],
        );
        assert!(
            cmp.status.success(),
            "{name}: stored data set differs:\n{}",
            text(&cmp)
        );
        let ts: String = d
            .db()
            .query_row(
                "SELECT transfer_syntax FROM instances WHERE sop_instance_uid = ?1",
                [&sop],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            ts,
            ts_of(&path),
            "{name} was not kept in its own transfer syntax"
        );
        assert_eq!(
            ts_of(&stored),
            ts,
            "{name}: spool file meta names another transfer syntax"
        );
    }
    // The MR_small variants share one SOP Instance UID: each later copy replaced the earlier.
    assert_eq!(d.instance_count() as usize, uids.len());
}

#[test]
fn storescu_variants_all_store() {
    let d = Daemon::start(Opts::default());
    let gen = tempfile::tempdir().unwrap();
    let gdir = gen.path().to_str().unwrap();
    let out = run_py("make_instances.py", &[gdir, "84", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut files: Vec<String> = std::fs::read_dir(gen.path())
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();

    // Without -R: 128 proposed contexts (SEG is not among them), we accept what we know.
    let out = storescu(d.port).file(&files[0]).run();
    assert!(out.status.success(), "storescu without -R:\n{}", text(&out));
    // Small PDUs both ways: many fragments per data set.
    let out = storescu(d.port)
        .required_only()
        .opts(&["-pdu", "4096", "--max-send-pdu", "4096"])
        .file(&files[1])
        .run();
    assert!(out.status.success(), "storescu -pdu 4096:\n{}", text(&out));
    // --abort instead of release after the store: the acknowledged instance stays.
    let out = storescu(d.port)
        .required_only()
        .opts(&["--abort"])
        .file(&files[2])
        .run();
    assert!(out.status.success(), "storescu --abort:\n{}", text(&out));
    assert_eq!(d.instance_count(), 3);

    // 8 parallel storescu processes, 10 instances each.
    let handles: Vec<_> = (0..8)
        .map(|k| {
            let port = d.port;
            let chunk: Vec<String> = files[4 + k * 10..4 + (k + 1) * 10].to_vec();
            std::thread::spawn(move || storescu(port).required_only().files(chunk).run())
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.status.success(), "parallel storescu:\n{}", text(&out));
    }
    assert_eq!(d.instance_count(), 83, "3 + 80 distinct instances expected");
    assert_eq!(d.temp_files(), 0);
    // Re-sending identical copies is idempotent and logged.
    let out = storescu(d.port)
        .required_only()
        .file(&files[0])
        .file(&files[1])
        .run();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.instance_count(), 83);
    assert!(
        d.log().contains("identical duplicate"),
        "duplicate not logged"
    );

    // A different copy under the same SOP Instance UID replaces the stored one (after the new
    // one is durable) and is logged.
    let changed = gen.path().join("changed.dcm");
    let o = std::process::Command::new(python())
        .args(["-c", "import sys,pydicom; d=pydicom.dcmread(sys.argv[1]); d.PatientName='Changed^Copy'; d.save_as(sys.argv[2])"])
        .args([&files[0], changed.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = storescu(d.port).required_only().file(&changed).run();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.instance_count(), 83);
    let sop = sop_uid(&changed);
    let stored = stored_path(&d, &sop).unwrap();
    let cmp = run_py(
        "same_dataset.py",
        &[changed.to_str().unwrap(), stored.to_str().unwrap()],
    );
    assert!(
        cmp.status.success(),
        "replacement not stored:\n{}",
        text(&cmp)
    );
    assert!(
        d.log().contains("replaced the stored one"),
        "replacement not logged"
    );
    // Review L5: the replacement's name carries a letter, so it can never be the name of
    // another instance (UIDs are digits and dots: "<sop>.<12 digits>.dcm" could be one).
    let name = stored.file_name().unwrap().to_string_lossy().into_owned();
    let suffix = name
        .strip_prefix(&format!("{sop}."))
        .and_then(|r| r.strip_suffix(".dcm"))
        .unwrap_or_else(|| panic!("replacement stored as {name}"));
    assert!(
        suffix.len() == 13
            && suffix.starts_with('r')
            && suffix[1..].chars().all(|c| c.is_ascii_hexdigit()),
        "replacement stored as {name}"
    );
}
