//! Fuzzes the GGUF header parser: any byte sequence must give `Ok` or `Err`, never a panic, and
//! an `Ok` header must only describe tensors that lie inside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = gguf::parse_header(data, data.len() as u64) else {
        return;
    };

    // The metadata accessors, on every key: typed getters must not panic whatever the type.
    let md = &header.metadata;
    assert!(md.len() <= gguf::limits::KV_COUNT_MAX as usize);
    for (key, value) in md.iter() {
        assert!(md.get(key).is_some());
        let _ = md.u64(key);
        let _ = md.u64_opt(key);
        let _ = md.f64_opt(key);
        let _ = md.bool_opt(key);
        let _ = md.str(key);
        let _ = md.str_opt(key);
        let _ = md.array_opt(key);
        let _ = (
            value.as_u64(),
            value.as_i64(),
            value.as_f64(),
            value.as_bool(),
        );
        let _ = (value.as_str(), value.summary());
        if let Some(items) = value.as_array() {
            for item in items.iter().take(64) {
                let _ = (item.as_u64(), item.as_f64(), item.as_str(), item.summary());
            }
        }
    }
    let _ = md.u64("general.alignment");
    let _ = md.str("general.architecture");
    let _ = md.get("definitely.not.a.key");

    // The header's own invariants.
    assert!(header.alignment.is_power_of_two());
    assert_eq!(header.data_offset % header.alignment, 0);
    assert!(header.tensors.len() <= gguf::limits::TENSOR_COUNT_MAX as usize);

    // Every tensor lies inside the data section of the input.
    let data_len = (data.len() as u64).saturating_sub(header.data_offset);
    for t in &header.tensors {
        let end = t.offset.checked_add(t.n_bytes);
        assert!(
            end.is_some_and(|end| end <= data_len),
            "tensor {:?} at [{}, +{}) outside a data section of {data_len} bytes",
            t.name,
            t.offset,
            t.n_bytes
        );
        assert_eq!(t.offset % header.alignment, 0);
        assert!(!t.dims.is_empty() && t.dims.len() <= gguf::limits::DIMS_MAX as usize);
        assert!(t.dims.iter().all(|&d| d > 0));
        let n = t.n_elements();
        assert_eq!(n, t.row_len() * t.n_rows());
        let row_bytes = t.ggml_type.row_bytes(t.row_len()).expect("validated row");
        assert_eq!(t.n_bytes, row_bytes * t.n_rows());
        // The bytes themselves are addressable.
        let start = (header.data_offset + t.offset) as usize;
        let bytes = &data[start..start + t.n_bytes as usize];
        assert_eq!(bytes.len() as u64, t.n_bytes);
    }
});
