//! AVX-512 (F/BW/VL + VNNI) kernels: the AVX2 kernels with `vpdpbusd`, which multiplies
//! unsigned by signed bytes and adds each group of four into an i32 lane in one instruction.
//! Those groups of four are exactly the reference's integer lanes, so the float work, and the
//! result bits, are the same as in `avx2` and the scalar reference.
//!
//! Types where VNNI does not pay (or no test model uses them yet) reuse the AVX2 kernels: every
//! CPU with this set also has AVX2, FMA and F16C (`Isa::is_supported`).

use std::arch::x86_64::*;

use half::f16;

use super::avx2::{
    self, f16_at, f16x4, for_row_blocks, fuse4_nibble_blocks, fuse_tail_nibble_blocks, hsum8, hsum_i32, hsum_i32_x4,
    in_row_groups, iq1_s_sub_block, iq4_nl_values, lane, load16, load16_i16, load32, load32_i8, nibble_blocks_dot_x4,
    q4_0_values, q4_k_rows, q5_k_rows, q6_k_rows, q6k_values, rows_s, split_rows, sub, sub_i8, to_array,
    ROWS_PER_GROUP,
};
use crate::quant::activation::{BlockQ8K, BlockQ8Kx8, BlockQ8_0, BlockQ8_0x8, BlockQ8_1, BlockQ8_1x8};
use crate::quant::dot::scales_mins_k4;

pub use super::avx2::{
    f16_axpy, f16_scale, f32_axpy_f16, quantize_q8_0, quantize_q8_1, quantize_q8_k, vec_dot_iq1_s_q8_k_tiled_rows,
    vec_dot_q2_k_q8_k, vec_dot_q4_k_q8_k_tiled, vec_dot_q4_k_q8_k_tiled_rows, vec_dot_q5_0_q8_0, vec_dot_q5_k_q8_k,
    vec_dot_q6_k_q8_k_tiled, vec_dot_q6_k_q8_k_tiled_rows,
};

/// `IQ1S_DELTA` of the reference kernel.
const IQ1S_DELTA: f32 = 0.125;

/// Lane `l` (i32) = Σ u[k]·s[k] over bytes `k` in `4l..4l+4` (no intermediate saturation).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot4(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (blk, y) in w.chunks_exact(20).zip(a) {
        let dm = f16x4(blk, 0);
        let (d, m) = (lane::<0>(dm), lane::<1>(dm));
        summs = m.mul_add(y.s, summs);
        let lanes = dot4(nibbles(sub(blk, 4)), load32_i8(&y.qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), acc);
    }
    hsum8(acc) + summs
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (blk, y) in w.chunks_exact(34).zip(a) {
        let d = f16_at(blk, 0);
        let x = load32(sub(blk, 2));
        let lanes = dot4(_mm256_abs_epi8(x), _mm256_sign_epi8(load32_i8(&y.qs), x));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), acc);
    }
    hsum8(acc)
}

/// A Q4_0/IQ4_NL block's eight exact lanes (`avx2::nibble_block_lanes`), with the weights
/// taken unsigned: `table_u` holds the sixteen values + 128, and every lane starts from -128 ×
/// the sum of its four activations, so `Σ (v + 128)·y - 128·Σ y = Σ v·y` with no sign
/// juggling. The sixteen bytes are broadcast to both halves and shifted per half (low nibbles
/// for elements 0–15, high for 16–31), which needs no cross-lane unpacking. The start value
/// depends on the activations only, so a caller's rows share it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibble_block_lanes(blk: &[u8], y: &BlockQ8_0, table_u: __m256i) -> __m256i {
    let ya = load32_i8(&y.qs);
    let start = _mm256_sub_epi32(_mm256_setzero_si256(), dot4(_mm256_set1_epi8(-128), ya));
    _mm256_dpbusd_epi32(start, _mm256_shuffle_epi8(table_u, nibbles(sub(blk, 2))), ya)
}

/// `avx2::nibbles` (low nibbles of 16 bytes in the low half, high nibbles in the high half)
/// without its cross-lane insert: the bytes are broadcast to both halves, the high half's
/// 16-bit words shifted down by four (`vpsrlvw`), and both masked.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibbles(q: &[u8; 16]) -> __m256i {
    let q = _mm256_broadcastsi128_si256(load16(q));
    let halves = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
    _mm256_and_si256(_mm256_srlv_epi16(q, halves), _mm256_set1_epi8(0x0F))
}

/// A `pshufb` table of sixteen signed values as the unsigned values + 128, in both halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn unsigned_table(values: __m128i) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_xor_si128(values, _mm_set1_epi8(-128)))
}

/// As `avx2::nibble_blocks_dot`: exact block sums, fused one block at a time in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibble_blocks_dot(w: &[u8], a: &[BlockQ8_0], table: __m128i) -> f32 {
    let table = unsigned_table(table);
    let n = (w.len() / 18).min(a.len());
    let (w, a) = (&w[..n * 18], &a[..n]);
    let mut acc = 0.0f32;
    let mut w4 = w.chunks_exact(72);
    let mut a4 = a.chunks_exact(4);
    for (w4, a4) in w4.by_ref().zip(a4.by_ref()) {
        let l = |i: usize| nibble_block_lanes(&w4[18 * i..18 * i + 18], &a4[i], table);
        acc = fuse4_nibble_blocks(acc, hsum_i32_x4(l(0), l(1), l(2), l(3)), w4, a4);
    }
    let (wr, ar) = (w4.remainder(), a4.remainder());
    if !ar.is_empty() {
        let z = _mm256_setzero_si256();
        let l = |i: usize| if i < ar.len() { nibble_block_lanes(&wr[18 * i..18 * i + 18], &ar[i], table) } else { z };
        acc = fuse_tail_nibble_blocks(acc, hsum_i32_x4(l(0), l(1), l(2), z), wr, ar);
    }
    acc
}

