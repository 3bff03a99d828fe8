//! The SIMD kernels (`quant::simd`) against the scalar references (`quant::dot`,
//! `quant::activation`), bit for bit: every dot product's `to_bits()` and every quantized block
//! field must be equal, for every instruction set this CPU supports. Instruction sets the CPU
//! lacks are reported as skipped on stderr.
//!
//! Inputs: random blocks over many seeds and ragged block counts (so four-block groups and their
//! remainders both run), edge-case blocks (extreme bytes, activations at ±127, zero scales), and
//! rows of the real test models when their files are present.

use std::path::PathBuf;

use compute::ops;
use compute::quant::activation::{
    interleave_q8_0x8, interleave_q8_1x8, interleave_q8kx8, quantize_q8_0, quantize_q8_1, quantize_q8_k, BlockQ8K,
    BlockQ8_0, BlockQ8_1,
};
use compute::quant::dot;
use compute::quant::simd::{Isa, Kernels};
use compute::quant::synthetic::f16_scale_offsets;
use gguf::{GgmlType, GgufFile};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every type with a dot product kernel.
const TYPES: [GgmlType; 11] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ1_S,
];

/// The SIMD paths this CPU runs; the others are reported as skipped.
fn simd_paths() -> Vec<Kernels> {
    for isa in Isa::ALL {
        if !isa.is_supported() {
            eprintln!("SKIPPED: this CPU does not support {}; its kernels are not tested here", isa.name());
        }
    }
    Kernels::supported().into_iter().filter(|k| k.isa() != Isa::Scalar).collect()
}

/// Activations quantized for one weight type.
enum Acts {
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    Q8K(Vec<BlockQ8K>),
}

fn quantize_for(ty: GgmlType, x: &[f32]) -> Acts {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => {
            let mut v = Vec::new();
            quantize_q8_0(x, &mut v);
            Acts::Q8_0(v)
        }
        Q4_1 | Q5_1 => {
            let mut v = Vec::new();
            quantize_q8_1(x, &mut v);
            Acts::Q8_1(v)
        }
        _ => {
            let mut v = Vec::new();
            quantize_q8_k(x, &mut v);
            Acts::Q8K(v)
        }
    }
}

/// The scalar reference dot product.
fn reference(ty: GgmlType, w: &[u8], a: &Acts, halves: bool) -> f32 {
    use GgmlType::*;
    match (ty, a) {
        (Q4_0, Acts::Q8_0(a)) => dot::vec_dot_q4_0_q8_0(w, a),
        (Q5_0, Acts::Q8_0(a)) => dot::vec_dot_q5_0_q8_0(w, a),
        (Q8_0, Acts::Q8_0(a)) => dot::vec_dot_q8_0_q8_0(w, a),
        (IQ4_NL, Acts::Q8_0(a)) => dot::vec_dot_iq4_nl_q8_0(w, a),
        (Q4_1, Acts::Q8_1(a)) => dot::vec_dot_q4_1_q8_1(w, a),
        (Q5_1, Acts::Q8_1(a)) => dot::vec_dot_q5_1_q8_1(w, a),
        (Q2_K, Acts::Q8K(a)) => dot::vec_dot_q2_k_q8_k(w, a, halves),
        (Q4_K, Acts::Q8K(a)) => dot::vec_dot_q4_k_q8_k(w, a),
        (Q5_K, Acts::Q8K(a)) => dot::vec_dot_q5_k_q8_k(w, a),
        (Q6_K, Acts::Q8K(a)) => dot::vec_dot_q6_k_q8_k(w, a),
        (IQ1_S, Acts::Q8K(a)) => dot::vec_dot_iq1_s_q8_k(w, a),
        _ => unreachable!("{ty} with the wrong activations"),
    }
}

