//! A transformer model (llama, qwen2) over a mapped GGUF file: weights located in place, and the
//! forward pass of any contiguous range of layers, so a ring node can run just its window.

use std::ops::Range;
use std::sync::Arc;

use gguf::{GgmlType, GgufFile};

use crate::error::{Error, Result};
use crate::hparams::{Arch, HParams};
use crate::kv_cache::KvCache;
use crate::matmul::QMatrix;
use crate::ops;
use crate::quant::dequant::dequantize_row;
use crate::team::{with_team, Team, TeamBuffers};

/// A weight matrix located in the mapped file (bytes are borrowed at use).
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    range: Range<usize>,
}

/// The weights of one transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub wo: Weight,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// Which parts of the model to locate: a ring node holds only its layers, and only the head
/// needs the embedding and the output head.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub layers: Range<usize>,
    pub embedding: bool,
    pub output: bool,
}

impl LoadSpec {
    /// Everything: what `prima run` needs.
    pub fn full(n_layer: usize) -> LoadSpec {
        LoadSpec { layers: 0..n_layer, embedding: true, output: true }
    }
}

/// A model bound to its mapped file.
pub struct Model {
    pub file: Arc<GgufFile>,
    pub hp: HParams,
    pub n_vocab: usize,
    pub spec: LoadSpec,
    tok_embd: Option<Weight>,
    output_norm: Option<Vec<f32>>,
    output: Option<Weight>,
    rope_freqs: Option<Vec<f32>>,
    layers: Vec<LayerWeights>,
    /// `PRIMA_DEBUG_SUMS`: print the sum of every intermediate tensor (compare with
    /// llama.cpp's `llama-eval-callback` when chasing a numerical difference).
    debug_sums: bool,
}

