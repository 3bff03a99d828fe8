//! AVX2 + FMA + F16C kernels, bit-identical to the scalar references in `quant::dot` and
//! `quant::activation` (see the parent module).
//!
//! The float work mirrors the reference operation for operation: eight-lane accumulators are one
//! `__m256` updated with `vfmadd` exactly where the reference calls `mul_add`, sequential scalar
//! chains stay scalar (`f32::mul_add` compiles to `vfmadd` under these target features), and
//! horizontal float sums keep the reference's pairing. Integer sums are exact, so they are
//! computed in whatever lane order suits the instructions; every 16-bit intermediate is bounded
//! well below `i16::MAX` (noted at each `maddubs`).

use std::arch::x86_64::*;

use half::f16;

use crate::quant::activation::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use crate::quant::dot::{scale_min_k4, scales_mins_k4};
use crate::quant::tables::{IQ1S_GRID, KVALUES_IQ4NL};

/// `IQ1S_DELTA` of the reference kernel.
const IQ1S_DELTA: f32 = 0.125;

/// `N` bytes of `b` from `at` as an array (the block layouts fix both, so this never fails).
#[inline(always)]
pub(super) fn sub<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    b[at..at + N].try_into().expect("sub-array within its block")
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load16(b: &[u8; 16]) -> __m128i {
    // SAFETY: reads exactly the 16 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load32(b: &[u8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load32_i8(b: &[i8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `b`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8_f32(x: &[f32]) -> __m256 {
    let x: &[f32; 8] = x.try_into().expect("eight floats");
    // SAFETY: reads exactly the 8 floats of `x`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store32_i8(out: &mut [i8], v: __m256i) {
    let out: &mut [i8; 32] = out.try_into().expect("32 bytes");
    // SAFETY: writes exactly the 32 bytes of `out`; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
}

/// The four little-endian f16 at `b[at..at + 8]`, widened exactly.
///
/// A plain 8-byte load: converting a lone `u16` lets LLVM emit a `vpinsrw` into whatever
/// register it last zeroed, which can be a loop-carried accumulator, and that false dependency
/// serialised whole dot products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16x4(b: &[u8], at: usize) -> __m128 {
    let x: &[u8; 8] = sub(b, at);
    // SAFETY: reads exactly the 8 bytes of `x`; `loadl` has no alignment requirement.
    _mm_cvtph_ps(unsafe { _mm_loadl_epi64(x.as_ptr().cast()) })
}

/// Lane `K` of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn lane<const K: i32>(v: __m128) -> f32 {
    _mm_cvtss_f32(_mm_permute_ps::<K>(v))
}

/// The f16 at `b[at..at + 2]`, widened exactly; `b` must extend 6 bytes further.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    lane::<0>(f16x4(b, at))
}

/// 16 bytes of packed nibbles as 32 bytes: the low nibbles (elements 0..16), then the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn nibbles(q: &[u8; 16]) -> __m256i {
    let x = load16(q);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m))
}

/// Byte `i` is 0xFF where bit `i` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bits_to_bytes(bits: u32) -> __m256i {
    // Byte i takes byte i / 8 of `bits`, then tests bit i % 8 of it.
    let spread = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), spread);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask)
}

/// Lane `l` (i32) = Σ u[k]·s[k] over bytes `k` in `4l..4l+4`, `u` unsigned and `s` signed.
/// Each 16-bit pair sum must stay within i16 (callers bound |u| and |s|).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// As [`mul_sum_u8_i8`] for two signed operands (|x| ≤ 128, |y| ≤ 127: pairs ≤ 32512).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    mul_sum_u8_i8(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x))
}

/// The reference's `hsum8`: (lanes 4..8 + lanes 0..4), then (r0 + r2) + (r1 + r3).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum8(v: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(r, _mm_movehl_ps(r, r));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Sum of the eight i32 lanes (exact, any order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(x, _mm_shuffle_epi32(x, 0b10_11_00_01)))
}

/// The lane sums of four vectors: `[Σv0, Σv1, Σv2, Σv3]` (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_i32_x4(v0: __m256i, v1: __m256i, v2: __m256i, v3: __m256i) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
}

/// The f16 scales at the start of four consecutive `stride`-byte blocks of `w4`, widened.
/// Gathered into a fresh register, so no false dependency reaches the accumulators (see
/// [`f16x4`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales4(w4: &[u8], stride: usize) -> __m128 {
    let h = |i: usize| i16::from_le_bytes([w4[stride * i], w4[stride * i + 1]]);
    _mm_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), 0, 0, 0, 0))
}

/// `acc = fma(sᵢ, dᵢ·yᵢ.d, acc)` for four 18-byte nibble blocks in order, `s` their integer sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fuse4_nibble_blocks(acc: f32, s: __m128i, w4: &[u8], a4: &[BlockQ8_0]) -> f32 {
    let s = _mm_cvtepi32_ps(s);
    let dy = _mm_mul_ps(scales4(w4, 18), _mm_setr_ps(a4[0].d, a4[1].d, a4[2].d, a4[3].d));
    let acc = lane::<0>(s).mul_add(lane::<0>(dy), acc);
    let acc = lane::<1>(s).mul_add(lane::<1>(dy), acc);
    let acc = lane::<2>(s).mul_add(lane::<2>(dy), acc);
    lane::<3>(s).mul_add(lane::<3>(dy), acc)
}

/// As [`fuse4_nibble_blocks`] for the last one to three blocks of a row (`s` has zeros for the
/// missing ones). Their scales are gathered into a fresh register too: a lone scale conversion
/// picks up a false dependency on the accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fuse_tail_nibble_blocks(acc: f32, s: __m128i, w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let h = |i: usize| if i < a.len() { i16::from_le_bytes([w[18 * i], w[18 * i + 1]]) } else { 0 };
    let yd = |i: usize| a.get(i).map_or(0.0, |y| y.d);
    let s = _mm_cvtepi32_ps(s);
    let dy = _mm_mul_ps(
        _mm_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), 0, 0, 0, 0, 0)),
        _mm_setr_ps(yd(0), yd(1), yd(2), 0.0),
    );
    let mut acc = lane::<0>(s).mul_add(lane::<0>(dy), acc);
    if a.len() > 1 {
        acc = lane::<1>(s).mul_add(lane::<1>(dy), acc);
    }
    if a.len() > 2 {
        acc = lane::<2>(s).mul_add(lane::<2>(dy), acc);
    }
    acc
}

/// One 18-byte nibble block (Q4_0 / IQ4_NL) times its Q8_0 block, as i32 lanes; `table` maps
/// each nibble to its signed value (|value| ≤ 127) in both 128-bit halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_block_lanes(blk: &[u8], y: &BlockQ8_0, table: __m256i) -> __m256i {
    let v = _mm256_shuffle_epi8(table, nibbles(sub(blk, 2)));
    mul_sum_i8_i8(v, load32_i8(&y.qs))
}

