//! `manifest.toml`: the raw TOML shape, the checked [`Manifest`], the contract and family
//! rules (contract 1: SAM, four graphs; contract 2: SAM 2, six graphs and `[memory]`), and the
//! metadata_props every graph must repeat.

use std::path::Path;

use serde::Deserialize;

use super::{BundleError, GraphKind, CONTRACT_SAM2, CONTRACT_VERSION};
use crate::engine::memory::MemorySpec;
use crate::engine::mirror::MirrorRule;
use crate::engine::shape::{Form, ShapeRule};
use crate::engine::threshold::{self, ThresholdRule};
use crate::engine::views::{ResolutionRule, Strategy};

/// Either a TOML string or integer, kept as text (manifest `version`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum StringOrInt {
    S(String),
    I(i64),
    F(f64),
}

impl StringOrInt {
    fn text(&self) -> String {
        match self {
            StringOrInt::S(s) => s.clone(),
            StringOrInt::I(i) => i.to_string(),
            StringOrInt::F(f) => f.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawManifest {
    contract: i64,
    name: String,
    version: StringOrInt,
    family: String,
    input_size: usize,
    pixel_mean: Vec<f32>,
    pixel_std: Vec<f32>,
    embed_dim: usize,
    embed_size: Vec<usize>,
    prompt_tokens: usize,
    max_objects: usize,
    max_pairs: usize,
    low_res_size: Vec<usize>,
    #[serde(default)]
    decoder_image: bool,
    graphs: GraphFiles,
    #[serde(default)]
    provenance: Option<toml::Table>,
    #[serde(default)]
    evaluation: Option<toml::Table>,
    #[serde(default)]
    weights: Option<Weights>,
    #[serde(default)]
    resolution: Vec<RawRule>,
    #[serde(default)]
    memory: Option<MemorySpec>,
    #[serde(default)]
    int8: Option<RawInt8>,
    #[serde(default)]
    shape: Vec<RawShape>,
    #[serde(default)]
    threshold: Vec<RawThreshold>,
    #[serde(default)]
    mirror: Option<RawMirror>,
}

/// Checked `[[shape]]` tables; the message names the rule that is wrong.
fn shape_rules(raw: Vec<RawShape>) -> Result<Vec<ShapeRule>, String> {
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let rule = ShapeRule {
                form: r.form,
                objects: r.objects,
                note: r.note,
            };
            rule.check()
                .map(|()| rule)
                .map_err(|e| format!("[[shape]] rule {}: {e}", i + 1))
        })
        .collect()
}

/// Checked `[[threshold]]` tables.
fn threshold_rules(raw: Vec<RawThreshold>) -> Result<Vec<ThresholdRule>, String> {
    let rules: Vec<ThresholdRule> = raw
        .into_iter()
        .map(|r| ThresholdRule {
            objects: r.objects,
            logit: r.logit,
            note: r.note,
        })
        .collect();
    threshold::check(&rules)?;
    Ok(rules)
}

/// The checked `[mirror]` table, if any.
fn mirror_rule(raw: Option<RawMirror>) -> Result<Option<MirrorRule>, String> {
    raw.map(|r| {
        let rule = MirrorRule {
            objects: r.objects,
            note: r.note,
        };
        rule.check().map(|()| rule)
    })
    .transpose()
}

/// One raw `[[shape]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShape {
    #[serde(default)]
    form: Form,
    objects: Vec<String>,
    #[serde(default)]
    note: String,
}

/// One raw `[[threshold]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThreshold {
    objects: Vec<String>,
    logit: f32,
    #[serde(default)]
    note: String,
}

/// The raw `[mirror]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    objects: Vec<String>,
    #[serde(default)]
    note: String,
}

/// The raw `[int8]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInt8 {
    graphs: Vec<String>,
}

