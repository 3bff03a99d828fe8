//! Quantized matrix × activations: the one operation that reads the weights.
//!
//! Activations are quantized once per call to the weight type's companion 8-bit format
//! (`vec_dot_type`), then every output element is one integer dot product of a weight row with
//! an activation row. Work is split over weight rows, so a weight row is read once for all
//! activation rows of the batch, and each output element is computed by exactly one thread: the
//! result does not depend on the thread count.

use std::ops::Range;

use gguf::GgmlType;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ops;
use crate::quant::activation::{
    interleave_q8_0x8, interleave_q8_1x8, interleave_q8kx8, BlockQ8K, BlockQ8Kx8, BlockQ8_0, BlockQ8_0x8, BlockQ8_1,
    BlockQ8_1x8,
};
use crate::quant::dequant::dequantize_row;
use crate::quant::simd::Kernels;

/// The activation format a weight type's dot product consumes (ggml's `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VecDotType {
    /// Weights are dequantized to f32 and multiplied with f32 activations.
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

/// Which activation format `ty` is multiplied with.
pub fn vec_dot_type(ty: GgmlType) -> VecDotType {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => VecDotType::Q8_0,
        Q4_1 | Q5_1 => VecDotType::Q8_1,
        Q2_K | Q4_K | Q5_K | Q6_K | IQ1_S => VecDotType::Q8K,
        _ => VecDotType::F32,
    }
}

