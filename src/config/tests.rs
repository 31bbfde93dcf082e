//! The configuration's tests: defaults, bounds and that every problem names its key.

use super::*;

#[test]
fn defaults_need_a_peer() {
    let c = Config::parse("").unwrap();
    let p = c.validate();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "dicom.require_known_peers");
}

#[test]
fn every_problem_names_its_key() {
    let c = Config::parse(
        r#"
        [dicom]
        ae_title = "WAY-TOO-LONG-AE-TITLE"
        listen = "nowhere"
        max_pdu = 10
        [[dicom.peers]]
        ae_title = "PACS"
        host = "127.0.0.1"
        port = 0
        [[dicom.peers]]
        ae_title = "PACS"
        host = ""
        port = 104
        [engine]
        providers = ["gpu"]
        "#,
    )
    .unwrap();
    let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "dicom.ae_title",
            "dicom.listen",
            "dicom.max_pdu",
            "dicom.peers[0].port",
            "dicom.peers[1].host",
            "dicom.peers[1].ae_title",
            "engine.providers[0]"
        ]
    );
}

#[test]
fn issue_16_limits_have_defaults_and_bounds() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.dicom.max_pending_connections, 16);
    assert_eq!(c.dicom.association_request_timeout_s, 5);
    let c =
        Config::parse("[dicom]\nmax_pending_connections = 0\nassociation_request_timeout_s = 0\n")
            .unwrap();
    let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
    assert!(
        keys.contains(&"dicom.max_pending_connections".to_string())
            && keys.contains(&"dicom.association_request_timeout_s".to_string()),
        "{keys:?}"
    );
    let c = Config::parse("[pipeline]\nmax_attempts = 0\nmax_decoded_mb = 0\n").unwrap();
    let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
    assert!(
        keys.contains(&"pipeline.max_attempts".to_string())
            && keys.contains(&"pipeline.max_decoded_mb".to_string()),
        "{keys:?}"
    );
    let c = Config::parse("").unwrap();
    assert_eq!(
        (
            c.pipeline.max_attempts,
            c.pipeline.max_decoded_mb,
            c.pipeline.memory_budget_mb()
        ),
        (3, 4096, 4096)
    );
    // Review L3: an identity needs client certificates; no listener at all is refused.
    let c = Config::parse(
        "[dicom]\nlisten = \"\"\n[[dicom.peers]]\nae_title = \"A\"\nhost = \"127.0.0.1\"\nport = 1\ntls_identity = \"pacs.example\"\n",
    )
    .unwrap();
    let p: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
    assert!(
        p.contains(&"dicom.listen".to_string())
            && p.contains(&"dicom.peers[0].tls_identity".to_string()),
        "{p:?}"
    );
    let c = Config::parse(
        "[[dicom.peers]]\nae_title = \"A\"\nhost = \"127.0.0.1\"\nport = 1\ntls_identity = \"not a name!\"\n",
    )
    .unwrap();
    assert!(c
        .validate()
        .iter()
        .any(|p| p.key == "dicom.peers[0].tls_identity"
            && p.message.contains("not a DNS name or IP address")));
    // The shared budget follows max_decoded_mb unless set, and may not be smaller.
    let c = Config::parse("[pipeline]\nmax_decoded_mb = 8192\n").unwrap();
    assert_eq!(c.pipeline.memory_budget_mb(), 8192);
    assert!(
        !c.validate().iter().any(|p| p.key.starts_with("pipeline.")),
        "{:?}",
        c.validate()
    );
    let c = Config::parse("[pipeline]\nmax_decoded_mb = 2048\nmemory_budget_mb = 1024\n").unwrap();
    let p = c.validate();
    assert!(
        p.iter()
            .any(|p| p.key == "pipeline.memory_budget_mb"
                && p.message.contains("max_decoded_mb (2048)")),
        "{p:?}"
    );
    let c = Config::parse("[dicom]\nassociation_request_timeout_s = 121\n").unwrap();
    assert!(c
        .validate()
        .iter()
        .any(|p| p.key == "dicom.association_request_timeout_s"));
}

