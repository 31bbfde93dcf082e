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

mod check;
mod manifest;
mod registry;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;

pub(crate) use check::Dim;
pub use check::VarDims;
use check::{check_metadata, check_signature, check_weights, fingerprint};
pub use manifest::{GraphFiles, Manifest, Weights};
pub use registry::{BundleRegistry, RefusedBundle};

use super::memory::{refs, MemorySpec};
use super::runtime::{Provider, ProviderReport, Runtime};

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

    /// All six kinds: contract 1's four, then the memory graphs.
    pub const EVERY: [GraphKind; 6] = [
        GraphKind::ImageEncoder,
        GraphKind::SupportEncoder,
        GraphKind::PromptGenerator,
        GraphKind::MaskDecoder,
        GraphKind::MemoryAttention,
        GraphKind::MemoryEncoder,
    ];

    /// The kind of a contract name (`"image_encoder"`, ...), None for any other text.
    pub fn parse(name: &str) -> Option<GraphKind> {
        GraphKind::EVERY.into_iter().find(|k| k.as_str() == name)
    }

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

/// One loaded graph with its session and provider.
pub struct Graph {
    /// Which graph.
    pub kind: GraphKind,
    /// The ONNX file.
    pub path: PathBuf,
    /// The provider it got.
    pub provider: ProviderReport,
    /// True when `path` is the graph's CPU int8 variant (manifest `[int8]`, `[engine] int8`).
    pub int8: bool,
    pub(crate) session: Mutex<Session>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("provider", &self.provider)
            .field("int8", &self.int8)
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

/// Opens a bundle's graphs one by one, checking each against the manifest and recording the
/// static sizes of B, N and K they fix.
struct Loader<'a> {
    dir: &'a Path,
    runtime: &'a Runtime,
    m: &'a Manifest,
    dims: VarDims,
}

