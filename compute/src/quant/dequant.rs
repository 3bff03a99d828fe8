//! Scalar dequantization of every GGML block type to f32: the reference that SIMD kernels and
//! dot products are checked against (codemap: `compute::quant`).
//!
//! Each type has a `dequantize_<type>` function over whole rows, built from a per-block function
//! that reads the block with explicit little-endian loads (no pointer casts, no `unsafe`). The
//! arithmetic follows ggml's reference dequantizers (`dequantize_row_*` in ggml-quants.c)
//! operation by operation, in f32, so results are bit-identical to an uncontracted ggml build.
//! ggml compiled with FP contraction (GCC's default `-ffp-contract=fast` with FMA) may fuse the
//! `d * q - m` of Q4_1, Q5_1, Q2_K, Q4_K and Q5_K into one rounding; we never fuse.
//! `tests/dequant_oracle.rs` checks all types bit for bit against gguf-py's numpy dequantizers,
//! which also round each f32 operation separately.
//!
//! [`dequantize_row`] is the checked entry point: it returns `Err` for a wrong byte count and
//! never panics. The per-type functions assert their lengths (a caller bug, not bad input).

use gguf::GgmlType;
use half::f16;

use crate::quant::tables::{
    IQ1S_DELTA, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS, KVALUES_IQ4NL,
};
use crate::{Error, Result};

/// A row dequantizer: `src` holds `dst.len() / block_size` whole blocks.
pub type DequantizeFn = fn(src: &[u8], dst: &mut [f32]);

/// Dequantizes `dst.len()` elements of type `ty` from `src`.
///
/// `src` must be exactly `ty.row_bytes(dst.len())` bytes; anything else, or a type without a
/// dequantizer (the integer types and F64), is an `Err`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let f = dequantize_fn(ty).ok_or_else(|| Error::Unsupported(format!("dequantization of {ty} to f32")))?;
    let expected = row_bytes(ty, dst.len())?;
    if src.len() != expected {
        return Err(Error::BadLength { ty, expected, actual: src.len() });
    }
    f(src, dst);
    Ok(())
}

/// Dequantizes a whole tensor of `n_elements` elements (all rows back to back) into a new vector.
///
/// The byte count is checked before allocating, so the allocation is bounded by `src.len()`.
pub fn dequantize_tensor_f32(ty: GgmlType, src: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    let f = dequantize_fn(ty).ok_or_else(|| Error::Unsupported(format!("dequantization of {ty} to f32")))?;
    let expected = row_bytes(ty, n_elements)?;
    if src.len() != expected {
        return Err(Error::BadLength { ty, expected, actual: src.len() });
    }
    let mut dst = vec![0.0; n_elements];
    f(src, &mut dst);
    Ok(dst)
}

/// The row dequantizer for `ty`, or `None` for types that have none (I8..I64, F64).
pub fn dequantize_fn(ty: GgmlType) -> Option<DequantizeFn> {
    use GgmlType::*;
    let f: DequantizeFn = match ty {
        F32 => dequantize_f32,
        F16 => dequantize_f16,
        BF16 => dequantize_bf16,
        Q4_0 => dequantize_q4_0,
        Q4_1 => dequantize_q4_1,
        Q5_0 => dequantize_q5_0,
        Q5_1 => dequantize_q5_1,
        Q8_0 => dequantize_q8_0,
        Q8_1 => dequantize_q8_1,
        Q2_K => dequantize_q2_k,
        Q3_K => dequantize_q3_k,
        Q4_K => dequantize_q4_k,
        Q5_K => dequantize_q5_k,
        Q6_K => dequantize_q6_k,
        Q8_K => dequantize_q8_k,
        IQ2_XXS => dequantize_iq2_xxs,
        IQ2_XS => dequantize_iq2_xs,
        IQ2_S => dequantize_iq2_s,
        IQ3_XXS => dequantize_iq3_xxs,
        IQ3_S => dequantize_iq3_s,
        IQ1_S => dequantize_iq1_s,
        IQ1_M => dequantize_iq1_m,
        IQ4_NL => dequantize_iq4_nl,
        IQ4_XS => dequantize_iq4_xs,
        I8 | I16 | I32 | I64 | F64 => return None,
    };
    Some(f)
}