/// `avx2::vec_dot_q4_0_q8_0_x4` with the VNNI block kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_0_q8_0_x4(w: &[u8], a: &[BlockQ8_0]) -> [f32; 4] {
    nibble_blocks_dot_x4!(nibble_block_lanes, w, a, unsigned_table(q4_0_values()))
}

/// `avx2::vec_dot_iq4_nl_q8_0_x4` with the VNNI block kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_iq4_nl_q8_0_x4(w: &[u8], a: &[BlockQ8_0]) -> [f32; 4] {
    nibble_blocks_dot_x4!(nibble_block_lanes, w, a, unsigned_table(iq4_nl_values()))
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    nibble_blocks_dot(w, a, q4_0_values())
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_iq4_nl_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    nibble_blocks_dot(w, a, iq4_nl_values())
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_iq1_s_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc1 = 0.0f32;
    for (blk, y) in w.chunks_exact(50).zip(a) {
        let mut lanes = _mm256_setzero_si256();
        let mut ls_delta = [0i16; 16];
        for ib in 0..8 {
            let (grid, ls, delta) = iq1_s_sub_block(blk, ib);
            // Grid values are -1, 0 or 1: `sign` is the exact product, and the sub-block scale
            // (odd, ≤ 15) is the unsigned operand.
            let prod = _mm256_sign_epi8(load32_i8(sub_i8(&y.qs, 32 * ib)), grid);
            lanes = _mm256_dpbusd_epi32(lanes, _mm256_set1_epi8(ls as i8), prod);
            ls_delta[2 * ib] = (ls * delta) as i16;
            ls_delta[2 * ib + 1] = (ls * delta) as i16;
        }
        // Σ ls·delta·(16-element sums) as one `madd` (|ls·delta| ≤ 15, sums ≤ 2032: exact), as
        // in the multi-row kernel.
        let sumi1 = hsum_i32(_mm256_madd_epi16(load16_i16(&y.bsums), load16_i16(&ls_delta)));
        let d = y.d * f16_at(blk, 0);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
        acc1 = d.mul_add(sumi1 as f32, acc1);
    }
    IQ1S_DELTA.mul_add(acc1, hsum8(acc))
}

/// [`vec_dot_q4_1_q8_1`] for `R` activation rows: per output, the same operations in the same
/// order; the nibbles and scales of each block are decoded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q4_1_rows<const R: usize>(w: &[u8], a: &[BlockQ8_1], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8_1]; R] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); R];
    // The rows' `summs` chains side by side, one per lane: the same fused multiply-adds.
    let mut summs = _mm_setzero_ps();
    for (b, blk) in w.chunks_exact(20).take(nb).enumerate() {
        let dm = f16x4(blk, 0);
        let (d, m) = (lane::<0>(dm), lane::<1>(dm));
        summs = _mm_fmadd_ps(_mm_set1_ps(m), rows_s(&ys, b), summs);
        let x = nibbles(sub(blk, 4));
        for (acc, ys) in acc.iter_mut().zip(&ys) {
            let y = &ys[b];
            let lanes = dot4(x, load32_i8(&y.qs));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), *acc);
        }
    }
    for ((o, acc), summs) in out.iter_mut().zip(acc).zip(to_array(summs)) {
        *o = hsum8(acc) + summs;
    }
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_1_q8_1_rows(w: &[u8], a: &[BlockQ8_1], out: &mut [f32]) {
    if out.is_empty() {
        return;
    }
    let n_rows = out.len();
    let nb = a.len() / n_rows;
    let mut groups = out.chunks_exact_mut(8);
    for (g, o) in groups.by_ref().enumerate() {
        q4_1_rows8(w, &a[8 * g * nb..8 * (g + 1) * nb], nb, o);
    }
    let rest = groups.into_remainder();
    in_row_groups!(q4_1_rows, w, &a[(n_rows - rest.len()) * nb..], rest)
}

/// [`q4_1_rows`] for exactly eight rows (their accumulators fit in the 32 vector registers),
/// the rows' `summs` chains in the lanes of one 8-lane vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q4_1_rows8(w: &[u8], a: &[BlockQ8_1], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8_1]; 8] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut summs = _mm256_setzero_ps();
    for (b, blk) in w.chunks_exact(20).take(nb).enumerate() {
        let dm = f16x4(blk, 0);
        let (d, m) = (lane::<0>(dm), lane::<1>(dm));
        let ys_s = |r: usize| ys[r][b].s;
        let s = _mm256_setr_ps(ys_s(0), ys_s(1), ys_s(2), ys_s(3), ys_s(4), ys_s(5), ys_s(6), ys_s(7));
        summs = _mm256_fmadd_ps(_mm256_set1_ps(m), s, summs);
        let x = nibbles(sub(blk, 4));
        for (acc, ys) in acc.iter_mut().zip(&ys) {
            let y = &ys[b];
            let lanes = dot4(x, load32_i8(&y.qs));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), *acc);
        }
    }
    let mut sm = [0.0f32; 8];
    // SAFETY: writes the 8 floats of `sm`; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(sm.as_mut_ptr(), summs) };
    for ((o, acc), summs) in out.iter_mut().zip(acc).zip(sm) {
        *o = hsum8(acc) + summs;
    }
}

/// `hsum_float_8` of eight accumulators lane by lane: lane `r` of the result is
/// `((a4 + a0) + (a6 + a2)) + ((a5 + a1) + (a7 + a3))` of the lanes `r`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum8_lanes(acc: &[__m256; 8]) -> __m256 {
    let lo = _mm256_add_ps(_mm256_add_ps(acc[4], acc[0]), _mm256_add_ps(acc[6], acc[2]));
    let hi = _mm256_add_ps(_mm256_add_ps(acc[5], acc[1]), _mm256_add_ps(acc[7], acc[3]));
    _mm256_add_ps(lo, hi)
}