impl Loader<'_> {
    /// One graph: inside the bundle, present, metadata_props and signature as expected.
    fn graph(
        &mut self,
        kind: GraphKind,
        file: &str,
        inputs: &[(&str, &[Dim])],
        outputs: &[(&str, &[Dim])],
    ) -> Result<Graph, BundleError> {
        let path = self.dir.join(file);
        let bad = |message: String| BundleError::Contract {
            path: path.clone(),
            message,
        };
        if file.is_empty() || file.contains("..") || Path::new(file).is_absolute() {
            return Err(bad(format!(
                "graph file name {file:?} must stay inside the bundle"
            )));
        }
        if !path.is_file() {
            return Err(bad(format!("{} graph file is missing", kind.as_str())));
        }
        let (session, provider, path, int8) = self.open(kind, path)?;
        let bad = |message: String| BundleError::Contract {
            path: path.clone(),
            message,
        };
        check_metadata(&session, self.m).map_err(&bad)?;
        let names = |v: &[ort::value::Outlet]| -> Vec<(String, ort::value::ValueType)> {
            v.iter()
                .map(|o| (o.name().to_string(), o.dtype().clone()))
                .collect()
        };
        let (ins, outs) = (names(session.inputs()), names(session.outputs()));
        check_signature("input", &ins, inputs, &mut self.dims).map_err(&bad)?;
        check_signature("output", &outs, outputs, &mut self.dims).map_err(&bad)?;
        log_provider(self.m, kind, &provider, int8);
        Ok(Graph {
            kind,
            path,
            provider,
            int8,
            session: Mutex::new(session),
        })
    }

    /// A session for one graph: its int8 variant where the manifest lists one, the runtime
    /// allows it and the graph runs on the CPU provider (no GPU provider is built in, or the
    /// float graph's session fell back to the CPU); else the float graph. A listed variant
    /// that setup did not build is logged and the float graph used.
    fn open(
        &self,
        kind: GraphKind,
        path: PathBuf,
    ) -> Result<(Session, ProviderReport, PathBuf, bool), BundleError> {
        let variant = (self.runtime.int8() && self.m.int8.contains(&kind))
            .then(|| int8_path(&path))
            .filter(|v| {
                let there = v.is_file();
                if !there {
                    tracing::warn!(bundle = %self.m.name, graph = kind.as_str(), missing = %v.display(),
                        "int8 graph not built (scripts/model/derive_int8.py); using the float graph");
                }
                there
            });
        if let Some(v) = &variant {
            if !self.runtime.gpu_built() {
                let (session, report) = self.runtime.session(v)?;
                return Ok((session, report, v.clone(), true));
            }
        }
        let (session, report) = self.runtime.session(&path)?;
        match variant {
            Some(v) if report.active == Provider::Cpu => {
                let (session, r8) = self.runtime.session(&v)?;
                let report = ProviderReport {
                    skipped: report.skipped,
                    ..r8
                };
                Ok((session, report, v, true))
            }
            _ => Ok((session, report, path, false)),
        }
    }

    /// image_encoder (with contract 2's high-resolution outputs), support_encoder and
    /// prompt_generator: the same in both contracts but for the encoder's outputs.
    fn common_graphs(&mut self) -> Result<[Graph; 3], BundleError> {
        use Dim::{Is, Var};
        let m = self.m;
        let (s, c, h, w) = (m.input_size, m.embed_dim, m.embed_size[0], m.embed_size[1]);
        let mut encoder_out: Vec<(&str, Vec<Dim>)> =
            vec![("image_embeddings", vec![Var("B"), Is(c), Is(h), Is(w)])];
        if let Some([c0, c1]) = m.memory.as_ref().and_then(|mem| mem.high_res_channels) {
            encoder_out.push((
                "high_res_feats_0",
                vec![Var("B"), Is(c0), Is(4 * h), Is(4 * w)],
            ));
            encoder_out.push((
                "high_res_feats_1",
                vec![Var("B"), Is(c1), Is(2 * h), Is(2 * w)],
            ));
        }
        let g = &m.graphs;
        let image_encoder = self.graph(
            GraphKind::ImageEncoder,
            &g.image_encoder,
            &[("image", &[Var("B"), Is(3), Is(s), Is(s)])],
            &refs(&encoder_out),
        )?;
        let support_encoder = self.graph(
            GraphKind::SupportEncoder,
            &g.support_encoder,
            &[
                ("support_images", &[Var("N"), Is(3), Is(s), Is(s)]),
                ("support_masks", &[Var("N"), Var("K"), Is(s), Is(s)]),
                ("support_embeddings", &[Var("N"), Is(c), Is(h), Is(w)]),
            ],
            &[("support_keys", &[]), ("support_values", &[])],
        )?;
        let prompt_generator = self.graph(
            GraphKind::PromptGenerator,
            &g.prompt_generator,
            &[
                ("image_embeddings", &[Is(1), Is(c), Is(h), Is(w)]),
                ("support_keys", &[]),
                ("support_values", &[]),
            ],
            &[("prompt_tokens", &[Var("K"), Is(m.prompt_tokens), Is(c)])],
        )?;
        Ok([image_encoder, support_encoder, prompt_generator])
    }

    /// Contract 1's mask decoder: image embeddings and prompt tokens in (and the model input
    /// `image` when the manifest says `decoder_image`).
    fn sam_decoder(&mut self) -> Result<Graph, BundleError> {
        use Dim::{Is, Var};
        let m = self.m;
        let (s, c, h, w, t) = (
            m.input_size,
            m.embed_dim,
            m.embed_size[0],
            m.embed_size[1],
            m.prompt_tokens,
        );
        let mut inputs: Vec<(&str, Vec<Dim>)> = vec![
            ("image_embeddings", vec![Is(1), Is(c), Is(h), Is(w)]),
            ("prompt_tokens", vec![Var("K"), Is(t), Is(c)]),
        ];
        if m.decoder_image {
            inputs.push(("image", vec![Is(1), Is(3), Is(s), Is(s)]));
        }
        self.graph(
            GraphKind::MaskDecoder,
            &m.graphs.mask_decoder,
            &refs(&inputs),
            &[
                ("mask_logits", &[Var("K"), Is(1), Is(4 * h), Is(4 * w)]),
                ("iou_scores", &[Var("K"), Is(1)]),
            ],
        )
    }

    /// Contract 2's mask decoder and memory graphs.
    fn sam2_graphs(&mut self, mem: &MemorySpec) -> Result<(Graph, MemoryGraphs), BundleError> {
        let m = self.m;
        let g = &m.graphs;
        let sig = super::memory::signatures(mem, m.embed_dim, m.prompt_tokens, m.embed_size);
        let decoder = self.graph(
            GraphKind::MaskDecoder,
            &g.mask_decoder,
            &refs(&sig.decoder_in),
            &refs(&sig.decoder_out),
        )?;
        let attention = self.graph(
            GraphKind::MemoryAttention,
            g.memory_attention.as_deref().unwrap_or_default(),
            &refs(&sig.attention_in),
            &refs(&sig.attention_out),
        )?;
        let encoder = self.graph(
            GraphKind::MemoryEncoder,
            g.memory_encoder.as_deref().unwrap_or_default(),
            &refs(&sig.encoder_in),
            &refs(&sig.encoder_out),
        )?;
        Ok((decoder, MemoryGraphs { attention, encoder }))
    }
}

impl Loader<'_> {
    /// The proxy memory mode's two graphs (contract 1 with `[memory]`).
    fn proxy_memory_graphs(&mut self, mem: &MemorySpec) -> Result<MemoryGraphs, BundleError> {
        let m = self.m;
        let sig = super::memory::proxy::signatures(mem, m.embed_dim, m.embed_size);
        let attention = self.graph(
            GraphKind::MemoryAttention,
            m.graphs.memory_attention.as_deref().unwrap_or_default(),
            &refs(&sig.attention_in),
            &refs(&sig.attention_out),
        )?;
        let encoder = self.graph(
            GraphKind::MemoryEncoder,
            m.graphs.memory_encoder.as_deref().unwrap_or_default(),
            &refs(&sig.encoder_in),
            &refs(&sig.encoder_out),
        )?;
        Ok(MemoryGraphs { attention, encoder })
    }
}

