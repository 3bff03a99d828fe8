//! The KV cache of one sequence for a contiguous range of layers, stored as f16 like
//! llama.cpp's default cache type (this rounding is part of matching its outputs).

use half::f16;

/// Keys and values per layer, `n_ctx` positions of `n_embd_kv` values each.
pub struct KvCache {
    pub n_ctx: usize,
    pub n_embd_kv: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl KvCache {
    pub fn new(n_layers: usize, n_ctx: usize, n_embd_kv: usize) -> KvCache {
        KvCache {
            n_ctx,
            n_embd_kv,
            k: (0..n_layers).map(|_| vec![f16::ZERO; n_ctx * n_embd_kv]).collect(),
            v: (0..n_layers).map(|_| vec![f16::ZERO; n_ctx * n_embd_kv]).collect(),
        }
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_ctx * self.n_embd_kv * 2
    }

    /// Stores the key and value rows of position `pos` in layer `li` (relative to the range).
    pub fn store(&mut self, li: usize, pos: usize, k: &[f32], v: &[f32]) {
        let n = self.n_embd_kv;
        let at = pos * n..(pos + 1) * n;
        for (d, s) in self.k[li][at.clone()].iter_mut().zip(k) {
            *d = f16::from_f32(*s);
        }
        for (d, s) in self.v[li][at].iter_mut().zip(v) {
            *d = f16::from_f32(*s);
        }
    }

    /// Keys of layer `li` for positions `0..len`.
    pub fn keys(&self, li: usize, len: usize) -> &[f16] {
        &self.k[li][..len * self.n_embd_kv]
    }

    /// Values of layer `li` for positions `0..len`.
    pub fn values(&self, li: usize, len: usize) -> &[f16] {
        &self.v[li][..len * self.n_embd_kv]
    }
}