/// [`vec_dot_q4_1_q8_1`] of weight rows `w` (back to back) × `groups` groups of eight
/// interleaved activation rows ([`BlockQ8_1x8`]), laid out as `dot::vec_dot_q4_1_q8_1x8` says.
/// Lanes are activation rows: the reference's eight integer lanes become eight accumulators,
/// lane position `l` fed by one `vpdpbusd` of weight word `l` (a broadcast load) with the eight
/// rows' word `l`; the scale product `d·y.d` and the `summs` step are one vector operation per
/// block for the eight rows, and `hsum_float_8`'s order is kept across the eight accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q4_1_x8(w: &[u8], a: &[BlockQ8_1x8], groups: usize, out: &mut [f32]) {
    let nb = a.len() / groups.max(1);
    let rb = 20 * nb;
    if rb == 0 {
        return;
    }
    let z = _mm256_setzero_si256();
    for (i, wr) in w.chunks_exact(rb).enumerate() {
        for (g, ys) in a.chunks_exact(nb).enumerate() {
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut summs = _mm256_setzero_ps();
            for (blk, y) in wr.chunks_exact(20).zip(ys) {
                let dm = f16x4(blk, 0);
                // The weight words stored once and broadcast from memory (`vpermd` broadcasts
                // measured slower, and so did this file's `nibbles` here).
                let mut words = [0i32; 8];
                let x = avx2::nibbles(sub(blk, 4));
                // SAFETY: writes the 32 bytes of `words`; `storeu` has no alignment requirement.
                unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), x) };
                // SAFETY: reads the 8 floats of `d` and of `s`; `loadu` has no alignment requirement.
                let (yd, ys) = unsafe { (_mm256_loadu_ps(y.d.as_ptr()), _mm256_loadu_ps(y.s.as_ptr())) };
                summs = _mm256_fmadd_ps(_mm256_set1_ps(lane::<1>(dm)), ys, summs);
                let dd = _mm256_mul_ps(_mm256_broadcastss_ps(dm), yd);
                for (l, acc) in acc.iter_mut().enumerate() {
                    let v = _mm256_dpbusd_epi32(z, _mm256_set1_epi32(words[l]), load32_i8(sub_i8(&y.qs, 32 * l)));
                    *acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(v), *acc);
                }
            }
            let r = _mm256_add_ps(hsum8_lanes(&acc), summs);
            // SAFETY: writes 8 floats at `(i·groups + g)·8`, inside `out` (n_w · groups · 8 long).
            unsafe { _mm256_storeu_ps(out[(i * groups + g) * 8..][..8].as_mut_ptr(), r) };
        }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_1_q8_1x8(w: &[u8], a: &[BlockQ8_1x8], groups: usize, out: &mut [f32]) {
    q4_1_x8(w, a, groups, out)
}

/// [`vec_dot_q8_0_q8_0`] for `R` activation rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q8_0_rows<const R: usize>(w: &[u8], a: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8_0]; R] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, blk) in w.chunks_exact(34).take(nb).enumerate() {
        let d = f16_at(blk, 0);
        let x = load32(sub(blk, 2));
        let ax = _mm256_abs_epi8(x);
        for (acc, ys) in acc.iter_mut().zip(&ys) {
            let y = &ys[b];
            let lanes = dot4(ax, _mm256_sign_epi8(load32_i8(&y.qs), x));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = hsum8(acc);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q8_0_q8_0_rows(w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
    in_row_groups!(q8_0_rows, w, a, out)
}

/// [`nibble_blocks_dot`] for `R` (at most four) activation rows. The reference fuses one block
/// at a time into one scalar chain per row; here the rows' chains run side by side in the lanes
/// of one vector, block by block, which is the same fused multiply-add per row and block
/// (`fma(sum, d·y.d, acc)`), and each block is decoded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibble_rows<const R: usize>(w: &[u8], a: &[BlockQ8_0], nb: usize, out: &mut [f32], table: __m128i) {
    let table = _mm256_broadcastsi128_si256(table);
    let ys: [&[BlockQ8_0]; R] = split_rows(a, nb);
    let n = (w.len() / 18).min(nb);
    let z = _mm256_setzero_si256();
    let mut acc = _mm_setzero_ps();
    for (b, blk) in w[..n * 18].chunks_exact(18).enumerate() {
        let v = _mm256_shuffle_epi8(table, nibbles(sub(blk, 2)));
        let av = _mm256_abs_epi8(v);
        let l = |r: usize| if r < R { dot4(av, _mm256_sign_epi8(load32_i8(&ys[r][b].qs), v)) } else { z };
        let s = _mm_cvtepi32_ps(hsum_i32_x4(l(0), l(1), l(2), l(3)));
        let yd = |r: usize| if r < R { ys[r][b].d } else { 0.0 };
        let dy = _mm_mul_ps(_mm_set1_ps(f16_at(blk, 0)), _mm_setr_ps(yd(0), yd(1), yd(2), yd(3)));
        acc = _mm_fmadd_ps(s, dy, acc);
    }
    out.copy_from_slice(&to_array(acc)[..R]);
}

/// The lane sums of eight vectors: `[Σv0, …, Σv7]` (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum_i32_x8(v: [__m256i; 8]) -> __m256i {
    let h = |a: __m256i, b: __m256i, c: __m256i, d: __m256i| {
        _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d))
    };
    // Low 128-bit halves hold the sums of each vector's low halves, high ones of its high halves.
    let (h0, h1) = (h(v[0], v[1], v[2], v[3]), h(v[4], v[5], v[6], v[7]));
    _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(h0, h1), _mm256_permute2x128_si256::<0x31>(h0, h1))
}