/// A K the graphs fix must be the manifest's max_objects, an N at most its max_pairs.
fn check_fixed_dims(m: &Manifest, dims: &VarDims, mpath: &Path) -> Result<(), BundleError> {
    let bad = |message: String| BundleError::Contract {
        path: mpath.to_owned(),
        message,
    };
    if let Some(k) = dims.objects {
        if k != m.max_objects {
            return Err(bad(format!(
                "graphs fix K = {k} but max_objects = {}",
                m.max_objects
            )));
        }
    }
    if let Some(n) = dims.pairs {
        if n > m.max_pairs {
            return Err(bad(format!(
                "graphs fix N = {n} but max_pairs = {}",
                m.max_pairs
            )));
        }
    }
    Ok(())
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
        let mut loader = Loader {
            dir,
            runtime,
            m: &manifest,
            dims: VarDims::default(),
        };
        let [image_encoder, support_encoder, prompt_generator] = loader.common_graphs()?;
        let (mask_decoder, memory) = match &manifest.memory {
            None => (loader.sam_decoder()?, None),
            Some(mem) if manifest.contract == CONTRACT_SAM2 => {
                let (decoder, memory) = loader.sam2_graphs(mem)?;
                (decoder, Some(memory))
            }
            Some(mem) => (
                loader.sam_decoder()?,
                Some(loader.proxy_memory_graphs(mem)?),
            ),
        };
        let dims = loader.dims;
        check_fixed_dims(&manifest, &dims, &mpath)?;
        let mut bundle = Bundle {
            dir: dir.to_owned(),
            manifest,
            dims,
            fingerprint: String::new(),
            image_encoder,
            support_encoder,
            prompt_generator,
            mask_decoder,
            memory,
        };
        // The files really loaded: an int8 encoder gives other embeddings, so other contexts.
        let files: Vec<&Path> = bundle.graphs().map(|g| g.path.as_path()).collect();
        bundle.fingerprint = fingerprint(&text, &files);
        Ok(bundle)
    }

    /// Every loaded graph, in [`GraphKind::EVERY`] order (the memory graphs when present).
    fn graphs(&self) -> impl Iterator<Item = &Graph> {
        GraphKind::EVERY.into_iter().filter_map(|k| self.graph(k))
    }

    /// "name@version", the bundle's identity in caches and logs.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    /// The provider each graph got.
    pub fn providers(&self) -> Vec<(GraphKind, Provider)> {
        self.graphs().map(|g| (g.kind, g.provider.active)).collect()
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

    /// True when the bundle can track a sequence's frames through a memory bank: a
    /// contract-2 bundle, or a contract-1 bundle with the proxy memory mode.
    pub fn tracks_frames(&self) -> bool {
        self.memory.is_some()
    }

    /// Why a sequence of this support set's objects (`labels`) cannot be tracked through the
    /// memory bank, or None when it can: a bundle without memory graphs cannot; nor can the
    /// proxy memory mode of a contract-1 bundle when one of its `[[resolution]]` rules applies to
    /// the set's objects (the memory mode has no second passes: those objects keep them, frame
    /// by frame).
    pub fn track_refusal(&self, labels: &[&str]) -> Option<&'static str> {
        if self.memory.is_none() {
            return Some("the bundle cannot track frames (no memory graphs)");
        }
        if !self.always_tracks()
            && !super::views::match_rules(&self.manifest.resolution, labels).is_empty()
        {
            return Some(
                "the bundle's resolution views apply to this set's objects and its memory mode has none",
            );
        }
        None
    }

    /// True for a contract-2 bundle, which tracks every call's frames (a still image is a
    /// one-frame sequence); a contract-1 bundle tracks only the sequences the pipeline sends.
    pub fn always_tracks(&self) -> bool {
        self.manifest.contract == CONTRACT_SAM2
    }
}

/// `image_encoder.onnx` -> `image_encoder.int8.onnx`, beside it (scripts/model/derive_int8.py).
fn int8_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}.int8.onnx"))
}

fn log_provider(m: &Manifest, kind: GraphKind, p: &ProviderReport, int8: bool) {
    for (skipped, why) in &p.skipped {
        if why.starts_with("not built") {
            tracing::info!(bundle = %m.name, graph = kind.as_str(), provider = %skipped, reason = %why, "execution provider not used");
        } else {
            tracing::warn!(bundle = %m.name, graph = kind.as_str(), provider = %skipped, reason = %why, "execution provider not used");
        }
    }
    tracing::info!(bundle = %m.name, version = %m.version, graph = kind.as_str(), provider = %p.active, int8, "graph loaded");
}
