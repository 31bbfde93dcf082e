//! Issue 15 item 4 through the whole pipeline: a routing rule's `sequence_mode = per-frame`
//! makes the US cine go frame by frame through the SAM 2 random bundle, where the default
//! (auto, from the config) tracks it through the memory bank. The rule is changed with the
//! admin CLI of the running daemon; each job records the mode it ran with and where it came
//! from, and its `inferred` event says how its series were segmented. `memory` from a rule on
//! a contract-1 bundle falls back to frame by frame, as the config's does, with the reason.

use super::pipeline_e2e::{
    dcm_files, demo, engine_tables, job_states, models_for, sam2_models, sam2_tables, settle,
};
use crate::harness::admin::{admin_cli, write_tokens, ADMIN_TOKEN};
use crate::harness::*;
use std::process::Command;

/// The mode, its source and the `inferred` detail of every job, by id.
fn job_modes(d: &Daemon) -> Vec<(String, String, String)> {
    d.db()
        .prepare(
            "SELECT j.sequence_mode, j.sequence_mode_from, e.detail FROM jobs j
               JOIN job_events e ON e.job_id = j.id AND e.state = 'inferred' ORDER BY j.id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A daemon with the admin API on, delivering to a PACS, and the admin CLI for it.
struct Site {
    d: Daemon,
    addr: String,
    aux: tempfile::TempDir,
}

impl Site {
    /// Starts it with `tables` (the engine and delivery tables).
    fn start(tables: String) -> Site {
        Site::start_with(tables, String::new())
    }

    /// [`Site::start`] with extra `[pipeline]` keys.
    fn start_with(tables: String, pipeline_extra: String) -> Site {
        let aux = tempfile::tempdir().unwrap();
        let tokens = write_tokens(aux.path(), 0o600);
        std::fs::write(aux.path().join("alice.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut d = Daemon::start(Opts {
            extra: format!(
                "{tables}[admin]\nlisten = \"{addr}\"\ntokens_file = \"{}\"\n",
                tokens.display()
            ),
            stable_age_s: 1.0,
            pipeline_extra,
            ..Opts::default()
        });
        d.wait_listening(&addr);
        Site { d, addr, aux }
    }

    /// `proxyseg admin ARGS` with an admin token; its stdout (it must succeed).
    fn cli(&self, args: &[&str]) -> String {
        let o = admin_cli(&self.addr, &self.aux.path().join("alice.token"), args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The id of the rule seeded for the US support set.
    fn us_rule(&self) -> String {
        let rules: serde_json::Value =
            serde_json::from_str(&self.cli(&["--json", "rule", "list"])).unwrap();
        rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["support_set"] == "us-intrapartum-ps-fh")
            .map(|r| r["id"].to_string())
            .unwrap_or_else(|| panic!("no rule for the US set: {rules}"))
    }

    /// Sends `files` as the PACS.
    fn send(&self, files: Vec<String>) {
        let out = storescu(self.d.port)
            .required_only()
            .calling("PACS")
            .files(files)
            .run();
        assert!(out.status.success(), "storescu:\n{}", text(&out));
    }

    /// Waits until `n` jobs are delivered or failed.
    fn settled(&self, n: usize) {
        settle(&self.d, n, 300);
    }
}

/// The demo US cine as a new study (new study, series and instance UIDs), in a folder.
fn cine_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let script = r#"
import sys, pydicom
from pydicom.uid import generate_uid
ds = pydicom.dcmread(sys.argv[2])
ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
ds.save_as(sys.argv[1] + "/cine-copy.dcm")
"#;
    let cine = dcm_files(&demo("us")).remove(0);
    let out = Command::new(python())
        .args(["-c", script, copy.path().to_str().unwrap(), &cine])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    copy
}

#[test]
fn a_rule_sends_a_cine_per_frame_where_the_default_tracks_it() {
    let models = sam2_models(&["us-intrapartum-ps-fh"]);
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let site = Site::start(sam2_tables(pacs_port, models.path()));
    let (d, cli) = (&site.d, |args: &[&str]| site.cli(args));

    // The default: auto from the config tracks the cine.
    site.send(dcm_files(&demo("us")));
    site.settled(1);

    // The seeded rule of the US set asks for per-frame; a copy of the cine as a new study.
    let id = site.us_rule();
    cli(&["rule", "update", &id, "--sequence-mode", "per-frame"]);
    let copy = cine_copy();
    site.send(dcm_files(copy.path()));
    site.settled(2);

    let states = job_states(d);
    assert!(
        states.iter().all(|(_, s)| s == "delivered"),
        "{states:?}\n{}",
        d.log()
    );
    let modes = job_modes(d);
    assert_eq!(modes.len(), 2, "{modes:?}");
    assert_eq!(
        (modes[0].0.as_str(), modes[0].1.as_str()),
        ("auto", "config")
    );
    assert!(
        modes[0]
            .2
            .contains("1 tracked through the memory bank, 0 frame by frame"),
        "{modes:?}"
    );
    assert_eq!(
        (modes[1].0.as_str(), modes[1].1.as_str()),
        ("per-frame", "rule")
    );
    assert!(
        modes[1]
            .2
            .contains("0 tracked through the memory bank, 1 frame by frame"),
        "{modes:?}"
    );
    // what an admin sees: the job detail names the mode and its source
    let id: i64 = d
        .db()
        .query_row("SELECT MAX(id) FROM jobs", [], |r| r.get(0))
        .unwrap();
    let job: serde_json::Value =
        serde_json::from_str(&cli(&["--json", "jobs", "show", &id.to_string()])).unwrap();
    assert_eq!(
        (&job["sequence_mode"], &job["sequence_mode_from"]),
        (&"per-frame".into(), &"rule".into()),
        "{job}"
    );
    let shown = cli(&["jobs", "show", &id.to_string()]);
    assert!(
        shown.contains("sequence mode: per-frame (from rule)"),
        "{shown}"
    );
    let log = d.log();
    assert_eq!(
        log.matches("series tracked through the memory bank")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("series segmented frame by frame")
                && l.contains("sequence_mode=per-frame")
                && l.contains("sequence_mode_from=rule")),
        "{log}"
    );
    // both SEGs cover every frame: 8 frames x 2 segments
    let segs = dcm_files(pacs_dir.path());
    assert_eq!(segs.len(), 2, "{segs:?}");
    for seg in &segs {
        let chk = run_py("seg_check.py", &[seg.as_str()]);
        assert!(chk.status.success(), "{}", text(&chk));
        let v: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap();
        assert_eq!(v["frames"].as_u64(), Some(16), "{seg}");
    }
}

/// Item 7: `memory` asked by a rule of a bundle that cannot track (the contract-1 phantom
/// bundle) segments frame by frame, as the config's `memory` does, with the reason logged.
#[test]
fn memory_from_a_rule_on_a_contract_1_bundle_falls_back_to_per_frame() {
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let site = Site::start(pacs_delivery_tables(pacs_port));
    let id = site.us_rule();
    site.cli(&["rule", "update", &id, "--sequence-mode", "memory"]);
    site.send(dcm_files(&demo("us")));
    site.settled(1);
    let d = &site.d;
    assert_eq!(job_states(d)[0].1, "delivered", "{}", d.log());
    let modes = job_modes(d);
    assert_eq!(
        (modes[0].0.as_str(), modes[0].1.as_str()),
        ("memory", "rule")
    );
    assert!(
        modes[0]
            .2
            .contains("0 tracked through the memory bank, 1 frame by frame"),
        "{modes:?}"
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("the bundle cannot track frames")
                && l.contains("sequence_mode_from=rule")
                && l.contains("bundle=phantom-tiny")),
        "{log}"
    );
}

