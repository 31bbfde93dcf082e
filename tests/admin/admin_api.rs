//! The admin gRPC API against the real daemon binary: a full curation round through the tonic
//! client, the same through Python grpcio stubs generated from the proto, reflection (grpcurl)
//! and health, the auth codes, every bad-input case leaving the database unchanged, the CLI, and
//! the daemon refusing an unsafe tokens file.

use crate::harness::admin::*;
use crate::harness::*;
use proxyseg::admin::cli::Bearer;
use proxyseg::admin::masks::mask_png;
use proxyseg::admin::pb;
use proxyseg::admin::pb::support_sets_client::SupportSetsClient;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_curation_round_through_tonic() {
    let a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;

    // Health answers without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&a.addr).await);
    for service in [
        "",
        "proxyseg.admin.v1.SupportSets",
        "proxyseg.admin.v1.Rules",
    ] {
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            h.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    // Create a set with two objects.
    let s = c
        .sets
        .create(pb::CreateSupportSetRequest {
            name: "ct-demo".into(),
            description: "demo".into(),
            bundle: "tiny-test".into(),
            modality: "ct".into(),
            body_part: "head".into(),
            objects: vec![object("brain"), object("skull")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.version, s.objects.len(), s.modality.as_str()),
        (1, 2, "CT")
    );
    assert_eq!(s.objects[1].index, 2);

    // Two pairs from real pydicom images with generated PNG masks.
    let ct = pydicom("CT_small.dcm");
    let s = add_pair(
        &mut c.sets,
        "ct-demo",
        &ct,
        &pngs(&[square(128, 128, 30, 30, 40), square(128, 128, 10, 10, 5)]),
    )
    .await
    .unwrap();
    assert_eq!((s.version, s.pairs.len()), (2, 1));
    let p1 = &s.pairs[0];
    assert_eq!((p1.number, p1.rows, p1.columns), (1, 128, 128));
    assert_eq!(p1.mask_pixels, [1600, 25]);
    assert_eq!(p1.mask_source, "png");
    assert_eq!(p1.sop_class_uid, "1.2.840.10008.5.1.4.1.1.2");
    let mr = pydicom("MR_small.dcm");
    let s = add_pair(
        &mut c.sets,
        "ct-demo",
        &mr,
        &pngs(&[square(64, 64, 0, 0, 20), square(64, 64, 40, 40, 10)]),
    )
    .await
    .unwrap();
    assert_eq!((s.version, s.pairs.len()), (3, 2));
    // The same image twice is refused.
    let dup = add_pair(
        &mut c.sets,
        "ct-demo",
        &mr,
        &pngs(&[square(64, 64, 0, 0, 20), square(64, 64, 40, 40, 10)]),
    )
    .await
    .unwrap_err();
    assert_eq!(dup.code(), Code::InvalidArgument, "{dup:?}");

    // The stored files are the upload, byte for byte.
    let db = a.d.db();
    let dir: String = db
        .query_row("SELECT dir FROM support_pairs WHERE number = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        std::fs::read(a.d.data_dir().join(&dir).join("image.dcm")).unwrap(),
        ct
    );

    // A routing rule; DryRun with the CT file and with a header.
    let rule = c
        .rules
        .create(pb::CreateRuleRequest {
            rule: Some(pb::Rule {
                priority: 10,
                modality: "ct".into(),
                support_set: "ct-demo".into(),
                destination_ae: "PACS".into(),
                stable_age_s: Some(5.0),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let eye = c
        .rules
        .create(pb::CreateRuleRequest {
            rule: Some(pb::Rule {
                priority: 20,
                body_part: "eye".into(),
                support_set: "ct-demo".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let listed = c
        .rules
        .list(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.rules.iter().map(|r| r.id).collect::<Vec<_>>(),
        [rule.id, eye.id]
    );
    // Update replaces the rule: moving the eye rule first changes the routing order, and back.
    for (priority, order) in [(1, [eye.id, rule.id]), (20, [rule.id, eye.id])] {
        let up = c
            .rules
            .update(pb::UpdateRuleRequest {
                rule: Some(pb::Rule {
                    priority,
                    ..eye.clone()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((up.priority, up.body_part.as_str()), (priority, "EYE"));
        let listed = c
            .rules
            .list(pb::ListRulesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.rules.iter().map(|r| r.id).collect::<Vec<_>>(), order);
    }
    let d = c
        .rules
        .dry_run(pb::DryRunRequest {
            input: Some(pb::dry_run_request::Input::Dicom(ct.clone())),
            calling_ae: "STORESCU".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.matched, "{d:?}");
    assert_eq!(
        (
            d.rule_id,
            d.support_set.as_str(),
            d.support_set_version,
            d.destination_ae.as_str()
        ),
        (rule.id, "ct-demo", 3, "PACS")
    );
    assert_eq!(d.stable_age_s, Some(5.0));
    assert_eq!(d.header.unwrap().modality, "CT");
    let d = c
        .rules
        .dry_run(pb::DryRunRequest {
            input: Some(pb::dry_run_request::Input::Header(pb::StudyHeader {
                modality: "OP".into(),
                body_part: "Retina".into(),
                calling_ae: "SENDER".into(),
                ..Default::default()
            })),
            calling_ae: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.rule_id, d.destination_ae.as_str()),
        (eye.id, "SENDER"),
        "RETINA is a synonym of EYE; no destination = back to the sender: {d:?}"
    );
    let d = c
        .rules
        .dry_run(pb::DryRunRequest {
            input: Some(pb::dry_run_request::Input::Dicom(mr.clone())),
            calling_ae: "STORESCU".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.matched);
    assert!(
        d.reason.contains("modality \"MR\" is not \"CT\""),
        "{}",
        d.reason
    );

    // Export, then import the folder under another name: same content.
    let out = a.aux.path().join("export");
    let e = c
        .sets
        .export(pb::ExportRequest {
            name: "ct-demo".into(),
            version: 0,
            path: out.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.version, 3);
    assert!(
        e.files.contains(&"supportset.toml".to_string()),
        "{:?}",
        e.files
    );
    assert!(out.join("pairs/02/mask-2.png").is_file());
    let toml_text = std::fs::read_to_string(out.join("supportset.toml")).unwrap();
    assert!(toml_text.contains("12738006"), "{toml_text}");
    let imported = c
        .sets
        .import(pb::ImportRequest {
            path: out.display().to_string(),
            name: "ct-copy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let original = c
        .sets
        .get(pb::GetSupportSetRequest {
            name: "ct-demo".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let key = |s: &pb::SupportSet| {
        s.pairs
            .iter()
            .map(|p| (p.image_sha256.clone(), p.mask_pixels.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&imported), key(&original));
    assert_eq!(imported.objects, original.objects);
    // Exporting into a non-empty folder is refused.
    let again = c
        .sets
        .export(pb::ExportRequest {
            name: "ct-demo".into(),
            version: 0,
            path: out.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Removing a pair makes a new version; the old one keeps both pairs.
    let s = c
        .sets
        .remove_pair(pb::RemovePairRequest {
            support_set: "ct-demo".into(),
            pair_number: 1,
            expected_version: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.version, s.pairs.len()), (4, 1));
    let v3 = c
        .sets
        .get(pb::GetSupportSetRequest {
            name: "ct-demo".into(),
            version: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v3.pairs.len(), 2);
    // A job that started on version 3 still gets all of it, files included.
    let v3_out = a.aux.path().join("export-v3");
    let e = c
        .sets
        .export(pb::ExportRequest {
            name: "ct-demo".into(),
            version: 3,
            path: v3_out.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.version, 3);
    assert_eq!(
        std::fs::read(v3_out.join("pairs/01/image.dcm")).unwrap(),
        ct
    );
    // Relabelling objects (same count) is a new version; earlier versions keep their labels.
    let s = c
        .sets
        .update(pb::UpdateSupportSetRequest {
            name: "ct-demo".into(),
            replace_objects: true,
            objects: vec![object("cerebrum"), object("skull")],
            expected_version: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.version, s.objects[0].label.as_str()), (5, "cerebrum"));
    assert_eq!(v3.objects[0].label, "brain");
    let stale = c
        .sets
        .update(pb::UpdateSupportSetRequest {
            name: "ct-demo".into(),
            description: Some("x".into()),
            expected_version: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let listed = c
        .sets
        .list(pb::ListSupportSetsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .support_sets
            .iter()
            .map(|s| (s.name.as_str(), s.pair_count))
            .collect::<Vec<_>>(),
        [("ct-copy", 2), ("ct-demo", 1)]
    );

    // Models: the bundle manifest with its evaluation table.
    let m = c
        .models
        .list(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.bundles.len(), 1);
    assert_eq!(m.bundles[0].summary["family"], "sam");
    assert_eq!(m.bundles[0].evaluation[0].metrics[0].value, 0.8125);

    // A real job: storescu sends CT_small, the study completes, Watch sees it.
    let mut watch = c
        .jobs
        .watch(pb::WatchJobsRequest {
            include_history: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ct_path = pydicom_files().join("CT_small.dcm");
    let o = storescu(a.d.port).file(&ct_path).run();
    assert!(o.status.success(), "{}", text(&o));
    let ev = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("no job event within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(ev.state, "complete");
    // The pipeline routes it with the store's rule to ct-demo, whose bundle (tiny-test) is only
    // a manifest here, so the job fails with that reason: a finished job either way.
    async fn finished(c: &mut Clients, id: i64) -> pb::Job {
        let mut job = pb::Job::default();
        for _ in 0..100 {
            job = c
                .jobs
                .get(pb::GetJobRequest { id })
                .await
                .unwrap()
                .into_inner();
            if ["unmatched", "failed", "delivered"].contains(&job.state.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        job
    }
    let job = finished(&mut c, ev.job_id).await;
    assert_eq!(job.support_set, "ct-demo", "{job:?}");
    assert_eq!(job.rule_id, rule.id);
    assert!(job.events.len() >= 2, "{job:?}");
    assert_eq!(job.events[0].state, "complete");
    assert_eq!(job.study_uid, ev.study_uid);
    let jobs = c
        .jobs
        .list(pb::ListJobsRequest {
            study_uid: ev.study_uid.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jobs.jobs.len(), 1);
    let listed = c
        .jobs
        .list(pb::ListJobsRequest {
            states: vec![job.state.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    if job.state != "delivered" {
        // Retry puts a finished-but-unsuccessful job back to `complete` for the pipeline.
        let r = c
            .jobs
            .retry(pb::RetryJobRequest { id: ev.job_id })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.events.iter().any(|e| e.detail == "retried by alice"),
            "{r:?}"
        );
        finished(&mut c, ev.job_id).await;
    }
    let bad_state = c
        .jobs
        .list(pb::ListJobsRequest {
            states: vec!["nonsense".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_state.code(), Code::InvalidArgument);
    let missing = c
        .jobs
        .get(pb::GetJobRequest { id: 9999 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A set used by rules cannot be deleted; after the rules go, it can, with its files.
    let used = c
        .sets
        .delete(pb::DeleteSupportSetRequest {
            name: "ct-demo".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(used.code(), Code::FailedPrecondition);
    assert!(used.message().contains("rule"), "{}", used.message());
    for id in [rule.id, eye.id] {
        c.rules.delete(pb::DeleteRuleRequest { id }).await.unwrap();
    }
    c.sets
        .delete(pb::DeleteSupportSetRequest {
            name: "ct-demo".into(),
        })
        .await
        .unwrap();
    assert!(!a.d.data_dir().join("support/ct-demo").exists());
    let gone = c
        .sets
        .get(pb::GetSupportSetRequest {
            name: "ct-demo".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Every change has its audit row with the token's name, and so has every read of
    // support-set data (Get, DryRun, Preview: review L9).
    let audit: Vec<(String, String)> =
        a.d.db()
            .prepare("SELECT token_name, action FROM audit ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let actions: Vec<&str> = audit.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "support_set.create",
            "support_set.add_pair",
            "support_set.add_pair",
            "rule.create",
            "rule.create",
            "rule.update",
            "rule.update",
            "rule.dry_run",
            "rule.dry_run",
            "rule.dry_run",
            "support_set.export",
            "support_set.create",
            "support_set.add_pair",
            "support_set.add_pair",
            "support_set.import",
            "support_set.get",
            "support_set.export.failed",
            "support_set.remove_pair",
            "support_set.get",
            "support_set.export",
            "support_set.update",
            "job.retry",
            "rule.delete",
            "rule.delete",
            "support_set.delete",
        ]
    );
    assert!(audit.iter().all(|(who, _)| who == "alice"));
    // The same through the Audit service (read-only token), newest first, with a filter.
    let ch = channel(&a.addr).await;
    let mut api = proxyseg::admin::pb::audit_client::AuditClient::with_interceptor(
        ch,
        Bearer::new(VIEWER_TOKEN).unwrap(),
    );
    let l = api
        .list(pb::ListAuditRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut listed: Vec<&str> = l.entries.iter().map(|e| e.action.as_str()).collect();
    listed.reverse();
    assert_eq!(listed, actions);
    let l = api
        .list(pb::ListAuditRequest {
            target: "support_set:ct-copy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        l.entries.len(),
        4,
        "create, 2 pairs, import: {:?}",
        l.entries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_give_the_right_codes() {
    let a = start();
    let ch = channel(&a.addr).await;
    // No token at all.
    let mut bare = SupportSetsClient::new(ch.clone());
    let e = bare.list(pb::ListSupportSetsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // A wrong token, including one that differs in the last character only.
    for t in [
        "wrong-token-0123456789",
        &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1],
        "x",
    ] {
        let mut c = clients(&a.addr, t).await;
        let e = c
            .sets
            .list(pb::ListSupportSetsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{t}: {e:?}");
        let e = c.rules.list(pb::ListRulesRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    // The read-only token reads, dry-runs and lists models, and may change nothing.
    let mut v = clients(&a.addr, VIEWER_TOKEN).await;
    v.sets.list(pb::ListSupportSetsRequest {}).await.unwrap();
    v.rules.list(pb::ListRulesRequest {}).await.unwrap();
    v.jobs.list(pb::ListJobsRequest::default()).await.unwrap();
    v.models.list(pb::ListModelsRequest {}).await.unwrap();
    v.rules
        .dry_run(pb::DryRunRequest {
            input: Some(pb::dry_run_request::Input::Header(
                pb::StudyHeader::default(),
            )),
            calling_ae: String::new(),
        })
        .await
        .unwrap();
    let before = snapshot(&a);
    let denied = [
        v.sets
            .create(pb::CreateSupportSetRequest {
                name: "x".into(),
                objects: vec![object("a")],
                ..Default::default()
            })
            .await
            .unwrap_err(),
        add_pair(&mut v.sets, "x", &pydicom("CT_small.dcm"), &[])
            .await
            .unwrap_err(),
        v.sets
            .delete(pb::DeleteSupportSetRequest { name: "x".into() })
            .await
            .unwrap_err(),
        v.rules
            .create(pb::CreateRuleRequest {
                rule: Some(pb::Rule::default()),
            })
            .await
            .unwrap_err(),
        v.rules
            .delete(pb::DeleteRuleRequest { id: 1 })
            .await
            .unwrap_err(),
        v.jobs
            .retry(pb::RetryJobRequest { id: 1 })
            .await
            .unwrap_err(),
        v.sets
            .import(pb::ImportRequest {
                path: "/tmp".into(),
                name: String::new(),
            })
            .await
            .unwrap_err(),
    ];
    for e in denied {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("read-only"), "{}", e.message());
    }
    assert_eq!(snapshot(&a), before);
    // The admin token may write.
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "x".into(),
            objects: vec![object("a")],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!a.d.log().contains(ADMIN_TOKEN), "a token was logged");

    // Revoking a token takes effect without a restart.
    let tokens = a.aux.path().join("admin-tokens");
    std::fs::write(&tokens, format!("alice admin {ADMIN_TOKEN}\n")).unwrap();
    let revoked = async {
        loop {
            let mut v = clients(&a.addr, VIEWER_TOKEN).await;
            match v.sets.list(pb::ListSupportSetsRequest {}).await {
                Err(e) if e.code() == Code::Unauthenticated => return,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), revoked)
        .await
        .expect("the revoked token still works after 10 s");
    // A malformed edit is refused and the tokens in force stay (a typo must not lock admins out).
    std::fs::write(&tokens, format!("alice admin {ADMIN_TOKEN}\nbroken line\n")).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    c.sets.list(pb::ListSupportSetsRequest {}).await.unwrap();
    assert!(a.d.log().contains("was refused"), "{}", a.d.log());
    // An unsafe replacement (readable by others: its tokens may have leaked) revokes every
    // token, the new ones included (review L6: fail closed).
    std::fs::write(&tokens, format!("mallory admin {VIEWER_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for token in [ADMIN_TOKEN, VIEWER_TOKEN] {
        let mut m = clients(&a.addr, token).await;
        let e = m
            .sets
            .list(pb::ListSupportSetsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert!(
        a.d.log().contains("every admin token is revoked"),
        "{}",
        a.d.log()
    );
    // Made safe again, the file is in force again.
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut m = clients(&a.addr, VIEWER_TOKEN).await;
    m.sets.list(pb::ListSupportSetsRequest {}).await.unwrap();
}

/// Review M5 / issue 16 item 6: wrong tokens are logged with the peer address (never the
/// token) and rate-limited per address: after `admin.max_failed_auth` failures within
/// `admin.failed_auth_lockout_s`, every call from that address, a valid token included, gets
/// RESOURCE_EXHAUSTED until the lockout ends. A call without any token is not a guess and is
/// not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_logged_and_rate_limited() {
    let a = start_admin_keys(
        "max_failed_auth = 3\nfailed_auth_lockout_s = 3\n",
        "",
        &|_| {},
    );
    let ch = channel(&a.addr).await;
    let mut bare = SupportSetsClient::new(ch.clone());
    for _ in 0..5 {
        let e = bare.list(pb::ListSupportSetsRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let wrong = "wrong-token-0123456789-guess";
    for _ in 0..3 {
        let mut c = clients(&a.addr, wrong).await;
        let e = c
            .sets
            .list(pb::ListSupportSetsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    // Locked out: even the admin token is refused, without saying whether it is valid.
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let e = c
        .sets
        .list(pb::ListSupportSetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("too many failed authentications"),
        "{e:?}"
    );
    let log = a.d.log();
    assert_eq!(
        log.matches("admin authentication failed").count(),
        3,
        "one line per wrong token:\n{log}"
    );
    assert!(
        log.contains("address locked out") && log.contains("peer=127.0.0.1"),
        "{log}"
    );
    assert!(
        !log.contains(wrong) && !log.contains(ADMIN_TOKEN),
        "a token was logged"
    );
    // After the lockout the valid token works again.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    c.sets.list(pb::ListSupportSetsRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "one".into(),
            objects: vec![object("brain")],
            ..Default::default()
        })
        .await
        .unwrap();
    let ct = pydicom("CT_small.dcm");
    let good = mask_png(&square(128, 128, 10, 10, 30));
    add_pair(&mut c.sets, "one", &ct, std::slice::from_ref(&good))
        .await
        .unwrap();
    let before = snapshot(&a);
    let audit_before = before.0[5];

    let mut nonbinary = vec![0u8; 128 * 128];
    nonbinary[5] = 100;
    nonbinary[6] = 200;
    let mut garbage_png = good.clone();
    garbage_png.truncate(40);
    let mr = pydicom("MR_small.dcm");
    // (what, image, PNG masks, expected message part)
    type Case<'a> = (&'a str, Vec<u8>, Vec<Vec<u8>>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "mask size",
            mr.clone(),
            vec![good.clone()],
            "does not match the image's 64x64",
        ),
        (
            "non-binary mask",
            mr.clone(),
            vec![grey_png(64, 64, &{
                let mut m = vec![0u8; 64 * 64];
                m[1] = 1;
                m[2] = 2;
                m
            })],
            "not binary",
        ),
        (
            "non-binary 128",
            ct.clone(),
            vec![grey_png(128, 128, &nonbinary)],
            "not binary",
        ),
        (
            "empty mask",
            mr.clone(),
            vec![grey_png(64, 64, &[0u8; 64 * 64])],
            "mask 1 (brain): empty",
        ),
        (
            "full mask",
            mr.clone(),
            vec![grey_png(64, 64, &[1u8; 64 * 64])],
            "mask 1 (brain): every pixel is foreground",
        ),
        (
            "unknown SOP class",
            pydicom("rtplan.dcm"),
            vec![good.clone()],
            "SOP class \"1.2.840.10008.5.1.4.1.1.481.5\"",
        ),
        (
            "broken DICOM",
            b"this is not DICOM at all".to_vec(),
            vec![good.clone()],
            "not a readable DICOM file",
        ),
        (
            "truncated pixel data",
            pydicom("MR_truncated.dcm"),
            vec![mask_png(&square(64, 64, 0, 0, 8))],
            "image:",
        ),
        (
            "broken PNG",
            mr.clone(),
            vec![garbage_png],
            "mask 1: not a readable PNG",
        ),
        (
            "too many masks",
            mr.clone(),
            vec![
                mask_png(&square(64, 64, 0, 0, 8)),
                mask_png(&square(64, 64, 0, 0, 8)),
            ],
            "object index 2 is outside 1..=1",
        ),
        ("no masks", mr.clone(), vec![], "masks: 0 given"),
        (
            "too large",
            vec![0u8; 3 * 1024 * 1024],
            vec![good.clone()],
            "admin.max_upload_mb = 2",
        ),
    ];
    for (what, image, masks, want) in cases {
        let e = add_pair(&mut c.sets, "one", &image, &masks)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains(want),
            "{what}: {:?} lacks {want:?}",
            e.message()
        );
        assert_eq!(snapshot(&a), before, "{what} changed the database or files");
    }
    // A SEG upload that is not a SEG.
    let msgs = proxyseg::admin::cli::add_pair_messages("one", 0, &mr, &[], Some(&ct));
    let e = c.sets.add_pair(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("not Segmentation Storage"),
        "{}",
        e.message()
    );
    // A stream that does not start with its header.
    let e = c
        .sets
        .add_pair(tokio_stream::iter(vec![pb::AddPairRequest {
            part: Some(pb::add_pair_request::Part::ImageChunk(mr.clone())),
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Bad sets and rules.
    for (name, objects, want) in [
        ("../escape", vec![object("a")], "name"),
        ("dup", vec![object("a"), object("A")], "used twice"),
        ("none", vec![], "at least one object"),
        (
            "colour",
            vec![pb::SupportObject {
                color: vec![1, 2],
                ..object("a")
            }],
            "color",
        ),
    ] {
        let e = c
            .sets
            .create(pb::CreateSupportSetRequest {
                name: name.into(),
                objects,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(want), "{name}: {}", e.message());
    }
    let exists = c
        .sets
        .create(pb::CreateSupportSetRequest {
            name: "one".into(),
            objects: vec![object("a")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Code::AlreadyExists);
    for (rule, want) in [
        (
            pb::Rule {
                support_set: "one".into(),
                series_description_regex: "(unclosed".into(),
                ..Default::default()
            },
            "series_description_regex",
        ),
        (
            pb::Rule {
                support_set: "nope".into(),
                ..Default::default()
            },
            "does not exist",
        ),
        (
            pb::Rule {
                support_set: "one".into(),
                destination_ae: "A-VERY-LONG-AE-TITLE".into(),
                ..Default::default()
            },
            "destination_ae",
        ),
    ] {
        let e = c
            .rules
            .create(pb::CreateRuleRequest { rule: Some(rule) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{}", e.message());
    }
    let e = c
        .rules
        .dry_run(pb::DryRunRequest {
            input: Some(pb::dry_run_request::Input::Dicom(b"garbage".to_vec())),
            calling_ae: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Import of a folder with a bad pair writes nothing.
    let bad = a.aux.path().join("bad-folder");
    std::fs::create_dir_all(bad.join("p")).unwrap();
    std::fs::write(bad.join("p/image.dcm"), &ct).unwrap();
    std::fs::write(bad.join("p/ok.png"), &good).unwrap();
    std::fs::write(
        bad.join("p/empty.png"),
        grey_png(128, 128, &[0u8; 128 * 128]),
    )
    .unwrap();
    std::fs::write(
        bad.join("supportset.toml"),
        "name = \"bad\"\n[[objects]]\nlabel = \"a\"\n\
         [[pairs]]\nimage = \"p/image.dcm\"\nmasks = [\"p/ok.png\"]\n\
         [[pairs]]\nimage = \"p/image.dcm\"\nmasks = [\"p/empty.png\"]\n",
    )
    .unwrap();
    let e = c
        .sets
        .import(pb::ImportRequest {
            path: bad.display().to_string(),
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("pair 2"), "{}", e.message());
    std::fs::write(
        bad.join("supportset.toml"),
        "name = \"bad\"\n[[objects]]\nlabel = \"a\"\n[[pairs]]\nimage = \"../escape.dcm\"\nmasks = [\"p/ok.png\"]\n",
    )
    .unwrap();
    let e = c
        .sets
        .import(pb::ImportRequest {
            path: bad.display().to_string(),
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("inside the support-set folder"),
        "{}",
        e.message()
    );

    // Nothing changed but the audit log, where the two refused Imports are recorded (they
    // read server files: every attempt is audited, issue 16 item 6).
    let mut after = snapshot(&a);
    assert_eq!(
        after.0[5],
        audit_before + 2,
        "the refused Imports are audited"
    );
    let failed: i64 =
        a.d.db()
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE action = 'support_set.import.failed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
    assert_eq!(failed, 2);
    after.0[5] = audit_before;
    assert_eq!(after, before, "refused calls changed the database or files");
}

fn cli(a: &Admin, token_file: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args([
            "admin",
            "--endpoint",
            &format!("http://{}", a.addr),
            "--token-file",
        ])
        .arg(token_file)
        .args(args)
        .env_remove("PROXYSEG_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn cli_round_with_tables_and_json() {
    let a = start();
    let tf = a.aux.path().join("alice.token");
    std::fs::write(&tf, format!("{ADMIN_TOKEN}\n")).unwrap();
    let vf = a.aux.path().join("bob.token");
    std::fs::write(&vf, format!("{VIEWER_TOKEN}\n")).unwrap();
    let ok = |args: &[&str]| {
        let o = cli(&a, &tf, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&[
        "support-set",
        "create",
        "cli-set",
        "--object",
        "brain",
        "--modality",
        "CT",
    ]);
    let m = a.aux.path().join("m.png");
    std::fs::write(&m, mask_png(&square(128, 128, 20, 20, 30))).unwrap();
    let ct = pydicom_files().join("CT_small.dcm");
    let out = ok(&[
        "pair",
        "add",
        "cli-set",
        ct.to_str().unwrap(),
        "--png",
        m.to_str().unwrap(),
    ]);
    assert!(
        out.contains("added pair 1 to cli-set (now version 2)"),
        "{out}"
    );
    let out = ok(&["support-set", "list"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("cli-set"), "{out}");
    let out = ok(&["--json", "support-set", "show", "cli-set"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(v["pairs"][0]["mask_pixels"][0], 900);
    // Created without --bundle: [engine] default_bundle (litemedsam-ppg) is not installed here,
    // so the set records the only installed bundle.
    assert_eq!(v["bundle"], "tiny-test");
    let out = ok(&[
        "support-set",
        "update",
        "cli-set",
        "--description",
        "curated",
        "--bundle",
        "tiny-test",
    ]);
    assert!(out.contains("is at version 3"), "{out}");
    ok(&[
        "rule",
        "add",
        "--support-set",
        "cli-set",
        "--modality",
        "CT",
        "--destination",
        "PACS",
    ]);
    let out = ok(&["--json", "rule", "dry-run", ct.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["matched"], true);
    assert_eq!(v["support_set"], "cli-set");
    let out = ok(&["rule", "dry-run", "--modality", "MR"]);
    assert!(out.starts_with("unmatched"), "{out}");
    assert!(ok(&["rule", "list"]).contains("cli-set"));
    assert!(ok(&["jobs", "list"]).starts_with("ID"));
    assert!(ok(&["models", "list"]).contains("tiny-test"));
    let out = ok(&["audit", "list", "--target", "support_set:cli-set"]);
    assert!(
        out.contains("support_set.add_pair") && out.contains("alice"),
        "{out}"
    );
    // Errors: the gRPC code by name, exit status 1.
    let o = cli(&a, &vf, &["support-set", "delete", "cli-set"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PERMISSION_DENIED"),
        "{}",
        text(&o)
    );
    let o = cli(&a, &tf, &["support-set", "show", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("NOT_FOUND"),
        "{}",
        text(&o)
    );
}

#[test]
fn python_grpcio_round_reflection_and_health() {
    let a = start();
    let o = run_py(
        "admin_client.py",
        &[
            "--addr",
            &a.addr,
            "--token",
            ADMIN_TOKEN,
            "--readonly-token",
            VIEWER_TOKEN,
            "--proto-root",
            root().join("proto").to_str().unwrap(),
            "--images",
            pydicom_files().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("python round ok"), "{out}");
    // The Python round's changes are in the audit log under the token's name.
    let n: i64 =
        a.d.db()
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE token_name = 'alice'",
                [],
                |r| r.get(0),
            )
            .unwrap();
    assert!(n >= 5, "{n} audit rows");
}

#[test]
fn unsafe_tokens_file_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path(), 0o644);
    let cfg = dir.path().join("proxyseg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dicom]\nlisten = \"127.0.0.1:{}\"\nrequire_known_peers = false\n\
             [storage]\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\ntokens_file = \"{}\"\n",
            free_port(),
            dir.path().join("var").display(),
            free_port(),
            tokens.display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(ADMIN_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_sweeps_orphans_and_shutdown_ends_watch() {
    let mut a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    one_pair_set(&mut c.sets, "keep", square(128, 128, 0, 0, 9)).await;
    // What a crash between writing files and committing leaves behind.
    let support = a.d.data_dir().join("support");
    std::fs::create_dir_all(support.join("keep/.123-abc.tmp")).unwrap();
    std::fs::create_dir_all(support.join("keep/123-uncommitted")).unwrap();
    std::fs::create_dir_all(support.join("gone/123-x")).unwrap();
    a.d.restart();
    a.d.wait_listening(&a.addr);
    let mut names: Vec<String> = std::fs::read_dir(&support)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["keep"]);
    assert_eq!(std::fs::read_dir(support.join("keep")).unwrap().count(), 1);
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let s = c
        .sets
        .get(pb::GetSupportSetRequest {
            name: "keep".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.pairs.len(), 1);
    // An open Watch must not hold up a graceful shutdown.
    let mut watch = c
        .jobs
        .watch(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let t0 = std::time::Instant::now();
    assert!(
        a.d.terminate(),
        "daemon did not exit cleanly; log:\n{}",
        a.d.log()
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
    assert!(!matches!(end, Ok(Ok(Some(_)))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_takes_the_annotated_slice_of_an_image_folder() {
    let a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let dir = a.aux.path().join("sliced");
    std::fs::create_dir_all(dir.join("pairs/01/slices")).unwrap();
    // Equal Instance Numbers: the file name decides, so a.dcm (MR, 64x64) is the annotated one.
    std::fs::write(dir.join("pairs/01/slices/a.dcm"), pydicom("MR_small.dcm")).unwrap();
    std::fs::write(dir.join("pairs/01/slices/b.dcm"), pydicom("CT_small.dcm")).unwrap();
    std::fs::write(
        dir.join("pairs/01/mask.png"),
        mask_png(&square(64, 64, 8, 8, 16)),
    )
    .unwrap();
    std::fs::write(
        dir.join("supportset.toml"),
        "name = \"sliced\"\nbundle = \"tiny-test\"\n[match]\nmodality = \"MR\"\n\
         [[objects]]\nlabel = \"lesion\"\ncategory = \"Morphologically abnormal structure\"\n\
         [[pairs]]\nimage = \"pairs/01/slices\"\nmasks = [\"pairs/01/mask.png\"]\n",
    )
    .unwrap();
    let s = c
        .sets
        .import(pb::ImportRequest {
            path: dir.display().to_string(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.name, "sliced");
    assert_eq!((s.pairs[0].rows, s.pairs[0].mask_pixels[0]), (64, 256));
    assert_eq!(s.objects[0].category.as_ref().unwrap().scheme, "99PROXYSEG");
    assert_eq!(s.modality, "MR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_store_routes_the_pipeline_with_the_job_version() {
    // The real bundle (its graphs and its support-set folders) in this daemon's models dir.
    let a = start_full("", &|models| {
        std::os::unix::fs::symlink(
            root().join("models/phantom-tiny"),
            models.join("phantom-tiny"),
        )
        .unwrap();
    });
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let sets = c
        .sets
        .list(pb::ListSupportSetsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = sets.support_sets.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"fundus-disc-cup-vessels"),
        "{names:?}\n{}",
        a.d.log()
    );
    let fundus = sets
        .support_sets
        .iter()
        .find(|s| s.name == "fundus-disc-cup-vessels")
        .unwrap()
        .clone();
    let rules = c
        .rules
        .list(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.rules.len(), sets.support_sets.len());
    let fundus_rule = rules
        .rules
        .iter()
        .find(|r| r.support_set == fundus.name)
        .unwrap()
        .clone();
    assert_eq!(
        (
            fundus_rule.modality.as_str(),
            fundus_rule.body_part.as_str()
        ),
        ("OP", "EYE")
    );

    // A fundus study goes through the pipeline routed by the store's rule.
    let image = root().join("models/phantom-tiny/demo-studies/fundus/image.dcm");
    let o = storescu(a.d.port).file(&image).run();
    assert!(o.status.success(), "{}", text(&o));
    let mut job = pb::Job::default();
    for _ in 0..150 {
        let l = c
            .jobs
            .list(pb::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner();
        if let Some(j) = l.jobs.first() {
            job = j.clone();
            if !["complete", "matched"].contains(&job.state.as_str()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(job.support_set, fundus.name, "{job:?}\n{}", a.d.log());
    assert_eq!(job.rule_id, fundus_rule.id);
    assert_eq!(job.support_set_version, fundus.version);
    assert!(
        ["inferred", "written", "delivered"].contains(&job.state.as_str()),
        "{job:?}\n{}",
        a.d.log()
    );
    // Seeding is audited, and does not repeat on a restart.
    let db = a.d.db();
    let seeded: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE token_name = 'seed' AND action = 'rule.create'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seeded as usize, rules.rules.len());
}

/// Issue 17, admin gaps: a set created without `--bundle` gets a bundle that is installed (the
/// default is not, so the only installed one), a set naming a bundle that is not installed is
/// refused with the reason (CLI and gRPC), `rule dry-run` names the sender when the rule sends
/// results back, and `rule update` edits a rule in place (same id, audited).
#[test]
fn cli_bundles_dry_run_sender_and_rule_update() {
    let a = start();
    let tf = a.aux.path().join("alice.token");
    std::fs::write(&tf, format!("{ADMIN_TOKEN}\n")).unwrap();
    let ok = |args: &[&str]| {
        let o = cli(&a, &tf, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let refused = |args: &[&str], code: &str, what: &str| {
        let o = cli(&a, &tf, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(code) && err.contains(what), "{args:?}: {err}");
    };

    // (a) The bundle a set records, or why it cannot be created.
    ok(&["support-set", "create", "no-bundle", "--object", "brain"]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "support-set", "show", "no-bundle"])).unwrap();
    assert_eq!(v["bundle"], "tiny-test", "the only installed bundle");
    refused(
        &[
            "support-set",
            "create",
            "bad",
            "--object",
            "x",
            "--bundle",
            "nope",
        ],
        "FAILED_PRECONDITION",
        "model bundle \"nope\" is not installed",
    );
    refused(
        &[
            "support-set",
            "create",
            "bad",
            "--object",
            "x",
            "--bundle",
            "nope",
        ],
        "FAILED_PRECONDITION",
        "installed: tiny-test",
    );
    refused(
        &["support-set", "update", "no-bundle", "--bundle", "nope"],
        "FAILED_PRECONDITION",
        "not installed",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(async {
            let mut c = clients(&a.addr, ADMIN_TOKEN).await;
            c.sets
                .create(pb::CreateSupportSetRequest {
                    name: "bad".into(),
                    bundle: "nope".into(),
                    objects: vec![object("x")],
                    ..Default::default()
                })
                .await
        })
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let sets = ok(&["support-set", "list"]);
    assert!(!sets.contains("bad"), "{sets}");

    // (b) Dry run of a rule without a destination: back to the sender, named.
    let out = ok(&[
        "rule",
        "add",
        "--support-set",
        "no-bundle",
        "--modality",
        "CT",
    ]);
    let id: i64 = out
        .trim()
        .trim_start_matches("created rule ")
        .parse()
        .unwrap();
    let out = ok(&[
        "rule",
        "dry-run",
        "--modality",
        "CT",
        "--calling-ae",
        "MODALITY1",
    ]);
    assert!(
        out.starts_with(&format!(
            "rule {id} -> support set no-bundle (version 1) -> the sender (AE MODALITY1)\n"
        )),
        "{out}"
    );
    let out = ok(&["rule", "dry-run", "--modality", "CT"]);
    assert!(out.contains("-> the sender (its calling AE"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "rule", "dry-run", "--modality", "CT"])).unwrap();
    assert_eq!(v["to_sender"], true, "{v}");

    // (c) rule update: in place, other fields kept, audited.
    let out = ok(&[
        "rule",
        "update",
        &id.to_string(),
        "--destination",
        "PACS",
        "--priority",
        "7",
    ]);
    assert_eq!(out.trim(), format!("updated rule {id}"));
    let rules: serde_json::Value = serde_json::from_str(&ok(&["--json", "rule", "list"])).unwrap();
    let rules = rules.as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["id"], id);
    assert_eq!(rules[0]["priority"], 7);
    assert_eq!(rules[0]["destination_ae"], "PACS");
    assert_eq!(rules[0]["modality"], "CT", "fields not given are kept");
    assert_eq!(rules[0]["support_set"], "no-bundle");
    let out = ok(&[
        "rule",
        "dry-run",
        "--modality",
        "CT",
        "--calling-ae",
        "MODALITY1",
    ]);
    assert!(
        out.starts_with(&format!(
            "rule {id} -> support set no-bundle (version 1) -> PACS\n"
        )),
        "{out}"
    );
    let out = ok(&["audit", "list", "--target", &format!("rule:{id}")]);
    assert!(
        out.contains("rule.update") && out.contains("alice"),
        "{out}"
    );
    refused(
        &["rule", "update", "999", "--priority", "1"],
        "NOT_FOUND",
        "rule 999 not found",
    );
    refused(
        &["rule", "update", &id.to_string(), "--support-set", "nope"],
        "INVALID_ARGUMENT",
        "does not exist",
    );
}

/// Review M7 / L9: Watch streams (each polls the index) are capped across clients; the stream
/// over the cap is refused with RESOURCE_EXHAUSTED, and closing one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_capped_and_freed() {
    let a = start_admin_keys("max_watch_streams = 2\n", "", &|_| {});
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let mut ro = clients(&a.addr, VIEWER_TOKEN).await;
    let first = c.jobs.watch(pb::WatchJobsRequest::default()).await.unwrap();
    let second = ro
        .jobs
        .watch(pb::WatchJobsRequest::default())
        .await
        .unwrap();
    let e = ro
        .jobs
        .watch(pb::WatchJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("admin.max_watch_streams"), "{e:?}");
    // Other calls still work while the streams are open.
    c.jobs.list(pb::ListJobsRequest::default()).await.unwrap();
    drop(first);
    // The server notices the closed stream at its next poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ro.jobs.watch(pb::WatchJobsRequest::default()).await {
            Ok(_third) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a closed stream never freed its place"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    drop(second);
}

/// `admin.rpc_timeout_s` bounds each call, but a Watch stream, once open, outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_outlives_the_rpc_timeout() {
    let a = start_admin_keys("rpc_timeout_s = 1\n", "", &|_| {});
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    let mut stream = c
        .jobs
        .watch(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Nothing happens for 3 s: the stream stays open (no error, no end).
    let next = tokio::time::timeout(Duration::from_secs(3), stream.message()).await;
    assert!(next.is_err(), "the Watch stream ended or failed: {next:?}");
    c.jobs.list(pb::ListJobsRequest::default()).await.unwrap();
}

/// Issue 16 item 6: Import reads and Export writes only inside `admin.exchange_dir`, whatever
/// the path says (absolute elsewhere, `..`, a symbolic link out); every attempt is audited,
/// a refused one too.
/// Review L7: an admin error names no server path (exchange dir, data dir, temp dirs).
fn no_server_path(a: &Admin, message: &str) {
    for dir in [a.aux.path(), a.d.dir.path()] {
        let dir = dir.display().to_string();
        assert!(!message.contains(&dir), "{message:?} names {dir}");
    }
    assert!(!message.contains("/tmp/"), "{message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_stay_inside_the_exchange_dir() {
    let a = start();
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    one_pair_set(&mut c.sets, "ex", square(128, 128, 10, 10, 20)).await;
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), a.aux.path().join("link-out")).unwrap();
    for path in [
        outside.path().join("x").display().to_string(),
        "../escape".to_string(),
        "link-out/x".to_string(),
    ] {
        let e = c
            .sets
            .export(pb::ExportRequest {
                name: "ex".into(),
                version: 0,
                path: path.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{path}: {e:?}");
        assert!(e.message().contains("admin.exchange_dir"), "{e:?}");
        no_server_path(&a, e.message());
    }
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    // A relative path is taken inside the exchange dir, and the folder imports back.
    let out = c
        .sets
        .export(pb::ExportRequest {
            name: "ex".into(),
            version: 0,
            path: "ex-export".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        a.aux.path().join("ex-export/supportset.toml").is_file(),
        "{out:?}"
    );
    // The same folder, copied outside, is refused; inside, by relative name, it imports.
    let copy = outside.path().join("ex-copy");
    std::fs::create_dir_all(&copy).unwrap();
    let e = c
        .sets
        .import(pb::ImportRequest {
            path: outside.path().display().to_string(),
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c
        .sets
        .import(pb::ImportRequest {
            path: "no-such-folder".into(),
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    no_server_path(&a, e.message());
    // A folder whose pair names a missing image: the error names the file inside the folder.
    let bad = a.aux.path().join("bad-folder");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("supportset.toml"),
        "name = \"bad\"\n[[objects]]\nlabel = \"a\"\n[[pairs]]\nimage = \"gone.dcm\"\nmask = \"gone-seg.dcm\"\n",
    )
    .unwrap();
    let e = c
        .sets
        .import(pb::ImportRequest {
            path: "bad-folder".into(),
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("supportset.toml pair 1: cannot read gone.dcm"),
        "{e:?}"
    );
    no_server_path(&a, e.message());
    let s = c
        .sets
        .import(pb::ImportRequest {
            path: "ex-export".into(),
            name: "ex-again".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.pairs.len(), 1);
    // Every attempt is in the audit log: the refused ones as `.failed`.
    let db = a.d.db();
    let count = |action: &str| -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM audit WHERE action = ?1",
            [action],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count("support_set.export.failed"), 3);
    assert_eq!(count("support_set.import.failed"), 3);
    assert_eq!(count("support_set.export"), 1);
}
