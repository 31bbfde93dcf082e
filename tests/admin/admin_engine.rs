//! Evaluate and Preview through the real daemon with the real engine (ONNX Runtime on CPU) and
//! the contract-conforming test bundle (`scripts/bench/engine/make_test_bundle.py`): leave-one-out
//! Dice over real pydicom images with generated masks, and PNG overlays of a preview (API and
//! CLI).

use crate::harness::admin::*;
use crate::harness::*;
use proxyseg::admin::pb;
use proxyseg::admin::pb::preview_client::PreviewClient;
use tonic::Code;

const BUNDLE: &str = "admin-test";

fn make_bundle(models: &std::path::Path) {
    crate::harness::engine::make_test_bundle(&models.join(BUNDLE), BUNDLE, "1");
}

/// `support-set evaluate <set>` through the CLI (text or JSON); it must succeed.
fn cli_evaluate(a: &Admin, set: &str, json: bool) -> String {
    let tf = a.aux.path().join("admin.token");
    std::fs::write(&tf, ADMIN_TOKEN).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_proxyseg"));
    cmd.args([
        "admin",
        "--endpoint",
        &format!("http://{}", a.addr),
        "--token-file",
    ])
    .arg(&tf);
    if json {
        cmd.arg("--json");
    }
    let o = cmd.args(["support-set", "evaluate", set]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// (file, rows, cols): single-frame pydicom images of different sizes, grey and colour.
const PAIRS: &[(&str, usize, usize)] = &[
    ("CT_small.dcm", 128, 128),
    ("MR_small.dcm", 64, 64),
    ("ExplVR_BigEnd.dcm", 60, 80),
    ("SC_rgb_jpeg_dcmtk.dcm", 100, 100),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_and_preview_with_the_engine() {
    // the centre takes the bundle's mirrored second look, the corner one look
    let a = start_full("", &|models: &std::path::Path| {
        make_bundle(models);
        crate::harness::engine::append_manifest(
            &models.join(BUNDLE),
            "\n[mirror]\nobjects = [\"centre\"]\n",
        );
    });
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "engine-set".into(),
            bundle: BUNDLE.into(),
            objects: vec![object("centre"), object("corner")],
            ..Default::default()
        })
        .await
        .unwrap();
    for (file, rows, cols) in PAIRS {
        // A centred square and a corner square, scaled to the image.
        let (r, q) = (*rows, *cols);
        let centre = square(r, q, r / 3, q / 3, r.min(q) / 3);
        let corner = square(r, q, 0, 0, r.min(q) / 5);
        add_pair(
            &mut c.sets,
            "engine-set",
            &pydicom(file),
            &pngs(&[centre, corner]),
        )
        .await
        .unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }
    let r = c
        .sets
        .evaluate(pb::EvaluateRequest {
            name: "engine-set".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.version, 5);
    assert_eq!(r.pairs.len(), PAIRS.len());
    for p in &r.pairs {
        assert_eq!(p.dice.len(), 2);
        assert!(p.dice.iter().all(|d| (0.0..=1.0).contains(d)), "{p:?}");
    }
    assert!((0.0..=1.0).contains(&r.mean_dice));
    assert_eq!(r.object_mean_dice.len(), 2);
    // Evaluation is deterministic for a version.
    let again = c
        .sets
        .evaluate(pb::EvaluateRequest {
            name: "engine-set".into(),
            version: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.pairs, r.pairs);
    // Set-level flags: one FLAG_KIND_POOR_SET (pair number 0) per object whose mean
    // leave-one-out Dice is below 0.5, after the pair flags.
    let poor: Vec<u32> = (1..=r.object_mean_dice.len() as u32)
        .filter(|&k| r.object_mean_dice[k as usize - 1] < 0.5)
        .collect();
    let flagged: Vec<u32> = r
        .flags
        .iter()
        .filter(|f| f.kind == pb::FlagKind::PoorSet as i32)
        .map(|f| f.object_index)
        .collect();
    assert_eq!(flagged, poor, "{:?} / {:?}", r.object_mean_dice, r.flags);
    assert!(r
        .flags
        .iter()
        .all(|f| (f.pair_number == 0) == (f.kind == pb::FlagKind::PoorSet as i32)));

    // A set that cannot teach its object: one-pixel masks in different places. Its mean Dice
    // is ~0 whatever the model, so the set is flagged, through the API and the CLI.
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "poor-set".into(),
            bundle: BUNDLE.into(),
            objects: vec![object("dot")],
            ..Default::default()
        })
        .await
        .unwrap();
    for (file, rows, cols) in &PAIRS[..2] {
        let dot = square(*rows, *cols, rows / 4, cols / 2, 1);
        add_pair(&mut c.sets, "poor-set", &pydicom(file), &pngs(&[dot]))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }
    let poor = c
        .sets
        .evaluate(pb::EvaluateRequest {
            name: "poor-set".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(poor.mean_dice < 0.5, "{poor:?}");
    let set_flags: Vec<&pb::MaskFlag> = poor.flags.iter().filter(|f| f.pair_number == 0).collect();
    assert_eq!(set_flags.len(), 1, "{:?}", poor.flags);
    assert_eq!(
        (set_flags[0].object_index, set_flags[0].kind),
        (1, pb::FlagKind::PoorSet as i32)
    );
    let cli = |json: bool| cli_evaluate(&a, "poor-set", json);
    let out = cli(false);
    assert!(
        out.contains("FLAG POOR SET object 1: dot: mean leave-one-out Dice"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&cli(true)).unwrap();
    let set_flag = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "FLAG_KIND_POOR_SET")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        (set_flag["pair"].is_null(), &set_flag["object"]),
        (true, &serde_json::json!(1))
    );

    // Preview: overlays at the image size, the database untouched.
    let before = snapshot(&a);
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut preview = PreviewClient::with_interceptor(
        ch,
        proxyseg::admin::cli::Bearer::new(VIEWER_TOKEN).unwrap(),
    )
    .max_decoding_message_size(64 << 20);
    let image = pydicom("examples_rgb_color.dcm");
    let msgs = vec![
        pb::PreviewRequest {
            part: Some(pb::preview_request::Part::Header(pb::PreviewHeader {
                support_set: "engine-set".into(),
                version: 0,
            })),
        },
        pb::PreviewRequest {
            part: Some(pb::preview_request::Part::ImageChunk(image)),
        },
    ];
    let p = preview
        .segment(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.rows, p.columns, p.overlays.len()), (240, 320, 2));
    for o in &p.overlays {
        let dec = png::Decoder::new(std::io::Cursor::new(&o.png));
        let info = dec.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (320, 240));
        assert_eq!(info.color_type, png::ColorType::Rgba);
    }
    let agreement: Vec<Option<f32>> = p.overlays.iter().map(|o| o.look_agreement).collect();
    assert!(
        agreement[0].is_some_and(|x| (0.0..=1.0).contains(&x)) && agreement[1].is_none(),
        "the centre's two looks, the corner's one: {agreement:?}"
    );
    // The same through the CLI, with the read-only token.
    let tf = a.aux.path().join("viewer.token");
    std::fs::write(&tf, VIEWER_TOKEN).unwrap();
    let out_dir = a.aux.path().join("preview");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args([
            "admin",
            "--endpoint",
            &format!("http://{}", a.addr),
            "--token-file",
        ])
        .arg(&tf)
        .args(["preview", "engine-set"])
        .arg(pydicom_files().join("MR_small.dcm"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(out_dir.join("overlay-1.png").is_file() && out_dir.join("overlay-2.png").is_file());
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(said.matches("mirrored looks agree").count(), 1, "{said}");
    // Nothing changed but the audit log: each Preview is a read of the set, audited under
    // the reading token (review L9).
    let mut after = snapshot(&a);
    assert_eq!(after.0[5], before.0[5] + 2, "one audit row per Preview");
    after.0[5] = before.0[5];
    assert_eq!(after, before, "Preview changed the database");
    let previews: Vec<(String, String)> =
        a.d.db()
            .prepare("SELECT token_name, target FROM audit WHERE action = 'support_set.preview'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(
        previews,
        vec![("bob".to_string(), "support_set:engine-set".to_string()); 2]
    );

    // Too few pairs for leave-one-out.
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "lonely".into(),
            bundle: BUNDLE.into(),
            objects: vec![object("x")],
            ..Default::default()
        })
        .await
        .unwrap();
    let e = c
        .sets
        .evaluate(pb::EvaluateRequest {
            name: "lonely".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

/// A mask shaped as an L (two bars of a square of side `s` at (y0, x0)): one region that
/// fills about 0.6 of its convex hull.
fn l_shape(
    rows: usize,
    cols: usize,
    y0: usize,
    x0: usize,
    s: usize,
) -> proxyseg::store::support::Mask {
    let mut m = square(rows, cols, 0, 0, 0);
    let w = s / 4;
    for y in y0..(y0 + s).min(rows) {
        for x in x0..(x0 + s).min(cols) {
            if x < x0 + w || y >= y0 + s - w {
                m.data[y * cols + x] = 1;
            }
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mask_that_turns_a_shape_rule_off_is_flagged_by_evaluate() {
    // the bundle lists "blob" as convex; pair 3's blob is an L, which turns the rule off for the
    // whole set: Evaluate says so for that pair (API and CLI), and for no other
    let a = start_full("", &|models: &std::path::Path| {
        make_bundle(models);
        crate::harness::engine::append_manifest(
            &models.join(BUNDLE),
            "\n[[shape]]\nform = \"convex\"\nobjects = [\"blob\"]\n",
        );
    });
    let mut c = clients(&a.addr, ADMIN_TOKEN).await;
    c.sets
        .create(pb::CreateSupportSetRequest {
            name: "shaped".into(),
            bundle: BUNDLE.into(),
            objects: vec![object("blob"), object("corner")],
            ..Default::default()
        })
        .await
        .unwrap();
    for (i, (file, rows, cols)) in PAIRS[..3].iter().enumerate() {
        let (r, q) = (*rows, *cols);
        let side = r.min(q) / 2;
        let blob = if i == 2 {
            l_shape(r, q, r / 4, q / 4, side)
        } else {
            square(r, q, r / 4, q / 4, side)
        };
        // the corner object is listed by no rule: its L is nobody's business
        let corner = l_shape(r, q, 0, 0, r.min(q) / 3);
        add_pair(
            &mut c.sets,
            "shaped",
            &pydicom(file),
            &pngs(&[blob, corner]),
        )
        .await
        .unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }
    let r = c
        .sets
        .evaluate(pb::EvaluateRequest {
            name: "shaped".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let off: Vec<&pb::MaskFlag> = r
        .flags
        .iter()
        .filter(|f| f.kind == pb::FlagKind::ShapeRuleOff as i32)
        .collect();
    assert_eq!(off.len(), 1, "{:?}", r.flags);
    assert_eq!((off[0].pair_number, off[0].object_index), (3, 1));
    assert!(
        off[0].detail.contains("of its convex hull")
            && off[0]
                .detail
                .contains("bundle admin-test's convex rule for blob is off")
            && off[0].detail.contains("every result gets the region form"),
        "{}",
        off[0].detail
    );
    let out = cli_evaluate(&a, "shaped", false);
    assert!(
        out.contains("FLAG pair 3 object 1: blob: the mask fills"),
        "{out}"
    );
}
