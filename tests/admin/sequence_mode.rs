//! Issue 15 item 4: a routing rule or a support set chooses per-frame or memory mode. Through
//! the real daemon: set on a set and a rule, read back, a rule update keeps its id and writes
//! its audit row, a dry run names the mode and where it comes from (rule > set > config), and
//! an unknown mode is INVALID_ARGUMENT naming the allowed values with nothing stored; the same
//! through the CLI.

use crate::harness::admin::*;
use crate::harness::*;
use proxyseg::admin::pb;
use tonic::Code;

const ALLOWED: &str = "auto, memory, per-frame, inherit";

/// INVALID_ARGUMENT naming the bad value and the allowed ones.
fn check<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(ALLOWED) && e.message().contains("sometimes"),
        "{}",
        e.message()
    );
}

fn dry_run_ct() -> pb::DryRunRequest {
    pb::DryRunRequest {
        input: Some(pb::dry_run_request::Input::Header(pb::StudyHeader {
            modality: "CT".into(),
            ..Default::default()
        })),
        calling_ae: "PACS".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_sets_carry_a_sequence_mode_through_the_api() {
    let a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let s = c
        .sets
        .create(pb::CreateSupportSetRequest {
            name: "cine".into(),
            objects: vec![object("heart")],
            sequence_mode: Some("memory".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.sequence_mode.as_deref(), Some("memory"));
    let plain = c
        .sets
        .create(pb::CreateSupportSetRequest {
            name: "plain".into(),
            objects: vec![object("x")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain.sequence_mode, None, "unset: inherit");
    let rule = c
        .rules
        .create(pb::CreateRuleRequest {
            rule: Some(pb::Rule {
                support_set: "cine".into(),
                modality: "CT".into(),
                sequence_mode: Some("per-frame".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rule.sequence_mode.as_deref(), Some("per-frame"));
    let listed = c
        .rules
        .list(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.rules[0].sequence_mode.as_deref(), Some("per-frame"));

    // rule > set > config, as the pipeline would record it.
    let d = c.rules.dry_run(dry_run_ct()).await.unwrap().into_inner();
    assert_eq!(
        (d.sequence_mode.as_str(), d.sequence_mode_from.as_str()),
        ("per-frame", "rule")
    );

    // An update back to inherit keeps the rule's id and is audited, old -> new.
    let updated = c
        .rules
        .update(pb::UpdateRuleRequest {
            rule: Some(pb::Rule {
                sequence_mode: Some("inherit".into()),
                ..rule.clone()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.id, updated.sequence_mode.as_deref()),
        (rule.id, None)
    );
    let detail: String =
        a.d.db()
            .query_row(
                "SELECT detail FROM audit WHERE action = 'rule.update' AND target = ?1",
                [format!("rule:{}", rule.id)],
                |r| r.get(0),
            )
            .unwrap();
    assert!(
        detail.contains("sequence_mode per-frame -> inherit"),
        "{detail}"
    );
    let d = c.rules.dry_run(dry_run_ct()).await.unwrap().into_inner();
    assert_eq!(
        (d.sequence_mode.as_str(), d.sequence_mode_from.as_str()),
        ("memory", "support set")
    );
    let s = c
        .sets
        .update(pb::UpdateSupportSetRequest {
            name: "cine".into(),
            sequence_mode: Some("inherit".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.version, s.sequence_mode.as_deref()), (2, None));
    let d = c.rules.dry_run(dry_run_ct()).await.unwrap().into_inner();
    assert_eq!(
        (d.sequence_mode.as_str(), d.sequence_mode_from.as_str()),
        ("auto", "config"),
        "the test daemon's [pipeline] sequence_mode is the default"
    );
    // A set update that leaves the mode out keeps it.
    c.sets
        .update(pb::UpdateSupportSetRequest {
            name: "cine".into(),
            sequence_mode: Some("per-frame".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let s = c
        .sets
        .update(pb::UpdateSupportSetRequest {
            name: "cine".into(),
            description: Some("echo".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.version, s.sequence_mode.as_deref()),
        (4, Some("per-frame"))
    );

    // Unknown modes: INVALID_ARGUMENT naming the allowed values, and nothing stored.
    let before = snapshot(&a);
    let rules_before = c
        .rules
        .list(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    check(
        c.rules
            .create(pb::CreateRuleRequest {
                rule: Some(pb::Rule {
                    support_set: "cine".into(),
                    sequence_mode: Some("sometimes".into()),
                    ..Default::default()
                }),
            })
            .await,
    );
    check(
        c.rules
            .update(pb::UpdateRuleRequest {
                rule: Some(pb::Rule {
                    sequence_mode: Some("sometimes".into()),
                    priority: 1,
                    ..updated.clone()
                }),
            })
            .await,
    );
    check(
        c.sets
            .create(pb::CreateSupportSetRequest {
                name: "other".into(),
                objects: vec![object("x")],
                sequence_mode: Some("sometimes".into()),
                ..Default::default()
            })
            .await,
    );
    check(
        c.sets
            .update(pb::UpdateSupportSetRequest {
                name: "cine".into(),
                description: Some("changed".into()),
                sequence_mode: Some("sometimes".into()),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(snapshot(&a), before, "a refused mode changed the database");
    let rules_after = c
        .rules
        .list(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules_after, rules_before);
}

fn cli(a: &Admin, args: &[&str]) -> std::process::Output {
    let tf = a.aux.path().join("alice.token");
    std::fs::write(&tf, format!("{ADMIN_TOKEN}\n")).unwrap();
    admin_cli(&a.addr, &tf, args)
}

#[test]
fn the_cli_sets_shows_and_explains_the_sequence_mode() {
    let a = start();
    let ok = |args: &[&str]| {
        let o = cli(&a, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&[
        "support-set",
        "create",
        "cine",
        "--object",
        "heart",
        "--sequence-mode",
        "per-frame",
    ]);
    let show = ok(&["support-set", "show", "cine"]);
    assert!(show.contains("sequence mode per-frame"), "{show}");
    let out = ok(&[
        "rule",
        "add",
        "--support-set",
        "cine",
        "--modality",
        "US",
        "--sequence-mode",
        "memory",
    ]);
    let id = out.trim().trim_start_matches("created rule ").to_string();
    let list = ok(&["rule", "list"]);
    assert!(
        list.contains("SEQUENCE") && list.lines().nth(2).unwrap().ends_with("memory"),
        "{list}"
    );
    let dry = ok(&["rule", "dry-run", "--modality", "US"]);
    assert!(dry.contains("sequence mode: memory (from rule)\n"), "{dry}");
    // The test daemon's default bundle is not in its models folder: the dry run says so.
    assert!(
        dry.contains(
            "note: series that sequence_mode memory would track go frame by frame: bundle "
        ),
        "{dry}"
    );
    // Back to inherit: same id, the set's mode now decides.
    let out = ok(&["rule", "update", &id, "--sequence-mode", "inherit"]);
    assert_eq!(out.trim(), format!("updated rule {id}"));
    let v: serde_json::Value = serde_json::from_str(&ok(&["--json", "rule", "list"])).unwrap();
    assert_eq!(v[0]["id"].to_string(), id);
    assert_eq!(v[0]["sequence_mode"], "inherit");
    assert_eq!(v[0]["modality"], "US", "fields not given are kept");
    let dry = ok(&["rule", "dry-run", "--modality", "US"]);
    assert!(
        dry.contains("sequence mode: per-frame (from support set)\n"),
        "{dry}"
    );
    assert!(!dry.contains("note:"), "per-frame needs no note: {dry}");
    ok(&[
        "support-set",
        "update",
        "cine",
        "--sequence-mode",
        "inherit",
    ]);
    let list = ok(&["support-set", "list"]);
    assert!(list.contains("inherit"), "{list}");
    let dry = ok(&["rule", "dry-run", "--modality", "US"]);
    assert!(dry.contains("sequence mode: auto (from config)\n"), "{dry}");

    // An unknown mode never reaches the server.
    let o = cli(&a, &["rule", "update", &id, "--sequence-mode", "sometimes"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(ALLOWED), "{err}");
    let v: serde_json::Value = serde_json::from_str(&ok(&["--json", "rule", "list"])).unwrap();
    assert_eq!(v[0]["sequence_mode"], "inherit");
}

/// DryRun says when the set's bundle would not do what its mode asks: phantom-tiny has no
/// memory graphs, litemedsam-ppg tracks `fetal head` (no note) but not `vessels` (its tiles
/// view applies, and its memory mode has none); `per-frame` needs no note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_says_when_the_bundle_would_not_track() {
    let a = start_full("", &|m| {
        for b in ["phantom-tiny", "litemedsam-ppg"] {
            std::os::unix::fs::symlink(root().join("models").join(b), m.join(b)).unwrap();
        }
    });
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "cine".into(),
            bundle: "phantom-tiny".into(),
            objects: vec![object("fetal head")],
            ..Default::default()
        })
        .await
        .unwrap();
    let rule = c
        .rules
        .create(pb::CreateRuleRequest {
            rule: Some(pb::Rule {
                support_set: "cine".into(),
                modality: "CT".into(),
                sequence_mode: Some("memory".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let note = |d: pb::DryRunResponse| (d.sequence_mode, d.sequence_note);
    let (mode, n) = note(c.rules.dry_run(dry_run_ct()).await.unwrap().into_inner());
    assert_eq!(mode, "memory");
    assert_eq!(
        n,
        "series that sequence_mode memory would track go frame by frame: the bundle cannot track frames (no memory graphs) (bundle phantom-tiny)"
    );

    let update = |bundle: &str, objects: Vec<pb::SupportObject>| pb::UpdateSupportSetRequest {
        name: "cine".into(),
        bundle: Some(bundle.into()),
        replace_objects: true,
        objects,
        ..Default::default()
    };
    c.sets
        .update(update("litemedsam-ppg", vec![object("fetal head")]))
        .await
        .unwrap();
    let (_, n) = note(c.rules.dry_run(dry_run_ct()).await.unwrap().into_inner());
    assert_eq!(n, "", "litemedsam-ppg tracks a fetal head");

    c.sets
        .update(update("litemedsam-ppg", vec![object("vessels")]))
        .await
        .unwrap();
    let (_, n) = note(c.rules.dry_run(dry_run_ct()).await.unwrap().into_inner());
    assert!(n.contains("resolution views apply"), "{n}");

    c.rules
        .update(pb::UpdateRuleRequest {
            rule: Some(pb::Rule {
                sequence_mode: Some("per-frame".into()),
                ..rule
            }),
        })
        .await
        .unwrap();
    let (mode, n) = note(c.rules.dry_run(dry_run_ct()).await.unwrap().into_inner());
    assert_eq!((mode.as_str(), n.as_str()), ("per-frame", ""));
}
