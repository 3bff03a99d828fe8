//! Upper bounds on what a GGUF header may declare, checked before anything is allocated.

/// Longest metadata string or tensor name accepted (a chat template can be long; 16 MiB is plenty).
pub const STRING_LEN_MAX: u64 = 16 << 20;
/// Most elements in one metadata array (a 256k vocabulary with margin).
pub const ARRAY_LEN_MAX: u64 = 16 << 20;
/// Deepest nesting of arrays inside arrays.
pub const ARRAY_DEPTH_MAX: u32 = 8;
/// Most metadata key/value pairs.
pub const KV_COUNT_MAX: u64 = 1 << 16;
/// Most tensors (a 70B model has ~720).
pub const TENSOR_COUNT_MAX: u64 = 1 << 16;
/// Most dimensions of one tensor (GGML_MAX_DIMS).
pub const DIMS_MAX: u32 = 4;
/// Largest `general.alignment` accepted.
pub const ALIGNMENT_MAX: u64 = 1 << 16;