/// A 2-D weight matrix viewed in place: `n_out` rows of `n_in` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `n_out` rows of `n_in` elements of `ty`.
    pub fn new(name: &str, ty: GgmlType, n_in: usize, n_out: usize, data: &'a [u8]) -> Result<QMatrix<'a>> {
        let row = ty.row_bytes(n_in as u64).ok_or_else(|| Error::Shape {
            name: name.to_string(),
            msg: format!("row length {n_in} is not a multiple of the {ty} block size"),
        })?;
        if (row as usize).checked_mul(n_out) != Some(data.len()) {
            return Err(Error::Shape {
                name: name.to_string(),
                msg: format!("{} bytes for {n_out} rows of {row} bytes", data.len()),
            });
        }
        Ok(QMatrix { ty, n_in, n_out, data })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.n_out.max(1)
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Activation rows quantized for one weight type. Reused between calls to avoid allocation.
#[derive(Default)]
pub struct QuantizedActs {
    kind: Option<VecDotType>,
    n_rows: usize,
    n_in: usize,
    f32: Vec<f32>,
    q8_0: Vec<BlockQ8_0>,
    /// The Q8_0 rows again, in groups of eight interleaved for the kernels with one lane per
    /// row (`Kernels::vec_dot_q4_0_q8_0x8`), when the weights and the kernels have them; the
    /// rest of the rows (fewer than eight) only in `q8_0`.
    q8_0x8: Vec<BlockQ8_0x8>,
    q8_1: Vec<BlockQ8_1>,
    /// The Q8_1 rows in groups of eight interleaved, as `q8_0x8` (for Q4_1).
    q8_1x8: Vec<BlockQ8_1x8>,
    q8k: Vec<BlockQ8K>,
    /// The Q8_K rows in groups of eight interleaved, as `q8_0x8` (for IQ1_S in its tiled order).
    q8kx8: Vec<BlockQ8Kx8>,
    tmp0: Vec<BlockQ8_0>,
    tmp1: Vec<BlockQ8_1>,
    tmpk: Vec<BlockQ8K>,
    /// Per activation row: its index within its sequence's run of rows and the run's length
    /// (see [`QuantizedActs::set_runs`]). Empty: the whole batch is one run.
    runs: Vec<(usize, usize)>,
}

/// Rows of one sequence in one product from which llama.cpp's CPU backend multiplies IQ1_S (and
/// other K- and I-quant) weights with its tiled GEMM (`ggml-cpu/tiled`, `src1->ne[1] >= 8`).
pub const TILED_GEMM_MIN_ROWS: usize = 8;

impl QuantizedActs {
    /// Activation rows held.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Splits the activation rows of the next products into runs of `lengths` rows (in order),
    /// each run one sequence's rows, computed as if that sequence's rows were the whole batch:
    /// where llama.cpp's kernel order depends on the batch (IQ1_S in its tiled-GEMM order for
    /// runs of [`TILED_GEMM_MIN_ROWS`]+ rows; Q2_K rows in groups of four), each run decides
    /// for its own rows. Kept across [`QuantizedActs::quantize`]; ignored when the lengths do not
    /// add up to the row count; empty: the batch is one run.
    pub fn set_runs(&mut self, lengths: impl IntoIterator<Item = usize>) {
        self.runs.clear();
        for n in lengths {
            self.runs.extend((0..n).map(|i| (i, n)));
        }
    }

    /// Row `t`'s index within its run and the run's length.
    fn run_of(&self, t: usize) -> (usize, usize) {
        if self.runs.len() == self.n_rows {
            self.runs[t]
        } else {
            (t, self.n_rows)
        }
    }

    /// Whether K-quant and IQ1_S weights take llama.cpp's tiled-GEMM order for row `t`.
    fn tiled(&self, t: usize) -> bool {
        self.run_of(t).1 >= TILED_GEMM_MIN_ROWS
    }

    /// The rows in maximal ranges of one order for weights of type `ty`: `(rows, tiled)`, in
    /// order; one range when `ty` has a single order ([`has_tiled_order`]).
    fn order_ranges(&self, ty: GgmlType) -> impl Iterator<Item = (Range<usize>, bool)> + '_ {
        let two_orders = has_tiled_order(ty);
        ops::runs_by(self.n_rows, move |t| two_orders && self.tiled(t))
    }

    /// Quantizes `x` (`n_rows` rows of `n_in`) to `kind` with kernels `k`; with `interleave`
    /// (the weights take [`takes_interleaved_rows`]) also in interleaved groups of eight rows,
    /// when `k` has kernels for them.
    pub fn quantize(&mut self, k: Kernels, kind: VecDotType, x: &[f32], n_in: usize, interleave: bool) {
        let interleave = interleave && k.has_x8_kernels();
        self.kind = Some(kind);
        self.n_in = n_in;
        self.n_rows = x.len() / n_in;
        match kind {
            VecDotType::F32 => {
                self.f32.clear();
                self.f32.extend_from_slice(x);
            }
            VecDotType::Q8_0 => {
                self.q8_0.clear();
                for row in x.chunks_exact(n_in) {
                    k.quantize_q8_0(row, &mut self.tmp0);
                    self.q8_0.extend_from_slice(&self.tmp0);
                }
                self.q8_0x8.clear();
                if interleave {
                    let nb = n_in / 32;
                    for g in self.q8_0.chunks_exact(8 * nb) {
                        interleave_q8_0x8(std::array::from_fn(|r| &g[r * nb..(r + 1) * nb]), &mut self.q8_0x8);
                    }
                }
            }
            VecDotType::Q8_1 => {
                self.q8_1.clear();
                for row in x.chunks_exact(n_in) {
                    k.quantize_q8_1(row, &mut self.tmp1);
                    self.q8_1.extend_from_slice(&self.tmp1);
                }
                self.q8_1x8.clear();
                if interleave {
                    let nb = n_in / 32;
                    for g in self.q8_1.chunks_exact(8 * nb) {
                        interleave_q8_1x8(std::array::from_fn(|r| &g[r * nb..(r + 1) * nb]), &mut self.q8_1x8);
                    }
                }
            }
            VecDotType::Q8K => {
                self.q8k.clear();
                for row in x.chunks_exact(n_in) {
                    k.quantize_q8_k(row, &mut self.tmpk);
                    self.q8k.extend_from_slice(&self.tmpk);
                }
                // The interleaved kernels on Q8_K rows are all in the tiled order: groups only when
                // some row takes it, the last group padded with zero rows.
                self.q8kx8.clear();
                let nb = n_in / 256;
                if interleave && nb > 0 && (0..self.n_rows).any(|t| self.tiled(t)) {
                    let zeros = vec![BlockQ8K::default(); nb];
                    for g in self.q8k.chunks(8 * nb) {
                        let row = |r: usize| g.get(r * nb..(r + 1) * nb).unwrap_or(&zeros);
                        interleave_q8kx8(std::array::from_fn(row), &mut self.q8kx8);
                    }
                }
            }
        }
    }
}

/// Whether `ty` takes llama.cpp's tiled-GEMM order for a sequence's runs of
/// [`TILED_GEMM_MIN_ROWS`]+ rows (and its vector-dot order otherwise).
fn has_tiled_order(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ1_S | GgmlType::Q4_K | GgmlType::Q6_K)
}

