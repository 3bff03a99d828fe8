//! Quantization formats: block layouts, dequantization, activation quantization and dot products.
