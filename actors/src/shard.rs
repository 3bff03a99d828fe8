//! ModelShard: the mapped GGUF file and the tensors of the layer windows this node owns.
//!
//! The whole file is mapped (mapping reads nothing), but only the tensors of this node's
//! windows are ever located and touched; the head also locates the embedding and the output
//! head. The core, [`Shard`], is plain and synchronous; the actor hands it out.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use compute::{LoadSpec, Model};
use gguf::GgufFile;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use runtime::Fingerprint;

use crate::error::{NodeError, Result};

/// One layer window: its model part and the byte ranges of its tensors in the file.
pub struct Window {
    pub layers: Range<usize>,
    pub model: Arc<Model>,
    /// Coalesced byte ranges of every tensor of the window's layers.
    pub extents: Vec<Range<usize>>,
}

impl Window {
    pub fn bytes(&self) -> usize {
        self.extents.iter().map(|r| r.len()).sum()
    }
}

/// The parts of the model a node holds.
pub struct Shard {
    pub file: Arc<GgufFile>,
    pub fingerprint: Fingerprint,
    pub n_layer: usize,
    pub n_embd: usize,
    pub windows: Vec<Window>,
    /// Head only: embedding and output head.
    pub ends: Option<Arc<Model>>,
}

/// Opens the file and computes its fingerprint; nothing is located yet.
pub fn open(path: &Path) -> Result<(Arc<GgufFile>, Fingerprint, compute::HParams)> {
    let err = |msg: String| NodeError::Model { path: path.display().to_string(), msg };
    let file = GgufFile::open(path).map_err(|e| err(e.to_string()))?;
    let hp = compute::HParams::from_metadata(file.metadata()).map_err(|e| err(e.to_string()))?;
    let fp = Fingerprint::of(file.header_bytes(), file.file_len());
    Ok((Arc::new(file), fp, hp))
}

impl Shard {
    /// Locates the tensors of `windows` (and of the ends when `head`).
    pub fn load(file: Arc<GgufFile>, windows: &[Range<usize>], head: bool) -> Result<Shard> {
        let path = file.path().display().to_string();
        let err = |e: compute::Error| NodeError::Model { path: path.clone(), msg: e.to_string() };
        let hp = compute::HParams::from_metadata(file.metadata()).map_err(err)?;
        let mut out = Vec::new();
        for w in windows {
            let spec = LoadSpec { layers: w.clone(), embedding: false, output: false };
            let model = Arc::new(Model::load(file.clone(), spec).map_err(err)?);
            out.push(Window { layers: w.clone(), extents: layer_extents(&file, w.clone()), model });
        }
        let ends = if head {
            Some(Arc::new(
                Model::load(file.clone(), LoadSpec { layers: 0..0, embedding: true, output: true }).map_err(err)?,
            ))
        } else {
            None
        };
        Ok(Shard {
            fingerprint: Fingerprint::of(file.header_bytes(), file.file_len()),
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
            windows: out,
            ends,
            file,
        })
    }

    /// Bytes of weights in this node's windows.
    pub fn window_bytes(&self) -> usize {
        self.windows.iter().map(Window::bytes).sum()
    }
}

/// The coalesced byte ranges of the tensors named `blk.N.*` for N in `layers`.
pub fn layer_extents(file: &GgufFile, layers: Range<usize>) -> Vec<Range<usize>> {
    let mut r: Vec<Range<usize>> = file
        .tensors()
        .iter()
        .filter(|t| {
            t.name
                .strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| layers.contains(&n))
        })
        .map(|t| file.tensor_extent(t))
        .collect();
    r.sort_by_key(|x| x.start);
    let mut out: Vec<Range<usize>> = Vec::new();
    for x in r {
        match out.last_mut() {
            // Tensors are padded to the alignment: merge ranges closer than a page.
            Some(last) if x.start <= last.end + 4096 => last.end = last.end.max(x.end),
            _ => out.push(x),
        }
    }
    out
}

/// Messages to the ModelShard actor.
pub enum ShardMsg {
    /// The loaded shard (immutable once loaded, so shared).
    Get(RpcReplyPort<Arc<Shard>>),
}

pub struct ModelShard;

impl Actor for ModelShard {
    type Msg = ShardMsg;
    type State = Arc<Shard>;
    type Arguments = Arc<Shard>;

    async fn pre_start(
        &self,
        _me: ActorRef<ShardMsg>,
        shard: Arc<Shard>,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        tracing::info!(
            "model shard: window(s) {:?}, {:.1} MiB of weights{}",
            shard.windows.iter().map(|w| w.layers.clone()).collect::<Vec<_>>(),
            shard.window_bytes() as f64 / (1 << 20) as f64,
            if shard.ends.is_some() { " + embedding and output head" } else { "" }
        );
        Ok(shard)
    }

    async fn handle(
        &self,
        _me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Get(reply) => {
                let _ = reply.send(st.clone());
            }
        }
        Ok(())
    }
}
