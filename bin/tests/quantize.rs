//! `prima quantize`: refuses to requantize silently, writes llama.cpp's Q4_K_M mix with its
//! fallbacks for rows that are not whole super-blocks, and the result runs.

use std::path::PathBuf;
use std::process::Command;

use gguf::{GgmlType, GgufFile};

fn model() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model.sh", p.display());
    p
}

#[test]
fn q4_k_m_mix_is_written_and_runs() {
    let out = std::env::temp_dir().join(format!("prima-quant-{}.gguf", std::process::id()));
    let prima = env!("CARGO_BIN_EXE_prima");
    let refused = Command::new(prima).arg("quantize").arg(model()).arg(&out).arg("q4_k_m").output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-requantize"));

    let ok = Command::new(prima)
        .args(["quantize", "--allow-requantize"])
        .arg(model())
        .arg(&out)
        .arg("q4_k_m")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let f = GgufFile::open(&out).unwrap();
    let ty = |n: &str| f.tensor_info(n).unwrap().ggml_type;
    // 30 layers: layers 0-2 and 27-29 and every third from 5 get more bits on attn_v/ffn_down.
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6_K); // rows of 1536 = 6 super-blocks
    assert_eq!(ty("blk.4.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.5.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.4.attn_q.weight"), GgmlType::Q5_0); // rows of 576: Q4_K falls back
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q8_0); // Q6_K falls back
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    assert_eq!(f.metadata().u64("general.file_type").unwrap(), 15);

    let run = Command::new(prima)
        .args(["run", "-p", "The capital of France is", "-n", "4", "--temp", "0", "-m"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!run.stdout.is_empty());
    let _ = std::fs::remove_file(&out);
}