/// The same dot product through the dispatcher.
fn simd(k: Kernels, ty: GgmlType, w: &[u8], a: &Acts, halves: bool) -> f32 {
    use GgmlType::*;
    match (ty, a) {
        (Q4_0, Acts::Q8_0(a)) => k.vec_dot_q4_0_q8_0(w, a),
        (Q5_0, Acts::Q8_0(a)) => k.vec_dot_q5_0_q8_0(w, a),
        (Q8_0, Acts::Q8_0(a)) => k.vec_dot_q8_0_q8_0(w, a),
        (IQ4_NL, Acts::Q8_0(a)) => k.vec_dot_iq4_nl_q8_0(w, a),
        (Q4_1, Acts::Q8_1(a)) => k.vec_dot_q4_1_q8_1(w, a),
        (Q5_1, Acts::Q8_1(a)) => k.vec_dot_q5_1_q8_1(w, a),
        (Q2_K, Acts::Q8K(a)) => k.vec_dot_q2_k_q8_k(w, a, halves),
        (Q4_K, Acts::Q8K(a)) => k.vec_dot_q4_k_q8_k(w, a),
        (Q5_K, Acts::Q8K(a)) => k.vec_dot_q5_k_q8_k(w, a),
        (Q6_K, Acts::Q8K(a)) => k.vec_dot_q6_k_q8_k(w, a),
        (IQ1_S, Acts::Q8K(a)) => k.vec_dot_iq1_s_q8_k(w, a),
        _ => unreachable!("{ty} with the wrong activations"),
    }
}

/// A random finite f16 of either sign over many binades (sometimes zero), as bytes.
fn random_scale(rng: &mut StdRng) -> [u8; 2] {
    let v = if rng.gen_ratio(1, 50) { 0.0 } else { rng.gen_range(-14.0f32..4.0).exp2() };
    let v = if rng.gen() { -v } else { v };
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// `n_blocks` random blocks of `ty` with finite scales (a NaN scale would make the comparison
/// depend on NaN payloads, which no model holds).
fn random_blocks(rng: &mut StdRng, ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    let mut w: Vec<u8> = (0..n_blocks * ty.type_size()).map(|_| rng.gen()).collect();
    for blk in w.chunks_exact_mut(ty.type_size()) {
        for &o in f16_scale_offsets(ty) {
            blk[o..o + 2].copy_from_slice(&random_scale(rng));
        }
    }
    w
}

/// Random activations: mostly smooth values, with outliers, exact zeros and repeated values
/// mixed in so that amax ties, rounding ties and all-zero blocks occur.
fn random_acts(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = rng.gen_range(-10.0f32..6.0).exp2();
    let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0) * scale).collect();
    match rng.gen_range(0..6) {
        0 => x.iter_mut().step_by(7).for_each(|v| *v = 0.0),
        1 => x.iter_mut().step_by(13).for_each(|v| *v *= 40.0),
        // Halves of 127ths: after scaling by 127 / amax these land exactly on rounding ties.
        2 => x.iter_mut().for_each(|v| *v = (rng.gen_range(-254i32..=254) as f32) / 2.0),
        3 => {
            let m = x[0].abs().max(1.0);
            x.iter_mut().step_by(5).enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { m } else { -m });
        }
        4 if n >= 32 => x[..32].iter_mut().for_each(|v| *v = 0.0),
        _ => {}
    }
    x
}

fn check_dot(k: Kernels, ty: GgmlType, w: &[u8], a: &Acts, what: &str) {
    for halves in [false, true] {
        if halves && ty != GgmlType::Q2_K {
            continue;
        }
        let want = reference(ty, w, a, halves);
        let got = simd(k, ty, w, a, halves);
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{} {ty} (halves {halves}) {what}: {got:e} vs scalar {want:e}",
            k.isa().name()
        );
    }
}

#[test]
fn dots_match_scalar_on_random_blocks() {
    // Goal: every SIMD dot equals the scalar one bit for bit; method: 40 seeds × 1..=13 blocks,
    // and 74 blocks (an 18944-wide row: the long-row path with weight prefetches).
    for k in simd_paths() {
        for ty in TYPES {
            for seed in 0..40u64 {
                let mut rng = StdRng::seed_from_u64(seed * 1000 + ty.id() as u64);
                for n_blocks in (1..=13).chain([74]) {
                    let w = random_blocks(&mut rng, ty, n_blocks);
                    let x = random_acts(&mut rng, n_blocks * ty.block_size());
                    check_dot(k, ty, &w, &quantize_for(ty, &x), &format!("seed {seed}, {n_blocks} blocks"));
                }
            }
        }
    }
}