/// Bytes that `n_elements` of `ty` occupy, or `Err` if that is not a whole number of blocks.
fn row_bytes(ty: GgmlType, n_elements: usize) -> Result<usize> {
    let not_aligned = || Error::NotBlockAligned { ty, n_elements, block_size: ty.block_size() };
    let bytes = ty.row_bytes(n_elements as u64).ok_or_else(not_aligned)?;
    usize::try_from(bytes).map_err(|_| not_aligned())
}

macro_rules! row_fn {
    ($(#[$doc:meta])* $name:ident, $block:ident, $type_size:expr, $block_size:expr) => {
        $(#[$doc])*
        ///
        /// # Panics
        /// If `dst.len()` is not a multiple of the block size or `src` is not exactly the bytes
        /// of `dst.len()` elements. [`dequantize_row`] checks this and returns `Err` instead.
        pub fn $name(src: &[u8], dst: &mut [f32]) {
            for_each_block::<$type_size, $block_size>(src, dst, $block);
        }
    };
}

fn for_each_block<const TS: usize, const BS: usize>(src: &[u8], dst: &mut [f32], block: fn(&[u8; TS], &mut [f32; BS])) {
    assert!(
        dst.len().is_multiple_of(BS) && src.len() == dst.len() / BS * TS,
        "dequantize: {} bytes for {} elements (blocks of {BS} elements in {TS} bytes)",
        src.len(),
        dst.len(),
    );
    for (x, y) in src.chunks_exact(TS).zip(dst.chunks_exact_mut(BS)) {
        let x: &[u8; TS] = x.try_into().expect("chunks_exact yields TS bytes");
        let y: &mut [f32; BS] = y.try_into().expect("chunks_exact_mut yields BS elements");
        block(x, y);
    }
}

fn f16_at(x: &[u8], offset: usize) -> f32 {
    f16::from_le_bytes([x[offset], x[offset + 1]]).to_f32()
}

fn u16_at(x: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([x[offset], x[offset + 1]])
}

fn u32_at(x: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([x[offset], x[offset + 1], x[offset + 2], x[offset + 3]])
}

/// Byte `j` of a grid row: grids store element j in byte j of a little-endian integer.
fn grid_byte(row: u64, j: usize) -> u8 {
    (row >> (8 * j)) as u8
}

/// +1.0 or -1.0 for element `j` of a sign byte (bit j set means negative).
fn sign(signs: u8, j: usize) -> f32 {
    if signs & (1 << j) != 0 {
        -1.0
    } else {
        1.0
    }
}

// ---- plain floats ----

row_fn!(
    /// F32: little-endian IEEE singles, copied bit for bit.
    dequantize_f32, block_f32, 4, 1
);
row_fn!(
    /// F16: IEEE halves, widened exactly.
    dequantize_f16, block_f16, 2, 1
);
row_fn!(
    /// BF16: the top 16 bits of an f32, widened exactly (NaN payloads kept).
    dequantize_bf16, block_bf16, 2, 1
);

fn block_f32(x: &[u8; 4], y: &mut [f32; 1]) {
    y[0] = f32::from_le_bytes(*x);
}

fn block_f16(x: &[u8; 2], y: &mut [f32; 1]) {
    y[0] = f16::from_le_bytes(*x).to_f32();
}

fn block_bf16(x: &[u8; 2], y: &mut [f32; 1]) {
    y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*x)) << 16);
}

// ---- 32-element blocks ----

row_fn!(
    /// Q4_0: `d: f16, qs: [u8; 16]`; `y = (nibble - 8) * d`, low nibbles first.
    dequantize_q4_0, block_q4_0, 18, 32
);
row_fn!(
    /// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; `y = nibble * d + m`.
    dequantize_q4_1, block_q4_1, 20, 32
);
row_fn!(
    /// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; `y = ((nibble | high bit << 4) - 16) * d`.
    dequantize_q5_0, block_q5_0, 22, 32
);
row_fn!(
    /// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; `y = (nibble | high bit << 4) * d + m`.
    dequantize_q5_1, block_q5_1, 24, 32
);
row_fn!(
    /// Q8_0: `d: f16, qs: [i8; 32]`; `y = q * d`.
    dequantize_q8_0, block_q8_0, 34, 32
);
row_fn!(
    /// Q8_1: `d: f16, s: f16, qs: [i8; 32]`; `y = q * d` (`s`, the scaled sum, is not needed).
    dequantize_q8_1, block_q8_1, 36, 32
);
row_fn!(
    /// IQ4_NL: `d: f16, qs: [u8; 16]`; `y = d * KVALUES_IQ4NL[nibble]`.
    dequantize_iq4_nl, block_iq4_nl, 18, 32
);

