//! The element-wise and attention operations of a transformer block, in f32, following ggml's
//! numerics where they affect the result (f64 sums in RMSNorm and softmax, f16 K/V and queries,
//! RoPE angles built by repeated multiplication).

use std::ops::Range;
use std::sync::RwLock;

use half::f16;

use crate::hparams::HParams;
use crate::kv_cache::{read_layer, KvCache, LayerKv, SharedLayerKv};
use crate::quant::simd::Kernels;

/// `out = x / sqrt(mean(x²) + eps) * w` (ggml `rms_norm` then `mul`; squares in f32, summed in f64).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * wv;
    }
}

/// `gate = silu(gate) * up` (ggml `swiglu`) with the active SIMD kernels ([`swiglu_ref`]'s bits).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    Kernels::active().swiglu(gate, up);
}

/// `gate = silu(gate) * up` (ggml `swiglu`), with ggml's AVX-512 exponential for whole groups
/// of 16 and the C library's `expf` for the tail, as llama.cpp computes it on x86.
/// The scalar reference of the SIMD kernels.
pub fn swiglu_ref(gate: &mut [f32], up: &[f32]) {
    let n16 = gate.len() / 16 * 16;
    for (g, &u) in gate[..n16].iter_mut().zip(up) {
        let x = *g;
        *g = (x / (1.0 + expf_ggml(-x))) * u;
    }
    for (g, &u) in gate[n16..].iter_mut().zip(&up[n16..]) {
        let x = *g;
        *g = (x / (1.0 + (-x).exp())) * u;
    }
}

/// ggml's vectorised `expf` (`ggml_v_expf`, AVX-512 variant), evaluated lane by lane: a range
/// reduction by ln 2 and a degree-5 polynomial, with fused multiply-adds where ggml has them.
pub fn expf_ggml(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000);
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // `_mm512_scalef_ps(j, n)`: j · 2ⁿ rounded once (n is an integer here).
    (j as f64 * 2f64.powi(n as i32)) as f32
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
        let ff = p.freq_factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
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
        let (a, b) = if p.neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
        let (x0, x1) = (head[a], head[b]);
        // llama.cpp's build contracts these into fused multiply-adds; matching them keeps
        // the rotated values bit-identical.
        head[a] = x0.mul_add(c, -(x1 * s));
        head[b] = x0.mul_add(s, x1 * c);
    }
}

/// Lanes and accumulators of ggml's F16 dot product on AVX-512 (16 lanes × 4 accumulators).
const DOT_LANES: usize = 16;
const DOT_ACCS: usize = 4;

/// `Σ k[i]·q[i]` in the exact order ggml's `ggml_vec_dot_f16` sums on x86 with AVX-512: lane-wise
/// fused multiply-adds into four 16-lane accumulators, a pairwise tree reduction, then the
/// leftover tail in f64. Matching the order matters because attention rounds to f16 right after.
pub fn dot_f16_f32(k: &[f16], q: &[f32]) -> f32 {
    let step = DOT_LANES * DOT_ACCS;
    let np = k.len() / step * step;
    let mut acc = [[0.0f32; DOT_LANES]; DOT_ACCS];
    for (kc, qc) in k[..np].chunks_exact(step).zip(q[..np].chunks_exact(step)) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                let i = j * DOT_LANES + l;
                *lane = kc[i].to_f32().mul_add(qc[i], *lane);
            }
        }
    }
    let mut sum = 0.0f64;
    if np > 0 {
        let mut v = [0.0f32; DOT_LANES];
        for (l, x) in v.iter_mut().enumerate() {
            *x = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        }
        // _mm512_reduce_add_ps: halves of 8, then 4, then pairs (2, 3, 0, 1), then (1, 0, 3, 2).
        let mut h8 = [0.0f32; 8];
        for i in 0..8 {
            h8[i] = v[i + 8] + v[i];
        }
        let mut h4 = [0.0f32; 4];
        for i in 0..4 {
            h4[i] = h8[i + 4] + h8[i];
        }
        let h2 = [h4[0] + h4[2], h4[1] + h4[3]];
        sum = (h2[0] + h2[1]) as f64;
    }
    for (kv, qv) in k[np..].iter().zip(&q[np..]) {
        sum += (kv.to_f32() * qv) as f64;
    }
    sum as f32
}

/// `acc[i] = f16(v[i]·s + acc[i])` with one rounding of the fused product (scalar reference).
pub fn f16_axpy_ref(acc: &mut [f16], v: &[f16], s: f32) {
    for (a, vd) in acc.iter_mut().zip(v) {
        *a = f16::from_f32(vd.to_f32().mul_add(s, a.to_f32()));
    }
}

