//! Quantized blocks and kernels, the transformer layer forward (llama, qwen2), KV cache and
//! sampling. Synchronous only: compute never awaits and never touches a socket.

pub mod error;
pub mod hparams;
pub mod kv_cache;
pub mod matmul;
pub mod model;
pub mod ops;
pub mod quant;
pub mod sampling;
pub mod session;
pub mod team;

pub use error::{Error, Result};
pub use hparams::{Arch, HParams};
pub use kv_cache::KvCache;
pub use model::{LoadSpec, Model, Scratch};
pub use sampling::{Sampler, SamplerConfig};
pub use session::Session;
