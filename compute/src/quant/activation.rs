//! On-the-fly quantization of activations to 8-bit blocks (Q8_0, Q8_1, Q8_K), so dot products
//! with quantized weights run as integer multiply-adds, exactly as ggml does.
//!
//! Rounding follows ggml's x86 code paths (the ones llama.cpp runs on the reference machine):
//! Q8_0/Q8_1 scale by `127 / amax` and round half to even; Q8_K scales by `-127 / max` (signed
//! max) and rounds half to even with a clamp at 127.

use half::f16;

/// 32 activations as int8 with one f16 scale (ggml `block_q8_0`).
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ8_0 {
    pub d: f32,
    pub qs: [i8; 32],
}

/// 32 activations as int8 with a scale and `d * Σqs` (ggml `block_q8_1`), both stored as f16.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ8_1 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// One Q8_0 block of eight activation rows, interleaved for kernels whose vector lanes are the
/// rows: bytes `32g..32g + 32` hold elements `4g..4g + 4` of row 0, then of row 1, … row 7; with
/// each row's scale and 128 × the sum of its 32 values (the offset of weights taken unsigned).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct BlockQ8_0x8 {
    pub qs: [i8; 256],
    pub d: [f32; 8],
    pub offset: [i32; 8],
}

/// Copies row `r`'s values `src` into its place in every 4-byte group of the interleaved `dst`.
fn put_row(dst: &mut [i8], r: usize, src: &[i8]) {
    for (g, v) in src.chunks_exact(4).enumerate() {
        dst[32 * g + 4 * r..32 * g + 4 * r + 4].copy_from_slice(v);
    }
}

/// Row `r`'s values out of the interleaved `src` into `dst` (the inverse of [`put_row`]).
fn take_row(src: &[i8], r: usize, dst: &mut [i8]) {
    for (g, v) in dst.chunks_exact_mut(4).enumerate() {
        v.copy_from_slice(&src[32 * g + 4 * r..32 * g + 4 * r + 4]);
    }
}

/// Interleaves eight rows of Q8_0 blocks (each `rows[r]`, of equal length) into `out`, block by
/// block (see [`BlockQ8_0x8`]).
pub fn interleave_q8_0x8(rows: [&[BlockQ8_0]; 8], out: &mut Vec<BlockQ8_0x8>) {
    for b in 0..rows[0].len() {
        let mut blk = BlockQ8_0x8 { qs: [0; 256], d: [0.0; 8], offset: [0; 8] };
        for (r, row) in rows.iter().enumerate() {
            let y = &row[b];
            put_row(&mut blk.qs, r, &y.qs);
            blk.d[r] = y.d;
            blk.offset[r] = 128 * y.qs.iter().map(|&q| q as i32).sum::<i32>();
        }
        out.push(blk);
    }
}

impl BlockQ8_0x8 {
    /// Row `r`'s block, as it was before interleaving.
    pub fn row(&self, r: usize) -> BlockQ8_0 {
        let mut y = BlockQ8_0 { d: self.d[r], qs: [0; 32] };
        take_row(&self.qs, r, &mut y.qs);
        y
    }
}

/// One Q8_1 block of eight activation rows, interleaved like [`BlockQ8_0x8`], with each row's
/// scale `d` and `s` (for Q4_1, whose values are unsigned already).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct BlockQ8_1x8 {
    pub qs: [i8; 256],
    pub d: [f32; 8],
    pub s: [f32; 8],
}

/// Interleaves eight rows of Q8_1 blocks (each `rows[r]`, of equal length) into `out`, block by
/// block (see [`BlockQ8_1x8`]).
pub fn interleave_q8_1x8(rows: [&[BlockQ8_1]; 8], out: &mut Vec<BlockQ8_1x8>) {
    for b in 0..rows[0].len() {
        let mut blk = BlockQ8_1x8 { qs: [0; 256], d: [0.0; 8], s: [0.0; 8] };
        for (r, row) in rows.iter().enumerate() {
            let y = &row[b];
            put_row(&mut blk.qs, r, &y.qs);
            blk.d[r] = y.d;
            blk.s[r] = y.s;
        }
        out.push(blk);
    }
}

impl BlockQ8_1x8 {
    /// Row `r`'s block, as it was before interleaving.
    pub fn row(&self, r: usize) -> BlockQ8_1 {
        let mut y = BlockQ8_1 { d: self.d[r], s: self.s[r], qs: [0; 32] };
        take_row(&self.qs, r, &mut y.qs);
        y
    }
}

/// One Q8_K block of eight activation rows, interleaved like [`BlockQ8_0x8`]: bytes
/// `32g..32g + 32` hold elements `4g..4g + 4` of row 0, then of row 1, … row 7 (64 groups); with
/// each row's scale and, for each 32-element sub-block `j`, the rows' value sums at `8j..8j + 8`
/// (`sums`), and for each 16-element group `j` at `8j..8j + 8` (`sums16`).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct BlockQ8Kx8 {
    pub qs: [i8; 2048],
    pub d: [f32; 8],
    pub sums: [i32; 64],
    pub sums16: [i32; 128],
}

