//! prima's actors — ModelShard, Prefetcher, Compute, RingLink, Batcher — under a per-node
//! supervisor, and the programmatic API to run nodes (`Node`) and local rings (`Cluster`).
//!
//! Each actor is a thin message-handling shell over a synchronous core from `compute`,
//! `runtime` or this crate (`PageManager`, `Shard`, `ComputeState::run`): the cores are
//! tested without actors, the actors route messages, own state and handle failure.

pub mod api;
pub mod batcher;
pub mod cluster;
pub mod compute;
pub mod error;
pub mod memstat;
pub mod node;
pub mod planner;
pub mod prefetch;
pub mod ring;
pub mod shard;
pub mod supervisor;

pub use batcher::{Event, GenerateRequest, GenerationStats};
pub use cluster::{Cluster, LocalCluster};
pub use error::{NodeError, Result};
pub use node::Node;
