//! Quantized blocks and kernels, the transformer layer forward (llama, qwen2), KV cache and
//! sampling. Synchronous only: compute never awaits and never touches a socket.

pub mod quant;
