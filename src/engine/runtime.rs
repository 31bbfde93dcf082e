//! ONNX Runtime loading and execution providers.
//!
//! Owns finding `libonnxruntime.so` (config, `ORT_DYLIB_PATH`, the `.venv` wheel), loading it
//! once per process through `ort::init_from`, and building sessions with the execution
//! providers of `[engine] providers` (TensorRT fp16 with an engine cache, CUDA, CPU). It never
//! lets `ort` guess a library path: with no path, `ort` panics at its first API call.

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// Errors while loading ONNX Runtime or creating sessions.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No candidate library file exists.
    #[error(
        "no ONNX Runtime library found; tried: {}. Set [engine] onnxruntime or ORT_DYLIB_PATH \
         to libonnxruntime.so, or install the onnxruntime wheel into .venv",
        tried.join("; ")
    )]
    NotFound {
        /// Every place looked at, with why it did not work.
        tried: Vec<String>,
    },
    /// The chosen library exists but does not load as ONNX Runtime.
    #[error("cannot load ONNX Runtime from {path}: {message} (candidates considered: {})", tried.join("; "))]
    Load {
        /// The file we tried to load.
        path: PathBuf,
        /// The loader's message.
        message: String,
        /// Every candidate considered, in order.
        tried: Vec<String>,
    },
    /// ONNX Runtime loaded but the environment could not be created.
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
    /// An unknown execution provider name in `[engine] providers`.
    #[error("unknown execution provider {0:?} (expected \"tensorrt\", \"cuda\" or \"cpu\")")]
    UnknownProvider(String),
    /// A session could not be built for a graph.
    #[error("cannot create a session for {path}: {message}")]
    Session {
        /// The ONNX file.
        path: PathBuf,
        /// ONNX Runtime's message.
        message: String,
    },
}

/// An execution provider that `[engine] providers` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// NVIDIA TensorRT (fp16, engine cache under `data_dir/cache/trt`).
    TensorRt,
    /// NVIDIA CUDA.
    Cuda,
    /// ONNX Runtime's default CPU provider.
    Cpu,
}

impl Provider {
    /// Parses a config name: "tensorrt", "cuda" or "cpu".
    pub fn parse(name: &str) -> Result<Provider, RuntimeError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "tensorrt" | "trt" => Ok(Provider::TensorRt),
            "cuda" => Ok(Provider::Cuda),
            "cpu" => Ok(Provider::Cpu),
            other => Err(RuntimeError::UnknownProvider(other.to_string())),
        }
    }

    /// The config name of this provider.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the ONNX Runtime library comes from, in order of precedence.
#[derive(Debug, Clone, Default)]
pub struct LibrarySearch {
    /// `[engine] onnxruntime` (relative paths are taken as given, against the working directory).
    pub configured: Option<PathBuf>,
    /// The value of `ORT_DYLIB_PATH`, if set.
    pub env_var: Option<PathBuf>,
    /// Folders whose `.venv` is globbed for the onnxruntime wheel's library.
    pub venv_roots: Vec<PathBuf>,
}

impl LibrarySearch {
    /// The default search: the given configured path, `ORT_DYLIB_PATH`, and the `.venv` of the
    /// working directory, its ancestors, and the executable's ancestors (which covers
    /// `target/debug/proxyseg` and test binaries in `target/debug/deps`).
    pub fn standard(configured: Option<&Path>) -> LibrarySearch {
        let mut roots: Vec<PathBuf> = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            roots.extend(cwd.ancestors().take(4).map(Path::to_path_buf));
        }
        if let Ok(exe) = std::env::current_exe() {
            roots.extend(exe.ancestors().skip(1).take(5).map(Path::to_path_buf));
        }
        let mut seen = std::collections::HashSet::new();
        roots.retain(|r| seen.insert(r.clone()));
        LibrarySearch {
            configured: configured.map(Path::to_path_buf),
            env_var: std::env::var_os("ORT_DYLIB_PATH")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            venv_roots: roots,
        }
    }

    /// Picks the library to load. An explicit choice (config, then environment) wins and is
    /// never silently replaced by another file; only without one is the `.venv` searched.
    /// Returns the path and the list of everything considered, for error messages.
    pub fn resolve(&self) -> Result<(PathBuf, Vec<String>), RuntimeError> {
        let mut tried = Vec::new();
        for (what, p) in [
            ("[engine] onnxruntime", &self.configured),
            ("ORT_DYLIB_PATH", &self.env_var),
        ] {
            if let Some(p) = p {
                if p.is_file() {
                    tried.push(format!("{what} = {}", p.display()));
                    return Ok((p.clone(), tried));
                }
                tried.push(format!("{what} = {} (no such file)", p.display()));
                return Err(RuntimeError::NotFound { tried });
            }
            tried.push(format!("{what} (not set)"));
        }
        for root in &self.venv_roots {
            let pattern = format!(
                "{}/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*",
                glob::Pattern::escape(&root.to_string_lossy())
            );
            let mut found: Vec<PathBuf> = glob::glob(&pattern)
                .map(|paths| {
                    paths
                        .filter_map(Result::ok)
                        .filter(|p| p.is_file())
                        .collect()
                })
                .unwrap_or_default();
            // Prefer the longest (most versioned) name, deterministically.
            found.sort();
            if let Some(p) = found.pop() {
                tried.push(format!("{pattern} -> {}", p.display()));
                return Ok((p, tried));
            }
            tried.push(format!("{pattern} (no match)"));
        }
        Err(RuntimeError::NotFound { tried })
    }
}

