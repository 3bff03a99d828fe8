//! Quantizing f32 rows into GGML blocks: Q8_0, Q4_0, Q4_1, Q5_0 (one scale per 32 values, the
//! reference rules every GGUF reader expects) and Q4_K, Q6_K (256-value super-blocks with 6- and
//! 8-bit sub-block scales). Block layouts are GGML's; the K-quant scale search here is a min/max
//! start refined by one least-squares step, simpler than llama.cpp's iterative search (files are
//! valid and load anywhere; their error is a little higher).

use gguf::GgmlType;
use half::f16;

use crate::error::{Error, Result};

/// Round half away from zero, as C's `roundf` (what GGML's reference quantizers use).
fn round(x: f32) -> i32 {
    x.round() as i32
}

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// The value of largest magnitude, with its sign.
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn q8_0(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        *o = round(v * id).clamp(-127, 127) as i8 as u8;
    }
}

fn q4_0(x: &[f32], out: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    for j in 0..16 {
        out[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

fn q4_1(x: &[f32], out: &mut [u8]) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
    for j in 0..16 {
        out[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

fn q5_0(x: &[f32], out: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    let q = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
    let mut qh = 0u32;
    for j in 0..16 {
        let (a, b) = (q(x[j]), q(x[j + 16]));
        out[6 + j] = ((a & 15) | ((b & 15) << 4)) as u8;
        qh |= ((a >> 4) & 1) << j;
        qh |= ((b >> 4) & 1) << (j + 16);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Fits `x ≈ a·L + b` with `L ∈ 0..=nmax` integers and `b ≤ 0`: min/max start, then one
/// least-squares refit of `a`, `b` for the chosen `L`. Returns `(a, -b)` (scale, min ≥ 0).
fn fit_affine(x: &[f32], nmax: i32) -> (f32, f32) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max <= min {
        return (0.0, -min);
    }
    let mut a = (max - min) / nmax as f32;
    let mut b = min;
    let levels: Vec<f32> = x.iter().map(|&v| round((v - b) / a).clamp(0, nmax) as f32).collect();
    let n = x.len() as f32;
    let (sl, sll) = levels.iter().fold((0.0, 0.0), |(s, ss), &l| (s + l, ss + l * l));
    let (sx, slx) = levels.iter().zip(x).fold((0.0, 0.0), |(s, sl), (&l, &v)| (s + v, sl + l * v));
    let det = n * sll - sl * sl;
    if det > 0.0 {
        let a2 = (n * slx - sl * sx) / det;
        let b2 = (sx - a2 * sl) / n;
        if a2 > 0.0 && b2 <= 0.0 {
            a = a2;
            b = b2;
        }
    }
    (a, -b)
}

fn q4_k(x: &[f32], out: &mut [u8]) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = fit_affine(&x[32 * j..32 * j + 32], 15);
    }
    let max_scale = scales.iter().copied().fold(0.0, f32::max);
    let max_min = mins.iter().copied().fold(0.0, f32::max);
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut s = [0u8; 12];
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = round(inv_scale * scales[j]).clamp(0, 63) as u8;
        lm[j] = round(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0).to_f32();
    let dmin = f16::from_f32(max_min / 63.0).to_f32();
    put_f16(out, 0, max_scale / 63.0);
    put_f16(out, 2, max_min / 63.0);
    out[4..16].copy_from_slice(&s);
    // Levels against the scales as stored.
    let mut l = [0u8; 256];
    for j in 0..8 {
        let dj = d * f32::from(ls[j]);
        let mj = dmin * f32::from(lm[j]);
        for i in 0..32 {
            l[32 * j + i] = if dj > 0.0 { round((x[32 * j + i] + mj) / dj).clamp(0, 15) as u8 } else { 0 };
        }
    }
    for c in 0..4 {
        for i in 0..32 {
            out[16 + 32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

fn q6_k(x: &[f32], out: &mut [u8]) {
    // Symmetric 6-bit levels per 16 values, sub-block scales as i8 times one f16.
    let mut sub = [0.0f32; 16];
    for (j, s) in sub.iter_mut().enumerate() {
        *s = signed_absmax(&x[16 * j..16 * j + 16]) / -32.0;
    }
    let max = signed_absmax(&sub);
    let iscale = if max != 0.0 { -128.0 / max } else { 0.0 };
    let d = if iscale != 0.0 { 1.0 / iscale } else { 0.0 };
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = round(iscale * sub[j]).clamp(-128, 127) as i8;
    }
    let dd = f16::from_f32(d).to_f32();
    let mut l = [0u8; 256];
    for j in 0..16 {
        let dj = dd * f32::from(sc[j]);
        for i in 0..16 {
            let q = if dj != 0.0 { round(x[16 * j + i] / dj).clamp(-32, 31) } else { 0 };
            l[16 * j + i] = (q + 32) as u8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for half in 0..2 {
        let (ql, qh, l) = (&mut ql[64 * half..], &mut qh[32 * half..], &l[128 * half..]);
        for i in 0..32 {
            let (a, b, c, e) = (l[i], l[i + 32], l[i + 64], l[i + 96]);
            ql[i] = (a & 15) | ((c & 15) << 4);
            ql[i + 32] = (b & 15) | ((e & 15) << 4);
            qh[i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
    for (o, s) in rest[..16].iter_mut().zip(sc) {
        *o = s as u8;
    }
    put_f16(rest, 16, d);
}

/// Types `quantize_row` can produce.
pub const QUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Quantizes one row `x` into `out` (exactly `row_bytes(ty, x.len())` bytes).
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    let bs = ty.block_size();
    let n_bytes = ty.row_bytes(x.len() as u64).ok_or_else(|| {
        Error::Unsupported(format!("a row of {} values is not a whole number of {ty} blocks", x.len()))
    })? as usize;
    if out.len() != n_bytes {
        return Err(Error::Unsupported(format!("{ty} row needs {n_bytes} bytes, got {}", out.len())));
    }
    let ts = ty.type_size();
    let f: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            return Ok(());
        }
        GgmlType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
            return Ok(());
        }
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q6_K => q6_k,
        _ => return Err(Error::Unsupported(format!("quantization to {ty}"))),
    };
    for (xb, ob) in x.chunks_exact(bs).zip(out.chunks_exact_mut(ts)) {
        f(xb, ob);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequant::dequantize_row;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f32 / (1u64 << 53) as f32;
                // A bell-ish shape with occasional outliers, like real weights.
                let v = (u - 0.5) * 0.2;
                if i % 97 == 0 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// Relative RMS error of quantize → dequantize.
    fn rel_rmse(ty: GgmlType, x: &[f32]) -> f32 {
        let mut q = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
        quantize_row(ty, x, &mut q).unwrap();
        let mut y = vec![0.0; x.len()];
        dequantize_row(ty, &q, &mut y).unwrap();
        let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        let sig: f32 = x.iter().map(|a| a * a).sum();
        (err / sig).sqrt()
    }

    #[test]
    fn round_trip_error_is_what_each_format_allows() {
        // Bounds from the bits per value (8, ~5, 4.5, 4.5, 4.5, ~6.6) with room for the outliers
        // of the data; a packing or scale bug gives errors near 1.
        for (ty, bound) in [
            (GgmlType::Q8_0, 0.01),
            (GgmlType::Q5_0, 0.08),
            (GgmlType::Q4_0, 0.2),
            (GgmlType::Q4_1, 0.2),
            (GgmlType::Q4_K, 0.2),
            (GgmlType::Q6_K, 0.04),
            (GgmlType::F16, 0.001),
        ] {
            for seed in 1..6 {
                let e = rel_rmse(ty, &data(1024, seed));
                assert!(e < bound, "{ty}: relative RMSE {e} ≥ {bound}");
            }
        }
    }

    #[test]
    fn exact_grids_survive_and_zeros_stay_zero() {
        // Values already on a Q8_0 grid come back exactly.
        // d = 1/128 is exact in f16; each block holds ±127·d, so d is found exactly.
        let x: Vec<f32> =
            (0..64).map(|i| if i % 32 == 0 { 127.0 / 128.0 } else { (i as f32 - 40.0) / 128.0 }).collect();
        let mut q = vec![0u8; 68];
        quantize_row(GgmlType::Q8_0, &x, &mut q).unwrap();
        let mut y = vec![0.0; 64];
        dequantize_row(GgmlType::Q8_0, &q, &mut y).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert_eq!(a, b);
        }
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0] {
            let z = vec![0.0f32; 256];
            let mut q = vec![0u8; ty.row_bytes(256).unwrap() as usize];
            quantize_row(ty, &z, &mut q).unwrap();
            let mut y = vec![1.0; 256];
            dequantize_row(ty, &q, &mut y).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{ty}");
        }
    }

    #[test]
    fn ragged_rows_and_unsupported_types_are_errors() {
        let x = vec![0.0f32; 100];
        assert!(quantize_row(GgmlType::Q8_0, &x, &mut [0u8; 200]).is_err());
        assert!(quantize_row(GgmlType::IQ1_S, &[0.0; 256], &mut [0u8; 50]).is_err());
    }
}
