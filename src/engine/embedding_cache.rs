//! Image embeddings of support images, kept in memory and shared by every support context
//! that uses the same image with the same bundle (issue 17 item 5).
//!
//! A support context runs image_encoder on each pair's image. Leave-one-out evaluation builds
//! one context per left-out pair, and a new set version usually keeps most pairs: without
//! this cache each of them encoded every image again (N x (N - 1) encoder runs for an
//! N-pair evaluation, N now). Keyed by the bundle's fingerprint and a SHA-256 of the model
//! input tensor, so an identical image is encoded once per bundle; bounded in bytes, oldest
//! entries dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The embeddings of one model input: `[C, h, w]` values.
pub type Embedding = Arc<Vec<f32>>;

/// The cache; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EmbeddingCache {
    limit_bytes: usize,
    inner: Mutex<Entries>,
    computed: AtomicU64,
    reused: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Embedding>,
    order: VecDeque<String>,
    bytes: usize,
}

impl EmbeddingCache {
    /// A cache holding at most `limit_bytes` of embeddings.
    pub fn new(limit_bytes: usize) -> EmbeddingCache {
        EmbeddingCache {
            limit_bytes,
            inner: Mutex::new(Entries::default()),
            computed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// The key of a model input for a bundle.
    pub fn key(bundle_fingerprint: &str, input: &[f32]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(bundle_fingerprint.as_bytes());
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
        hex::encode(h.finalize())
    }

    /// The embedding under `key`, counted as reused when found.
    pub fn get(&self, key: &str) -> Option<Embedding> {
        let e = self.inner.lock().ok()?.map.get(key).cloned();
        if e.is_some() {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    /// Stores a freshly computed embedding (counted as computed), dropping the oldest
    /// entries beyond the limit.
    pub fn put(&self, key: String, e: Embedding) {
        self.computed.fetch_add(1, Ordering::Relaxed);
        let size = e.len() * 4;
        if size > self.limit_bytes {
            return;
        }
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if g.map.insert(key.clone(), e).is_none() {
            g.order.push_back(key);
            g.bytes += size;
        }
        while g.bytes > self.limit_bytes {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(v) = g.map.remove(&old) {
                g.bytes -= v.len() * 4;
            }
        }
    }

    /// (computed, reused) since the engine started.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.computed.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_bundle_is_reused_and_the_limit_holds() {
        let c = EmbeddingCache::new(3 * 4 * 4);
        let k1 = EmbeddingCache::key("b1", &[1.0, 2.0]);
        assert_ne!(k1, EmbeddingCache::key("b2", &[1.0, 2.0]));
        assert_ne!(k1, EmbeddingCache::key("b1", &[1.0, 2.5]));
        assert!(c.get(&k1).is_none());
        c.put(k1.clone(), Arc::new(vec![0.0; 4]));
        assert_eq!(c.get(&k1).unwrap().len(), 4);
        for i in 0..3 {
            c.put(format!("k{i}"), Arc::new(vec![0.0; 4]));
        }
        // 4 entries of 16 bytes against a 48-byte limit: the oldest went
        assert!(c.get(&k1).is_none());
        assert!(c.get("k2").is_some());
        assert_eq!(c.counts(), (4, 2));
    }
}