/// Whether `ty` has kernels over eight interleaved activation rows (Q4_0/IQ4_NL on Q8_0 rows,
/// Q4_1 on Q8_1 rows; IQ1_S, Q4_K and Q6_K in their tiled order on Q8_K rows): the
/// activations are interleaved only for those.
pub(crate) fn takes_interleaved_rows(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | IQ4_NL | IQ1_S | Q4_K | Q6_K)
}

/// Dot product of weight row `w` (type `ty`) with activation row `t` of `acts`.
fn dot_row(k: Kernels, ty: GgmlType, w: &[u8], acts: &QuantizedActs, t: usize, scratch: &mut Vec<f32>) -> f32 {
    // llama.cpp's repacked kernels take activation rows four at a time, the rest one by one.
    let (i, run) = acts.run_of(t);
    let in_group_of_four = i < run - run % 4;
    use GgmlType::*;
    let n = acts.n_in;
    match acts.kind {
        Some(VecDotType::Q8_0) => {
            let a = &acts.q8_0[t * n / 32..(t + 1) * n / 32];
            match ty {
                Q4_0 => k.vec_dot_q4_0_q8_0(w, a),
                Q5_0 => k.vec_dot_q5_0_q8_0(w, a),
                Q8_0 => k.vec_dot_q8_0_q8_0(w, a),
                IQ4_NL => k.vec_dot_iq4_nl_q8_0(w, a),
                _ => unreachable!("{ty} is not multiplied with Q8_0"),
            }
        }
        Some(VecDotType::Q8_1) => {
            let a = &acts.q8_1[t * n / 32..(t + 1) * n / 32];
            match ty {
                Q4_1 => k.vec_dot_q4_1_q8_1(w, a),
                Q5_1 => k.vec_dot_q5_1_q8_1(w, a),
                _ => unreachable!("{ty} is not multiplied with Q8_1"),
            }
        }
        Some(VecDotType::Q8K) => {
            let a = &acts.q8k[t * n / 256..(t + 1) * n / 256];
            match ty {
                Q2_K => k.vec_dot_q2_k_q8_k(w, a, in_group_of_four),
                Q4_K if acts.tiled(t) => k.vec_dot_q4_k_q8_k_tiled(w, a),
                Q4_K => k.vec_dot_q4_k_q8_k(w, a),
                Q5_K => k.vec_dot_q5_k_q8_k(w, a),
                Q6_K if acts.tiled(t) => k.vec_dot_q6_k_q8_k_tiled(w, a),
                Q6_K => k.vec_dot_q6_k_q8_k(w, a),
                IQ1_S if acts.tiled(t) => k.vec_dot_iq1_s_q8_k_tiled(w, a),
                IQ1_S => k.vec_dot_iq1_s_q8_k(w, a),
                _ => unreachable!("{ty} is not multiplied with Q8_K"),
            }
        }
        Some(VecDotType::F32) | None => {
            scratch.resize(n, 0.0);
            // The matrix was validated in `QMatrix::new`, so the row has the right length.
            if dequantize_row(ty, w, scratch).is_err() {
                return f32::NAN;
            }
            let x = &acts.f32[t * n..(t + 1) * n];
            scratch.iter().zip(x).map(|(a, b)| a * b).sum()
        }
    }
}

