//! Scalar reference dot products of one quantized weight row with quantized activations.
//!
//! These are the oracles the SIMD kernels are tested against, and the fallback on every CPU.
//! Each follows ggml's integer formulation for its type (integer sums per sub-block, scaled
//! once per sub-block), so results match llama.cpp's up to float summation order.
//! Callers guarantee `w.len()` is the row's byte size and the activations cover the same
//! number of elements; the matmul layer checks this once per matrix.

// The loops index two arrays at `j` and `j + 16` (low and high nibbles), which reads closer to
// the block layout than zipped iterators.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::activation::{BlockQ8K, BlockQ8Kx8, BlockQ8_0, BlockQ8_0x8, BlockQ8_1, BlockQ8_1x8};
use super::tables::{IQ1S_GRID, KVALUES_IQ4NL};

/// `IQ1S_DELTA` from ggml-common.h: the offset added to every IQ1_S grid value.
const IQ1S_DELTA: f32 = 0.125;

/// One block's contribution to ggml's 8-lane x86 accumulator: lane `l` holds the integer sum of
/// elements `4l..4l+4` of the block, scaled and fused-multiply-added into `acc[l]`.
/// Summing in ggml's lane order keeps results bit-identical to llama.cpp on x86, which matters
/// because attention later rounds to f16 and greedy decoding amplifies any flipped rounding.
#[inline]
fn lanes_fma(acc: &mut [f32; 8], d: f32, lanes: &[i32; 8]) {
    for (a, &l) in acc.iter_mut().zip(lanes) {
        *a = d.mul_add(l as f32, *a);
    }
}

/// ggml's `hsum_float_8`: high and low halves, then pairs, then the last two.
#[inline]
fn hsum8(acc: &[f32; 8]) -> f32 {
    let r = [acc[4] + acc[0], acc[5] + acc[1], acc[6] + acc[2], acc[7] + acc[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_0 (18-byte blocks: f16 d, 16 bytes of nibbles) · Q8_0.
pub fn vec_dot_q4_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    nibble_blocks_dot(w, a, |n| n as i32 - 8)
}

/// 18-byte blocks of an f16 scale and 32 nibbles (low nibbles are elements 0..16, high 16..32),
/// each nibble mapped to its value by `value`, · Q8_0.
///
/// Summed in the order of llama.cpp's x86 "repacked" Q4_0/IQ4_NL kernels (it repacks every such
/// matrix whose row count is a multiple of 8): one exact integer sum per block, fused into the
/// accumulator with the product of the two scales.
fn nibble_blocks_dot(w: &[u8], a: &[BlockQ8_0], value: impl Fn(u8) -> i32) -> f32 {
    let mut acc = 0.0f32;
    for (blk, y) in w.chunks_exact(18).zip(a) {
        let d = f16_at(blk, 0);
        let qs = &blk[2..18];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += value(qs[j] & 0x0F) * y.qs[j] as i32 + value(qs[j] >> 4) * y.qs[j + 16] as i32;
        }
        acc = (sumi as f32).mul_add(d * y.d, acc);
    }
    acc
}

/// [`vec_dot_q4_0_q8_0`] of weight rows `w` (back to back) with `groups` groups of eight
/// interleaved activation rows ([`BlockQ8_0x8`], each group's blocks in turn):
/// `out[(i·groups + g)·8 + r]` has exactly the bits of the single-row dot of weight row `i` with
/// row `r` of group `g`.
pub fn vec_dot_q4_0_q8_0x8(w: &[u8], a: &[BlockQ8_0x8], groups: usize, out: &mut [f32]) {
    dot_x8(w, 18, a, groups, out, BlockQ8_0x8::row, vec_dot_q4_0_q8_0)
}

/// [`vec_dot_iq4_nl_q8_0`] of weight rows with groups of eight interleaved activation rows.
pub fn vec_dot_iq4_nl_q8_0x8(w: &[u8], a: &[BlockQ8_0x8], groups: usize, out: &mut [f32]) {
    dot_x8(w, 18, a, groups, out, BlockQ8_0x8::row, vec_dot_iq4_nl_q8_0)
}

/// The single-row dot `dot` of each weight row of `w` (`block_bytes` per block) with each row of
/// `groups` groups of eight interleaved activation rows (`a`, each group's blocks in turn), taken
/// back out with `row`: the reference of the interleaved kernels. `out[(i·groups + g)·8 + r]` =
/// weight row `i` · row `r` of group `g`.
fn dot_x8<B8, B>(
    w: &[u8],
    block_bytes: usize,
    a: &[B8],
    groups: usize,
    out: &mut [f32],
    row: impl Fn(&B8, usize) -> B,
    dot: impl Fn(&[u8], &[B]) -> f32,
) {
    let nb = a.len() / groups.max(1);
    let rb = block_bytes * nb;
    if rb == 0 {
        return;
    }
    for (g, ga) in a.chunks_exact(nb).enumerate() {
        let rows: Vec<Vec<B>> = (0..8).map(|r| ga.iter().map(|y| row(y, r)).collect()).collect();
        for (i, w) in w.chunks_exact(rb).enumerate() {
            for (r, row) in rows.iter().enumerate() {
                out[(i * groups + g) * 8 + r] = dot(w, row);
            }
        }
    }
}

/// Q4_1 (20-byte blocks: f16 d, f16 m, 16 bytes of nibbles) · Q8_1.
pub fn vec_dot_q4_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (blk, y) in w.chunks_exact(20).zip(a) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qs = &blk[4..20];
        summs = m.mul_add(y.s, summs);
        let mut lanes = [0i32; 8];
        for (j, &b) in qs.iter().enumerate() {
            lanes[j / 4] += (b & 0x0F) as i32 * y.qs[j] as i32;
            lanes[4 + j / 4] += (b >> 4) as i32 * y.qs[j + 16] as i32;
        }
        lanes_fma(&mut acc, d * y.d, &lanes);
    }
    hsum8(&acc) + summs
}