/// ONNX Runtime allows one environment per process, and `ort` refuses to build a second
/// one even after the first was dropped: the first one built is kept for the whole process.
static PROCESS_ENV: std::sync::Mutex<Option<(Environment, PathBuf)>> = std::sync::Mutex::new(None);

/// Loads the library and builds the environment the first time; later calls reuse them
/// (a different library asked for later only takes effect after a restart, and is logged).
fn process_environment(search: &LibrarySearch) -> Result<(Environment, PathBuf), RuntimeError> {
    let mut guard = PROCESS_ENV
        .lock()
        .map_err(|_| RuntimeError::Environment("environment lock poisoned".into()))?;
    if let Some((env, lib)) = guard.as_ref() {
        if let Some(wanted) = search.configured.as_ref().or(search.env_var.as_ref()) {
            if wanted != lib {
                tracing::warn!(loaded = %lib.display(), wanted = %wanted.display(), "ONNX Runtime is already loaded in this process; the other library takes effect after a restart");
            }
        }
        return Ok((env.clone(), lib.clone()));
    }
    let (library, tried) = search.resolve()?;
    let builder = ort::init_from(&library).map_err(|e| RuntimeError::Load {
        path: library.clone(),
        message: e.to_string(),
        tried: tried.clone(),
    })?;
    let env = builder
        .with_name("proxyseg")
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    *guard = Some((env.clone(), library.clone()));
    Ok((env, library))
}

/// A loaded ONNX Runtime with its environment and the provider preference.
pub struct Runtime {
    env: Environment,
    library: PathBuf,
    providers: Vec<Provider>,
    threads: Threads,
    trt_cache: PathBuf,
    int8: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("providers", &self.providers)
            .field("threads", &self.threads)
            .field("int8", &self.int8)
            .finish()
    }
}

/// How a session's graph runs use CPU threads (`[engine] intra_threads`, `[engine] spinning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Threads {
    /// Threads inside one graph run (0: ONNX Runtime's default, one per core).
    pub intra: usize,
    /// Whether a session's idle threads spin (busy-wait) for work between runs. Each session
    /// has its own pool, so with spinning one graph's waiting threads take cores from the next
    /// graph of the same image (encoder, prompt generator, decoder run one after another).
    pub spinning: bool,
}

/// What a session really got: the provider that took the graph first, and the providers
/// that were asked for but could not be used, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReport {
    /// The provider that ONNX Runtime assigns nodes to first (CPU takes whatever is left).
    pub active: Provider,
    /// Every provider registered, in order of preference (empty: CPU only).
    pub registered: Vec<Provider>,
    /// Providers skipped, each with a reason.
    pub skipped: Vec<(Provider, String)>,
}

impl Runtime {
    /// Loads ONNX Runtime (once per process; later calls reuse the first library loaded) and
    /// creates the environment.
    ///
    /// `trt_cache` is the TensorRT engine cache folder (`data_dir/cache/trt`); it is created
    /// only when TensorRT is actually used. `int8`: a graph that runs on the CPU provider may
    /// use its bundle's int8 variant (`[engine] int8`, the manifest's `[int8]`).
    pub fn load(
        search: &LibrarySearch,
        providers: &[String],
        threads: Threads,
        trt_cache: PathBuf,
        int8: bool,
    ) -> Result<Runtime, RuntimeError> {
        let providers = if providers.is_empty() {
            vec![Provider::Cpu]
        } else {
            providers
                .iter()
                .map(|p| Provider::parse(p))
                .collect::<Result<Vec<_>, _>>()?
        };
        let (env, library) = process_environment(search)?;
        tracing::info!(library = %library.display(), providers = ?providers, intra_threads = threads.intra, spinning = threads.spinning, "ONNX Runtime loaded");
        Ok(Runtime {
            env,
            library,
            providers,
            threads,
            trt_cache,
            int8,
        })
    }

    /// Whether a graph on the CPU provider may use its bundle's int8 variant.
    pub fn int8(&self) -> bool {
        self.int8
    }