/// `acc[i] += w·v[i]` in f32, the product rounded before the sum (scalar reference of the tiled
/// attention's value accumulation).
pub fn f32_axpy_f16_ref(acc: &mut [f32], v: &[f16], w: f32) {
    for (a, vd) in acc.iter_mut().zip(v) {
        *a += w * vd.to_f32();
    }
}

/// `acc[i] = f16(acc[i]·s)` (scalar reference).
pub fn f16_scale_ref(acc: &mut [f16], s: f32) {
    for a in acc.iter_mut() {
        *a = f16::from_f32(a.to_f32() * s);
    }
}

/// Buffers for attention, reused between calls (one per thread that computes attention).
#[derive(Default)]
pub struct AttnScratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    acc16: Vec<f16>,
    /// Per query row: whether its sequence's run of rows takes the tiled kernel.
    tiled: Vec<bool>,
}

/// Query rows from which ggml's CPU flash attention switches from the per-row kernel (f16
/// queries, f16 output accumulator) to the tiled kernel (f32 throughout).
const TILED_MIN_ROWS: usize = 64;

/// Causal multi-head attention with grouped KV heads over the cache of layer `li`.
/// `q` is `positions.len() × n_head·head_dim`; `out` has the same shape. Token `t` attends to
/// cache positions `0..=positions[t]`.
///
/// This follows llama.cpp's default on CPU, flash attention, including its precision: with
/// fewer than 64 query rows the queries are rounded to f16 and the weighted sum of values is
/// accumulated in f16 with an online softmax; with more, everything stays in f32. Greedy
/// decoding of small models is sensitive to this difference.
pub fn attention(
    hp: &HParams,
    kv: &KvCache,
    li: usize,
    q: &[f32],
    positions: &[usize],
    out: &mut [f32],
    s: &mut AttnScratch,
) {
    attention_batch(Attn { hp, kvs: std::slice::from_ref(kv), slots: None, li, q, positions }, out, s);
}

/// One layer's attention over rows of several sequences: row `t` has query `q[t]` (`n_head ·
/// head_dim` values), sits at `positions[t]` and reads the cache `kvs[slots[t]]` (`None`:
/// `kvs[0]`), layer `li`; the rows of one sequence are consecutive.
#[derive(Clone, Copy)]
pub struct Attn<'a> {
    pub hp: &'a HParams,
    pub kvs: &'a [KvCache],
    pub slots: Option<&'a [usize]>,
    pub li: usize,
    pub q: &'a [f32],
    pub positions: &'a [usize],
}

impl Attn<'_> {
    /// Key × head products: the work.
    pub fn work(&self) -> usize {
        self.positions.iter().map(|p| p + 1).sum::<usize>() * self.hp.n_head
    }

    /// Number of (row, head) items.
    pub fn n_items(&self) -> usize {
        self.positions.len() * self.hp.n_head
    }
}

/// The maximal runs of consecutive indices of `0..n` with equal `key`, in order: `(indices, key)`.
pub fn runs_by<K: PartialEq>(n: usize, key: impl Fn(usize) -> K) -> impl Iterator<Item = (Range<usize>, K)> {
    let mut t0 = 0;
    std::iter::from_fn(move || {
        (t0 < n).then(|| {
            let k0 = key(t0);
            let t1 = (t0 + 1..n).find(|&t| key(t) != k0).unwrap_or(n);
            let run = t0..t1;
            t0 = t1;
            (run, k0)
        })
    })
}

/// The lengths of the runs of consecutive rows of one sequence among `n` rows, in order: row
/// `t` belongs to sequence `slots[t]` (`None`: all rows to one).
pub fn sequence_runs(slots: Option<&[usize]>, n: usize) -> impl Iterator<Item = usize> + '_ {
    runs_by(n, move |t| slots.map_or(0, |s| s[t])).map(|(run, _)| run.len())
}

/// Per query row, into `tiled`: whether its sequence's run of rows is long enough for the tiled
/// kernel (each run chooses as if its sequence ran alone).
fn tiled_rows(slots: Option<&[usize]>, n_tok: usize, tiled: &mut Vec<bool>) {
    tiled.clear();
    for n in sequence_runs(slots, n_tok) {
        tiled.extend(std::iter::repeat_n(n >= TILED_MIN_ROWS, n));
    }
}

/// [`attention`] for rows of several sequences ([`Attn`]), on the calling thread, each run of
/// one sequence's rows choosing its kernel by its own length, as if its sequence ran alone. A
/// compute team splits the same work over its threads with [`AttnInput`]; every (row, head)
/// item has the same bits either way.
pub fn attention_batch(a: Attn<'_>, out: &mut [f32], s: &mut AttnScratch) {
    let mut tiled = std::mem::take(&mut s.tiled);
    tiled_rows(a.slots, a.positions.len(), &mut tiled);
    let ctx = ItemCtx {
        shape: AttnShape::of(a.hp),
        caches: Caches::Owned(a.kvs),
        slots: a.slots,
        li: a.li,
        q: a.q,
        positions: a.positions,
        tiled: &tiled,
    };
    attention_items(&ctx, 0..a.n_items(), out, s);
    s.tiled = tiled;
}

