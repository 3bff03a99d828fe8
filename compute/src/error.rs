//! `compute::Error`, the one error type of the compute crate, and its `Result` alias.
//!
//! Variants carry the context needed to find the bad input (type, expected vs actual sizes).

use gguf::GgmlType;

/// Everything that can go wrong in `compute`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A byte buffer does not hold exactly the bytes that `ty` needs for the element count.
    #[error("{ty}: expected {expected} bytes, got {actual}")]
    BadLength { ty: GgmlType, expected: usize, actual: usize },

    /// An element count that is not a whole number of `ty` blocks (or whose byte size overflows).
    #[error("{ty}: {n_elements} elements is not a whole number of {block_size}-element blocks")]
    NotBlockAligned { ty: GgmlType, n_elements: usize, block_size: usize },

    /// A tensor with the wrong shape or byte size for its role.
    #[error("tensor {name:?}: {msg}")]
    Shape { name: String, msg: String },

    /// A tensor the model needs is absent from the file.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),

    /// `general.architecture` names a family prima does not implement.
    #[error("unsupported architecture {0:?} (supported: llama, qwen2)")]
    UnsupportedArch(String),

    /// A hyper-parameter in the metadata is missing, mistyped or out of range.
    #[error("bad hyper-parameter: {0}")]
    BadHParam(String),

    /// A part of the model this node did not load was asked for.
    #[error("the {0} is not loaded in this model part")]
    NotLoaded(&'static str),

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },

    /// A position past the end of the KV cache.
    #[error("context is full ({n_ctx} positions); raise --ctx-size")]
    ContextFull { n_ctx: usize },

    /// Reading GGUF metadata or tensors failed.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),

    /// An operation that has no implementation for the given input (type, shape, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
