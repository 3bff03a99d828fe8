//! `prima synth`: a random-weight model at a real architecture's exact shapes, with a real
//! tokenizer copied from another GGUF, written as a stream (the model never sits in memory).
//! Numerics do not change speed: such a file measures large-model speed and memory behaviour
//! without downloading the model. Tensor names, metadata keys and the Q4_K_M type mix follow
//! llama.cpp's conventions, so llama.cpp loads the file too.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use compute::quant::synthetic::set_f16_scales;
use gguf::{write_gguf_streaming, GgmlType, Metadata, TensorDesc, Value};

use crate::SynthArgs;

/// A model shape: the numbers that fix every tensor's size.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub arch: &'static str,
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_vocab: u64,
    pub n_ctx: u64,
    pub rope_base: f32,
    pub rms_eps: f32,
}

/// Published shapes (from the models' config.json files).
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "llama2-7b",
        arch: "llama",
        n_layer: 32,
        n_embd: 4096,
        n_ff: 11008,
        n_head: 32,
        n_head_kv: 32,
        n_vocab: 32000,
        n_ctx: 4096,
        rope_base: 10000.0,
        rms_eps: 1e-5,
    },
    Shape {
        name: "llama3-8b",
        arch: "llama",
        n_layer: 32,
        n_embd: 4096,
        n_ff: 14336,
        n_head: 32,
        n_head_kv: 8,
        n_vocab: 128256,
        n_ctx: 8192,
        rope_base: 500000.0,
        rms_eps: 1e-5,
    },
    Shape {
        name: "llama3-70b",
        arch: "llama",
        n_layer: 80,
        n_embd: 8192,
        n_ff: 28672,
        n_head: 64,
        n_head_kv: 8,
        n_vocab: 128256,
        n_ctx: 8192,
        rope_base: 500000.0,
        rms_eps: 1e-5,
    },
    Shape {
        name: "qwen2.5-7b",
        arch: "qwen2",
        n_layer: 28,
        n_embd: 3584,
        n_ff: 18944,
        n_head: 28,
        n_head_kv: 4,
        n_vocab: 152064,
        n_ctx: 32768,
        rope_base: 1000000.0,
        rms_eps: 1e-6,
    },
    Shape {
        name: "qwen2.5-14b",
        arch: "qwen2",
        n_layer: 48,
        n_embd: 5120,
        n_ff: 13824,
        n_head: 40,
        n_head_kv: 8,
        n_vocab: 152064,
        n_ctx: 32768,
        rope_base: 1000000.0,
        rms_eps: 1e-6,
    },
    Shape {
        name: "qwen2.5-32b",
        arch: "qwen2",
        n_layer: 64,
        n_embd: 5120,
        n_ff: 27648,
        n_head: 40,
        n_head_kv: 8,
        n_vocab: 152064,
        n_ctx: 32768,
        rope_base: 1000000.0,
        rms_eps: 1e-6,
    },
    Shape {
        name: "qwen2.5-72b",
        arch: "qwen2",
        n_layer: 80,
        n_embd: 8192,
        n_ff: 29568,
        n_head: 64,
        n_head_kv: 8,
        n_vocab: 152064,
        n_ctx: 32768,
        rope_base: 1000000.0,
        rms_eps: 1e-6,
    },
];

/// The weight type mix, as llama.cpp's `--type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q4K,
    Q6K,
    Q4KM,
}

