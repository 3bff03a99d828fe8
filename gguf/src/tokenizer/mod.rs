//! The tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata: text to token ids and back,
//! reproducing llama.cpp's `llama_vocab` (src/llama-vocab.cpp) id for id.
//!
//! Two vocabulary types are supported: byte-level BPE (`gpt2`, see `bpe.rs` and `pretokenize.rs`)
//! and SentencePiece BPE with scores (`llama`, see `spm.rs`). Everything around them follows
//! llama.cpp: the default special ids per type, `add_bos`/`add_eos`, the splitting of control and
//! user-defined tokens out of the text (`tokenizer_st_partition`), the end-of-generation set found
//! by token text, and detokenization with its space clean-up.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod bpe;
mod pretokenize;
mod spm;

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::error::{Error, Result};
use crate::value::{Metadata, Value};

pub use pretokenize::PreType;

/// llama.cpp's `LLAMA_TOKEN_ATTR_*` bits.
mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

/// The vocabulary algorithm named by `tokenizer.ggml.model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// `llama`: SentencePiece BPE with scores and `<0xXX>` byte fallback.
    Spm,
    /// `gpt2`: byte-level BPE with ranked merges and a regex pre-tokenizer.
    Bpe,
}

/// Text to token ids and back for one model.
pub struct Tokenizer {
    kind: VocabKind,
    vocab: Vocab,
    bpe: Option<bpe::Bpe>,
    pre_type: Option<PreType>,
    special: SpecialIds,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    /// Control, user-defined and unknown tokens, longest text first: the order in which
    /// `encode` cuts them out of the text.
    special_by_len: Vec<u32>,
    /// Each token's bytes as `token_to_piece(id, special = true)` gives them.
    pieces: Vec<Vec<u8>>,
}

/// The token texts, scores and attributes, with the reverse map.
pub(crate) struct Vocab {
    tokens: Vec<TokenData>,
    token_to_id: HashMap<String, u32>,
}

struct TokenData {
    text: String,
    score: f32,
    attr: u32,
}

impl Vocab {
    pub(crate) fn text_to_token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub(crate) fn score(&self, id: u32) -> f32 {
        self.get(id).map_or(0.0, |t| t.score)
    }

    fn get(&self, id: u32) -> Option<&TokenData> {
        self.tokens.get(id as usize)
    }

    fn attr(&self, id: u32) -> u32 {
        self.get(id).map_or(0, |t| t.attr)
    }

    /// A vocabulary of normal tokens (for unit tests of the merge algorithms).
    #[cfg(test)]
    pub(crate) fn from_texts(texts: Vec<String>) -> Vocab {
        let token_to_id = (0u32..).zip(&texts).map(|(i, t)| (t.clone(), i)).collect();
        let tokens = texts.into_iter().map(|text| TokenData { text, score: 0.0, attr: attr::NORMAL }).collect();
        Vocab { tokens, token_to_id }
    }

    #[cfg(test)]
    pub(crate) fn set_score(&mut self, idx: usize, score: f32) {
        if let Some(t) = self.tokens.get_mut(idx) {
            t.score = score;
        }
    }
}

/// The special token ids; `None` is llama.cpp's `LLAMA_TOKEN_NULL`.
#[derive(Clone, Copy, Debug, Default)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    sep: Option<u32>,
    pad: Option<u32>,
    mask: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

// Token texts llama.cpp recognises when the metadata names no id (llama-vocab.cpp, `load`).
// llama.cpp walks an unordered_map, so where a vocabulary holds several candidates its pick
// depends on hashing; prima takes the first candidate in list order, which is deterministic.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that end generation whatever the metadata says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Scores and token types are arrays parallel to the token list.
fn parallel_array<'a>(md: &'a Metadata, key: &str, n_tokens: usize) -> Result<Option<&'a [Value]>> {
    let Some(arr) = md.array_opt(key)? else {
        return Ok(None);
    };
    if arr.len() < n_tokens {
        return Err(Error::BadMetadata {
            key: key.to_string(),
            msg: format!("{} entries for {n_tokens} tokens", arr.len()),
        });
    }
    Ok(Some(arr))
}