/// One raw `[[resolution]]` table (defaults as the Python reference's `views.Rule`).
#[derive(Debug, Deserialize)]
struct RawRule {
    strategy: String,
    objects: Vec<String>,
    #[serde(default)]
    anchor: Option<String>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    min_side: Option<usize>,
    #[serde(default)]
    grid: Option<usize>,
    #[serde(default)]
    overlap: Option<f64>,
    #[serde(default)]
    note: Option<String>,
}

impl RawRule {
    fn into_rule(self) -> Result<ResolutionRule, String> {
        let strategy = match self.strategy.as_str() {
            "roi" => {
                if self.grid.is_some() || self.overlap.is_some() {
                    return Err("grid and overlap belong to tiles rules, not roi".into());
                }
                Strategy::Roi {
                    anchor: self.anchor.unwrap_or_default(),
                    scale: self.scale.unwrap_or(2.0),
                    min_side: self.min_side.unwrap_or(64),
                }
            }
            "tiles" => {
                if self.anchor.is_some() || self.scale.is_some() || self.min_side.is_some() {
                    return Err("anchor, scale and min_side belong to roi rules, not tiles".into());
                }
                Strategy::Tiles {
                    grid: self.grid.unwrap_or(2),
                    overlap: self.overlap.unwrap_or(0.125),
                }
            }
            other => {
                return Err(format!(
                    "strategy = {other:?} is not supported (expected \"roi\" or \"tiles\")"
                ))
            }
        };
        let rule = ResolutionRule {
            strategy,
            objects: self.objects,
            note: self.note.unwrap_or_default(),
        };
        rule.check()?;
        Ok(rule)
    }
}

/// The `[weights]` table: a third-party checkpoint inside the bundle folder that the graphs
/// read as ONNX external data. Not committed with the bundle; `setup` says how to get it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Weights {
    /// File name relative to the bundle folder (must stay inside it).
    pub file: String,
    /// Expected SHA-256 of the file (lowercase hex).
    pub sha256: String,
    /// Expected size in bytes.
    pub size: u64,
    /// Where the file comes from (package, path in it, licence).
    #[serde(default)]
    pub source: String,
    /// How to put the file in place (shown when it is missing or wrong).
    #[serde(default)]
    pub setup: String,
}

/// The `[graphs]` table: file names relative to the bundle folder.
#[derive(Debug, Clone, Deserialize)]
pub struct GraphFiles {
    /// `image_encoder.onnx`.
    pub image_encoder: String,
    /// `support_encoder.onnx`.
    pub support_encoder: String,
    /// `prompt_generator.onnx`.
    pub prompt_generator: String,
    /// `mask_decoder.onnx`.
    pub mask_decoder: String,
    /// `memory_attention.onnx` (contract 2, or contract 1's proxy memory mode).
    #[serde(default)]
    pub memory_attention: Option<String>,
    /// `memory_encoder.onnx` (contract 2, or contract 1's proxy memory mode).
    #[serde(default)]
    pub memory_encoder: Option<String>,
}

impl GraphFiles {
    /// The file of one graph kind, None for a memory graph the manifest does not name.
    pub fn file(&self, kind: GraphKind) -> Option<&str> {
        match kind {
            GraphKind::ImageEncoder => Some(&self.image_encoder),
            GraphKind::SupportEncoder => Some(&self.support_encoder),
            GraphKind::PromptGenerator => Some(&self.prompt_generator),
            GraphKind::MaskDecoder => Some(&self.mask_decoder),
            GraphKind::MemoryAttention => self.memory_attention.as_deref(),
            GraphKind::MemoryEncoder => self.memory_encoder.as_deref(),
        }
    }

    /// Every graph file the manifest names, in pipeline order.
    pub fn all(&self) -> Vec<&String> {
        let mut v = vec![
            &self.image_encoder,
            &self.support_encoder,
            &self.prompt_generator,
            &self.mask_decoder,
        ];
        v.extend(self.memory_attention.iter());
        v.extend(self.memory_encoder.iter());
        v
    }
}

