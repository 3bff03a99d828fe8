//! `Node`: one device of a ring, started from a [`NodeConfig`]. Bootstrap (join, plan, ring
//! links) is plain async code; once the ring is formed the node's actors run under a
//! [`NodeSupervisor`](crate::supervisor::NodeSupervisor).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use gguf::Tokenizer;
use ractor::{Actor, ActorRef};
use runtime::auth::ClusterKey;
use runtime::wire::{decode, encode};
use runtime::{Control, Data, Link, LinkReader, LinkWriter, NodeConfig, Plan};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::batcher::{BatcherMsg, Event, GenerateRequest};
use crate::error::{NodeError, Result};
use crate::prefetch::PrefetchConfig;
use crate::shard::{self, Shard};
use crate::supervisor::{ControlPeer, NodeSupervisor, Outcome, SupervisorArgs, SupervisorMsg};

/// Handshakes and single control replies must come within this.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A running node.
pub struct Node {
    rank: u32,
    sup: Option<ActorRef<SupervisorMsg>>,
    sup_task: Option<tokio::task::JoinHandle<()>>,
    batcher: Option<ActorRef<BatcherMsg>>,
    tokenizer: Option<Arc<Tokenizer>>,
    chat_template: Option<String>,
    outcome: watch::Receiver<Outcome>,
    next_task: std::sync::atomic::AtomicU64,
    n_ctx: usize,
    /// Sequences decoded together, and how many are running (head).
    n_slots: usize,
    busy: Arc<std::sync::atomic::AtomicUsize>,
    plan: Option<Plan>,
    windows: Vec<Range<usize>>,
    /// Token latency the scheduler predicted for the plan, seconds (head, automatic plans).
    predicted_s: Option<f64>,
}

/// Where the others reach a node's ring listener: an unspecified IP is replaced by `seen`.
fn reachable(listen: SocketAddr, seen: std::net::IpAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(seen, listen.port())
    } else {
        listen
    }
}

async fn recv_control(link: &mut Link, what: &'static str, within: Duration) -> Result<Control> {
    let peer = link.peer.clone();
    let payload = tokio::time::timeout(within, link.recv()).await.map_err(|_| runtime::Error::Timeout {
        peer: peer.clone(),
        secs: within.as_secs(),
        what,
    })??;
    decode::<Control>(payload).map_err(|msg| runtime::Error::Frame { peer, msg }.into())
}

async fn send_control(link: &mut Link, msg: &Control) -> Result<()> {
    Ok(link.send(&encode(msg)).await?)
}

/// Binds the listener for the ring link from the previous node (`listen` in the config).
async fn bind_ring_listener(cfg: &NodeConfig) -> Result<(TcpListener, SocketAddr)> {
    let listen: SocketAddr =
        cfg.listen.parse().map_err(|_| NodeError::Join(format!("bad listen address {}", cfg.listen)))?;
    let l = TcpListener::bind(listen).await.map_err(|e| NodeError::Join(format!("cannot listen on {listen}: {e}")))?;
    let local = l.local_addr().map_err(|e| NodeError::Join(e.to_string()))?;
    Ok((l, local))
}

/// Connects to the next node and accepts the previous one; both directions at once, since
/// every node of the ring does the same.
async fn form_ring(
    listener: &TcpListener,
    rank: u32,
    prev: u32,
    next_addr: &str,
    key: &ClusterKey,
    max_frame: usize,
    within: Duration,
) -> Result<(LinkReader, LinkWriter)> {
    let accept = async {
        loop {
            let (s, addr) = listener.accept().await.map_err(|e| NodeError::Join(format!("ring listener: {e}")))?;
            let mut link = match Link::accept(s, key, HANDSHAKE, max_frame).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("ring listener: refused {addr}: {e}");
                    continue;
                }
            };
            match link.recv().await.map(decode::<Data>) {
                Ok(Ok(Data::Hello { rank })) if rank == prev => return Ok::<_, NodeError>(link.split().0),
                Ok(Ok(Data::Hello { rank })) => {
                    tracing::warn!("ring listener: node {rank} connected, expected node {prev}")
                }
                other => tracing::warn!("ring listener: {addr} did not introduce itself: {other:?}"),
            }
        }
    };
    let connect = async {
        let mut link = Link::connect(next_addr, key, HANDSHAKE, max_frame).await?;
        link.send(&encode(&Data::Hello { rank })).await?;
        Ok::<_, NodeError>(link.split().1)
    };
    let both = async { tokio::try_join!(accept, connect) };
    tokio::time::timeout(within, both).await.map_err(|_| {
        NodeError::Join(format!("ring links (from node {prev}, to {next_addr}) not up within {} s", within.as_secs()))
    })?
}

