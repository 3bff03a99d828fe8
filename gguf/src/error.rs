//! The gguf crate's error type: every rejection names what was wrong and where.

use std::path::PathBuf;

/// Everything that can go wrong reading a GGUF file, building its tokenizer or rendering its template.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("truncated GGUF: needed {needed} bytes at offset {offset} for {what}, file has {len}")]
    Truncated { what: String, offset: u64, needed: u64, len: u64 },
    #[error("GGUF {what} is {value}, above the limit {max}")]
    LimitExceeded { what: String, value: u64, max: u64 },
    #[error("metadata key {key:?}: {msg}")]
    BadMetadata { key: String, msg: String },
    #[error("unknown metadata value type {type_id} for key {key:?}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("string at offset {offset} is not valid UTF-8")]
    BadUtf8 { offset: u64 },
    #[error("tensor {name:?}: {msg}")]
    BadTensor { name: String, msg: String },
    #[error("tensor {name:?} has unknown type id {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
