//! The inference engine: model bundles on ONNX Runtime, the support-context cache, and
//! segmentation of display frames into per-object masks at the source size.
//!
//! Owns everything between decoded pixels ([`crate::dicom::pixels`]) and masks. It never
//! touches SQLite, the network or DICOM SEG: support sets arrive as [`SupportSet`] values and
//! results leave as [`Segmentation`] values. Graph runs happen on `spawn_blocking` threads
//! behind a semaphore of `[engine] workers`, so async tasks (ingest) never stall on ORT.
//!
//! ```no_run
//! # async fn demo(cfg: &proxyseg::config::Config, set: &proxyseg::engine::SupportSet) -> Result<(), proxyseg::engine::EngineError> {
//! use proxyseg::engine::Engine;
//! let engine = Engine::new(&cfg.engine, &cfg.storage.data_dir)?;
//! let frames = proxyseg::dicom::pixels::frames_from_file("ct.dcm".as_ref())?;
//! let seg = engine.segment("phantom-tiny", set, frames).await?;
//! println!("{} frames, {:?}", seg.frames.len(), seg.timings);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bundle;
pub mod context;
pub mod ellipse;
pub mod embedding_cache;
pub mod infer;
pub mod memory;
pub mod mirror;
pub mod offline;
pub mod preprocess;
pub mod runtime;
pub mod shape;
pub mod support;
pub mod support_cache;
pub mod threshold;
pub mod view_pass;
pub mod views;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub use bundle::{Bundle, BundleError, BundleRegistry, GraphKind, Manifest, RefusedBundle};
pub use infer::{
    FrameResult, FrameTensors, SegmentOptions, StageTimings, SupportContext, Tensor, ViewPass,
    ViewTensors,
};
pub use memory::{MemoryBank, MemorySpec};
pub use preprocess::Geometry;
pub use runtime::{LibrarySearch, Provider, RuntimeError};
pub use support::{Mask, SupportObject, SupportPair, SupportSet};
pub use support_cache::{ContextKey, SupportCacheStats};
pub use views::ResolutionRule;

use crate::config::EngineConfig;
use crate::dicom::pixels::{Frame, PixelError};
use support_cache::SupportCache;

/// Support-image embeddings kept for reuse across support contexts (256 MiB: 256 LiteMedSAM
/// or SAM 2 embeddings of 1 MiB at 256 / 1024 input).
const EMBEDDING_CACHE_BYTES: usize = 256 << 20;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// ONNX Runtime could not be loaded or a session not created.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The requested bundle is not served.
    #[error("model bundle {name:?} is not served (served: {served:?}; refused: {refused})")]
    UnknownBundle {
        /// The requested name.
        name: String,
        /// Names that are served.
        served: Vec<String>,
        /// Refused bundles with reasons.
        refused: String,
    },
    /// A support set without pairs.
    #[error("support set {name:?} has no image/mask pairs")]
    EmptySupportSet {
        /// The set.
        name: String,
    },
    /// A support set that does not fit the bundle or is inconsistent.
    #[error("support set {name:?}: {message}")]
    SupportSet {
        /// The set.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// No frames to segment.
    #[error("nothing to segment: no frames")]
    NoFrames,
    /// A frame whose buffer does not match its size or has an unsupported channel count.
    #[error("frame {index} is malformed: {message}")]
    BadFrame {
        /// Position in the input list.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// A graph run failed or returned unexpected shapes.
    #[error("{graph} failed: {message}")]
    Inference {
        /// The graph.
        graph: &'static str,
        /// ONNX Runtime's message or the shape problem.
        message: String,
    },
    /// Pixels could not be decoded (offline command).
    #[error(transparent)]
    Pixels(#[from] PixelError),
    /// Offline command input/output problems.
    #[error("{0}")]
    Offline(String),
    /// An internal failure (a task panicked or a lock was poisoned).
    #[error("internal engine error: {0}")]
    Internal(String),
}

impl EngineError {
    /// True when retrying the same request cannot succeed (bad input, unknown bundle,
    /// inconsistent support set): the pipeline fails the job with this message. False for
    /// runtime trouble (a graph run, a task, the library), which may pass on a retry.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            EngineError::Inference { .. } | EngineError::Internal(_) | EngineError::Runtime(_)
        )
    }
}