fn block_q4_0(x: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(x, 0);
    for j in 0..16 {
        let q = x[2 + j];
        y[j] = f32::from(i16::from(q & 0x0f) - 8) * d;
        y[j + 16] = f32::from(i16::from(q >> 4) - 8) * d;
    }
}

fn block_q4_1(x: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(x, 0);
    let m = f16_at(x, 2);
    for j in 0..16 {
        let q = x[4 + j];
        y[j] = f32::from(q & 0x0f) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit values of a Q5 block: low nibbles from `qs`, fifth bits from the u32 `qh`.
fn q5_values(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (qs[j] & 0x0f) | (hi0 << 4);
        q[j + 16] = (qs[j] >> 4) | (hi1 << 4);
    }
    q
}

fn block_q5_0(x: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(x, 0);
    let q = q5_values(u32_at(x, 2), &x[6..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = f32::from(i16::from(q) - 16) * d;
    }
}

fn block_q5_1(x: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(x, 0);
    let m = f16_at(x, 2);
    let q = q5_values(u32_at(x, 4), &x[8..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = f32::from(q) * d + m;
    }
}

fn block_q8_0(x: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(x, 0);
    for (y, &q) in y.iter_mut().zip(&x[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

fn block_q8_1(x: &[u8; 36], y: &mut [f32; 32]) {
    let d = f16_at(x, 0);
    for (y, &q) in y.iter_mut().zip(&x[4..]) {
        *y = f32::from(q as i8) * d;
    }
}

fn block_iq4_nl(x: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(x, 0);
    for j in 0..16 {
        let q = x[2 + j];
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0f)]);
        y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

// ---- k-quants: 256-element super-blocks ----

row_fn!(
    /// Q2_K: `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16`; 16 groups of 16 with 4-bit
    /// scale and min; `y = d * sc * q - dmin * m`, q two bits.
    dequantize_q2_k, block_q2_k, 84, 256
);
row_fn!(
    /// Q3_K: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`; 16 groups of 16 with
    /// 6-bit signed scales; `y = d * (sc - 32) * (q2 - (high bit ? 0 : 4))`.
    dequantize_q3_k, block_q3_k, 110, 256
);
row_fn!(
    /// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; 8 groups of 32 with 6-bit
    /// scale and min; `y = d * sc * q - dmin * m`.
    dequantize_q4_k, block_q4_k, 144, 256
);
row_fn!(
    /// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`; as Q4_K with a
    /// fifth bit from `qh`.
    dequantize_q5_k, block_q5_k, 176, 256
);
row_fn!(
    /// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; `y = d * sc * (q - 32)`.
    dequantize_q6_k, block_q6_k, 210, 256
);
row_fn!(
    /// Q8_K: `d: f32, qs: [i8; 256], bsums: [i16; 16]`; `y = d * q`.
    dequantize_q8_k, block_q8_k, 292, 256
);

fn block_q2_k(x: &[u8; 84], y: &mut [f32; 256]) {
    let (scales, qs) = (&x[0..16], &x[16..80]);
    let d = f16_at(x, 80);
    let dmin = f16_at(x, 82);
    // Two halves of 128; in each, 4 bit-planes of the same 32 bytes, each plane split in two
    // groups of 16 with their own scale byte.
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for plane in 0..4 {
            let shift = 2 * plane;
            for g in 0..2 {
                let sc = scales[8 * half + 2 * plane + g];
                let dl = d * f32::from(sc & 0x0f);
                let ml = dmin * f32::from(sc >> 4);
                let out = 128 * half + 32 * plane + 16 * g;
                for l in 0..16 {
                    let v = (q[16 * g + l] >> shift) & 3;
                    y[out + l] = dl * f32::from(v) - ml;
                }
            }
        }
    }
}

/// The 16 six-bit Q3_K scales: low 4 bits from bytes 0..8 (low nibbles, then high nibbles),
/// high 2 bits from bytes 8..12 (four 2-bit fields each).
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, out) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *out = ((lo | (hi << 4)) as i8) - 32;
    }
    out
}

fn block_q3_k(x: &[u8; 110], y: &mut [f32; 256]) {
    let (hmask, qs) = (&x[0..32], &x[32..96]);
    let scales = q3_k_scales(&x[96..108]);
    let d = f16_at(x, 108);
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for plane in 0..4 {
            let shift = 2 * plane;
            // The high bit of every element of this (half, plane) sits in one bit of hmask.
            let hbit = 1u8 << (4 * half + plane);
            for g in 0..2 {
                let dl = d * f32::from(scales[8 * half + 2 * plane + g]);
                let out = 128 * half + 32 * plane + 16 * g;
                for l in 0..16 {
                    let i = 16 * g + l;
                    let low = ((q[i] >> shift) & 3) as i8;
                    let v = if hmask[i] & hbit != 0 { low } else { low - 4 };
                    y[out + l] = dl * f32::from(v);
                }
            }
        }
    }
}

