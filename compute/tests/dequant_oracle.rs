//! Checks `compute::quant::dequant` against an independent oracle: gguf-py's numpy
//! dequantizers, run through `scripts/dequant_oracle.py`.
//!
//! The script writes random blocks, gguf-py-quantized blocks and blocks cut from real GGUF
//! files, each with gguf-py's f32 output. gguf-py evaluates every type in float32 with each
//! multiply and add rounded separately, the same operations in the same order as ggml's
//! reference dequantizers, so the comparison is bit for bit (NaN matches any NaN: F16 and BF16
//! inputs include NaN patterns, whose payload and quiet bit depend on the conversion routine).
//!
//! Without python3 or the gguf module the test is skipped with a loud message, unless
//! `PRIMA_REQUIRE_ORACLE` is set (CI sets it), in which case a missing oracle fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use compute::quant::dequant::{dequantize_fn, dequantize_row};
use gguf::types::ALL_TYPES;
use gguf::GgmlType;
use serde_json::Value;

const REQUIRE_ENV: &str = "PRIMA_REQUIRE_ORACLE";

fn python() -> String {
    std::env::var("PRIMA_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn oracle_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether python3 with numpy and gguf is available; the reason when not.
fn oracle_available() -> Result<(), String> {
    let out = Command::new(python())
        .args(["-c", "import numpy, gguf.quants"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} cannot import numpy and gguf: {}", python(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn ty_by_name(name: &str) -> GgmlType {
    ALL_TYPES.into_iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("manifest names unknown type {name}"))
}

fn read_f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() % 4, 0, "{}", path.display());
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Every dequantizable type agrees bit for bit with gguf-py on random, quantized and model blocks.
#[test]
fn dequantize_matches_gguf_py() {
    // Method: run the oracle script into a scratch dir, dequantize each case with
    // `dequantize_row`, compare bits; then check every supported type had at least one case.
    if let Err(why) = oracle_available() {
        if oracle_required() {
            panic!("{REQUIRE_ENV} is set but the dequant oracle is unavailable: {why}");
        }
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!! SKIPPED dequant oracle test: {why}");
        eprintln!("!! Install it with `pip install gguf numpy`; set {REQUIRE_ENV}=1 to make this fail.");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return;
    }

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dequant_oracle");
    let _ = std::fs::remove_dir_all(&dir); // a stale dir from an earlier run may or may not exist
    let script = workspace_root().join("scripts/dequant_oracle.py");
    let status = Command::new(python()).arg(&script).arg(&dir).status().expect("run dequant_oracle.py");
    assert!(status.success(), "{} failed: {status}", script.display());

    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().expect("manifest.cases");
    let mut sources: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let source = case["source"].as_str().unwrap();
        let ty = ty_by_name(name);
        let src = std::fs::read(dir.join(case["bin"].as_str().unwrap())).unwrap();
        let want = read_f32s(&dir.join(case["f32"].as_str().unwrap()));
        let n = usize::try_from(case["n_elements"].as_u64().unwrap()).unwrap();
        assert_eq!(want.len(), n, "{name}.{source}");

        let mut got = vec![0.0f32; n];
        if let Err(e) = dequantize_row(ty, &src, &mut got) {
            failures.push(format!("{name}.{source}: {e}"));
            continue;
        }
        let bad: Vec<usize> = (0..n).filter(|&i| !same(got[i], want[i])).collect();
        if let Some(&i) = bad.first() {
            failures.push(format!(
                "{name}.{source} ({}): {} of {n} differ; first at {i} (block {}): got {:e} ({:#010x}), want {:e} ({:#010x})",
                case["origin"].as_str().unwrap_or(""),
                bad.len(),
                i / ty.block_size(),
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits(),
            ));
        }
        let oracle = case["oracle"].as_str().unwrap_or("?");
        sources.entry(name).or_default().push(format!("{source}[{oracle}]"));
    }

    for (name, srcs) in &sources {
        eprintln!("dequant oracle {name:8} {}", srcs.join(" "));
    }
    eprintln!(
        "dequant oracle: gguf-py {}, numpy {}, models {}, missing models {}",
        manifest["gguf_py_version"], manifest["numpy_version"], manifest["models"], manifest["models_missing"]
    );

    for ty in ALL_TYPES.into_iter().filter(|&t| dequantize_fn(t).is_some()) {
        if !sources.contains_key(ty.name()) {
            failures.push(format!("{ty}: no oracle case"));
        }
    }
    assert!(failures.is_empty(), "dequant mismatches:\n{}", failures.join("\n"));
}
