//! Compute: runs this node's layer windows on the frames that reach it and owns their KV
//! caches. On the head it also embeds the tokens a step starts with and computes the logits
//! when a frame has been through every layer.

use std::sync::Arc;
use std::time::Instant;

use compute::{KvCache, Scratch};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use runtime::wire::{pack_hidden, unpack_hidden};
use runtime::{Activations, Hop};

use crate::batcher::BatcherMsg;
use crate::prefetch::PrefetchMsg;
use crate::ring::RingMsg;
use crate::shard::Shard;

/// Messages to Compute.
pub enum ComputeMsg {
    /// Where results go (sent once, before any frame).
    Connect { ring: Option<ActorRef<RingMsg>>, batcher: Option<ActorRef<BatcherMsg>> },
    /// The prefetcher was restarted: its new address.
    Prefetcher(ActorRef<PrefetchMsg>),
    /// Head: embed `tokens` (row `t` at `positions[t]` of the sequence in KV slot `slots[t]`)
    /// and send them round the ring; the logits of `logit_rows` come back.
    Start(Step),
    /// A frame read from the ring link.
    Frame { acts: Activations, received: Instant },
}

/// One ring step of the head: rows of one or more sequences.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub request: u64,
    pub step: u32,
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub logit_rows: Vec<u32>,
    pub trace: bool,
}

pub struct ComputeArgs {
    pub shard: Arc<Shard>,
    pub rank: u32,
    /// Positions per KV slot.
    pub n_ctx: usize,
    /// KV slots (sequences decoded together).
    pub n_slots: usize,
    pub threads: usize,
    pub wire_f16: bool,
    pub prefetcher: ActorRef<PrefetchMsg>,
}

pub struct ComputeState {
    shard: Arc<Shard>,
    rank: u32,
    n_ctx: usize,
    wire_f16: bool,
    /// One cache per KV slot, per window.
    kv: Vec<Vec<KvCache>>,
    scratch: Scratch,
    hidden: Vec<f32>,
    positions: Vec<usize>,
    slots: Vec<usize>,
    pool: rayon::ThreadPool,
    prefetcher: ActorRef<PrefetchMsg>,
    ring: Option<ActorRef<RingMsg>>,
    batcher: Option<ActorRef<BatcherMsg>>,
}

/// What became of a frame after this node's windows ran.
pub enum Outcome {
    /// On to the next node.
    Forward(Activations),
    /// Back at the head after the last layer, with the logits of the rows asked for.
    Back { request: u64, step: u32, logits: Vec<Vec<f32>>, trace: Option<Vec<Hop>> },
}

impl ComputeState {
    /// Embeds tokens (head).
    fn embed(&mut self, tokens: &[u32]) -> Result<(), String> {
        let ends = self.shard.ends.as_ref().ok_or("this node is not the head")?;
        ends.embed(tokens, &mut self.hidden).map_err(|e| e.to_string())
    }

