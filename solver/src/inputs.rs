//! From what is measured to what the cost model takes: a GGUF file (or a model shape) becomes a
//! [`ModelCost`], a [`DeviceProfile`] becomes a [`DeviceCost`].

use std::collections::BTreeMap;

use gguf::GgufFile;

use crate::cost::{DeviceCost, ModelCost, Os};
use crate::profile::DeviceProfile;

/// The context the plan is made for, unless told otherwise: how many tokens a token's attention
/// reads on average (a prompt and its answer), which sets the KV bytes read per token.
pub const DEFAULT_N_KV: usize = 512;

/// f16 K and V.
const KV_BYTES_PER_VALUE: f64 = 2.0;

impl ModelCost {
    /// Per-layer FLOPs and bytes of the model in `file`, with a KV cache of `n_ctx` tokens of
    /// which `n_kv` are read per token. Layers are averaged (the paper's `b` and `f^q`).
    pub fn from_gguf(file: &GgufFile, n_ctx: usize, n_kv: usize) -> Result<ModelCost, String> {
        let hp = compute::HParams::from_metadata(file.metadata()).map_err(|e| e.to_string())?;
        let l = hp.n_layer;
        if l == 0 {
            return Err("the model has no layers".into());
        }
        let mut layer_flops: BTreeMap<String, f64> = BTreeMap::new();
        let mut layer_bytes = 0.0;
        for t in file.tensors().iter().filter(|t| t.name.starts_with("blk.")) {
            layer_bytes += t.n_bytes as f64;
            if t.dims.len() == 2 {
                *layer_flops.entry(t.ggml_type.to_string()).or_default() += 2.0 * t.n_elements() as f64;
            }
        }
        for f in layer_flops.values_mut() {
            *f /= l as f64;
        }
        let embd = file.tensor_info("token_embd.weight").ok_or("the model has no token_embd.weight")?;
        let n_vocab = embd.dims.get(1).copied().unwrap_or(1).max(1) as f64;
        // A model without `output.weight` ties its head to the embedding table.
        let head = file.tensor_info("output.weight").unwrap_or(embd);
        let norm = file.tensor_info("output_norm.weight").map_or(0, |t| t.n_bytes) as f64;
        let out_flops = [(head.ggml_type.to_string(), 2.0 * head.n_elements() as f64)].into();
        let kv_per_token = (2 * hp.n_head_kv * hp.head_dim) as f64 * KV_BYTES_PER_VALUE;
        Ok(ModelCost {
            n_layer: l,
            layer_flops,
            out_flops,
            layer_bytes: layer_bytes / l as f64,
            layer_kv_bytes: kv_per_token * n_ctx as f64,
            layer_kv_read_bytes: kv_per_token * n_kv.min(n_ctx) as f64,
            kv_token_bytes: kv_per_token,
            hidden_bytes: 4.0 * hp.n_embd as f64,
            input_row_bytes: embd.n_bytes as f64 / n_vocab,
            output_bytes: head.n_bytes as f64 + norm,
        })
    }

    /// A dense decoder of the given shape with every weight in one format of `bits_per_weight`
    /// (the embedding and head included): for planning without the file, and for tests.
    pub fn dense(shape: &Shape, weight_type: &str, bits_per_weight: f64, n_ctx: usize, n_kv: usize) -> ModelCost {
        let (e, f, kv) = (shape.n_embd as f64, shape.n_ff as f64, (shape.n_head_kv * shape.head_dim) as f64);
        let params = e * e * 2.0 + e * kv * 2.0 + 3.0 * e * f; // q, o, k, v, gate, up, down
        let bytes = |n: f64| n * bits_per_weight / 8.0;
        let kv_per_token = 2.0 * kv * KV_BYTES_PER_VALUE;
        ModelCost {
            n_layer: shape.n_layer,
            layer_flops: [(weight_type.to_string(), 2.0 * params)].into(),
            out_flops: [(weight_type.to_string(), 2.0 * e * shape.n_vocab as f64)].into(),
            layer_bytes: bytes(params) + 8.0 * e,
            layer_kv_bytes: kv_per_token * n_ctx as f64,
            layer_kv_read_bytes: kv_per_token * n_kv.min(n_ctx) as f64,
            kv_token_bytes: kv_per_token,
            hidden_bytes: 4.0 * e,
            input_row_bytes: bytes(e),
            output_bytes: bytes(e * shape.n_vocab as f64) + 4.0 * e,
        }
    }

    /// CPU-side compute buffers of a device running this model, bytes: an estimate covering
    /// the activations, one token's attention scores over the whole context for up to 64 heads,
    /// and the f32 logits on the head.
    pub fn compute_buffer_bytes(&self, head: bool) -> f64 {
        let n_ctx = self.layer_kv_bytes / self.kv_token_bytes.max(1.0);
        let n_vocab = self.output_bytes / self.input_row_bytes.max(1.0);
        16.0 * self.hidden_bytes + n_ctx * 4.0 * 64.0 + if head { 4.0 * n_vocab } else { 0.0 }
    }
}

/// The public configuration of a dense decoder (enough to size it).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
}

