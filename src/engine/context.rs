//! Support contexts: image_encoder on a support set's images (each image once per bundle
//! while the [`EmbeddingCache`] holds it) and support_encoder (the CSM's steps 1 and 2) on
//! images, masks and embeddings. Blocking, like [`super::infer`]; the engine caches the
//! result per support-set version ([`super::support_cache`]).

use std::sync::Arc;

use super::bundle::Bundle;
use super::embedding_cache::{Embedding, EmbeddingCache};
use super::infer::{encode_images, run_graph, Tensor};
use super::preprocess::{prepare_image, prepare_mask};
use super::support::SupportSet;
use super::EngineError;

/// The support context: support_encoder's outputs for one support set and bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct SupportContext {
    /// `support_keys`.
    pub keys: Tensor,
    /// `support_values`.
    pub values: Tensor,
    /// Objects of the set (the first `objects` of the K outputs are used).
    pub objects: usize,
    /// Pairs that went in.
    pub pairs: usize,
}

/// image_encoder on the support images (each image once per bundle while `cache` holds it),
/// then support_encoder (CSM steps 1-2).
pub fn compute_support_context(
    bundle: &Bundle,
    set: &SupportSet,
    max_batch: usize,
    cache: Option<&EmbeddingCache>,
) -> Result<SupportContext, EngineError> {
    let m = &bundle.manifest;
    let s = m.input_size;
    let n = set.pairs.len();
    let k_real = set.objects.len();
    let k = bundle.dims.objects.unwrap_or(k_real);
    if let Some(fixed_n) = bundle.dims.pairs {
        if fixed_n != n {
            return Err(EngineError::SupportSet {
                name: set.name.clone(),
                message: format!(
                    "bundle {} needs exactly {fixed_n} pairs, the set has {n}",
                    m.name
                ),
            });
        }
    }
    let mut images = Vec::with_capacity(n * 3 * s * s);
    let mut masks = vec![0f32; n * k * s * s];
    for (i, p) in set.pairs.iter().enumerate() {
        let (t, _) = prepare_image(&p.image, s, m.pixel_mean, m.pixel_std);
        images.extend_from_slice(&t);
        for (j, mk) in p.masks.iter().enumerate() {
            let pm = prepare_mask(&mk.data, mk.rows, mk.cols, s);
            masks[(i * k + j) * s * s..(i * k + j + 1) * s * s].copy_from_slice(&pm);
        }
    }
    let images = Tensor {
        shape: vec![n, 3, s, s],
        data: images,
    };
    let masks = Tensor {
        shape: vec![n, k, s, s],
        data: masks,
    };
    support_context_of(bundle, &images, &masks, k_real, max_batch, cache)
}

/// The support context of model-ready support tensors: `images` `[N, 3, S, S]` (normalised,
/// padded) and `masks` `[N, K, S, S]`, of which the first `objects` are the set's. Images
/// whose embeddings `cache` holds are not encoded again.
pub fn support_context_of(
    bundle: &Bundle,
    images: &Tensor,
    masks: &Tensor,
    objects: usize,
    max_batch: usize,
    cache: Option<&EmbeddingCache>,
) -> Result<SupportContext, EngineError> {
    let emb = support_embeddings(bundle, images, max_batch, cache)?;
    let mut r = run_graph(
        &bundle.support_encoder,
        &[
            ("support_images", images),
            ("support_masks", masks),
            ("support_embeddings", &emb),
        ],
        &["support_keys", "support_values"],
    )?;
    let values = r.remove(1);
    let keys = r.remove(0);
    Ok(SupportContext {
        keys,
        values,
        objects,
        pairs: images.shape[0],
    })
}

/// `[N, C, h, w]` embeddings of the support images: from `cache` where it has them, the rest
/// encoded in batches (and put into `cache`).
fn support_embeddings(
    bundle: &Bundle,
    images: &Tensor,
    max_batch: usize,
    cache: Option<&EmbeddingCache>,
) -> Result<Tensor, EngineError> {
    let n = images.shape[0];
    let Some(cache) = cache else {
        // contract 2's image encoder has two more outputs; only the embeddings are read here
        return encode_images(bundle, &images.data, n, max_batch);
    };
    let m = &bundle.manifest;
    let per_in = images.data.len() / n.max(1);
    let per = m.embed_dim * m.embed_size[0] * m.embed_size[1];
    let keys: Vec<String> = (0..n)
        .map(|i| {
            EmbeddingCache::key(
                &bundle.fingerprint,
                &images.data[i * per_in..(i + 1) * per_in],
            )
        })
        .collect();
    let mut found: Vec<Option<Embedding>> = keys.iter().map(|k| cache.get(k)).collect();
    let missing: Vec<usize> = (0..n).filter(|&i| found[i].is_none()).collect();
    if !missing.is_empty() {
        let mut data = Vec::with_capacity(missing.len() * per_in);
        for &i in &missing {
            data.extend_from_slice(&images.data[i * per_in..(i + 1) * per_in]);
        }
        let e = encode_images(bundle, &data, missing.len(), max_batch)?;
        for (j, &i) in missing.iter().enumerate() {
            let one: Embedding = Arc::new(e.data[j * per..(j + 1) * per].to_vec());
            cache.put(keys[i].clone(), one.clone());
            found[i] = Some(one);
        }
    }
    let mut data = Vec::with_capacity(n * per);
    for e in found.into_iter().flatten() {
        data.extend_from_slice(&e);
    }
    Tensor::new(vec![n, m.embed_dim, m.embed_size[0], m.embed_size[1]], data).map_err(|e| {
        EngineError::Inference {
            graph: "image_encoder",
            message: e.to_string(),
        }
    })
}