/// Output rows handled per parallel task: large enough to amortise scheduling.
pub(crate) const ROWS_PER_TASK: usize = 16;

/// Weight rows `r0..r0 + chunk.len() / n_rows` of `w` times every activation row of `acts`, into
/// `chunk` laid out weight row by weight row (`chunk[i * n_rows + t]`).
pub(crate) fn compute_rows(
    k: Kernels,
    w: &QMatrix<'_>,
    acts: &QuantizedActs,
    r0: usize,
    chunk: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let rb = w.row_bytes();
    let n_w = chunk.len() / acts.n_rows;
    let mut rows = &w.data[r0 * rb..(r0 + n_w) * rb];
    let mut chunk = chunk;
    // One activation row of Q4_0/IQ4_NL: four weight rows at a time (same bits, see
    // `Kernels::vec_dot_q4_0_q8_0_x4`), the rest one by one.
    if acts.n_rows == 1 && matches!(w.ty, GgmlType::Q4_0 | GgmlType::IQ4_NL) {
        let a = &acts.q8_0[..acts.n_in / 32];
        let whole = n_w / 4 * 4;
        for (wr, o) in rows[..whole * rb].chunks_exact(4 * rb).zip(chunk.chunks_exact_mut(4)) {
            let v =
                if w.ty == GgmlType::Q4_0 { k.vec_dot_q4_0_q8_0_x4(wr, a) } else { k.vec_dot_iq4_nl_q8_0_x4(wr, a) };
            o.copy_from_slice(&v);
        }
        rows = &rows[whole * rb..];
        chunk = &mut chunk[whole..];
    }
    // Interleaved groups of eight activation rows (AVX-512 batches): the groups through the
    // type's interleaved kernel, its lanes kept for the rows in the order it computes (every row
    // of a type with one order, the tiled-order rows of the others); the other rows through the
    // multi-row kernels.
    if let Some(groups) = x8_products(k, w.ty, rows, n_w, acts, scratch) {
        let (n_rows, lanes) = (acts.n_rows, 8 * groups);
        for (range, tiled) in acts.order_ranges(w.ty) {
            let split =
                if tiled || !has_tiled_order(w.ty) { range.end.min(lanes).max(range.start) } else { range.start };
            for ((wr, o), l) in
                rows.chunks_exact(rb).zip(chunk.chunks_exact_mut(n_rows)).zip(scratch.chunks_exact(lanes))
            {
                o[range.start..split].copy_from_slice(&l[range.start..split]);
                if split < range.end
                    && !rows_kernel(k, w.ty, wr, acts, split..range.end, tiled, &mut o[split..range.end])
                {
                    for (t, v) in o.iter_mut().enumerate().take(range.end).skip(split) {
                        *v = dot_row(k, w.ty, wr, acts, t, &mut Vec::new());
                    }
                }
            }
        }
        return;
    }
    for (wr, o) in rows.chunks_exact(rb).zip(chunk.chunks_exact_mut(acts.n_rows)) {
        if !dot_rows(k, w.ty, wr, acts, o) {
            for (t, v) in o.iter_mut().enumerate() {
                *v = dot_row(k, w.ty, wr, acts, t, scratch);
            }
        }
    }
}

