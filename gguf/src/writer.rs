//! A GGUF v3 writer: metadata and tensors out to any `Write`, laid out as llama.cpp expects.
//!
//! Used by tests (tiny models built in the test) and by tools that produce GGUF files.

use std::io::{self, Write};

use crate::reader::DEFAULT_ALIGNMENT;
use crate::types::GgmlType;
use crate::value::{Metadata, Value};

/// A tensor to write: name, GGUF dims (row length first), type and raw block bytes.
pub struct TensorToWrite<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: &'a [u8],
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => put_str(w, s),
        Value::Array(items) => {
            // An empty array is written as an array of u8, which is what gguf-py does too.
            let elem = items.first().map(type_id).unwrap_or(0);
            if items.iter().any(|it| type_id(it) != elem) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "array elements differ in type"));
            }
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|it| put_value(w, it))
        }
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A tensor's directory entry, for [`write_gguf_streaming`].
pub struct TensorDesc {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorDesc {
    /// Bytes of data the tensor takes (`None` if the row length is not a whole number of blocks).
    pub fn n_bytes(&self) -> Option<u64> {
        let row = *self.dims.first()?;
        let rows: u64 = self.dims[1..].iter().product();
        Some(self.ggml_type.row_bytes(row)? * rows)
    }
}

/// Writes a complete GGUF v3 file. Tensor data is aligned to `general.alignment` (default 32).
pub fn write_gguf(w: &mut impl Write, metadata: &Metadata, tensors: &[TensorToWrite<'_>]) -> io::Result<()> {
    let descs: Vec<TensorDesc> = tensors
        .iter()
        .map(|t| TensorDesc { name: t.name.clone(), dims: t.dims.clone(), ggml_type: t.ggml_type })
        .collect();
    let sizes: Vec<u64> = tensors.iter().map(|t| t.data.len() as u64).collect();
    write_with_sizes(w, metadata, &descs, &sizes, &mut |i, w| w.write_all(tensors[i].data))
}

/// Writes a GGUF v3 file whose tensor data is produced on the fly: `fill(i, w)` writes exactly
/// `descs[i].n_bytes()` bytes of tensor `i`, so a model larger than memory can be written.
pub fn write_gguf_streaming<W: Write>(
    w: &mut W,
    metadata: &Metadata,
    descs: &[TensorDesc],
    fill: &mut dyn FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let sizes = descs
        .iter()
        .map(|d| {
            d.n_bytes().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: row length is not a whole number of blocks", d.name),
                )
            })
        })
        .collect::<io::Result<Vec<u64>>>()?;
    write_with_sizes(w, metadata, descs, &sizes, fill)
}

fn write_with_sizes<W: Write>(
    w: &mut W,
    metadata: &Metadata,
    tensors: &[TensorDesc],
    sizes: &[u64],
    fill: &mut dyn FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(DEFAULT_ALIGNMENT);
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata.iter() {
        put_str(&mut head, k)?;
        head.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut head, v)?;
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for (t, &size) in tensors.iter().zip(sizes) {
        put_str(&mut head, &t.name)?;
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + size).next_multiple_of(alignment);
    }
    let pad = (head.len() as u64).next_multiple_of(alignment) - head.len() as u64;
    head.resize(head.len() + pad as usize, 0);
    w.write_all(&head)?;
    let mut written = 0u64;
    for (i, (&off, &size)) in offsets.iter().zip(sizes).enumerate() {
        let gap = off - written;
        w.write_all(&vec![0u8; gap as usize])?;
        let mut counted = Counting { inner: &mut *w, n: 0 };
        fill(i, &mut counted)?;
        if counted.n != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tensor {}: {} bytes written, {size} expected", tensors[i].name, counted.n),
            ));
        }
        written = off + size;
    }
    let tail = written.next_multiple_of(alignment) - written;
    w.write_all(&vec![0u8; tail as usize])?;
    Ok(())
}
