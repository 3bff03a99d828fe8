//! prima: run GGUF language models across a ring of unequal devices.
//!
//! This root crate re-exports the public API of the workspace crates; see `ARCHITECTURE.md`.
//! Researchers start from [`Cluster::local`] (a ring in one process over loopback TCP) or
//! [`Node::spawn`] (one device of a real ring, from a [`NodeConfig`]).
#![forbid(unsafe_code)]

pub use actors;
pub use actors::{Cluster, Event, GenerateRequest, GenerationStats, LocalCluster, Node, NodeError};
pub use compute;
pub use gguf;
pub use runtime;
pub use runtime::{NodeConfig, Plan, WireDtype};