/// Issue 15 item 3 through the daemon: the shipped `litemedsam-ppg` has a memory mode (contract
/// 1 with memory graphs), so with the default `auto` the US cine and the MR volume (sent in
/// reverse) are tracked through its memory bank and come back as valid SEGs covering every
/// frame; the same cine under a rule asking `per-frame` goes frame by frame. The daemon runs
/// 3 frames at a time, so frame 0's revisit (after frame 6) arrives in a later chunk than
/// frame 0: its SEG must hold the masks `proxyseg segment` gives the cine in one call.
#[test]
fn the_bundled_model_tracks_cine_and_volumes_through_its_memory_mode() {
    let models = models_for(
        &root().join("models/litemedsam-ppg"),
        "litemedsam-ppg",
        &["us-intrapartum-ps-fh", "mr-prostate"],
    );
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let site = Site::start_with(
        engine_tables(pacs_port, models.path(), "litemedsam-ppg"),
        "chunk_frames = 3\n".into(),
    );
    let d = &site.d;
    let mut mr = dcm_files(&demo("mr"));
    mr.reverse();
    site.send(dcm_files(&demo("us")));
    site.send(mr);
    site.settled(2);
    let states = job_states(d);
    assert!(
        states.iter().all(|(_, s)| s == "delivered"),
        "{states:?}\n{}",
        d.log()
    );
    let modes = job_modes(d);
    assert!(
        modes.iter().all(|(m, f, detail)| m == "auto"
            && f == "config"
            && detail.contains("1 tracked through the memory bank, 0 frame by frame")),
        "{modes:?}"
    );
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("series tracked through the memory bank")
            && l.contains("frames=8")),
        "{log}"
    );
    let segs = dcm_files(pacs_dir.path());
    let mut frames: Vec<u64> = segs
        .iter()
        .map(|seg| {
            let o = Command::new("dciodvfy").arg(seg).output().unwrap();
            let errs = String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| l.starts_with("Error"))
                .count();
            assert!(o.status.success() && errs == 0, "{seg} fails dciodvfy");
            let chk = run_py("seg_check.py", &[seg.as_str()]);
            assert!(chk.status.success(), "{}", text(&chk));
            let v: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap();
            v["frames"].as_u64().unwrap()
        })
        .collect();
    frames.sort_unstable();
    // every source frame once per segment: MR 8 slices x 1, US 8 frames x 2
    assert_eq!(frames, vec![8, 16]);
    let work = tempfile::tempdir().unwrap();
    let offline = work.path().join("offline");
    segment_offline(
        models.path(),
        "us-intrapartum-ps-fh",
        &[&demo("us").join("cine.dcm")],
        &offline,
    );
    let cine_seg = segs
        .iter()
        .find(|s| {
            let v: serde_json::Value =
                serde_json::from_slice(&run_py("seg_check.py", &[s.as_str()]).stdout).unwrap();
            v["frames"].as_u64() == Some(16)
        })
        .unwrap();
    let offline_seg = offline.join("cine.seg.dcm");
    let chk = run_py(
        "seg_check.py",
        &[cine_seg.as_str(), offline_seg.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap();
    for label in ["pubic symphysis", "fetal head"] {
        // the same graphs on the same inputs; only the chunking differs
        let dice = v["dice"][label].as_f64().unwrap();
        assert!(
            dice > 0.999,
            "{label}: daemon vs proxyseg segment Dice {dice}: {v}"
        );
    }

    // per-frame from the US set's rule: the same cine, as a new study, frame by frame
    let id = site.us_rule();
    site.cli(&["rule", "update", &id, "--sequence-mode", "per-frame"]);
    let copy = cine_copy();
    site.send(dcm_files(copy.path()));
    site.settled(3);
    let last = job_modes(d).pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("per-frame", "rule"));
    assert!(
        last.2
            .contains("0 tracked through the memory bank, 1 frame by frame"),
        "{last:?}"
    );
    assert!(d.echo(), "the daemon keeps serving");
}

