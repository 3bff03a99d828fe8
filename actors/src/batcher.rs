//! Batcher (head): continuous batching. Up to `n_slots` sequences run at once, each in its own
//! KV slot on every node; a ring step carries one row per decoding sequence (the weights are
//! read once for all of them) and at most one prefill chunk, so a long prompt does not stall
//! the others. New requests take a free slot between steps; finished and cancelled ones free
//! theirs at once.
//!
//! Every row gets the bits it would get alone: prompts are cut into the same chunks as
//! `Session`'s, the matrix kernels give each row the bits of the one-row kernel, and attention
//! runs per sequence over its own cache. A slot's cache is indexed by position, so a freed slot
//! needs no clearing: the next sequence overwrites it, and reuses the longest prefix it shares
//! with what the slot holds (a chat turn re-sends the whole conversation).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use compute::session::PREFILL_CHUNK;
use compute::{Sampler, SamplerConfig};
use gguf::Tokenizer;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use runtime::Hop;
use tokio::sync::mpsc::UnboundedSender;

use crate::compute::{ComputeMsg, Step};

/// Prefill-only steps in the ring at once: a long prompt's chunks are pipelined over the nodes.
const MAX_IN_FLIGHT: usize = 4;

/// A generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Prompt token ids (tokenize with [`crate::Node::tokenizer`]).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub n_predict: usize,
    pub sampling: SamplerConfig,
    /// Collect per-hop timings of every decoded token.
    pub trace: bool,
}

/// Timings of a finished request.
#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub n_prompt: usize,
    /// Prompt tokens whose KV was already in the caches.
    pub n_reused: usize,
    pub prompt_ms: f64,
    pub n_gen: usize,
    pub gen_ms: f64,
    /// Why generation stopped: "eog", "length" or "context".
    pub stop: &'static str,
    /// Per-hop timings of each decoded token (when traced).
    pub hops: Vec<Vec<Hop>>,
}

/// What a request's stream yields.
#[derive(Clone, Debug)]
pub enum Event {
    Token(u32),
    Done(GenerationStats),
    Error(String),
}

pub enum BatcherMsg {
    /// A request with its task id (unique per node, chosen by `Node::generate`).
    Generate(u64, GenerateRequest, UnboundedSender<Event>),
    /// Stop a queued or running request; its stream ends with `Error("cancelled")`.
    Cancel(u64),
    /// A step came back round the ring with the logits of the rows it asked for.
    Back { request: u64, step: u32, logits: Vec<Vec<f32>>, trace: Option<Vec<Hop>> },
    /// The ring is broken: fail every request with this message.
    Fail(String),
}

/// A running sequence.
struct Seq {
    id: u64,
    tx: UnboundedSender<Event>,
    req: GenerateRequest,
    sampler: Sampler,
    stats: GenerationStats,
    t0: Instant,
    t_gen: Option<Instant>,
    /// Admission order (prefill goes first come, first served).
    order: u64,
    /// Prompt tokens from here on are not sent yet.
    prompt_sent: usize,
    /// Positions written (or on their way) in the slot.
    n_past: usize,
    /// The sampled token to feed next.
    next: Option<u32>,
    /// A step that brings this sequence's logits is in the ring.
    waiting: bool,
}

#[derive(Default)]
struct Slot {
    seq: Option<Seq>,
    /// Tokens whose KV this slot holds (or will, once the steps in flight pass), from 0.
    fed: Vec<u32>,
}

pub struct BatcherState {
    compute: ActorRef<ComputeMsg>,
    tok: Arc<Tokenizer>,
    /// Positions per slot.
    n_ctx: usize,
    slots: Vec<Slot>,
    queue: VecDeque<(u64, GenerateRequest, UnboundedSender<Event>)>,
    /// Steps in the ring: for each, the (slot, sequence) of every logit row, in order.
    in_flight: BTreeMap<u32, Vec<(usize, u64)>>,
    next_step: u32,
    admitted: u64,
    busy: Arc<AtomicUsize>,
    /// Decode steps in flight at once (the ring's length).
    pipeline: usize,
    failed: Option<String>,
}

pub struct Batcher;

pub struct BatcherArgs {
    pub compute: ActorRef<ComputeMsg>,
    pub tokenizer: Arc<Tokenizer>,
    /// Positions per slot.
    pub n_ctx: usize,
    /// Sequences decoded together.
    pub n_slots: usize,
    /// Slots in use, for metrics.
    pub busy: Arc<AtomicUsize>,
    /// Nodes in the ring: decode steps kept in flight at once, so every node has one to work on.
    pub pipeline: usize,
}