/// Scale and min of group `j` (0..8) of a Q4_K / Q5_K block, both 6 bits, from the 12-byte
/// packed field.
fn k4_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        let sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc, m)
    }
}

fn block_q4_k(x: &[u8; 144], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let dmin = f16_at(x, 2);
    let (scales, qs) = (&x[4..16], &x[16..144]);
    // Four chunks of 32 bytes; low nibbles make group 2c, high nibbles group 2c+1.
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (sc1, m1) = k4_scale_min(2 * c, scales);
        let (sc2, m2) = k4_scale_min(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        for l in 0..32 {
            y[64 * c + l] = d1 * f32::from(q[l] & 0x0f) - m1;
            y[64 * c + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

fn block_q5_k(x: &[u8; 176], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let dmin = f16_at(x, 2);
    let (scales, qh, qs) = (&x[4..16], &x[16..48], &x[48..176]);
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (sc1, m1) = k4_scale_min(2 * c, scales);
        let (sc2, m2) = k4_scale_min(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (bit1, bit2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            let h1 = if qh[l] & bit1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & bit2 != 0 { 16 } else { 0 };
            y[64 * c + l] = d1 * f32::from((q[l] & 0x0f) + h1) - m1;
            y[64 * c + 32 + l] = d2 * f32::from((q[l] >> 4) + h2) - m2;
        }
    }
}

fn block_q6_k(x: &[u8; 210], y: &mut [f32; 256]) {
    let (ql, qh) = (&x[0..128], &x[128..192]);
    let sc = |i: usize| f32::from(x[192 + i] as i8);
    let d = f16_at(x, 208);
    for half in 0..2 {
        let ql = &ql[64 * half..64 * half + 64];
        let qh = &qh[32 * half..32 * half + 32];
        let out = 128 * half;
        let is = 8 * half;
        for l in 0..32 {
            let g = is + l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[out + l] = d * sc(g) * f32::from(q1);
            y[out + l + 32] = d * sc(g + 2) * f32::from(q2);
            y[out + l + 64] = d * sc(g + 4) * f32::from(q3);
            y[out + l + 96] = d * sc(g + 6) * f32::from(q4);
        }
    }
}

fn block_q8_k(x: &[u8; 292], y: &mut [f32; 256]) {
    let d = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    for (y, &q) in y.iter_mut().zip(&x[4..260]) {
        *y = d * f32::from(q as i8);
    }
}

// ---- i-quants: 256-element super-blocks of codebook (grid) indices ----

row_fn!(
    /// IQ2_XXS: `d: f16, qs: [u32; 16]`; per 32 elements a u32 of four 8-bit grid indices and a
    /// u32 of four 7-bit sign indices plus a 4-bit scale.
    dequantize_iq2_xxs, block_iq2_xxs, 66, 256
);
row_fn!(
    /// IQ2_XS: `d: f16, qs: [u16; 32], scales: [u8; 8]`; each u16 is a 9-bit grid index and a
    /// 7-bit sign index; 4-bit scales per 16 elements.
    dequantize_iq2_xs, block_iq2_xs, 74, 256
);
row_fn!(
    /// IQ2_S: `d: f16, qs: [u8; 32], signs: [u8; 32], qh: [u8; 8], scales: [u8; 8]`; 10-bit grid
    /// indices, explicit sign bytes.
    dequantize_iq2_s, block_iq2_s, 82, 256
);
row_fn!(
    /// IQ3_XXS: `d: f16, qs: [u8; 64], scales_and_signs: [u32; 8]`; 4-element grid rows.
    dequantize_iq3_xxs, block_iq3_xxs, 98, 256
);
row_fn!(
    /// IQ3_S: `d: f16, qs: [u8; 64], qh: [u8; 8], signs: [u8; 32], scales: [u8; 4]`; 9-bit
    /// indices into 4-element grid rows, odd scales `1 + 2 * s`.
    dequantize_iq3_s, block_iq3_s, 110, 256
);
row_fn!(
    /// IQ1_S: `d: f16, qs: [u8; 32], qh: [u16; 8]`; 11-bit indices into the {-1, 0, 1} grid,
    /// plus or minus [`IQ1S_DELTA`], scaled by `d * (2 * s + 1)`.
    dequantize_iq1_s, block_iq1_s, 50, 256
);
row_fn!(
    /// IQ1_M: `qs: [u8; 32], qh: [u8; 16], scales: [u16; 4]`; the f16 super-scale is spread over
    /// the top nibbles of the four scale words.
    dequantize_iq1_m, block_iq1_m, 56, 256
);
row_fn!(
    /// IQ4_XS: `d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]`; IQ4_NL levels with a
    /// signed 6-bit scale per 32 elements.
    dequantize_iq4_xs, block_iq4_xs, 136, 256
);

/// `y[j] = db * grid[j] * sign_j` for one 8-element grid row.
fn put_grid8(y: &mut [f32], db: f32, row: u64, signs: u8) {
    for (j, y) in y.iter_mut().enumerate().take(8) {
        *y = db * f32::from(grid_byte(row, j)) * sign(signs, j);
    }
}

fn block_iq2_xxs(x: &[u8; 66], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    for ib in 0..8 {
        let base = 2 + 8 * ib;
        let aux1 = u32_at(x, base + 4);
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        for l in 0..4 {
            let row = IQ2XXS_GRID[usize::from(x[base + l])];
            let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
            put_grid8(&mut y[32 * ib + 8 * l..], db, row, signs);
        }
    }
}

fn block_iq2_xs(x: &[u8; 74], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let scales = &x[66..74];
    for ib in 0..8 {
        let db = [d * (0.5 + f32::from(scales[ib] & 0x0f)) * 0.25, d * (0.5 + f32::from(scales[ib] >> 4)) * 0.25];
        for l in 0..4 {
            let q = u16_at(x, 2 + 2 * (4 * ib + l));
            let row = IQ2XS_GRID[usize::from(q & 511)];
            let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
            put_grid8(&mut y[32 * ib + 8 * l..], db[l / 2], row, signs);
        }
    }
}

fn block_iq2_s(x: &[u8; 82], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let (qs, signs, qh, scales) = (&x[2..34], &x[34..66], &x[66..74], &x[74..82]);
    for ib in 0..8 {
        let db = [d * (0.5 + f32::from(scales[ib] & 0x0f)) * 0.25, d * (0.5 + f32::from(scales[ib] >> 4)) * 0.25];
        for l in 0..4 {
            let high = (usize::from(qh[ib]) >> (2 * l)) & 3;
            let row = IQ2S_GRID[usize::from(qs[4 * ib + l]) | (high << 8)];
            put_grid8(&mut y[32 * ib + 8 * l..], db[l / 2], row, signs[4 * ib + l]);
        }
    }
}

/// `y[j] = db * grid[j] * sign_j` for two 4-element grid rows sharing one sign byte.
fn put_grid4x2(y: &mut [f32], db: f32, rows: [u32; 2], signs: u8) {
    for (j, y) in y.iter_mut().enumerate().take(8) {
        let g = (rows[j / 4] >> (8 * (j % 4))) as u8;
        *y = db * f32::from(g) * sign(signs, j);
    }
}

fn block_iq3_xxs(x: &[u8; 98], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let qs = &x[2..66];
    for ib in 0..8 {
        let aux = u32_at(x, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let q = &qs[8 * ib + 2 * l..];
            let rows = [IQ3XXS_GRID[usize::from(q[0])], IQ3XXS_GRID[usize::from(q[1])]];
            put_grid4x2(&mut y[32 * ib + 8 * l..], db, rows, signs);
        }
    }
}

fn block_iq3_s(x: &[u8; 110], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let (qs, qh, signs, scales) = (&x[2..66], &x[66..74], &x[74..106], &x[106..110]);
    for ib in 0..8 {
        let s = (scales[ib / 2] >> (4 * (ib % 2))) & 0x0f;
        let db = d * f32::from(1 + 2 * s);
        for l in 0..4 {
            let index = |k: usize| {
                let high = (usize::from(qh[ib]) >> k) & 1;
                usize::from(qs[8 * ib + k]) | (high << 8)
            };
            let rows = [IQ3S_GRID[index(2 * l)], IQ3S_GRID[index(2 * l + 1)]];
            put_grid4x2(&mut y[32 * ib + 8 * l..], db, rows, signs[4 * ib + l]);
        }
    }
}

/// `y[j] = dl * (grid[j] + delta)` for one 8-element row of the signed IQ1 grid.
fn put_iq1_row(y: &mut [f32], dl: f32, row: u64, delta: f32) {
    for (j, y) in y.iter_mut().enumerate().take(8) {
        *y = dl * (f32::from(grid_byte(row, j) as i8) + delta);
    }
}

fn block_iq1_s(x: &[u8; 50], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let qs = &x[2..34];
    for ib in 0..8 {
        let qh = u16_at(x, 34 + 2 * ib);
        let dl = d * f32::from(2 * ((qh >> 12) & 7) + 1);
        let delta = if qh & 0x8000 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
        for l in 0..4 {
            let index = usize::from(qs[4 * ib + l]) | (usize::from((qh >> (3 * l)) & 7) << 8);
            put_iq1_row(&mut y[32 * ib + 8 * l..], dl, IQ1S_GRID[index], delta);
        }
    }
}

fn block_iq1_m(x: &[u8; 56], y: &mut [f32; 256]) {
    let (qs, qh) = (&x[0..32], &x[32..48]);
    let sc = [u16_at(x, 48), u16_at(x, 50), u16_at(x, 52), u16_at(x, 54)];
    let d_bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    let d = f16::from_bits(d_bits).to_f32();
    for ib in 0..8 {
        let s = sc[ib / 2] >> (6 * (ib % 2));
        let dl = [d * f32::from(2 * (s & 7) + 1), d * f32::from(2 * ((s >> 3) & 7) + 1)];
        for l in 0..4 {
            // Each qh byte serves two 8-element rows: bits 0..3 the first, bits 4..7 the second;
            // in each nibble, 3 index bits and a delta sign bit.
            let h = qh[2 * ib + l / 2] >> (4 * (l % 2));
            let index = usize::from(qs[4 * ib + l]) | (usize::from(h & 7) << 8);
            let delta = if h & 8 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
            put_iq1_row(&mut y[32 * ib + 8 * l..], dl[l / 2], IQ1S_GRID[index], delta);
        }
    }
}

fn block_iq4_xs(x: &[u8; 136], y: &mut [f32; 256]) {
    let d = f16_at(x, 0);
    let scales_h = u16_at(x, 2);
    let (scales_l, qs) = (&x[4..8], &x[8..136]);
    for ib in 0..8 {
        let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
        let hi = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * f32::from(((lo | (hi << 4)) as i8) - 32);
        for j in 0..16 {
            let q = qs[16 * ib + j];
            y[32 * ib + j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0f)]);
            y[32 * ib + 16 + j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use gguf::types::ALL_TYPES;

    use super::*;

    /// Every supported type and its row function agree with `GgmlType`'s block geometry.
    #[test]
    fn block_geometry_matches_gguf() {
        // Method: dequantize one zeroed block through the checked entry point; a mismatch in the
        // macro's sizes would panic in `for_each_block`.
        for ty in ALL_TYPES {
            if dequantize_fn(ty).is_none() {
                continue;
            }
            let mut dst = vec![1.0; ty.block_size() * 2];
            let src = vec![0u8; ty.type_size() * 2];
            dequantize_row(ty, &src, &mut dst).unwrap();
        }
    }

    fn check_err(ty: GgmlType, n_src: usize, n_dst: usize) {
        let src = vec![0u8; n_src];
        let mut dst = vec![0.0f32; n_dst];
        assert!(dequantize_row(ty, &src, &mut dst).is_err(), "{ty}: {n_src} bytes, {n_dst} elems");
        assert!(dequantize_tensor_f32(ty, &src, n_dst).is_err(), "{ty}: {n_src}, {n_dst}");
    }

    /// Wrong lengths are `Err`, never a panic.
    #[test]
    fn wrong_lengths_are_errors() {
        // Method: for every type, one byte short, one byte long, a partial block, and a huge count.
        for ty in ALL_TYPES {
            let (bs, ts) = (ty.block_size(), ty.type_size());
            check_err(ty, ts - 1, bs);
            check_err(ty, ts + 1, bs);
            check_err(ty, 0, bs);
            check_err(ty, ts * 3, bs * 2);
            if bs > 1 {
                check_err(ty, ts, bs + 1);
                check_err(ty, ts, bs - 1);
            }
        }
        // Huge counts are rejected before anything is allocated, whether or not their byte
        // size overflows.
        let huge = [
            (GgmlType::Q4_0, usize::MAX - 31),
            (GgmlType::IQ1_S, usize::MAX - 255),
            (GgmlType::F32, usize::MAX / 4 + 1),
            (GgmlType::Q8_K, (usize::MAX / 292 + 1) * 256),
            (GgmlType::Q8_0, usize::MAX),
        ];
        for (ty, n) in huge {
            let src = vec![0u8; ty.type_size()];
            assert!(dequantize_tensor_f32(ty, &src, n).is_err(), "{ty} {n}");
        }
    }

    #[test]
    fn error_variants_carry_context() {
        // Method: match on the variant and its fields for each kind of rejection.
        let mut dst = [0.0f32; 32];
        match dequantize_row(GgmlType::Q8_0, &[0; 33], &mut dst) {
            Err(Error::BadLength { ty: GgmlType::Q8_0, expected: 34, actual: 33 }) => {}
            other => panic!("{other:?}"),
        }
        match dequantize_row(GgmlType::Q4_K, &[0; 144], &mut dst) {
            Err(Error::NotBlockAligned { ty: GgmlType::Q4_K, n_elements: 32, block_size: 256 }) => {}
            other => panic!("{other:?}"),
        }
        match dequantize_row(GgmlType::I32, &[0; 128], &mut dst) {
            Err(Error::Unsupported(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_row_is_ok() {
        // Zero elements take zero bytes for every supported type.
        for ty in ALL_TYPES.into_iter().filter(|&t| dequantize_fn(t).is_some()) {
            dequantize_row(ty, &[], &mut []).unwrap();
        }
    }

    /// Hand-built blocks with known values, independent of the Python oracle.
    #[test]
    fn known_blocks() {
        // Q4_0: d = 1.0 (0x3c00), nibbles 0..15 -> -8..7 in the first half, 15 - j in the second.
        let mut b = vec![0x00, 0x3c];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0.0; 32];
        dequantize_row(GgmlType::Q4_0, &b, &mut y).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 - 8.0);
            assert_eq!(y[j + 16], 7.0 - j as f32);
        }

        // Q8_0: d = 0.5 (0x3800), q = -128..127 spread.
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|j: i32| (j * 8 - 128) as i8 as u8));
        dequantize_row(GgmlType::Q8_0, &b, &mut y).unwrap();
        for (j, &v) in y.iter().enumerate() {
            assert_eq!(v, (j as f32 * 8.0 - 128.0) * 0.5);
        }

        // IQ4_NL: d = 2.0 (0x4000), every nibble 0 -> -127 * 2, 8 -> 1 * 2.
        let mut b = vec![0x00, 0x40];
        b.extend([0x80u8; 16]);
        dequantize_row(GgmlType::IQ4_NL, &b, &mut y).unwrap();
        assert!(y[..16].iter().all(|&v| v == -254.0));
        assert!(y[16..].iter().all(|&v| v == 2.0));

        // IQ1_S: d = 1.0, qh = 0 -> scale 1, delta +0.125, grid row 0 is all -1.
        let mut b = vec![0x00, 0x3c];
        b.extend([0u8; 48]);
        let mut y = [0.0; 256];
        dequantize_row(GgmlType::IQ1_S, &b, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == -0.875));

        // BF16 and F16 of 1.0.
        let mut y = [0.0; 2];
        dequantize_row(GgmlType::BF16, &[0x80, 0x3f, 0x00, 0xc0], &mut y).unwrap();
        assert_eq!(y, [1.0, -2.0]);
        dequantize_row(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc0], &mut y).unwrap();
        assert_eq!(y, [1.0, -2.0]);
    }
}
