//! The plain, synchronous-or-async-IO cores of a prima node that know nothing of actors or
//! kernels: the node configuration (`node.toml`), the layer-window plan, the wire frames (rkyv,
//! validated with bytecheck) and the authenticated, length-prefixed TCP codec that carries them.

pub mod auth;
pub mod config;
pub mod error;
pub mod link;
pub mod plan;
pub mod wire;

pub use config::{NodeConfig, ServerConfig, WireDtype};
pub use error::{Error, Result};
pub use link::{Link, LinkReader, LinkWriter};
pub use plan::{NodePlan, Plan};
pub use wire::{Activations, Control, Data, Fingerprint, Hop};
