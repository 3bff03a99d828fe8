//! `Cluster::local`: N nodes in this process, on 127.0.0.1 with free ports and a fresh key,
//! talking real TCP: the quickest way to try a ring, and what the end-to-end tests use.

use std::path::PathBuf;

use runtime::auth::ClusterKey;
use runtime::{NodeConfig, WireDtype};
use tokio::net::TcpListener;

use crate::error::{NodeError, Result};
use crate::node::Node;

/// Options of a local cluster.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    pub model: PathBuf,
    pub nodes: u32,
    /// Layers per node per cycle (`None`: the scheduler plans from the nodes' profiles).
    pub layer_window: Option<Vec<usize>>,
    /// Compute threads per node.
    pub threads: usize,
    /// Threads of each rank, overriding `threads` (empty: `threads` everywhere).
    pub node_threads: Vec<usize>,
    /// Memory budget of each rank in MiB (empty: none).
    pub memory_budgets_mb: Vec<u64>,
    /// Context shared by the `n_parallel` sequences decoded together.
    pub n_ctx: usize,
    pub n_parallel: usize,
    pub wire_dtype: WireDtype,
}

impl LocalCluster {
    pub fn new(model: impl Into<PathBuf>, nodes: u32) -> LocalCluster {
        LocalCluster {
            model: model.into(),
            nodes,
            layer_window: None,
            threads: 1,
            node_threads: Vec::new(),
            memory_budgets_mb: Vec::new(),
            n_ctx: 4096,
            n_parallel: 1,
            wire_dtype: WireDtype::F32,
        }
    }
}

/// Every node of a local cluster; the head takes the requests.
pub struct Cluster {
    pub head: Node,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts the nodes and waits until the ring is up.
    pub async fn local(opts: LocalCluster) -> Result<Cluster> {
        if opts.nodes == 0 {
            return Err(NodeError::Join("a cluster needs at least one node".into()));
        }
        let key = ClusterKey::generate()?;
        let control =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| NodeError::Join(format!("cannot listen: {e}")))?;
        let head_addr = control.local_addr().map_err(|e| NodeError::Join(e.to_string()))?.to_string();
        let config = |rank: u32| {
            let mut c = NodeConfig::new(rank, opts.model.clone(), head_addr.clone());
            c.world = if rank == 0 { opts.nodes } else { 1 };
            c.listen = "127.0.0.1:0".into();
            c.threads = Some(opts.node_threads.get(rank as usize).copied().unwrap_or(opts.threads));
            c.memory_budget_mb = opts.memory_budgets_mb.get(rank as usize).copied();
            c.n_ctx = opts.n_ctx;
            c.n_parallel = opts.n_parallel;
            c.wire_dtype = opts.wire_dtype;
            c.join_timeout_s = 60;
            if rank == 0 {
                c.layer_window = opts.layer_window.clone();
            }
            c
        };
        let members: Vec<_> =
            (1..opts.nodes).map(|r| tokio::spawn(Node::spawn_with(config(r), Some(key.clone()), None))).collect();
        let head = Node::spawn_with(config(0), Some(key.clone()), Some(control)).await;
        let mut nodes = Vec::new();
        let mut first_err = None;
        for m in members {
            match m.await {
                Ok(Ok(n)) => nodes.push(n),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e.to_string());
                }
                Err(e) => {
                    first_err.get_or_insert(e.to_string());
                }
            }
        }
        if let Err(e) = &head {
            first_err = Some(e.to_string());
        }
        match (head, first_err) {
            (Ok(head), None) => Ok(Cluster { head, nodes }),
            (head, e) => {
                let e = e.unwrap_or_default();
                if let Ok(h) = head {
                    let _ = h.shutdown().await;
                }
                for n in &nodes {
                    n.abort();
                }
                Err(NodeError::Join(e))
            }
        }
    }

    /// Stops every node cleanly.
    pub async fn shutdown(self) -> Result<()> {
        let r = self.head.shutdown().await;
        for mut n in self.nodes {
            let _ = n.wait().await;
        }
        r
    }
}