/// [`nibble_rows`] for exactly eight activation rows, their chains in the lanes of one 8-lane
/// vector: one block-sum reduction, conversion, scale product and fused multiply-add per block
/// for all eight.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibble_rows8(w: &[u8], a: &[BlockQ8_0], nb: usize, out: &mut [f32], table: __m256i) {
    let ys: [&[BlockQ8_0]; 8] = split_rows(a, nb);
    let n = (w.len() / 18).min(nb);
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w[..n * 18].chunks_exact(18).enumerate() {
        let v = _mm256_shuffle_epi8(table, nibbles(sub(blk, 2)));
        let av = _mm256_abs_epi8(v);
        let l = |r: usize| dot4(av, _mm256_sign_epi8(load32_i8(&ys[r][b].qs), v));
        let s = _mm256_cvtepi32_ps(hsum_i32_x8([l(0), l(1), l(2), l(3), l(4), l(5), l(6), l(7)]));
        let yd = |r: usize| ys[r][b].d;
        let yd = _mm256_setr_ps(yd(0), yd(1), yd(2), yd(3), yd(4), yd(5), yd(6), yd(7));
        acc = _mm256_fmadd_ps(s, _mm256_mul_ps(_mm256_set1_ps(f16_at(blk, 0)), yd), acc);
    }
    let out: &mut [f32; 8] = out.try_into().expect("eight rows");
    // SAFETY: writes the 8 floats of `out`; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) }
}