/// Runs `proxyseg segment` with set `set` under `models` on `inputs`; its stdout.
fn segment_offline(
    models: &std::path::Path,
    set: &str,
    inputs: &[&std::path::Path],
    out: &std::path::Path,
) -> String {
    let cfg = out.with_extension("toml");
    std::fs::write(
        &cfg,
        format!(
            "[dicom]\nrequire_known_peers = false\n[storage]\ndata_dir = \"{}\"\n[engine]\nmodels_dir = \"{}\"\ndefault_bundle = \"litemedsam-ppg\"\nproviders = [\"cpu\"]\n",
            out.with_extension("var").display(),
            models.display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["segment", "--config"])
        .arg(&cfg)
        .args(["--support-set", set, "-o"])
        .arg(out)
        .args(inputs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `proxyseg segment` chooses as the daemon does: the US cine is tracked through the bundled
/// model's memory bank by default (auto, from the config), and frame by frame when the support
/// set says `per-frame`; the line printed per input and its result.toml say which, and the SEG
/// covers every frame either way. The two runs' masks differ (the memory changes the result).
#[test]
fn proxyseg_segment_tracks_a_cine_as_the_daemon_would() {
    let models = models_for(
        &root().join("models/litemedsam-ppg"),
        "litemedsam-ppg",
        &["us-intrapartum-ps-fh"],
    );
    let cine = demo("us").join("cine.dcm");
    let work = tempfile::tempdir().unwrap();
    let tracked_out = work.path().join("tracked");
    let stdout = segment_offline(
        models.path(),
        "us-intrapartum-ps-fh",
        &[&cine],
        &tracked_out,
    );
    assert!(
        stdout.contains("cine: tracked through the memory bank (sequence_mode auto (from config))"),
        "{stdout}"
    );
    let result = std::fs::read_to_string(tracked_out.join("cine/result.toml")).unwrap();
    assert!(result.contains("tracked = true"), "{result}");

    let toml = models
        .path()
        .join("sets/support-sets/us-intrapartum-ps-fh/supportset.toml");
    let t = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("sequence_mode = \"per-frame\"\n{t}")).unwrap();
    let frame_out = work.path().join("per-frame");
    let stdout = segment_offline(models.path(), "us-intrapartum-ps-fh", &[&cine], &frame_out);
    assert!(
        stdout.contains("cine: frame by frame (sequence_mode per-frame (from support set))"),
        "{stdout}"
    );
    let result = std::fs::read_to_string(frame_out.join("cine/result.toml")).unwrap();
    assert!(result.contains("tracked = false"), "{result}");

    for out in [&tracked_out, &frame_out] {
        let seg = out.join("cine.seg.dcm");
        let chk = run_py("seg_check.py", &[seg.to_str().unwrap()]);
        assert!(chk.status.success(), "{}", text(&chk));
        let v: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap();
        assert_eq!(v["frames"].as_u64(), Some(16), "8 frames x 2 segments");
    }
    let tracked = std::fs::read(tracked_out.join("cine/masks.u8")).unwrap();
    let per_frame = std::fs::read(frame_out.join("cine/masks.u8")).unwrap();
    assert_eq!(tracked.len(), per_frame.len());
    assert_ne!(
        tracked, per_frame,
        "memory mode gave the frame-by-frame masks"
    );
    // frame 0 attends to no memory on its first pass (the frame-by-frame mask, exactly); what
    // the tracked run gives for it is its revisit, after frame 6
    let frame = tracked.len() / 8;
    assert_ne!(
        tracked[..frame],
        per_frame[..frame],
        "frame 0 was not revisited"
    );
}

/// `proxyseg segment` on a volume's slices, given as separate files: tracked together along the
/// slice normal as the daemon tracks a series, whatever the order on the command line (each
/// slice's masks are the same when the files come in reverse), one output per file.
#[test]
fn proxyseg_segment_tracks_a_volume_along_the_slice_normal() {
    let models = models_for(
        &root().join("models/litemedsam-ppg"),
        "litemedsam-ppg",
        &["mr-prostate"],
    );
    let slices: Vec<std::path::PathBuf> = dcm_files(&demo("mr"))
        .into_iter()
        .map(std::path::PathBuf::from)
        .collect();
    assert_eq!(slices.len(), 8);
    let work = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (run, reverse) in [("forward", false), ("reverse", true)] {
        let mut inputs: Vec<&std::path::Path> = slices.iter().map(|p| p.as_path()).collect();
        if reverse {
            inputs.reverse();
        }
        let out = work.path().join(run);
        let stdout = segment_offline(models.path(), "mr-prostate", &inputs, &out);
        let volume = "tracked through the memory bank (sequence_mode auto (from config): a volume of 8 slices, in order along the slice normal)";
        assert_eq!(
            stdout.lines().filter(|l| l.ends_with(volume)).count(),
            8,
            "{stdout}"
        );
        let masks: Vec<Vec<u8>> = slices
            .iter()
            .map(|p| {
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                std::fs::read(out.join(stem).join("masks.u8")).unwrap()
            })
            .collect();
        runs.push(masks);
    }
    assert_eq!(
        runs[0], runs[1],
        "the slice order came from the command line"
    );
    assert!(
        runs[0].iter().any(|m| m.iter().any(|&v| v != 0)),
        "the volume came back empty"
    );
}
