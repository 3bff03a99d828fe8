//! Authenticated, length-prefixed frames over TCP.
//!
//! Handshake (both directions authenticated, nothing secret on the wire):
//! 1. acceptor → connector: `MAGIC`, nonce_a (32 bytes)
//! 2. connector → acceptor: `MAGIC`, nonce_c, HMAC(key, "connect" ‖ nonce_a ‖ nonce_c)
//! 3. acceptor → connector: `1`, HMAC(key, "accept" ‖ nonce_a ‖ nonce_c) — or `0` and close
//!    when the connector's proof is wrong.
//!
//! Frames: `len: u32 LE ‖ payload ‖ tag (16 bytes)`, the tag being the first 16 bytes of
//! HMAC(session key, direction ‖ counter ‖ len ‖ payload) where the session key is
//! HMAC(key, "session" ‖ nonce_a ‖ nonce_c) and the counter numbers the frames of each
//! direction. A forged, replayed, reordered or truncated frame fails the check; `len` is
//! checked against the maximum before anything is allocated.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::auth::{hmac, mac_eq, random_bytes, ClusterKey};
use crate::error::{Error, Result};

/// Protocol magic and handshake version.
const MAGIC: &[u8; 8] = b"PRIMA\0\0\x01";
const TAG_LEN: usize = 16;

/// An authenticated connection, before it is split into its two directions.
pub struct Link {
    pub peer: String,
    reader: LinkReader,
    writer: LinkWriter,
}

/// The receiving half of a link.
pub struct LinkReader {
    peer: String,
    io: BufReader<OwnedReadHalf>,
    key: [u8; 32],
    dir: u8,
    counter: u64,
    max_frame: usize,
    buf: Vec<u8>,
}

/// The sending half of a link.
pub struct LinkWriter {
    peer: String,
    io: BufWriter<OwnedWriteHalf>,
    key: [u8; 32],
    dir: u8,
    counter: u64,
}

fn io_err(peer: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Closed { peer: peer.to_string() }
        } else {
            Error::LinkIo { peer: peer.to_string(), source }
        }
    }
}

async fn timed<T>(
    peer: &str,
    secs: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(secs, f).await.map_err(|_| Error::Timeout {
        peer: peer.to_string(),
        secs: secs.as_secs(),
        what,
    })?
}

impl Link {
    /// Connects to `addr` and authenticates both ways.
    pub async fn connect(addr: &str, key: &ClusterKey, timeout: Duration, max_frame: usize) -> Result<Link> {
        let peer = addr.to_string();
        let stream =
            timed(&peer, timeout, "the connection", async { TcpStream::connect(addr).await.map_err(io_err(&peer)) })
                .await?;
        timed(&peer, timeout, "the handshake", Link::handshake(stream, peer.clone(), key, max_frame, false)).await
    }

    /// Authenticates an accepted connection.
    pub async fn accept(stream: TcpStream, key: &ClusterKey, timeout: Duration, max_frame: usize) -> Result<Link> {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
        timed(&peer, timeout, "the handshake", Link::handshake(stream, peer.clone(), key, max_frame, true)).await
    }