impl Mix {
    pub fn parse(s: &str) -> Option<Mix> {
        Some(match s.to_ascii_lowercase().as_str() {
            "q8_0" => Mix::Q8_0,
            "q4_0" => Mix::Q4_0,
            "q4_1" => Mix::Q4_1,
            "q5_0" => Mix::Q5_0,
            "q4_k" | "q4_k_s" => Mix::Q4K,
            "q6_k" => Mix::Q6K,
            "q4_k_m" => Mix::Q4KM,
            _ => return None,
        })
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Mix::Q4_0 => 2,
            Mix::Q4_1 => 3,
            Mix::Q8_0 => 7,
            Mix::Q5_0 => 8,
            Mix::Q4K => 14,
            Mix::Q4KM => 15,
            Mix::Q6K => 18,
        }
    }

    fn base(self) -> GgmlType {
        match self {
            Mix::Q8_0 => GgmlType::Q8_0,
            Mix::Q4_0 => GgmlType::Q4_0,
            Mix::Q4_1 => GgmlType::Q4_1,
            Mix::Q5_0 => GgmlType::Q5_0,
            Mix::Q4K | Mix::Q4KM => GgmlType::Q4_K,
            Mix::Q6K => GgmlType::Q6_K,
        }
    }
}

/// llama.cpp's rule for the layers that get more bits in the _M mixes: the first and last
/// eighth, and every third layer in between.
fn use_more_bits(i: u64, n: u64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type of a weight tensor named `name` (layer `layer`) with rows of `row` elements.
pub fn weight_type(mix: Mix, name: &str, layer: Option<u64>, n_layer: u64, row: u64) -> GgmlType {
    let t = if name == "output.weight" {
        if mix == Mix::Q8_0 {
            GgmlType::Q8_0
        } else {
            GgmlType::Q6_K
        }
    } else if mix == Mix::Q4KM
        && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
        && layer.is_some_and(|i| use_more_bits(i, n_layer))
    {
        GgmlType::Q6_K
    } else {
        mix.base()
    };
    // Rows that are not a whole number of 256-element super-blocks fall back as in llama.cpp.
    if !row.is_multiple_of(256) {
        match t {
            GgmlType::Q4_K => return GgmlType::Q5_0,
            GgmlType::Q6_K => return GgmlType::Q8_0,
            _ => {}
        }
    }
    t
}

/// The tensors of a shape, in llama.cpp's order.
pub fn tensors(s: &Shape, mix: Mix) -> Vec<TensorDesc> {
    let kv = s.n_embd / s.n_head * s.n_head_kv;
    let w = |name: String, layer: Option<u64>, cols: u64, rows: u64| TensorDesc {
        ggml_type: weight_type(mix, &name, layer, s.n_layer, cols),
        name,
        dims: vec![cols, rows],
    };
    let v = |name: String, len: u64| TensorDesc { name, dims: vec![len], ggml_type: GgmlType::F32 };
    let mut out = vec![w("token_embd.weight".into(), None, s.n_embd, s.n_vocab)];
    for i in 0..s.n_layer {
        let b = |t: &str| format!("blk.{i}.{t}");
        out.push(v(b("attn_norm.weight"), s.n_embd));
        out.push(w(b("attn_q.weight"), Some(i), s.n_embd, s.n_embd));
        out.push(w(b("attn_k.weight"), Some(i), s.n_embd, kv));
        out.push(w(b("attn_v.weight"), Some(i), s.n_embd, kv));
        if s.arch == "qwen2" {
            out.push(v(b("attn_q.bias"), s.n_embd));
            out.push(v(b("attn_k.bias"), kv));
            out.push(v(b("attn_v.bias"), kv));
        }
        out.push(w(b("attn_output.weight"), Some(i), s.n_embd, s.n_embd));
        out.push(v(b("ffn_norm.weight"), s.n_embd));
        out.push(w(b("ffn_gate.weight"), Some(i), s.n_embd, s.n_ff));
        out.push(w(b("ffn_up.weight"), Some(i), s.n_embd, s.n_ff));
        out.push(w(b("ffn_down.weight"), Some(i), s.n_ff, s.n_embd));
    }
    out.push(v("output_norm.weight".into(), s.n_embd));
    out.push(w("output.weight".into(), None, s.n_embd, s.n_vocab));
    out
}

/// xorshift64*: fast, seeded, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }
}

