//! Batcher (head): takes generation requests, one at a time, splits prompts into prefill
//! chunks, samples each token from the logits that come back round the ring and streams it.
//!
//! The KV caches of the ring hold one sequence, indexed by position; a new request reuses the
//! longest prefix it shares with what the caches already hold (a chat turn re-sends the whole
//! conversation and only its new tokens are computed).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use compute::session::PREFILL_CHUNK;
use compute::{Sampler, SamplerConfig};
use gguf::Tokenizer;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use runtime::Hop;
use tokio::sync::mpsc::UnboundedSender;

use crate::compute::ComputeMsg;

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
    /// A step came back round the ring.
    Back { request: u64, step: u32, logits: Option<Vec<f32>>, trace: Option<Vec<Hop>> },
    /// The ring is broken: fail the request in flight and every later one with this message.
    Fail(String),
}

struct Active {
    id: u64,
    tx: UnboundedSender<Event>,
    req: GenerateRequest,
    sampler: Sampler,
    stats: GenerationStats,
    t0: Instant,
    t_gen: Option<Instant>,
    step: u32,
}

pub struct BatcherState {
    compute: ActorRef<ComputeMsg>,
    tok: Arc<Tokenizer>,
    n_ctx: usize,
    queue: VecDeque<(u64, GenerateRequest, UnboundedSender<Event>)>,
    active: Option<Active>,
    /// Tokens whose KV is in the caches, from position 0.
    fed: Vec<u32>,
    failed: Option<String>,
}

pub struct Batcher;

pub struct BatcherArgs {
    pub compute: ActorRef<ComputeMsg>,
    pub tokenizer: Arc<Tokenizer>,
    pub n_ctx: usize,
}

impl BatcherState {
    fn start_next(&mut self) -> Result<(), String> {
        while self.active.is_none() {
            let Some((id, req, tx)) = self.queue.pop_front() else { return Ok(()) };
            if let Some(f) = &self.failed {
                let _ = tx.send(Event::Error(f.clone()));
                continue;
            }
            if req.prompt.is_empty() {
                let _ = tx.send(Event::Error("empty prompt".into()));
                continue;
            }
            if req.prompt.len() >= self.n_ctx {
                let _ = tx.send(Event::Error(format!(
                    "the prompt has {} tokens; the context holds {}",
                    req.prompt.len(),
                    self.n_ctx
                )));
                continue;
            }
            if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= self.tok.n_vocab()) {
                let _ = tx.send(Event::Error(format!("token id {bad} is outside the vocabulary")));
                continue;
            }
            let keep = self.fed.iter().zip(&req.prompt).take_while(|(a, b)| a == b).count().min(req.prompt.len() - 1);
            self.fed.truncate(keep);
            let mut sampler = Sampler::new(req.sampling.clone());
            for &t in &req.prompt {
                sampler.accept(t);
            }
            let new = &req.prompt[keep..];
            let n_chunks = new.len().div_ceil(PREFILL_CHUNK);
            for (k, chunk) in new.chunks(PREFILL_CHUNK).enumerate() {
                self.compute
                    .cast(ComputeMsg::Start {
                        request: id,
                        step: k as u32,
                        tokens: chunk.to_vec(),
                        first_pos: (keep + k * PREFILL_CHUNK) as u32,
                        want_logits: k + 1 == n_chunks,
                        trace: false,
                    })
                    .map_err(|e| format!("compute is gone: {e}"))?;
            }
            self.fed.extend_from_slice(new);
            let stats = GenerationStats { n_prompt: req.prompt.len(), n_reused: keep, ..Default::default() };
            self.active =
                Some(Active { id, tx, req, sampler, stats, t0: Instant::now(), t_gen: None, step: n_chunks as u32 });
        }
        Ok(())
    }

    fn finish(&mut self, stop: &'static str) -> Result<(), String> {
        if let Some(mut a) = self.active.take() {
            a.stats.stop = stop;
            a.stats.gen_ms = a.t_gen.map(|t| t.elapsed().as_secs_f64() * 1e3).unwrap_or(0.0);
            let _ = a.tx.send(Event::Done(a.stats));
        }
        self.start_next()
    }

    fn back(&mut self, request: u64, logits: Option<Vec<f32>>, trace: Option<Vec<Hop>>) -> Result<(), String> {
        let Some(a) = self.active.as_mut().filter(|a| a.id == request) else {
            return Ok(()); // a step of a cancelled request
        };
        let Some(mut logits) = logits else { return Ok(()) };
        if a.t_gen.is_none() {
            a.stats.prompt_ms = a.t0.elapsed().as_secs_f64() * 1e3;
            a.t_gen = Some(Instant::now());
        }
        if let Some(t) = trace {
            a.stats.hops.push(t);
        }
        let id = a.sampler.sample(&mut logits);
        if self.tok.is_eog(id) {
            return self.finish("eog");
        }
        a.sampler.accept(id);
        a.stats.n_gen += 1;
        if a.tx.send(Event::Token(id)).is_err() {
            return self.finish("cancelled");
        }
        if a.stats.n_gen >= a.req.n_predict {
            return self.finish("length");
        }
        if self.fed.len() >= self.n_ctx {
            return self.finish("context");
        }
        let step = a.step;
        a.step += 1;
        let trace = a.req.trace;
        self.compute
            .cast(ComputeMsg::Start {
                request,
                step,
                tokens: vec![id],
                first_pos: self.fed.len() as u32,
                want_logits: true,
                trace,
            })
            .map_err(|e| format!("compute is gone: {e}"))?;
        self.fed.push(id);
        Ok(())
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
            queue: VecDeque::new(),
            active: None,
            fed: Vec::new(),
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
            BatcherMsg::Generate(id, req, tx) => {
                st.queue.push_back((id, req, tx));
                st.start_next()?;
            }
            BatcherMsg::Cancel(id) => {
                if let Some(i) = st.queue.iter().position(|(q, _, _)| *q == id) {
                    if let Some((_, _, tx)) = st.queue.remove(i) {
                        let _ = tx.send(Event::Error("cancelled".into()));
                    }
                } else if st.active.as_ref().is_some_and(|a| a.id == id) {
                    if let Some(a) = st.active.take() {
                        let _ = a.tx.send(Event::Error("cancelled".into()));
                    }
                    // Steps of the cancelled request still in the ring are ignored when they
                    // come back; the KV positions they wrote are overwritten by the next one.
                    st.start_next()?;
                }
            }
            BatcherMsg::Back { request, step: _, logits, trace } => st.back(request, logits, trace)?,
            BatcherMsg::Fail(msg) => {
                if let Some(a) = st.active.take() {
                    let _ = a.tx.send(Event::Error(msg.clone()));
                }
                for (_, _, tx) in st.queue.drain(..) {
                    let _ = tx.send(Event::Error(msg.clone()));
                }
                st.failed = Some(msg);
            }
        }
        Ok(())
    }
}
