//! Prefetcher: brings this node's next layer window into memory before Compute needs it, and
//! releases a window's pages after it ran when the node's memory budget says so.
//!
//! Reading ahead uses `MADV_WILLNEED` plus explicit reads of the window's byte ranges, through
//! io_uring where the kernel allows it (detected at start; phones and locked-down hosts often
//! refuse it) and `pread` otherwise; `force` additionally touches every page of the next window
//! right after a window ran, so Compute does not take the page faults itself.

use std::fs::File;

use gguf::file::read_at;
use std::ops::Range;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::shard::Shard;

/// Bytes per read request.
const CHUNK: usize = 1 << 20;

/// How window data is read ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    IoUring,
    Pread,
}

/// Prefetch settings of a node.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchConfig {
    pub prefetch: bool,
    pub force: bool,
    /// Resident weight bytes allowed; `None` keeps everything.
    pub budget: Option<usize>,
}

/// The synchronous core: page management over the windows of one shard.
pub struct PageManager {
    shard: Arc<Shard>,
    cfg: PrefetchConfig,
    reader: Option<File>,
    mode: ReadMode,
    #[cfg(target_os = "linux")]
    uring: Option<uring::Reader>,
    buf: Vec<u8>,
    resident: Vec<bool>,
    release: bool,
    pub bytes_read: u64,
}

