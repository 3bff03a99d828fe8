//! Quantization formats: block layouts, dequantization, activation quantization and dot products.

pub mod activation;
pub mod dequant;
pub mod dot;
pub mod quantize;
pub mod simd;
pub mod synthetic;
pub mod tables;