#[test]
fn dots_match_scalar_on_edge_blocks() {
    // Goal: saturation-prone inputs (all-ones bytes, 0x80 bytes, activations at ±127) stay exact.
    let mut rng = StdRng::seed_from_u64(7);
    for k in simd_paths() {
        for ty in TYPES {
            for fill in [0x00u8, 0xFF, 0x80, 0x7F, 0x88, 0x77] {
                for act in [127.0f32, -127.0, 1.0] {
                    let n_blocks = 9;
                    let mut w = vec![fill; n_blocks * ty.type_size()];
                    for blk in w.chunks_exact_mut(ty.type_size()) {
                        for &o in f16_scale_offsets(ty) {
                            blk[o..o + 2].copy_from_slice(&random_scale(&mut rng));
                        }
                    }
                    let n = n_blocks * ty.block_size();
                    let alt: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { act } else { -act }).collect();
                    let flat = vec![act; n];
                    for x in [flat, alt] {
                        check_dot(k, ty, &w, &quantize_for(ty, &x), &format!("fill {fill:#x}, act {act}"));
                    }
                }
            }
        }
    }
}

fn check_quantizers(k: Kernels, x: &[f32], what: &str) {
    let name = k.isa().name();
    let n32 = x.len() / 32 * 32;
    let (mut want, mut got) = (Vec::new(), Vec::new());
    quantize_q8_0(&x[..n32], &mut want);
    k.quantize_q8_0(&x[..n32], &mut got);
    assert_eq!(want.len(), got.len());
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert_eq!((a.d.to_bits(), a.qs), (b.d.to_bits(), b.qs), "{name} Q8_0 block {i} {what}");
    }
    let (mut want, mut got) = (Vec::new(), Vec::new());
    quantize_q8_1(&x[..n32], &mut want);
    k.quantize_q8_1(&x[..n32], &mut got);
    assert_eq!(want.len(), got.len());
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert_eq!(
            (a.d.to_bits(), a.s.to_bits(), a.qs),
            (b.d.to_bits(), b.s.to_bits(), b.qs),
            "{name} Q8_1 block {i} {what}"
        );
    }
    let n256 = x.len() / 256 * 256;
    let (mut want, mut got) = (Vec::new(), Vec::new());
    quantize_q8_k(&x[..n256], &mut want);
    k.quantize_q8_k(&x[..n256], &mut got);
    assert_eq!(want.len(), got.len());
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert_eq!((a.d.to_bits(), a.qs, a.bsums), (b.d.to_bits(), b.qs, b.bsums), "{name} Q8_K block {i} {what}");
    }
}

#[test]
fn quantizers_match_scalar() {
    // Goal: Q8_0/Q8_1/Q8_K blocks are field-for-field identical; method: random rows, rows with
    // rounding ties, equal-magnitude maxima of both signs, zeros, NaN and infinities.
    for k in simd_paths() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let n = 256 * rng.gen_range(1..4) + 32 * rng.gen_range(0..8);
            check_quantizers(k, &random_acts(&mut rng, n), &format!("seed {seed}"));
        }
        let mut special = vec![0.0f32; 512];
        special[3] = -2.5;
        special[9] = 2.5;
        special[40] = f32::NAN;
        special[41] = 1.0;
        special[300] = f32::INFINITY;
        special[301] = 3.0;
        special[302] = f32::NEG_INFINITY;
        special[400] = -0.0;
        check_quantizers(k, &special, "special values");
        let nan_block = vec![f32::NAN; 256];
        check_quantizers(k, &nan_block, "all NaN");
    }
}

fn model_paths() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    vec![root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"), root.join("../shared/models/smollm2-135m-iq1_s.gguf")]
}

