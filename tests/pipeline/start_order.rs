//! Start order: the daemon answers DICOM before its engine has loaded (seconds on CPU, minutes
//! when TensorRT builds its engines on a first start), and a study stored meanwhile is
//! segmented and delivered once the engine is up.

use crate::harness::admin::{admin_cli, write_tokens, ADMIN_TOKEN};
use crate::harness::*;
use crate::pipeline_e2e::{dcm_files, demo, engine_tables, models_for, settle};

/// The daemon is released to the test at "accepting associations", before "engine ready";
/// the study is sent at once, acknowledged, held as a job, and delivered once the pipeline
/// runs. (How long the engine takes to load is not in the test's hands: the order of the two
/// log lines is what it checks, and the store usually lands inside the load.)
#[test]
fn dicom_is_served_before_the_engine_loads_and_early_studies_are_segmented() {
    let models = models_for(
        &root().join("models/phantom-tiny"),
        "phantom-tiny",
        &["us-intrapartum-ps-fh"],
    );
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let mut d = Daemon::start_accepting(Opts {
        extra: engine_tables(pacs_port, models.path(), "phantom-tiny"),
        ..Opts::default()
    });
    let out = storescu(d.port)
        .required_only()
        .calling("PACS")
        .files(dcm_files(&demo("us")))
        .run();
    assert!(
        out.status.success(),
        "storescu:\n{}\n{}",
        text(&out),
        d.log()
    );
    d.wait_started(0);
    let states = settle(&d, 1, 240);
    assert!(
        states.iter().all(|(_, s)| s == "delivered"),
        "{states:?}\n{}",
        d.log()
    );
    let log = d.log();
    let at = |line: &str| {
        log.find(line)
            .unwrap_or_else(|| panic!("no {line:?} in the log:\n{log}"))
    };
    assert!(
        at("accepting associations") < at("engine ready"),
        "DICOM was served only after the engine had loaded:\n{log}"
    );
    assert!(at("engine ready") < at(proxyseg::daemon::STARTED), "{log}");
    assert_eq!(
        dcm_files(pacs_dir.path()).len(),
        1,
        "one SEG for the study:\n{log}"
    );
}

/// SIGTERM while the engine loads stops the daemon gracefully without waiting for the load:
/// exit 0, the study acknowledged before the signal is in the index, the clean-shutdown
/// marker written (no recovery walk at the next start), and no "engine ready". Meanwhile
/// `/metrics` answers, with `proxyseg_engine_ready 0`, and so does the admin API: listing
/// works, and Evaluate says the engine is still loading (UNAVAILABLE) instead of hanging or
/// claiming there is no engine. The load is made long on purpose: six copies of the real
/// bundle, each loaded in full before the duplicates are refused (seconds each on these
/// cores); the test checks that it was still running when the signal came.
#[test]
fn a_shutdown_while_the_engine_loads_is_graceful_and_does_not_wait_for_it() {
    let models = tempfile::tempdir().unwrap();
    for i in 0..6 {
        std::os::unix::fs::symlink(
            root().join("models/litemedsam-ppg"),
            models.path().join(format!("copy-{i}")),
        )
        .unwrap();
    }
    let aux = tempfile::tempdir().unwrap();
    let tokens = write_tokens(aux.path(), 0o600);
    let token = aux.path().join("alice.token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_accepting(Opts {
        extra: format!(
            "[engine]\nmodels_dir = \"{}\"\nproviders = [\"cpu\"]\n[admin]\nlisten = \"{addr}\"\ntokens_file = \"{}\"\n",
            models.path().display(),
            tokens.display()
        ),
        ..Opts::default()
    });
    let out = d.store(&pydicom_files().join("CT_small.dcm"));
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    wait_port(d.metrics_port, "the metrics endpoint");
    let m = d.metrics();
    assert!(
        m.contains("proxyseg_engine_ready 0")
            && m.contains("proxyseg_cstore_total{result=\"success\"} 1"),
        "{m}"
    );
    d.wait_listening(&addr);
    let admin = |args: &[&str]| admin_cli(&addr, &token, args);
    let listed = admin(&["support-set", "list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let evaluated = admin(&["support-set", "evaluate", "fundus"]);
    let said = text(&evaluated);
    assert!(
        !evaluated.status.success() && said.contains("still loading"),
        "{said}"
    );
    assert!(
        !d.log().contains("engine ready"),
        "the engine loaded before the signal: this test needs a longer load\n{}",
        d.log()
    );
    let marker = d.data_dir().join(".clean-shutdown");
    assert!(!marker.exists());
    assert!(
        d.terminate(),
        "daemon must exit 0 after SIGTERM:\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains("shutdown requested while the engine loads")
            && log.contains("stopped")
            && !log.contains("engine ready"),
        "{log}"
    );
    assert!(marker.exists(), "no clean-shutdown marker:\n{log}");
    assert_eq!(d.instance_count(), 1);
}