/// The shape numbers attention needs.
#[derive(Clone, Copy, Default)]
struct AttnShape {
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
}

impl AttnShape {
    fn of(hp: &HParams) -> AttnShape {
        AttnShape { n_head: hp.n_head, n_head_kv: hp.n_head_kv, head_dim: hp.head_dim }
    }
}

/// Where attention reads the caches: the sequences' caches (layer `li` of each), or handles on
/// the one layer of each.
#[derive(Clone, Copy)]
enum Caches<'a> {
    Owned(&'a [KvCache]),
    Shared(&'a [SharedLayerKv]),
}

impl<'a> Caches<'a> {
    fn layer(self, slot: usize, li: usize) -> &'a RwLock<LayerKv> {
        match self {
            Caches::Owned(kvs) => kvs[slot].layer(li),
            Caches::Shared(layers) => &layers[slot],
        }
    }
}

/// One attention's inputs, held by a compute team so that its helper threads can take (row,
/// head) items of it: the queries and positions copied, the caches as shared handles on their
/// layer. Its buffers are reused from call to call.
#[derive(Default)]
pub struct AttnInput {
    shape: AttnShape,
    q: Vec<f32>,
    positions: Vec<usize>,
    /// Empty: every row reads `layers[0]`.
    slots: Vec<usize>,
    tiled: Vec<bool>,
    layers: Vec<SharedLayerKv>,
}

impl AttnInput {
    /// Takes the inputs of one attention.
    pub fn set(&mut self, a: Attn<'_>) {
        self.shape = AttnShape::of(a.hp);
        self.q.clear();
        self.q.extend_from_slice(a.q);
        self.positions.clear();
        self.positions.extend_from_slice(a.positions);
        self.slots.clear();
        self.slots.extend_from_slice(a.slots.unwrap_or_default());
        tiled_rows(a.slots, a.positions.len(), &mut self.tiled);
        self.layers.clear();
        self.layers.extend(a.kvs.iter().map(|kv| kv.layer(a.li).clone()));
    }

    /// Output values per item.
    pub fn head_dim(&self) -> usize {
        self.shape.head_dim
    }

    /// Items `items` (item `i` is row `i / n_head`, head `i % n_head`) into `out`, which holds
    /// exactly those items' outputs, as [`attention_batch`] computes them.
    pub fn compute(&self, items: Range<usize>, out: &mut [f32], s: &mut AttnScratch) {
        let ctx = ItemCtx {
            shape: self.shape,
            caches: Caches::Shared(&self.layers),
            slots: (!self.slots.is_empty()).then_some(self.slots.as_slice()),
            li: 0,
            q: &self.q,
            positions: &self.positions,
            tiled: &self.tiled,
        };
        attention_items(&ctx, items, out, s);
    }
}

/// What every attention item reads.
struct ItemCtx<'a> {
    shape: AttnShape,
    caches: Caches<'a>,
    slots: Option<&'a [usize]>,
    li: usize,
    q: &'a [f32],
    positions: &'a [usize],
    tiled: &'a [bool],
}