#[test]
fn retention_has_defaults_and_bounds() {
    let c = Config::parse("").unwrap();
    let r = &c.retention;
    assert!(r.enabled);
    assert_eq!(
        (
            r.keep_delivered_hours,
            r.keep_failed_hours,
            r.sweep_interval_s
        ),
        (72.0, 720.0, 600)
    );
    let keys = |toml: &str| -> Vec<String> {
        Config::parse(toml)
            .unwrap()
            .validate()
            .into_iter()
            .map(|p| p.key)
            .filter(|k| k.starts_with("retention"))
            .collect()
    };
    // Zero is allowed: purge as soon as the study is finished.
    assert!(keys("[retention]\nkeep_delivered_hours = 0\nkeep_failed_hours = 0\n").is_empty());
    assert_eq!(
        keys("[retention]\nkeep_delivered_hours = -1\nsweep_interval_s = 0\n"),
        [
            "retention.keep_delivered_hours",
            "retention.sweep_interval_s"
        ]
    );
    assert_eq!(
        keys("[retention]\nkeep_delivered_hours = 100\nkeep_failed_hours = 10\n"),
        ["retention.keep_failed_hours"]
    );
    assert_eq!(
        keys("[retention]\nkeep_delivered_hours = nan\nkeep_failed_hours = inf\n"),
        [
            "retention.keep_delivered_hours",
            "retention.keep_failed_hours"
        ]
    );
    let e = Config::parse("[retention]\nkeep_hours = 1\n").unwrap_err();
    assert!(e.to_string().contains("keep_hours"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let e = Config::parse("[dicom]\naetitle = \"X\"\n").unwrap_err();
    assert!(e.to_string().contains("aetitle"), "{e}");
}

#[test]
fn admin_section_defaults_and_problems() {
    let c = Config::parse("[admin]\n").unwrap();
    let a = c.admin.as_ref().unwrap();
    assert_eq!(a.listen, "127.0.0.1:50051");
    assert_eq!(a.body_part_synonyms, default_synonyms());
    let c = Config::parse(
        r#"
        [admin]
        listen = "everywhere"
        tokens_file = "/nonexistent/tokens"
        max_upload_mb = 0
        [admin.body_part_synonyms]
        EYE = ["RETINA"]
        HEAD = ["retina"]
        "#,
    )
    .unwrap();
    let keys: Vec<String> = c
        .validate()
        .into_iter()
        .map(|p| p.key)
        .filter(|k| k.starts_with("admin"))
        .collect();
    assert_eq!(
        keys,
        [
            "admin.listen",
            "admin.tokens_file",
            "admin.max_upload_mb",
            "admin.body_part_synonyms.HEAD"
        ]
    );
}

#[test]
fn default_bundle_is_a_folder_under_models_dir() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.engine.default_bundle, "litemedsam-ppg");
    let models = tempfile::tempdir().unwrap();
    let cfg = |name: &str| {
        Config::parse(&format!(
            "[engine]\nmodels_dir = {:?}\ndefault_bundle = {name:?}\n",
            models.path().display().to_string()
        ))
        .unwrap()
    };
    // Missing folder: not a load problem (the daemon starts and logs it), a check problem.
    let c = cfg("my-bundle");
    assert!(c
        .validate()
        .iter()
        .all(|p| p.key != "engine.default_bundle"));
    let p = c.deployment_problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "engine.default_bundle");
    assert!(
        p[0].message
            .contains("\"my-bundle\" is not a bundle under engine.models_dir"),
        "{}",
        p[0]
    );
    // A folder without a manifest is no bundle either; with one, all is well.
    std::fs::create_dir_all(models.path().join("my-bundle")).unwrap();
    assert_eq!(c.deployment_problems().len(), 1);
    std::fs::write(models.path().join("my-bundle/manifest.toml"), "").unwrap();
    assert!(c.deployment_problems().is_empty());
    // Names that are not plain folder names are load problems.
    for bad in ["", "../up", "a/b", " x"] {
        let keys: Vec<String> = cfg(bad).validate().into_iter().map(|p| p.key).collect();
        assert!(
            keys.contains(&"engine.default_bundle".to_string()),
            "{bad:?}: {keys:?}"
        );
    }
}

