//! The element-wise and attention operations of a transformer block, in f32, following ggml's
//! numerics where they affect the result (f64 sums in RMSNorm and softmax, f16 K/V and queries,
//! RoPE angles built by repeated multiplication).

use half::f16;

use crate::hparams::HParams;
use crate::kv_cache::KvCache;

/// `out = x / sqrt(mean(x²) + eps) * w` (ggml `rms_norm` then `mul`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * wv;
    }
}

/// `gate = silu(gate) * up` (ggml `swiglu`).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + (-x).exp()) * u;
    }
}

/// Rotary embedding settings of a model.
pub struct RopeParams<'a> {
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// NEOX style rotates (x[i], x[i + n_rot/2]); normal style rotates (x[2i], x[2i+1]).
    pub neox: bool,
    /// Llama 3.1 per-frequency divisors (`rope_freqs.weight`).
    pub freq_factors: Option<&'a [f32]>,
}

/// Fills `cache` with (cos, sin) pairs for position `pos`, as ggml's rope cache does.
pub fn rope_cache(p: &RopeParams<'_>, pos: usize, cache: &mut Vec<f32>) {
    cache.resize(p.n_rot, 0.0);
    let theta_scale = p.freq_base.powf(-2.0 / p.n_rot as f32);
    let mut theta = pos as f32;
    for i in 0..p.n_rot / 2 {
        let ff = p
            .freq_factors
            .and_then(|f| f.get(i))
            .copied()
            .unwrap_or(1.0);
        let t = p.freq_scale * (theta / ff);
        cache[2 * i] = t.cos();
        cache[2 * i + 1] = t.sin();
        theta *= theta_scale;
    }
}

/// Rotates one head in place with a cache from [`rope_cache`].
pub fn rope_apply(p: &RopeParams<'_>, cache: &[f32], head: &mut [f32]) {
    let half = p.n_rot / 2;
    for i in 0..half {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let (a, b) = if p.neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}

/// Buffers for attention, reused between calls.
#[derive(Default)]
pub struct AttnScratch {
    q16: Vec<f32>,
    scores: Vec<f32>,
}

/// Causal multi-head attention with grouped KV heads over the cache of layer `li`.
/// `q` is `positions.len() × n_head·head_dim`; `out` has the same shape. Token `t` attends to
/// cache positions `0..=positions[t]`.
pub fn attention(
    hp: &HParams,
    kv: &KvCache,
    li: usize,
    q: &[f32],
    positions: &[usize],
    out: &mut [f32],
    s: &mut AttnScratch,
) {
    let hd = hp.head_dim;
    let nq = hp.n_embd_q();
    let nkv = hp.n_embd_kv();
    let group = hp.n_head / hp.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    for (t, &pos) in positions.iter().enumerate() {
        let len = pos + 1;
        let keys = kv.keys(li, len);
        let values = kv.values(li, len);
        for h in 0..hp.n_head {
            let kvh = h / group;
            // ggml multiplies F16 keys with queries converted to F16.
            s.q16.clear();
            s.q16.extend(
                q[t * nq + h * hd..t * nq + (h + 1) * hd]
                    .iter()
                    .map(|&v| f16::from_f32(v).to_f32()),
            );
            if std::env::var_os("PRIMA_FA").is_some() {
                let o = &mut out[t * nq + h * hd..t * nq + (h + 1) * hd];
                let mut acc = vec![f16::ZERO; hd];
                let mut m = f32::NEG_INFINITY;
                let mut ssum = 0.0f32;
                for j in 0..len {
                    let k = &keys[j * nkv + kvh * hd..j * nkv + (kvh + 1) * hd];
                    let sc: f32 = k
                        .iter()
                        .zip(&s.q16)
                        .map(|(a, b)| a.to_f32() * b)
                        .sum::<f32>()
                        * scale;
                    let mold = m;
                    let mut ms = 1.0f32;
                    let mut vs = 1.0f32;
                    if sc > m {
                        m = sc;
                        ms = (mold - m).exp();
                        for a in acc.iter_mut() {
                            *a = f16::from_f32(a.to_f32() * ms);
                        }
                    } else {
                        vs = (sc - m).exp();
                    }
                    let v = &values[j * nkv + kvh * hd..j * nkv + (kvh + 1) * hd];
                    for (a, vd) in acc.iter_mut().zip(v) {
                        *a = f16::from_f32(a.to_f32() + vd.to_f32() * vs);
                    }
                    ssum = ssum * ms + vs;
                }
                for (od, a) in o.iter_mut().zip(&acc) {
                    *od = a.to_f32() / ssum;
                }
                continue;
            }
            s.scores.resize(len, 0.0);
            let mut max = f32::NEG_INFINITY;
            for (j, sc) in s.scores.iter_mut().enumerate() {
                let k = &keys[j * nkv + kvh * hd..j * nkv + (kvh + 1) * hd];
                let d: f32 = k.iter().zip(&s.q16).map(|(a, b)| a.to_f32() * b).sum();
                *sc = d * scale;
                max = max.max(*sc);
            }
            let mut sum = 0.0f64;
            for sc in s.scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc as f64;
            }
            let inv = (1.0 / sum) as f32;
            let o = &mut out[t * nq + h * hd..t * nq + (h + 1) * hd];
            o.fill(0.0);
            for (j, &w) in s.scores.iter().enumerate() {
                // ggml converts the attention weights to F16 before multiplying with F16 values.
                let w = f16::from_f32(w * inv).to_f32();
                let v = &values[j * nkv + kvh * hd..j * nkv + (kvh + 1) * hd];
                for (od, vd) in o.iter_mut().zip(v) {
                    *od += w * vd.to_f32();
                }
            }
        }
    }
}
