//! The messages nodes exchange, archived with rkyv and validated with bytecheck before use.
//!
//! A frame's payload is `[WIRE_VERSION][rkyv archive]`; the link layer (`link.rs`) adds the
//! length prefix and the MAC. Two connections carry two message types: `Control` between the
//! head and each node, `Data` round the ring.

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// Bumped whenever a message type changes shape.
pub const WIRE_VERSION: u8 = 2;

/// Identifies a model file: nodes holding different files are refused at join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Fingerprint {
    pub file_len: u64,
    /// SHA-256 of the header (metadata and tensor directory, up to the data section).
    pub header_sha256: [u8; 32],
}

impl Fingerprint {
    pub fn of(header: &[u8], file_len: u64) -> Fingerprint {
        use sha2::Digest;
        Fingerprint { file_len, header_sha256: sha2::Sha256::digest(header).into() }
    }

    /// Size and the first bytes of the hash, for messages.
    pub fn short(&self) -> String {
        let h: String = self.header_sha256[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("{} bytes, header {h}…", self.file_len)
    }
}

/// Head ↔ node control plane.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Control {
    /// Node → head, first message: who I am, which model I hold, where my ring listener is.
    Join {
        rank: u32,
        fingerprint: Fingerprint,
        data_addr: String,
        threads: u32,
        host: String,
    },
    /// Head → node: measure this device (or load its cached profile) and send it back.
    ProfileRequest,
    /// Node → head: the device profile as JSON (`solver::DeviceProfile`, with the available RAM
    /// already capped by the node's memory budget), or why there is none.
    Profile {
        json: String,
        error: Option<String>,
    },
    /// Head → node, and back unchanged: times the link with a hidden-state-sized payload.
    Echo {
        payload: Vec<u8>,
    },
    /// Head → node: your layers and ring neighbours. `windows` empty: not in the ring, exit.
    Plan {
        windows: Vec<(u32, u32)>,
        prev: u32,
        next: u32,
        next_addr: String,
        wire_f16: bool,
        n_ctx: u32,
        /// Sequences decoded together (KV slots per window, `n_ctx` positions each).
        n_slots: u32,
        ring: Vec<u32>,
    },
    /// Head → node: refused (different model, duplicate rank, …); the node exits.
    Refused {
        reason: String,
    },
    /// Node → head: ring links to both neighbours are up.
    Ready,
    Heartbeat,
    /// Node → head: this node failed and is going down.
    Error {
        message: String,
    },
    /// Head → node: stop; `error` says why when the ring failed (the node then exits with it).
    Shutdown {
        error: Option<String>,
    },
}

/// One hop of a traced frame.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hop {
    pub rank: u32,
    pub first_layer: u32,
    pub n_layers: u32,
    /// Microseconds computing this hop's windows.
    pub compute_us: u64,
    /// Microseconds from reading the frame off the socket to handing the result on.
    pub node_us: u64,
}

/// Hidden states of a batch of rows of one request, on their way to layer `layer`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Activations {
    pub request: u64,
    /// Chunk number within the request (prefill chunks, then one per decoded token).
    pub step: u32,
    /// The next layer to run; `n_layer` when the frame is on its way back to the head.
    pub layer: u32,
    /// Position of each row in its sequence.
    pub positions: Vec<u32>,
    /// KV slot (sequence) of each row; the rows of one sequence are consecutive.
    pub slots: Vec<u32>,
    /// Row-major `positions.len() × n_embd` values, little-endian f32 or f16.
    pub f16: bool,
    pub hidden: Vec<u8>,
    /// Rows whose logits the head wants when this frame comes back (the last row of each
    /// sequence that samples a token after this step).
    pub logit_rows: Vec<u32>,
    /// Per-hop timings, filled in when the head asked for a trace.
    pub trace: Option<Vec<Hop>>,
}

/// Round-the-ring data plane.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Data {
    /// First message on a ring link: the sender's rank (checked against the plan).
    Hello {
        rank: u32,
    },
    Activations(Activations),
}

/// Serialises a message into a frame payload.
pub fn encode<T>(msg: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    let mut out = vec![WIRE_VERSION];
    // Serialising plain owned data into a growable buffer cannot fail; an error would be a
    // bug in rkyv, reported as an empty (and therefore rejected) frame rather than a panic.
    match rkyv::to_bytes::<rancor::Error>(msg) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(e) => tracing::error!("cannot serialise a frame: {e}"),
    }
    out
}