/// The reference's `nibble_blocks_dot`: one exact integer sum per block, fused in block order
/// into a single scalar accumulator. Block sums are reduced four at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_blocks_dot(w: &[u8], a: &[BlockQ8_0], table: __m128i) -> f32 {
    let table = _mm256_broadcastsi128_si256(table);
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

/// The reference's `nibble_blocks_dot` for four weight rows (`$w`: all four, back to back) and
/// one activation row at once, with the block kernel `$lanes`: the four rows' block sums come
/// out of one reduction and go through one 4-lane fused multiply-add per block, lane `r` doing
/// exactly row `r`'s scalar step. A single row's chain of dependent `fma`s (one per 32 values)
/// is what bounds the one-row kernel; llama.cpp's repacked kernels likewise run rows side by side.
macro_rules! nibble_blocks_dot_x4 {
    ($lanes:ident, $w:expr, $a:expr, $table:expr) => {{
        let (w, a, table): (&[u8], &[BlockQ8_0], __m256i) = ($w, $a, $table);
        let rb = w.len() / 4;
        let n = (rb / 18).min(a.len());
        let rows: [&[u8]; 4] =
            [&w[..n * 18], &w[rb..rb + n * 18], &w[2 * rb..2 * rb + n * 18], &w[3 * rb..3 * rb + n * 18]];
        let mut acc = _mm_setzero_ps();
        for (b, y) in a[..n].iter().enumerate() {
            let at = 18 * b;
            let blocks = [&rows[0][at..at + 18], &rows[1][at..at + 18], &rows[2][at..at + 18], &rows[3][at..at + 18]];
            let s = hsum_i32_x4(
                $lanes(blocks[0], y, table),
                $lanes(blocks[1], y, table),
                $lanes(blocks[2], y, table),
                $lanes(blocks[3], y, table),
            );
            let scale = |blk: &[u8]| i16::from_le_bytes([blk[0], blk[1]]);
            let d = _mm_cvtph_ps(_mm_setr_epi16(
                scale(blocks[0]),
                scale(blocks[1]),
                scale(blocks[2]),
                scale(blocks[3]),
                0,
                0,
                0,
                0,
            ));
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(s), _mm_mul_ps(d, _mm_set1_ps(y.d)), acc);
        }
        to_array(acc)
    }};
}
pub(super) use nibble_blocks_dot_x4;

/// [`vec_dot_q4_0_q8_0`] of four weight rows (`w`: back to back) with one activation row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0_q8_0_x4(w: &[u8], a: &[BlockQ8_0]) -> [f32; 4] {
    nibble_blocks_dot_x4!(nibble_block_lanes, w, a, _mm256_broadcastsi128_si256(q4_0_values()))
}

/// [`vec_dot_iq4_nl_q8_0`] of four weight rows (`w`: back to back) with one activation row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_iq4_nl_q8_0_x4(w: &[u8], a: &[BlockQ8_0]) -> [f32; 4] {
    nibble_blocks_dot_x4!(nibble_block_lanes, w, a, _mm256_broadcastsi128_si256(iq4_nl_values()))
}

/// The sixteen Q4_0 values (nibble − 8), as a `pshufb` table.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_0_values() -> __m128i {
    _mm_setr_epi8(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7)
}

/// The sixteen IQ4_NL values, as a `pshufb` table.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq4_nl_values() -> __m128i {
    load16(&KVALUES_IQ4NL.map(|v| v as u8))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    nibble_blocks_dot(w, a, q4_0_values())
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_iq4_nl_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    nibble_blocks_dot(w, a, iq4_nl_values())
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (blk, y) in w.chunks_exact(20).zip(a) {
        let dm = f16x4(blk, 0);
        let (d, m) = (lane::<0>(dm), lane::<1>(dm));
        summs = m.mul_add(y.s, summs);
        // Nibbles ≤ 15, activations ≤ 127 in magnitude: pair sums ≤ 3810.
        let lanes = mul_sum_u8_i8(nibbles(sub(blk, 4)), load32_i8(&y.qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), acc);
    }
    hsum8(acc) + summs
}

/// One Q5_0 block times its Q8_0 block as i32 lanes (values in -16..16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_block_lanes(blk: &[u8], y: &BlockQ8_0) -> __m256i {
    let qh = u32::from_le_bytes(*sub(blk, 2));
    let high = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
    let x = _mm256_sub_epi8(_mm256_or_si256(nibbles(sub(blk, 6)), high), _mm256_set1_epi8(16));
    mul_sum_i8_i8(x, load32_i8(&y.qs))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let n = (w.len() / 22).min(a.len());
    let (w, a) = (&w[..n * 22], &a[..n]);
    let mut sum = 0.0f32;
    let mut w4 = w.chunks_exact(88);
    let mut a4 = a.chunks_exact(4);
    for (w4, a4) in w4.by_ref().zip(a4.by_ref()) {
        let l = |i: usize| q5_0_block_lanes(&w4[22 * i..22 * i + 22], &a4[i]);
        let s = _mm_cvtepi32_ps(hsum_i32_x4(l(0), l(1), l(2), l(3)));
        let t = _mm_mul_ps(_mm_mul_ps(s, scales4(w4, 22)), _mm_setr_ps(a4[0].d, a4[1].d, a4[2].d, a4[3].d));
        sum += lane::<0>(t);
        sum += lane::<1>(t);
        sum += lane::<2>(t);
        sum += lane::<3>(t);
    }
    for (blk, y) in w4.remainder().chunks_exact(22).zip(a4.remainder()) {
        sum += hsum_i32(q5_0_block_lanes(blk, y)) as f32 * f16_at(blk, 0) * y.d;
    }
    sum
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (blk, y) in w.chunks_exact(34).zip(a) {
        let d = f16_at(blk, 0);
        let lanes = mul_sum_i8_i8(load32(sub(blk, 2)), load32_i8(&y.qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), acc);
    }
    hsum8(acc)
}

