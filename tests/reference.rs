//! End-to-end: greedy generation on the real SmolLM2 models reproduces llama.cpp's reference
//! outputs token for token (`../shared/reference/*.json`), independently of the thread count.
//!
//! A divergence is accepted only at a step where the reference's own top-2 log-prob gap is
//! below 0.01 (a near tie that float summation order may flip); comparison stops there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use prima::compute::matmul::TILED_GEMM_MIN_ROWS;
use prima::compute::sampling::{argmax, log_prob};
use prima::compute::{LoadSpec, Model, Session};
use prima::gguf::{GgufFile, Tokenizer};
use serde_json::Value;

/// Log-prob gap below which the reference itself is a near tie.
const NEAR_TIE: f64 = 0.01;
/// Largest accepted difference between our log-prob of a reference token and llama.cpp's.
const LOGPROB_TOL: f64 = 0.05;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared() -> PathBuf {
    root().join("../shared")
}

fn load_json(p: &Path) -> Result<Value> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(serde_json::from_str(&s)?)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()).unwrap_or_default()
}

/// Greedy-generates every reference case with `threads` threads and checks them; the longest
/// prompt's length in tokens.
fn check_model(model_path: &Path, reference: &Path, threads: usize) -> Result<usize> {
    let file = Arc::new(GgufFile::open(model_path)?);
    let tok = Tokenizer::from_metadata(file.metadata())?;
    let n_layer = prima::compute::HParams::from_metadata(file.metadata())?.n_layer;
    let model = Model::load(file.clone(), LoadSpec::full(n_layer))?;
    let r = load_json(reference)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let cases = r["generation"].as_array().context("no generation cases")?;
    let mut longest = 0;
    for case in cases {
        let prompt = case["prompt"].as_str().context("prompt")?;
        let want = ids(&case["output_ids"]);
        let top2 = case["top2_logprobs"].as_array().context("top2_logprobs")?;
        let n_predict = want.len();
        let prompt_ids = tok.encode(prompt, true, true);
        longest = longest.max(prompt_ids.len());
        if let Some(p) = case.get("prompt_ids") {
            assert_eq!(prompt_ids, ids(p), "prompt tokenization of {prompt:?}");
        }
        let mut session = Session::new(&model, 512)?;
        let mut logits = Vec::new();
        let mut got = Vec::new();
        let mut worst = 0.0f64;
        pool.install(|| -> Result<()> {
            session.feed(&prompt_ids, &mut logits)?;
            for step in 0..n_predict {
                let id = argmax(&logits);
                let ref_id = want[step];
                let ref_lp = top2[step][0][1].as_f64().context("logprob")?;
                let ours = log_prob(&logits, ref_id) as f64;
                if id != ref_id {
                    let second = top2[step][1][1].as_f64().context("logprob")?;
                    let gap = ref_lp - second;
                    if gap >= NEAR_TIE {
                        bail!(
                            "{}: {prompt:?} diverges at step {step}: got {id}, llama.cpp {ref_id} \
                             (reference gap {gap:.4}; our log-probs {:.4} vs {:.4})\n got  {got:?}\n want {:?}",
                            model_path.display(),
                            log_prob(&logits, id),
                            ours,
                            &want[..step]
                        );
                    }
                    eprintln!("{prompt:?}: near tie at step {step} (gap {gap:.4}), stopping comparison");
                    return Ok(());
                }
                worst = worst.max((ours - ref_lp).abs());
                got.push(id);
                if tok.is_eog(id) || step + 1 == n_predict {
                    break;
                }
                session.feed(&[id], &mut logits)?;
            }
            Ok(())
        })?;
        eprintln!(
            "{} t={threads} {prompt:?}: {} tokens match, max |Δ log-prob| {worst:.4}",
            model_path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
            got.len()
        );
        assert!(worst < LOGPROB_TOL, "log-probs drift from llama.cpp's by {worst} (tolerance {LOGPROB_TOL})");
    }
    Ok(longest)
}

fn q4_1_model() -> PathBuf {
    root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn require(p: &Path) -> Result<()> {
    if !p.exists() {
        bail!("{} is missing: run scripts/fetch-model.sh", p.display());
    }
    Ok(())
}

#[test]
fn smollm2_q4_1_matches_llama_cpp_with_1_and_2_threads() -> Result<()> {
    // Goal: the Q4_1/Q8_0 model's greedy outputs equal llama.cpp's, whatever the thread count.
    let m = q4_1_model();
    require(&m)?;
    let r = shared().join("reference/smollm2-q4_1.json");
    check_model(&m, &r, 1)?;
    check_model(&m, &r, 2)?;
    Ok(())
}

#[test]
fn smollm2_iq1_s_mix_matches_llama_cpp() -> Result<()> {
    // Goal: the IQ1_S/IQ4_NL/Q4_0/Q2_K/Q8_0 mix's greedy outputs equal llama.cpp's, whatever the
    // thread count; the prompt of 8+ tokens takes llama.cpp's tiled-GEMM order for IQ1_S.
    let m = shared().join("models/smollm2-135m-iq1_s.gguf");
    require(&m)?;
    let r = shared().join("reference/smollm2-iq1_s.json");
    check_model(&m, &r, 1)?;
    let longest = check_model(&m, &r, 2)?;
    assert!(longest >= TILED_GEMM_MIN_ROWS, "no reference prompt of {TILED_GEMM_MIN_ROWS}+ tokens ({longest} at most)");
    Ok(())
}

#[test]
fn reference_tokenization_matches_llama_cpp() -> Result<()> {
    // Goal: the reference strings tokenize to exactly llama.cpp's ids, and pieces decode to its bytes.
    let m = q4_1_model();
    require(&m)?;
    let file = GgufFile::open(&m)?;
    let tok = Tokenizer::from_metadata(file.metadata())?;
    let r = load_json(&shared().join("reference/smollm2-q4_1.json"))?;
    for case in r["tokenize"].as_array().context("tokenize cases")? {
        let text = case["text"].as_str().context("text")?;
        assert_eq!(tok.encode(text, false, true), ids(&case["ids"]), "tokenizing {text:?}");
    }
    for case in r["generation"].as_array().context("generation cases")? {
        let out = ids(&case["output_ids"]);
        let pieces = case["output_piece_bytes"].as_array().context("pieces")?;
        for (id, bytes) in out.iter().zip(pieces) {
            let want: Vec<u8> = ids(bytes).into_iter().map(|b| b as u8).collect();
            assert_eq!(tok.token_to_piece(*id, false), want, "piece of token {id}");
        }
    }
    Ok(())
}