/// `out[t]` = weight row `w` · activation row `t`, for every activation row, with a multi-row
/// kernel (each weight block decoded once for all rows, same bits as `dot_row`); `false` when
/// `ty` has none, or the batch is a single row, which the single-row kernels handle as fast.
fn dot_rows(k: Kernels, ty: GgmlType, w: &[u8], acts: &QuantizedActs, out: &mut [f32]) -> bool {
    if acts.n_rows < 2 {
        return false;
    }
    // Consecutive rows of the same order through one kernel call. Whether `ty` has a kernel does
    // not depend on the rows, so either the first call fails or none does.
    acts.order_ranges(ty).all(|(range, tiled)| rows_kernel(k, ty, w, acts, range.clone(), tiled, &mut out[range]))
}

/// `out[j]` = weight row `w` · activation row `rows.start + j`, in the tiled order or not
/// (`tiled`, for the types that have both), through `ty`'s multi-row kernel; `false` when `ty`
/// has none.
fn rows_kernel(
    k: Kernels,
    ty: GgmlType,
    w: &[u8],
    acts: &QuantizedActs,
    rows: Range<usize>,
    tiled: bool,
    out: &mut [f32],
) -> bool {
    use GgmlType::*;
    let (n32, nk) = (acts.n_in / 32, acts.n_in / 256);
    let q8_0 = || &acts.q8_0[rows.start * n32..rows.end * n32];
    let q8k = || &acts.q8k[rows.start * nk..rows.end * nk];
    match (acts.kind, ty, tiled) {
        (Some(VecDotType::Q8_1), Q4_1, _) => {
            k.vec_dot_q4_1_q8_1_rows(w, &acts.q8_1[rows.start * n32..rows.end * n32], out)
        }
        (Some(VecDotType::Q8_0), Q8_0, _) => k.vec_dot_q8_0_q8_0_rows(w, q8_0(), out),
        (Some(VecDotType::Q8_0), Q4_0, _) => k.vec_dot_q4_0_q8_0_rows(w, q8_0(), out),
        (Some(VecDotType::Q8_0), IQ4_NL, _) => k.vec_dot_iq4_nl_q8_0_rows(w, q8_0(), out),
        (Some(VecDotType::Q8K), IQ1_S, true) => k.vec_dot_iq1_s_q8_k_tiled_rows(w, q8k(), out),
        (Some(VecDotType::Q8K), IQ1_S, false) => k.vec_dot_iq1_s_q8_k_rows(w, q8k(), out),
        (Some(VecDotType::Q8K), Q4_K, true) => k.vec_dot_q4_k_q8_k_tiled_rows(w, q8k(), out),
        (Some(VecDotType::Q8K), Q4_K, false) => k.vec_dot_q4_k_q8_k_rows(w, q8k(), out),
        (Some(VecDotType::Q8K), Q5_K, _) => k.vec_dot_q5_k_q8_k_rows(w, q8k(), out),
        (Some(VecDotType::Q8K), Q6_K, true) => k.vec_dot_q6_k_q8_k_tiled_rows(w, q8k(), out),
        (Some(VecDotType::Q8K), Q6_K, false) => k.vec_dot_q6_k_q8_k_rows(w, q8k(), out),
        _ => return false,
    }
    true
}

/// `ty`'s kernel over the interleaved groups of eight activation rows in `acts` (AVX-512
/// batches), for the `n_w` weight rows `w`, into `out` (`out[(i·groups + g)·8 + r]`); the group
/// count, or `None` when `acts` holds no groups for `ty`.
fn x8_products(
    k: Kernels,
    ty: GgmlType,
    w: &[u8],
    n_w: usize,
    acts: &QuantizedActs,
    out: &mut Vec<f32>,
) -> Option<usize> {
    use GgmlType::*;
    let (n32, nk) = (acts.n_in / 32, acts.n_in / 256);
    let groups = match ty {
        Q4_0 | IQ4_NL if n32 > 0 => acts.q8_0x8.len() / n32,
        Q4_1 if n32 > 0 => acts.q8_1x8.len() / n32,
        Q4_K | Q6_K | IQ1_S if nk > 0 => acts.q8kx8.len() / nk,
        _ => 0,
    };
    if groups == 0 {
        return None;
    }
    out.resize(n_w * groups * 8, 0.0);
    match ty {
        Q4_0 => k.vec_dot_q4_0_q8_0x8(w, &acts.q8_0x8, groups, out),
        IQ4_NL => k.vec_dot_iq4_nl_q8_0x8(w, &acts.q8_0x8, groups, out),
        Q4_1 => k.vec_dot_q4_1_q8_1x8(w, &acts.q8_1x8, groups, out),
        Q4_K => k.vec_dot_q4_k_q8_k_tiled_x8(w, &acts.q8kx8, groups, out),
        Q6_K => k.vec_dot_q6_k_q8_k_tiled_x8(w, &acts.q8kx8, groups, out),
        _ => k.vec_dot_iq1_s_q8_k_tiled_x8(w, &acts.q8kx8, groups, out),
    }
    Some(groups)
}

