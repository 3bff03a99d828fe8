//! The KV cache of one sequence for a contiguous range of layers, stored as f16 like
//! llama.cpp's default cache type (this rounding is part of matching its outputs).
//!
//! Each layer's keys and values sit behind their own shared lock, so a compute team's helper
//! threads can read one layer's cache for attention ([`KvCache::layer`]) while the cache itself
//! stays owned by its session or slot; the owner writes a layer (one uncontended lock) before
//! that layer's attention, and nobody reads it meanwhile.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use half::f16;

/// One layer's keys and values, `n_ctx` positions of `n_embd_kv` values each.
pub struct LayerKv {
    n_embd_kv: usize,
    k: Vec<f16>,
    v: Vec<f16>,
}

impl LayerKv {
    /// Keys for positions `0..len`.
    pub fn keys(&self, len: usize) -> &[f16] {
        &self.k[..len * self.n_embd_kv]
    }

    /// Values for positions `0..len`.
    pub fn values(&self, len: usize) -> &[f16] {
        &self.v[..len * self.n_embd_kv]
    }
}

/// A shared handle on one layer of a [`KvCache`].
pub type SharedLayerKv = Arc<RwLock<LayerKv>>;

/// Read access to a layer: a poisoned lock only means a reader panicked (readers never write).
pub fn read_layer(l: &RwLock<LayerKv>) -> RwLockReadGuard<'_, LayerKv> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Keys and values per layer, `n_ctx` positions of `n_embd_kv` values each.
pub struct KvCache {
    pub n_ctx: usize,
    pub n_embd_kv: usize,
    layers: Vec<SharedLayerKv>,
}

impl KvCache {
    pub fn new(n_layers: usize, n_ctx: usize, n_embd_kv: usize) -> KvCache {
        let layer = || {
            let zeros = vec![f16::ZERO; n_ctx * n_embd_kv];
            Arc::new(RwLock::new(LayerKv { n_embd_kv, k: zeros.clone(), v: zeros }))
        };
        KvCache { n_ctx, n_embd_kv, layers: (0..n_layers).map(|_| layer()).collect() }
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.layers.len() * self.n_ctx * self.n_embd_kv * 2
    }

    /// Stores the key and value rows of position `pos` in layer `li` (relative to the range).
    pub fn store(&mut self, li: usize, pos: usize, k: &[f32], v: &[f32]) {
        let n = self.n_embd_kv;
        let at = pos * n..(pos + 1) * n;
        let mut l = self.layers[li].write().unwrap_or_else(PoisonError::into_inner);
        for (d, s) in l.k[at.clone()].iter_mut().zip(k) {
            *d = f16::from_f32(*s);
        }
        for (d, s) in l.v[at].iter_mut().zip(v) {
            *d = f16::from_f32(*s);
        }
    }

    /// Layer `li` (relative to the range), to read or to hand to another thread.
    pub fn layer(&self, li: usize) -> &SharedLayerKv {
        &self.layers[li]
    }

    /// Read access to layer `li`.
    pub fn read(&self, li: usize) -> RwLockReadGuard<'_, LayerKv> {
        read_layer(&self.layers[li])
    }
}