impl BatcherState {
    /// Why a request cannot run, if it cannot.
    fn refuse(&self, req: &GenerateRequest) -> Option<String> {
        if req.prompt.is_empty() {
            return Some("empty prompt".into());
        }
        if req.prompt.len() >= self.n_ctx {
            return Some(format!("the prompt has {} tokens; the context holds {}", req.prompt.len(), self.n_ctx));
        }
        let bad = req.prompt.iter().find(|&&t| t as usize >= self.tok.n_vocab())?;
        Some(format!("token id {bad} is outside the vocabulary"))
    }

    /// Moves queued requests into free slots.
    fn admit(&mut self) {
        while let Some(free) = self.slots.iter().position(|s| s.seq.is_none()) {
            let Some((id, req, tx)) = self.queue.pop_front() else { break };
            if let Some(f) = &self.failed {
                let _ = tx.send(Event::Error(f.clone()));
                continue;
            }
            if let Some(why) = self.refuse(&req) {
                let _ = tx.send(Event::Error(why));
                continue;
            }
            // The free slot sharing the longest prefix with the prompt (at least one token is
            // always computed: its logits start the generation).
            let common = |s: &Slot| s.fed.iter().zip(&req.prompt).take_while(|(a, b)| a == b).count();
            let slot = (free..self.slots.len())
                .filter(|&i| self.slots[i].seq.is_none())
                .max_by_key(|&i| (common(&self.slots[i]), usize::MAX - i))
                .unwrap_or(free);
            let keep = common(&self.slots[slot]).min(req.prompt.len() - 1);
            self.slots[slot].fed.truncate(keep);
            let mut sampler = Sampler::new(req.sampling.clone());
            for &t in &req.prompt {
                sampler.accept(t);
            }
            let stats = GenerationStats { n_prompt: req.prompt.len(), n_reused: keep, ..Default::default() };
            self.admitted += 1;
            self.slots[slot].seq = Some(Seq {
                id,
                tx,
                req,
                sampler,
                stats,
                t0: Instant::now(),
                t_gen: None,
                order: self.admitted,
                prompt_sent: keep,
                n_past: keep,
                next: None,
                waiting: false,
            });
        }
    }

    fn count_busy(&self) {
        self.busy.store(self.slots.iter().filter(|s| s.seq.is_some()).count(), Ordering::Relaxed);
    }