/// Writes `n_bytes` of random, finite blocks of type `t`.
fn write_random(
    w: &mut dyn Write,
    t: GgmlType,
    n_elements: u64,
    rng: &mut Rng,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    if t == GgmlType::F32 {
        return Ok(());
    }
    let bs = t.type_size();
    let n_blocks = n_elements / t.block_size() as u64;
    let per_chunk = ((4usize << 20) / bs).max(1) as u64;
    let mut left = n_blocks;
    while left > 0 {
        let n = left.min(per_chunk) as usize;
        buf.resize(n * bs, 0);
        rng.fill(buf);
        set_f16_scales(t, buf, |_| {
            // f16 with exponent 2^-9..2^-6: weights of a sane magnitude, never inf/NaN.
            let mant = (rng.next() & 0x3ff) as u16;
            let exp = 6 + (rng.next() % 4) as u16;
            half::f16::from_bits((exp << 10) | mant)
        });
        w.write_all(buf)?;
        left -= n as u64;
    }
    Ok(())
}

fn write_f32(w: &mut dyn Write, n: u64, value: f32) -> std::io::Result<()> {
    let chunk: Vec<u8> = (0..4096).flat_map(|_| value.to_le_bytes()).collect();
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(4096);
        w.write_all(&chunk[..k * 4])?;
        left -= k;
    }
    Ok(())
}

