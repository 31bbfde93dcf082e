//! Review flags: a job whose objects' mirrored looks (a bundle's `[mirror]`) agree less than
//! `[pipeline] review_agreement` on some frame says so in its `inferred` event and counts them
//! in `proxyseg_review_flags_total`; the SEG still goes out.

use crate::harness::engine::{append_manifest, copy_bundle, phantom_dir};
use crate::harness::*;
use crate::pipeline_e2e::{dcm_files, demo, engine_tables, models_for, settle};

/// The phantom bundle with every fundus object taking the mirrored second look, and a review
/// cut of 1.0: any disagreement between the looks flags the object.
#[test]
fn objects_whose_mirrored_looks_disagree_are_flagged_for_review() {
    let bundle = tempfile::tempdir().unwrap();
    let dir = bundle.path().join("phantom-mirror");
    copy_bundle(&phantom_dir(), &dir);
    append_manifest(
        &dir,
        "\n[mirror]\nobjects = [\"optic disc\", \"optic cup\", \"vessels\"]\nnote = \"review test\"\n",
    );
    let models = models_for(&dir, "phantom-tiny", &["fundus-disc-cup-vessels"]);
    let pacs_dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let _pacs = pacs_scp(pacs_port, pacs_dir.path(), &[]);
    let d = Daemon::start(Opts {
        extra: engine_tables(pacs_port, models.path(), "phantom-tiny"),
        stable_age_s: 1.0,
        pipeline_extra: "review_agreement = 1.0\n".into(),
        ..Opts::default()
    });
    let out = storescu(d.port)
        .required_only()
        .calling("PACS")
        .files(dcm_files(&demo("fundus")))
        .run();
    assert!(out.status.success(), "storescu:\n{}", text(&out));
    let states = settle(&d, 1, 240);
    assert_eq!(
        states[0].1,
        "delivered",
        "flags do not hold the SEG back\n{}",
        d.log()
    );
    let detail: String = d
        .db()
        .query_row(
            "SELECT detail FROM job_events WHERE state = 'inferred'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (_, flagged) = detail
        .split_once("; review: the mirrored looks agree less than 1 on ")
        .unwrap_or_else(|| panic!("no review note: {detail}"));
    // each flagged object as "label" (agreement), agreement in [0, 1)
    let objects: Vec<(&str, f32)> = flagged
        .split(", ")
        .map(|o| {
            let (label, a) = o.rsplit_once(" (").expect(o);
            (label, a.trim_end_matches(')').parse().expect(o))
        })
        .collect();
    assert!(!objects.is_empty(), "{detail}");
    for (label, a) in &objects {
        assert!(
            ["\"optic disc\"", "\"optic cup\"", "\"vessels\""].contains(label),
            "{detail}"
        );
        assert!((0.0..1.0).contains(a), "{detail}");
    }
    let metrics = d.metrics();
    assert!(
        metrics.contains(&format!("proxyseg_review_flags_total {}", objects.len())),
        "{} flagged in {detail}\n{metrics}",
        objects.len()
    );
    assert!(d.log().contains("review: mirrored looks disagree"));
}