impl PageManager {
    pub fn new(shard: Arc<Shard>, cfg: PrefetchConfig) -> PageManager {
        let reader = File::open(shard.file.path())
            .map_err(|e| {
                tracing::warn!("prefetcher: cannot reopen {}: {e}; reads disabled", shard.file.path().display())
            })
            .ok();
        #[cfg(target_os = "linux")]
        let uring = if cfg.prefetch && reader.is_some() {
            match uring::Reader::new() {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::info!("prefetcher: io_uring unavailable ({e}); falling back to pread");
                    None
                }
            }
        } else {
            None
        };
        #[cfg(target_os = "linux")]
        let mode = if uring.is_some() { ReadMode::IoUring } else { ReadMode::Pread };
        #[cfg(not(target_os = "linux"))]
        let mode = ReadMode::Pread;
        let total = shard.window_bytes();
        let release = cfg.budget.is_some_and(|b| total > b);
        if cfg.prefetch {
            tracing::info!(
                "prefetcher: {mode:?} reads{}{}",
                if cfg.force { ", force-touching pages" } else { "" },
                if release {
                    format!(
                        ", releasing windows after use ({:.1} MiB of windows > {:.1} MiB budget)",
                        total as f64 / 1048576.0,
                        cfg.budget.unwrap_or(0) as f64 / 1048576.0
                    )
                } else {
                    String::new()
                }
            );
        }
        let n = shard.windows.len();
        PageManager {
            shard,
            cfg,
            reader,
            mode,
            #[cfg(target_os = "linux")]
            uring,
            buf: Vec::new(),
            resident: vec![false; n],
            release,
            bytes_read: 0,
        }
    }

    pub fn mode(&self) -> ReadMode {
        self.mode
    }

    /// Brings window `i` in (once; again after it was released).
    pub fn prefetch(&mut self, i: usize) {
        if !self.cfg.prefetch || self.resident.get(i).copied().unwrap_or(true) {
            return;
        }
        let extents = self.shard.windows[i].extents.clone();
        for r in &extents {
            if let Err(e) = self.shard.file.advise_willneed(r.clone()) {
                tracing::debug!("prefetcher: madvise(WILLNEED) failed: {e}");
            }
        }
        for r in extents {
            self.read(r);
        }
        self.resident[i] = true;
    }

    /// Window `i` has run and `next` runs next on this node.
    pub fn ran(&mut self, i: usize, next: usize) {
        if self.release && i != next {
            for r in &self.shard.windows[i].extents {
                if let Err(e) = self.shard.file.release_pages(r.clone()) {
                    tracing::warn!("prefetcher: madvise(DONTNEED) failed: {e}");
                }
            }
            if let Some(x) = self.resident.get_mut(i) {
                *x = false;
            }
        }
        if self.cfg.force {
            if let Some(w) = self.shard.windows.get(next) {
                for r in &w.extents {
                    self.shard.file.touch_pages(r.clone());
                }
            }
        }
    }

    fn read(&mut self, r: Range<usize>) {
        #[cfg(target_os = "linux")]
        if let (Some(u), Some(f)) = (self.uring.as_mut(), self.reader.as_ref()) {
            match u.read_range(f, r.clone()) {
                Ok(n) => {
                    self.bytes_read += n as u64;
                    return;
                }
                Err(e) => {
                    tracing::warn!("prefetcher: io_uring read failed ({e}); falling back to pread");
                    self.uring = None;
                    self.mode = ReadMode::Pread;
                }
            }
        }
        let Some(f) = self.reader.as_ref() else { return };
        self.buf.resize(CHUNK, 0);
        let mut off = r.start;
        while off < r.end {
            let n = CHUNK.min(r.end - off);
            match read_at(f, &mut self.buf[..n], off as u64) {
                Ok(0) => break,
                Ok(k) => {
                    off += k;
                    self.bytes_read += k as u64;
                }
                Err(e) => {
                    tracing::warn!("prefetcher: read failed: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod uring {
    use std::fs::File;
    use std::ops::Range;
    use std::os::fd::AsRawFd;

    use io_uring::{opcode, types, IoUring};

    const DEPTH: usize = 8;

    /// Buffered reads through io_uring (they fill the page cache, which is the point).
    pub struct Reader {
        ring: IoUring,
        bufs: Vec<Vec<u8>>,
    }

    impl Reader {
        pub fn new() -> std::io::Result<Reader> {
            let mut ring = IoUring::new(DEPTH as u32)?;
            // Probe: some kernels (or seccomp filters) allow setup but refuse submissions.
            let nop = opcode::Nop::new().build().user_data(u64::MAX);
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&nop) }.map_err(|_| std::io::Error::other("submission queue full"))?;
            ring.submit_and_wait(1)?;
            let ok = ring.completion().next().is_some_and(|c| c.result() >= 0);
            if !ok {
                return Err(std::io::Error::other("NOP probe failed"));
            }
            Ok(Reader { ring, bufs: (0..DEPTH).map(|_| vec![0u8; super::CHUNK]).collect() })
        }

        /// Reads `r` of `file` in chunks, `DEPTH` requests in flight; returns bytes read.
        pub fn read_range(&mut self, file: &File, r: Range<usize>) -> std::io::Result<usize> {
            let fd = types::Fd(file.as_raw_fd());
            let mut next = r.start;
            let mut total = 0usize;
            while next < r.end {
                let mut n_sub = 0;
                for (i, buf) in self.bufs.iter_mut().enumerate() {
                    if next >= r.end {
                        break;
                    }
                    let len = super::CHUNK.min(r.end - next);
                    let e = opcode::Read::new(fd, buf.as_mut_ptr(), len as u32)
                        .offset(next as u64)
                        .build()
                        .user_data(i as u64);
                    // SAFETY: the buffer lives in `self.bufs` and is not touched until every
                    // submitted request has completed (we wait for all of them below, before
                    // returning or reusing any buffer); `fd` stays open for the same span.
                    unsafe { self.ring.submission().push(&e) }
                        .map_err(|_| std::io::Error::other("submission queue full"))?;
                    next += len;
                    n_sub += 1;
                }
                self.ring.submit_and_wait(n_sub)?;
                let mut done = 0;
                let mut err = None;
                while done < n_sub {
                    let c = self.ring.completion().next();
                    match c {
                        Some(c) => {
                            done += 1;
                            if c.result() < 0 {
                                err = Some(std::io::Error::from_raw_os_error(-c.result()));
                            } else {
                                total += c.result() as usize;
                            }
                        }
                        None => {
                            self.ring.submit_and_wait(n_sub - done)?;
                        }
                    }
                }
                if let Some(e) = err {
                    return Err(e);
                }
            }
            Ok(total)
        }
    }
}

/// Messages to the Prefetcher.
pub enum PrefetchMsg {
    /// Window `i` runs soon: bring it in.
    Prefetch(usize),
    /// Window `i` ran; `next` is the window that runs next on this node.
    Ran { window: usize, next: usize },
}

pub struct Prefetcher;

impl Actor for Prefetcher {
    type Msg = PrefetchMsg;
    type State = PageManager;
    type Arguments = (Arc<Shard>, PrefetchConfig);

    async fn pre_start(
        &self,
        _me: ActorRef<PrefetchMsg>,
        (shard, cfg): Self::Arguments,
    ) -> Result<PageManager, ActorProcessingErr> {
        Ok(PageManager::new(shard, cfg))
    }

    async fn handle(
        &self,
        _me: ActorRef<PrefetchMsg>,
        msg: PrefetchMsg,
        pm: &mut PageManager,
    ) -> Result<(), ActorProcessingErr> {
        // Reads block: keep them off the async worker's scheduling.
        tokio::task::block_in_place(|| match msg {
            PrefetchMsg::Prefetch(i) => pm.prefetch(i),
            PrefetchMsg::Ran { window, next } => pm.ran(window, next),
        });
        Ok(())
    }
}
