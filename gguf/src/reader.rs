//! The GGUF header parser: bytes in, `Header` out, `Err` (never a panic) on any byte sequence.

use crate::error::{Error, Result};
use crate::limits::*;
use crate::types::GgmlType;
use crate::value::{Metadata, Value};

/// `GGUF` as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One entry of the tensor directory, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: `dims[0]` is the row length (contiguous).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of tensor data.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row length (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of the other dims).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// A parsed GGUF header: version, metadata, tensors and where the data starts.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining as u64 {
            return Err(Error::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                len: self.buf.len() as u64,
            });
        }
        let n = n as usize;
        let out = self.buf.get(self.pos..self.pos + n).ok_or_else(|| Error::Truncated {
            what: what.to_string(),
            offset: self.pos as u64,
            needed: n as u64,
            len: self.buf.len() as u64,
        })?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > STRING_LEN_MAX {
            return Err(Error::LimitExceeded { what: format!("{what} length"), value: len, max: STRING_LEN_MAX });
        }
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::BadUtf8 { offset })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: u32) -> Result<Value> {
        let what = format!("value of {key:?}");
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let [b] = self.array::<1>(&what)?;
                match b {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    _ => {
                        return Err(Error::BadMetadata {
                            key: key.to_string(),
                            msg: format!("bool byte is {b}, expected 0 or 1"),
                        })
                    }
                }
            }
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= ARRAY_DEPTH_MAX {
                    return Err(Error::LimitExceeded {
                        what: format!("array nesting of {key:?}"),
                        value: depth.into(),
                        max: ARRAY_DEPTH_MAX.into(),
                    });
                }
                let elem_type = self.u32(&what)?;
                // An unknown element type is rejected even when the array is empty.
                if elem_type > 12 {
                    return Err(Error::UnknownValueType { key: key.to_string(), type_id: elem_type });
                }
                let len = self.u64(&what)?;
                if len > ARRAY_LEN_MAX {
                    return Err(Error::LimitExceeded {
                        what: format!("array length of {key:?}"),
                        value: len,
                        max: ARRAY_LEN_MAX,
                    });
                }
                // Every element takes at least one byte, so a length past the end is caught
                // before the vector is allocated.
                if len > self.remaining() {
                    return Err(Error::Truncated {
                        what: what.clone(),
                        offset: self.pos as u64,
                        needed: len,
                        len: self.buf.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => return Err(Error::UnknownValueType { key: key.to_string(), type_id: other }),
        })
    }
}

fn count(c: &mut Cursor<'_>, what: &str, max: u64) -> Result<u64> {
    let n = c.u64(what)?;
    if n > max {
        return Err(Error::LimitExceeded { what: what.to_string(), value: n, max });
    }
    Ok(n)
}

/// Parses the header of a GGUF file held in `bytes` (the whole file, or at least its header
/// when `file_len` says how long the file is) and validates every tensor against `file_len`.
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<Header> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if magic != GGUF_MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::UnsupportedVersion(version));
    }
    let n_tensors = count(&mut c, "tensor count", TENSOR_COUNT_MAX)?;
    let n_kv = count(&mut c, "metadata count", KV_COUNT_MAX)?;

    let mut entries = Vec::new();
    let mut keys = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let type_id = c.u32("metadata value type")?;
        let value = c.value(&key, type_id, 0)?;
        // As in llama.cpp: a repeated key would make lookups silently see only the first.
        if !keys.insert(key.clone()) {
            return Err(Error::BadMetadata { key, msg: "appears more than once".into() });
        }
        entries.push((key, value));
    }
    let metadata = Metadata::new(entries);

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_u64().ok_or_else(|| Error::BadMetadata {
                key: "general.alignment".into(),
                msg: "expected an unsigned integer".into(),
            })?;
            if a == 0 || !a.is_power_of_two() || a > ALIGNMENT_MAX {
                return Err(Error::BadMetadata {
                    key: "general.alignment".into(),
                    msg: format!("{a} is not a power of two in 1..={ALIGNMENT_MAX}"),
                });
            }
            a
        }
    };

    let mut raw = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > DIMS_MAX {
            return Err(Error::BadTensor { name, msg: format!("has {n_dims} dimensions (1..={DIMS_MAX} allowed)") });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dimension")?);
        }
        let type_id = c.u32("tensor type")?;
        let offset = c.u64("tensor offset")?;
        raw.push((name, dims, type_id, offset));
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.checked_next_multiple_of(alignment).ok_or_else(|| Error::LimitExceeded {
        what: "header size".into(),
        value: header_end,
        max: u64::MAX - alignment,
    })?;
    if data_offset > file_len && n_tensors > 0 {
        return Err(Error::Truncated {
            what: "data section".into(),
            offset: header_end,
            needed: data_offset - header_end,
            len: file_len,
        });
    }
    let data_len = file_len.saturating_sub(data_offset);

    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dims, type_id, offset) in raw {
        let bad = |msg: String| Error::BadTensor { name: name.clone(), msg };
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(Error::UnknownTensorType { name, type_id });
        };
        if dims.contains(&0) {
            return Err(bad(format!("has a zero dimension {dims:?}")));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        let row_len = dims.first().copied().unwrap_or(1);
        if !row_len.is_multiple_of(ggml_type.block_size() as u64) {
            return Err(bad(format!(
                "row length {row_len} is not a multiple of the {ggml_type} block size {}",
                ggml_type.block_size()
            )));
        }
        let row_bytes = ggml_type.row_bytes(row_len).ok_or_else(|| bad(format!("byte size of {dims:?} overflows")))?;
        let n_bytes = (n_elements / row_len)
            .checked_mul(row_bytes)
            .ok_or_else(|| bad(format!("byte size of {dims:?} overflows")))?;
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let end = offset.checked_add(n_bytes).ok_or_else(|| bad(format!("data offset {offset} overflows")))?;
        if end > data_len {
            return Err(bad(format!(
                "data [{offset}, {end}) lies outside the data section of {data_len} bytes (file truncated?)"
            )));
        }
        if !seen.insert(name.clone()) {
            return Err(bad("appears twice in the tensor directory".into()));
        }
        tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes });
    }

    Ok(Header { version, metadata, tensors, alignment, data_offset })
}