impl Shape {
    pub const LLAMA3_8B: Shape =
        Shape { n_layer: 32, n_embd: 4096, n_ff: 14336, n_head_kv: 8, head_dim: 128, n_vocab: 128256 };
    pub const QWEN25_7B: Shape =
        Shape { n_layer: 28, n_embd: 3584, n_ff: 18944, n_head_kv: 4, head_dim: 128, n_vocab: 152064 };
    pub const QWEN25_14B: Shape =
        Shape { n_layer: 48, n_embd: 5120, n_ff: 13824, n_head_kv: 8, head_dim: 128, n_vocab: 152064 };
    pub const QWEN25_32B: Shape =
        Shape { n_layer: 64, n_embd: 5120, n_ff: 27648, n_head_kv: 8, head_dim: 128, n_vocab: 152064 };
    pub const LLAMA3_70B: Shape =
        Shape { n_layer: 80, n_embd: 8192, n_ff: 28672, n_head_kv: 8, head_dim: 128, n_vocab: 128256 };
}

/// How a device takes part, beyond what its profile says.
#[derive(Clone, Debug, Default)]
pub struct Participation {
    /// Seconds to send one hidden state to the next device (measured over the link at start).
    pub t_comm: f64,
    /// Whether the device is the head (holds the embedding and the output layer).
    pub head: bool,
}

impl DeviceCost {
    /// The device of `profile` running `model`. Weight types the profile lacks (it was measured
    /// for another model) take the slowest rate it has; `missing` lists them.
    pub fn from_profile(profile: &DeviceProfile, model: &ModelCost, part: &Participation) -> (DeviceCost, Vec<String>) {
        let slowest = profile.cpu_gflops.values().copied().filter(|g| *g > 0.0).fold(f64::INFINITY, f64::min);
        let slowest = if slowest.is_finite() { slowest } else { 1.0 };
        let mut missing = Vec::new();
        let mut cpu_flops = BTreeMap::new();
        for q in model.layer_flops.keys().chain(model.out_flops.keys()) {
            let g = match profile.cpu_gflops.get(q) {
                Some(&g) if g > 0.0 => g,
                _ => {
                    missing.push(q.clone());
                    slowest
                }
            };
            cpu_flops.insert(q.clone(), g * 1e9);
        }
        missing.dedup();
        let os = match profile.os.as_str() {
            "android" => Os::Android,
            // No Metal backend in this runtime: a Mac computes on its CPU.
            "macos" => Os::MacOs { metal: false },
            _ => Os::Linux,
        };
        let mem_bw = (profile.mem_bandwidth_gbs * 1e9).max(1e6);
        let disk = match os {
            Os::MacOs { .. } => profile.disk_rand_mbs * 1e6,
            _ => profile.disk_seq_gbs * 1e9,
        }
        .max(1e3);
        // A node's memory budget is already in its profile's available RAM (it offers no more).
        let ram = profile.ram_available_bytes as f64;
        let (gpu_flops, mem_bw_gpu, vram_avail) = match &profile.gpu {
            Some(g) if g.gflops > 0.0 && g.mem_bandwidth_gbs > 0.0 => (
                model.layer_flops.keys().map(|q| (q.clone(), g.gflops * 1e9)).collect(),
                g.mem_bandwidth_gbs * 1e9,
                g.vram_bytes as f64,
            ),
            _ => (BTreeMap::new(), 0.0, 0.0),
        };
        let swappable = if os == Os::Android { profile.swap_free_bytes as f64 } else { 0.0 };
        let dev = DeviceCost {
            os,
            uma: false,
            cpu_flops,
            t_kv_cpy_gpu: if mem_bw_gpu > 0.0 { model.kv_token_bytes / mem_bw_gpu } else { 0.0 },
            t_dev_copy: if gpu_flops.is_empty() { 0.0 } else { 2.0 * model.hidden_bytes / 8e9 + 2e-5 },
            gpu_flops,
            mem_bw_cpu: mem_bw,
            mem_bw_gpu,
            t_kv_cpy_cpu: model.kv_token_bytes / mem_bw,
            disk,
            t_comm: part.t_comm,
            ram_avail: ram,
            metal_avail: 0.0,
            swappable,
            c_cpu: model.compute_buffer_bytes(part.head),
            c_gpu: 0.0,
            vram_avail,
        };
        (dev, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_shapes_weigh_what_their_files_do() {
        // Llama 3 8B at Q4_K (4.5 bits) is about 4.3 GiB of weights plus the 16-bit-ish ends.
        let m = ModelCost::dense(&Shape::LLAMA3_8B, "Q4_K", 4.5, 4096, 512);
        let total = m.n_layer as f64 * m.layer_bytes + m.output_bytes + m.input_row_bytes * 128256.0;
        let gib = total / (1u64 << 30) as f64;
        assert!((4.0..4.8).contains(&gib), "{gib} GiB");
        // KV: 2 × 8 heads × 128 × 2 bytes × 4096 tokens = 16 MiB per layer.
        assert_eq!(m.layer_kv_bytes, 16.0 * 1048576.0);
        assert_eq!(m.layer_kv_read_bytes, 2.0 * 1048576.0);
    }
}
