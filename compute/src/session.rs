//! One sequence on a whole (single-device) model: prompt processing and decode steps over a
//! KV cache. The ring splits the same steps across nodes; this is the one-device path.

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{Model, Scratch};

/// Prompt tokens processed per forward call: bounds scratch memory on long prompts.
pub const PREFILL_CHUNK: usize = 256;

/// A sequence's state: its KV cache and how many positions it holds.
pub struct Session<'m> {
    model: &'m Model,
    kv: KvCache,
    scratch: Scratch,
    hidden: Vec<f32>,
    positions: Vec<usize>,
    n_past: usize,
}

impl<'m> Session<'m> {
    /// A session with room for `n_ctx` positions. The model must hold every layer and both ends.
    pub fn new(model: &'m Model, n_ctx: usize) -> Result<Session<'m>> {
        if model.spec.layers != (0..model.hp.n_layer) || !model.spec.embedding || !model.spec.output {
            return Err(Error::NotLoaded("whole model (a session needs every layer)"));
        }
        Ok(Session {
            model,
            kv: model.new_kv_cache(n_ctx),
            scratch: Scratch::default(),
            hidden: Vec::new(),
            positions: Vec::new(),
            n_past: 0,
        })
    }

    /// Positions held so far.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx
    }

    /// Forgets everything from position `n` on (the next token goes to position `n`).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Appends `tokens` to the sequence and writes the logits of the last one into `logits`.
    pub fn feed(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::BadHParam("no tokens to process".into()));
        }
        if self.n_past + tokens.len() > self.kv.n_ctx {
            return Err(Error::ContextFull { n_ctx: self.kv.n_ctx });
        }
        let e = self.model.hp.n_embd;
        let n_layer = self.model.hp.n_layer;
        let (model, kv, hidden, positions, n_past) =
            (self.model, &mut self.kv, &mut self.hidden, &mut self.positions, &mut self.n_past);
        // One team for the whole call: its helpers start once per step, not once per part.
        model.with_team(&mut self.scratch, |team, scratch| {
            let n_chunks = tokens.len().div_ceil(PREFILL_CHUNK);
            for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
                model.embed(chunk, hidden)?;
                positions.clear();
                positions.extend(*n_past..*n_past + chunk.len());
                // Only the last row's logits are wanted: the last layer's feed-forward block
                // runs on that row alone (on none for the chunks before).
                let last_row = [chunk.len() as u32 - 1];
                let outputs: &[u32] = if i + 1 == n_chunks { &last_row } else { &[] };
                let kvs = std::slice::from_mut(&mut *kv);
                model.forward_batch_on(team, 0..n_layer, hidden, positions, None, Some(outputs), kvs, scratch)?;
                *n_past += chunk.len();
            }
            let last = &hidden[hidden.len() - e..];
            model.logits_on(team, last, logits, scratch)
        })
    }
}
