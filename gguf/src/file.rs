//! A GGUF file mapped into memory: the parsed header plus zero-copy views of tensor data.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::reader::{parse_header, Header, TensorInfo};

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    header: Header,
    map: Mmap,
}

impl GgufFile {
    /// Maps `path` and parses its header. Every tensor's extent has been checked against the
    /// file size when this returns `Ok`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io = |source| Error::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(Error::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        // SAFETY: the map is read-only and the project assumes (ARCHITECTURE.md, Assumptions)
        // that model files are not modified while mapped; every access below is bounds-checked
        // against the map's length.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse_header(&map, map.len() as u64)?;
        Ok(GgufFile { path, header, map })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn metadata(&self) -> &crate::Metadata {
        &self.header.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// Size of the mapped file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// The whole mapping (for madvise-style page management by the caller).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The header bytes (everything before the tensor data): what a model fingerprint hashes.
    pub fn header_bytes(&self) -> &[u8] {
        let end = (self.header.data_offset as usize).min(self.map.len());
        &self.map[..end]
    }

    /// The byte range of a tensor's data within the file.
    pub fn tensor_extent(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let start = (self.header.data_offset.saturating_add(info.offset) as usize).min(self.map.len());
        let end = (start as u64).saturating_add(info.n_bytes).min(self.map.len() as u64) as usize;
        start..end
    }

    /// Asks the kernel to read `range` of the file ahead (`MADV_WILLNEED`); advisory only.
    pub fn advise_willneed(&self, range: std::ops::Range<usize>) -> std::io::Result<()> {
        let (off, len) = self.clamp(range);
        if len == 0 {
            return Ok(());
        }
        #[cfg(unix)]
        return self.map.advise_range(memmap2::Advice::WillNeed, off, len);
        #[cfg(not(unix))]
        Ok(())
    }

    /// Drops this process's pages of `range` (`MADV_DONTNEED`): resident memory shrinks and
    /// the next access reads the data again from the page cache or the disk.
    pub fn release_pages(&self, range: std::ops::Range<usize>) -> std::io::Result<()> {
        let (off, len) = self.clamp(range);
        if len == 0 {
            return Ok(());
        }
        #[cfg(unix)]
        // SAFETY: the map is a read-only mapping of a file that is not modified while mapped
        // (ARCHITECTURE.md, Assumptions). Dropping its pages only makes the next access fault
        // them in again from the file, with the same contents, so every outstanding `&[u8]`
        // into the map keeps observing the same bytes.
        return unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len) };
        #[cfg(not(unix))]
        Ok(())
    }

    /// Reads one byte of every page of `range`, so that its pages are resident in this process
    /// now (prima.cpp's `--force`). Returns a value that depends on the bytes read, so the
    /// reads cannot be optimised away.
    pub fn touch_pages(&self, range: std::ops::Range<usize>) -> u64 {
        let (off, len) = self.clamp(range);
        let mut acc = 0u64;
        for i in (off..off + len).step_by(4096) {
            acc = acc.wrapping_add(u64::from(self.map[i]));
        }
        std::hint::black_box(acc)
    }

    fn clamp(&self, r: std::ops::Range<usize>) -> (usize, usize) {
        let start = r.start.min(self.map.len());
        let end = r.end.clamp(start, self.map.len());
        (start, end - start)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The data bytes of a tensor.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8]> {
        let start =
            self.header.data_offset.checked_add(info.offset).ok_or_else(|| Error::MissingTensor(info.name.clone()))?;
        let end = start.saturating_add(info.n_bytes);
        self.map.get(start as usize..end as usize).ok_or_else(|| Error::BadTensor {
            name: info.name.clone(),
            msg: format!("data [{start}, {end}) lies outside the file"),
        })
    }

    /// Looks a tensor up by name and returns its info and bytes.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok((info, self.tensor_data(info)?))
    }
}

/// Reads from `f` at byte offset `off` without moving a cursor (`pread`), on every platform
/// with a positional read.
#[cfg(unix)]
pub fn read_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, off)
}

/// Reads from `f` at byte offset `off` (`seek_read`).
#[cfg(windows)]
pub fn read_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, off)
}
