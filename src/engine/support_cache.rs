//! The support-context cache: support_encoder's outputs per (support set name + version,
//! bundle name + version), computed once, kept in memory and persisted under
//! `data_dir/cache/support/` so that restarts reuse them.
//!
//! Owns the cache files (atomic write: temp file, fsync, rename; a checksum guards reads)
//! and the counters that prove zero recomputation per study. It never decides *how* a
//! context is computed: the caller passes that closure. A damaged or unreadable file is
//! logged and recomputed, never trusted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::infer::{SupportContext, Tensor};
use super::EngineError;

const MAGIC: &[u8; 8] = b"PXSGCTX1";

/// Identity of one support context.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContextKey {
    /// Support set name.
    pub set_name: String,
    /// Support set version.
    pub set_version: String,
    /// Bundle name.
    pub bundle_name: String,
    /// Bundle version.
    pub bundle_version: String,
    /// Fingerprint of the bundle's files (see [`super::Bundle::fingerprint`]): a bundle
    /// replaced in place under the same version does not reuse old contexts.
    pub bundle_fingerprint: String,
    /// Which view of the set the context encodes: empty for the first pass (the whole
    /// images), else a resolution view such as `roi:optic disc:2:64` or
    /// `tiles:2:0.125:0,1` (see [`super::views::ResolutionRule::view_id`]). Files written
    /// before views existed have none, which reads as the first pass.
    #[serde(default)]
    pub view: String,
}

impl ContextKey {
    /// The same identity for another view (empty = the first pass).
    pub fn with_view(&self, view: impl Into<String>) -> ContextKey {
        ContextKey {
            view: view.into(),
            ..self.clone()
        }
    }

    /// File name under the cache folder: readable prefix + hash of the whole key. The first
    /// pass (empty view) hashes exactly what it hashed before views existed, so existing
    /// cache files stay valid; a view adds itself to the hash. The header inside the file
    /// repeats the whole key and is compared on read, so a file can never serve another view.
    pub fn file_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.set_name,
            &self.set_version,
            &self.bundle_name,
            &self.bundle_version,
            &self.bundle_fingerprint,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        if !self.view.is_empty() {
            h.update(b"view\0");
            h.update(self.view.as_bytes());
            h.update([0u8]);
        }
        let safe: String = self
            .set_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        format!("{safe}-{}.ctx", &hex::encode(h.finalize())[..24])
    }
}

impl std::fmt::Display for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} x {}@{}",
            self.set_name, self.set_version, self.bundle_name, self.bundle_version
        )?;
        if !self.view.is_empty() {
            write!(f, " [{}]", self.view)?;
        }
        Ok(())
    }
}

/// Counters of the cache (monotonic since the engine started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupportCacheStats {
    /// Contexts computed by running the graphs.
    pub computed: u64,
    /// Requests answered from memory.
    pub memory_hits: u64,
    /// Contexts loaded from disk (each load is then served from memory).
    pub disk_hits: u64,
    /// Cache files that could not be written or were damaged (logged).
    pub disk_errors: u64,
    /// Contexts currently held in memory.
    pub in_memory: u64,
    /// Support images encoded by image_encoder for a context ([`super::embedding_cache`]).
    pub embeddings_computed: u64,
    /// Support images whose embeddings an earlier context had computed.
    pub embeddings_reused: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    key: ContextKey,
    objects: usize,
    pairs: usize,
    keys_shape: Vec<usize>,
    values_shape: Vec<usize>,
    sha256: String,
}

type Cell = Arc<tokio::sync::OnceCell<Arc<SupportContext>>>;

/// The cache. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SupportCache {
    dir: PathBuf,
    cells: Mutex<HashMap<ContextKey, Cell>>,
    computed: AtomicU64,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    disk_errors: AtomicU64,
}

impl SupportCache {
    /// A cache persisting under `dir` (created on first write).
    pub fn new(dir: PathBuf) -> SupportCache {
        SupportCache {
            dir,
            cells: Mutex::new(HashMap::new()),
            computed: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            disk_errors: AtomicU64::new(0),
        }
    }

    /// The folder holding the cache files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current counters.
    pub fn stats(&self) -> SupportCacheStats {
        let in_memory = self
            .cells
            .lock()
            .map(|c| c.values().filter(|v| v.initialized()).count() as u64)
            .unwrap_or(0);
        SupportCacheStats {
            computed: self.computed.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            disk_errors: self.disk_errors.load(Ordering::Relaxed),
            in_memory,
            ..SupportCacheStats::default()
        }
    }