/// 16 i16 lanes: `lo` in the low eight, `hi` in the high eight.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn split_i16(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q2_k_q8_k(w: &[u8], a: &[BlockQ8K], halves: bool) -> f32 {
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (blk, y) in w.chunks_exact(84).zip(a) {
        let sc = sub::<16>(blk, 0);
        // The scales are the block's last four bytes.
        let s = f16x4(blk, 76);
        let d = lane::<2>(s) * y.d;
        let dmin = lane::<3>(s) * y.d;
        // Minimum terms: 4-bit mins × 16-element sums, sub-blocks 0..8 in the low lanes.
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(load16(sc), 4), _mm_set1_epi8(0x0F)));
        // SAFETY: reads the 32 bytes of `bsums` ([i16; 16]); `loadu` has no alignment requirement.
        let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let m = _mm256_madd_epi16(mins, bsums);
        let imin = [
            hsum_i32(_mm256_and_si256(m, _mm256_setr_epi32(-1, -1, -1, -1, 0, 0, 0, 0))),
            hsum_i32(_mm256_and_si256(m, _mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1))),
        ];
        let mut isum = [0i32; 2];
        for (k, isum) in isum.iter_mut().enumerate() {
            let q2 = load32(sub(blk, 16 + 32 * k));
            let mut s = _mm256_setzero_si256();
            for j in 0..4 {
                let q = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j as i32)), _mm256_set1_epi8(3));
                let q8 = load32_i8(sub_i8(&y.qs, k * 128 + j * 32));
                // 2-bit values × |activations| ≤ 127: pair sums ≤ 762.
                let p = _mm256_maddubs_epi16(q, q8);
                let is = k * 8 + j * 2;
                s = _mm256_add_epi32(
                    s,
                    _mm256_madd_epi16(p, split_i16((sc[is] & 0x0F) as i16, (sc[is + 1] & 0x0F) as i16)),
                );
            }
            *isum = hsum_i32(s);
        }
        if halves {
            for k in 0..2 {
                acc = (isum[k] as f32).mul_add(d, acc);
                acc_min = (imin[k] as f32).mul_add(dmin, acc_min);
            }
        } else {
            acc = ((isum[0] + isum[1]) as f32).mul_add(d, acc);
            acc_min = ((imin[0] + imin[1]) as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// Sixteen i16 as one vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load16_i16(x: &[i16; 16]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `x`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
}

/// `N` activations of a Q8_K block from `at`.
#[inline(always)]
pub(super) fn sub_i8<const N: usize>(b: &[i8], at: usize) -> &[i8; N] {
    b[at..at + N].try_into().expect("sub-array within its block")
}

/// The integer sums of one Q5_K super-block (`qh`: its fifth bits): (Σ scale·dot, Σ min·bsums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5k_block_sums(head: &[u8], qh: &[u8; 32], qs: &[u8], y: &BlockQ8K) -> (i32, i32) {
    let scales = &head[4..16];
    let low = _mm256_set1_epi8(0x0F);
    let qh = load32(qh);
    let mut acc = _mm256_setzero_si256();
    let mut summ = 0i32;
    for p in 0..4 {
        let q = load32(sub(qs, 32 * p));
        for (h, nib) in
            [_mm256_and_si256(q, low), _mm256_and_si256(_mm256_srli_epi16(q, 4), low)].into_iter().enumerate()
        {
            let j = 2 * p + h;
            let (sc, m) = scale_min_k4(j, scales);
            // Bit j of each qh byte becomes 16 (the shift cannot carry across bytes after the mask).
            let x = _mm256_or_si256(nib, fifth_bit(qh, j));
            // 5-bit values × |activations| ≤ 127: pair sums ≤ 7874.
            let p16 = _mm256_maddubs_epi16(x, load32_i8(sub_i8(&y.qs, 32 * j)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(sc as i16)));
            summ += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
    }
    (hsum_i32(acc), summ)
}

/// Rows of at least this many 256-element super-blocks (a Q8_K activation row of 11 KiB or more)
/// get their weights prefetched by [`prefetch_weights`].
///
/// Streamed from memory, such rows ran at half the speed of short ones (the same bytes in
/// `4096 × 18944` against `18944 × 4096`: 7.6 against 16.8 ns per Q6_K block on one thread): the
/// activation row no longer stays in L1, and the hardware prefetchers then fall behind on the
/// weights. Asking for the weights well ahead into L2 ([`PREFETCH_AHEAD`]) fixes most of that;
/// for short rows it costs more than it gives (Q4_K `3584`-wide rows streamed on one thread: 6.1
/// ns per block without, 7.1 with).
pub(super) const LONG_ROW_BLOCKS: usize = 40;

/// Bytes ahead of the block in use that [`prefetch_weights`] asks for, into L2 (`prefetcht1`).
///
/// One thread streaming `18944`-wide rows from memory, ns per block (Q4_K / Q6_K): non-temporal
/// (into L1) 2 KiB ahead 8.4 / 13.0, 4 KiB 9.1 / 13.3, 8 KiB 10.5 / 14.2; into L2 4 KiB 7.3 /
/// 10.5, 8 KiB 6.7–6.9 / 9.2–9.4, 16 KiB 7.7 / 10.1. In the 7B decode on two threads the
/// `ffn_down` products went from 29–30 to 38–39 GB/s (Q4_K) and from 27–28 to 40–42 (Q6_K)
/// against the non-temporal 2 KiB of before.
const PREFETCH_AHEAD: usize = 8192;

/// Prefetches the cache lines of a block [`PREFETCH_AHEAD`] bytes past `blk` (as many lines as
/// the block spans, plus one for alignment).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_weights(blk: &[u8]) {
    let at = blk.as_ptr().wrapping_add(PREFETCH_AHEAD);
    for line in 0..blk.len().div_ceil(64) + 1 {
        // A prefetch is a hint that never faults, even past the end of the weights (the address
        // is only computed, with `wrapping_add`, never dereferenced).
        _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64 * line).cast());
    }
}

/// Runs `$body` with each `$bytes`-byte weight block of row `$w` (bound to `$blk` as a
/// `&[u8; $bytes]`) and its activation block (`$y`), in order, prefetching the weights of rows
/// of [`LONG_ROW_BLOCKS`] blocks or more ([`prefetch_weights`]): the row loop of the single-row
/// K-quant kernels, here and in `avx512`.
macro_rules! for_row_blocks {
    ($w:expr, $a:expr, $bytes:literal, |$blk:ident, $y:ident| $body:expr) => {{
        let a = $a;
        let long = a.len() >= super::avx2::LONG_ROW_BLOCKS;
        for (blk, $y) in $w.chunks_exact($bytes).zip(a) {
            if long {
                super::avx2::prefetch_weights(blk);
            }
            let $blk: &[u8; $bytes] = super::avx2::sub(blk, 0);
            $body;
        }
    }};
}
pub(super) use for_row_blocks;

/// One Q4_K super-block unpacked: sub-block `j`'s 32 values, its scale in every i16 lane, the
/// eight mins as i16 pairs (lane `i` pairs with the activations' `bsums[i]`), and `d`, `dmin`.
struct Q4kBlock {
    x: [__m256i; 8],
    sc: [__m256i; 8],
    mins: __m256i,
    dm: __m128,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_unpack(blk: &[u8; 144]) -> Q4kBlock {
    let (sc, m) = scales_mins_k4(sub(blk, 4));
    let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(sc))));
    let m8 = _mm_cvtsi64_si128(i64::from_le_bytes(m));
    let low = _mm256_set1_epi8(0x0F);
    let mut x = [_mm256_setzero_si256(); 8];
    let mut scs = [_mm256_setzero_si256(); 8];
    for p in 0..4 {
        let q = load32(sub(blk, 16 + 32 * p));
        x[2 * p] = _mm256_and_si256(q, low);
        x[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
    }
    for (j, sc) in scs.iter_mut().enumerate() {
        // Bytes 2j and 2j + 1 (scale j as an i16) into every i16 lane.
        *sc = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8)));
    }
    Q4kBlock { x, sc: scs, mins: _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)), dm: f16x4(blk, 0) }
}