/// [`nibble_rows`] over every activation row: eight at a time, then up to four at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibble_rows_all(w: &[u8], a: &[BlockQ8_0], out: &mut [f32], table: __m128i) {
    if out.is_empty() {
        return;
    }
    let n_rows = out.len();
    let nb = a.len() / n_rows;
    let mut groups = out.chunks_exact_mut(8);
    for (g, o) in groups.by_ref().enumerate() {
        nibble_rows8(w, &a[8 * g * nb..8 * (g + 1) * nb], nb, o, _mm256_broadcastsi128_si256(table));
    }
    let rest = groups.into_remainder();
    let a = &a[(n_rows - rest.len()) * nb..];
    for (i, o) in rest.chunks_mut(4).enumerate() {
        let a = &a[4 * i * nb..(4 * i + o.len()) * nb];
        match o.len() {
            1 => nibble_rows::<1>(w, a, nb, o, table),
            2 => nibble_rows::<2>(w, a, nb, o, table),
            3 => nibble_rows::<3>(w, a, nb, o, table),
            _ => nibble_rows::<4>(w, a, nb, o, table),
        }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_0_q8_0_rows(w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
    nibble_rows_all(w, a, out, q4_0_values())
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_iq4_nl_q8_0_rows(w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
    nibble_rows_all(w, a, out, iq4_nl_values())
}

/// Blocks per slab of [`nibble_8x8`]: eight weight rows' values of a slab (16 KiB) stay in L1
/// while every activation group passes.
const NIBBLE_SLAB: usize = 64;

/// Eight weight rows' Q4_0/IQ4_NL values (+128, as bytes, element order) and scales, for up to
/// [`NIBBLE_SLAB`] blocks.
#[repr(C, align(32))]
struct NibbleTile {
    q: [[u8; 32 * NIBBLE_SLAB]; 8],
    d: [[f32; NIBBLE_SLAB]; 8],
}

/// Q4_0/IQ4_NL weight rows (values through `table`) × `groups` groups of eight interleaved
/// activation rows ([`BlockQ8_0x8`], each group's blocks in turn), laid out as
/// `dot::vec_dot_q4_0_q8_0x8` says, in the reference's order per (weight row, activation row):
/// one exact integer per block, `acc = fma(sum, d·y.d, acc)`, blocks in order. Eight weight rows
/// at a time: a slab of their blocks is unpacked once into a byte tile (values + 128) and used
/// for every group, so each activation word feeds eight `vpdpbusd` (one lane per activation
/// row), the weight words come as broadcast loads, and 128 × each row's value sum comes back off.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn nibble_8x8(w: &[u8], a: &[BlockQ8_0x8], groups: usize, out: &mut [f32], table: __m128i) {
    // The values + 128 as bytes (128 + v ≡ v ^ 0x80 for an i8 v).
    let table = _mm256_broadcastsi128_si256(_mm_xor_si128(table, _mm_set1_epi8(i8::MIN)));
    let nb = a.len() / groups.max(1);
    let rb = 18 * nb;
    if rb == 0 {
        return;
    }
    let n_w = w.len() / rb;
    let out = &mut out[..n_w * groups * 8];
    let mut tile = NibbleTile { q: [[0; 32 * NIBBLE_SLAB]; 8], d: [[0.0; NIBBLE_SLAB]; 8] };
    for (c, wc) in w[..n_w * rb].chunks(8 * rb).enumerate() {
        let nw = wc.len() / rb;
        for b0 in (0..nb).step_by(NIBBLE_SLAB) {
            let n_slab = NIBBLE_SLAB.min(nb - b0);
            for t in 0..nw {
                let row = &wc[t * rb + 18 * b0..t * rb + 18 * (b0 + n_slab)];
                for (j, blk) in row.chunks_exact(18).enumerate() {
                    let v = _mm256_shuffle_epi8(table, nibbles(sub(blk, 2)));
                    // SAFETY: writes bytes 32j..32j + 32 of the row's 32·NIBBLE_SLAB (j < n_slab ≤
                    // NIBBLE_SLAB); `storeu` has no alignment requirement.
                    unsafe { _mm256_storeu_si256(tile.q[t].as_mut_ptr().add(32 * j).cast(), v) };
                    tile.d[t][j] = f16_at(blk, 0);
                }
            }
            for g in 0..groups {
                let at = |t: usize| ((8 * c + t) * groups + g) * 8;
                let mut o = [_mm256_setzero_ps(); 8];
                if b0 > 0 {
                    for (t, o) in o.iter_mut().enumerate().take(nw) {
                        // SAFETY: reads the 8 floats at `at(t)`, inside `out`; no alignment requirement.
                        *o = unsafe { _mm256_loadu_ps(out.as_ptr().add(at(t))) };
                    }
                }
                for (j, y) in a[g * nb + b0..g * nb + b0 + n_slab].iter().enumerate() {
                    let mut acc = [_mm256_setzero_si256(); 8];
                    for q in 0..8 {
                        let codes = load32_i8(sub_i8(&y.qs, 32 * q));
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let word = i32::from_le_bytes(*sub(&tile.q[t], 32 * j + 4 * q));
                            *acc = _mm256_dpbusd_epi32(*acc, _mm256_set1_epi32(word), codes);
                        }
                    }
                    // SAFETY: reads the 8 i32 of `offset` and the 8 floats of `d`; no alignment requirement.
                    let (offset, yd) =
                        unsafe { (_mm256_loadu_si256(y.offset.as_ptr().cast()), _mm256_loadu_ps(y.d.as_ptr())) };
                    for (t, o) in o.iter_mut().enumerate() {
                        let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[t], offset));
                        *o = _mm256_fmadd_ps(s, _mm256_mul_ps(_mm256_set1_ps(tile.d[t][j]), yd), *o);
                    }
                }
                for (t, o) in o.iter().enumerate().take(nw) {
                    // SAFETY: writes the 8 floats at `at(t)`, inside `out`; no alignment requirement.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(at(t)), *o) };
                }
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_0_q8_0x8(w: &[u8], a: &[BlockQ8_0x8], groups: usize, out: &mut [f32]) {
    nibble_8x8(w, a, groups, out, q4_0_values())
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_iq4_nl_q8_0x8(w: &[u8], a: &[BlockQ8_0x8], groups: usize, out: &mut [f32]) {
    nibble_8x8(w, a, groups, out, iq4_nl_values())
}

/// Super-block `b` of up to eight weight rows, unpacked for [`k_tiled_x8`]: each row's 256 values
/// as unsigned bytes (element order), its sub-block scales (and Q4_K mins) as i32, `d` and `dmin`.
#[repr(C, align(32))]
struct KTile {
    q: [[u8; 256]; 8],
    sc: [[i32; 16]; 8],
    mn: [[i32; 8]; 8],
    d: [f32; 8],
    dmin: [f32; 8],
}

/// Q4_K block `blk` into row `t` of `tile`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q4k_into_tile(blk: &[u8], tile: &mut KTile, t: usize) {
    let low = _mm256_set1_epi8(0x0F);
    let q = &mut tile.q[t];
    for p in 0..4 {
        // Sub-block 2p is the low nibbles of bytes 32p..32p + 32, sub-block 2p + 1 the high ones.
        let v = load32(sub(blk, 16 + 32 * p));
        // SAFETY: writes bytes 64p..64p + 64 of the 256 of `q`; `storeu` has no alignment requirement.
        unsafe {
            _mm256_storeu_si256(q.as_mut_ptr().add(64 * p).cast(), _mm256_and_si256(v, low));
            _mm256_storeu_si256(q.as_mut_ptr().add(64 * p + 32).cast(), _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
        }
    }
    let (sc, m) = scales_mins_k4(sub(blk, 4));
    for j in 0..8 {
        tile.sc[t][j] = sc[j] as i32;
        tile.mn[t][j] = m[j] as i32;
    }
    tile.d[t] = f16_at(blk, 0);
    tile.dmin[t] = f16_at(blk, 2);
}

/// IQ1_S block `blk` into row `t` of `tile`: the weights `8·grid ± 1` + 128 (119..=137) as bytes,
/// the sub-block scales, and `d/8` (exact: the 8 of the integer weights taken back out).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn iq1s_into_tile(blk: &[u8], tile: &mut KTile, t: usize) {
    let eight = _mm256_set1_epi8(8);
    for ib in 0..8 {
        let (grid, ls, delta) = iq1_s_sub_block(blk, ib);
        // `sign` gives 8·g exactly; the byte add wraps to the unsigned value.
        let u = _mm256_add_epi8(_mm256_sign_epi8(eight, grid), _mm256_set1_epi8((delta + 128) as u8 as i8));
        // SAFETY: writes bytes 32ib..32ib + 32 of the row's 256; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(tile.q[t].as_mut_ptr().add(32 * ib).cast(), u) };
        tile.sc[t][ib] = ls;
    }
    tile.d[t] = f16_at(blk, 0) * 0.125;
}

/// Q6_K block `blk` into row `t` of `tile` (values unsigned, 0..64).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q6k_into_tile(blk: &[u8], tile: &mut KTile, t: usize) {
    let q = &mut tile.q[t];
    for (i, v) in q6k_values(sub(blk, 0)).iter().enumerate() {
        // SAFETY: writes bytes 32i..32i + 32 of the 256 of `q`; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(32 * i).cast(), *v) };
    }
    for j in 0..16 {
        tile.sc[t][j] = blk[192 + j] as i8 as i32;
    }
    // The scale is the block's last two bytes (`f16_at` reads 8).
    tile.d[t] = lane::<3>(f16x4(blk, 202));
}

/// The four bytes of row `t` of `tile` at `at`, in every lane.
#[inline(always)]
fn tile_word(tile: &KTile, t: usize, at: usize) -> i32 {
    i32::from_le_bytes(*sub(&tile.q[t], at))
}

/// The exact integers of one super-block of eight weight rows (`tile`, `SUBS` sub-blocks) ×
/// eight interleaved activation rows `y`: per weight row `t`, lane `r` = Σ over sub-blocks of
/// the scale × (Σ weight · activation − 2^`SHIFT` × the row's sub-block sum from `sums`, where
/// the weights are taken 2^`SHIFT` above their value; `SHIFT = 0`: no offset). Each 4-byte group
/// of activations (eight rows) is loaded once for the eight weight rows, each weight word
/// broadcast from the tile into one `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn tile_scaled_sums<const SUBS: usize, const SHIFT: i32>(tile: &KTile, y: &BlockQ8Kx8, sums: &[i32]) -> [__m256i; 8] {
    let (width, words) = (256 / SUBS, 64 / SUBS);
    let z = _mm256_setzero_si256();
    let mut s1 = [z; 8];
    for s in 0..SUBS {
        let start = if SHIFT > 0 {
            // SAFETY: reads sums 8s..8s + 8 of the 8·SUBS; `loadu` has no alignment requirement.
            let sums = unsafe { _mm256_loadu_si256(sums[8 * s..8 * s + 8].as_ptr().cast()) };
            _mm256_sub_epi32(z, _mm256_slli_epi32::<SHIFT>(sums))
        } else {
            z
        };
        let mut acc = [start; 8];
        for q in 0..words {
            let codes = load32_i8(sub_i8(&y.qs, 32 * (words * s + q)));
            for (t, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_dpbusd_epi32(*acc, _mm256_set1_epi32(tile_word(tile, t, width * s + 4 * q)), codes);
            }
        }
        for (t, s1) in s1.iter_mut().enumerate() {
            // Exact in i32: Q4_K |Σ x·q| ≤ 15·128·32 × 6-bit scales × 8; Q6_K |Σ (x - 32)·q| ≤
            // 32·128·16 × 8-bit scales × 16; IQ1_S |Σ (8g ± 1)·q| ≤ 32·9·127 × 15 × 8.
            *s1 = _mm256_add_epi32(*s1, _mm256_mullo_epi32(acc[t], _mm256_set1_epi32(tile.sc[t][s])));
        }
    }
    s1
}

