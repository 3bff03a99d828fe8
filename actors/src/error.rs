/// Why a node stopped or a request failed. Messages name the node, peer or file involved.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot load model {path}: {msg}")]
    Model { path: String, msg: String },
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error("refused by the head: {0}")]
    Refused(String),
    #[error("{0}")]
    Join(String),
    #[error("{0}")]
    Lost(String),
    #[error("compute failed: {0}")]
    Compute(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("actor system: {0}")]
    Actor(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

pub type Result<T> = std::result::Result<T, NodeError>;
