//! Tokenizer end-to-end: the real SmolLM2 vocabulary against llama.cpp's reference ids, tiny
//! vocabularies built here as GGUF files for SPM and the BPE pre-tokenizers, and llama.cpp's own
//! `ggml-vocab-*.gguf` test files when `PRIMA_LLAMA_VOCAB_DIR` points at a folder holding them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gguf::{GgufFile, Metadata, Tokenizer, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn smollm_path() -> PathBuf {
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "missing {}: the SmolLM2 test model must be in models/ (see the repo's fetch script)",
        path.display()
    );
    path
}

fn reference() -> serde_json::Value {
    let path = repo_root().join("../shared/reference/smollm2-q4_1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn smollm() -> Tokenizer {
    let file = GgufFile::open(smollm_path()).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_metadata(file.metadata()).unwrap_or_else(|e| panic!("{e}"))
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).unwrap_or(u32::MAX))
        .collect()
}

#[test]
fn smollm2_tokenizes_like_llama_cpp() {
    // Goal: exact llama.cpp ids for SmolLM2; method: every text and prompt of the reference file.
    let tok = smollm();
    let reference = reference();
    let cases = reference["tokenize"].as_array().cloned().unwrap_or_default();
    assert!(!cases.is_empty());
    for case in &cases {
        let text = case["text"].as_str().unwrap_or_default();
        assert_eq!(tok.encode(text, true, true), ids(&case["ids"]), "text {text:?}");
    }
    for generation in reference["generation"].as_array().cloned().unwrap_or_default() {
        let prompt = generation["prompt"].as_str().unwrap_or_default();
        assert_eq!(tok.encode(prompt, true, true), ids(&generation["prompt_ids"]), "prompt {prompt:?}");
    }
}

#[test]
fn smollm2_decodes_like_llama_cpp() {
    // Goal: decoding reproduces llama.cpp's text and per-token bytes; method: reference outputs.
    let tok = smollm();
    for generation in reference()["generation"].as_array().cloned().unwrap_or_default() {
        let out = ids(&generation["output_ids"]);
        assert_eq!(tok.decode(&out), generation["output_text"].as_str().unwrap_or_default());
        let pieces = generation["output_piece_bytes"].as_array().cloned().unwrap_or_default();
        assert_eq!(pieces.len(), out.len());
        for (&id, bytes) in out.iter().zip(&pieces) {
            let expect: Vec<u8> = ids(bytes).into_iter().map(|b| b as u8).collect();
            assert_eq!(tok.token_to_piece(id, false), expect, "token {id}");
        }
        // Streaming gives the same text, whatever the token boundaries.
        let mut stream = gguf::StreamDecoder::new(&tok);
        let mut text = String::new();
        for &id in &out {
            text.push_str(&stream.push(id));
        }
        text.push_str(&stream.flush());
        assert_eq!(text, generation["output_text"].as_str().unwrap_or_default());
    }
}