/// Fuses one block into a row's accumulators, as the reference does: lane `l` = Σ over
/// sub-blocks of scale × elements `4l..4l+4`; min lane `j` = sub-block `j`'s min × its
/// activation sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_fuse(b: &Q4kBlock, y: &BlockQ8K, acc: &mut __m256, acc_min: &mut __m256) {
    let mut lanes = _mm256_setzero_si256();
    for j in 0..8 {
        // 4-bit values × |activations| ≤ 128: pair sums ≤ 3840; × 6-bit scales fits i32.
        let p16 = _mm256_maddubs_epi16(b.x[j], load32_i8(sub_i8(&y.qs, 32 * j)));
        lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p16, b.sc[j]));
    }
    let mins = _mm256_madd_epi16(load16_i16(&y.bsums), b.mins);
    let dm = _mm_mul_ps(_mm_set1_ps(y.d), b.dm);
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(lanes), *acc);
    *acc_min = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), _mm256_cvtepi32_ps(mins), *acc_min);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for_row_blocks!(w, a, 144, |blk, y| q4k_fuse(&q4k_unpack(blk), y, &mut acc, &mut acc_min));
    hsum8(acc) - hsum8(acc_min)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    w.chunks_exact(176)
        .zip(a)
        .map(|(blk, y)| {
            let (sumi, summ) = q5k_block_sums(&blk[..16], sub(blk, 16), &blk[48..176], y);
            let d = y.d * f16_at(blk, 0);
            let dmin = y.d * f16_at(blk, 2);
            d * sumi as f32 - dmin * summ as f32
        })
        .sum()
}

/// One Q6_K super-block unpacked: run `i`'s 32 values (unsigned, 0..64), the scales of its two
/// 16-element groups as i16 (the first in the low eight lanes), all sixteen scales as i16 (for
/// the offset), and `d`.
struct Q6kBlock {
    x: [__m256i; 8],
    sc: [__m256i; 8],
    sc16: __m256i,
    d: f32,
}

/// One Q6_K block's values, unsigned (0..64): run `i` (elements `32i..32i + 32`) in `x[i]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_values(blk: &[u8; 210]) -> [__m256i; 8] {
    let low = _mm256_set1_epi8(0x0F);
    let mask = |m: i8| _mm256_set1_epi8(m);
    let mut x = [_mm256_setzero_si256(); 8];
    for half in 0..2 {
        let ql0 = load32(sub(blk, half * 64));
        let ql1 = load32(sub(blk, half * 64 + 32));
        let qh = load32(sub(blk, 128 + half * 32));
        // Bits 2k, 2k + 1 of each qh byte moved to bits 4, 5: masked first, so no shift carries
        // a bit across bytes.
        let hi = [
            _mm256_slli_epi16(_mm256_and_si256(qh, mask(0x03)), 4),
            _mm256_slli_epi16(_mm256_and_si256(qh, mask(0x0C)), 2),
            _mm256_and_si256(qh, mask(0x30)),
            _mm256_srli_epi16(_mm256_and_si256(qh, mask(0xC0u8 as i8)), 2),
        ];
        x[4 * half] = _mm256_or_si256(_mm256_and_si256(ql0, low), hi[0]);
        x[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(ql1, low), hi[1]);
        x[4 * half + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), hi[2]);
        x[4 * half + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low), hi[3]);
    }
    x
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_unpack(blk: &[u8; 210]) -> Q6kBlock {
    let x = q6k_values(blk);
    let sc16 = _mm256_cvtepi8_epi16(load16(sub(blk, 192)));
    // Scales 0..8 (runs 0..4) and 8..16 (runs 4..8) in both 128-bit halves, so one in-lane
    // shuffle per run picks scale 2i for the low half and 2i + 1 for the high half.
    let halves = [_mm256_permute2x128_si256::<0x00>(sc16, sc16), _mm256_permute2x128_si256::<0x11>(sc16, sc16)];
    let mut sc = [_mm256_setzero_si256(); 8];
    for (i, sc) in sc.iter_mut().enumerate() {
        let pick = |j: usize| _mm_set1_epi16((((2 * j + 1) as i16) << 8) | (2 * j) as i16);
        let idx = _mm256_set_m128i(pick((2 * i + 1) % 8), pick((2 * i) % 8));
        *sc = _mm256_shuffle_epi8(halves[i / 4], idx);
    }
    // The scale is the block's last two bytes.
    Q6kBlock { x, sc, sc16, d: lane::<3>(f16x4(blk, 202)) }
}

/// Fuses one block into a row's accumulator, as the reference does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_fuse(b: &Q6kBlock, y: &BlockQ8K, acc: &mut __m256) {
    let mut lanes = _mm256_setzero_si256();
    for i in 0..8 {
        // 6-bit values × |activations| ≤ 128: pair sums ≤ 16128.
        let p16 = _mm256_maddubs_epi16(b.x[i], load32_i8(sub_i8(&y.qs, 32 * i)));
        lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p16, b.sc[i]));
    }
    let offset = _mm256_madd_epi16(load16_i16(&y.bsums), b.sc16);
    let lanes = _mm256_sub_epi32(lanes, _mm256_slli_epi32(offset, 5));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d * y.d), _mm256_cvtepi32_ps(lanes), *acc);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for_row_blocks!(w, a, 210, |blk, y| q6k_fuse(&q6k_unpack(blk), y, &mut acc));
    hsum8(acc)
}

/// The 32 grid values (-1, 0, 1) of IQ1_S sub-block `ib` and its scale and delta sign.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq1_s_sub_block(blk: &[u8], ib: usize) -> (__m256i, i32, i32) {
    let qh = u16::from_le_bytes(*sub(blk, 34 + 2 * ib)) as usize;
    let qs = sub::<4>(blk, 2 + 4 * ib);
    let g = |l: usize| IQ1S_GRID[qs[l] as usize | ((qh >> (3 * l)) & 7) << 8] as i64;
    let grid = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
    let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
    let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
    (grid, ls, delta)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_iq1_s_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc1 = 0.0f32;
    let ones = _mm256_set1_epi8(1);
    for (blk, y) in w.chunks_exact(50).zip(a) {
        let mut lanes = _mm256_setzero_si256();
        let mut ls_delta = [0i16; 16];
        for ib in 0..8 {
            let (grid, ls, delta) = iq1_s_sub_block(blk, ib);
            // Grid values are -1, 0 or 1, so `sign` is the exact product; pair sums ≤ 254.
            let prod = _mm256_sign_epi8(load32_i8(sub_i8(&y.qs, 32 * ib)), grid);
            let pairs = _mm256_maddubs_epi16(ones, prod);
            lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(pairs, _mm256_set1_epi16(ls as i16)));
            ls_delta[2 * ib] = (ls * delta) as i16;
            ls_delta[2 * ib + 1] = (ls * delta) as i16;
        }
        // Σ ls·delta·(16-element sums) as one `madd` (|ls·delta| ≤ 15, sums ≤ 2032: exact).
        let sumi1 = hsum_i32(_mm256_madd_epi16(load16_i16(&y.bsums), load16_i16(&ls_delta)));
        let d = y.d * f16_at(blk, 0);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
        acc1 = d.mul_add(sumi1 as f32, acc1);
    }
    IQ1S_DELTA.mul_add(acc1, hsum8(acc))
}

