//! `node.toml`: what one device needs to know to take part in a ring.
//!
//! ```toml
//! rank = 1                         # 0 is the head
//! model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! head = "192.168.1.10:9700"       # the head's control address (the head listens there)
//! listen = "0.0.0.0:9701"          # where this node accepts the ring link from its predecessor
//! key_file = "cluster.key"         # the shared cluster key (same file on every device)
//! threads = 4
//! ```
//!
//! Relative paths are taken relative to the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// How hidden states travel between nodes. `f32` keeps the ring bit-identical to one device;
/// `f16` halves the bytes on slow links at the cost of rounding at each hop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDtype {
    #[default]
    F32,
    F16,
}

impl WireDtype {
    pub fn bytes_per_value(self) -> usize {
        match self {
            WireDtype::F32 => 4,
            WireDtype::F16 => 2,
        }
    }
}

impl std::str::FromStr for WireDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(WireDtype::F32),
            "f16" => Ok(WireDtype::F16),
            _ => Err(format!("unknown wire dtype {s:?} (expected f32 or f16)")),
        }
    }
}

/// One node's configuration, as read from `node.toml` (every field but `rank`, `model` and
/// `head` has a default).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// 0 for the head, 1.. for the others. Ranks only identify nodes: the ring order follows
    /// the plan (ascending rank, nodes without layers left out).
    pub rank: u32,
    /// The GGUF file. Every node must hold the same file (checked at join by size and a hash
    /// of the header).
    pub model: PathBuf,
    /// The head's control address: the head listens there, the others connect to it.
    pub head: String,
    /// Number of nodes the head waits for, itself included (head only; default 1).
    #[serde(default = "one")]
    pub world: u32,
    /// Where this node accepts the ring link from its predecessor. Port 0 picks a free port;
    /// an unspecified IP (0.0.0.0) is replaced, when the head tells the others where to
    /// connect, by the address the head saw this node connect from.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The shared cluster key: every connection proves knowledge of it (HMAC
    /// challenge-response) and every frame carries a MAC under a per-connection session key.
    /// Required when `world > 1` or for any node other than the head.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Compute threads (default: every core).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Context length (positions) of the KV cache, shared by the `n_parallel` sequences.
    #[serde(default = "default_n_ctx")]
    pub n_ctx: usize,
    /// Sequences decoded together (head only; llama.cpp's `-np`): each ring step carries one
    /// row per active sequence, and each gets `n_ctx / n_parallel` positions.
    #[serde(default = "one_usize")]
    pub n_parallel: usize,
    /// Layers per node per cycle, in rank order (head only), as prima.cpp's `-lw`.
    /// Windows repeat for several cycles when their sum is smaller than the layer count.
    /// Absent: the head profiles every node and the scheduler (Halda) picks the windows,
    /// leaving out nodes that would not lower the predicted token latency.
    #[serde(default)]
    pub layer_window: Option<Vec<usize>>,
    /// Hidden-state encoding on the ring (head only; the head tells the others).
    #[serde(default)]
    pub wire_dtype: WireDtype,
    /// Read the next window of this node ahead of use (madvise WILLNEED plus io_uring or
    /// pread reads).
    #[serde(default = "yes")]
    pub prefetch: bool,
    /// Touch every page of the next window right after computing (prima.cpp's `--force`).
    #[serde(default)]
    pub force: bool,
    /// Resident weight memory this node may use; when its windows exceed it, a window's pages
    /// are released (MADV_DONTNEED) after it ran. Unset: keep everything resident.
    #[serde(default)]
    pub memory_budget_mb: Option<u64>,
    /// Largest frame accepted from a peer.
    #[serde(default = "default_max_frame_mb")]
    pub max_frame_mb: u64,
    /// How often a node tells the head it is alive.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A peer silent for this long is considered lost.
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    /// How long the head waits for every node to join (and a node for the head).
    #[serde(default = "default_join_timeout_s")]
    pub join_timeout_s: u64,
    /// Head only: serve the OpenAI-compatible API (as `prima node --serve` does).
    #[serde(default)]
    pub server: Option<ServerConfig>,
}

/// `[server]` in the head's node.toml; command-line flags override each field.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_server_host")]
    pub host: String,
    #[serde(default = "default_server_port")]
    pub port: u16,
    /// Bearer token required on `/v1/*` and `/metrics`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Requests accepted at once (running and queued); more get HTTP 429.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: default_server_host(),
            port: default_server_port(),
            api_key: None,
            max_queue: default_max_queue(),
        }
    }
}

fn default_server_host() -> String {
    "127.0.0.1".into()
}
fn default_server_port() -> u16 {
    8080
}
fn default_max_queue() -> usize {
    64
}