/// The result of segmenting a list of frames with one support set.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// "name@version" of the bundle used.
    pub bundle: String,
    /// The support context used.
    pub context: ContextKey,
    /// The objects, in mask order.
    pub objects: Vec<SupportObject>,
    /// One result per input frame, in input order.
    pub frames: Vec<FrameResult>,
    /// Earlier frames of a tracked sequence segmented again by this call, each with its
    /// position in the sequence as `index`: they replace the results given for those frames
    /// before (frame 0 after its revisit, [`memory::MemorySpec::revisit_first`]). Empty for
    /// frames segmented one by one.
    pub revised: Vec<FrameResult>,
    /// Time per stage (support_context is non-zero only when a context was computed or loaded
    /// now; `views` is the resolution views' second passes).
    pub timings: StageTimings,
}

struct Inner {
    registry: BundleRegistry,
    cache: SupportCache,
    embeddings: embedding_cache::EmbeddingCache,
    workers: tokio::sync::Semaphore,
    batch: usize,
    runtime: runtime::Runtime,
    /// The form the bundle's `[[shape]]` rules give each object of a support set, per context.
    shapes: shape::FormMemo,
    /// `[engine] mirror`: whether a bundle's `[mirror]` second look runs.
    mirror: bool,
}

/// The engine facade; cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("runtime", &self.inner.runtime)
            .field("bundles", &self.bundle_names())
            .finish()
    }
}