/// One Q4_K super-block of eight weight rows × eight interleaved activation rows: per weight row
/// `t`, lane `r` = `fma(-dmin, s2, fl(s1·d))` of `dot::vec_dot_q4_k_q8_k_tiled`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q4k_block_8x8(tile: &KTile, y: &BlockQ8Kx8) -> [__m256; 8] {
    let s1 = tile_scaled_sums::<8, 0>(tile, y, &y.sums);
    // A loop, not `array::from_fn`: its closure was not inlined into this function.
    let mut s2 = [_mm256_setzero_si256(); 8];
    for s in 0..8 {
        // SAFETY: reads sums 8s..8s + 8 of the 64; `loadu` has no alignment requirement.
        let sums = unsafe { _mm256_loadu_si256(y.sums.as_ptr().add(8 * s).cast()) };
        for (t, s2) in s2.iter_mut().enumerate() {
            *s2 = _mm256_add_epi32(*s2, _mm256_mullo_epi32(sums, _mm256_set1_epi32(tile.mn[t][s])));
        }
    }
    let mut r = [_mm256_setzero_ps(); 8];
    for (t, r) in r.iter_mut().enumerate() {
        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(s1[t]), _mm256_set1_ps(tile.d[t]));
        *r = _mm256_fnmadd_ps(_mm256_set1_ps(tile.dmin[t]), _mm256_cvtepi32_ps(s2[t]), p);
    }
    r
}

/// Per weight row `t`, lane `r` = `fl(s·d)`: the one-integer epilogue of Q6_K and IQ1_S (whose
/// `d` in the tile is already `d/8`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn scaled_by_d(tile: &KTile, s: [__m256i; 8]) -> [__m256; 8] {
    let mut r = [_mm256_setzero_ps(); 8];
    for (t, r) in r.iter_mut().enumerate() {
        *r = _mm256_mul_ps(_mm256_cvtepi32_ps(s[t]), _mm256_set1_ps(tile.d[t]));
    }
    r
}

/// Which weights [`k_tiled_x8`] multiplies.
const TILED_Q4_K: u8 = 0;
const TILED_Q6_K: u8 = 1;
const TILED_IQ1_S: u8 = 2;