/// Attention of items `items` (item `i` is row `i / n_head`, head `i % n_head`) into `out`,
/// which holds exactly those items' outputs.
fn attention_items(c: &ItemCtx<'_>, items: Range<usize>, out: &mut [f32], s: &mut AttnScratch) {
    let AttnShape { n_head, n_head_kv, head_dim: hd } = c.shape;
    let nq = n_head * hd;
    let nkv = n_head_kv * hd;
    let group = n_head / n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let k = Kernels::active();
    let first = items.start;
    for i in items {
        let (t, h) = (i / n_head, i % n_head);
        let tiled = c.tiled[t];
        let kv = read_layer(c.caches.layer(c.slots.map_or(0, |sl| sl[t]), c.li));
        let len = c.positions[t] + 1;
        let keys = kv.keys(len);
        let values = kv.values(len);
        let kvh = h / group;
        let head = |j: usize| j * nkv + kvh * hd..j * nkv + (kvh + 1) * hd;
        let qh = &c.q[t * nq + h * hd..t * nq + (h + 1) * hd];
        let o = &mut out[(i - first) * hd..(i - first + 1) * hd];
        s.q.clear();
        if tiled {
            s.q.extend_from_slice(qh);
        } else {
            s.q.extend(qh.iter().map(|&v| f16::from_f32(v).to_f32()));
        }
        let dot = |j: usize| -> f32 { k.dot_f16_f32(&keys[head(j)], &s.q) * scale };
        if tiled {
            s.scores.clear();
            s.scores.extend((0..len).map(dot));
            let max = s.scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f64;
            for sc in s.scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc as f64;
            }
            o.fill(0.0);
            for (j, &w) in s.scores.iter().enumerate() {
                k.f32_axpy_f16(o, &values[head(j)], w);
            }
            let inv = (1.0 / sum) as f32;
            o.iter_mut().for_each(|v| *v *= inv);
            continue;
        }
        // Online softmax with an f16 accumulator, as ggml's per-row flash-attention kernel.
        s.acc16.clear();
        s.acc16.resize(hd, f16::ZERO);
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0.0f32;
        for j in 0..len {
            let sc = dot(j);
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if sc > m {
                ms = (m - sc).exp();
                m = sc;
                k.f16_scale(&mut s.acc16, ms);
            } else {
                vs = (sc - m).exp();
            }
            k.f16_axpy(&mut s.acc16, &values[head(j)], vs);
            sum = sum.mul_add(ms, vs);
        }
        let inv = 1.0 / sum;
        for (od, a) in o.iter_mut().zip(&s.acc16) {
            *od = a.to_f32() * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_items_in_pieces_give_the_same_bits() {
        let hp = fixtures::hparams(8, 2, 32);
        let (nq, hd) = (hp.n_embd_q(), hp.head_dim);
        // Three sequences: a long prefill run (tiled kernel) and two decode rows far into
        // their caches (per-row kernel); layer 1 of two.
        let (kvs, mut rnd) = fixtures::random_caches(&hp, 3, 1024, 0x9E37_79B9_7F4A_7C15);
        let mut positions: Vec<usize> = (100..180).collect();
        let mut slots = vec![0; 80];
        positions.extend([900, 700]);
        slots.extend([1, 2]);
        let q: Vec<f32> = (0..positions.len() * nq).map(|_| rnd()).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut out = vec![0.0; q.len()];
        let a = Attn { hp: &hp, kvs: &kvs, slots: Some(&slots), li: 1, q: &q, positions: &positions };
        attention_batch(a, &mut out, &mut AttnScratch::default());
        let one = bits(&out);
        // Items taken in pieces from the team's copy of the inputs, in any order, with scratch
        // left over from other items.
        let mut input = AttnInput::default();
        input.set(a);
        let n = a.n_items();
        let mut pieces = vec![f32::NAN; q.len()];
        let mut s = AttnScratch::default();
        for piece in [0..1, 640..n, 1..7, 7..640] {
            input.compute(piece.clone(), &mut pieces[piece.start * hd..piece.end * hd], &mut s);
        }
        assert_eq!(bits(&pieces), one);
        // And the single-sequence entry point agrees with the batch one on its rows.
        let mut alone = vec![0.0; 80 * nq];
        attention(&hp, &kvs[0], 1, &q[..80 * nq], &positions[..80], &mut alone, &mut AttnScratch::default());
        assert_eq!(bits(&alone), one[..80 * nq]);
    }
}

/// Inputs for attention tests (here and in the team's).
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::hparams::Arch;

    /// A llama-shaped model of one attention layer's widths.
    pub fn hparams(n_head: usize, n_head_kv: usize, head_dim: usize) -> HParams {
        HParams {
            arch: Arch::Llama,
            n_layer: 2,
            n_embd: n_head * head_dim,
            n_ff: 2 * n_head * head_dim,
            n_head,
            n_head_kv,
            head_dim,
            n_rot: head_dim,
            rope_freq_base: 10000.0,
            rope_freq_scale: 1.0,
            rms_eps: 1e-5,
            n_ctx_train: 4096,
        }
    }

    /// `n_seqs` caches of two layers whose `n_ctx` positions all hold random keys and values,
    /// and the generator that made them (values in -0.5..0.5), for the queries.
    pub fn random_caches(hp: &HParams, n_seqs: usize, n_ctx: usize, seed: u64) -> (Vec<KvCache>, impl FnMut() -> f32) {
        let nkv = hp.n_embd_kv();
        let mut seed = seed;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut kvs: Vec<KvCache> = (0..n_seqs).map(|_| KvCache::new(2, n_ctx, nkv)).collect();
        for kv in &mut kvs {
            for (li, p) in (0..2).flat_map(|li| (0..n_ctx).map(move |p| (li, p))) {
                let k: Vec<f32> = (0..nkv).map(|_| rnd()).collect();
                let v: Vec<f32> = (0..nkv).map(|_| rnd()).collect();
                kv.store(li, p, &k, &v);
            }
        }
        (kvs, rnd)
    }
}
