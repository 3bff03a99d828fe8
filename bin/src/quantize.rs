//! `prima quantize IN.gguf OUT.gguf TYPE`: re-encodes a model's weight matrices (Q8_0, Q4_0,
//! Q4_1, Q5_0, Q4_K, Q6_K or llama.cpp's Q4_K_M mix), streaming tensor by tensor. Norms and
//! biases stay F32; rows that are not whole blocks of the target type fall back as llama.cpp
//! does (Q4_K → Q5_0, Q6_K → Q8_0, others → F16).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use compute::quant::dequant::dequantize_row;
use compute::quant::quantize::quantize_row;
use gguf::{write_gguf_streaming, GgmlType, Metadata, TensorDesc, Value};
use rayon::prelude::*;

use crate::synth::{weight_type, Mix};
use crate::QuantizeArgs;

/// Rows converted per parallel batch (bounds memory on huge tensors).
const ROWS_PER_BATCH: usize = 256;

fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let mix = Mix::parse(&a.r#type)
        .with_context(|| format!("unknown type {:?} (known: q8_0, q4_0, q4_1, q5_0, q4_k, q6_k, q4_k_m)", a.r#type))?;
    let src = gguf::GgufFile::open(&a.input).with_context(|| format!("cannot load {}", a.input.display()))?;
    let arch = src.metadata().str("general.architecture").context("the model has no architecture")?.to_string();
    let n_layer = src.metadata().u64(&format!("{arch}.block_count")).context("the model has no block_count")?;
    let mut descs = Vec::new();
    for t in src.tensors() {
        let row = t.dims.first().copied().unwrap_or(0);
        let is_matrix = t.dims.len() >= 2 && t.name.ends_with(".weight");
        let mut ty = if is_matrix { weight_type(mix, &t.name, layer_of(&t.name), n_layer, row) } else { GgmlType::F32 };
        if row % ty.block_size() as u64 != 0 {
            ty = GgmlType::F16;
        }
        if is_matrix && !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) && !a.allow_requantize {
            bail!(
                "{} is already quantized ({}); requantizing loses quality, pass --allow-requantize to do it anyway",
                t.name,
                t.ggml_type
            );
        }
        descs.push(TensorDesc { name: t.name.clone(), dims: t.dims.clone(), ggml_type: ty });
    }
    let mut md: Vec<(String, Value)> = src.metadata().iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    md.retain(|(k, _)| k != "general.file_type" && k != "general.quantization_version");
    md.push(("general.file_type".into(), Value::U32(mix.file_type())));
    md.push(("general.quantization_version".into(), Value::U32(2)));
    let metadata = Metadata::new(md);
    let total_in: u64 = src.tensors().iter().map(|t| t.n_bytes).sum();
    let total_out: u64 = descs.iter().filter_map(TensorDesc::n_bytes).sum();
    let file = File::create(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let t0 = Instant::now();
    let mut fill = |i: usize, w: &mut dyn Write| -> std::io::Result<()> {
        let info = &src.tensors()[i];
        let d = &descs[i];
        let data = src.tensor_data(info).map_err(std::io::Error::other)?;
        let row = d.dims[0] as usize;
        let n_rows = (d.dims.iter().product::<u64>() as usize) / row.max(1);
        let in_row = info.ggml_type.row_bytes(row as u64).unwrap_or(0) as usize;
        let out_row = d.ggml_type.row_bytes(row as u64).unwrap_or(0) as usize;
        let mut out = Vec::new();
        for first in (0..n_rows).step_by(ROWS_PER_BATCH) {
            let n = ROWS_PER_BATCH.min(n_rows - first);
            out.resize(n * out_row, 0);
            out.par_chunks_mut(out_row.max(1))
                .enumerate()
                .try_for_each(|(k, o)| -> compute::Result<()> {
                    let r = first + k;
                    let mut x = vec![0.0f32; row];
                    dequantize_row(info.ggml_type, &data[r * in_row..(r + 1) * in_row], &mut x)?;
                    quantize_row(d.ggml_type, &x, o)
                })
                .map_err(|e| std::io::Error::other(format!("{}: {e}", d.name)))?;
            w.write_all(&out)?;
        }
        if info.ggml_type != d.ggml_type {
            tracing::info!("{}: {} → {}", d.name, info.ggml_type, d.ggml_type);
        }
        Ok(())
    };
    write_gguf_streaming(&mut w, &metadata, &descs, &mut fill)
        .with_context(|| format!("writing {}", a.output.display()))?;
    w.flush()?;
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for d in &descs {
        *counts.entry(d.ggml_type.to_string()).or_default() += 1;
    }
    eprintln!(
        "{} → {}: {:.1} MB → {:.1} MB in {:.1} s; tensors: {}",
        a.input.display(),
        a.output.display(),
        total_in as f64 / 1e6,
        total_out as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        counts.iter().map(|(t, n)| format!("{n} {t}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