/// Checks the version byte, validates the archive and deserialises it.
pub fn decode<T>(payload: &[u8]) -> std::result::Result<T, String>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let (&version, body) = payload.split_first().ok_or("empty frame")?;
    if version != WIRE_VERSION {
        return Err(format!("wire version {version}, this build speaks {WIRE_VERSION}"));
    }
    // rkyv wants the archive aligned; the receive buffer is not necessarily.
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| format!("invalid archive: {e}"))
}

/// Encodes f32 hidden states for the wire.
pub fn pack_hidden(values: &[f32], f16: bool) -> Vec<u8> {
    if f16 {
        values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
    } else {
        values.iter().flat_map(|&v| v.to_le_bytes()).collect()
    }
}

/// Decodes wire hidden states into `out`; `None` when the byte count does not fit.
pub fn unpack_hidden(bytes: &[u8], f16: bool, out: &mut Vec<f32>) -> Option<()> {
    out.clear();
    if f16 {
        if !bytes.len().is_multiple_of(2) {
            return None;
        }
        out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()));
    } else {
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acts() -> Activations {
        Activations {
            request: 7,
            step: 2,
            layer: 12,
            positions: vec![5, 6],
            f16: false,
            hidden: pack_hidden(&[1.0, -2.5, 3.25, 0.0], false),
            slots: vec![0, 0],
            logit_rows: vec![1],
            trace: Some(vec![Hop { rank: 1, first_layer: 4, n_layers: 8, compute_us: 10, node_us: 12 }]),
        }
    }

    #[test]
    fn messages_round_trip() {
        let d = Data::Activations(acts());
        assert_eq!(decode::<Data>(&encode(&d)).unwrap(), d);
        let c = Control::Join {
            rank: 3,
            fingerprint: Fingerprint::of(b"abc", 99),
            data_addr: "127.0.0.1:1".into(),
            threads: 2,
            host: "pi".into(),
        };
        assert_eq!(decode::<Control>(&encode(&c)).unwrap(), c);
    }

    #[test]
    fn corrupt_payloads_are_errors_not_panics() {
        let good = encode(&Data::Activations(acts()));
        assert!(decode::<Data>(&[]).is_err());
        let mut v = good.clone();
        v[0] = 99;
        assert!(decode::<Data>(&v).unwrap_err().contains("version"));
        for cut in 1..good.len() {
            let _ = decode::<Data>(&good[..cut]);
        }
        let mut rng = 0x2545F4914F6CDD1Du64;
        for _ in 0..2000 {
            let mut v = good.clone();
            for _ in 0..4 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = 1 + (rng as usize) % (v.len() - 1);
                v[i] ^= (rng >> 32) as u8 | 1;
            }
            let _ = decode::<Data>(&v);
            let _ = decode::<Control>(&v);
        }
    }

    /// Writes the seed corpus of the `wire_frame` fuzz target (`fuzz/seeds/wire_frame/`).
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wire_frame");
        std::fs::create_dir_all(&dir).unwrap();
        let fp = Fingerprint::of(b"header", 1234);
        let frames: Vec<(&str, Vec<u8>)> = vec![
            ("activations", encode(&Data::Activations(acts()))),
            ("hello", encode(&Data::Hello { rank: 2 })),
            (
                "join",
                encode(&Control::Join {
                    rank: 1,
                    fingerprint: fp,
                    data_addr: "10.0.0.2:9701".into(),
                    threads: 4,
                    host: "pi".into(),
                }),
            ),
            (
                "plan",
                encode(&Control::Plan {
                    windows: vec![(0, 4), (12, 16)],
                    prev: 2,
                    next: 1,
                    next_addr: "10.0.0.3:9701".into(),
                    wire_f16: true,
                    n_ctx: 4096,
                    n_slots: 4,
                    ring: vec![0, 1, 2],
                }),
            ),
            ("shutdown", encode(&Control::Shutdown { error: Some("node 2 lost".into()) })),
            ("heartbeat", encode(&Control::Heartbeat)),
            ("profile", encode(&Control::Profile { json: "{\"version\":1}".into(), error: None })),
            ("echo", encode(&Control::Echo { payload: vec![0x5a; 64] })),
        ];
        for (name, bytes) in frames {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn hidden_states_pack_both_ways() {
        let x = [1.0f32, -0.5, 1e-3, 65504.0];
        let mut out = Vec::new();
        unpack_hidden(&pack_hidden(&x, false), false, &mut out).unwrap();
        assert_eq!(out, x);
        unpack_hidden(&pack_hidden(&x, true), true, &mut out).unwrap();
        assert!(out.iter().zip(&x).all(|(a, b)| (a - b).abs() <= b.abs() * 1e-3));
        assert!(unpack_hidden(&[1, 2, 3], false, &mut out).is_none());
    }
}