/// Q4_K, Q6_K or IQ1_S (`KIND`) weight rows `w` in llama.cpp's tiled-GEMM order × `groups` groups
/// of eight interleaved activation rows (`a`, each group's blocks in turn), laid out as
/// `dot::vec_dot_q4_k_q8_k_tiled_x8` says. Eight weight rows at a time: each super-block is
/// unpacked once into a tile of bytes and used for every group, so a group's activation word
/// feeds eight `vpdpbusd` and the weight words come as broadcast loads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn k_tiled_x8<const KIND: u8>(w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
    let bb = match KIND {
        TILED_Q4_K => 144,
        TILED_Q6_K => 210,
        _ => 50,
    };
    let nb = a.len() / groups.max(1);
    let rb = bb * nb;
    if rb == 0 {
        return;
    }
    let n_w = w.len() / rb;
    let out = &mut out[..n_w * groups * 8];
    out.fill(0.0);
    let mut tile = KTile { q: [[0; 256]; 8], sc: [[0; 16]; 8], mn: [[0; 8]; 8], d: [0.0; 8], dmin: [0.0; 8] };
    for (c, wc) in w[..n_w * rb].chunks(8 * rb).enumerate() {
        let nw = wc.len() / rb;
        for b in 0..nb {
            for t in 0..nw {
                let blk = &wc[t * rb + b * bb..t * rb + (b + 1) * bb];
                match KIND {
                    TILED_Q4_K => q4k_into_tile(blk, &mut tile, t),
                    TILED_Q6_K => q6k_into_tile(blk, &mut tile, t),
                    _ => iq1s_into_tile(blk, &mut tile, t),
                }
            }
            for g in 0..groups {
                let y = &a[g * nb + b];
                // Q6_K's values and IQ1_S's weights are taken 32 and 128 above their value.
                let r = match KIND {
                    TILED_Q4_K => q4k_block_8x8(&tile, y),
                    TILED_Q6_K => scaled_by_d(&tile, tile_scaled_sums::<16, 5>(&tile, y, &y.sums16)),
                    _ => scaled_by_d(&tile, tile_scaled_sums::<8, 7>(&tile, y, &y.sums)),
                };
                // SAFETY: reads the 8 floats of `d`; `loadu` has no alignment requirement.
                let yd = unsafe { _mm256_loadu_ps(y.d.as_ptr()) };
                for (t, r) in r.iter().enumerate().take(nw) {
                    let o = &mut out[((8 * c + t) * groups + g) * 8..][..8];
                    // SAFETY: reads and writes the 8 floats of `o`; no alignment requirement.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_fmadd_ps(*r, yd, _mm256_loadu_ps(o.as_ptr()))) };
                }
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_k_q8_k_tiled_x8(w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
    k_tiled_x8::<TILED_Q4_K>(w, a, groups, out)
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q6_k_q8_k_tiled_x8(w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
    k_tiled_x8::<TILED_Q6_K>(w, a, groups, out)
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_iq1_s_q8_k_tiled_x8(w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
    k_tiled_x8::<TILED_IQ1_S>(w, a, groups, out)
}

/// [`vec_dot_iq1_s_q8_k`] for `R` activation rows: the grid lookups of each block are done once,
/// and the delta term's Σ ls·delta·(16-element sums) is one `madd` (|ls·delta| ≤ 15, sums ≤ 2032: exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn iq1_s_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc1 = [0.0f32; R];
    let z = _mm256_setzero_si256();
    for (b, blk) in w.chunks_exact(50).take(nb).enumerate() {
        let mut subs = [(z, z); 8];
        let mut ls_delta = [0i16; 16];
        for (ib, sb) in subs.iter_mut().enumerate() {
            let (grid, ls, delta) = iq1_s_sub_block(blk, ib);
            *sb = (grid, _mm256_set1_epi8(ls as i8));
            ls_delta[2 * ib] = (ls * delta) as i16;
            ls_delta[2 * ib + 1] = (ls * delta) as i16;
        }
        let ls_delta = load16_i16(&ls_delta);
        let dw = f16_at(blk, 0);
        for ((acc, acc1), ys) in acc.iter_mut().zip(&mut acc1).zip(&ys) {
            let y = &ys[b];
            let mut lanes = _mm256_setzero_si256();
            for (ib, &(grid, ls)) in subs.iter().enumerate() {
                let prod = _mm256_sign_epi8(load32_i8(sub_i8(&y.qs, 32 * ib)), grid);
                lanes = _mm256_dpbusd_epi32(lanes, ls, prod);
            }
            let sumi1 = hsum_i32(_mm256_madd_epi16(load16_i16(&y.bsums), ls_delta));
            let d = y.d * dw;
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), *acc);
            *acc1 = d.mul_add(sumi1 as f32, *acc1);
        }
    }
    for ((o, acc), acc1) in out.iter_mut().zip(acc).zip(acc1) {
        *o = IQ1S_DELTA.mul_add(acc1, hsum8(acc));
    }
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_iq1_s_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(iq1_s_rows, w, a, out)
}

/// The AVX2 multi-row K-quant kernels, compiled here with all 32 vector registers: the unpacked
/// super-block stays in registers across the rows.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_k_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q4_k_rows, w, a, out)
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q5_k_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q5_k_rows, w, a, out)
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q6_k_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q6_k_rows, w, a, out)
}

/// One Q4_K super-block's exact lanes (the reference's lane `l`: elements `4l..4l + 4` of every
/// sub-block, times the sub-block's scale) with `vpdpbusd`, and the mins' lanes (min `j` × the
/// activation sum of sub-block `j`).
///
/// The AVX2 kernel takes two multiplying instructions per 32 elements (`vpmaddubsw`, then
/// `vpmaddwd` by the scale); on a core whose vector multipliers are its limit that is the cost.
/// Here `vpdpbusd` gives each sub-block's lanes in one, and since those fit in 16 bits (four
/// products of at most 15 × 128), the lanes of sub-blocks `2p` and `2p + 1` share one 32-bit
/// lane as its two halves, so that one `vpmaddwd` scales and adds both: three multiplying
/// instructions per 64 elements instead of four.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q4k_lanes(blk: &[u8; 144], y: &BlockQ8K) -> (__m256i, __m256i) {
    // The scale and min bits stay in general registers, whose ALUs the vector work leaves idle.
    let (sc, m) = scales_mins_k4(sub(blk, 4));
    // 32-bit word p: scales 2p and 2p + 1 as its i16 halves, in both 128-bit halves.
    let pairs = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(sc))));
    let pair = [
        _mm256_shuffle_epi32::<0x00>(pairs),
        _mm256_shuffle_epi32::<0x55>(pairs),
        _mm256_shuffle_epi32::<0xAA>(pairs),
        _mm256_shuffle_epi32::<0xFF>(pairs),
    ];
    let (low, high) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0xF0u8 as i8));
    let mut lanes = _mm256_setzero_si256();
    for (p, pair) in pair.into_iter().enumerate() {
        // Sub-block 2p is the low nibbles of bytes 32p..32p + 32, sub-block 2p + 1 the high ones,
        // taken in place: 16 × its lanes, which the shift into the upper half then divides out.
        let q = load32(sub(blk, 16 + 32 * p));
        let even = dot4(_mm256_and_si256(q, low), load32_i8(sub_i8(&y.qs, 64 * p)));
        let odd16 = dot4(_mm256_and_si256(q, high), load32_i8(sub_i8(&y.qs, 64 * p + 32)));
        // |lane| ≤ 4 × 15 × 128 = 7680: each fits its 16-bit half.
        let both = _mm256_blend_epi16::<0b1010_1010>(even, _mm256_slli_epi32::<12>(odd16));
        lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(both, pair));
    }
    let m8 = _mm_cvtsi64_si128(i64::from_le_bytes(m));
    let mins = _mm256_madd_epi16(load16_i16(&y.bsums), _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)));
    (lanes, mins)
}

