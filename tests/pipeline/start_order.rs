//! Start order: the daemon answers DICOM before its engine has loaded (seconds on CPU, minutes
//! when TensorRT builds its engines on a first start), and a study stored meanwhile is
//! segmented and delivered once the engine is up.

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