fn one() -> u32 {
    1
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "0.0.0.0:0".into()
}
fn default_n_ctx() -> usize {
    4096
}
fn default_max_frame_mb() -> u64 {
    256
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_peer_timeout_ms() -> u64 {
    5000
}
fn default_join_timeout_s() -> u64 {
    300
}

impl NodeConfig {
    /// A config with every default: a starting point for programmatic use.
    pub fn new(rank: u32, model: impl Into<PathBuf>, head: impl Into<String>) -> NodeConfig {
        NodeConfig {
            rank,
            model: model.into(),
            head: head.into(),
            world: 1,
            listen: default_listen(),
            key_file: None,
            threads: None,
            n_ctx: default_n_ctx(),
            n_parallel: 1,
            server: None,
            layer_window: None,
            wire_dtype: WireDtype::F32,
            prefetch: true,
            force: false,
            memory_budget_mb: None,
            max_frame_mb: default_max_frame_mb(),
            heartbeat_ms: default_heartbeat_ms(),
            peer_timeout_ms: default_peer_timeout_ms(),
            join_timeout_s: default_join_timeout_s(),
        }
    }

    /// Reads and validates a `node.toml`.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        let mut cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| Error::Config { path: path.into(), msg: e.to_string() })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        cfg.model = resolve(dir, &cfg.model);
        cfg.key_file = cfg.key_file.map(|k| resolve(dir, &k));
        cfg.validate().map_err(|msg| Error::Config { path: path.into(), msg })?;
        if cfg.key_file.is_none() && (cfg.world > 1 || !cfg.is_head()) {
            return Err(Error::Config {
                path: path.into(),
                msg: "key_file is required for a cluster (generate one with `prima keygen FILE`)".into(),
            });
        }
        Ok(cfg)
    }

    pub fn is_head(&self) -> bool {
        self.rank == 0
    }

    /// Checks the fields that serde cannot (the key is checked where it is loaded).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.world == 0 {
            return Err("world must be at least 1".into());
        }
        if self.is_head() && self.rank >= self.world {
            return Err(format!("rank {} is not below world {}", self.rank, self.world));
        }
        if self.n_ctx == 0 {
            return Err("n_ctx must be positive".into());
        }
        if self.n_parallel == 0 || self.n_parallel > 256 {
            return Err("n_parallel must be in 1..=256".into());
        }
        if self.n_ctx / self.n_parallel < 8 {
            return Err(format!("n_ctx {} leaves too few positions for {} sequences", self.n_ctx, self.n_parallel));
        }
        if self.threads == Some(0) {
            return Err("threads must be positive".into());
        }
        if self.max_frame_mb == 0 || self.max_frame_mb > 4096 {
            return Err("max_frame_mb must be in 1..=4096".into());
        }
        if self.heartbeat_ms == 0 || self.peer_timeout_ms <= self.heartbeat_ms {
            return Err("peer_timeout_ms must exceed heartbeat_ms (> 0)".into());
        }
        if self.server.is_some() && !self.is_head() {
            return Err("[server] is set on the head only".into());
        }
        if self.server.as_ref().is_some_and(|s| s.max_queue == 0) {
            return Err("[server] max_queue must be at least 1".into());
        }
        if let Some(w) = &self.layer_window {
            if !self.is_head() {
                return Err("layer_window is set on the head only".into());
            }
            if w.len() != self.world as usize {
                return Err(format!("layer_window has {} entries for a world of {}", w.len(), self.world));
            }
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(format!("listen = {:?} is not an IP:port address", self.listen));
        }
        Ok(())
    }

    /// Positions of each sequence's KV cache.
    pub fn slot_ctx(&self) -> usize {
        self.n_ctx / self.n_parallel.max(1)
    }

    pub fn max_frame_bytes(&self) -> usize {
        (self.max_frame_mb as usize) << 20
    }
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::result::Result<NodeConfig, String> {
        let cfg: NodeConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn minimal_head_gets_defaults() {
        let c = parse("rank = 0\nmodel = \"m.gguf\"\nhead = \"127.0.0.1:9700\"\n").unwrap();
        assert_eq!((c.world, c.n_ctx, c.wire_dtype, c.prefetch, c.force), (1, 4096, WireDtype::F32, true, false));
    }

    #[test]
    fn a_server_table_fills_in_its_defaults() {
        let c = parse("rank = 0\nmodel = \"m.gguf\"\nhead = \"h:1\"\nn_parallel = 4\n[server]\nport = 9000\n").unwrap();
        assert_eq!(c.slot_ctx(), 1024);
        let s = c.server.unwrap();
        assert_eq!((s.host.as_str(), s.port, s.max_queue, s.api_key), ("127.0.0.1", 9000, 64, None));
    }

    #[test]
    fn a_cluster_config_needs_a_key_file() {
        let dir = std::env::temp_dir().join(format!("prima-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("node.toml");
        std::fs::write(&p, "rank = 1\nmodel = \"m.gguf\"\nhead = \"127.0.0.1:9700\"\n").unwrap();
        assert!(NodeConfig::load(&p).unwrap_err().to_string().contains("key_file"));
        std::fs::write(&p, "rank = 1\nmodel = \"m.gguf\"\nhead = \"h:1\"\nkey_file = \"k\"\n").unwrap();
        let c = NodeConfig::load(&p).unwrap();
        assert_eq!((c.model, c.key_file), (dir.join("m.gguf"), Some(dir.join("k"))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_what_cannot_work() {
        let base = "model = \"m.gguf\"\nhead = \"127.0.0.1:9700\"\n";
        for (extra, why) in [
            ("rank = 0\nworld = 2\nkey_file = \"k\"\nlayer_window = [30]\n", "entries"),
            ("rank = 0\nlisten = \"localhost\"\n", "IP:port"),
            ("rank = 0\nwire_dtype = \"bf16\"\n", "unknown variant"),
            ("rank = 0\ncolour = 3\n", "unknown field"),
            ("rank = 0\nheartbeat_ms = 10\npeer_timeout_ms = 5\n", "peer_timeout_ms"),
            ("rank = 0\nn_parallel = 0\n", "n_parallel"),
            ("rank = 0\nn_ctx = 64\nn_parallel = 16\n", "too few positions"),
            ("rank = 1\nkey_file = \"k\"\n[server]\nport = 8080\n", "head only"),
            ("rank = 0\n[server]\nprot = 8080\n", "unknown field"),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(why), "{extra:?}: {err}");
        }
    }
}