    /// Runs every window of this node that starts where the frame is, for as long as the
    /// next layer is this node's, then says where the frame goes.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        request: u64,
        step: u32,
        first: usize,
        logit_rows: Vec<u32>,
        mut trace: Option<Vec<Hop>>,
        received: Instant,
    ) -> Result<Outcome, String> {
        let shard = self.shard.clone();
        let n_layer = shard.n_layer;
        // Which windows run, in order: every window of this node that starts where the
        // previous one ended (several when the node is alone in the ring).
        let mut plan = Vec::new();
        let mut layer = first;
        while let Some(i) = shard.windows.iter().position(|w| w.layers.start == layer && layer < n_layer) {
            plan.push(i);
            layer = shard.windows[i].layers.end;
        }
        if plan.is_empty() && layer < n_layer && shard.ends.is_none() {
            let held: Vec<_> = shard.windows.iter().map(|w| w.layers.clone()).collect();
            return Err(format!("a frame for layer {layer} reached node {}, which holds {held:?}", self.rank));
        }
        let head_logits = layer == n_layer && !logit_rows.is_empty() && shard.ends.is_some();
        // One thread team for the whole hop: the windows and, on the head, the output head.
        // Nothing to run: the head passing fresh embeddings on, or a relay past the last layer.
        let anchor = plan.first().map(|&i| &shard.windows[i].model).or(shard.ends.as_ref().filter(|_| head_logits));
        let (hidden, positions, kvs, prefetcher) = (&mut self.hidden, &self.positions, &mut self.kv, &self.prefetcher);
        let slots = Some(self.slots.as_slice());
        let mut logits = Vec::new();
        let mut compute_us = 0u64;
        let mut logits_us = 0u64;
        if let Some(anchor) = anchor {
            self.pool.install(|| {
                anchor.with_team(&mut self.scratch, |team, s| -> Result<(), String> {
                    for &i in &plan {
                        let next = (i + 1) % shard.windows.len();
                        let _ = prefetcher.cast(PrefetchMsg::Prefetch(next));
                        let w = &shard.windows[i];
                        let t = Instant::now();
                        w.model
                            .forward_batch_on(
                                team,
                                w.layers.clone(),
                                hidden,
                                positions,
                                slots,
                                Some(&logit_rows),
                                &mut kvs[i],
                                s,
                            )
                            .map_err(|e| format!("layers {:?}: {e}", w.layers))?;
                        compute_us += t.elapsed().as_micros() as u64;
                        let _ = prefetcher.cast(PrefetchMsg::Ran { window: i, next });
                    }
                    if let (true, Some(ends)) = (head_logits, shard.ends.as_ref()) {
                        let t = Instant::now();
                        let e = shard.n_embd;
                        let mut rows = Vec::with_capacity(logit_rows.len() * e);
                        for &r in &logit_rows {
                            rows.extend_from_slice(&hidden[r as usize * e..(r as usize + 1) * e]);
                        }
                        let mut out = Vec::new();
                        ends.logits_rows_on(team, &rows, &mut out, s).map_err(|e| e.to_string())?;
                        let n_vocab = out.len() / logit_rows.len();
                        logits = out.chunks_exact(n_vocab).map(<[f32]>::to_vec).collect();
                        logits_us = t.elapsed().as_micros() as u64;
                    }
                    Ok(())
                })
            })?;
        }
        if let Some(t) = trace.as_mut().filter(|_| layer > first) {
            let mut hop = self.hop(first, layer, compute_us, received);
            hop.node_us = hop.node_us.saturating_sub(logits_us);
            t.push(hop);
        }
        if layer == n_layer && shard.ends.is_some() {
            if let (Some(tr), true) = (trace.as_mut(), head_logits) {
                // The output head, as a hop of no layers starting at `n_layer`.
                tr.push(Hop {
                    rank: self.rank,
                    first_layer: n_layer as u32,
                    n_layers: 0,
                    compute_us: logits_us,
                    node_us: logits_us,
                });
            }
            return Ok(Outcome::Back { request, step, logits, trace });
        }
        // On towards the head (also past the last layer, when the last cycle ended early).
        Ok(Outcome::Forward(Activations {
            request,
            step,
            layer: layer as u32,
            positions: self.positions.iter().map(|&p| p as u32).collect(),
            slots: self.slots.iter().map(|&p| p as u32).collect(),
            f16: self.wire_f16,
            hidden: pack_hidden(&self.hidden, self.wire_f16),
            logit_rows,
            trace,
        }))
    }

    fn hop(&self, first: usize, end: usize, compute_us: u64, received: Instant) -> Hop {
        Hop {
            rank: self.rank,
            first_layer: first as u32,
            n_layers: (end - first) as u32,
            compute_us,
            node_us: received.elapsed().as_micros() as u64,
        }
    }

    /// Checks a frame from the ring and loads its rows.
    fn accept(&mut self, a: &Activations) -> Result<(), String> {
        let e = self.shard.n_embd;
        let rows = a.positions.len();
        if rows == 0 {
            return Err("frame without rows".into());
        }
        if a.layer as usize > self.shard.n_layer {
            return Err(format!("frame for layer {} of a {}-layer model", a.layer, self.shard.n_layer));
        }
        if let Some(&p) = a.positions.iter().find(|&&p| p as usize >= self.n_ctx) {
            return Err(format!("position {p} is outside the context of {}", self.n_ctx));
        }
        if a.slots.len() != rows {
            return Err(format!("{} slots for {rows} rows", a.slots.len()));
        }
        if let Some(&s) = a.slots.iter().find(|&&s| s as usize >= self.n_slots()) {
            return Err(format!("KV slot {s} of {}", self.n_slots()));
        }
        if let Some(&r) = a.logit_rows.iter().find(|&&r| r as usize >= rows) {
            return Err(format!("logits asked for row {r} of {rows}"));
        }
        if a.hidden.len() != rows * e * if a.f16 { 2 } else { 4 } {
            return Err(format!("{} bytes of hidden state for {rows} rows of width {e}", a.hidden.len()));
        }
        unpack_hidden(&a.hidden, a.f16, &mut self.hidden).ok_or("hidden state of the wrong size")?;
        self.positions.clear();
        self.positions.extend(a.positions.iter().map(|&p| p as usize));
        self.slots.clear();
        self.slots.extend(a.slots.iter().map(|&p| p as usize));
        Ok(())
    }

    /// KV slots this node keeps per window.
    fn n_slots(&self) -> usize {
        self.kv.first().map_or(usize::MAX, Vec::len)
    }

    fn deliver(&self, out: Outcome) -> Result<(), String> {
        match out {
            Outcome::Forward(acts) => {
                let ring = self.ring.as_ref().ok_or("no ring link to forward to")?;
                ring.cast(RingMsg::Send(acts)).map_err(|e| format!("ring link is gone: {e}"))
            }
            Outcome::Back { request, step, logits, trace } => {
                let b = self.batcher.as_ref().ok_or("no batcher on this node")?;
                b.cast(BatcherMsg::Back { request, step, logits, trace }).map_err(|e| format!("batcher is gone: {e}"))
            }
        }
    }
}