impl Node {
    /// Starts a node from its configuration: the head waits until every node has joined and
    /// the ring is up; another node returns once it is part of the ring (or was told it holds
    /// no layer).
    pub async fn spawn(cfg: NodeConfig) -> Result<Node> {
        let key = match &cfg.key_file {
            Some(p) => Some(ClusterKey::load(p)?),
            None => None,
        };
        Node::spawn_with(cfg, key, None).await
    }

    /// As [`Node::spawn`], with the key in memory and (head) an already bound control
    /// listener: what [`crate::Cluster::local`] uses.
    pub async fn spawn_with(cfg: NodeConfig, key: Option<ClusterKey>, control: Option<TcpListener>) -> Result<Node> {
        cfg.validate().map_err(|msg| NodeError::Join(format!("invalid config: {msg}")))?;
        if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(NodeError::Actor("a node needs tokio's multi-threaded runtime".into()));
        }
        if cfg.is_head() {
            spawn_head(cfg, key, control).await
        } else {
            spawn_member(cfg, key).await
        }
    }

    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The layer windows this node runs (empty: not in the ring).
    pub fn windows(&self) -> &[Range<usize>] {
        &self.windows
    }

    /// The head's plan.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// The model's tokenizer (head only).
    /// The token latency the scheduler predicted for this ring's plan, in milliseconds (the
    /// head of an automatically planned ring; `None` when the windows were given by hand).
    pub fn predicted_token_ms(&self) -> Option<f64> {
        self.predicted_s.map(|s| s * 1e3)
    }

    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// The model's chat template, if the file has one (head only).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Starts a request (head only); its tokens stream on the returned channel, ending with
    /// `Done` or `Error`.
    pub fn generate(&self, req: GenerateRequest) -> Result<mpsc::UnboundedReceiver<Event>> {
        self.submit(req).map(|(_, rx)| rx)
    }

    /// As [`Node::generate`], also returning the request's task id (for [`Node::cancel`]).
    pub fn submit(&self, req: GenerateRequest) -> Result<(u64, mpsc::UnboundedReceiver<Event>)> {
        let b = self.batcher.as_ref().ok_or_else(|| NodeError::Protocol("only the head takes requests".into()))?;
        if let Some(e) = self.failure() {
            return Err(NodeError::Lost(e));
        }
        let id = self.next_task.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        b.cast(BatcherMsg::Generate(id, req, tx)).map_err(|_| NodeError::ShuttingDown)?;
        Ok((id, rx))
    }

    /// Stops a queued or running request (its stream ends with `Event::Error("cancelled")`).
    pub fn cancel(&self, task_id: u64) {
        if let Some(b) = &self.batcher {
            let _ = b.cast(BatcherMsg::Cancel(task_id));
        }
    }

    /// Why the node failed, once it has.
    pub fn failure(&self) -> Option<String> {
        match self.outcome.borrow().clone() {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// Positions each sequence may use (the ring's `n_ctx` split over its `n_parallel` sequences).
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Sequences this ring decodes together (`n_parallel`).
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Sequences running now (KV slots in use), on the head.
    pub fn slots_busy(&self) -> usize {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the node ends: `Ok` after a clean shutdown.
    pub async fn wait(&mut self) -> Result<()> {
        let r = loop {
            if let Some(r) = self.outcome.borrow().clone() {
                break r;
            }
            if self.outcome.changed().await.is_err() {
                break Err("the node stopped".into());
            }
        };
        if let Some(t) = self.sup_task.take() {
            let _ = t.await;
        }
        r.map_err(NodeError::Lost)
    }

    /// Stops the node cleanly (the head stops every node).
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(s) = &self.sup {
            let _ = s.cast(SupervisorMsg::Shutdown);
        }
        self.wait().await
    }

    /// Runs a request to the end and returns its tokens and timings.
    pub async fn generate_all(&self, req: GenerateRequest) -> Result<(Vec<u32>, crate::batcher::GenerationStats)> {
        let mut rx = self.generate(req)?;
        let mut out = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token(t) => out.push(t),
                Event::Done(stats) => return Ok((out, stats)),
                Event::Error(e) => return Err(NodeError::Lost(e)),
            }
        }
        Err(NodeError::ShuttingDown)
    }

    /// Stops the node at once, without telling anyone (what a crash looks like to the others).
    pub fn abort(&self) {
        if let Some(s) = &self.sup {
            s.stop(Some("aborted".into()));
        }
    }
}