    /// Sends steps while there is work and room in the ring.
    fn pump(&mut self) -> Result<(), String> {
        // Prefill-only steps are pipelined round the ring. Once a sequence decodes, at most one
        // step per node is out: on one node every decoder rides in the same step; on a ring of
        // N, the decoders form up to N groups whose steps follow each other round the ring, so
        // every node has work (prima.cpp's piped ring). A step carries at most one prefill
        // chunk, so a long prompt never holds decoding back by more than a chunk.
        let decoding_phase =
            self.slots.iter().any(|s| s.seq.as_ref().is_some_and(|q| q.prompt_sent == q.req.prompt.len()));
        let limit = if decoding_phase { self.pipeline } else { MAX_IN_FLIGHT.max(self.pipeline) };
        while self.in_flight.len() < limit {
            let decoding: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].seq.as_ref().is_some_and(|s| s.next.is_some() && !s.waiting))
                .collect();
            let prefill = (0..self.slots.len())
                .filter(|&i| self.slots[i].seq.as_ref().is_some_and(|s| s.prompt_sent < s.req.prompt.len()))
                .min_by_key(|&i| self.slots[i].seq.as_ref().map_or(u64::MAX, |s| s.order));
            if decoding.is_empty() && prefill.is_none() {
                break;
            }
            let mut step = Step { request: 0, step: self.next_step, ..Default::default() };
            let mut owners = Vec::new();
            for &i in &decoding {
                let slot = &mut self.slots[i];
                let Some(seq) = slot.seq.as_mut() else { continue };
                let Some(tok) = seq.next.take() else { continue };
                step.request = seq.id;
                step.logit_rows.push(step.tokens.len() as u32);
                step.tokens.push(tok);
                step.positions.push(seq.n_past as u32);
                step.slots.push(i as u32);
                step.trace |= seq.req.trace;
                seq.n_past += 1;
                seq.waiting = true;
                slot.fed.push(tok);
                owners.push((i, seq.id));
            }
            if let Some(i) = prefill {
                let slot = &mut self.slots[i];
                if let Some(seq) = slot.seq.as_mut() {
                    // The same chunks as `Session` (from where the reused prefix ends).
                    let end = (seq.prompt_sent + PREFILL_CHUNK).min(seq.req.prompt.len());
                    let chunk = &seq.req.prompt[seq.prompt_sent..end];
                    step.request = seq.id;
                    for (k, &t) in chunk.iter().enumerate() {
                        step.tokens.push(t);
                        step.positions.push((seq.n_past + k) as u32);
                        step.slots.push(i as u32);
                    }
                    slot.fed.extend_from_slice(chunk);
                    seq.n_past += chunk.len();
                    seq.prompt_sent = end;
                    if end == seq.req.prompt.len() {
                        step.logit_rows.push(step.tokens.len() as u32 - 1);
                        seq.waiting = true;
                        owners.push((i, seq.id));
                    }
                }
            }
            self.in_flight.insert(self.next_step, owners);
            self.next_step = self.next_step.wrapping_add(1);
            self.compute.cast(ComputeMsg::Start(step)).map_err(|e| format!("compute is gone: {e}"))?;
        }
        Ok(())
    }

    fn finish(&mut self, slot: usize, stop: &'static str) {
        if let Some(mut seq) = self.slots[slot].seq.take() {
            seq.stats.stop = stop;
            seq.stats.gen_ms = seq.t_gen.map(|t| t.elapsed().as_secs_f64() * 1e3).unwrap_or(0.0);
            let _ = seq.tx.send(Event::Done(seq.stats));
        }
    }

    fn back(&mut self, step: u32, logits: Vec<Vec<f32>>, trace: Option<Vec<Hop>>) -> Result<(), String> {
        let Some(owners) = self.in_flight.remove(&step) else { return Ok(()) };
        if logits.len() != owners.len() {
            return Err(format!("step {step} came back with {} logit rows for {}", logits.len(), owners.len()));
        }
        for ((slot, id), mut logits) in owners.into_iter().zip(logits) {
            // A sequence cancelled while its step was out: its slot moved on.
            let Some(seq) = self.slots[slot].seq.as_mut().filter(|s| s.id == id) else { continue };
            seq.waiting = false;
            if seq.t_gen.is_none() {
                seq.stats.prompt_ms = seq.t0.elapsed().as_secs_f64() * 1e3;
                seq.t_gen = Some(Instant::now());
            } else if let (Some(t), true) = (&trace, seq.req.trace) {
                seq.stats.hops.push(t.clone());
            }
            let tok = seq.sampler.sample(&mut logits);
            let stop = if self.tok.is_eog(tok) {
                Some("eog")
            } else {
                seq.sampler.accept(tok);
                seq.stats.n_gen += 1;
                if seq.tx.send(Event::Token(tok)).is_err() {
                    Some("cancelled")
                } else if seq.stats.n_gen >= seq.req.n_predict {
                    Some("length")
                } else if seq.n_past >= self.n_ctx {
                    Some("context")
                } else {
                    seq.next = Some(tok);
                    None
                }
            };
            if let Some(stop) = stop {
                self.finish(slot, stop);
            }
        }
        Ok(())
    }

    fn cancel(&mut self, id: u64) {
        if let Some(i) = self.queue.iter().position(|(q, _, _)| *q == id) {
            if let Some((_, _, tx)) = self.queue.remove(i) {
                let _ = tx.send(Event::Error("cancelled".into()));
            }
        } else if let Some(slot) = self.slots.iter_mut().find(|s| s.seq.as_ref().is_some_and(|s| s.id == id)) {
            // Its steps still in the ring are ignored when they come back; the KV positions
            // they write are what `fed` says, so the next sequence can reuse them.
            if let Some(seq) = slot.seq.take() {
                let _ = seq.tx.send(Event::Error("cancelled".into()));
            }
        }
    }

    fn fail(&mut self, msg: String) {
        for slot in &mut self.slots {
            if let Some(seq) = slot.seq.take() {
                let _ = seq.tx.send(Event::Error(msg.clone()));
            }
        }
        for (_, _, tx) in self.queue.drain(..) {
            let _ = tx.send(Event::Error(msg.clone()));
        }
        self.in_flight.clear();
        self.failed = Some(msg);
    }
}

impl Actor for Batcher {
    type Msg = BatcherMsg;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(&self, _me: ActorRef<BatcherMsg>, a: BatcherArgs) -> Result<BatcherState, ActorProcessingErr> {
        Ok(BatcherState {
            compute: a.compute,
            tok: a.tokenizer,
            n_ctx: a.n_ctx,
            slots: (0..a.n_slots.max(1)).map(|_| Slot::default()).collect(),
            queue: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_step: 0,
            admitted: 0,
            busy: a.busy,
            pipeline: a.pipeline.max(1),
            failed: None,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<BatcherMsg>,
        msg: BatcherMsg,
        st: &mut BatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BatcherMsg::Generate(id, req, tx) => st.queue.push_back((id, req, tx)),
            BatcherMsg::Cancel(id) => st.cancel(id),
            BatcherMsg::Back { request: _, step, logits, trace } => st.back(step, logits, trace)?,
            BatcherMsg::Fail(msg) => {
                st.fail(msg);
                st.count_busy();
                return Ok(());
            }
        }
        st.admit();
        st.pump()?;
        st.count_busy();
        Ok(())
    }
}