#[test]
fn dots_match_scalar_on_model_rows() {
    // Goal: rows of the real test models (every matrix, first/middle/last rows) give the same
    // bits on every path, single-row and multi-row kernels alike. Missing model files are reported, not failed: other tests require them.
    let paths = simd_paths();
    let mut rng = StdRng::seed_from_u64(99);
    for p in model_paths() {
        if !p.exists() {
            eprintln!("SKIPPED: {} is missing (scripts/fetch-model.sh)", p.display());
            continue;
        }
        let file = GgufFile::open(&p).expect("model opens");
        let mut n_rows_checked = 0;
        for info in file.tensors() {
            let (ty, dims) = (info.ggml_type, &info.dims);
            if dims.len() != 2 || !TYPES.contains(&ty) {
                continue;
            }
            let data = file.tensor_data(info).expect("tensor bytes");
            let (n_in, n_out) = (dims[0] as usize, dims[1] as usize);
            let rb = ty.row_bytes(n_in as u64).expect("whole blocks") as usize;
            let x = random_acts(&mut rng, n_in);
            let a = quantize_for(ty, &x);
            // Nine activation rows for the multi-row kernels: a group of eight (or two of four) and one more.
            let x9: Vec<f32> = (0..9).flat_map(|_| random_acts(&mut rng, n_in)).collect();
            let a9 = quantize_rows(ty, &x9, 9);
            for r in [0, n_out / 2, n_out - 1] {
                let w = &data[r * rb..(r + 1) * rb];
                for &k in &paths {
                    check_dot(k, ty, w, &a, &format!("{} row {r}", info.name));
                }
                if ROWS_TYPES.contains(&ty) {
                    for &k in paths.iter().chain([&Kernels::scalar()]) {
                        let mut got = [f32::NAN; 9];
                        simd_rows(k, ty, w, &a9, &mut got);
                        for (t, g) in got.iter().enumerate() {
                            let want = reference(ty, w, &acts_row(&a9, 9, t), false);
                            assert_eq!(
                                g.to_bits(),
                                want.to_bits(),
                                "{} {} row {r} × act row {t}",
                                k.isa().name(),
                                info.name
                            );
                        }
                    }
                }
                n_rows_checked += 1;
            }
        }
        eprintln!("{}: {n_rows_checked} rows checked", p.display());
        assert!(n_rows_checked > 0, "no matrices of a kernel type in {}", p.display());
    }
}

/// Every type with a multi-row kernel (`Kernels::*_rows`).
const ROWS_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::IQ4_NL,
    GgmlType::IQ1_S,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The multi-row kernel of `ty` over the activation rows in `a` (back to back), one output each.
fn simd_rows(k: Kernels, ty: GgmlType, w: &[u8], a: &Acts, out: &mut [f32]) {
    use GgmlType::*;
    match (ty, a) {
        (Q4_1, Acts::Q8_1(a)) => k.vec_dot_q4_1_q8_1_rows(w, a, out),
        (Q8_0, Acts::Q8_0(a)) => k.vec_dot_q8_0_q8_0_rows(w, a, out),
        (Q4_0, Acts::Q8_0(a)) => k.vec_dot_q4_0_q8_0_rows(w, a, out),
        (IQ4_NL, Acts::Q8_0(a)) => k.vec_dot_iq4_nl_q8_0_rows(w, a, out),
        (IQ1_S, Acts::Q8K(a)) => k.vec_dot_iq1_s_q8_k_rows(w, a, out),
        (Q4_K, Acts::Q8K(a)) => k.vec_dot_q4_k_q8_k_rows(w, a, out),
        (Q5_K, Acts::Q8K(a)) => k.vec_dot_q5_k_q8_k_rows(w, a, out),
        (Q6_K, Acts::Q8K(a)) => k.vec_dot_q6_k_q8_k_rows(w, a, out),
        _ => panic!("{ty} has no multi-row kernel"),
    }
}

/// Row `t` of the `n_rows` activation rows in `a`.
fn acts_row(a: &Acts, n_rows: usize, t: usize) -> Acts {
    fn row<B: Clone>(v: &[B], n_rows: usize, t: usize) -> Vec<B> {
        let n = v.len() / n_rows;
        v[t * n..(t + 1) * n].to_vec()
    }
    match a {
        Acts::Q8_0(v) => Acts::Q8_0(row(v, n_rows, t)),
        Acts::Q8_1(v) => Acts::Q8_1(row(v, n_rows, t)),
        Acts::Q8K(v) => Acts::Q8K(row(v, n_rows, t)),
    }
}

/// Quantizes each of `n_rows` rows of `x` separately, as the matmul does, into one buffer.
fn quantize_rows(ty: GgmlType, x: &[f32], n_rows: usize) -> Acts {
    let n = x.len() / n_rows;
    let rows: Vec<Acts> = x.chunks_exact(n).map(|r| quantize_for(ty, r)).collect();
    match &rows[0] {
        Acts::Q8_0(_) => {
            Acts::Q8_0(rows.iter().flat_map(|r| if let Acts::Q8_0(v) = r { v.clone() } else { vec![] }).collect())
        }
        Acts::Q8_1(_) => {
            Acts::Q8_1(rows.iter().flat_map(|r| if let Acts::Q8_1(v) = r { v.clone() } else { vec![] }).collect())
        }
        Acts::Q8K(_) => {
            Acts::Q8K(rows.iter().flat_map(|r| if let Acts::Q8K(v) = r { v.clone() } else { vec![] }).collect())
        }
    }
}