#[test]
fn peer_lookup_ignores_padding() {
    let c =
        Config::parse("[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n")
            .unwrap();
    assert!(c.peer("PACS  ").is_some());
    assert!(c.peer("OTHER").is_none());
}

#[test]
fn sequence_mode_and_memory_frames_parse_and_are_checked() {
    let c =
        Config::parse("[pipeline]\nsequence_mode = \"per-frame\"\nmemory_frames = 3\n").unwrap();
    assert_eq!(c.pipeline.sequence_mode, SequenceMode::PerFrame);
    assert_eq!(c.pipeline.memory_frames, Some(3));
    assert!(Config::parse("[pipeline]\nsequence_mode = \"sometimes\"\n").is_err());
    let c = Config::parse("[pipeline]\nmemory_frames = 0\n").unwrap();
    assert!(c
        .validate()
        .iter()
        .any(|p| p.key == "pipeline.memory_frames"));
}

#[test]
fn review_agreement_defaults_to_0_8_and_must_be_a_dice() {
    assert_eq!(Config::parse("").unwrap().pipeline.review_agreement, 0.8);
    let off = Config::parse("[pipeline]\nreview_agreement = 0\n").unwrap();
    assert_eq!(off.pipeline.review_agreement, 0.0);
    assert!(
        !off.validate()
            .iter()
            .any(|p| p.key == "pipeline.review_agreement"),
        "0 turns the flags off"
    );
    for bad in ["1.5", "-0.1", "nan"] {
        let c = Config::parse(&format!("[pipeline]\nreview_agreement = {bad}\n")).unwrap();
        let problems = c.validate();
        let p = problems
            .iter()
            .find(|p| p.key == "pipeline.review_agreement")
            .unwrap_or_else(|| panic!("{bad} accepted: {problems:?}"));
        assert!(p.to_string().contains("between 0 and 1"), "{p}");
    }
}

#[test]
fn engine_spinning_defaults_off_and_parses() {
    assert!(!Config::parse("").unwrap().engine.spinning);
    assert!(
        Config::parse("[engine]\nspinning = true\n")
            .unwrap()
            .engine
            .spinning
    );
    assert!(Config::parse("[engine]\nspinning = \"yes\"\n").is_err());
}

#[test]
fn offline_commands_check_only_the_tables_they_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxyseg.toml");
    // no DICOM peer and an admin tokens file not written yet: the daemon refuses, `proxyseg
    // segment` goes on
    let daemon_only = format!(
        "[admin]\nlisten = \"127.0.0.1:50051\"\ntokens_file = \"{}\"\n",
        dir.path().join("missing-tokens").display()
    );
    std::fs::write(&path, &daemon_only).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("admin.tokens_file") && e.contains("dicom.require_known_peers"),
        "{e}"
    );
    assert!(Config::load_offline(&path).is_ok());
    // a problem in a table it reads still stops it
    std::fs::write(
        &path,
        format!("{daemon_only}\n[pipeline]\nreview_agreement = 2\n"),
    )
    .unwrap();
    let e = Config::load_offline(&path).unwrap_err().to_string();
    assert!(e.contains("pipeline.review_agreement"), "{e}");
    assert!(!e.contains("admin.tokens_file"), "{e}");
    // and a file that does not parse
    std::fs::write(&path, "[engine\n").unwrap();
    assert!(Config::load_offline(&path).is_err());
}
