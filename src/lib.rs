//! prima: run GGUF language models across a ring of unequal devices.
//!
//! This root crate re-exports the public API of the workspace crates; see `ARCHITECTURE.md`.
#![forbid(unsafe_code)]

pub use compute;
pub use gguf;