    async fn handshake(
        mut s: TcpStream,
        peer: String,
        key: &ClusterKey,
        max_frame: usize,
        acceptor: bool,
    ) -> Result<Link> {
        let e = io_err(&peer);
        // Frames are small and latency-bound; never wait for Nagle.
        s.set_nodelay(true).map_err(&e)?;
        let auth = |msg: &str| Error::Auth { peer: peer.clone(), msg: msg.to_string() };
        let (nonce_a, nonce_c);
        if acceptor {
            nonce_a = random_bytes::<32>()?;
            s.write_all(MAGIC).await.map_err(&e)?;
            s.write_all(&nonce_a).await.map_err(&e)?;
            let mut m = [0u8; 8 + 32 + 32];
            s.read_exact(&mut m).await.map_err(&e)?;
            check_magic(&m[..8]).map_err(|msg| auth(&msg))?;
            nonce_c = <[u8; 32]>::try_from(&m[8..40]).map_err(|_| auth("short nonce"))?;
            let expect = key.mac(&[b"connect", &nonce_a, &nonce_c]);
            if !mac_eq(&expect, &m[40..]) {
                let _ = s.write_all(&[0]).await;
                return Err(auth("the peer does not know the cluster key (different key_file?)"));
            }
            s.write_all(&[1]).await.map_err(&e)?;
            s.write_all(&key.mac(&[b"accept", &nonce_a, &nonce_c])).await.map_err(&e)?;
        } else {
            let mut m = [0u8; 8 + 32];
            s.read_exact(&mut m).await.map_err(&e)?;
            check_magic(&m[..8]).map_err(|msg| auth(&msg))?;
            nonce_a = <[u8; 32]>::try_from(&m[8..]).map_err(|_| auth("short nonce"))?;
            nonce_c = random_bytes::<32>()?;
            s.write_all(MAGIC).await.map_err(&e)?;
            s.write_all(&nonce_c).await.map_err(&e)?;
            s.write_all(&key.mac(&[b"connect", &nonce_a, &nonce_c])).await.map_err(&e)?;
            let mut verdict = [0u8; 1];
            if s.read_exact(&mut verdict).await.is_err() || verdict[0] != 1 {
                return Err(auth("the peer refused our cluster key (different key_file?)"));
            }
            let mut proof = [0u8; 32];
            s.read_exact(&mut proof).await.map_err(&e)?;
            if !mac_eq(&proof, &key.mac(&[b"accept", &nonce_a, &nonce_c])) {
                return Err(auth("the peer does not know the cluster key (different key_file?)"));
            }
        }
        let session = key.mac(&[b"session", &nonce_a, &nonce_c]);
        let (r, w) = s.into_split();
        // Direction bytes: what the connector sends is 'c', what the acceptor sends is 'a'.
        let (send_dir, recv_dir) = if acceptor { (b'a', b'c') } else { (b'c', b'a') };
        Ok(Link {
            reader: LinkReader {
                peer: peer.clone(),
                io: BufReader::with_capacity(1 << 16, r),
                key: session,
                dir: recv_dir,
                counter: 0,
                max_frame,
                buf: Vec::new(),
            },
            writer: LinkWriter {
                peer: peer.clone(),
                io: BufWriter::with_capacity(1 << 16, w),
                key: session,
                dir: send_dir,
                counter: 0,
            },
            peer: peer.clone(),
        })
    }

    pub fn split(self) -> (LinkReader, LinkWriter) {
        (self.reader, self.writer)
    }

    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        self.writer.send(payload).await
    }

    pub async fn recv(&mut self) -> Result<&[u8]> {
        self.reader.recv().await
    }
}

fn check_magic(m: &[u8]) -> std::result::Result<(), String> {
    if m[..5] != MAGIC[..5] {
        return Err("not a prima node (bad magic)".into());
    }
    if m != MAGIC {
        return Err(format!("handshake version {} (this build speaks {})", m[7], MAGIC[7]));
    }
    Ok(())
}

fn tag(key: &[u8; 32], dir: u8, counter: u64, payload: &[u8]) -> [u8; 32] {
    hmac(key, &[&[dir], &counter.to_le_bytes(), &(payload.len() as u32).to_le_bytes(), payload])
}

impl LinkWriter {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends one frame.
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| Error::Frame {
            peer: self.peer.clone(),
            msg: format!("{} bytes is too large", payload.len()),
        })?;
        let t = tag(&self.key, self.dir, self.counter, payload);
        self.counter += 1;
        let e = io_err(&self.peer);
        self.io.write_all(&len.to_le_bytes()).await.map_err(&e)?;
        self.io.write_all(payload).await.map_err(&e)?;
        self.io.write_all(&t[..TAG_LEN]).await.map_err(&e)?;
        self.io.flush().await.map_err(&e)
    }
}