#[test]
fn multi_row_dots_match_single_row_dots() {
    // Goal: each multi-row kernel gives, for every activation row, the bits of the single-row
    // scalar reference, on every path this CPU runs (scalar included); method: 1..=9, 12, 13 and 17
    // rows (whole groups of four and eight, and every remainder) × ragged block counts.
    let mut paths = simd_paths();
    paths.insert(0, Kernels::scalar());
    for ty in ROWS_TYPES {
        let mut rng = StdRng::seed_from_u64(4242 + ty.id() as u64);
        for n_rows in (1..=9).chain([12, 13, 17]) {
            for n_blocks in [1, 2, 3, 4, 5, 7, 8, 13, 18] {
                let w = random_blocks(&mut rng, ty, n_blocks);
                let x = random_acts(&mut rng, n_rows * n_blocks * ty.block_size());
                let a = quantize_rows(ty, &x, n_rows);
                let want: Vec<f32> = (0..n_rows).map(|t| reference(ty, &w, &acts_row(&a, n_rows, t), false)).collect();
                for &k in &paths {
                    let mut got = vec![f32::NAN; n_rows];
                    simd_rows(k, ty, &w, &a, &mut got);
                    for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{} {ty} row {t} of {n_rows}, {n_blocks} blocks: {g:e} vs scalar {w:e}",
                            k.isa().name()
                        );
                    }
                }
            }
        }
    }
}

/// The types with a second, tiled-GEMM order (llama.cpp's `ggml-cpu/tiled`, batches of 8+ rows).
const TILED_TYPES: [GgmlType; 3] = [GgmlType::IQ1_S, GgmlType::Q4_K, GgmlType::Q6_K];

/// The scalar tiled-order reference of `ty`.
fn tiled_reference(ty: GgmlType, w: &[u8], a: &[BlockQ8K]) -> f32 {
    match ty {
        GgmlType::IQ1_S => dot::vec_dot_iq1_s_q8_k_tiled(w, a),
        GgmlType::Q4_K => dot::vec_dot_q4_k_q8_k_tiled(w, a),
        GgmlType::Q6_K => dot::vec_dot_q6_k_q8_k_tiled(w, a),
        _ => panic!("{ty} has no tiled order"),
    }
}

#[test]
fn tiled_order_rows_match_scalar() {
    // Goal: the multi-row (and Q4_K/Q6_K single-row) kernels in llama.cpp's tiled-GEMM order give
    // every activation row the bits of its scalar reference, on every path (scalar included), and
    // that order is really another one (else the test could not tell them apart); method:
    // 1..=9, 12, 13, 17 rows × ragged block counts, random blocks.
    let mut paths = simd_paths();
    paths.insert(0, Kernels::scalar());
    for ty in TILED_TYPES {
        let mut rng = StdRng::seed_from_u64(8128 + ty.id() as u64);
        let mut orders_differ = 0;
        for n_rows in (1..=9).chain([12, 13, 17]) {
            for n_blocks in [1, 2, 3, 5, 6, 8, 13] {
                let w = random_blocks(&mut rng, ty, n_blocks);
                let x = random_acts(&mut rng, n_rows * n_blocks * 256);
                let Acts::Q8K(a) = quantize_rows(ty, &x, n_rows) else { unreachable!("{ty} takes Q8_K") };
                let want: Vec<f32> = a.chunks_exact(n_blocks).map(|row| tiled_reference(ty, &w, row)).collect();
                for (row, t) in a.chunks_exact(n_blocks).zip(&want) {
                    let other = reference(ty, &w, &Acts::Q8K(row.to_vec()), false);
                    orders_differ += usize::from(other.to_bits() != t.to_bits());
                }
                for &k in &paths {
                    let mut got = vec![f32::NAN; n_rows];
                    match ty {
                        GgmlType::IQ1_S => k.vec_dot_iq1_s_q8_k_tiled_rows(&w, &a, &mut got),
                        GgmlType::Q4_K => k.vec_dot_q4_k_q8_k_tiled_rows(&w, &a, &mut got),
                        _ => k.vec_dot_q6_k_q8_k_tiled_rows(&w, &a, &mut got),
                    }
                    for (t, row) in a.chunks_exact(n_blocks).enumerate() {
                        match ty {
                            GgmlType::Q4_K => got.push(k.vec_dot_q4_k_q8_k_tiled(&w, row)),
                            GgmlType::Q6_K => got.push(k.vec_dot_q6_k_q8_k_tiled(&w, row)),
                            _ => got.push(want[t]),
                        }
                    }
                    for (j, (g, w)) in got.iter().zip(want.iter().cycle()).enumerate() {
                        let kind = if j < n_rows { "multi-row" } else { "single-row" };
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{} {ty} {kind} row {} of {n_rows}, {n_blocks} blocks: {g:e} vs scalar {w:e}",
                            k.isa().name(),
                            j % n_rows
                        );
                    }
                }
            }
        }
        assert!(orders_differ > 0, "{ty}: the tiled order never differed from the vector-dot order");
    }
}

