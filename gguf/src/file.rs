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