/// `avx2::vec_dot_q4_k_q8_k` with each block's lanes from [`q4k_lanes`]: the same lanes,
/// fused the same way.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for_row_blocks!(w, a, 144, |blk, y| {
        let (lanes, mins) = q4k_lanes(blk, y);
        let dm = _mm_mul_ps(_mm_set1_ps(y.d), f16x4(blk, 0));
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(lanes), acc);
        acc_min = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), _mm256_cvtepi32_ps(mins), acc_min);
    });
    hsum8(acc) - hsum8(acc_min)
}

/// One Q6_K super-block's exact lanes (values unsigned, the offset of 32 taken off through the
/// activation sums, as `avx2::q6k_fuse`), with `vpdpbusd` as in [`q4k_lanes`]: run `i`'s lanes
/// (four products of at most 63 × 128: they fit 16 bits) share 32-bit lanes with run `i + 4`'s,
/// and one `vpmaddwd` scales both. Lanes 0..4 of a run are its first 16-element group, lanes
/// 4..8 its second, so the scale pair differs between the two 128-bit halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn q6k_lanes(blk: &[u8; 210], y: &BlockQ8K) -> __m256i {
    let x = q6k_values(blk);
    let sc16 = _mm256_cvtepi8_epi16(load16(sub(blk, 192)));
    // 32-bit word k (0..8): scales k and k + 8 as its i16 halves.
    let (first, second) = (_mm256_castsi256_si128(sc16), _mm256_extracti128_si256::<1>(sc16));
    let words = _mm256_set_m128i(_mm_unpackhi_epi16(first, second), _mm_unpacklo_epi16(first, second));
    let mut lanes = _mm256_setzero_si256();
    for i in 0..4 {
        let run = |i: usize| dot4(x[i], load32_i8(sub_i8(&y.qs, 32 * i)));
        let both = _mm256_blend_epi16::<0b1010_1010>(run(i), _mm256_slli_epi32::<16>(run(i + 4)));
        // Groups 2i, 2i + 8 in the low half; 2i + 1, 2i + 9 in the high half.
        let k = 2 * i as i32;
        let pair = _mm256_permutexvar_epi32(_mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1), words);
        lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(both, pair));
    }
    let offset = _mm256_madd_epi16(load16_i16(&y.bsums), sc16);
    _mm256_sub_epi32(lanes, _mm256_slli_epi32::<5>(offset))
}

/// `avx2::vec_dot_q6_k_q8_k` with each block's lanes from [`q6k_lanes`].
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q6_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for_row_blocks!(w, a, 210, |blk, y| {
        let d = lane::<3>(f16x4(blk, 202));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(q6k_lanes(blk, y)), acc);
    });
    hsum8(acc)
}

/// Sixteen f16 from `x[at..at + 16]`, as raw bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn load16_f16(x: &[f16], at: usize) -> __m256i {
    let x: &[f16; 16] = x[at..at + 16].try_into().expect("sixteen halves");
    // SAFETY: reads the 32 bytes of `x` (`f16` is a transparent `u16`); no alignment needed.
    unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn load16_f32(x: &[f32], at: usize) -> __m512 {
    let x: &[f32; 16] = x[at..at + 16].try_into().expect("sixteen floats");
    // SAFETY: reads the 64 bytes of `x`; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// `ops::dot_f16_f32` with ggml's own shape: four 16-lane accumulators, then
/// `_mm512_reduce_add_ps`'s tree (halves of 8, of 4, then pairs).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_f16_f32(k: &[f16], q: &[f32]) -> f32 {
    let np = k.len() / 64 * 64;
    let mut sum = 0.0f64;
    if np > 0 {
        let mut acc = [_mm512_setzero_ps(); 4];
        for (kc, qc) in k[..np].chunks_exact(64).zip(q[..np].chunks_exact(64)) {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_cvtph_ps(load16_f16(kc, 16 * j)), load16_f32(qc, 16 * j), *a);
            }
        }
        let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
        let h8 = _mm256_add_ps(
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
            _mm512_castps512_ps256(v),
        );
        let h4 = _mm_add_ps(_mm256_extractf128_ps(h8, 1), _mm256_castps256_ps128(h8));
        let h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
        sum = _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2))) as f64;
    }
    for (kv, qv) in k[np..].iter().zip(&q[np..]) {
        sum += (kv.to_f32() * qv) as f64;
    }
    sum as f32
}

/// `ops::expf_ggml` on sixteen lanes, with the `vscalefps` the reference emulates.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn expf_ggml_x16(x: __m512) -> __m512 {
    let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
    let r = c(0x4b40_0000);
    let n = _mm512_sub_ps(_mm512_fmadd_ps(x, c(0x3fb8_aa3b), r), r);
    let neg_n = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(n), _mm512_set1_epi32(i32::MIN)));
    let b = _mm512_fmadd_ps(neg_n, c(0x35bf_be8e), _mm512_fmadd_ps(neg_n, c(0x3f31_7200), x));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let low = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
    let special = _mm512_mask_blend_ps(low, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
    _mm512_mask_blend_ps(big, res, special)
}

/// `ops::swiglu_ref`, sixteen lanes at a time.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n16 = gate.len().min(up.len()) / 16 * 16;
    let one = _mm512_set1_ps(1.0);
    for (g, u) in gate[..n16].chunks_exact_mut(16).zip(up[..n16].chunks_exact(16)) {
        let x = load16_f32(g, 0);
        let neg_x = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)));
        let r = _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, expf_ggml_x16(neg_x))), load16_f32(u, 0));
        let g: &mut [f32; 16] = g.try_into().expect("sixteen floats");
        // SAFETY: writes the 64 bytes of `g`; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(g.as_mut_ptr(), r) }
    }
    for (g, &u) in gate[n16..].iter_mut().zip(&up[n16..]) {
        let x = *g;
        *g = (x / (1.0 + (-x).exp())) * u;
    }
}