struct Joined {
    link: Link,
    data_addr: SocketAddr,
    /// Our address as this node sees it (to tell the head's predecessor where to connect).
    local: SocketAddr,
}

async fn spawn_head(cfg: NodeConfig, key: Option<ClusterKey>, control: Option<TcpListener>) -> Result<Node> {
    let (file, fp, hp) = shard::open(&cfg.model)?;
    let tokenizer = Arc::new(
        Tokenizer::from_metadata(file.metadata())
            .map_err(|e| NodeError::Model { path: cfg.model.display().to_string(), msg: format!("tokenizer: {e}") })?,
    );
    if let Some(w) = &cfg.layer_window {
        // Checked before anyone joins: a bad window is the user's to fix, not the nodes'.
        Plan::from_windows(hp.n_layer, w)?;
    }
    let world = cfg.world;
    let max_frame = cfg.max_frame_bytes();
    let (data, data_local) = bind_ring_listener(&cfg).await?;
    let mut joined: BTreeMap<u32, Joined> = BTreeMap::new();
    if world > 1 {
        let key = key.as_ref().ok_or_else(|| NodeError::Join("a cluster needs a key_file".into()))?;
        let control = match control {
            Some(l) => l,
            None => TcpListener::bind(&cfg.head)
                .await
                .map_err(|e| NodeError::Join(format!("cannot listen on {}: {e}", cfg.head)))?,
        };
        tracing::info!(
            "head: waiting for {} node(s) on {}",
            world - 1,
            control.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let deadline = Instant::now() + Duration::from_secs(cfg.join_timeout_s);
        while joined.len() < world as usize - 1 {
            let accepted = tokio::time::timeout_at(deadline, control.accept()).await.map_err(|_| {
                let missing: Vec<u32> = (1..world).filter(|r| !joined.contains_key(r)).collect();
                NodeError::Join(format!(
                    "timed out after {} s waiting for node(s) {missing:?} to join",
                    cfg.join_timeout_s
                ))
            })?;
            let (stream, addr) = accepted.map_err(|e| NodeError::Join(format!("control listener: {e}")))?;
            let local = stream.local_addr().unwrap_or(data_local);
            let mut link = match Link::accept(stream, key, HANDSHAKE, max_frame).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("refused a connection from {addr}: {e}");
                    continue;
                }
            };
            let (rank, peer_fp, data_addr, threads, host) = match recv_control(&mut link, "Join", HANDSHAKE).await {
                Ok(Control::Join { rank, fingerprint, data_addr, threads, host }) => {
                    (rank, fingerprint, data_addr, threads, host)
                }
                other => {
                    tracing::warn!("{addr} did not join: {other:?}");
                    continue;
                }
            };
            let refuse = if rank == 0 || rank >= world {
                Some(format!("rank {rank} is outside 1..{world}"))
            } else if joined.contains_key(&rank) {
                Some(format!("rank {rank} has already joined"))
            } else if peer_fp != fp {
                Some(format!(
                    "its model file differs from the head's (head: {}; node {rank}: {})",
                    fp.short(),
                    peer_fp.short()
                ))
            } else {
                None
            };
            let data_addr = match data_addr.parse::<SocketAddr>() {
                Ok(a) => reachable(a, addr.ip()),
                Err(_) => {
                    tracing::warn!("node {rank} at {addr} sent a bad ring address {data_addr:?}");
                    continue;
                }
            };
            if let Some(reason) = refuse {
                tracing::warn!("refused node {rank} from {addr}: {reason}");
                let _ = send_control(&mut link, &Control::Refused { reason }).await;
                continue;
            }
            tracing::info!("node {rank} joined from {addr} ({host}, {threads} threads)");
            joined.insert(rank, Joined { link, data_addr, local });
        }
    }
    let mut predicted = None;
    let plan = match &cfg.layer_window {
        Some(w) => Plan::from_windows(hp.n_layer, w)?,
        None if world == 1 => Plan::even(hp.n_layer, 1)?,
        None => {
            let auto = auto_plan(&cfg, &file, &hp, &mut joined).await?;
            predicted = Some(auto.schedule.latency);
            auto.plan
        }
    };
    tracing::info!(
        "plan: {} layers, windows {} ({} cycle{}), ring {:?}{}",
        hp.n_layer,
        plan.windows_text(),
        plan.cycles,
        if plan.cycles == 1 { "" } else { "s" },
        plan.ring,
        if cfg.layer_window.is_some() { " (layer_window: the scheduler is skipped)" } else { "" }
    );
    // Where the head's predecessor connects: the head's address as that node sees it.
    let me = plan.node(0).ok_or_else(|| NodeError::Join("the head is not in its own ring".into()))?;
    let head_addr = match joined.get(&me.prev) {
        Some(j) => reachable(data_local, j.local.ip()),
        None => data_local,
    };
    let addrs: BTreeMap<u32, SocketAddr> = joined.iter().map(|(&r, j)| (r, j.data_addr)).collect();
    let addr_of = |r: u32| addrs.get(&r).copied().unwrap_or(head_addr);
    for (&rank, j) in joined.iter_mut() {
        let msg = match plan.node(rank) {
            Some(np) => Control::Plan {
                windows: np.windows.iter().map(|w| (w.start as u32, w.end as u32)).collect(),
                prev: np.prev,
                next: np.next,
                next_addr: addr_of(np.next).to_string(),
                wire_f16: cfg.wire_dtype == runtime::WireDtype::F16,
                n_ctx: cfg.n_ctx as u32,
                n_slots: cfg.n_parallel as u32,
                ring: plan.ring.clone(),
            },
            None => Control::Plan {
                windows: vec![],
                prev: 0,
                next: 0,
                next_addr: String::new(),
                wire_f16: false,
                n_ctx: 0,
                n_slots: 0,
                ring: plan.ring.clone(),
            },
        };
        send_control(&mut j.link, &msg).await?;
    }
    joined.retain(|r, _| plan.ring.contains(r));
    let shard = Arc::new(Shard::load(file, &me.windows, true)?);
    let ring = if plan.ring.len() > 1 {
        let key = key.as_ref().ok_or_else(|| NodeError::Join("a cluster needs a key_file".into()))?;
        let within = Duration::from_secs(cfg.join_timeout_s);
        let (r, w) = form_ring(&data, 0, me.prev, &addr_of(me.next).to_string(), key, max_frame, within).await?;
        Some((me.prev, me.next, r, w))
    } else {
        None
    };
    let mut control = Vec::new();
    for (rank, mut j) in joined {
        match recv_control(&mut j.link, "Ready", Duration::from_secs(cfg.join_timeout_s)).await {
            Ok(Control::Ready) => {}
            Ok(Control::Error { message }) => {
                return Err(NodeError::Join(format!("node {rank} failed to start: {message}")))
            }
            Ok(other) => return Err(NodeError::Protocol(format!("node {rank} sent {other:?} instead of Ready"))),
            Err(e) => return Err(NodeError::Join(format!("node {rank} did not get ready: {e}"))),
        }
        let addr = j.data_addr.to_string();
        let (reader, writer) = j.link.split();
        control.push(ControlPeer { rank, addr, reader, writer });
    }
    tracing::info!("ring ready: {:?}", plan.ring);
    let mut node = start(cfg, 0, shard, ring, control, Some(tokenizer), Some(plan), me.windows).await?;
    node.predicted_s = predicted;
    Ok(node)
}

