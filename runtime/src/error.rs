use std::path::PathBuf;

/// Errors of configuration, planning and the wire. Every variant says which file, peer or
/// frame it is about, so that a log line alone tells the user what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("bad key file {path}: {msg}")]
    Key { path: PathBuf, msg: String },
    #[error("invalid layer plan: {0}")]
    Plan(String),
    #[error("link to {peer}: {source}")]
    LinkIo { peer: String, source: std::io::Error },
    #[error("link to {peer}: the peer closed the connection")]
    Closed { peer: String },
    #[error("link to {peer}: timed out after {secs} s waiting for {what}")]
    Timeout { peer: String, secs: u64, what: &'static str },
    #[error("link to {peer}: authentication failed: {msg}")]
    Auth { peer: String, msg: String },
    #[error("link to {peer}: malformed frame: {msg}")]
    Frame { peer: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;