/// `out[t][r] = Σ_k w[r][k] · x[t][k]` for every activation row `t` of `x` (`n_rows × w.n_in`).
/// `out` is `n_rows × w.n_out`; `tmp` is scratch reused between calls.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], out: &mut [f32], acts: &mut QuantizedActs, tmp: &mut Vec<f32>) {
    let n_rows = x.len() / w.n_in;
    assert_eq!(x.len(), n_rows * w.n_in, "activation length is not a multiple of the row length");
    assert_eq!(out.len(), n_rows * w.n_out, "output has the wrong length");
    let k = Kernels::active();
    acts.quantize(k, vec_dot_type(w.ty), x, w.n_in, takes_interleaved_rows(w.ty));
    let acts = &*acts;
    let compute = |r0: usize, chunk: &mut [f32]| compute_rows(k, w, acts, r0, chunk, &mut Vec::new());
    if n_rows == 1 {
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(c, chunk)| compute(c * ROWS_PER_TASK, chunk));
        return;
    }
    tmp.resize(n_rows * w.n_out, 0.0);
    tmp.par_chunks_mut(ROWS_PER_TASK * n_rows).enumerate().for_each(|(c, chunk)| compute(c * ROWS_PER_TASK, chunk));
    transpose_rows(tmp, n_rows, out);
}