    /// The context for `key` if it is already in memory (counted as a memory hit).
    pub fn get_memory(&self, key: &ContextKey) -> Option<Arc<SupportContext>> {
        let cell = self.cells.lock().ok()?.get(key)?.clone();
        let ctx = cell.get()?.clone();
        self.memory_hits.fetch_add(1, Ordering::Relaxed);
        Some(ctx)
    }

    /// Returns the context for `key`: from memory, else from disk, else by running
    /// `compute` on a blocking thread (once, even when many callers ask at the same time),
    /// then persisting it. Older versions of the same set and bundle are dropped from memory
    /// (every view of them); the other views of the same versions stay.
    pub async fn get_or_compute<F>(
        &self,
        key: &ContextKey,
        compute: F,
    ) -> Result<Arc<SupportContext>, EngineError>
    where
        F: FnOnce() -> Result<SupportContext, EngineError> + Send + 'static,
    {
        let cell: Cell = {
            let mut cells = self
                .cells
                .lock()
                .map_err(|_| EngineError::Internal("support cache lock poisoned".into()))?;
            cells.retain(|k, _| {
                let same_owner = k.set_name == key.set_name && k.bundle_name == key.bundle_name;
                let same_content = k.set_version == key.set_version
                    && k.bundle_version == key.bundle_version
                    && k.bundle_fingerprint == key.bundle_fingerprint;
                !same_owner || same_content
            });
            cells.entry(key.clone()).or_default().clone()
        };
        if let Some(ctx) = cell.get() {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(ctx.clone());
        }
        let initialised_here = AtomicBool::new(false);
        let path = self.dir.join(key.file_name());
        let ctx = cell
            .get_or_try_init(|| async {
                initialised_here.store(true, Ordering::Relaxed);
                let (k2, p2) = (key.clone(), path.clone());
                let loaded = tokio::task::spawn_blocking(move || read_file(&p2, &k2))
                    .await
                    .map_err(|e| EngineError::Internal(format!("cache read task failed: {e}")))?;
                match loaded {
                    Ok(Some(ctx)) => {
                        self.disk_hits.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(context = %key, file = %path.display(), "support context loaded from disk");
                        return Ok(Arc::new(ctx));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.disk_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(context = %key, file = %path.display(), error = %e, "support context file ignored; recomputing");
                    }
                }
                let ctx = tokio::task::spawn_blocking(compute)
                    .await
                    .map_err(|e| EngineError::Internal(format!("support context task failed: {e}")))??;
                self.computed.fetch_add(1, Ordering::Relaxed);
                let ctx = Arc::new(ctx);
                let (k2, p2, c2) = (key.clone(), path.clone(), ctx.clone());
                let written = tokio::task::spawn_blocking(move || write_file(&p2, &k2, &c2))
                    .await
                    .map_err(|e| EngineError::Internal(format!("cache write task failed: {e}")))?;
                match written {
                    Ok(()) => tracing::info!(context = %key, file = %path.display(), "support context computed and saved"),
                    Err(e) => {
                        self.disk_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(context = %key, file = %path.display(), error = %e, "support context computed but not saved");
                    }
                }
                Ok::<_, EngineError>(ctx)
            })
            .await?
            .clone();
        if !initialised_here.load(Ordering::Relaxed) {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ctx)
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn write_file(path: &Path, key: &ContextKey, ctx: &SupportContext) -> Result<(), String> {
    let dir = path.parent().ok_or("cache path has no folder")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut payload = f32_bytes(&ctx.keys.data);
    payload.extend_from_slice(&f32_bytes(&ctx.values.data));
    let header = Header {
        key: key.clone(),
        objects: ctx.objects,
        pairs: ctx.pairs,
        keys_shape: ctx.keys.shape.clone(),
        values_shape: ctx.values.shape.clone(),
        sha256: hex::encode(Sha256::digest(&payload)),
    };
    let header = toml::to_string(&header).map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(header.len() as u32).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
        f.write_all(&payload)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Ok(None): no file. Err: a file that cannot be trusted.
fn read_file(path: &Path, key: &ContextKey) -> Result<Option<SupportContext>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err("not a support context file".into());
    }
    let hlen = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let body = bytes.get(12..12 + hlen).ok_or("header is cut short")?;
    let header: Header = toml::from_str(std::str::from_utf8(body).map_err(|e| e.to_string())?)
        .map_err(|e| format!("bad header: {e}"))?;
    if &header.key != key {
        return Err(format!("file holds {} instead", header.key));
    }
    let payload = &bytes[12 + hlen..];
    if hex::encode(Sha256::digest(payload)) != header.sha256 {
        return Err("checksum mismatch".into());
    }
    let nk: usize = header.keys_shape.iter().product();
    let nv: usize = header.values_shape.iter().product();
    if payload.len() != 4 * (nk + nv) {
        return Err(format!(
            "payload has {} bytes, header implies {}",
            payload.len(),
            4 * (nk + nv)
        ));
    }
    let floats: Vec<f32> = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some(SupportContext {
        keys: Tensor {
            shape: header.keys_shape,
            data: floats[..nk].to_vec(),
        },
        values: Tensor {
            shape: header.values_shape,
            data: floats[nk..].to_vec(),
        },
        objects: header.objects,
        pairs: header.pairs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &str) -> ContextKey {
        ContextKey {
            set_name: "liver ct".into(),
            set_version: v.into(),
            bundle_name: "b".into(),
            bundle_version: "1".into(),
            bundle_fingerprint: "f".into(),
            view: String::new(),
        }
    }

    fn ctx() -> SupportContext {
        SupportContext {
            keys: Tensor {
                shape: vec![2, 3],
                data: vec![1., 2., 3., 4., 5., 6.],
            },
            values: Tensor {
                shape: vec![1],
                data: vec![-1.5],
            },
            objects: 2,
            pairs: 1,
        }
    }

    #[test]
    fn file_round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(key("1").file_name());
        assert!(p.to_string_lossy().contains("liver_ct-"));
        write_file(&p, &key("1"), &ctx()).unwrap();
        assert_eq!(read_file(&p, &key("1")).unwrap(), Some(ctx()));
        assert!(read_file(&p, &key("2")).unwrap_err().contains("instead"));
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 0x55;
        std::fs::write(&p, b).unwrap();
        assert!(read_file(&p, &key("1")).unwrap_err().contains("checksum"));
    }

    #[test]
    fn first_pass_file_name_is_stable_and_views_never_share_files() {
        // The name an empty-view key had before views existed (same hash input).
        assert_eq!(
            key("1").file_name(),
            "liver_ct-7816b6c48d3291e70d9414c3.ctx"
        );
        let roi = key("1").with_view("roi:optic disc:2:64");
        let tile = key("1").with_view("tiles:2:0.125:0,1");
        assert_ne!(roi.file_name(), key("1").file_name());
        assert_ne!(roi.file_name(), tile.file_name());
        assert_eq!(roi.to_string(), "liver ct@1 x b@1 [roi:optic disc:2:64]");
        // A file of one view, renamed to another's name, is refused by its header.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(tile.file_name());
        write_file(&p, &roi, &ctx()).unwrap();
        assert!(read_file(&p, &tile).unwrap_err().contains("instead"));
        // A header without `view` (written before views existed) reads as the first pass.
        let old = std::fs::read(&p).unwrap();
        let hlen = u32::from_le_bytes([old[8], old[9], old[10], old[11]]) as usize;
        let header = std::str::from_utf8(&old[12..12 + hlen]).unwrap();
        let stripped: String = header
            .lines()
            .filter(|l| !l.starts_with("view ="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(stripped.len(), header.len(), "{header}");
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&(stripped.len() as u32).to_le_bytes());
        b.extend_from_slice(stripped.as_bytes());
        b.extend_from_slice(&old[12 + hlen..]);
        std::fs::write(&p, b).unwrap();
        assert_eq!(read_file(&p, &key("1")).unwrap(), Some(ctx()));
    }

    #[tokio::test]
    async fn views_of_one_version_stay_in_memory_together() {
        let dir = tempfile::tempdir().unwrap();
        let c = SupportCache::new(dir.path().to_owned());
        for k in [key("1"), key("1").with_view("roi:a:2:64"), key("1")] {
            c.get_or_compute(&k, || Ok(ctx())).await.unwrap();
        }
        assert_eq!((c.stats().computed, c.stats().in_memory), (2, 2));
        c.get_or_compute(&key("2"), || Ok(ctx())).await.unwrap();
        assert_eq!(
            c.stats().in_memory,
            1,
            "a new version drops every view of the old"
        );
    }

    #[tokio::test]
    async fn computes_once_then_hits_memory() {
        let dir = tempfile::tempdir().unwrap();
        let c = SupportCache::new(dir.path().to_owned());
        for _ in 0..3 {
            c.get_or_compute(&key("1"), || Ok(ctx())).await.unwrap();
        }
        let s = c.stats();
        assert_eq!((s.computed, s.memory_hits, s.disk_hits), (1, 2, 0));
        let c2 = SupportCache::new(dir.path().to_owned());
        c2.get_or_compute(&key("1"), || {
            Err(EngineError::Internal("must not run".into()))
        })
        .await
        .unwrap();
        assert_eq!(c2.stats().disk_hits, 1);
    }
}