/// A parsed and checked `manifest.toml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Contract version (1: SAM, 2: SAM 2).
    pub contract: i64,
    /// Bundle name.
    pub name: String,
    /// Bundle version (text).
    pub version: String,
    /// Model family ("sam" with contract 1, "sam2" with contract 2).
    pub family: String,
    /// Input size S: the encoder sees S x S images.
    pub input_size: usize,
    /// Per-channel mean on the 0..255 scale.
    pub pixel_mean: [f32; 3],
    /// Per-channel standard deviation on the 0..255 scale.
    pub pixel_std: [f32; 3],
    /// Embedding channels C.
    pub embed_dim: usize,
    /// Embedding grid [h, w].
    pub embed_size: [usize; 2],
    /// Prompt tokens per object T.
    pub prompt_tokens: usize,
    /// Largest number of objects K the graphs accept.
    pub max_objects: usize,
    /// Largest number of support pairs N the graphs accept.
    pub max_pairs: usize,
    /// Low-resolution logit grid [4h, 4w].
    pub low_res_size: [usize; 2],
    /// Contract 1: `mask_decoder.onnx` also takes the model input, `image` f32[1,3,S,S] (the
    /// image the embeddings are of), for a detail branch at input resolution. Default false.
    pub decoder_image: bool,
    /// Graph file names.
    pub graphs: GraphFiles,
    /// Training provenance, as written by the model code.
    pub provenance: toml::Table,
    /// Measured evaluation, as written by the model code.
    pub evaluation: toml::Table,
    /// Optional `[weights]`: a checkpoint the graphs read as external data, checked at load
    /// (inside the bundle, exact `size`, `sha256`) before any session is created:
    ///
    /// ```toml
    /// [weights]
    /// file = "lite_medsam.pth"      # relative to the bundle folder, never committed
    /// sha256 = "79d8c9dc..."        # 64 hex digits
    /// size = 39370479               # bytes
    /// source = "where it comes from (licence)"
    /// setup = "how to fetch it (shown when it is missing or wrong)"
    /// ```
    pub weights: Option<Weights>,
    /// Optional `[[resolution]]` rules: second passes at native resolution (`strategy =
    /// "roi"` with `objects`, `anchor`, `scale`, `min_side`; `strategy = "tiles"` with
    /// `objects`, `grid`, `overlap`; optional `note`), in manifest order. Geometry and
    /// semantics: [`super::views`]. Empty when the manifest has none.
    pub resolution: Vec<ResolutionRule>,
    /// `[memory]`: the memory bank of a contract-2 bundle, or of a contract-1 bundle's proxy
    /// memory mode (None: every frame on its own).
    pub memory: Option<MemorySpec>,
    /// Optional `[int8] graphs = ["image_encoder", ...]`: graphs with a CPU int8 variant,
    /// `<stem>.int8.onnx` beside the float file, built at setup from the float graph and the
    /// weights (`scripts/model/derive_int8.py`; never committed). The engine loads the variant
    /// for a graph that runs on the CPU provider when `[engine] int8` allows it. Empty: none.
    pub int8: Vec<GraphKind>,
    /// Optional `[[shape]]` tables (`objects`, optional `form` and `note`): objects that are
    /// one solid region, convex or elliptical; see [`crate::engine::shape`]. Empty when the
    /// manifest has none.
    pub shape: Vec<ShapeRule>,
    /// Optional `[[threshold]]` tables (`objects`, `logit`, optional `note`): the logit the
    /// listed objects' masks are cut at, see [`crate::engine::threshold`]. Empty: all at 0.
    pub threshold: Vec<ThresholdRule>,
    /// Optional `[mirror]` table (`objects`, optional `note`): objects that also take the
    /// mirrored second look, see [`crate::engine::mirror`]. None: one look.
    pub mirror: Option<MirrorRule>,
}