/// Activation rows taken per call of a multi-row kernel: each decoded weight block stays in
/// registers for this many rows (the accumulators of four rows and the decoded block fit easily).
pub(super) const ROWS_PER_GROUP: usize = 4;
const _: () = assert!(ROWS_PER_GROUP <= 4, "rows_s packs a group's rows into one 4-lane vector");

/// Runs the multi-row kernel `$kernel::<R>(w, rows, n_blocks, out)` over the activation rows of
/// `$a` (`$out.len()` rows of equal length, back to back) in groups of [`ROWS_PER_GROUP`], then
/// once for the remaining one to three rows.
macro_rules! in_row_groups {
    ($kernel:ident, $w:expr, $a:expr, $out:expr) => {{
        let (w, a, out) = ($w, $a, $out);
        if !out.is_empty() {
            let n_rows = out.len();
            let nb = a.len() / n_rows;
            let mut groups = out.chunks_exact_mut(ROWS_PER_GROUP);
            for (g, o) in groups.by_ref().enumerate() {
                let t = g * ROWS_PER_GROUP;
                $kernel::<ROWS_PER_GROUP>(w, &a[t * nb..(t + ROWS_PER_GROUP) * nb], nb, o);
            }
            let rest = groups.into_remainder();
            let a = &a[(n_rows - rest.len()) * nb..];
            match rest.len() {
                1 => $kernel::<1>(w, a, nb, rest),
                2 => $kernel::<2>(w, a, nb, rest),
                3 => $kernel::<3>(w, a, nb, rest),
                _ => {}
            }
        }
    }};
}
pub(super) use in_row_groups;

/// The `R` activation rows of `a`, `nb` blocks each.
#[inline(always)]
pub(super) fn split_rows<B, const R: usize>(a: &[B], nb: usize) -> [&[B]; R] {
    std::array::from_fn(|r| &a[r * nb..(r + 1) * nb])
}

/// `ys[r][b].s` for the (at most four) rows, zeros in the unused lanes. Built with plain loads:
/// left to itself LLVM vectorises the rows' chains with a gather, which is several times slower.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn rows_s<const R: usize>(ys: &[&[BlockQ8_1]; R], b: usize) -> __m128 {
    let s = |r: usize| if r < R { ys[r][b].s } else { 0.0 };
    _mm_setr_ps(s(0), s(1), s(2), s(3))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn to_array(v: __m128) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: writes the 16 bytes of `out`; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// [`vec_dot_q4_1_q8_1`] for `R` activation rows: per output, the same operations in the same
/// order; the nibbles and scales of each block are decoded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
            let lanes = mul_sum_u8_i8(x, load32_i8(&y.qs));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), *acc);
        }
    }
    for ((o, acc), summs) in out.iter_mut().zip(acc).zip(to_array(summs)) {
        *o = hsum8(acc) + summs;
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_1_q8_1_rows(w: &[u8], a: &[BlockQ8_1], out: &mut [f32]) {
    in_row_groups!(q4_1_rows, w, a, out)
}

/// [`vec_dot_q8_0_q8_0`] for `R` activation rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_rows<const R: usize>(w: &[u8], a: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8_0]; R] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, blk) in w.chunks_exact(34).take(nb).enumerate() {
        let d = f16_at(blk, 0);
        let x = load32(sub(blk, 2));
        let ax = _mm256_abs_epi8(x);
        for (acc, ys) in acc.iter_mut().zip(&ys) {
            let y = &ys[b];
            // As `mul_sum_i8_i8(x, y)`, with |x| computed once.
            let lanes = mul_sum_u8_i8(ax, _mm256_sign_epi8(load32_i8(&y.qs), x));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = hsum8(acc);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0_q8_0_rows(w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
    in_row_groups!(q8_0_rows, w, a, out)
}

/// [`nibble_blocks_dot`] for `R` (at most four) activation rows. The reference fuses one block
/// at a time into one scalar chain per row; here the rows' chains run side by side in the lanes
/// of one vector, block by block, which is the same fused multiply-add per row and block
/// (`fma(sum, d·y.d, acc)`), and each block is decoded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_rows<const R: usize>(w: &[u8], a: &[BlockQ8_0], nb: usize, out: &mut [f32], table: __m128i) {
    let table = _mm256_broadcastsi128_si256(table);
    let ys: [&[BlockQ8_0]; R] = split_rows(a, nb);
    let n = (w.len() / 18).min(nb);
    let z = _mm256_setzero_si256();
    let mut acc = _mm_setzero_ps();
    for (b, blk) in w[..n * 18].chunks_exact(18).enumerate() {
        let v = _mm256_shuffle_epi8(table, nibbles(sub(blk, 2)));
        let av = _mm256_abs_epi8(v);
        let l = |r: usize| if r < R { mul_sum_u8_i8(av, _mm256_sign_epi8(load32_i8(&ys[r][b].qs), v)) } else { z };
        let s = _mm_cvtepi32_ps(hsum_i32_x4(l(0), l(1), l(2), l(3)));
        let yd = |r: usize| if r < R { ys[r][b].d } else { 0.0 };
        let dy = _mm_mul_ps(_mm_set1_ps(f16_at(blk, 0)), _mm_setr_ps(yd(0), yd(1), yd(2), yd(3)));
        acc = _mm_fmadd_ps(s, dy, acc);
    }
    out.copy_from_slice(&to_array(acc)[..R]);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_rows<const R: usize>(w: &[u8], a: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
    nibble_rows::<R>(w, a, nb, out, q4_0_values())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4_nl_rows<const R: usize>(w: &[u8], a: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
    nibble_rows::<R>(w, a, nb, out, iq4_nl_values())
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0_q8_0_rows(w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
    in_row_groups!(q4_0_rows, w, a, out)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_iq4_nl_q8_0_rows(w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
    in_row_groups!(iq4_nl_rows, w, a, out)
}

/// An IQ1_S super-block unpacked for several activation rows: each sub-block's grid values
/// (-1, 0, 1) with its scale, and the scale × delta sign of each 16 elements as i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq1_s_block_unpack(blk: &[u8]) -> ([(__m256i, i16); 8], __m256i) {
    let mut subs = [(_mm256_setzero_si256(), 0i16); 8];
    let mut ls_delta = [0i16; 16];
    for (ib, sb) in subs.iter_mut().enumerate() {
        let (grid, ls, delta) = iq1_s_sub_block(blk, ib);
        *sb = (grid, ls as i16);
        ls_delta[2 * ib] = (ls * delta) as i16;
        ls_delta[2 * ib + 1] = (ls * delta) as i16;
    }
    (subs, load16_i16(&ls_delta))
}

/// Σ over an unpacked IQ1_S block's sub-blocks of scale × (grid · activations), as eight i32
/// lanes (`sign` is the exact product of a grid value; pair sums ≤ 254).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq1_s_block_lanes(subs: &[(__m256i, i16); 8], y: &BlockQ8K) -> __m256i {
    let ones = _mm256_set1_epi8(1);
    let mut lanes = _mm256_setzero_si256();
    for (ib, &(grid, ls)) in subs.iter().enumerate() {
        let prod = _mm256_sign_epi8(load32_i8(sub_i8(&y.qs, 32 * ib)), grid);
        let pairs = _mm256_maddubs_epi16(ones, prod);
        lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(pairs, _mm256_set1_epi16(ls)));
    }
    lanes
}

/// [`vec_dot_iq1_s_q8_k`] for `R` activation rows: the grid lookups of each block are done once,
/// and the delta term's Σ ls·delta·(16-element sums) is one `madd` (|ls·delta| ≤ 15, sums ≤ 2032: exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq1_s_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc1 = [0.0f32; R];
    for (b, blk) in w.chunks_exact(50).take(nb).enumerate() {
        let (subs, ls_delta) = iq1_s_block_unpack(blk);
        let dw = f16_at(blk, 0);
        for ((acc, acc1), ys) in acc.iter_mut().zip(&mut acc1).zip(&ys) {
            let y = &ys[b];
            let lanes = iq1_s_block_lanes(&subs, y);
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
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_iq1_s_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(iq1_s_rows, w, a, out)
}

/// `dot::vec_dot_iq1_s_q8_k_tiled` (llama.cpp's tiled-GEMM order) for `R` (at most four)
/// activation rows, their float chains side by side in the lanes of one vector. Per row and
/// block the exact integer `s = 8·Σ ls·(g·q) + Σ ls·delta·(16-element sums)` comes out of one
/// reduction of the four rows' lanes; then `r = fl(s·d/8)` and `acc = fma(r, y.d, acc)` per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq1_s_tiled_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let z = _mm256_setzero_si256();
    let mut acc = _mm_setzero_ps();
    for (b, blk) in w.chunks_exact(50).take(nb).enumerate() {
        let (subs, ls_delta) = iq1_s_block_unpack(blk);
        let row = |r: usize| {
            if r >= R {
                return z;
            }
            let y = &ys[r][b];
            let lanes = iq1_s_block_lanes(&subs, y);
            // 8·lanes + the delta term: |s| < 2²⁴, exact in i32.
            _mm256_add_epi32(_mm256_slli_epi32(lanes, 3), _mm256_madd_epi16(load16_i16(&y.bsums), ls_delta))
        };
        let s = _mm_cvtepi32_ps(hsum_i32_x4(row(0), row(1), row(2), row(3)));
        let r = _mm_mul_ps(s, _mm_set1_ps(f16_at(blk, 0) * 0.125));
        let yd = |r: usize| if r < R { ys[r][b].d } else { 0.0 };
        acc = _mm_fmadd_ps(r, _mm_setr_ps(yd(0), yd(1), yd(2), yd(3)), acc);
    }
    out.copy_from_slice(&to_array(acc)[..R]);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_iq1_s_q8_k_tiled_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(iq1_s_tiled_rows, w, a, out)
}

/// Bit `j` of each byte of `qh`, as 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bit(qh: __m256i, j: usize) -> __m256i {
    _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)), _mm256_set1_epi8(1)), 4)
}

