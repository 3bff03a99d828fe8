//! Model hyper-parameters read from GGUF metadata, for the architectures prima runs.

use gguf::Metadata;

use crate::error::{Error, Result};

/// The transformer families prima implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, SmolLM2, DeepSeek-R1-Distill-Llama: no QKV bias, "normal" (adjacent-pair) RoPE.
    Llama,
    /// Qwen2/2.5, QwQ, DeepSeek-R1-Distill-Qwen: QKV biases, NEOX (half-split) RoPE.
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Everything the layer forward needs to know about the model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Rotated dimensions per head (the rest pass through).
    pub n_rot: usize,
    pub rope_freq_base: f32,
    /// 1 / linear scaling factor.
    pub rope_freq_scale: f32,
    pub rms_eps: f32,
    pub n_ctx_train: usize,
}

/// Widths above this are rejected: no real model comes near, and it keeps sizes far from overflow.
const DIM_MAX: u64 = 1 << 20;

impl HParams {
    pub fn from_metadata(md: &Metadata) -> Result<HParams> {
        let arch_name = md.str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::UnsupportedArch(other.to_string()));
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let dim = |k: &str| -> Result<usize> {
            let v = md.u64(&key(k))?;
            if v == 0 || v > DIM_MAX {
                return Err(Error::BadHParam(format!("{} = {v} is out of range", key(k))));
            }
            Ok(v as usize)
        };
        let n_layer = md.u64(&key("block_count"))? as usize;
        if n_layer > 4096 {
            return Err(Error::BadHParam(format!("{} = {n_layer} is out of range", key("block_count"))));
        }
        let n_embd = dim("embedding_length")?;
        let n_ff = dim("feed_forward_length")?;
        let n_head = dim("attention.head_count")?;
        let n_head_kv = match md.u64_opt(&key("attention.head_count_kv"))? {
            Some(v) => v as usize,
            None => n_head,
        };
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(Error::BadHParam(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match md.u64_opt(&key("attention.key_length"))? {
            Some(v) if v > 0 && v <= DIM_MAX => v as usize,
            Some(v) => return Err(Error::BadHParam(format!("attention.key_length = {v} is out of range"))),
            None => n_embd / n_head,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::BadHParam(format!("head dimension {head_dim} must be even and non-zero")));
        }
        let n_rot = match md.u64_opt(&key("rope.dimension_count"))? {
            Some(v) => v as usize,
            None => head_dim,
        };
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(Error::BadHParam(format!(
                "rope.dimension_count {n_rot} must be even and at most the head dimension {head_dim}"
            )));
        }
        let rope_freq_base = md.f64_opt(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        let scaling_type = md.str_opt(&key("rope.scaling.type"))?.unwrap_or("none");
        let rope_freq_scale = match scaling_type {
            "none" | "llama3" => 1.0,
            "linear" => {
                let f = md.f64_opt(&key("rope.scaling.factor"))?.unwrap_or(1.0);
                if f <= 0.0 {
                    return Err(Error::BadHParam(format!("rope.scaling.factor {f} must be positive")));
                }
                (1.0 / f) as f32
            }
            other => return Err(Error::Unsupported(format!("rope scaling type {other:?}"))),
        };
        let rms_eps = md.f64_opt(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32;
        let n_ctx_train = md.u64_opt(&key("context_length"))?.unwrap_or(4096) as usize;
        Ok(HParams {
            arch,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rope_freq_base,
            rope_freq_scale,
            rms_eps,
            n_ctx_train,
        })
    }

    /// Width of the K (and V) projection: `n_head_kv · head_dim`.
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the Q projection: `n_head · head_dim`.
    pub fn n_embd_q(&self) -> usize {
        self.n_head * self.head_dim
    }
}
