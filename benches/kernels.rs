//! Quantized matrix × vector (decode) and matrix × matrix (prefill) throughput, one group per
//! weight type, at the shapes of real models: SmolLM2's 576×1536 and Llama-3-8B's 4096×14336
//! (gate/up), 14336×4096 (down) and 4096×128256 (output head). Throughput is reported in bytes
//! of weights read per second.
//!
//!     cargo bench --bench kernels                 # everything
//!     cargo bench --bench kernels -- 'Q4_K/matvec' # one group and mode
//!
//! Under `cargo test` (no `--bench`) each benchmark runs once on the smallest shape only.

use compute::matmul::{matmul, QMatrix, QuantizedActs};
use compute::quant::synthetic::random_matrix;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gguf::GgmlType;

const TYPES: &[GgmlType] = &[
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::IQ1_S,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::IQ4_NL,
    GgmlType::Q4_0,
];

/// (n_in, n_out, label)
const SHAPES: &[(usize, usize, &str)] =
    &[(576, 1536, "576x1536"), (4096, 14336, "4096x14336"), (14336, 4096, "14336x4096"), (4096, 128256, "4096x128256")];

/// Activation rows of the matrix × matrix case (a prefill chunk).
const BATCH: usize = 32;

fn bench(c: &mut Criterion) {
    let full = std::env::args().any(|a| a == "--bench");
    for &t in TYPES {
        // 576-wide rows are not whole 256-element super-blocks (llama.cpp stores such
        // tensors in a fallback type), so K- and I-quants start at the Llama-3 shapes.
        let fits: Vec<_> = SHAPES.iter().filter(|s| s.0 % t.block_size() == 0).collect();
        let shapes = if full { &fits[..] } else { &fits[..1] };
        let mut g = c.benchmark_group(format!("{t:?}"));
        if full {
            g.sample_size(10).measurement_time(std::time::Duration::from_secs(3));
        }
        for &&(n_in, n_out, label) in shapes {
            let data = random_matrix(t, n_in, n_out, 0x9E3779B97F4A7C15).expect("the shape is whole blocks");
            let w = QMatrix::new("bench", t, n_in, n_out, &data).expect("valid matrix");
            let mut acts = QuantizedActs::default();
            let mut tmp = Vec::new();
            g.throughput(Throughput::Bytes(data.len() as u64));
            let x: Vec<f32> = (0..n_in * BATCH).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let mut out = vec![0.0f32; n_out * BATCH];
            g.bench_function(BenchmarkId::new("matvec", label), |b| {
                b.iter(|| matmul(&w, &x[..n_in], &mut out[..n_out], &mut acts, &mut tmp))
            });
            g.bench_function(BenchmarkId::new(format!("matmul{BATCH}"), label), |b| {
                b.iter(|| matmul(&w, &x, &mut out, &mut acts, &mut tmp))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