/// [`q5k_block_sums`]'s unpacked super-block: the eight 32-element runs of 5-bit values, and
/// their scales and mins.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5k_block_unpack(head: &[u8], qh: &[u8; 32], qs: &[u8]) -> ([__m256i; 8], [i16; 8], __m256i) {
    let scales = &head[4..16];
    let low = _mm256_set1_epi8(0x0F);
    let qh = load32(qh);
    let mut xs = [_mm256_setzero_si256(); 8];
    let mut scs = [0i16; 8];
    let mut ms = [0i16; 16];
    for p in 0..4 {
        let q = load32(sub(qs, 32 * p));
        for (h, nib) in
            [_mm256_and_si256(q, low), _mm256_and_si256(_mm256_srli_epi16(q, 4), low)].into_iter().enumerate()
        {
            let j = 2 * p + h;
            let (sc, m) = scale_min_k4(j, scales);
            xs[j] = _mm256_or_si256(nib, fifth_bit(qh, j));
            scs[j] = sc as i16;
            ms[2 * j] = m as i16;
            ms[2 * j + 1] = m as i16;
        }
    }
    // SAFETY: reads the 32 bytes of `ms`; `loadu` has no alignment requirement.
    (xs, scs, unsafe { _mm256_loadu_si256(ms.as_ptr().cast()) })
}

/// [`vec_dot_q5_k_q8_k`] for `R` activation rows. Each row's block values are summed as
/// `Iterator::sum` does in the single-row kernel: from its starting value, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_k_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let mut sum = [std::iter::empty::<f32>().sum::<f32>(); R];
    for (b, blk) in w.chunks_exact(176).take(nb).enumerate() {
        let (xs, scs, ms) = q5k_block_unpack(&blk[..16], sub(blk, 16), &blk[48..176]);
        let (dw, mw) = (f16_at(blk, 0), f16_at(blk, 2));
        for (sum, ys) in sum.iter_mut().zip(&ys) {
            let y = &ys[b];
            let mut acc = _mm256_setzero_si256();
            for j in 0..8 {
                // 5-bit values × |activations| ≤ 127: pair sums ≤ 7874.
                let p16 = _mm256_maddubs_epi16(xs[j], load32_i8(sub_i8(&y.qs, 32 * j)));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(scs[j])));
            }
            // Σ mⱼ·(bsums[2j] + bsums[2j + 1]): 6-bit mins × 16-element sums, exact in i32.
            // SAFETY: reads the 32 bytes of `bsums` ([i16; 16]); `loadu` has no alignment requirement.
            let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
            let summ = hsum_i32(_mm256_madd_epi16(bsums, ms));
            let d = y.d * dw;
            let dmin = y.d * mw;
            *sum += d * hsum_i32(acc) as f32 - dmin * summ as f32;
        }
    }
    out.copy_from_slice(&sum);
}