impl LinkReader {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Receives one frame and checks its MAC. The slice lives until the next call.
    pub async fn recv(&mut self) -> Result<&[u8]> {
        let e = io_err(&self.peer);
        let mut len = [0u8; 4];
        self.io.read_exact(&mut len).await.map_err(&e)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > self.max_frame {
            return Err(Error::Frame {
                peer: self.peer.clone(),
                msg: format!("{len} bytes exceeds the {} byte maximum (max_frame_mb)", self.max_frame),
            });
        }
        self.buf.resize(len + TAG_LEN, 0);
        self.io.read_exact(&mut self.buf).await.map_err(&e)?;
        let (payload, got) = self.buf.split_at(len);
        let want = tag(&self.key, self.dir, self.counter, payload);
        if !mac_eq(&want[..TAG_LEN], got) {
            return Err(Error::Auth {
                peer: self.peer.clone(),
                msg: format!("frame {} fails its MAC (forged, replayed or corrupted)", self.counter),
            });
        }
        self.counter += 1;
        Ok(&self.buf[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    async fn pair(ka: &ClusterKey, kc: &ClusterKey) -> (Result<Link>, Result<Link>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let ka = ka.clone();
        let acc = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            Link::accept(s, &ka, T, 1 << 20).await
        });
        let c = Link::connect(&addr, kc, T, 1 << 20).await;
        (acc.await.unwrap(), c)
    }

    #[tokio::test]
    async fn frames_travel_both_ways() {
        let k = ClusterKey::generate().unwrap();
        let (a, c) = pair(&k, &k).await;
        let (mut a, mut c) = (a.unwrap(), c.unwrap());
        for i in 0..3u8 {
            c.send(&[i; 100]).await.unwrap();
            assert_eq!(a.recv().await.unwrap(), &[i; 100]);
            a.send(&[]).await.unwrap();
            assert_eq!(c.recv().await.unwrap(), &[] as &[u8]);
        }
        drop(c);
        assert!(matches!(a.recv().await, Err(Error::Closed { .. })));
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_on_both_sides() {
        let (a, c) = pair(&ClusterKey::generate().unwrap(), &ClusterKey::generate().unwrap()).await;
        assert!(a.err().unwrap().to_string().contains("does not know the cluster key"));
        assert!(c.err().unwrap().to_string().contains("refused our cluster key"));
    }

    #[tokio::test]
    async fn injected_and_oversized_frames_are_rejected() {
        let k = ClusterKey::generate().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let k2 = k.clone();
        let acc = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut link = Link::accept(s, &k2, T, 1 << 10).await.unwrap();
            link.recv().await.map(|b| b.to_vec())
        });
        let c = Link::connect(&addr, &k, T, 1 << 10).await.unwrap();
        let (_, mut w) = c.split();
        // A frame whose tag is wrong (as an attacker without the key would produce).
        let payload = b"hello";
        w.io.write_all(&(payload.len() as u32).to_le_bytes()).await.unwrap();
        w.io.write_all(payload).await.unwrap();
        w.io.write_all(&[0u8; TAG_LEN]).await.unwrap();
        w.io.flush().await.unwrap();
        let first = acc.await.unwrap();
        assert!(first.unwrap_err().to_string().contains("fails its MAC"));

        let (a, c) = pair(&k, &k).await;
        let (mut a, mut c) = (a.unwrap(), c.unwrap());
        a.reader.max_frame = 8;
        c.send(&[0; 9]).await.unwrap();
        assert!(a.recv().await.unwrap_err().to_string().contains("exceeds"));
    }

    #[tokio::test]
    async fn a_stranger_speaking_another_protocol_gets_a_clear_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").await.unwrap();
        });
        let err = Link::connect(&addr, &ClusterKey::generate().unwrap(), T, 1024).await.err().unwrap();
        assert!(err.to_string().contains("not a prima node"), "{err}");
    }
}