/// [`vec_dot_q4_1_q8_1`] of weight rows `w` (back to back) with groups of eight interleaved
/// activation rows ([`BlockQ8_1x8`]), laid out as [`vec_dot_q4_0_q8_0x8`] says.
pub fn vec_dot_q4_1_q8_1x8(w: &[u8], a: &[BlockQ8_1x8], groups: usize, out: &mut [f32]) {
    dot_x8(w, 20, a, groups, out, BlockQ8_1x8::row, vec_dot_q4_1_q8_1)
}

/// Q5_0 (22-byte blocks: f16 d, u32 high bits, 16 bytes of nibbles) · Q8_0.
pub fn vec_dot_q5_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (blk, y) in w.chunks_exact(22).zip(a) {
        let d = f16_at(blk, 0);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let qs = &blk[6..22];
        let mut sumi = 0i32;
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((qs[j] & 0x0F) as u32 | h0) as i32 - 16;
            let x1 = ((qs[j] >> 4) as u32 | h1) as i32 - 16;
            sumi += x0 * y.qs[j] as i32 + x1 * y.qs[j + 16] as i32;
        }
        sum += sumi as f32 * d * y.d;
    }
    sum
}

/// Q5_1 (24-byte blocks: f16 d, f16 m, u32 high bits, 16 bytes of nibbles) · Q8_1.
pub fn vec_dot_q5_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (blk, y) in w.chunks_exact(24).zip(a) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
        let qs = &blk[8..24];
        let mut sumi = 0i32;
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((qs[j] & 0x0F) as u32 | h0) as i32;
            let x1 = ((qs[j] >> 4) as u32 | h1) as i32;
            sumi += x0 * y.qs[j] as i32 + x1 * y.qs[j + 16] as i32;
        }
        sum += (d * y.d) * sumi as f32 + m * y.s;
    }
    sum
}

/// Q8_0 (34-byte blocks: f16 d, 32 int8) · Q8_0.
pub fn vec_dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (blk, y) in w.chunks_exact(34).zip(a) {
        let d = f16_at(blk, 0);
        let mut lanes = [0i32; 8];
        for (j, (&q, &v)) in blk[2..34].iter().zip(&y.qs).enumerate() {
            lanes[j / 4] += q as i8 as i32 * v as i32;
        }
        lanes_fma(&mut acc, d * y.d, &lanes);
    }
    hsum8(&acc)
}