/// `out[t * n_out + r] = by_weight_row[r * n_rows + t]`: results laid out weight row by weight row
/// into activation row by activation row. Sixteen weight rows at a time, so every write fills
/// whole cache lines and the reads stay within a few KiB (one element at a time in `out`'s
/// order ran at a tenth of the speed for 128-row batches).
pub(crate) fn transpose_rows(by_weight_row: &[f32], n_rows: usize, out: &mut [f32]) {
    const TILE: usize = 16;
    let n_out = out.len() / n_rows.max(1);
    for (i, tile) in by_weight_row.chunks(TILE * n_rows).enumerate() {
        let (r0, n) = (i * TILE, tile.len() / n_rows);
        for (t, o) in out.chunks_exact_mut(n_out).enumerate() {
            for (j, v) in o[r0..r0 + n].iter_mut().enumerate() {
                *v = tile[j * n_rows + t];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequant::dequantize_row;
    use crate::quant::synthetic::{random_blocks_varied, xorshift_bytes};

    /// The activations as the kernel sees them after quantization, in f32.
    fn dequantized_acts(acts: &QuantizedActs, n: usize) -> Vec<f64> {
        match acts.kind {
            Some(VecDotType::Q8_0) => {
                acts.q8_0[..n / 32].iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect()
            }
            Some(VecDotType::Q8_1) => {
                acts.q8_1[..n / 32].iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect()
            }
            Some(VecDotType::Q8K) => {
                acts.q8k[..n / 256].iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect()
            }
            _ => acts.f32[..n].iter().map(|&v| v as f64).collect(),
        }
    }

    #[test]
    fn transpose_rows_moves_every_value() {
        // Goal: the tiled transposition equals the element-wise one; method: ragged tiles.
        for (n_rows, n_out) in [(1, 5), (2, 16), (5, 37), (9, 33)] {
            let by_weight_row: Vec<f32> = (0..n_rows * n_out).map(|i| i as f32).collect();
            let mut out = vec![f32::NAN; n_rows * n_out];
            transpose_rows(&by_weight_row, n_rows, &mut out);
            for r in 0..n_out {
                for t in 0..n_rows {
                    assert_eq!(out[t * n_out + r], by_weight_row[r * n_rows + t], "{n_rows}×{n_out} at {t},{r}");
                }
            }
        }
    }

    #[test]
    fn matmul_outputs_equal_single_dots() {
        // Goal: whatever path a product takes (four-row decode kernels, multi-row kernels,
        // interleaved groups of eight activation rows, ragged weight-row chunks, sequence runs in
        // both orders in one batch), every output has the bits of its single dot product (in its
        // run's order); method: batches of 1..=17 rows, whole or split into runs, × 37 weight rows.
        use GgmlType::*;
        let k = Kernels::active();
        let (n_in, n_out) = (512, 37);
        let batches: [&[usize]; 9] = [&[1], &[2], &[7], &[8], &[9], &[16], &[17], &[9, 3, 5], &[2, 8, 7]];
        for ty in [Q4_0, IQ4_NL, Q4_1, Q8_0, Q4_K, Q6_K, IQ1_S] {
            let w: Vec<u8> = (0..n_out).flat_map(|r| random_blocks_varied(ty, n_in, 31 * r as u64 + 7)).collect();
            let m = QMatrix::new("w", ty, n_in, n_out, &w).unwrap();
            for runs in batches {
                let n_rows: usize = runs.iter().sum();
                let x: Vec<f32> =
                    xorshift_bytes(n_rows * n_in, n_rows as u64).iter().map(|&b| (b as f32 - 128.0) / 29.0).collect();
                let (mut acts, mut tmp) = (QuantizedActs::default(), Vec::new());
                acts.set_runs(runs.iter().copied());
                let mut out = vec![f32::NAN; n_rows * n_out];
                matmul(&m, &x, &mut out, &mut acts, &mut tmp);
                for r in 0..n_out {
                    for t in 0..n_rows {
                        let want = dot_row(k, ty, m.row(r), &acts, t, &mut Vec::new());
                        let got = out[t * n_out + r];
                        assert_eq!(got.to_bits(), want.to_bits(), "{ty}, runs {runs:?}: weight row {r} × row {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn integer_dots_equal_dequantized_f64_dots() {
        // Goal: each type's integer dot equals Σ dequant(w)·dequant(act) computed in f64.
        use GgmlType::*;
        let n = 512;
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q4_K, Q5_K, Q6_K, IQ1_S] {
            for seed in 1..4u64 {
                let w = random_blocks_varied(ty, n, seed * 7919 + ty.id() as u64);
                let x: Vec<f32> = xorshift_bytes(n, seed).iter().map(|&b| (b as f32 - 128.0) / 37.0).collect();
                let mut acts = QuantizedActs::default();
                acts.quantize(Kernels::scalar(), vec_dot_type(ty), &x, n, false);
                let got = dot_row(Kernels::scalar(), ty, &w, &acts, 0, &mut Vec::new()) as f64;
                let mut wf = vec![0.0f32; n];
                dequantize_row(ty, &w, &mut wf).unwrap();
                let a = dequantized_acts(&acts, n);
                let want: f64 = wf.iter().zip(&a).map(|(&w, &a)| w as f64 * a).sum();
                let scale: f64 = wf.iter().zip(&a).map(|(&w, &a)| (w as f64 * a).abs()).sum();
                assert!(
                    (got - want).abs() <= 1e-5 * scale.max(1e-6),
                    "{ty} seed {seed}: {got} vs {want} (scale {scale})"
                );
            }
        }
    }
}
