//! NodeSupervisor: owns a node's actors and its control connections. A Prefetcher that fails
//! is restarted; any other failure (a lost peer, a malformed frame, a compute error) ends the
//! node with an error that names what failed, which the head passes on to the request in
//! flight. The outcome is published on a watch channel that `Node::wait` reads.

use std::sync::Arc;
use std::time::Duration;

use gguf::Tokenizer;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use runtime::wire::{decode, encode};
use runtime::{Control, LinkReader, LinkWriter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::batcher::{Batcher, BatcherArgs, BatcherMsg};
use crate::compute::{Compute, ComputeArgs, ComputeMsg};
use crate::prefetch::{PrefetchConfig, PrefetchMsg, Prefetcher};
use crate::ring::{RingArgs, RingLink, RingMsg};
use crate::shard::{ModelShard, Shard};

/// How a node ended: `Ok` after a clean shutdown, `Err(message)` otherwise.
pub type Outcome = Option<Result<(), String>>;

/// A control connection to a peer (the head, or on the head one per node).
pub struct ControlPeer {
    pub rank: u32,
    pub addr: String,
    pub reader: LinkReader,
    pub writer: LinkWriter,
}

pub struct SupervisorArgs {
    pub rank: u32,
    pub shard: Arc<Shard>,
    /// Positions per KV slot.
    pub n_ctx: usize,
    /// KV slots: sequences decoded together.
    pub n_slots: usize,
    /// Head: slots in use (the Batcher keeps it current).
    pub busy: Arc<std::sync::atomic::AtomicUsize>,
    /// Head: nodes in the ring (decode steps in flight at once).
    pub pipeline: usize,
    pub threads: usize,
    pub wire_f16: bool,
    pub prefetch: PrefetchConfig,
    /// Ring links (prev rank, next rank, reader from prev, writer to next); `None` when alone.
    pub ring: Option<(u32, u32, LinkReader, LinkWriter)>,
    /// Head: one per node; other nodes: the head.
    pub control: Vec<ControlPeer>,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    pub outcome: watch::Sender<Outcome>,
    /// Head: receives the batcher's address once it runs.
    pub batcher_tx: Option<tokio::sync::oneshot::Sender<ActorRef<BatcherMsg>>>,
}

pub enum SupervisorMsg {
    /// Something broke: end the node with this error.
    Fatal(String),
    /// Stop cleanly (the head tells the other nodes to stop too).
    Shutdown,
    /// The head stopped the ring because it failed: end with this error, telling no one.
    Stopped(String),
}

pub struct SupervisorState {
    rank: u32,
    shard: Arc<Shard>,
    prefetch: PrefetchConfig,
    prefetcher: ActorCell,
    prefetcher_restarts: u32,
    compute: ActorRef<ComputeMsg>,
    batcher: Option<ActorRef<BatcherMsg>>,
    control_out: Vec<mpsc::UnboundedSender<Control>>,
    tasks: Vec<JoinHandle<()>>,
    outcome: watch::Sender<Outcome>,
    /// Every child but the prefetcher, with its role for messages.
    children: Vec<(ActorCell, &'static str)>,
    ending: bool,
}

pub struct NodeSupervisor;

/// The head's side of one node's control connection: heartbeats in, Shutdown out.
async fn head_control(
    peer: ControlPeer,
    mut out: mpsc::UnboundedReceiver<Control>,
    timeout: Duration,
    sup: ActorRef<SupervisorMsg>,
) {
    let ControlPeer { rank, addr, mut reader, mut writer } = peer;
    let lost = |why: String| {
        let _ = sup.cast(SupervisorMsg::Fatal(format!("node {rank} ({addr}) lost: {why}")));
    };
    loop {
        tokio::select! {
            msg = out.recv() => {
                let Some(msg) = msg else { return };
                let last = matches!(msg, Control::Shutdown { .. });
                if let Err(e) = writer.send(&encode(&msg)).await {
                    if !last { lost(e.to_string()); }
                    return;
                }
                if last { return; }
            }
            r = tokio::time::timeout(timeout, reader.recv()) => match r {
                Err(_) => return lost(format!("no heartbeat for {} ms", timeout.as_millis())),
                Ok(Err(e)) => return lost(e.to_string()),
                Ok(Ok(payload)) => match decode::<Control>(payload) {
                    Ok(Control::Heartbeat | Control::Ready) => {}
                    Ok(Control::Error { message }) => {
                        let _ = sup.cast(SupervisorMsg::Fatal(format!("node {rank} ({addr}) failed: {message}")));
                        return;
                    }
                    Ok(other) => return lost(format!("unexpected control message {other:?}")),
                    Err(e) => return lost(format!("malformed control frame: {e}")),
                },
            }
        }
    }
}

/// A node's side of its control connection: heartbeats out, Shutdown in.
async fn node_control(
    peer: ControlPeer,
    mut out: mpsc::UnboundedReceiver<Control>,
    beat: Duration,
    sup: ActorRef<SupervisorMsg>,
) {
    let ControlPeer { addr, mut reader, mut writer, .. } = peer;
    let mut tick = tokio::time::interval(beat);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = writer.send(&encode(&Control::Heartbeat)).await {
                    let _ = sup.cast(SupervisorMsg::Fatal(format!("lost the head ({addr}): {e}")));
                    return;
                }
            }
            msg = out.recv() => {
                let Some(msg) = msg else { return };
                let _ = writer.send(&encode(&msg)).await;
            }
            r = reader.recv() => match r.map(decode::<Control>) {
                Ok(Ok(Control::Shutdown { error: None })) => {
                    let _ = sup.cast(SupervisorMsg::Shutdown);
                    return;
                }
                Ok(Ok(Control::Shutdown { error: Some(e) })) => {
                    let _ = sup.cast(SupervisorMsg::Stopped(format!("the head stopped the ring: {e}")));
                    return;
                }
                Ok(Ok(other)) => tracing::warn!("ignoring control message {other:?} from the head"),
                Ok(Err(e)) => {
                    let _ = sup.cast(SupervisorMsg::Fatal(format!("malformed control frame from the head ({addr}): {e}")));
                    return;
                }
                Err(e) => {
                    let _ = sup.cast(SupervisorMsg::Fatal(format!("lost the head ({addr}): {e}")));
                    return;
                }
            },
        }
    }
}