/// Profiles the head, times every member's link and collects its profile (one device at a
/// time, so that nodes sharing a machine do not measure each other's load), then solves.
async fn auto_plan(
    cfg: &NodeConfig,
    file: &gguf::GgufFile,
    hp: &compute::HParams,
    joined: &mut BTreeMap<u32, Joined>,
) -> Result<crate::planner::AutoPlan> {
    let threads = cfg.threads.unwrap_or_else(default_threads);
    let head = crate::planner::local_profile(cfg, threads)
        .await
        .map_err(|e| NodeError::Join(format!("cannot profile the head: {e}")))?;
    let hidden_bytes = hp.n_embd * cfg.wire_dtype.bytes_per_value();
    let within = Duration::from_secs(cfg.join_timeout_s.max(120));
    let mut profiles = BTreeMap::new();
    for (&rank, j) in joined.iter_mut() {
        let m = crate::planner::survey(&mut j.link, hidden_bytes, within)
            .await
            .map_err(|e| NodeError::Join(format!("node {rank}: {e}")))?;
        tracing::info!(
            "node {rank}: link {:.3} ms per hidden state, {:.2} GB/s for 1 MiB frames",
            m.t_comm * 1e3,
            m.bandwidth / 1e9
        );
        profiles.insert(rank, (m.profile, m.t_comm));
    }
    // The head's own link: the same network, so the members' median stands in for it.
    let mut links: Vec<f64> = profiles.values().map(|p| p.1).collect();
    links.sort_by(f64::total_cmp);
    let head_link = links.get(links.len() / 2).copied().unwrap_or(0.0);
    profiles.insert(0, (head, head_link));
    crate::planner::solve(file, cfg, &profiles)
}