    /// Whether a provider before "cpu" in the preference is built into the loaded library (it
    /// may still fail to take a graph, e.g. without a GPU device; [`ProviderReport`] says).
    pub fn gpu_built(&self) -> bool {
        self.providers
            .iter()
            .take_while(|p| **p != Provider::Cpu)
            .any(|p| match p {
                Provider::TensorRt => ep::TensorRT::is_available().unwrap_or(false),
                Provider::Cuda => ep::CUDA::is_available().unwrap_or(false),
                Provider::Cpu => false,
            })
    }

    /// The library file in use (the process keeps the first one loaded).
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The provider preference, in order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Builds a session for one ONNX file with the configured providers, and reports which
    /// provider it really got.
    pub fn session(&self, path: &Path) -> Result<(Session, ProviderReport), RuntimeError> {
        let err = |e: &dyn std::fmt::Display| RuntimeError::Session {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let mut skipped: Vec<(Provider, String)> = Vec::new();
        let mut excluded: Vec<Provider> = Vec::new();
        loop {
            let mut builder = Session::builder(&self.env)
                .and_then(|b| {
                    b.with_optimization_level(GraphOptimizationLevel::All)
                        .map_err(Into::into)
                })
                .map_err(|e| err(&e))?;
            if self.threads.intra > 0 {
                builder = builder
                    .with_intra_threads(self.threads.intra)
                    .map_err(|e| err(&e))?;
            }
            builder = builder
                .with_intra_op_spinning(self.threads.spinning)
                .map_err(|e| err(&e))?;
            // Every usable provider up to "cpu" is registered in order: ORT gives each node to
            // the first that takes it (TensorRT, then CUDA for what TensorRT refuses, then CPU).
            let mut registered = Vec::new();
            for &p in &self.providers {
                if p == Provider::Cpu {
                    break;
                }
                if excluded.contains(&p) {
                    continue;
                }
                match self.register(p, &mut builder) {
                    Ok(()) => registered.push(p),
                    Err(reason) => {
                        skipped.push((p, reason));
                        excluded.push(p);
                    }
                }
            }
            match builder.commit_from_file(path) {
                Ok(session) => {
                    let active = registered.first().copied().unwrap_or(Provider::Cpu);
                    return Ok((
                        session,
                        ProviderReport {
                            active,
                            registered,
                            skipped,
                        },
                    ));
                }
                // A GPU provider that registers but cannot build the graph: retry without it.
                Err(e) if !registered.is_empty() => {
                    let p = registered[0];
                    skipped.push((p, format!("session creation failed: {e}")));
                    excluded.push(p);
                }
                Err(e) => return Err(err(&e)),
            }
        }
    }

    fn register(
        &self,
        p: Provider,
        builder: &mut ort::session::builder::SessionBuilder,
    ) -> Result<(), String> {
        const NOT_BUILT: &str =
            "not built into this ONNX Runtime library (install onnxruntime-gpu)";
        match p {
            Provider::Cpu => Ok(()),
            Provider::TensorRt => {
                if !ep::TensorRT::is_available().unwrap_or(false) {
                    return Err(NOT_BUILT.into());
                }
                std::fs::create_dir_all(&self.trt_cache).map_err(|e| {
                    format!(
                        "cannot create engine cache {}: {e}",
                        self.trt_cache.display()
                    )
                })?;
                ep::TensorRT::default()
                    .with_fp16(true)
                    // LayerNorm overflows in fp16 (FIELD-NOTES): keep norms in fp32.
                    .with_layer_norm_fp32_fallback(true)
                    .with_engine_cache(true)
                    .with_engine_cache_path(self.trt_cache.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(self.trt_cache.display())
                    .register(builder)
                    .map_err(|e| e.to_string())
            }
            Provider::Cuda => {
                if !ep::CUDA::is_available().unwrap_or(false) {
                    return Err(NOT_BUILT.into());
                }
                ep::CUDA::default()
                    .register(builder)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_that_does_not_exist_is_not_replaced() {
        let s = LibrarySearch {
            configured: Some("/nonexistent/libonnxruntime.so".into()),
            env_var: Some("/also/missing.so".into()),
            venv_roots: vec![],
        };
        let e = s.resolve().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/libonnxruntime.so (no such file)"),
            "{e}"
        );
    }

    #[test]
    fn empty_search_names_what_was_tried() {
        let s = LibrarySearch {
            configured: None,
            env_var: None,
            venv_roots: vec!["/nowhere".into()],
        };
        let e = s.resolve().unwrap_err().to_string();
        assert!(
            e.contains("ORT_DYLIB_PATH (not set)") && e.contains("/nowhere/.venv"),
            "{e}"
        );
    }

    #[test]
    fn provider_names() {
        assert_eq!(Provider::parse("TensorRT").unwrap(), Provider::TensorRt);
        assert!(Provider::parse("gpu").is_err());
    }
}
