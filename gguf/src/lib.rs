//! GGUF reading (header, metadata, tensor directory, mmap), writing, the tokenizer built from
//! GGUF metadata, and chat-template rendering.
//!
//! This is the leaf crate of the workspace: it knows nothing of compute, actors or networking.
//! Every function returns `Err`, and never panics, on any byte sequence.

pub mod chat;
pub mod error;
pub mod file;
pub mod limits;
pub mod reader;
pub mod tokenizer;
pub mod types;
pub mod value;
pub mod writer;

pub use error::{Error, Result};
pub use file::GgufFile;
pub use reader::{parse_header, Header, TensorInfo};
pub use tokenizer::{StreamDecoder, Tokenizer};
pub use types::GgmlType;
pub use value::{Metadata, Value};
pub use writer::{write_gguf, write_gguf_streaming, TensorDesc, TensorToWrite};