/// `got[8i + r]` (weight row `i` × interleaved activation row `r`) equals `want` bit for bit.
fn assert_x8_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: output count");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: weight row {} × act row {}: {g:e} vs {w:e}", j / 8, j % 8);
    }
}

#[test]
fn interleaved_eight_row_dots_match_single_row_dots() {
    // Goal: the Q4_0/IQ4_NL/Q4_1 kernels over groups of eight interleaved activation rows
    // give each (weight row, activation row) the bits of the single-row scalar reference, on every
    // path (scalar included); method: 1..=17 weight rows (whole groups of eight weight rows and
    // their remainders) × 1..=3 groups × ragged block counts, slabs of 64 blocks and their
    // remainders among them, × 5 seeds, with activations at ±127 in some (the largest unsigned
    // products).
    let mut paths = simd_paths();
    paths.insert(0, Kernels::scalar());
    for ty in [GgmlType::Q4_0, GgmlType::IQ4_NL, GgmlType::Q4_1] {
        let mut rng = StdRng::seed_from_u64(888 + ty.id() as u64);
        for seed in 0..5 {
            for (n_w, groups, n_blocks) in [
                (1, 1, 1),
                (2, 1, 2),
                (3, 2, 3),
                (4, 1, 5),
                (5, 3, 18),
                (8, 2, 7),
                (9, 1, 64),
                (17, 2, 70),
                (6, 1, 130),
            ] {
                let w = random_blocks(&mut rng, ty, n_w * n_blocks);
                let mut x = random_acts(&mut rng, 8 * groups * n_blocks * 32);
                if seed % 3 == 0 {
                    // Rows saturated at ±amax: every quantized value ±127.
                    x.iter_mut().for_each(|v| *v = if *v < 0.0 { -3.0 } else { 3.0 });
                }
                let a = quantize_rows(ty, &x, 8 * groups);
                let rb = w.len() / n_w;
                let want: Vec<f32> = w
                    .chunks_exact(rb)
                    .flat_map(|wr| (0..8 * groups).map(|t| reference(ty, wr, &acts_row(&a, 8 * groups, t), false)))
                    .collect();
                for &k in &paths {
                    let mut got = vec![f32::NAN; 8 * groups * n_w];
                    match &a {
                        Acts::Q8_0(a) => {
                            let mut a8 = Vec::new();
                            for g in a.chunks_exact(8 * n_blocks) {
                                interleave_q8_0x8(
                                    std::array::from_fn(|r| &g[r * n_blocks..(r + 1) * n_blocks]),
                                    &mut a8,
                                );
                            }
                            if ty == GgmlType::Q4_0 {
                                k.vec_dot_q4_0_q8_0x8(&w, &a8, groups, &mut got);
                            } else {
                                k.vec_dot_iq4_nl_q8_0x8(&w, &a8, groups, &mut got);
                            }
                        }
                        Acts::Q8_1(a) => {
                            let mut a8 = Vec::new();
                            for g in a.chunks_exact(8 * n_blocks) {
                                interleave_q8_1x8(
                                    std::array::from_fn(|r| &g[r * n_blocks..(r + 1) * n_blocks]),
                                    &mut a8,
                                );
                            }
                            k.vec_dot_q4_1_q8_1x8(&w, &a8, groups, &mut got);
                        }
                        Acts::Q8K(_) => unreachable!("{ty} takes 32-element activation blocks"),
                    }
                    assert_x8_bits(
                        &got,
                        &want,
                        &format!("{} {ty}, {n_blocks} blocks, {groups} groups", k.isa().name()),
                    );
                }
            }
        }
    }
}