/// Interleaves eight rows of Q8_K blocks (each `rows[r]`, of equal length) into `out`, block by
/// block (see [`BlockQ8Kx8`]).
pub fn interleave_q8kx8(rows: [&[BlockQ8K]; 8], out: &mut Vec<BlockQ8Kx8>) {
    for b in 0..rows[0].len() {
        let mut blk = BlockQ8Kx8 { qs: [0; 2048], d: [0.0; 8], sums: [0; 64], sums16: [0; 128] };
        for (r, row) in rows.iter().enumerate() {
            let y = &row[b];
            put_row(&mut blk.qs, r, &y.qs);
            blk.d[r] = y.d;
            for j in 0..8 {
                blk.sums[8 * j + r] = y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32;
            }
            for (j, &s) in y.bsums.iter().enumerate() {
                blk.sums16[8 * j + r] = s as i32;
            }
        }
        out.push(blk);
    }
}

impl BlockQ8Kx8 {
    /// Row `r`'s block, as it was before interleaving (its 16-element sums recomputed).
    pub fn row(&self, r: usize) -> BlockQ8K {
        let mut y = BlockQ8K { d: self.d[r], ..Default::default() };
        take_row(&self.qs, r, &mut y.qs);
        for (s, q) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
        y
    }
}

/// 256 activations as int8 with an f32 scale and sums of each 16 (ggml `block_q8_K`).
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K { d: 0.0, qs: [0; 256], bsums: [0; 16] }
    }
}

/// Rounds the way `_mm256_round_ps(_MM_ROUND_NEAREST)` and ggml's `nearest_int` do: half to even.
fn round_even(x: f32) -> i32 {
    x.round_ties_even() as i32
}

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Quantizes `x` (a multiple of 32 long) into Q8_0 blocks, reusing `out`'s allocation.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<BlockQ8_0>) {
    out.clear();
    for chunk in x.chunks_exact(32) {
        let m = amax(chunk);
        let d = m / 127.0;
        let id = if m != 0.0 { 127.0 / m } else { 0.0 };
        let mut b = BlockQ8_0 { d: f16_round(d), qs: [0; 32] };
        for (q, v) in b.qs.iter_mut().zip(chunk) {
            *q = round_even(v * id) as i8;
        }
        out.push(b);
    }
}

/// Quantizes `x` (a multiple of 32 long) into Q8_1 blocks, reusing `out`'s allocation.
pub fn quantize_q8_1(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    out.clear();
    for chunk in x.chunks_exact(32) {
        let m = amax(chunk);
        let d = m / 127.0;
        let id = if m != 0.0 { 127.0 / m } else { 0.0 };
        let mut b = BlockQ8_1 { d: f16_round(d), s: 0.0, qs: [0; 32] };
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(chunk) {
            let r = round_even(v * id);
            *q = r as i8;
            sum += r;
        }
        b.s = f16_round(d * sum as f32);
        out.push(b);
    }
}

/// Quantizes `x` (a multiple of 256 long) into Q8_K blocks, reusing `out`'s allocation.
pub fn quantize_q8_k(x: &[f32], out: &mut Vec<BlockQ8K>) {
    out.clear();
    for chunk in x.chunks_exact(256) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in chunk {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = BlockQ8K::default();
        if amax != 0.0 {
            let iscale = -127.0 / max;
            for (q, v) in b.qs.iter_mut().zip(chunk) {
                *q = round_even(iscale * v).min(127) as i8;
            }
            for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = qs.iter().map(|&q| q as i16).sum();
            }
            b.d = 1.0 / iscale;
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trips_within_half_step() {
        // Goal: dequantized Q8_0 stays within half a quantization step of the input.
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.13).collect();
        let mut q = Vec::new();
        quantize_q8_0(&x, &mut q);
        for (b, chunk) in q.iter().zip(x.chunks_exact(32)) {
            for (qv, v) in b.qs.iter().zip(chunk) {
                assert!((*qv as f32 * b.d - v).abs() <= b.d * 0.5 + 1e-3, "{qv} {v}");
            }
        }
    }

    #[test]
    fn q8_k_sums_and_sign() {
        // Goal: bsums are the sums of each 16 quants and the signed max maps to -127·sign.
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) / 10.0).collect();
        let mut q = Vec::new();
        quantize_q8_k(&x, &mut q);
        let b = &q[0];
        assert_eq!(b.qs[255], -127);
        for (j, s) in b.bsums.iter().enumerate() {
            assert_eq!(*s, b.qs[j * 16..j * 16 + 16].iter().map(|&v| v as i16).sum::<i16>());
        }
        assert!((b.qs[0] as f32 * b.d - x[0]).abs() < 0.05);
    }
}
