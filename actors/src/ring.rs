//! RingLink: the authenticated TCP link to the next node of the ring, and the reader of the
//! link from the previous one. Frames are validated before Compute sees them; a malformed
//! frame or a lost peer is reported to the supervisor with the peer's name, never a panic.

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use runtime::wire::{decode, encode};
use runtime::{Activations, Data, LinkReader, LinkWriter};
use tokio::task::JoinHandle;

use crate::compute::ComputeMsg;
use crate::supervisor::SupervisorMsg;

/// Messages to RingLink.
pub enum RingMsg {
    /// Start reading from the previous node (sent once Compute knows where results go).
    StartReading,
    /// Send a frame to the next node.
    Send(Activations),
}

pub struct RingArgs {
    pub next_rank: u32,
    pub prev_rank: u32,
    pub writer: LinkWriter,
    pub reader: LinkReader,
    pub compute: ActorRef<ComputeMsg>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

pub struct RingState {
    next_rank: u32,
    prev_rank: u32,
    writer: LinkWriter,
    reader: Option<(LinkReader, ActorRef<ComputeMsg>, ActorRef<SupervisorMsg>)>,
    reader_task: Option<JoinHandle<()>>,
    frames_sent: u64,
    bytes_sent: u64,
}

pub struct RingLink;

/// Reads frames from the previous node until the link fails.
async fn read_loop(mut reader: LinkReader, prev: u32, compute: ActorRef<ComputeMsg>, sup: ActorRef<SupervisorMsg>) {
    let fail = |msg: String| {
        let _ = sup.cast(SupervisorMsg::Fatal(msg));
    };
    loop {
        let payload = match reader.recv().await {
            Ok(p) => p,
            Err(e) => return fail(format!("ring link from node {prev}: {e}")),
        };
        let received = Instant::now();
        match decode::<Data>(payload) {
            Ok(Data::Activations(acts)) => {
                if compute.cast(ComputeMsg::Frame { acts, received }).is_err() {
                    return;
                }
            }
            Ok(Data::Hello { .. }) => {
                return fail(format!("ring link from node {prev} ({}): unexpected Hello", reader.peer()))
            }
            Err(e) => return fail(format!("ring link from node {prev} ({}): malformed frame: {e}", reader.peer())),
        }
    }
}

impl Actor for RingLink {
    type Msg = RingMsg;
    type State = RingState;
    type Arguments = RingArgs;

    async fn pre_start(&self, _me: ActorRef<RingMsg>, a: RingArgs) -> Result<RingState, ActorProcessingErr> {
        tracing::info!("ring link: node {} → this node → node {} ({})", a.prev_rank, a.next_rank, a.writer.peer());
        Ok(RingState {
            next_rank: a.next_rank,
            prev_rank: a.prev_rank,
            writer: a.writer,
            reader: Some((a.reader, a.compute, a.supervisor)),
            reader_task: None,
            frames_sent: 0,
            bytes_sent: 0,
        })
    }

    async fn handle(&self, _me: ActorRef<RingMsg>, msg: RingMsg, st: &mut RingState) -> Result<(), ActorProcessingErr> {
        match msg {
            RingMsg::StartReading => {
                if let Some((reader, compute, sup)) = st.reader.take() {
                    st.reader_task = Some(tokio::spawn(read_loop(reader, st.prev_rank, compute, sup)));
                }
            }
            RingMsg::Send(acts) => {
                let payload = encode(&Data::Activations(acts));
                st.writer.send(&payload).await.map_err(|e| format!("ring link to node {}: {e}", st.next_rank))?;
                st.frames_sent += 1;
                st.bytes_sent += payload.len() as u64;
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<RingMsg>, st: &mut RingState) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.reader_task.take() {
            t.abort();
        }
        tracing::debug!("ring link: {} frames, {} bytes sent", st.frames_sent, st.bytes_sent);
        Ok(())
    }
}