#[test]
fn interleaved_groups_match_tiled_order() {
    // Goal: the IQ1_S/Q4_K/Q6_K kernels over groups of eight interleaved Q8_K activation rows give each
    // (weight row, activation row) the bits of the single-row tiled-order scalar reference, on
    // every path (scalar included); method: 1..=17 weight rows (whole groups of eight weight rows
    // and every remainder) × 1..=3 activation groups × ragged block counts, the last group padded
    // with zero rows as the matmul pads it, and rows saturated at ±127 in some seeds.
    let mut paths = simd_paths();
    paths.insert(0, Kernels::scalar());
    for ty in TILED_TYPES {
        let mut rng = StdRng::seed_from_u64(5151 + ty.id() as u64);
        for seed in 0..4 {
            for (n_w, n_rows, n_blocks) in [(1, 8, 1), (3, 13, 2), (8, 16, 3), (9, 5, 1), (17, 24, 2), (16, 8, 5)] {
                let w = random_blocks(&mut rng, ty, n_w * n_blocks);
                let mut x = random_acts(&mut rng, n_rows * n_blocks * 256);
                if seed == 3 {
                    x.iter_mut().for_each(|v| *v = if *v < 0.0 { -3.0 } else { 3.0 });
                }
                let Acts::Q8K(a) = quantize_rows(ty, &x, n_rows) else { unreachable!("{ty} takes Q8_K") };
                let zeros = vec![BlockQ8K::default(); n_blocks];
                let mut a8 = Vec::new();
                for g in a.chunks(8 * n_blocks) {
                    let row = |r: usize| g.get(r * n_blocks..(r + 1) * n_blocks).unwrap_or(&zeros);
                    interleave_q8kx8(std::array::from_fn(row), &mut a8);
                }
                let groups = n_rows.div_ceil(8);
                let rb = w.len() / n_w;
                for &k in &paths {
                    let mut got = vec![f32::NAN; n_w * groups * 8];
                    match ty {
                        GgmlType::Q4_K => k.vec_dot_q4_k_q8_k_tiled_x8(&w, &a8, groups, &mut got),
                        GgmlType::Q6_K => k.vec_dot_q6_k_q8_k_tiled_x8(&w, &a8, groups, &mut got),
                        _ => k.vec_dot_iq1_s_q8_k_tiled_x8(&w, &a8, groups, &mut got),
                    }
                    for (i, wr) in w.chunks_exact(rb).enumerate() {
                        for t in 0..n_rows {
                            let want = tiled_reference(ty, wr, &a[t * n_blocks..(t + 1) * n_blocks]);
                            let g = got[i * groups * 8 + t];
                            assert_eq!(
                                g.to_bits(),
                                want.to_bits(),
                                "{} {ty}: weight row {i} of {n_w} × act row {t} of {n_rows}, {n_blocks} blocks: {g:e} vs {want:e}",
                                k.isa().name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn four_weight_row_dots_match_single_row_dots() {
    // Goal: the four-weight-row decode kernels give each row the bits of the single-row scalar
    // reference, on every path this CPU runs (scalar included); method: 30 seeds × ragged block
    // counts, four different weight rows against one activation row.
    let mut paths = simd_paths();
    paths.insert(0, Kernels::scalar());
    for ty in [GgmlType::Q4_0, GgmlType::IQ4_NL] {
        let mut rng = StdRng::seed_from_u64(777 + ty.id() as u64);
        for _ in 0..30 {
            for n_blocks in [1, 2, 3, 4, 5, 7, 18] {
                let w = random_blocks(&mut rng, ty, 4 * n_blocks);
                let a = quantize_for(ty, &random_acts(&mut rng, n_blocks * ty.block_size()));
                let Acts::Q8_0(a8) = &a else { unreachable!("{ty} takes Q8_0 activations") };
                let rb = w.len() / 4;
                let want: Vec<f32> = (0..4).map(|r| reference(ty, &w[r * rb..(r + 1) * rb], &a, false)).collect();
                for &k in &paths {
                    let got = if ty == GgmlType::Q4_0 {
                        k.vec_dot_q4_0_q8_0_x4(&w, a8)
                    } else {
                        k.vec_dot_iq4_nl_q8_0_x4(&w, a8)
                    };
                    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), w.to_bits(), "{} {ty} row {r}, {n_blocks} blocks", k.isa().name());
                    }
                }
            }
        }
    }
}

/// Equal bits, or both NaN (NaN payloads are not part of the contract).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn random_f16s(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f16> {
    (0..n).map(|_| f16::from_f32(rng.gen_range(-1.0f32..1.0) * scale)).collect()
}

#[test]
fn attention_kernels_match_scalar() {
    // Goal: the f16 dot product, the f16 accumulator updates and the tiled variant's f32 value
    // accumulation of attention are bit-identical;
    // method: random vectors of every length up to 300 (whole 64-groups and tails).
    for k in simd_paths() {
        let name = k.isa().name();
        let mut rng = StdRng::seed_from_u64(5);
        for n in 0..300 {
            for _ in 0..4 {
                let scale = rng.gen_range(-6.0f32..8.0).exp2();
                let keys = random_f16s(&mut rng, n, scale);
                let q: Vec<f32> = random_f16s(&mut rng, n, 4.0).iter().map(|v| v.to_f32()).collect();
                let (want, got) = (ops::dot_f16_f32(&keys, &q), k.dot_f16_f32(&keys, &q));
                assert!(same(got, want), "{name} dot_f16_f32 n={n}: {got:e} vs scalar {want:e}");

                let v = random_f16s(&mut rng, n, scale);
                let acc0 = random_f16s(&mut rng, n, 2.0);
                let s = rng.gen_range(0.0f32..1.0);
                let (mut want, mut got) = (acc0.clone(), acc0.clone());
                ops::f16_axpy_ref(&mut want, &v, s);
                k.f16_axpy(&mut got, &v, s);
                assert!(want.iter().zip(&got).all(|(a, b)| same(a.to_f32(), b.to_f32())), "{name} f16_axpy n={n}");
                let acc32: Vec<f32> = random_f16s(&mut rng, n, 2.0).iter().map(|v| v.to_f32() * 1.3).collect();
                let (mut want32, mut got32) = (acc32.clone(), acc32);
                ops::f32_axpy_f16_ref(&mut want32, &v, s);
                k.f32_axpy_f16(&mut got32, &v, s);
                assert!(want32.iter().zip(&got32).all(|(&a, &b)| same(a, b)), "{name} f32_axpy_f16 n={n}");
                ops::f16_scale_ref(&mut want, s);
                k.f16_scale(&mut got, s);
                assert!(want.iter().zip(&got).all(|(a, b)| same(a.to_f32(), b.to_f32())), "{name} f16_scale n={n}");
            }
        }
    }
}

#[test]
fn swiglu_matches_scalar() {
    // Goal: SwiGLU with ggml's vector exponential is bit-identical, including overflow,
    // underflow to subnormals and zero, and the libm tail; method: random and extreme rows.
    for k in simd_paths() {
        let name = k.isa().name();
        let mut rng = StdRng::seed_from_u64(11);
        for n in 0..200 {
            let scale = rng.gen_range(-4.0f32..8.0).exp2();
            let mut gate: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0) * scale).collect();
            let up: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            if n > 20 {
                gate[..12].copy_from_slice(&[
                    0.0, -0.0, 88.0, -88.0, 103.0, -103.0, 130.0, -130.0, 200.0, -200.0, 1e-30, -87.3,
                ]);
            }
            let mut want = gate.clone();
            ops::swiglu_ref(&mut want, &up);
            k.swiglu(&mut gate, &up);
            for (i, (a, b)) in want.iter().zip(&gate).enumerate() {
                assert!(same(*b, *a), "{name} swiglu n={n} [{i}]: {b:e} vs scalar {a:e}");
            }
        }
        // Every exponent the polynomial can see, around the range-reduction boundaries.
        let mut gate: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.0625 + 0.01).collect();
        let up = vec![1.0f32; gate.len()];
        let mut want = gate.clone();
        ops::swiglu_ref(&mut want, &up);
        k.swiglu(&mut gate, &up);
        for (a, b) in want.iter().zip(&gate) {
            assert!(same(*b, *a), "{name} swiglu sweep: {b:e} vs scalar {a:e}");
        }
    }
}

#[test]
fn kernel_names_round_trip() {
    // Goal: PRIMA_KERNEL names parse back to their instruction set; scalar is always available.
    for isa in Isa::ALL {
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
    }
    assert_eq!(Isa::from_name("AVX2"), Some(Isa::Avx2));
    assert_eq!(Isa::from_name("sse"), None);
    assert!(Kernels::new(Isa::Scalar).is_some());
    assert!(Kernels::best().isa().is_supported());
}