pub struct Compute;

impl Actor for Compute {
    type Msg = ComputeMsg;
    type State = ComputeState;
    type Arguments = ComputeArgs;

    async fn pre_start(&self, _me: ActorRef<ComputeMsg>, a: ComputeArgs) -> Result<ComputeState, ActorProcessingErr> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(a.threads.max(1))
            .thread_name(move |i| format!("prima-compute-{i}"))
            .build()?;
        let n_slots = a.n_slots.max(1);
        let kv = a
            .shard
            .windows
            .iter()
            .map(|w| (0..n_slots).map(|_| w.model.new_kv_cache(a.n_ctx)).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        let kv_bytes: usize = kv.iter().flatten().map(KvCache::bytes).sum();
        tracing::info!(
            "compute: {} threads, KV cache {:.1} MiB for {} sequence(s) of {} positions",
            a.threads,
            kv_bytes as f64 / 1048576.0,
            n_slots,
            a.n_ctx
        );
        if !a.shard.windows.is_empty() {
            let _ = a.prefetcher.cast(PrefetchMsg::Prefetch(0));
        }
        Ok(ComputeState {
            shard: a.shard,
            rank: a.rank,
            n_ctx: a.n_ctx,
            wire_f16: a.wire_f16,
            kv,
            scratch: Scratch::default(),
            hidden: Vec::new(),
            positions: Vec::new(),
            slots: Vec::new(),
            pool,
            prefetcher: a.prefetcher,
            ring: None,
            batcher: None,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<ComputeMsg>,
        msg: ComputeMsg,
        st: &mut ComputeState,
    ) -> Result<(), ActorProcessingErr> {
        let out = match msg {
            ComputeMsg::Connect { ring, batcher } => {
                st.ring = ring;
                st.batcher = batcher;
                return Ok(());
            }
            ComputeMsg::Prefetcher(p) => {
                st.prefetcher = p;
                return Ok(());
            }
            ComputeMsg::Start(s) => {
                let received = Instant::now();
                tokio::task::block_in_place(|| {
                    if s.positions.len() != s.tokens.len() || s.slots.len() != s.tokens.len() {
                        return Err("a step with mismatched rows".to_string());
                    }
                    st.embed(&s.tokens)?;
                    st.positions.clear();
                    st.positions.extend(s.positions.iter().map(|&p| p as usize));
                    st.slots.clear();
                    st.slots.extend(s.slots.iter().map(|&p| p as usize));
                    st.run(s.request, s.step, 0, s.logit_rows, s.trace.then(Vec::new), received)
                })
            }
            ComputeMsg::Frame { acts, received } => tokio::task::block_in_place(|| {
                st.accept(&acts)?;
                let Activations { request, step, layer, logit_rows, trace, .. } = acts;
                st.run(request, step, layer as usize, logit_rows, trace, received)
            }),
        };
        let out = out?;
        st.deliver(out)?;
        Ok(())
    }
}