fn token_type_attr(token_type: i64) -> u32 {
    match token_type {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata, as llama.cpp's `llama_vocab::load`.
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer> {
        let model = md.str("tokenizer.ggml.model")?;
        let pre_name = md.str_opt("tokenizer.ggml.pre")?;

        let mut special = SpecialIds::default();
        let mut add_space_prefix;
        let mut add_bos;
        let add_eos = false;
        let clean_spaces;
        let mut pre_cfg = None;
        let kind = match model {
            "llama" => {
                special.bos = Some(1);
                special.eos = Some(2);
                special.unk = Some(0);
                add_space_prefix = true;
                add_bos = true;
                clean_spaces = false;
                VocabKind::Spm
            }
            "gpt2" => {
                let cfg = pretokenize::PreConfig::from_name(pre_name)?;
                special.bos = (!cfg.clear_bos).then_some(11);
                special.eos = Some(11);
                add_space_prefix = false;
                add_bos = cfg.add_bos.unwrap_or(false);
                clean_spaces = cfg.clean_spaces;
                pre_cfg = Some(cfg);
                VocabKind::Bpe
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported tokenizer model {other:?} (prima reads \"llama\" and \"gpt2\")"
                )))
            }
        };
        if let Some(v) = md.bool_opt("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }

        let vocab = Self::read_vocab(md)?;
        let n_tokens = vocab.tokens.len();

        let bpe = match pre_cfg {
            Some(cfg) => {
                let merges = md
                    .array_opt("tokenizer.ggml.merges")?
                    .ok_or_else(|| Error::MissingKey("tokenizer.ggml.merges".to_string()))?;
                let pre = pretokenize::PreTokenizer::new(&pretokenize::regex_list(cfg.pre_type))?;
                Some(bpe::Bpe::new(merges, pre, cfg.ignore_merges)?)
            }
            None => None,
        };

        let mut tok = Tokenizer {
            kind,
            vocab,
            bpe,
            pre_type: pre_cfg.map(|c| c.pre_type),
            special,
            eog: BTreeSet::new(),
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            special_by_len: Vec::new(),
            pieces: Vec::new(),
        };
        tok.read_special_ids(md, n_tokens)?;
        if let Some(v) = md.bool_opt("tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        tok.add_bos = add_bos;
        if let Some(v) = md.bool_opt("tokenizer.ggml.add_eos_token")? {
            tok.add_eos = v;
        }
        if tok.add_bos && tok.special.bos.is_none() {
            return Err(Error::Tokenizer(
                "tokenizer.ggml.add_bos_token is true, but there is no BOS token".to_string(),
            ));
        }
        if tok.add_eos && tok.special.eos.is_none() {
            return Err(Error::Tokenizer(
                "tokenizer.ggml.add_eos_token is true, but there is no EOS token".to_string(),
            ));
        }
        tok.detect_special_by_text();
        tok.build_caches();
        let name = md.get("general.name").and_then(Value::as_str).unwrap_or("");
        tok.apply_model_attrs(&name.to_lowercase());
        Ok(tok)
    }

    fn read_vocab(md: &Metadata) -> Result<Vocab> {
        let key = "tokenizer.ggml.tokens";
        let texts = md.array_opt(key)?.ok_or_else(|| Error::MissingKey(key.to_string()))?;
        if u32::try_from(texts.len()).is_err() {
            return Err(Error::BadMetadata {
                key: key.to_string(),
                msg: format!("{} tokens do not fit u32 ids", texts.len()),
            });
        }
        let n_tokens = texts.len();
        let scores = parallel_array(md, "tokenizer.ggml.scores", n_tokens)?;
        let types = parallel_array(md, "tokenizer.ggml.token_type", n_tokens)?;
        let mut tokens = Vec::with_capacity(n_tokens);
        let mut token_to_id = HashMap::with_capacity(n_tokens);
        for (id, value) in (0u32..).zip(texts) {
            let mut text = value
                .as_str()
                .ok_or_else(|| Error::BadMetadata { key: key.to_string(), msg: format!("token {id} is not a string") })?
                .to_string();
            if text.is_empty() {
                // llama.cpp renames empty tokens so that they can neither match nor collide.
                text = format!("[EMPTY_{id}]");
            }
            if let Some(prev) = token_to_id.insert(text.clone(), id) {
                return Err(Error::Tokenizer(format!("duplicate token {text:?} in vocabulary: ids {prev} and {id}")));
            }
            let score = match scores.and_then(|s| s.get(id as usize)) {
                None => 0.0,
                Some(v) => v.as_f64().ok_or_else(|| Error::BadMetadata {
                    key: "tokenizer.ggml.scores".to_string(),
                    msg: format!("score {id} is not a number"),
                })? as f32,
            };
            let attr = match types.and_then(|t| t.get(id as usize)) {
                None => attr::NORMAL,
                Some(v) => token_type_attr(v.as_i64().ok_or_else(|| Error::BadMetadata {
                    key: "tokenizer.ggml.token_type".to_string(),
                    msg: format!("type of token {id} is not an integer"),
                })?),
            };
            tokens.push(TokenData { text, score, attr });
        }
        Ok(Vocab { tokens, token_to_id })
    }

    /// Reads `tokenizer.ggml.*_token_id`. As in llama.cpp, a default id outside the vocabulary
    /// is dropped and a metadata id outside it is ignored.
    fn read_special_ids(&mut self, md: &Metadata, n_tokens: usize) -> Result<()> {
        type Slot = fn(&mut SpecialIds) -> &mut Option<u32>;
        let slots: [(&str, Slot); 17] = [
            ("tokenizer.ggml.bos_token_id", |s| &mut s.bos),
            ("tokenizer.ggml.eos_token_id", |s| &mut s.eos),
            ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
            ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
            ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
            ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
            ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
            ("tokenizer.ggml.mask_token_id", |s| &mut s.mask),
            ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
            ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
            ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
            ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
            // Deprecated spellings of the first three FIM ids.
            ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
        ];
        for (key, slot) in slots {
            let slot = slot(&mut self.special);
            if slot.is_some_and(|id| id as usize >= n_tokens) {
                *slot = None;
            }
            if let Some(id) = md.u64_opt(key)? {
                if id < n_tokens as u64 {
                    *slot = u32::try_from(id).ok();
                }
            }
        }
        Ok(())
    }

    /// The first token whose text is in `texts`, in list order.
    fn find_text(&self, texts: &[&str]) -> Option<u32> {
        texts.iter().find_map(|t| self.vocab.text_to_token(t))
    }

    fn set_attr(&mut self, id: u32, attr: u32) {
        if let Some(t) = self.vocab.tokens.get_mut(id as usize) {
            t.attr = attr;
        }
    }

    fn mark_control(&mut self, id: u32) {
        if let Some(t) = self.vocab.tokens.get_mut(id as usize) {
            t.attr |= attr::CONTROL;
        }
    }

    /// llama.cpp's text-based detection of EOT/EOM/FIM tokens and of the end-of-generation set,
    /// with the attribute fix-ups that come with it.
    fn detect_special_by_text(&mut self) {
        let s = self.special;
        let detected = [
            (s.eot, EOT_TEXTS),
            (s.eom, EOM_TEXTS),
            (s.fim_pre, FIM_PRE_TEXTS),
            (s.fim_suf, FIM_SUF_TEXTS),
            (s.fim_mid, FIM_MID_TEXTS),
            (s.fim_pad, FIM_PAD_TEXTS),
            (s.fim_rep, FIM_REP_TEXTS),
            (s.fim_sep, FIM_SEP_TEXTS),
        ]
        .map(|(current, texts)| match current {
            Some(id) => Some(id),
            None => {
                let found = self.find_text(texts);
                if let Some(id) = found {
                    self.mark_control(id);
                }
                found
            }
        });
        let [eot, eom, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep] = detected;
        self.special = SpecialIds { eot, eom, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep, ..s };

        // Control tokens named "unused" are unused.
        for t in &mut self.vocab.tokens {
            if t.attr & attr::CONTROL != 0 && t.text.contains("unused") {
                t.attr |= attr::UNUSED;
            }
        }

        let mut eog: BTreeSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        let eog_by_text: Vec<u32> = EOG_TEXTS.iter().filter_map(|t| self.vocab.text_to_token(t)).collect();
        for id in eog_by_text {
            eog.insert(id);
            self.mark_control(id);
        }
        // gpt-oss renders these markers as text.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = self.vocab.text_to_token(text) {
                self.set_attr(id, attr::USER_DEFINED);
            }
        }
        eog.extend([self.special.eos, eot, eom].into_iter().flatten());
        let in_eog = |t: &str| self.vocab.text_to_token(t).filter(|id| eog.contains(id));
        let has_call = in_eog("<|call|>").is_some() || in_eog("<|calls|>").is_some();
        let has_return = in_eog("<|return|>").is_some() || in_eog("<|flush|>").is_some();
        // o200k_harmony and solar-open: <|end|> does not end generation next to these markers.
        let end = in_eog("<|end|>").filter(|_| has_call && has_return);
        // gemma4 and paddleocr: with <|tool_response>, </s> is ordinary text.
        let s_token = in_eog("</s>").filter(|_| in_eog("<|tool_response>").is_some());
        if let Some(end) = end {
            eog.remove(&end);
            self.set_attr(end, attr::USER_DEFINED);
        }
        if let Some(s_token) = s_token {
            eog.remove(&s_token);
            self.set_attr(s_token, attr::NORMAL);
        }
        self.eog = eog;
    }

    fn build_caches(&mut self) {
        let mut special: Vec<u32> = (0u32..)
            .zip(&self.vocab.tokens)
            .filter(|(_, t)| t.attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            .map(|(id, _)| id)
            .collect();
        // llama.cpp's sort is unstable; ties keep id order here.
        special.sort_by_key(|&id| std::cmp::Reverse(self.vocab.get(id).map_or(0, |t| t.text.len())));
        self.special_by_len = special;
        self.pieces = self.vocab.tokens.iter().map(|t| self.compute_piece(t)).collect();
    }

    /// llama.cpp's per-model token attributes (set after the caches are built, as there):
    /// Phi-3 strips whitespace after its special tokens.
    fn apply_model_attrs(&mut self, model_name_lower: &str) {
        if !(model_name_lower.contains("phi-3") || model_name_lower.contains("phi3")) {
            return;
        }
        let rstrip: Vec<u32> = self.special_by_len.iter().copied().chain(self.token_id("</s>")).collect();
        for id in rstrip {
            if let Some(t) = self.vocab.tokens.get_mut(id as usize) {
                t.attr |= attr::RSTRIP;
            }
        }
        for text in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(t) = self.token_id(text).and_then(|id| self.vocab.tokens.get_mut(id as usize)) {
                t.attr &= !attr::RSTRIP;
            }
        }
    }

    /// llama.cpp's `token_to_piece(special = true)` without the cache.
    fn compute_piece(&self, t: &TokenData) -> Vec<u8> {
        if t.attr & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return t.text.as_bytes().to_vec();
        }
        if t.attr & attr::NORMAL != 0 {
            return match self.kind {
                VocabKind::Spm => t.text.replace('\u{2581}', " ").into_bytes(),
                VocabKind::Bpe => decode_byte_level(&t.text),
            };
        }
        if t.attr & attr::BYTE != 0 {
            let byte = t.text.get(3..5).and_then(|hex| u8::from_str_radix(hex, 16).ok());
            return byte.map(|b| vec![b]).unwrap_or_default();
        }
        Vec::new()
    }

    /// Text to token ids.
    ///
    /// `add_special` adds BOS and/or EOS where the model asks for them
    /// (`tokenizer.ggml.add_bos_token` / `add_eos_token` and llama.cpp's per-type defaults).
    /// `parse_special` turns control tokens written in the text (`<|im_start|>`) into their ids;
    /// user-defined tokens are always recognised, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = if text.is_empty() { Vec::new() } else { self.partition(text, parse_special) };
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let bos = if add_special && self.add_bos { self.special.bos } else { None };
        out.extend(bos);
        match &self.bpe {
            Some(bpe) => {
                for frag in &fragments {
                    match *frag {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(start, end) => {
                            if let Some(piece) = text.get(start..end) {
                                bpe.tokenize(&self.vocab, piece, &mut out);
                            }
                        }
                    }
                }
            }
            None => {
                // SPM puts a space before the text that opens the input or follows a special token.
                let mut is_prev_special = true;
                let mut escaped = String::new();
                for frag in &fragments {
                    match *frag {
                        Fragment::Token(id) => {
                            out.push(id);
                            is_prev_special = true;
                        }
                        Fragment::Text(start, end) => {
                            escaped.clear();
                            if self.add_space_prefix && is_prev_special {
                                escaped.push('\u{2581}');
                            }
                            for c in text.get(start..end).unwrap_or("").chars() {
                                escaped.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(&self.vocab, &escaped, self.special.unk, &mut out);
                            is_prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.special.eos);
        }
        out
    }

    /// llama.cpp's `tokenizer_st_partition`: cuts special tokens out of the text, longest first.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0, text.len())];
        for &id in &self.special_by_len {
            let Some(tok) = self.vocab.get(id) else {
                continue;
            };
            if !parse_special && tok.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let pat = tok.text.as_str();
            if pat.is_empty() || !frags.iter().any(|f| matches!(f, Fragment::Text(..))) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let Fragment::Text(mut start, end) = frag else {
                    next.push(frag);
                    continue;
                };
                loop {
                    let Some(rel) = text.get(start..end).and_then(|hay| hay.find(pat)) else {
                        if start < end {
                            next.push(Fragment::Text(start, end));
                        }
                        break;
                    };
                    let m = start + rel;
                    let mut left_end = m;
                    if tok.attr & attr::LSTRIP != 0 {
                        while left_end > start && is_c_space(text.as_bytes().get(left_end - 1)) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start, left_end));
                    }
                    next.push(Fragment::Token(id));
                    start = m + pat.len();
                    if tok.attr & attr::RSTRIP != 0 {
                        while start < end && is_c_space(text.as_bytes().get(start)) {
                            start += 1;
                        }
                    }
                    if start >= end {
                        break;
                    }
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes of one token. With `special == false`, control and unknown tokens give nothing
    /// (as llama.cpp's `token_to_piece`); an id outside the vocabulary gives nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Vec<u8> {
        self.piece(id, special).to_vec()
    }

    fn piece(&self, id: u32, special: bool) -> &[u8] {
        if !special && self.vocab.attr(id) & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return &[];
        }
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Token ids to text, as llama.cpp's `detokenize(remove_special = false,
    /// unparse_special = false)`: control tokens are dropped and invalid UTF-8 is replaced.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.detokenize(ids, false, false)).into_owned()
    }

    /// llama.cpp's `llama_detokenize`: concatenates pieces, drops the space SPM put in front of
    /// the text, optionally strips the BOS/EOS the model adds (`remove_special`) or renders
    /// control tokens (`unparse_special`), then applies the model's space clean-up.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos {
            if let Some((&first, rest)) = ids.split_first() {
                if Some(first) == self.special.bos {
                    remove_space = false;
                    ids = rest;
                }
            }
        }
        if remove_special && self.add_eos {
            if let Some((&last, rest)) = ids.split_last() {
                if Some(last) == self.special.eos {
                    ids = rest;
                }
            }
        }
        let mut text = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let mut piece = self.piece(id, unparse_special);
            if remove_space {
                if let Some(rest) = piece.strip_prefix(b" ") {
                    piece = rest;
                }
            }
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_spaces(&mut text);
        }
        text
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// The BPE pre-tokenizer in use (`None` for SPM).
    pub fn pre_type(&self) -> Option<PreType> {
        self.pre_type
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.special.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.special.eos
    }

    /// End of turn: `tokenizer.ggml.eot_token_id`, else found by text (`<|eot_id|>`, `<|im_end|>`, ...).
    pub fn eot(&self) -> Option<u32> {
        self.special.eot
    }

    pub fn eom(&self) -> Option<u32> {
        self.special.eom
    }

    pub fn unk(&self) -> Option<u32> {
        self.special.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.special.pad
    }

    /// Whether `encode(.., add_special = true, ..)` puts BOS in front.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` puts EOS at the end.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating `id` ends generation (EOS, EOT, EOM and llama.cpp's by-text set).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether `id` is a control token (rendered only on request, never produced from plain text).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attr(id) & attr::CONTROL != 0
    }

    /// The vocabulary text of a token (byte-level BPE tokens are in GPT-2's alphabet).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.get(id).map(|t| t.text.as_str())
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.text_to_token(text)
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("pre_type", &self.pre_type)
            .field("n_vocab", &self.n_vocab())
            .field("special", &self.special)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// A piece of the input: raw text (byte range) or a special token cut out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    Token(u32),
    Text(usize, usize),
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: Option<&u8>) -> bool {
    matches!(b, Some(b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))
}