impl NodeSupervisor {
    async fn spawn_prefetcher(
        me: &ActorRef<SupervisorMsg>,
        shard: Arc<Shard>,
        cfg: PrefetchConfig,
    ) -> Result<ActorRef<PrefetchMsg>, ActorProcessingErr> {
        let (p, _) = Actor::spawn_linked(None, Prefetcher, (shard, cfg), me.get_cell()).await?;
        Ok(p)
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        a: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let cell = me.get_cell();
        let (shard_ref, _) = Actor::spawn_linked(None, ModelShard, a.shard.clone(), cell.clone()).await?;
        let prefetcher = NodeSupervisor::spawn_prefetcher(&me, a.shard.clone(), a.prefetch).await?;
        let (compute, _) = Actor::spawn_linked(
            None,
            Compute,
            ComputeArgs {
                shard: a.shard.clone(),
                rank: a.rank,
                n_ctx: a.n_ctx,
                n_slots: a.n_slots,
                threads: a.threads,
                wire_f16: a.wire_f16,
                prefetcher: prefetcher.clone(),
            },
            cell.clone(),
        )
        .await?;
        let mut children = vec![(shard_ref.get_cell(), "model shard"), (compute.get_cell(), "compute")];
        let batcher = match &a.tokenizer {
            Some(tok) => {
                let args = BatcherArgs {
                    compute: compute.clone(),
                    tokenizer: tok.clone(),
                    n_ctx: a.n_ctx,
                    n_slots: a.n_slots,
                    busy: a.busy.clone(),
                    pipeline: a.pipeline,
                };
                let (b, _) = Actor::spawn_linked(None, Batcher, args, cell.clone()).await?;
                children.push((b.get_cell(), "batcher"));
                Some(b)
            }
            None => None,
        };
        let ring = match a.ring {
            Some((prev_rank, next_rank, reader, writer)) => {
                let args =
                    RingArgs { next_rank, prev_rank, writer, reader, compute: compute.clone(), supervisor: me.clone() };
                let (r, _) = Actor::spawn_linked(None, RingLink, args, cell.clone()).await?;
                children.push((r.get_cell(), "ring link"));
                Some(r)
            }
            None => None,
        };
        compute.cast(ComputeMsg::Connect { ring: ring.clone(), batcher: batcher.clone() })?;
        if let Some(r) = &ring {
            r.cast(RingMsg::StartReading)?;
        }
        let mut control_out = Vec::new();
        let mut tasks = Vec::new();
        let head = a.rank == 0;
        for peer in a.control {
            let (tx, rx) = mpsc::unbounded_channel();
            control_out.push(tx);
            tasks.push(if head {
                tokio::spawn(head_control(peer, rx, a.peer_timeout, me.clone()))
            } else {
                tokio::spawn(node_control(peer, rx, a.heartbeat, me.clone()))
            });
        }
        if let (Some(tx), Some(b)) = (a.batcher_tx, &batcher) {
            let _ = tx.send(b.clone());
        }
        Ok(SupervisorState {
            rank: a.rank,
            shard: a.shard,
            prefetch: a.prefetch,
            prefetcher: prefetcher.get_cell(),
            prefetcher_restarts: 0,
            compute,
            batcher,
            control_out,
            tasks,
            outcome: a.outcome,
            children,
            ending: false,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Fatal(why) => st.end(&me, Err(why)),
            SupervisorMsg::Shutdown => st.end(&me, Ok(())),
            SupervisorMsg::Stopped(why) => {
                st.control_out.clear();
                st.end(&me, Err(why));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if st.ending {
            return Ok(());
        }
        match evt {
            SupervisionEvent::ActorFailed(who, err)
                if who.get_id() == st.prefetcher.get_id() && st.prefetcher_restarts < 3 =>
            {
                st.prefetcher_restarts += 1;
                tracing::warn!("prefetcher failed ({err}); restarting it ({} of 3)", st.prefetcher_restarts);
                let p = NodeSupervisor::spawn_prefetcher(&me, st.shard.clone(), st.prefetch).await?;
                st.prefetcher = p.get_cell();
                let _ = st.compute.cast(ComputeMsg::Prefetcher(p));
            }
            SupervisionEvent::ActorFailed(who, err) => {
                let role = st.role(&who);
                st.end(&me, Err(format!("{role}: {err}")));
            }
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                let role = st.role(&who);
                st.end(&me, Err(format!("{role} stopped unexpectedly ({})", reason.unwrap_or_default())));
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(m) = crate::memstat::MemStat::now() {
            tracing::info!("node {}: {}", st.rank, m.summary());
        }
        for t in &st.tasks {
            t.abort();
        }
        st.outcome.send_if_modified(|o| {
            if o.is_none() {
                *o = Some(Err("the node stopped".into()));
                true
            } else {
                false
            }
        });
        Ok(())
    }
}

impl SupervisorState {
    fn role(&self, who: &ActorCell) -> String {
        self.children
            .iter()
            .find(|(c, _)| c.get_id() == who.get_id())
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| format!("actor {}", who.get_id()))
    }

    fn end(&mut self, me: &ActorRef<SupervisorMsg>, result: Result<(), String>) {
        if self.ending {
            return;
        }
        self.ending = true;
        match &result {
            Ok(()) => tracing::info!("node {}: shutting down", self.rank),
            Err(e) => tracing::error!("node {}: {e}", self.rank),
        }
        if let Err(e) = &result {
            if let Some(b) = &self.batcher {
                let _ = b.cast(BatcherMsg::Fail(e.clone()));
            }
        }
        // Head: tell every node to stop. Other nodes: tell the head why we go down.
        let msg = match (&result, self.rank) {
            (r, 0) => Some(Control::Shutdown { error: r.clone().err() }),
            (Err(e), _) => Some(Control::Error { message: e.clone() }),
            (Ok(()), _) => None,
        };
        if let Some(msg) = msg {
            for tx in &self.control_out {
                let _ = tx.send(msg.clone());
            }
        }
        self.outcome.send_replace(Some(result));
        // Give the control tasks a moment to flush their last message, then stop everything.
        let children = std::mem::take(&mut self.children);
        let me = me.clone();
        let prefetcher = self.prefetcher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (c, _) in children {
                c.stop(None);
            }
            prefetcher.stop(None);
            me.stop(None);
        });
    }
}