/// [`vec_dot_q4_k_q8_k`] for `R` activation rows, each block unpacked once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_k_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_min = [_mm256_setzero_ps(); R];
    for (b, blk) in w.chunks_exact(144).take(nb).enumerate() {
        let x = q4k_unpack(sub(blk, 0));
        for r in 0..R {
            q4k_fuse(&x, &ys[r][b], &mut acc[r], &mut acc_min[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum8(acc[r]) - hsum8(acc_min[r]);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q4_k_rows, w, a, out)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_k_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q5_k_rows, w, a, out)
}

/// [`vec_dot_q6_k_q8_k`] for `R` activation rows, each block unpacked once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_k_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, blk) in w.chunks_exact(210).take(nb).enumerate() {
        let x = q6k_unpack(sub(blk, 0));
        for r in 0..R {
            q6k_fuse(&x, &ys[r][b], &mut acc[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum8(acc[r]);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q6_k_rows, w, a, out)
}

/// `dot::vec_dot_q4_k_q8_k_tiled` (llama.cpp's tiled-GEMM order) for `R` (at most four)
/// activation rows: per block the exact integers `s1` (scaled sums) and `s2` (mins × sums) of
/// the four rows come out of one reduction each, then per lane `r = fma(-dmin, s2, fl(s1·d))`
/// and `acc = fma(r, y.d, acc)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_tiled_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let z = _mm256_setzero_si256();
    let mut acc = _mm_setzero_ps();
    for (b, blk) in w.chunks_exact(144).take(nb).enumerate() {
        let x = q4k_unpack(sub(blk, 0));
        let scaled = |r: usize| {
            if r >= R {
                return z;
            }
            let y = &ys[r][b];
            let mut lanes = z;
            for j in 0..8 {
                // 4-bit values × |activations| ≤ 128: pair sums ≤ 3840; × 6-bit scales fits i32.
                let p16 = _mm256_maddubs_epi16(x.x[j], load32_i8(sub_i8(&y.qs, 32 * j)));
                lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p16, x.sc[j]));
            }
            lanes
        };
        let mins = |r: usize| if r < R { _mm256_madd_epi16(load16_i16(&ys[r][b].bsums), x.mins) } else { z };
        let s1 = _mm_cvtepi32_ps(hsum_i32_x4(scaled(0), scaled(1), scaled(2), scaled(3)));
        let s2 = _mm_cvtepi32_ps(hsum_i32_x4(mins(0), mins(1), mins(2), mins(3)));
        let d = _mm_shuffle_ps::<0x00>(x.dm, x.dm);
        let dmin = _mm_shuffle_ps::<0x55>(x.dm, x.dm);
        let r = _mm_fnmadd_ps(dmin, s2, _mm_mul_ps(s1, d));
        let yd = |r: usize| if r < R { ys[r][b].d } else { 0.0 };
        acc = _mm_fmadd_ps(r, _mm_setr_ps(yd(0), yd(1), yd(2), yd(3)), acc);
    }
    out.copy_from_slice(&to_array(acc)[..R]);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k_tiled_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q4_k_tiled_rows, w, a, out)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut out = [0.0f32];
    q4_k_tiled_rows::<1>(w, a, a.len(), &mut out);
    out[0]
}

/// `dot::vec_dot_q6_k_q8_k_tiled` for `R` (at most four) activation rows, as
/// [`q4_k_tiled_rows`]: one exact integer per row and block, `r = fl(s·d)`, `acc = fma(r, y.d, acc)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_tiled_rows<const R: usize>(w: &[u8], a: &[BlockQ8K], nb: usize, out: &mut [f32]) {
    let ys: [&[BlockQ8K]; R] = split_rows(a, nb);
    let z = _mm256_setzero_si256();
    let mut acc = _mm_setzero_ps();
    for (b, blk) in w.chunks_exact(210).take(nb).enumerate() {
        let x = q6k_unpack(sub(blk, 0));
        let row = |r: usize| {
            if r >= R {
                return z;
            }
            let y = &ys[r][b];
            let mut lanes = z;
            for i in 0..8 {
                // 6-bit values × |activations| ≤ 128: pair sums ≤ 16128.
                let p16 = _mm256_maddubs_epi16(x.x[i], load32_i8(sub_i8(&y.qs, 32 * i)));
                lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p16, x.sc[i]));
            }
            let offset = _mm256_madd_epi16(load16_i16(&y.bsums), x.sc16);
            _mm256_sub_epi32(lanes, _mm256_slli_epi32(offset, 5))
        };
        let s = _mm_cvtepi32_ps(hsum_i32_x4(row(0), row(1), row(2), row(3)));
        let r = _mm_mul_ps(s, _mm_set1_ps(x.d));
        let yd = |r: usize| if r < R { ys[r][b].d } else { 0.0 };
        acc = _mm_fmadd_ps(r, _mm_setr_ps(yd(0), yd(1), yd(2), yd(3)), acc);
    }
    out.copy_from_slice(&to_array(acc)[..R]);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k_tiled_rows(w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
    in_row_groups!(q6_k_tiled_rows, w, a, out)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut out = [0.0f32];
    q6_k_tiled_rows::<1>(w, a, a.len(), &mut out);
    out[0]
}

/// `max |x|` over a multiple of 8 floats, ignoring NaNs as `f32::max` does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn abs_max(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        // `max(a, m)` returns `m` when `a` is NaN.
        m = _mm256_max_ps(_mm256_andnot_ps(sign, load8_f32(c)), m);
    }
    let m = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// Rounds half to even and converts, as `round_ties_even() as i32` does for values in range;
/// NaN becomes 0 as in Rust's saturating cast (the only out-of-range input that can occur).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_i32(p: __m256) -> __m256i {
    let r = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p));
    _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(p, p)), r)
}

/// Four vectors of eight i32 (each within i8) as 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i8(v: [__m256i; 4]) -> __m256i {
    let b = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    // The packs interleave 128-bit halves; put the 4-byte groups back in order.
    _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// One 32-element chunk scaled by `id` and rounded: the i32 values, for Q8_0/Q8_1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_chunk(chunk: &[f32], id: f32) -> [__m256i; 4] {
    let id = _mm256_set1_ps(id);
    let r = |i: usize| round_i32(_mm256_mul_ps(load8_f32(&chunk[8 * i..8 * i + 8]), id));
    [r(0), r(1), r(2), r(3)]
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], out: &mut Vec<BlockQ8_0>) {
    out.clear();
    for chunk in x.chunks_exact(32) {
        let m = abs_max(chunk);
        let d = m / 127.0;
        let id = if m != 0.0 { 127.0 / m } else { 0.0 };
        let mut b = BlockQ8_0 { d: f16_round(d), qs: [0; 32] };
        store32_i8(&mut b.qs, pack_i8(round_chunk(chunk, id)));
        out.push(b);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_1(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    out.clear();
    for chunk in x.chunks_exact(32) {
        let m = abs_max(chunk);
        let d = m / 127.0;
        let id = if m != 0.0 { 127.0 / m } else { 0.0 };
        let mut b = BlockQ8_1 { d: f16_round(d), s: 0.0, qs: [0; 32] };
        let v = round_chunk(chunk, id);
        let sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])));
        store32_i8(&mut b.qs, pack_i8(v));
        b.s = f16_round(d * sum as f32);
        out.push(b);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(x: &[f32], out: &mut Vec<BlockQ8K>) {
    out.clear();
    let sign = _mm256_set1_ps(-0.0);
    for chunk in x.chunks_exact(256) {
        let mut b = BlockQ8K::default();
        let amax = abs_max(chunk);
        if amax != 0.0 {
            // The reference keeps the first element of largest magnitude, with its sign.
            let target = _mm256_set1_ps(amax);
            let mut max = 0.0f32;
            for (i, c) in chunk.chunks_exact(8).enumerate() {
                let hit = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, load8_f32(c)), target);
                let mask = _mm256_movemask_ps(hit);
                if mask != 0 {
                    max = chunk[8 * i + mask.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -127.0 / max;
            let s = _mm256_set1_ps(iscale);
            let cap = _mm256_set1_epi32(127);
            for (g, c) in chunk.chunks_exact(32).enumerate() {
                let r = |i: usize| {
                    let p = _mm256_mul_ps(s, load8_f32(&c[8 * i..8 * i + 8]));
                    // Clamp first, then zero NaNs, as `round_even(..).min(127)` does.
                    let q = _mm256_min_epi32(
                        _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p)),
                        cap,
                    );
                    _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(p, p)), q)
                };
                let v = [r(0), r(1), r(2), r(3)];
                b.bsums[2 * g] = hsum_i32(_mm256_add_epi32(v[0], v[1])) as i16;
                b.bsums[2 * g + 1] = hsum_i32(_mm256_add_epi32(v[2], v[3])) as i16;
                store32_i8(&mut b.qs[32 * g..32 * g + 32], pack_i8(v));
            }
            b.d = 1.0 / iscale;
        }
        out.push(b);
    }
}