/// A byte-level BPE token's bytes (llama.cpp's `llama_decode_text`), including its marker for
/// code points outside GPT-2's alphabet.
fn decode_byte_level(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match pretokenize::unicode_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// llama.cpp's `clean_up_tokenization_spaces`, pass for pass: " ?" " !" " ." " ," lose their
/// space, a lone " ' " becomes "'", and " 's" " 'm" " 're" " 've" lose their space.
fn clean_spaces(text: &mut Vec<u8>) {
    let at = |t: &[u8], i: usize| t.get(i).copied().unwrap_or(0);
    let set = |t: &mut [u8], i: usize, v: u8| {
        if let Some(slot) = t.get_mut(i) {
            *slot = v;
        }
    };
    // Pass 1.
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = at(text, i);
        if at(text, i - 1) == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        set(text, total, x);
        total += 1;
    }
    text.truncate(total);
    // Pass 2: llama.cpp overwrites the space after the apostrophe with NUL and skips it.
    let n = text.len();
    let mut total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = at(text, i);
        if x == b'\'' && i + 1 < n && at(text, i - 1) == b' ' && at(text, i + 1) == b' ' {
            total -= 1;
            i += 1;
            set(text, i, 0);
        }
        set(text, total, x);
        total += 1;
        i += 1;
    }
    text.truncate(total);
    // Pass 3.
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = at(text, i);
        if at(text, i - 1) == b' ' && x == b'\'' && i + 1 < n {
            let x1 = at(text, i + 1);
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = at(text, i + 2);
                if matches!((x1, x2), (b'r', b'e') | (b'v', b'e')) {
                    total -= 1;
                }
            }
        }
        set(text, total, x);
        total += 1;
    }
    text.truncate(total);
}

