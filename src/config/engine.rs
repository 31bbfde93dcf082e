//! `[engine]`: ONNX Runtime, execution providers, workers and the model bundles
//! ([`DEFAULT_BUNDLE`], [`check_bundle_name`]).

use serde::Deserialize;
use std::path::PathBuf;

/// `[engine]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Path of libonnxruntime.so; else ORT_DYLIB_PATH, else the wheel in `.venv`.
    pub onnxruntime: Option<PathBuf>,
    /// Execution providers in order of preference: "tensorrt", "cuda", "cpu".
    pub providers: Vec<String>,
    /// Folder holding one sub-folder per model bundle (`<name>/manifest.toml`).
    pub models_dir: PathBuf,
    /// Threads ONNX Runtime may use inside one graph run (0 = ORT default).
    pub intra_threads: usize,
    /// Whether ONNX Runtime's idle threads busy-wait for the next task (its default). Default
    /// false: every graph has its own thread pool, and the graphs of one image run one after
    /// another, so the spinning threads of the graph that just finished take cores from the
    /// next one. On 2 cores, spinning off took a 512 x 512 CT slice from 499-547 to 454-475 ms
    /// on the int8 graphs (scripts/bench/engine/RESULTS.md). true may help a host with cores
    /// to spare.
    pub spinning: bool,
    /// Number of inference jobs that run at the same time.
    pub workers: usize,
    /// Most frames per image_encoder run when the graph's batch is dynamic.
    pub batch: usize,
    /// The model bundle (folder name under `models_dir`) for a support set that names none:
    /// a bundled `supportset.toml` without `bundle`, a set created or imported through the
    /// admin API without one, `proxyseg segment` on such a folder. Sets that name a bundle
    /// keep it. `proxyseg config check` reports an error when `models_dir/<default_bundle>/`
    /// holds no `manifest.toml`; the daemon starts anyway and logs it.
    pub default_bundle: String,
    /// A graph that runs on the CPU provider uses its bundle's int8 variant when the manifest
    /// lists one under `[int8]` and setup built it (`<stem>.int8.onnx`; a missing file is
    /// logged and the float graph used). Graphs on TensorRT or CUDA keep the float graph.
    /// Default true: on 2 CPU cores the shipped LiteMedSAM encoder runs in about 60 % of the
    /// time, at the Dice its `evaluation.md` states. false: the float graphs everywhere.
    pub int8: bool,
    /// Segment a frame a second time mirrored left-right where the bundle's manifest has a
    /// `[mirror]` table (`docs/bundles.md`), averaging the two looks for its objects. Default
    /// true: the shipped LiteMedSAM bundle gains ~0.7-0.9 mean Dice and its spread over single
    /// support pairs falls from 1.27 to 0.77. It doubles the time per frame: false gives one
    /// look, at the Dice of its evaluation.md's `no_mirror` column (a CPU host that needs the
    /// time more). Memory mode always takes one look.
    pub mirror: bool,
}

/// The default of `[engine] default_bundle`: the LiteMedSAM bundle that ships with proxyseg.
pub const DEFAULT_BUNDLE: &str = "litemedsam-ppg";

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            onnxruntime: None,
            providers: vec!["tensorrt".into(), "cuda".into(), "cpu".into()],
            models_dir: PathBuf::from("models"),
            intra_threads: 0,
            spinning: false,
            workers: 1,
            batch: 4,
            default_bundle: DEFAULT_BUNDLE.into(),
            int8: true,
            mirror: true,
        }
    }
}

/// A bundle name as `[engine] default_bundle` takes it: a plain folder name under
/// `models_dir` (no path separators, not `.` or `..`).
pub fn check_bundle_name(name: &str) -> Result<(), BundleNameError> {
    if name.trim().is_empty() {
        return Err(BundleNameError::Empty);
    }
    if name != name.trim() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(BundleNameError::NotAFolderName(name.to_owned()));
    }
    Ok(())
}

/// Why a text is not a bundle name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleNameError {
    /// Empty, or only spaces.
    #[error("must name a bundle (a folder under engine.models_dir)")]
    Empty,
    /// A path, `.`, `..` or surrounded by spaces.
    #[error("{0:?} is not a plain folder name under engine.models_dir")]
    NotAFolderName(String),
}