impl Manifest {
    /// Parses and checks manifest text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, BundleError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| BundleError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let bad = |message: String| BundleError::Contract {
            path: path.to_owned(),
            message,
        };
        check_contract(&raw).map_err(bad)?;
        let three = |v: &[f32], key: &str| -> Result<[f32; 3], BundleError> {
            <[f32; 3]>::try_from(v)
                .map_err(|_| bad(format!("{key} must have 3 values, has {}", v.len())))
        };
        let two = |v: &[usize], key: &str| -> Result<[usize; 2], BundleError> {
            <[usize; 2]>::try_from(v)
                .map_err(|_| bad(format!("{key} must have 2 values, has {}", v.len())))
        };
        let pixel_mean = three(&raw.pixel_mean, "pixel_mean")?;
        let pixel_std = three(&raw.pixel_std, "pixel_std")?;
        if pixel_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(bad(format!(
                "pixel_std {pixel_std:?} must be finite and > 0"
            )));
        }
        let embed_size = two(&raw.embed_size, "embed_size")?;
        let low_res_size = two(&raw.low_res_size, "low_res_size")?;
        for (key, v) in [
            ("input_size", raw.input_size),
            ("embed_dim", raw.embed_dim),
            ("prompt_tokens", raw.prompt_tokens),
            ("max_objects", raw.max_objects),
            ("max_pairs", raw.max_pairs),
            ("embed_size[0]", embed_size[0]),
            ("embed_size[1]", embed_size[1]),
        ] {
            if v == 0 {
                return Err(bad(format!("{key} must be > 0")));
            }
        }
        if low_res_size != [4 * embed_size[0], 4 * embed_size[1]] {
            return Err(bad(format!(
                "low_res_size {low_res_size:?} must be 4 x embed_size {embed_size:?}"
            )));
        }
        if raw.name.trim().is_empty() {
            return Err(bad("name must not be empty".into()));
        }
        if let Some(wt) = &raw.weights {
            if !is_inside(&wt.file) {
                return Err(bad(format!(
                    "[weights] file = {:?} must be a relative path inside the bundle",
                    wt.file
                )));
            }
            if wt.sha256.len() != 64 || !wt.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "[weights] sha256 = {:?} must be 64 hex digits",
                    wt.sha256
                )));
            }
        }
        let resolution = raw
            .resolution
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.into_rule()
                    .map_err(|e| bad(format!("[[resolution]] rule {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let int8 = raw.int8.as_ref().map_or(&[][..], |t| &t.graphs[..]);
        let int8 = int8
            .iter()
            .map(|name| match GraphKind::parse(name) {
                Some(kind) if raw.graphs.file(kind).is_some() => Ok(kind),
                Some(_) => Err(bad(format!("[int8] graphs: {name:?} is not in [graphs]"))),
                None => Err(bad(format!("[int8] graphs: {name:?} is not a graph"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shape = shape_rules(raw.shape).map_err(bad)?;
        let threshold = threshold_rules(raw.threshold).map_err(bad)?;
        let mirror = mirror_rule(raw.mirror).map_err(bad)?;
        Ok(Manifest {
            contract: raw.contract,
            name: raw.name,
            version: raw.version.text(),
            family: raw.family,
            input_size: raw.input_size,
            pixel_mean,
            pixel_std,
            embed_dim: raw.embed_dim,
            embed_size,
            prompt_tokens: raw.prompt_tokens,
            max_objects: raw.max_objects,
            max_pairs: raw.max_pairs,
            low_res_size,
            decoder_image: raw.decoder_image,
            graphs: raw.graphs,
            provenance: raw.provenance.unwrap_or_default(),
            evaluation: raw.evaluation.unwrap_or_default(),
            weights: raw.weights.map(|w| Weights {
                sha256: w.sha256.to_ascii_lowercase(),
                ..w
            }),
            resolution,
            memory: raw.memory,
            int8,
            shape,
            threshold,
            mirror,
        })
    }

    /// The metadata_props every graph must repeat, as (key, expected value).
    pub(super) fn expected_metadata(&self) -> Vec<(&'static str, MetaValue)> {
        vec![
            ("contract", MetaValue::Ints(vec![self.contract])),
            ("name", MetaValue::Text(self.name.clone())),
            ("version", MetaValue::Text(self.version.clone())),
            ("family", MetaValue::Text(self.family.clone())),
            ("input_size", MetaValue::Ints(vec![self.input_size as i64])),
            ("embed_dim", MetaValue::Ints(vec![self.embed_dim as i64])),
            (
                "embed_size",
                MetaValue::Ints(self.embed_size.iter().map(|&v| v as i64).collect()),
            ),
            (
                "prompt_tokens",
                MetaValue::Ints(vec![self.prompt_tokens as i64]),
            ),
            (
                "max_objects",
                MetaValue::Ints(vec![self.max_objects as i64]),
            ),
            ("max_pairs", MetaValue::Ints(vec![self.max_pairs as i64])),
        ]
    }
}

pub(super) enum MetaValue {
    Text(String),
    Ints(Vec<i64>),
}

impl MetaValue {
    pub(super) fn matches(&self, got: &str) -> bool {
        match self {
            MetaValue::Text(t) => got.trim() == t.trim(),
            MetaValue::Ints(v) => {
                let nums: Vec<i64> = got
                    .split(|c: char| !(c.is_ascii_digit() || c == '-'))
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse().ok())
                    .collect();
                &nums == v
            }
        }
    }

    pub(super) fn show(&self) -> String {
        match self {
            MetaValue::Text(t) => format!("{t:?}"),
            MetaValue::Ints(v) if v.len() == 1 => v[0].to_string(),
            MetaValue::Ints(v) => format!("{v:?}"),
        }
    }
}

/// The contract and family agree; a contract-2 manifest has its `[memory]` table and its two
/// memory graphs; a contract-1 manifest has both or neither (the optional proxy memory mode).
fn check_contract(raw: &RawManifest) -> Result<(), String> {
    let g = &raw.graphs;
    let memory_graphs = g.memory_attention.is_some() && g.memory_encoder.is_some();
    let any_memory =
        raw.memory.is_some() || g.memory_attention.is_some() || g.memory_encoder.is_some();
    match (raw.contract, raw.family.as_str()) {
        (CONTRACT_VERSION, "sam") => {
            if let Some(mem) = &raw.memory {
                if !memory_graphs {
                    return Err("a [memory] table needs [graphs] memory_attention and memory_encoder".into());
                }
                mem.check(CONTRACT_VERSION)?;
            } else if any_memory {
                return Err("memory graphs need a [memory] table".into());
            }
        }
        (CONTRACT_SAM2, "sam2") => {
            if raw.decoder_image {
                return Err(format!(
                    "decoder_image = true is for contract {CONTRACT_VERSION} (SAM); contract 2's decoder has its own inputs"
                ));
            }
            let Some(mem) = &raw.memory else {
                return Err("contract 2 needs a [memory] table".into());
            };
            if !memory_graphs {
                return Err(
                    "contract 2 needs [graphs] memory_attention and memory_encoder".into(),
                );
            }
            mem.check(CONTRACT_SAM2)?;
            if !raw.resolution.is_empty() {
                return Err("[[resolution]] rules are not supported with contract 2".into());
            }
        }
        (c @ (CONTRACT_VERSION | CONTRACT_SAM2), f) => {
            return Err(format!(
                "family = {f:?} does not go with contract = {c} (contract 1: \"sam\", contract 2: \"sam2\")"
            ))
        }
        (c, _) => {
            return Err(format!(
                "contract = {c} but this engine implements contracts {CONTRACT_VERSION} and {CONTRACT_SAM2}"
            ))
        }
    }
    Ok(())
}

/// True for a relative path without `..` (or a root or prefix) components.
pub(super) fn is_inside(file: &str) -> bool {
    use std::path::Component;
    let p = Path::new(file);
    !file.trim().is_empty()
        && !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
