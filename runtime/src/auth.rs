//! The shared cluster key and the HMAC-SHA256 helpers of the handshake and frame MACs.
//!
//! The key file holds at least 16 random bytes written as hex (`prima keygen FILE` writes 32).
//! It never travels: a connection proves knowledge of it by answering a fresh challenge, and
//! both ends then derive a session key that authenticates every frame.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Minimum key length in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// A cluster key (secret bytes).
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: Vec<u8>) -> Result<ClusterKey> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(Error::Key {
                path: "<memory>".into(),
                msg: format!("{} bytes, at least {MIN_KEY_BYTES} needed", bytes.len()),
            });
        }
        Ok(ClusterKey(bytes))
    }

    /// Reads a hex key file.
    pub fn load(path: &Path) -> Result<ClusterKey> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        let bad = |msg: String| Error::Key { path: path.into(), msg };
        let hex: String = text.split_whitespace().collect();
        if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("expected hex digits (as written by `prima keygen`)".into()));
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(bad(format!("{} bytes, at least {MIN_KEY_BYTES} needed", bytes.len())));
        }
        Ok(ClusterKey(bytes))
    }

    /// 32 fresh random bytes.
    pub fn generate() -> Result<ClusterKey> {
        Ok(ClusterKey(random_bytes::<32>()?.to_vec()))
    }

    /// Writes the key as hex, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io { path: path.into(), source };
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        use std::io::Write;
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(format!("{hex}\n").as_bytes()).map_err(io)
    }

    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac(&self.0, parts)
    }
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs.
pub(crate) fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Key { path: "<os random source>".into(), msg: e.to_string() })?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("prima-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        let _ = std::fs::remove_file(&p);
        let k = ClusterKey::generate().unwrap();
        k.save(&p).unwrap();
        assert_eq!(ClusterKey::load(&p).unwrap().0, k.0);
        assert!(k.save(&p).is_err(), "never overwrites a key");
        std::fs::write(&p, "abcd\n").unwrap();
        assert!(ClusterKey::load(&p).unwrap_err().to_string().contains("at least 16"));
        std::fs::write(&p, "zz".repeat(20)).unwrap();
        assert!(ClusterKey::load(&p).unwrap_err().to_string().contains("hex"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn constant_time_compare() {
        assert!(mac_eq(b"abc", b"abc"));
        assert!(!mac_eq(b"abc", b"abd"));
        assert!(!mac_eq(b"abc", b"ab"));
    }
}