/// Turns token ids into text one at a time for streaming: emits only complete UTF-8, holding back
/// the start of a multi-byte character until its last byte arrives.
///
/// Bytes that can never become valid UTF-8 are emitted as U+FFFD, so the output is always valid.
/// Pieces are concatenated as they are (no SPM leading-space removal, no space clean-up), which
/// is what llama.cpp's server streams.
#[derive(Clone, Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    special: bool,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that drops control tokens, as `Tokenizer::decode` does.
    pub fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder { tokenizer, pending: Vec::new(), special: false }
    }

    /// Whether control tokens are rendered as their text (`<|im_end|>`).
    pub fn render_special(mut self, special: bool) -> StreamDecoder<'a> {
        self.special = special;
        self
    }

    /// Adds one token and returns the text that became complete.
    pub fn push(&mut self, id: u32) -> String {
        let piece = self.tokenizer.piece(id, self.special);
        self.pending.extend_from_slice(piece);
        self.drain_complete()
    }

    /// Adds raw bytes and returns the text that became complete.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        self.drain_complete()
    }

    fn drain_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if let Some(s) = self.pending.get(..valid).and_then(|b| std::str::from_utf8(b).ok()) {
                        out.push_str(s);
                    }
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: held-back bytes of an unfinished character come out as U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Whether bytes of an unfinished character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    fn tiny(tokens: &[(&str, i32)], name: &str) -> Tokenizer {
        let mut md = Metadata::default();
        md.set("general.name", Value::String(name.into()));
        md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        md.set("tokenizer.ggml.pre", Value::String("qwen2".into()));
        let texts = tokens.iter().map(|(t, _)| Value::String(t.to_string())).collect();
        md.set("tokenizer.ggml.tokens", Value::Array(texts));
        let types = tokens.iter().map(|&(_, ty)| Value::I32(ty)).collect();
        md.set("tokenizer.ggml.token_type", Value::Array(types));
        md.set("tokenizer.ggml.merges", Value::Array(Vec::new()));
        match Tokenizer::from_metadata(&md) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn harmony_end_is_not_end_of_generation() {
        // Goal: llama.cpp's o200k_harmony rule; method: <|end|> beside <|return|> and <|call|>.
        let tok = tiny(&[("a", 1), ("<|return|>", 3), ("<|call|>", 3), ("<|end|>", 3)], "");
        assert_eq!(tok.eog_ids().collect::<Vec<_>>(), [1, 2]);
        assert!(!tok.is_control(3));
        let tok = tiny(&[("a", 1), ("<|end|>", 3)], "");
        assert_eq!(tok.eog_ids().collect::<Vec<_>>(), [1]);
        assert_eq!(tok.eot(), Some(1));
        // A control-looking end token typed as normal becomes control.
        let tok = tiny(&[("a", 1), ("<|im_end|>", 1)], "");
        assert!(tok.is_control(1) && tok.is_eog(1));
    }

    #[test]
    fn phi3_strips_whitespace_after_special_tokens() {
        // Goal: llama.cpp's Phi-3 RSTRIP attribute; method: "<|user|>\nx" with and without it.
        let tokens = [("<|user|>", 3), ("\u{10a}", 1), ("x", 1)];
        assert_eq!(tiny(&tokens, "Phi-3 mini").encode("<|user|>\nx", false, true), [0, 2]);
        assert_eq!(tiny(&tokens, "other").encode("<|user|>\nx", false, true), [0, 1, 2]);
    }

    #[test]
    fn tokenizer_can_be_shared_across_threads() {
        // Goal: actors can hold and share a tokenizer; method: compile-time Send + Sync check.
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
        check::<StreamDecoder<'static>>();
    }

    #[test]
    fn clean_spaces_matches_llama_cpp() {
        // Goal: the three clean-up passes behave like llama.cpp's; method: one case per rule.
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean("it 's I 'm we 're they 've"), "it's I'm we're they've");
        assert_eq!(clean("don 't I 'd we 'll"), "don 't I 'd we 'll");
        assert_eq!(clean(""), "");
        assert_eq!(clean(" ."), ".");
    }

    #[test]
    fn stream_decoder_holds_back_partial_characters() {
        // Goal: never emit broken UTF-8; method: feed "é日" and an invalid byte one byte at a time.
        let tok = tiny(&[("a", 1)], "");
        let mut d = StreamDecoder::new(&tok);
        let bytes = "é日".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&d.push_bytes(std::slice::from_ref(b)));
        }
        assert_eq!(out, "é日");
        assert_eq!(d.push_bytes(&[0xE6]), "");
        assert!(d.has_pending());
        assert_eq!(d.push_bytes(b"x"), "\u{FFFD}x");
        assert_eq!(d.push_bytes(&[0xF0, 0x9F]), "");
        assert_eq!(d.flush(), "\u{FFFD}");
        assert_eq!(d.push(0), "a");
    }

    #[test]
    fn byte_level_decoding_marks_foreign_code_points() {
        // Goal: llama_decode_text's fallback; method: a token with a code point outside GPT-2's set.
        assert_eq!(decode_byte_level("Ġhi"), b" hi");
        assert_eq!(String::from_utf8_lossy(&decode_byte_level("€")), "[UNK_BYTE_0xe282ac€]");
    }
}