/// IQ4_NL (18-byte blocks: f16 d, 16 bytes of indices into a non-linear table) · Q8_0.
pub fn vec_dot_iq4_nl_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    nibble_blocks_dot(w, a, |n| KVALUES_IQ4NL[n as usize] as i32)
}

/// Q2_K (84-byte blocks: 16 scale/min bytes, 64 bytes of 2-bit quants, f16 d, f16 dmin) · Q8_K.
///
/// Summed in the order of llama.cpp's x86 repacked Q2_K kernels (AVX-512 hosts repack Q2_K
/// matrices whose row count is a multiple of 8): the scaled sums and the min sums are exact
/// integers, fused into two accumulators that are subtracted at the end. The single-row kernel
/// fuses once per 256-element super-block; the four-row kernel, used for activation rows in
/// groups of four, fuses once per 128-element half (`halves = true`).
pub fn vec_dot_q2_k_q8_k(w: &[u8], a: &[BlockQ8K], halves: bool) -> f32 {
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (blk, y) in w.chunks_exact(84).zip(a) {
        let sc = &blk[0..16];
        let d = f16_at(blk, 80) * y.d;
        let dmin = f16_at(blk, 82) * y.d;
        let mut isum = [0i32; 2];
        let mut imin = [0i32; 2];
        for k in 0..2 {
            let q2 = &blk[16 + k * 32..16 + k * 32 + 32];
            for j in 0..4 {
                let q8 = &y.qs[k * 128 + j * 32..k * 128 + j * 32 + 32];
                for half in 0..2 {
                    let is = k * 8 + j * 2 + half;
                    let s: i32 =
                        (half * 16..half * 16 + 16).map(|l| q8[l] as i32 * ((q2[l] >> (2 * j)) & 3) as i32).sum();
                    isum[k] += (sc[is] & 0x0F) as i32 * s;
                    imin[k] += (sc[is] >> 4) as i32 * y.bsums[is] as i32;
                }
            }
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

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block (ggml `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K block at once, from its 12 scale bytes:
/// byte `j` of each array is [`scale_min_k4`]`(j)`. Three words of bit operations instead of
/// eight branches, for the SIMD kernels.
#[inline]
pub fn scales_mins_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (word(0), word(1), word(2));
    const SIX: u32 = 0x3f3f_3f3f;
    const FOUR: u32 = 0x0f0f_0f0f;
    const TWO: u32 = 0x0303_0303;
    // Sub-blocks 0..4 keep the low six bits of bytes 0..4 (scales) and 4..8 (mins); 4..8 take a
    // nibble of bytes 8..12 and, as bits 4 and 5, the top two bits of bytes 0..4 / 4..8.
    let hi_sc = (u2 & FOUR) | (((u0 >> 6) & TWO) << 4);
    let hi_m = ((u2 >> 4) & FOUR) | (((u1 >> 6) & TWO) << 4);
    let join = |lo: u32, hi: u32| (lo as u64 | (hi as u64) << 32).to_le_bytes();
    (join(u0 & SIX, hi_sc), join(u1 & SIX, hi_m))
}

/// Q4_K (144-byte blocks: f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles) · Q8_K.
///
/// Summed in eight lanes, as the SIMD kernels sum without any horizontal step per block: lane
/// `l` holds elements `4l..4l+4` of every 32-element sub-block, each scaled by its sub-block's
/// scale, and is fused into `acc[l]` with `d` once per super-block; lane `j` of the mins part
/// holds sub-block `j`'s min × activation sum, fused with `dmin`. Both are reduced as
/// `hsum_float_8` at the end. (llama.cpp repacks Q4_K rows and sums them in yet another
/// order; no reference output depends on this type, see ARCHITECTURE.md.)
pub fn vec_dot_q4_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut acc_min = [0.0f32; 8];
    for (blk, y) in w.chunks_exact(144).zip(a) {
        let (x, sc, m) = q4_k_values(blk);
        let mut lanes = [0i32; 8];
        for (e, (&v, &q)) in x.iter().zip(&y.qs).enumerate() {
            lanes[(e % 32) / 4] += sc[e / 32] as i32 * (v as i32 * q as i32);
        }
        let mins: [i32; 8] = std::array::from_fn(|j| m[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32));
        lanes_fma(&mut acc, y.d * f16_at(blk, 0), &lanes);
        lanes_fma(&mut acc_min, y.d * f16_at(blk, 2), &mins);
    }
    hsum8(&acc) - hsum8(&acc_min)
}

/// One Q4_K block's 256 values (0..16, element order) and its eight sub-block scales and mins.
fn q4_k_values(blk: &[u8]) -> ([u8; 256], [u8; 8], [u8; 8]) {
    let mut scale_bytes = [0u8; 12];
    scale_bytes.copy_from_slice(&blk[4..16]);
    let (sc, m) = scales_mins_k4(&scale_bytes);
    // Sub-block 2p is the low nibbles of bytes 32p..32p + 32, sub-block 2p + 1 the high ones.
    let qs = &blk[16..144];
    let x = std::array::from_fn(|e| {
        let (j, i) = (e / 32, e % 32);
        (qs[(j / 2) * 32 + i] >> (4 * (j % 2))) & 0x0F
    });
    (x, sc, m)
}

/// Q5_K (176-byte blocks: f16 d, f16 dmin, 12 scale bytes, 32 high-bit bytes, 128 nibble bytes) · Q8_K.
pub fn vec_dot_q5_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    w.chunks_exact(176).zip(a).map(|(blk, y)| q5k_block_dot(&blk[..16], &blk[16..48], &blk[48..176], y)).sum()
}

/// One Q5_K super-block (`head` = f16 d, f16 dmin, 12 scale bytes; `qh` = the fifth bits)
/// against its Q8_K activations: eight 32-element sub-blocks with 6-bit scales/mins.
fn q5k_block_dot(head: &[u8], qh: &[u8], qs: &[u8], y: &BlockQ8K) -> f32 {
    let d = y.d * f16_at(head, 0);
    let dmin = y.d * f16_at(head, 2);
    let scales = &head[4..16];
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let shift = 4 * (j % 2);
        let q8 = &y.qs[j * 32..j * 32 + 32];
        let s: i32 = (0..32)
            .map(|l| {
                let high = ((qh[l] >> j) & 1) << 4;
                (((q[l] >> shift) & 0x0F) | high) as i32 * q8[l] as i32
            })
            .sum();
        sumi += sc as i32 * s;
        summ += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
    }
    d * sumi as f32 - dmin * summ as f32
}

/// One Q6_K block's 256 values, unsigned (0..64: the stored 6 bits, 32 above the signed value),
/// and its sixteen scales.
fn q6_k_values(blk: &[u8]) -> ([u8; 256], [i32; 16]) {
    let mut vals = [0u8; 256];
    let ql = &blk[0..128];
    let qh = &blk[128..192];
    for half in 0..2 {
        let ql = &ql[half * 64..half * 64 + 64];
        let qh = &qh[half * 32..half * 32 + 32];
        let out = &mut vals[half * 128..half * 128 + 128];
        for l in 0..32 {
            out[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            out[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    (vals, std::array::from_fn(|j| blk[192 + j] as i8 as i32))
}

/// Q6_K (210-byte blocks: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales, f16 d) · Q8_K.
///
/// Summed in eight lanes, as the SIMD kernels sum: the values are taken unsigned (0..64) and
/// lane `l` holds elements `4l..4l+4` of every 32-element run, each scaled by its 16-element
/// group's scale; the offset of 32 is then taken off lane `l` as
/// `32·(scale[2l]·bsums[2l] + scale[2l + 1]·bsums[2l + 1])`. Each block's lanes are fused into
/// `acc` with `d`, and `acc` is reduced as `hsum_float_8` at the end.
pub fn vec_dot_q6_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (blk, y) in w.chunks_exact(210).zip(a) {
        let (vals, scales) = q6_k_values(blk);
        let mut lanes = [0i32; 8];
        for (e, (&v, &q)) in vals.iter().zip(&y.qs).enumerate() {
            lanes[(e % 32) / 4] += scales[e / 16] * (v as i32 * q as i32);
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane -= 32 * (scales[2 * l] * y.bsums[2 * l] as i32 + scales[2 * l + 1] * y.bsums[2 * l + 1] as i32);
        }
        lanes_fma(&mut acc, f16_at(blk, 208) * y.d, &lanes);
    }
    hsum8(&acc)
}

/// One IQ1_S block's 256 grid values (-1, 0 or 1, element order) and, per 32-element sub-block,
/// its scale `2·s + 1` and delta sign (±1).
fn iq1_s_values(blk: &[u8]) -> ([i8; 256], [i32; 8], [i32; 8]) {
    let qs = &blk[2..34];
    let qh = |ib: usize| u16::from_le_bytes([blk[34 + 2 * ib], blk[35 + 2 * ib]]) as usize;
    let grid = std::array::from_fn(|e| {
        let (ib, l, j) = (e / 32, (e % 32) / 8, e % 8);
        let idx = qs[4 * ib + l] as usize | ((qh(ib) >> (3 * l)) & 7) << 8;
        IQ1S_GRID[idx].to_le_bytes()[j] as i8
    });
    let ls = std::array::from_fn(|ib| 2 * ((qh(ib) >> 12) & 7) as i32 + 1);
    let delta = std::array::from_fn(|ib| if qh(ib) & 0x8000 != 0 { -1 } else { 1 });
    (grid, ls, delta)
}

/// IQ1_S (50-byte blocks: f16 d, 32 grid-index bytes, 8 u16 of high index bits/scale/sign) · Q8_K.
///
/// Summed in the order of llama.cpp's AVX2 kernel: eight integer lanes of four consecutive
/// elements (scaled per 32-element sub-block), fused per super-block, then the lanes reduced
/// and the delta term added.
pub fn vec_dot_iq1_s_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut acc1 = 0.0f32;
    for (blk, y) in w.chunks_exact(50).zip(a) {
        let (grid, ls, delta) = iq1_s_values(blk);
        let mut lanes = [0i32; 8];
        for (e, (&g, &v)) in grid.iter().zip(&y.qs).enumerate() {
            lanes[(e % 32) / 4] += ls[e / 32] * (g as i32 * v as i32);
        }
        let sumi1: i32 =
            (0..8).map(|ib| ls[ib] * delta[ib] * (y.bsums[2 * ib] as i32 + y.bsums[2 * ib + 1] as i32)).sum();
        let d = y.d * f16_at(blk, 0);
        lanes_fma(&mut acc, d, &lanes);
        acc1 = d.mul_add(sumi1 as f32, acc1);
    }
    IQ1S_DELTA.mul_add(acc1, hsum8(&acc))
}

/// The IQ1_S dot product in the order of llama.cpp's tiled CPU GEMM (`ggml-cpu/tiled`), which
/// multiplies IQ1_S weights with batches of 8 or more activation rows:
/// - the weight value is the integer `8·grid + delta` (delta = ±1), so each block gives one
///   exact integer `s = Σ_sub ls · Σ (8·g + delta)·q` (|s| < 2²⁴: its conversion is exact);
/// - per block, `r = fl(s · d/8)` (`d/8` is exact), then `acc = fma(r, y.d, acc)`, blocks in order
///   from an accumulator of +0.
pub fn vec_dot_iq1_s_q8_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, y) in w.chunks_exact(50).zip(a) {
        let (grid, ls, delta) = iq1_s_values(blk);
        let mut s = 0i32;
        for ib in 0..8 {
            let sub: i32 = (32 * ib..32 * ib + 32).map(|e| (8 * grid[e] as i32 + delta[ib]) * y.qs[e] as i32).sum();
            s += ls[ib] * sub;
        }
        // d/8, exact: the 8 of the integer weights taken back out.
        let r = s as f32 * (f16_at(blk, 0) * 0.125);
        acc = r.mul_add(y.d, acc);
    }
    acc
}

/// [`vec_dot_iq1_s_q8_k_tiled`] of weight rows `w` (back to back) with groups of eight
/// interleaved activation rows, laid out as [`vec_dot_q4_k_q8_k_tiled_x8`] says.
pub fn vec_dot_iq1_s_q8_k_tiled_x8(w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
    dot_x8(w, 50, a, groups, out, BlockQ8Kx8::row, vec_dot_iq1_s_q8_k_tiled)
}

/// Q4_K · Q8_K in the order of llama.cpp's tiled CPU GEMM (`ggml-cpu/tiled`), which multiplies
/// Q4_K weights it has not repacked (`--repack 0`, prima's mmap'd weights) with batches of 8+
/// activation rows. Per super-block two exact integers, `s1 = Σ_j sc_j · Σ x·q` and
/// `s2 = Σ_j m_j · (32-element sums)`; then `r = fl(s1·d)`, `r = fma(-dmin, s2, r)` and
/// `acc = fma(r, y.d, acc)`, blocks in order from +0.
pub fn vec_dot_q4_k_q8_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, y) in w.chunks_exact(144).zip(a) {
        let (x, sc, m) = q4_k_values(blk);
        let (mut s1, mut s2) = (0i32, 0i32);
        for j in 0..8 {
            let dot: i32 = (32 * j..32 * j + 32).map(|e| x[e] as i32 * y.qs[e] as i32).sum();
            s1 += sc[j] as i32 * dot;
            s2 += m[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
        let r = (-f16_at(blk, 2)).mul_add(s2 as f32, s1 as f32 * f16_at(blk, 0));
        acc = r.mul_add(y.d, acc);
    }
    acc
}

/// Q6_K · Q8_K in the order of llama.cpp's tiled CPU GEMM (see [`vec_dot_q4_k_q8_k_tiled`]): per
/// super-block one exact integer `s = Σ_j sc_j · (Σ x·q - 32 · (16-element sum))` over the
/// unsigned values `x`; then `r = fl(s·d)` and `acc = fma(r, y.d, acc)`, blocks in order from +0.
pub fn vec_dot_q6_k_q8_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, y) in w.chunks_exact(210).zip(a) {
        let (vals, scales) = q6_k_values(blk);
        let mut s = 0i32;
        for j in 0..16 {
            let dot: i32 = (16 * j..16 * j + 16).map(|e| vals[e] as i32 * y.qs[e] as i32).sum();
            s += scales[j] * (dot - 32 * y.bsums[j] as i32);
        }
        let r = s as f32 * f16_at(blk, 208);
        acc = r.mul_add(y.d, acc);
    }
    acc
}

/// [`vec_dot_q4_k_q8_k_tiled`] of weight rows `w` (back to back) with `groups` groups of eight
/// interleaved activation rows (`a`: each group's blocks in turn): `out[(i·groups + g)·8 + r]`
/// has exactly the bits of the single-row dot of weight row `i` with row `r` of group `g`.
pub fn vec_dot_q4_k_q8_k_tiled_x8(w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
    dot_x8(w, 144, a, groups, out, BlockQ8Kx8::row, vec_dot_q4_k_q8_k_tiled)
}

/// As [`vec_dot_q4_k_q8_k_tiled_x8`] for [`vec_dot_q6_k_q8_k_tiled`].
pub fn vec_dot_q6_k_q8_k_tiled_x8(w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
    dot_x8(w, 210, a, groups, out, BlockQ8Kx8::row, vec_dot_q6_k_q8_k_tiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_mins_k4_unpacks_like_scale_min_k4() {
        // Goal: the word-parallel unpacking equals the per-sub-block one; method: every single
        // set bit, all ones, and pseudo-random bytes.
        let mut cases: Vec<[u8; 12]> =
            (0..96).map(|bit| std::array::from_fn(|i| ((i == bit / 8) as u8) << (bit % 8))).collect();
        cases.push([0xff; 12]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            cases.push(std::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }));
        }
        for q in cases {
            let (sc, m) = scales_mins_k4(&q);
            for j in 0..8 {
                assert_eq!((sc[j], m[j]), scale_min_k4(j, &q), "sub-block {j} of {q:02x?}");
            }
        }
    }
}