/// Eight f16 from `x[at..at + 8]`, as raw bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load8_f16(x: &[f16], at: usize) -> __m128i {
    let x: &[f16; 8] = x[at..at + 8].try_into().expect("eight halves");
    // SAFETY: reads the 16 bytes of `x` (`f16` is a transparent `u16`); no alignment needed.
    unsafe { _mm_loadu_si128(x.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store8_f16(out: &mut [f16], at: usize, v: __m128i) {
    let out: &mut [f16; 8] = (&mut out[at..at + 8]).try_into().expect("eight halves");
    // SAFETY: writes the 16 bytes of `out`, and any bit pattern is a valid `f16`.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), v) }
}

/// `ops::dot_f16_f32`: ggml's 4 × 16-lane accumulators, here as eight 8-lane halves
/// (`acc[2j + h]` holds lanes `8h..8h + 8` of accumulator `j`), reduced in the same tree.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_f32(k: &[f16], q: &[f32]) -> f32 {
    let np = k.len() / 64 * 64;
    let mut sum = 0.0f64;
    if np > 0 {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (kc, qc) in k[..np].chunks_exact(64).zip(q[..np].chunks_exact(64)) {
            for (i, a) in acc.iter_mut().enumerate() {
                let kv = _mm256_cvtph_ps(load8_f16(kc, 8 * i));
                *a = _mm256_fmadd_ps(kv, load8_f32(&qc[8 * i..8 * i + 8]), *a);
            }
        }
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        let h8 = _mm256_add_ps(hi, lo);
        let h4 = _mm_add_ps(_mm256_extractf128_ps(h8, 1), _mm256_castps256_ps128(h8));
        let h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
        sum = _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2))) as f64;
    }
    for (kv, qv) in k[np..].iter().zip(&q[np..]) {
        sum += (kv.to_f32() * qv) as f64;
    }
    sum as f32
}

/// `acc[i] = f16(v[i]·s + acc[i])`, fused (`ops::f16_axpy_ref`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_axpy(acc: &mut [f16], v: &[f16], s: f32) {
    let n = acc.len().min(v.len()) / 8 * 8;
    let sv = _mm256_set1_ps(s);
    for i in (0..n).step_by(8) {
        let r = _mm256_fmadd_ps(_mm256_cvtph_ps(load8_f16(v, i)), sv, _mm256_cvtph_ps(load8_f16(acc, i)));
        store8_f16(acc, i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(r));
    }
    for (a, x) in acc[n..].iter_mut().zip(&v[n..]) {
        *a = f16::from_f32(x.to_f32().mul_add(s, a.to_f32()));
    }
}

/// `acc[i] += w·v[i]` in f32, multiplied then added as two roundings (`ops::f32_axpy_f16_ref`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_axpy_f16(acc: &mut [f32], v: &[f16], w: f32) {
    let n = acc.len().min(v.len()) / 8 * 8;
    let wv = _mm256_set1_ps(w);
    for (a, i) in acc[..n].chunks_exact_mut(8).zip((0..n).step_by(8)) {
        let r = _mm256_add_ps(load8_f32(a), _mm256_mul_ps(wv, _mm256_cvtph_ps(load8_f16(v, i))));
        let a: &mut [f32; 8] = a.try_into().expect("eight floats");
        // SAFETY: writes the 8 floats of `a`; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), r) }
    }
    for (a, x) in acc[n..].iter_mut().zip(&v[n..]) {
        *a += w * x.to_f32();
    }
}

/// `acc[i] = f16(acc[i]·s)` (`ops::f16_scale_ref`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_scale(acc: &mut [f16], s: f32) {
    let n = acc.len() / 8 * 8;
    let sv = _mm256_set1_ps(s);
    for i in (0..n).step_by(8) {
        let r = _mm256_mul_ps(_mm256_cvtph_ps(load8_f16(acc, i)), sv);
        store8_f16(acc, i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(r));
    }
    for a in acc[n..].iter_mut() {
        *a = f16::from_f32(a.to_f32() * s);
    }
}

/// `ops::expf_ggml` on eight lanes: the same fused multiply-adds, and `j · 2ⁿ` rounded once
/// through f64 exactly as the reference does it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn expf_ggml_x8(x: __m256) -> __m256 {
    let c = |b: u32| _mm256_set1_ps(f32::from_bits(b));
    let r = c(0x4b40_0000);
    let n = _mm256_sub_ps(_mm256_fmadd_ps(x, c(0x3fb8_aa3b), r), r);
    let neg_n = _mm256_xor_ps(n, _mm256_set1_ps(-0.0));
    let b = _mm256_fmadd_ps(neg_n, c(0x35bf_be8e), _mm256_fmadd_ps(neg_n, c(0x3f31_7200), x));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
    );
    // 2ⁿ as f64 bits; lanes with |n| > 192 are replaced below, NaN lanes stay NaN through `j`.
    let ni = _mm256_cvtps_epi32(n);
    let pow2 = |i: __m128i| {
        _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(i), _mm256_set1_epi64x(1023)), 52))
    };
    let lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(j)), pow2(_mm256_castsi256_si128(ni)));
    let hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(j, 1)), pow2(_mm256_extracti128_si256(ni, 1)));
    let res = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    let low = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
    let special = _mm256_blendv_ps(_mm256_set1_ps(f32::INFINITY), _mm256_setzero_ps(), low);
    _mm256_blendv_ps(res, special, big)
}

/// `ops::swiglu_ref`: ggml's vector exponential for whole groups of 16, libm's for the tail.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n16 = gate.len().min(up.len()) / 16 * 16;
    let (one, sign) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
    for (g, u) in gate[..n16].chunks_exact_mut(8).zip(up[..n16].chunks_exact(8)) {
        let x = load8_f32(g);
        let e = expf_ggml_x8(_mm256_xor_ps(x, sign));
        let r = _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), load8_f32(u));
        let g: &mut [f32; 8] = g.try_into().expect("eight floats");
        // SAFETY: writes the 8 floats of `g`; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(g.as_mut_ptr(), r) }
    }
    for (g, &u) in gate[n16..].iter_mut().zip(&up[n16..]) {
        let x = *g;
        *g = (x / (1.0 + (-x).exp())) * u;
    }
}