async fn spawn_member(cfg: NodeConfig, key: Option<ClusterKey>) -> Result<Node> {
    let key = key.ok_or_else(|| NodeError::Join("a node needs the cluster key_file".into()))?;
    let (file, fp, _) = shard::open(&cfg.model)?;
    let max_frame = cfg.max_frame_bytes();
    let (data, data_local) = bind_ring_listener(&cfg).await?;
    // The head may start after us: retry refused connections until the join timeout.
    let deadline = Instant::now() + Duration::from_secs(cfg.join_timeout_s);
    let mut link = loop {
        match Link::connect(&cfg.head, &key, HANDSHAKE, max_frame).await {
            Ok(l) => break l,
            Err(runtime::Error::LinkIo { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(NodeError::Join(format!("cannot join the head at {}: {e}", cfg.head))),
        }
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown host".into());
    let threads = cfg.threads.unwrap_or_else(default_threads);
    let join = Control::Join {
        rank: cfg.rank,
        fingerprint: fp,
        data_addr: data_local.to_string(),
        threads: threads as u32,
        host,
    };
    send_control(&mut link, &join).await?;
    tracing::info!("node {}: joined the head at {}; waiting for the plan", cfg.rank, cfg.head);
    let within = Duration::from_secs(cfg.join_timeout_s);
    let plan = loop {
        let msg = recv_control(&mut link, "the plan", within).await?;
        if !crate::planner::answer(&mut link, &msg, &cfg, threads).await? {
            break msg;
        }
    };
    let (windows, prev, next, next_addr, wire_f16, n_ctx, n_slots) = match plan {
        Control::Plan { windows, prev, next, next_addr, wire_f16, n_ctx, n_slots, .. } => {
            (windows, prev, next, next_addr, wire_f16, n_ctx, n_slots)
        }
        Control::Refused { reason } => return Err(NodeError::Refused(reason)),
        other => return Err(NodeError::Protocol(format!("expected a plan from the head, got {other:?}"))),
    };
    let windows: Vec<Range<usize>> = windows.iter().map(|&(a, b)| a as usize..b as usize).collect();
    if windows.is_empty() {
        tracing::info!("No layer is assigned to me, exit");
        let (_tx, outcome) = watch::channel(Some(Ok(())));
        return Ok(Node {
            rank: cfg.rank,
            sup: None,
            sup_task: None,
            batcher: None,
            tokenizer: None,
            chat_template: None,
            outcome,
            next_task: 1.into(),
            n_ctx: 0,
            n_slots: 0,
            busy: Default::default(),
            plan: None,
            windows,
            predicted_s: None,
        });
    }
    let slot_ctx = n_ctx.checked_div(n_slots).unwrap_or(0);
    if windows.iter().any(|w| w.start >= w.end || w.end > file_layers(&file)) || slot_ctx == 0 || n_slots > 256 {
        return Err(NodeError::Protocol(format!(
            "the head sent an impossible plan: windows {windows:?}, n_ctx {n_ctx}, {n_slots} sequences"
        )));
    }
    let shard = match Shard::load(file, &windows, false) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = send_control(&mut link, &Control::Error { message: e.to_string() }).await;
            return Err(e);
        }
    };
    let (r, w) = form_ring(&data, cfg.rank, prev, &next_addr, &key, max_frame, within).await?;
    send_control(&mut link, &Control::Ready).await?;
    let (reader, writer) = link.split();
    let control = vec![ControlPeer { rank: 0, addr: cfg.head.clone(), reader, writer }];
    let mut cfg = cfg;
    cfg.n_ctx = n_ctx as usize;
    cfg.n_parallel = n_slots as usize;
    cfg.wire_dtype = if wire_f16 { runtime::WireDtype::F16 } else { runtime::WireDtype::F32 };
    let rank = cfg.rank;
    start(cfg, rank, shard, Some((prev, next, r, w)), control, None, None, windows).await
}

fn file_layers(file: &gguf::GgufFile) -> usize {
    compute::HParams::from_metadata(file.metadata()).map(|h| h.n_layer).unwrap_or(0)
}

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[allow(clippy::too_many_arguments)]
async fn start(
    cfg: NodeConfig,
    rank: u32,
    shard: Arc<Shard>,
    ring: Option<(u32, u32, LinkReader, LinkWriter)>,
    control: Vec<ControlPeer>,
    tokenizer: Option<Arc<Tokenizer>>,
    plan: Option<Plan>,
    windows: Vec<Range<usize>>,
) -> Result<Node> {
    let (outcome_tx, outcome) = watch::channel(None);
    let (btx, brx) = oneshot::channel();
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let args = SupervisorArgs {
        rank,
        shard: shard.clone(),
        n_ctx: cfg.slot_ctx(),
        n_slots: cfg.n_parallel.max(1),
        busy: busy.clone(),
        pipeline: plan.as_ref().map_or(1, |p| p.ring.len().max(1)),
        threads: cfg.threads.unwrap_or_else(default_threads),
        wire_f16: cfg.wire_dtype == runtime::WireDtype::F16,
        prefetch: PrefetchConfig {
            prefetch: cfg.prefetch,
            force: cfg.force,
            budget: cfg.memory_budget_mb.map(|m| (m as usize) << 20),
        },
        ring,
        control,
        tokenizer: tokenizer.clone(),
        heartbeat: Duration::from_millis(cfg.heartbeat_ms),
        peer_timeout: Duration::from_millis(cfg.peer_timeout_ms),
        outcome: outcome_tx,
        batcher_tx: tokenizer.is_some().then_some(btx),
    };
    let (sup, task) = Actor::spawn(None, NodeSupervisor, args).await.map_err(|e| NodeError::Actor(e.to_string()))?;
    let batcher = if tokenizer.is_some() { brx.await.ok() } else { None };
    let chat_template = if rank == 0 {
        shard.file.metadata().str_opt("tokenizer.chat_template").ok().flatten().map(str::to_string)
    } else {
        None
    };
    Ok(Node {
        rank,
        sup: Some(sup),
        sup_task: Some(task),
        batcher,
        tokenizer,
        chat_template,
        outcome,
        next_task: 1.into(),
        n_ctx: cfg.slot_ctx(),
        n_slots: cfg.n_parallel.max(1),
        busy,
        plan,
        windows,
        predicted_s: None,
    })
}