impl Engine {
    /// Loads ONNX Runtime and every bundle under `[engine] models_dir`.
    ///
    /// Fails only when ONNX Runtime cannot be loaded (the error names every path tried). Bad
    /// bundles are refused with reasons ([`Engine::refused`]) and the others served.
    /// The TensorRT engine cache goes to `data_dir/cache/trt`, support contexts to
    /// `data_dir/cache/support`.
    pub fn new(cfg: &EngineConfig, data_dir: &Path) -> Result<Engine, EngineError> {
        let search = LibrarySearch::standard(cfg.onnxruntime.as_deref());
        let rt = runtime::Runtime::load(
            &search,
            &cfg.providers,
            runtime::Threads {
                intra: cfg.intra_threads,
                spinning: cfg.spinning,
            },
            data_dir.join("cache").join("trt"),
            cfg.int8,
        )?;
        let registry = BundleRegistry::load(&cfg.models_dir, &rt);
        if registry.served().next().is_none() {
            tracing::warn!(models_dir = %cfg.models_dir.display(), refused = registry.refused().len(), "no model bundle is served");
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                registry,
                cache: SupportCache::new(data_dir.join("cache").join("support")),
                embeddings: embedding_cache::EmbeddingCache::new(EMBEDDING_CACHE_BYTES),
                workers: tokio::sync::Semaphore::new(cfg.workers.max(1)),
                batch: cfg.batch.max(1),
                runtime: rt,
                shapes: shape::FormMemo::default(),
                mirror: cfg.mirror,
            }),
        })
    }

    /// Names of the served bundles.
    pub fn bundle_names(&self) -> Vec<String> {
        self.inner
            .registry
            .served()
            .map(|b| b.manifest.name.clone())
            .collect()
    }

    /// A served bundle.
    pub fn bundle(&self, name: &str) -> Result<Arc<Bundle>, EngineError> {
        self.inner
            .registry
            .get(name)
            .ok_or_else(|| EngineError::UnknownBundle {
                name: name.to_string(),
                served: self.bundle_names(),
                refused: if self.inner.registry.refused().is_empty() {
                    "none".into()
                } else {
                    self.inner
                        .registry
                        .refused()
                        .iter()
                        .map(|r| format!("{}: {}", r.dir.display(), r.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            })
    }

    /// Bundles that were found but refused, with reasons.
    pub fn refused(&self) -> &[RefusedBundle] {
        self.inner.registry.refused()
    }

    /// The ONNX Runtime library file in use.
    pub fn library(&self) -> &Path {
        self.inner.runtime.library()
    }

    /// Support-context cache counters (for metrics).
    pub fn support_stats(&self) -> SupportCacheStats {
        let (computed, reused) = self.inner.embeddings.counts();
        SupportCacheStats {
            embeddings_computed: computed,
            embeddings_reused: reused,
            ..self.inner.cache.stats()
        }
    }

    /// The support context of a set for a bundle: from memory, disk, or computed once.
    pub async fn support_context(
        &self,
        bundle: &str,
        set: &SupportSet,
    ) -> Result<Arc<SupportContext>, EngineError> {
        let b = self.bundle(bundle)?;
        let key = context_key(&b, set);
        // Fast path: no check and no copy of the set's images when the context is in memory.
        if let Some(ctx) = self.inner.cache.get_memory(&key) {
            return Ok(ctx);
        }
        set.check(&b.manifest)?;
        self.compute_cached(&key, b, set.clone()).await
    }

    /// The support context under `key`: from the cache (memory or disk), else computed once on
    /// a blocking thread that holds a worker slot.
    async fn compute_cached(
        &self,
        key: &ContextKey,
        b: Arc<Bundle>,
        set: SupportSet,
    ) -> Result<Arc<SupportContext>, EngineError> {
        let inner = self.inner.clone();
        let batch = self.inner.batch;
        self.inner
            .cache
            .get_or_compute(key, move || {
                // Runs on a blocking thread: take a worker slot synchronously.
                let _permit = tokio::runtime::Handle::current()
                    .block_on(inner.workers.acquire())
                    .map_err(|_| EngineError::Internal("worker semaphore closed".into()))?;
                infer::compute_support_context(&b, &set, batch, Some(&inner.embeddings))
            })
            .await
    }

    /// The bundle's resolution rules that apply to a set ([`views::match_rules`]), each with
    /// its support contexts (from memory, disk, or computed once per set version, bundle and
    /// view, like the first one). A rule whose views leave no support pair (roi: no pair has
    /// its anchor) is skipped with a warning.
    pub async fn view_passes(
        &self,
        bundle: &str,
        set: &SupportSet,
    ) -> Result<Vec<ViewPass>, EngineError> {
        self.view_passes_for(bundle, set, |_| true).await
    }

    /// [`Engine::view_passes`] for the matched rules `wanted` keeps (the mirrored look runs
    /// only the views of the objects it lists); the others get no context.
    async fn view_passes_for(
        &self,
        bundle: &str,
        set: &SupportSet,
        wanted: impl Fn(&views::MatchedRule) -> bool,
    ) -> Result<Vec<ViewPass>, EngineError> {
        let b = self.bundle(bundle)?;
        let labels: Vec<&str> = set.objects.iter().map(|o| o.label.as_str()).collect();
        let mut passes = Vec::new();
        for rule in views::match_rules(&b.manifest.resolution, &labels) {
            if !wanted(&rule) {
                continue;
            }
            let n = rule.rule.views();
            let mut contexts = Vec::with_capacity(n);
            for tile in 0..n {
                let key = context_key(&b, set).with_view(rule.rule.view_id(tile));
                let (strategy, anchor) = (rule.rule.strategy.clone(), rule.anchor);
                let crop = move |s: &SupportSet| match strategy {
                    views::Strategy::Roi {
                        scale, min_side, ..
                    } => views::roi_support_set(s, anchor?, scale, min_side),
                    views::Strategy::Tiles { grid, overlap } => {
                        views::tile_support_set(s, grid, overlap, tile)
                    }
                };
                match self.view_context(&b, set, key, crop).await? {
                    Some(ctx) => contexts.push(ctx),
                    None => break,
                }
            }
            if contexts.len() == n {
                passes.push(ViewPass { rule, contexts });
            } else {
                tracing::warn!(
                    bundle = %b.id(),
                    set = %set.name,
                    rule = rule.index + 1,
                    objects = ?rule.rule.objects,
                    "resolution rule skipped: its views leave no usable support pair"
                );
            }
        }
        Ok(passes)
    }

    /// The mirrored second look for a set ([`mirror`]): None when `[engine] mirror` is off or
    /// the bundle's `[mirror]` lists none of its objects; else the mirrored set's context and views, each computed
    /// once per set version and cached like the set's own (version `"{version}-mirror"`).
    async fn mirror_look(
        &self,
        bundle: &str,
        b: &Bundle,
        set: &SupportSet,
    ) -> Result<Option<mirror::MirrorLook>, EngineError> {
        let labels: Vec<&str> = set.objects.iter().map(|o| o.label.as_str()).collect();
        let objects = match &b.manifest.mirror {
            Some(rule) if self.inner.mirror => rule.object_indices(&labels),
            _ => Vec::new(),
        };
        if objects.is_empty() {
            return Ok(None);
        }
        // Only the views of listed objects: the others' logits come from the first look.
        let wanted = |r: &views::MatchedRule| r.objects.iter().any(|o| objects.contains(o));
        // Fast path: every context of the mirrored set in memory, no mirrored copy of its
        // images (a fundus set is ~200 MB of pixels).
        if let Some(look) = self.cached_mirror_look(b, set, &objects, wanted) {
            return Ok(Some(look));
        }
        let mirrored = mirror::support_set(set);
        let views = self.view_passes_for(bundle, &mirrored, wanted).await?;
        Ok(Some(mirror::MirrorLook {
            objects,
            context: self.support_context(bundle, &mirrored).await?,
            views,
        }))
    }

    /// The mirrored look of `set` when its first-pass context and the contexts of every view
    /// `wanted` keeps are all in the memory cache; None otherwise (a view skipped for want of
    /// pairs too: the caller then works it out from the mirrored set).
    fn cached_mirror_look(
        &self,
        b: &Bundle,
        set: &SupportSet,
        objects: &[usize],
        wanted: impl Fn(&views::MatchedRule) -> bool,
    ) -> Option<mirror::MirrorLook> {
        let key = context_key(b, &mirror::shell(set));
        let context = self.inner.cache.get_memory(&key)?;
        let labels: Vec<&str> = set.objects.iter().map(|o| o.label.as_str()).collect();
        let mut passes = Vec::new();
        for rule in views::match_rules(&b.manifest.resolution, &labels) {
            if !wanted(&rule) {
                continue;
            }
            let contexts = (0..rule.rule.views())
                .map(|t| {
                    let view = key.with_view(rule.rule.view_id(t));
                    self.inner.cache.get_memory(&view)
                })
                .collect::<Option<Vec<_>>>()?;
            passes.push(ViewPass { rule, contexts });
        }
        Some(mirror::MirrorLook {
            objects: objects.to_vec(),
            context,
            views: passes,
        })
    }

    /// One view's support context; `None` when `crop` leaves no pair (or fewer than the
    /// graphs' fixed N).
    async fn view_context(
        &self,
        b: &Arc<Bundle>,
        set: &SupportSet,
        key: ContextKey,
        crop: impl FnOnce(&SupportSet) -> Option<SupportSet>,
    ) -> Result<Option<Arc<SupportContext>>, EngineError> {
        if let Some(ctx) = self.inner.cache.get_memory(&key) {
            return Ok(Some(ctx));
        }
        set.check(&b.manifest)?;
        let Some(sub) = crop(set) else {
            return Ok(None);
        };
        if let Some(n) = b.dims.pairs {
            if sub.pairs.len() != n {
                tracing::warn!(context = %key, pairs = sub.pairs.len(), fixed = n, "view leaves fewer support pairs than the graphs fix");
                return Ok(None);
            }
        }
        self.compute_cached(&key, b.clone(), sub).await.map(Some)
    }

    /// Segments frames (of one image, a multi-frame object or a series, slice by slice) with a
    /// support set. Masks come back at each frame's own size, one per object of the set,
    /// after the bundle's resolution rules ([`views`]) that apply to the set.
    pub async fn segment(
        &self,
        bundle: &str,
        set: &SupportSet,
        frames: Vec<Frame>,
    ) -> Result<Segmentation, EngineError> {
        self.segment_with(bundle, set, frames, SegmentOptions::default())
            .await
    }

    /// [`Engine::segment`] with options (e.g. keeping intermediate tensors for checks).
    pub async fn segment_with(
        &self,
        bundle: &str,
        set: &SupportSet,
        frames: Vec<Frame>,
        opts: SegmentOptions,
    ) -> Result<Segmentation, EngineError> {
        check_frames(&frames)?;
        let b = self.bundle(bundle)?;
        if let Some(spec) = b.manifest.memory.as_ref().filter(|_| b.always_tracks()) {
            // A contract-2 bundle tracks the call's frames as one sequence.
            let bank = MemoryBank::new(spec, frames.len(), None);
            return self
                .segment_sequence_with(bundle, set, frames, bank, opts)
                .await
                .map(|(seg, _)| seg);
        }
        let t0 = Instant::now();
        let before = self.support_stats();
        let ctx = self.support_context(bundle, set).await?;
        let views = self.view_passes(bundle, set).await?;
        let look = self.mirror_look(bundle, &b, set).await?;
        let mut timings = self.context_timings(&before, t0);
        let key = context_key(&b, set);
        let permit = self.worker_slot().await?;
        let batch = self.inner.batch;
        let b2 = b.clone();
        let forms = self.object_forms(&b, set, &key);
        let cuts = threshold::object_thresholds(&b.manifest.threshold, &set.objects);
        let (results, t) = tokio::task::spawn_blocking(move || {
            let mut t = StageTimings::default();
            let mut r = infer::segment_frames(
                &b2,
                &ctx,
                &views,
                &frames,
                batch,
                (opts, &cuts, look.as_ref()),
                &mut t,
            )?;
            let t0 = Instant::now();
            shape::apply_frames(&forms, &mut r);
            t.postprocess += t0.elapsed();
            Ok::<_, EngineError>((r, t))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("inference task failed: {e}")))??;
        drop(permit);
        timings.add(&t);
        Ok(Segmentation {
            bundle: b.id(),
            context: key,
            objects: set.objects.clone(),
            frames: results,
            revised: Vec::new(),
            timings,
        })
    }
}

impl Engine {
    /// A memory bank for a sequence of `num_frames` frames (a cine loop, or a volume's slices
    /// in order) when the bundle tracks frames (contract 2, or a contract-1 bundle's memory
    /// mode); None for a bundle without memory graphs.
    /// `recent`: frames of spatial memory (default: the manifest's `recent_frames`).
    pub fn memory_bank(
        &self,
        bundle: &str,
        num_frames: usize,
        recent: Option<usize>,
    ) -> Result<Option<MemoryBank>, EngineError> {
        let b = self.bundle(bundle)?;
        Ok(b.manifest
            .memory
            .as_ref()
            .map(|spec| MemoryBank::new(spec, num_frames, recent)))
    }

    /// Segments the next `frames` of a sequence through its memory bank (SAM 2's frame loop,
    /// or a contract-1 bundle's memory mode), in
    /// order; call again with the returned bank for the sequence's next frames.
    pub async fn segment_sequence(
        &self,
        bundle: &str,
        set: &SupportSet,
        frames: Vec<Frame>,
        bank: MemoryBank,
    ) -> Result<(Segmentation, MemoryBank), EngineError> {
        check_frames(&frames)?;
        self.segment_sequence_with(bundle, set, frames, bank, SegmentOptions::default())
            .await
    }

    async fn segment_sequence_with(
        &self,
        bundle: &str,
        set: &SupportSet,
        frames: Vec<Frame>,
        mut bank: MemoryBank,
        opts: SegmentOptions,
    ) -> Result<(Segmentation, MemoryBank), EngineError> {
        let b = self.bundle(bundle)?;
        let t0 = Instant::now();
        let before = self.support_stats();
        let ctx = self.support_context(bundle, set).await?;
        let mut timings = self.context_timings(&before, t0);
        let permit = self.worker_slot().await?;
        let b2 = b.clone();
        let key = context_key(&b, set);
        let forms = self.object_forms(&b, set, &key);
        let cuts = threshold::object_thresholds(&b.manifest.threshold, &set.objects);
        let (results, t, bank) = tokio::task::spawn_blocking(move || {
            let mut t = StageTimings::default();
            let start = bank.position();
            let mut r = memory::track::segment_tracked(
                &b2,
                &ctx,
                &mut bank,
                &frames,
                (opts, &cuts),
                &mut t,
            )?;
            for fr in &mut r.frames {
                fr.index += start;
            }
            let t0 = Instant::now();
            shape::apply_frames(&forms, &mut r.frames);
            shape::apply_frames(&forms, &mut r.revised);
            t.postprocess += t0.elapsed();
            Ok::<_, EngineError>((r, t, bank))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("inference task failed: {e}")))??;
        drop(permit);
        timings.add(&t);
        let seg = Segmentation {
            bundle: b.id(),
            context: key,
            objects: set.objects.clone(),
            frames: results.frames,
            revised: results.revised,
            timings,
        };
        Ok((seg, bank))
    }
}

impl Engine {
    /// Timings with `support_context` set when a context was computed or loaded from disk
    /// since `before` (taken at `t0`).
    fn context_timings(&self, before: &SupportCacheStats, t0: Instant) -> StageTimings {
        let after = self.support_stats();
        let mut timings = StageTimings::default();
        if after.computed != before.computed || after.disk_hits != before.disk_hits {
            timings.support_context = t0.elapsed();
        }
        timings
    }

    /// The form the bundle's `[[shape]]` rules give each object of `set` ([`shape`]), worked
    /// out once per support context (empty when the bundle has no rules).
    fn object_forms(
        &self,
        b: &Bundle,
        set: &SupportSet,
        key: &ContextKey,
    ) -> Arc<Vec<Option<shape::Form>>> {
        if b.manifest.shape.is_empty() {
            return Arc::new(Vec::new());
        }
        self.inner.shapes.get(key, || {
            shape::object_forms(&b.manifest.shape, set, b.manifest.input_size)
        })
    }

    /// One of the `[engine] workers` slots that graph runs hold.
    async fn worker_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, EngineError> {
        self.inner
            .workers
            .acquire()
            .await
            .map_err(|_| EngineError::Internal("worker semaphore closed".into()))
    }
}

/// Every frame has a size and a buffer that match, with 1 or 3 channels.
fn check_frames(frames: &[Frame]) -> Result<(), EngineError> {
    if frames.is_empty() {
        return Err(EngineError::NoFrames);
    }
    for (index, f) in frames.iter().enumerate() {
        if !matches!(f.channels, 1 | 3)
            || f.rows == 0
            || f.cols == 0
            || f.data.len() != f.rows * f.cols * f.channels
        {
            return Err(EngineError::BadFrame {
                index,
                message: format!(
                    "{}x{}x{} with {} values",
                    f.rows,
                    f.cols,
                    f.channels,
                    f.data.len()
                ),
            });
        }
    }
    Ok(())
}

/// The cache identity of a set's context for a bundle.
fn context_key(b: &Bundle, set: &SupportSet) -> ContextKey {
    ContextKey {
        set_name: set.name.clone(),
        set_version: set.version.clone(),
        bundle_name: b.manifest.name.clone(),
        bundle_version: b.manifest.version.clone(),
        bundle_fingerprint: b.fingerprint.clone(),
        view: String::new(),
    }
}