fn debug_sum(on: bool, name: &str, il: usize, x: &[f32]) {
    if on {
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        eprintln!("{name}-{il} {s:.6}");
        if let Some(dir) = std::env::var_os("PRIMA_DEBUG_DUMP") {
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let path = std::path::Path::new(&dir).join(format!("{name}-{il}.f32"));
            if let Err(e) = std::fs::write(&path, bytes) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
    }
}

fn locate(file: &GgufFile, name: &str, n_in: Option<usize>, n_out: Option<usize>) -> Result<Weight> {
    let info = file.tensor_info(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    let (cols, rows) = match info.dims.as_slice() {
        [c, r] => (*c as usize, *r as usize),
        dims => {
            return Err(Error::Shape { name: name.to_string(), msg: format!("expected 2 dimensions, found {dims:?}") })
        }
    };
    if n_in.is_some_and(|n| n != cols) || n_out.is_some_and(|n| n != rows) {
        return Err(Error::Shape {
            name: name.to_string(),
            msg: format!("expected [{n_in:?}, {n_out:?}], found [{cols}, {rows}]"),
        });
    }
    let start = (file.header().data_offset + info.offset) as usize;
    let w = Weight {
        name: name.to_string(),
        ty: info.ggml_type,
        n_in: cols,
        n_out: rows,
        range: start..start + info.n_bytes as usize,
    };
    // Validate once here so that every later `matrix()` is infallible.
    QMatrix::new(name, w.ty, w.n_in, w.n_out, &file.bytes()[w.range.clone()])?;
    Ok(w)
}

fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let (info, bytes) = file.tensor(name)?;
    if info.n_elements() != len as u64 {
        return Err(Error::Shape {
            name: name.to_string(),
            msg: format!("expected {len} elements, found {:?}", info.dims),
        });
    }
    let mut out = vec![0.0; len];
    dequantize_row(info.ggml_type, bytes, &mut out)?;
    Ok(out)
}

impl Model {
    /// Locates the tensors named by `spec` in `file` and checks their shapes.
    pub fn load(file: Arc<GgufFile>, spec: LoadSpec) -> Result<Model> {
        let hp = HParams::from_metadata(file.metadata())?;
        if spec.layers.end > hp.n_layer || spec.layers.start > spec.layers.end {
            return Err(Error::BadHParam(format!(
                "layer range {:?} is outside the model's {} layers",
                spec.layers, hp.n_layer
            )));
        }
        let f = &*file;
        let embd_info =
            f.tensor_info("token_embd.weight").ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        let n_vocab = embd_info.dims.get(1).copied().unwrap_or(0) as usize;
        let (e, q, kv, ff) = (hp.n_embd, hp.n_embd_q(), hp.n_embd_kv(), hp.n_ff);
        let mut layers = Vec::with_capacity(spec.layers.len());
        for i in spec.layers.clone() {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
                match hp.arch {
                    Arch::Qwen2 => vector(f, &n(s), len).map(Some),
                    Arch::Llama if f.tensor_info(&n(s)).is_some() => vector(f, &n(s), len).map(Some),
                    Arch::Llama => Ok(None),
                }
            };
            layers.push(LayerWeights {
                attn_norm: vector(f, &n("attn_norm.weight"), e)?,
                wq: locate(f, &n("attn_q.weight"), Some(e), Some(q))?,
                wk: locate(f, &n("attn_k.weight"), Some(e), Some(kv))?,
                wv: locate(f, &n("attn_v.weight"), Some(e), Some(kv))?,
                wo: locate(f, &n("attn_output.weight"), Some(q), Some(e))?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                ffn_norm: vector(f, &n("ffn_norm.weight"), e)?,
                gate: locate(f, &n("ffn_gate.weight"), Some(e), Some(ff))?,
                up: locate(f, &n("ffn_up.weight"), Some(e), Some(ff))?,
                down: locate(f, &n("ffn_down.weight"), Some(ff), Some(e))?,
            });
        }
        let tok_embd = if spec.embedding || (spec.output && f.tensor_info("output.weight").is_none()) {
            Some(locate(f, "token_embd.weight", Some(e), None)?)
        } else {
            None
        };
        let (output_norm, output) = if spec.output {
            let out = match f.tensor_info("output.weight") {
                Some(_) => locate(f, "output.weight", Some(e), Some(n_vocab))?,
                // Tied embeddings: the output head is the embedding matrix.
                None => locate(f, "token_embd.weight", Some(e), Some(n_vocab))?,
            };
            (Some(vector(f, "output_norm.weight", e)?), Some(out))
        } else {
            (None, None)
        };
        let rope_freqs = match f.tensor_info("rope_freqs.weight") {
            Some(_) => Some(vector(f, "rope_freqs.weight", hp.n_rot / 2)?),
            None => None,
        };
        let debug_sums = std::env::var_os("PRIMA_DEBUG_SUMS").is_some();
        Ok(Model { file, hp, n_vocab, spec, tok_embd, output_norm, output, rope_freqs, layers, debug_sums })
    }

    fn matrix(&self, w: &Weight) -> QMatrix<'_> {
        QMatrix { ty: w.ty, n_in: w.n_in, n_out: w.n_out, data: &self.file.bytes()[w.range.clone()] }
    }

    /// The weights of layer `il` (absolute index), if this model part holds it.
    pub fn layer(&self, il: usize) -> Option<&LayerWeights> {
        il.checked_sub(self.spec.layers.start).and_then(|i| self.layers.get(i))
    }

    /// Writes the embeddings of `tokens` into `hidden` (`tokens.len() × n_embd`).
    pub fn embed(&self, tokens: &[u32], hidden: &mut Vec<f32>) -> Result<()> {
        let w = self.tok_embd.as_ref().ok_or(Error::NotLoaded("token embedding"))?;
        let m = self.matrix(w);
        let e = self.hp.n_embd;
        hidden.resize(tokens.len() * e, 0.0);
        for (&t, row) in tokens.iter().zip(hidden.chunks_exact_mut(e)) {
            if t as usize >= m.n_out {
                return Err(Error::BadToken { id: t, n_vocab: m.n_out });
            }
            dequantize_row(m.ty, m.row(t as usize), row)?;
        }
        Ok(())
    }

    /// Runs layers `layers` (absolute indices, all held by this part) on `hidden`
    /// (`positions.len() × n_embd`, one row per token of one sequence), updating `kv`.
    pub fn forward_layers(
        &self,
        layers: Range<usize>,
        hidden: &mut [f32],
        positions: &[usize],
        kv: &mut KvCache,
        s: &mut Scratch,
    ) -> Result<()> {
        self.with_team(s, |team, s| self.forward_layers_on(team, layers, hidden, positions, kv, s))
    }

    /// Runs `f` on a team of `rayon::current_num_threads()` threads whose buffers come from `s`
    /// (see `team`): one team can serve several calls, e.g. a whole decode step.
    pub fn with_team<'m, R>(&'m self, s: &mut Scratch, f: impl FnOnce(&mut Team<'m, '_>, &mut Scratch) -> R) -> R {
        // The team's buffers leave `s` for the call, so `f` can borrow both.
        let mut bufs = std::mem::take(&mut s.team);
        let res = with_team(rayon::current_num_threads(), &mut bufs, |team| f(team, s));
        s.team = bufs;
        res
    }

    /// [`Model::forward_layers`] on a running team.
    pub fn forward_layers_on<'m>(
        &'m self,
        team: &mut Team<'m, '_>,
        layers: Range<usize>,
        hidden: &mut [f32],
        positions: &[usize],
        kv: &mut KvCache,
        s: &mut Scratch,
    ) -> Result<()> {
        self.forward_batch_on(team, layers, hidden, positions, None, None, std::slice::from_mut(kv), s)
    }

    /// Runs layers `layers` on rows of several sequences at once: row `t` is at position
    /// `positions[t]` of the sequence whose KV cache is `kvs[slots[t]]` (`None`: every row in
    /// `kvs[0]`). The rows of one sequence must be consecutive. The weights are read once for
    /// all rows; attention runs per sequence over its own cache, so every row gets the same
    /// bits as when its sequence runs alone with the same chunks.
    ///
    /// `outputs`: the rows whose final hidden state is wanted (for logits), increasing; `None`:
    /// every row. As in llama.cpp, the model's last layer runs its feed-forward block on those
    /// rows only, and leaves the others' hidden state after its attention block.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_batch_on<'m>(
        &'m self,
        team: &mut Team<'m, '_>,
        layers: Range<usize>,
        hidden: &mut [f32],
        positions: &[usize],
        slots: Option<&[usize]>,
        outputs: Option<&[u32]>,
        kvs: &mut [KvCache],
        s: &mut Scratch,
    ) -> Result<()> {
        let hp = &self.hp;
        let n_tok = positions.len();
        if let Some(o) = outputs {
            if o.iter().any(|&r| r as usize >= n_tok) || o.windows(2).any(|p| p[0] >= p[1]) {
                return Err(Error::BadHParam(format!("output rows {o:?} are not increasing rows of {n_tok}")));
            }
        }
        if let Some(sl) = slots {
            if sl.len() != n_tok {
                return Err(Error::BadHParam(format!("{} slots for {n_tok} rows", sl.len())));
            }
            if let Some(&bad) = sl.iter().find(|&&x| x >= kvs.len()) {
                return Err(Error::BadHParam(format!("KV slot {bad} of {}", kvs.len())));
            }
        } else if kvs.is_empty() {
            return Err(Error::BadHParam("no KV cache".into()));
        }
        if hidden.len() != n_tok * hp.n_embd {
            return Err(Error::BadHParam(format!(
                "hidden state has {} values, expected {n_tok} × {}",
                hidden.len(),
                hp.n_embd
            )));
        }
        let n_ctx = kvs.iter().map(|k| k.n_ctx).min().unwrap_or(0);
        if let Some(&p) = positions.iter().max() {
            if p >= n_ctx {
                return Err(Error::ContextFull { n_ctx });
            }
        }
        let mut res = Ok(());
        for il in layers {
            let Some(lw) = self.layer(il) else {
                res = Err(Error::NotLoaded("layer"));
                break;
            };
            // Where llama.cpp's kernel order depends on the batch, each sequence's rows take the
            // order of its own run (see `QuantizedActs::set_runs`).
            team.set_runs(ops::sequence_runs(slots, n_tok));
            res = self.forward_layer(il, lw, hidden, positions, slots, outputs, kvs, s, team);
            if res.is_err() {
                break;
            }
        }
        team.set_runs([]);
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_layer<'m>(
        &'m self,
        il: usize,
        lw: &LayerWeights,
        hidden: &mut [f32],
        positions: &[usize],
        slots: Option<&[usize]>,
        outputs: Option<&[u32]>,
        kvs: &mut [KvCache],
        s: &mut Scratch,
        team: &mut Team<'m, '_>,
    ) -> Result<()> {
        let slot = |t: usize| slots.map_or(0, |sl| sl[t]);
        let hp = &self.hp;
        let (e, nq, nkv) = (hp.n_embd, hp.n_embd_q(), hp.n_embd_kv());
        let n_tok = positions.len();
        let neox = hp.arch == Arch::Qwen2;

        // Attention block.
        s.xn.resize(n_tok * e, 0.0);
        for (x, o) in hidden.chunks_exact(e).zip(s.xn.chunks_exact_mut(e)) {
            ops::rms_norm(x, &lw.attn_norm, hp.rms_eps, o);
        }
        s.q.resize(n_tok * nq, 0.0);
        s.k.resize(n_tok * nkv, 0.0);
        s.v.resize(n_tok * nkv, 0.0);
        let qkv = [self.matrix(&lw.wq), self.matrix(&lw.wk), self.matrix(&lw.wv)];
        team.matmuls(&qkv, &s.xn, &mut [&mut s.q, &mut s.k, &mut s.v]);
        let dbg = self.debug_sums;
        debug_sum(dbg, "attn_norm", il, &s.xn);
        debug_sum(dbg, "Qcur", il, &s.q);
        debug_sum(dbg, "Kcur", il, &s.k);
        debug_sum(dbg, "Vcur", il, &s.v);
        for (b, out, w) in [(&lw.bq, &mut s.q, nq), (&lw.bk, &mut s.k, nkv), (&lw.bv, &mut s.v, nkv)] {
            if let Some(b) = b {
                for row in out.chunks_exact_mut(w) {
                    row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                }
            }
        }
        let rope = ops::RopeParams {
            n_rot: hp.n_rot,
            freq_base: hp.rope_freq_base,
            freq_scale: hp.rope_freq_scale,
            neox,
            freq_factors: self.rope_freqs.as_deref(),
        };
        for (t, &pos) in positions.iter().enumerate() {
            ops::rope_cache(&rope, pos, &mut s.rope);
            for head in s.q[t * nq..(t + 1) * nq].chunks_exact_mut(hp.head_dim) {
                ops::rope_apply(&rope, &s.rope, head);
            }
            for head in s.k[t * nkv..(t + 1) * nkv].chunks_exact_mut(hp.head_dim) {
                ops::rope_apply(&rope, &s.rope, head);
            }
        }
        debug_sum(dbg, "Qrope", il, &s.q);
        debug_sum(dbg, "Krope", il, &s.k);
        let li = il - self.spec.layers.start;
        for (t, &pos) in positions.iter().enumerate() {
            kvs[slot(t)].store(li, pos, &s.k[t * nkv..(t + 1) * nkv], &s.v[t * nkv..(t + 1) * nkv]);
        }
        if dbg {
            let n = positions.iter().max().map_or(0, |p| p + 1);
            let kv = &kvs[slot(0)];
            let layer = kv.read(li);
            let kf: Vec<f32> = layer.keys(n).iter().map(|v| v.to_f32()).collect();
            let vf: Vec<f32> = layer.values(n).iter().map(|v| v.to_f32()).collect();
            debug_sum(dbg, "cache_k", il, &kf);
            debug_sum(dbg, "cache_v", il, &vf);
        }
        s.attn.resize(n_tok * nq, 0.0);
        // Attention per sequence over its own cache, its (row, head) items shared out on the team.
        team.attention(ops::Attn { hp, kvs, slots, li, q: &s.q, positions }, &mut s.attn, &mut s.att_scratch);
        s.proj.resize(n_tok * e, 0.0);
        debug_sum(dbg, "kqv_out", il, &s.attn);
        team.matmul(&self.matrix(&lw.wo), &s.attn, &mut s.proj);
        debug_sum(dbg, "attn_out", il, &s.proj);
        hidden.iter_mut().zip(&s.proj).for_each(|(h, p)| *h += p);
        debug_sum(dbg, "ffn_inp", il, hidden);

        // Feed-forward block (SwiGLU). In the model's last layer llama.cpp runs it only on the
        // rows whose logits are wanted (`outputs`), each row as a run of its own.
        let rows = if il + 1 == hp.n_layer {
            team.set_runs(std::iter::repeat_n(1, outputs.map_or(n_tok, <[u32]>::len)));
            outputs
        } else {
            None
        };
        self.ffn(il, lw, hidden, rows, s, team);
        debug_sum(dbg, "l_out", il, hidden);
        Ok(())
    }

    /// The feed-forward block (SwiGLU) of layer `il` on the hidden rows `rows` (`None`: every
    /// row), its output added into them.
    fn ffn<'m>(
        &'m self,
        il: usize,
        lw: &LayerWeights,
        hidden: &mut [f32],
        rows: Option<&[u32]>,
        s: &mut Scratch,
        team: &mut Team<'m, '_>,
    ) {
        let hp = &self.hp;
        let (e, ff) = (hp.n_embd, hp.n_ff);
        let n = rows.map_or(hidden.len() / e, <[u32]>::len);
        let row = |j: usize| rows.map_or(j, |r| r[j] as usize);
        if n == 0 {
            return;
        }
        s.xn.resize(n * e, 0.0);
        for (j, o) in s.xn.chunks_exact_mut(e).enumerate() {
            let r = row(j);
            ops::rms_norm(&hidden[r * e..(r + 1) * e], &lw.ffn_norm, hp.rms_eps, o);
        }
        s.gate.resize(n * ff, 0.0);
        s.up.resize(n * ff, 0.0);
        team.matmuls(&[self.matrix(&lw.gate), self.matrix(&lw.up)], &s.xn, &mut [&mut s.gate, &mut s.up]);
        let dbg = self.debug_sums;
        debug_sum(dbg, "ffn_norm", il, &s.xn);
        debug_sum(dbg, "ffn_gate", il, &s.gate);
        debug_sum(dbg, "ffn_up", il, &s.up);
        ops::swiglu(&mut s.gate, &s.up);
        debug_sum(dbg, "ffn_swiglu", il, &s.gate);
        s.proj.resize(n * e, 0.0);
        team.matmul(&self.matrix(&lw.down), &s.gate, &mut s.proj);
        debug_sum(dbg, "ffn_out", il, &s.proj);
        for (j, p) in s.proj.chunks_exact(e).enumerate() {
            let r = row(j);
            hidden[r * e..(r + 1) * e].iter_mut().zip(p).for_each(|(h, p)| *h += p);
        }
    }

    /// Final norm and output head for one hidden row: the logits over the vocabulary.
    pub fn logits(&self, hidden_row: &[f32], logits: &mut Vec<f32>, s: &mut Scratch) -> Result<()> {
        self.with_team(s, |team, s| self.logits_on(team, hidden_row, logits, s))
    }

    /// [`Model::logits`] on a running team.
    pub fn logits_on<'m>(
        &'m self,
        team: &mut Team<'m, '_>,
        hidden_row: &[f32],
        logits: &mut Vec<f32>,
        s: &mut Scratch,
    ) -> Result<()> {
        if hidden_row.len() != self.hp.n_embd {
            return Err(Error::BadHParam("hidden row has the wrong width".into()));
        }
        self.logits_rows_on(team, hidden_row, logits, s)
    }

    /// Final norm and output head for every row of `rows` (`n × n_embd`): `n × n_vocab` logits
    /// into `logits`, the output weights read once for all rows (each row's bits as
    /// [`Model::logits_on`] gives them).
    pub fn logits_rows_on<'m>(
        &'m self,
        team: &mut Team<'m, '_>,
        rows: &[f32],
        logits: &mut Vec<f32>,
        s: &mut Scratch,
    ) -> Result<()> {
        let (norm, out) = match (&self.output_norm, &self.output) {
            (Some(n), Some(o)) => (n, o),
            _ => return Err(Error::NotLoaded("output head")),
        };
        let e = self.hp.n_embd;
        if rows.is_empty() || !rows.len().is_multiple_of(e) {
            return Err(Error::BadHParam("hidden rows have the wrong width".into()));
        }
        let n = rows.len() / e;
        s.xn.resize(n * e, 0.0);
        for (x, o) in rows.chunks_exact(e).zip(s.xn.chunks_exact_mut(e)) {
            ops::rms_norm(x, norm, self.hp.rms_eps, o);
        }
        logits.resize(n * out.n_out, 0.0);
        team.matmul(&self.matrix(out), &s.xn, logits);
        Ok(())
    }

    /// A KV cache for this model part's layers and `n_ctx` positions.
    pub fn new_kv_cache(&self, n_ctx: usize) -> KvCache {
        KvCache::new(self.layers.len(), n_ctx, self.hp.n_embd_kv())
    }
}

/// Buffers reused across tokens so the decode loop does not allocate.
#[derive(Default)]
pub struct Scratch {
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    rope: Vec<f32>,
    /// The calling thread's (a team's helpers keep their own in `TeamBuffers`).
    att_scratch: ops::AttnScratch,
    team: TeamBuffers,
}