pub fn synth(a: SynthArgs) -> Result<()> {
    let Some(shape) = SHAPES.iter().find(|s| s.name == a.shape) else {
        let names: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
        bail!("unknown shape {:?} (known: {})", a.shape, names.join(", "));
    };
    let mix = Mix::parse(&a.r#type)
        .with_context(|| format!("unknown type {:?} (known: q8_0, q4_0, q4_1, q5_0, q4_k, q6_k, q4_k_m)", a.r#type))?;
    let vocab =
        gguf::GgufFile::open(&a.vocab_from).with_context(|| format!("cannot load {}", a.vocab_from.display()))?;
    let mut md: Vec<(String, Value)> = Vec::new();
    let arch = shape.arch;
    let u32v = |x: u64| Value::U32(x as u32);
    md.push(("general.architecture".into(), Value::String(arch.into())));
    md.push(("general.name".into(), Value::String(format!("synthetic {} {} (random weights)", shape.name, a.r#type))));
    md.push(("general.file_type".into(), Value::U32(mix.file_type())));
    md.push(("general.quantization_version".into(), Value::U32(2)));
    md.push((format!("{arch}.context_length"), u32v(shape.n_ctx)));
    md.push((format!("{arch}.embedding_length"), u32v(shape.n_embd)));
    md.push((format!("{arch}.block_count"), u32v(shape.n_layer)));
    md.push((format!("{arch}.feed_forward_length"), u32v(shape.n_ff)));
    md.push((format!("{arch}.attention.head_count"), u32v(shape.n_head)));
    md.push((format!("{arch}.attention.head_count_kv"), u32v(shape.n_head_kv)));
    md.push((format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(shape.rms_eps)));
    md.push((format!("{arch}.rope.freq_base"), Value::F32(shape.rope_base)));
    md.push((format!("{arch}.rope.dimension_count"), u32v(shape.n_embd / shape.n_head)));
    md.push((format!("{arch}.vocab_size"), u32v(shape.n_vocab)));
    // The tokenizer, padded with unused tokens up to the shape's vocabulary.
    let n_tok = vocab.metadata().array_opt("tokenizer.ggml.tokens")?.map(|a| a.len() as u64).unwrap_or(0);
    if n_tok == 0 {
        bail!("{} has no tokenizer", a.vocab_from.display());
    }
    if n_tok > shape.n_vocab {
        bail!(
            "{} has {n_tok} tokens, more than {}'s {}: take the tokenizer from a model with a smaller vocabulary",
            a.vocab_from.display(),
            shape.name,
            shape.n_vocab
        );
    }
    let pad = shape.n_vocab - n_tok;
    for (k, v) in vocab.metadata().iter() {
        if !k.starts_with("tokenizer.") {
            continue;
        }
        let v = match (k, v) {
            ("tokenizer.ggml.tokens", Value::Array(items)) => {
                let mut items = items.clone();
                items.extend((0..pad).map(|i| Value::String(format!("<|synth_pad_{i}|>"))));
                Value::Array(items)
            }
            ("tokenizer.ggml.token_type", Value::Array(items)) => {
                let mut items = items.clone();
                items.extend((0..pad).map(|_| Value::I32(5))); // unused
                Value::Array(items)
            }
            ("tokenizer.ggml.scores", Value::Array(items)) => {
                let mut items = items.clone();
                items.extend((0..pad).map(|_| Value::F32(-1e9)));
                Value::Array(items)
            }
            _ => v.clone(),
        };
        md.push((k.to_string(), v));
    }
    let metadata = Metadata::new(md);
    let descs = tensors(shape, mix);
    let total: u64 = descs.iter().filter_map(TensorDesc::n_bytes).sum();
    let n_params: u64 = descs.iter().map(|d| d.dims.iter().product::<u64>()).sum();
    eprintln!(
        "writing {} ({} {}): {} tensors, {:.2} B parameters, {:.2} GB",
        a.output.display(),
        shape.name,
        a.r#type,
        descs.len(),
        n_params as f64 / 1e9,
        total as f64 / 1e9
    );
    let file = File::create(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let mut rng = Rng(a.seed | 1);
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let mut done = 0u64;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut fill = |i: usize, w: &mut dyn Write| -> std::io::Result<()> {
        let d = &descs[i];
        let n: u64 = d.dims.iter().product();
        if d.ggml_type == GgmlType::F32 {
            write_f32(w, n, if d.name.ends_with(".bias") { 0.0 } else { 1.0 })?;
        } else {
            write_random(w, d.ggml_type, n, &mut rng, &mut buf)?;
        }
        done += d.n_bytes().unwrap_or(0);
        if tty {
            eprint!(
                "\r{:5.1}% {:.2} GB, {:.0} MB/s ",
                done as f64 * 100.0 / total as f64,
                done as f64 / 1e9,
                done as f64 / 1e6 / t0.elapsed().as_secs_f64()
            );
        }
        Ok(())
    };
    write_gguf_streaming(&mut w, &metadata, &descs, &mut fill)
        .with_context(|| format!("writing {}", a.output.display()))?;
    w.flush()?;
    if tty {
        eprintln!();
    }
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_follows_llama_cpp_mix() {
        let s = SHAPES.iter().find(|s| s.name == "llama3-8b").unwrap();
        let t = tensors(s, Mix::Q4KM);
        let ty = |n: &str| t.iter().find(|d| d.name == n).unwrap().ggml_type;
        assert_eq!(ty("output.weight"), GgmlType::Q6_K);
        assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
        // n = 32: layers 0-3 and 28-31, and 4 + 3k + 2 = 6, 9, … get Q6_K.
        for (i, more) in
            [(0, true), (3, true), (4, false), (5, false), (6, true), (9, true), (27, true), (28, true), (10, false)]
        {
            let want = if more { GgmlType::Q6_K } else { GgmlType::Q4_K };
            assert_eq!(ty(&format!("blk.{i}.attn_v.weight")), want, "layer {i}");
            assert_eq!(ty(&format!("blk.{i}.ffn_down.weight")), want, "layer {i}");
            assert_eq!(ty(&format!("blk.{i}.attn_q.weight")), GgmlType::Q4_K);
        }
        // 4096·14336·… : the published Q4_K_M size of Llama-3-8B is 4.92 GB.
        let total: u64 = t.iter().filter_map(TensorDesc::n_bytes).sum();
        assert!((4.85e9..5.0e9).contains(&(total as f64)), "{total}");
    }

    #[test]
    fn rows_that_are_not_whole_super_blocks_fall_back() {
        assert_eq!(weight_type(Mix::Q4KM, "blk.0.ffn_down.weight", Some(10), 32, 18944 + 32), GgmlType::Q5_0);
        assert_eq!(weight_type(Mix::Q4KM, "output.weight", None, 32, 896), GgmlType::Q8_0);
    }
}