#[test]
fn smollm2_chat_template_builds_the_reference_prompt() {
    // Goal: the model's own template renders llama.cpp's chat prompt; method: reference messages.
    let file = GgufFile::open(smollm_path()).unwrap_or_else(|e| panic!("{e}"));
    let template = gguf::chat::template_from_metadata(file.metadata()).unwrap_or_else(|e| panic!("{e}"));
    assert!(template.is_some());
    for generation in reference()["generation"].as_array().cloned().unwrap_or_default() {
        let Some(messages) = generation["messages"].as_array() else {
            continue;
        };
        let messages: Vec<gguf::chat::ChatMessage> = messages
            .iter()
            .map(|m| {
                gguf::chat::ChatMessage::new(
                    m["role"].as_str().unwrap_or_default(),
                    m["content"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        let prompt = gguf::chat::render_chat(template, &messages, true, "<|im_start|>", "<|im_end|>")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prompt, generation["prompt"].as_str().unwrap_or_default());
    }
}

#[test]
fn smollm2_special_tokens() {
    // Goal: BOS/EOS/EOT/EOG as llama.cpp finds them; method: SmolLM2's metadata and token texts.
    let tok = smollm();
    assert_eq!(tok.n_vocab(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert_eq!(tok.eot(), Some(2), "<|im_end|>");
    assert!(!tok.add_bos());
    // <|endoftext|>, <|im_end|>, and <reponame> (llama.cpp's FIM-repo guess) end generation.
    assert_eq!(tok.eog_ids().collect::<Vec<_>>(), [0, 2, 4]);
    assert!(tok.is_eog(2) && !tok.is_eog(1));
    assert_eq!(tok.token_to_piece(1, true), b"<|im_start|>");
    assert_eq!(tok.token_to_piece(1, false), b"");
    assert_eq!(gguf::StreamDecoder::new(&tok).push(2), "");
    let mut special = gguf::StreamDecoder::new(&tok).render_special(true);
    assert_eq!(special.push(2), "<|im_end|>");
    // Without parse_special the markers are plain text.
    assert_ne!(tok.encode("<|im_start|>", false, false), [1]);
    assert_eq!(tok.encode("<|im_start|>", false, true), [1]);
}

#[test]
fn smollm2_tokenizes_10kb_in_milliseconds() {
    // Goal: tokenization is fast; method: time a 10 KB mixed text and check it round-trips.
    let tok = smollm();
    let unit = "The quick brown fox, 1234 times; naïve café — 日本語 😀!\n\tdon't   stop ";
    let mut text = String::new();
    while text.len() < 10 * 1024 {
        text.push_str(unit);
    }
    let t0 = Instant::now();
    let out = tok.encode(&text, false, false);
    let elapsed = t0.elapsed();
    eprintln!("10 KB -> {} tokens in {:?}", out.len(), elapsed);
    assert!(elapsed.as_millis() < 1000, "took {elapsed:?}");
    assert_eq!(tok.decode(&out), text);
}

// ---- tiny vocabularies written as GGUF files ----

fn strings(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|s| Value::String(s.to_string())).collect())
}

fn i32s(list: &[i32]) -> Value {
    Value::Array(list.iter().map(|&v| Value::I32(v)).collect())
}

/// Writes `md` as a GGUF file and reads it back, so the tokenizer sees real file metadata.
fn round_trip(md: &Metadata) -> Metadata {
    let mut bytes = Vec::new();
    gguf::write_gguf(&mut bytes, md, &[]).unwrap_or_else(|e| panic!("{e}"));
    gguf::parse_header(&bytes, bytes.len() as u64).unwrap_or_else(|e| panic!("{e}")).metadata
}

fn build(md: &Metadata) -> Tokenizer {
    Tokenizer::from_metadata(&round_trip(md)).unwrap_or_else(|e| panic!("{e}"))
}

/// A SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then normal tokens.
fn spm_metadata(extra: &[(&str, f32)]) -> Metadata {
    let mut texts: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        texts.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (t, s) in extra {
        texts.push(t.to_string());
        types.push(1);
        scores.push(*s);
    }
    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", Value::String("llama".into()));
    md.set("tokenizer.ggml.tokens", Value::Array(texts.into_iter().map(Value::String).collect()));
    md.set("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect()));
    md.set("tokenizer.ggml.token_type", i32s(&types));
    md
}

const SPM_WORDS: &[(&str, f32)] = &[
    ("\u{2581}", -1.0),
    ("h", -2.0),
    ("e", -2.0),
    ("l", -2.0),
    ("o", -2.0),
    ("i", -2.0),
    ("\u{2581}h", -3.0),
    ("ll", -1.5),
    ("llo", -1.0),
    ("\u{2581}he", -2.5),
    ("he", -5.0),
];

fn spm_id(text: &str) -> u32 {
    259 + SPM_WORDS.iter().position(|(t, _)| *t == text).unwrap_or(usize::MAX) as u32
}

#[test]
fn spm_merges_by_score_with_space_prefix_and_bos() {
    // Goal: SPM merge order, "▁" prefix and BOS; method: hand-merged "hello" (ll, llo, ▁h, ▁he).
    let tok = build(&spm_metadata(SPM_WORDS));
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(tok.add_bos());
    assert_eq!(tok.encode("hello", true, false), [1, spm_id("\u{2581}he"), spm_id("llo")]);
    assert_eq!(tok.encode("hello", false, false), [spm_id("\u{2581}he"), spm_id("llo")]);
    assert_eq!(tok.encode("", true, false), [1]);
    assert_eq!(tok.decode(&[spm_id("\u{2581}he"), spm_id("llo")]), "hello");
    // llama.cpp only drops the leading space from the very first piece, here BOS's empty one.
    assert_eq!(tok.decode(&[1, spm_id("\u{2581}he"), spm_id("llo")]), " hello");
    assert!(tok.is_eog(2));
}

#[test]
fn spm_falls_back_to_bytes() {
    // Goal: byte fallback for unknown code points; method: "hé" = ▁h <0xC3> <0xA9>.
    let tok = build(&spm_metadata(SPM_WORDS));
    let out = tok.encode("hé", false, false);
    assert_eq!(out, [spm_id("\u{2581}h"), 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&out), "hé");
    assert_eq!(tok.token_to_piece(3 + 0xC3, false), [0xC3]);
}

#[test]
fn spm_honours_add_space_prefix_false() {
    // Goal: tokenizer.ggml.add_space_prefix = false; method: "hello" becomes he + llo.
    let mut md = spm_metadata(SPM_WORDS);
    md.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    md.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
    let tok = build(&md);
    assert_eq!(tok.encode("hello", true, false), [spm_id("he"), spm_id("llo")]);
}

#[test]
fn spm_parses_control_tokens_only_when_asked() {
    // Goal: parse_special and the space after a special token; method: "<s>hi" both ways.
    let tok = build(&spm_metadata(SPM_WORDS));
    assert_eq!(tok.encode("<s>hi", false, true), [1, spm_id("\u{2581}h"), spm_id("i")]);
    assert_eq!(
        tok.encode("<s>hi", false, false),
        [spm_id("\u{2581}"), 3 + 0x3C, 3 + 0x73, 3 + 0x3E, spm_id("h"), spm_id("i")]
    );
}

/// GPT-2's byte-to-unicode alphabet, for writing byte-level vocabularies.
fn gpt2_char(b: u8) -> char {
    let printable = |b: u8| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

const BPE_MERGES: &[&str] = &["Ġ t", "h e", "Ġt he", "1 2", "d o", "do n", "' t"];
const BPE_SPECIALS: &[&str] = &["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>"];

/// A byte-level vocabulary: the 256 byte symbols, the merge results, a whole word without merges
/// ("abc"), then control tokens.
fn bpe_metadata(pre: &str) -> Metadata {
    let mut texts: Vec<String> = (0..=255u8).map(|b| gpt2_char(b).to_string()).collect();
    for m in BPE_MERGES {
        texts.push(m.replace(' ', ""));
    }
    texts.push("abc".into());
    let mut types = vec![1; texts.len()];
    for s in BPE_SPECIALS {
        texts.push(s.to_string());
        types.push(3);
    }
    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.set("tokenizer.ggml.pre", Value::String(pre.into()));
    md.set("tokenizer.ggml.tokens", Value::Array(texts.into_iter().map(Value::String).collect()));
    md.set("tokenizer.ggml.token_type", i32s(&types));
    md.set("tokenizer.ggml.merges", strings(BPE_MERGES));
    md.set("tokenizer.ggml.bos_token_id", Value::U32(bpe_id("<|begin_of_text|>")));
    md.set("tokenizer.ggml.eos_token_id", Value::U32(bpe_id("<|endoftext|>")));
    md
}

fn bpe_id(text: &str) -> u32 {
    if let Some(i) = BPE_MERGES.iter().position(|m| m.replace(' ', "") == text) {
        return 256 + i as u32;
    }
    if text == "abc" {
        return 256 + BPE_MERGES.len() as u32;
    }
    if let Some(i) = BPE_SPECIALS.iter().position(|s| *s == text) {
        return 257 + (BPE_MERGES.len() + i) as u32;
    }
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => (0..=255u8).find(|&b| gpt2_char(b) == c).map_or(u32::MAX, u32::from),
        _ => u32::MAX,
    }
}

fn bpe_ids(texts: &[&str]) -> Vec<u32> {
    texts.iter().map(|t| bpe_id(t)).collect()
}

#[test]
fn qwen2_splits_digits_and_merges_by_rank() {
    // Goal: qwen2's pre-tokenizer and rank-ordered merges; method: " the 123" and "abc".
    for pre in ["qwen2", "deepseek-r1-qwen"] {
        let tok = build(&bpe_metadata(pre));
        assert_eq!(tok.encode(" the 123", false, false), bpe_ids(&["Ġthe", "Ġ", "1", "2", "3"]), "{pre}");
        // Without ignore_merges a word is merged even when it is a token itself.
        assert_eq!(tok.encode("abc", false, false), bpe_ids(&["a", "b", "c"]));
        assert!(!tok.add_bos());
        assert_eq!(tok.decode(&bpe_ids(&["Ġ", "."])), " .");
    }
}

#[test]
fn llama3_groups_digits_ignores_merges_and_adds_bos() {
    // Goal: llama-bpe's pre-tokenizer, ignore_merges, add_bos, clean_spaces; method: hand cases.
    for pre in ["llama-bpe", "llama3"] {
        let tok = build(&bpe_metadata(pre));
        assert!(tok.add_bos());
        assert_eq!(
            tok.encode(" the 123", true, false),
            bpe_ids(&["<|begin_of_text|>", "Ġthe", "Ġ", "12", "3"]),
            "{pre}"
        );
        assert_eq!(tok.encode("abc", false, false), bpe_ids(&["abc"]));
        // clean_spaces removes the space before punctuation.
        assert_eq!(tok.decode(&bpe_ids(&["Ġ", "."])), ".");
    }
}

#[test]
fn gpt2_family_splits_contractions() {
    // Goal: the GPT-2 regex (smollm's second regex) and regex chaining; method: "don't".
    for pre in ["smollm", "gpt-2"] {
        let tok = build(&bpe_metadata(pre));
        assert_eq!(tok.encode("don't", false, false), bpe_ids(&["don", "'t"]), "{pre}");
    }
    // "default" first splits off punctuation runs, so the apostrophe stands alone.
    let tok = build(&bpe_metadata("default"));
    assert_eq!(tok.encode("don't", false, false), bpe_ids(&["don", "'", "t"]));
}

#[test]
fn bpe_special_tokens_and_eog() {
    // Goal: control-token parsing and the EOT/EOG rules; method: a ChatML-style string.
    let tok = build(&bpe_metadata("qwen2"));
    assert_eq!(
        tok.encode("<|im_start|>the<|im_end|>", false, true),
        bpe_ids(&["<|im_start|>", "t", "he", "<|im_end|>"])
    );
    assert_eq!(tok.eot(), Some(bpe_id("<|im_end|>")));
    assert!(tok.is_eog(bpe_id("<|im_end|>")));
    assert!(tok.is_eog(bpe_id("<|endoftext|>")));
    assert!(!tok.is_eog(bpe_id("<|im_start|>")));
    let ids = bpe_ids(&["<|im_start|>", "t", "he"]);
    assert_eq!(tok.decode(&ids), "the");
    assert_eq!(tok.detokenize(&ids, false, true), b"<|im_start|>the");
}

#[test]
fn metadata_eot_id_wins_over_text_detection() {
    // Goal: tokenizer.ggml.eot_token_id is honoured; method: point it at <|endoftext|>.
    let mut md = bpe_metadata("qwen2");
    md.set("tokenizer.ggml.eot_token_id", Value::U32(bpe_id("<|endoftext|>")));
    assert_eq!(build(&md).eot(), Some(bpe_id("<|endoftext|>")));
}

#[test]
fn rejects_bad_tokenizer_metadata() {
    // Goal: malformed metadata is an Err, never a panic; method: one broken field per case.
    let err = |md: &Metadata| Tokenizer::from_metadata(&round_trip(md)).is_err();

    let mut md = bpe_metadata("qwen2");
    md.set("tokenizer.ggml.model", Value::String("wordpiece-ish".into()));
    assert!(err(&md), "unknown model");

    assert!(err(&bpe_metadata("no-such-pre")), "unknown pre");

    let mut md = spm_metadata(SPM_WORDS);
    md.set("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0)]));
    assert!(err(&md), "short scores");

    let mut md = spm_metadata(SPM_WORDS);
    md.set("tokenizer.ggml.token_type", strings(&["x"]));
    assert!(err(&md), "mistyped token types");

    let mut md = bpe_metadata("qwen2");
    md.set("tokenizer.ggml.tokens", strings(&["a", "b", "a"]));
    md.set("tokenizer.ggml.token_type", i32s(&[1, 1, 1]));
    assert!(err(&md), "duplicate token");

    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.set("tokenizer.ggml.tokens", strings(&["a"]));
    assert!(err(&md), "missing merges");

    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", Value::String("llama".into()));
    assert!(err(&md), "missing tokens");

    // add_bos with no BOS in range: llama.cpp refuses such a vocabulary too.
    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", Value::String("llama".into()));
    md.set("tokenizer.ggml.tokens", strings(&["a"]));
    assert!(err(&md), "add_bos without BOS");
}

// ---- llama.cpp's vocabulary test files, when present ----

/// Runs llama.cpp's test-tokenizer-0 cases (`ggml-vocab-NAME.gguf` with `.inp` and `.out`) from
/// `PRIMA_LLAMA_VOCAB_DIR`. The vocabularies are not committed (they are megabytes each), so
/// without the variable this test only says that it skipped them.
#[test]
fn llama_cpp_vocab_test_files() {
    let Ok(dir) = std::env::var("PRIMA_LLAMA_VOCAB_DIR") else {
        eprintln!("skipped: set PRIMA_LLAMA_VOCAB_DIR to a folder of ggml-vocab-*.gguf(.inp/.out)");
        return;
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    entries.sort();
    let mut failures = Vec::new();
    for path in entries {
        let inp = path.with_extension("gguf.inp");
        let out = path.with_extension("gguf.out");
        let (Ok(inp), Ok(out)) = (std::fs::read_to_string(&inp), std::fs::read_to_string(&out)) else {
            continue;
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tok = match GgufFile::open(&path).and_then(|f| Tokenizer::from_metadata(f.metadata())) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: skipped ({e})");
                continue;
            }
        };
        let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        let expects: Vec<&str> = out.lines().collect();
        let mut n_ok = 0;
        for (text, expect) in texts.iter().zip(&expects) {
            let expect: Vec<u32> = expect.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let got = tok.encode(text, false, false);
            if got == expect {
                n_ok += 1;
            } else {
                failures.push(format!("{name}: {text:?}\n  want {expect:?}\n  got  {got:?}"));
            }
        }
        eprintln!("{name}: {n_ok}/{} cases match", texts.len().min(expects.len()));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
