//! The pre-tokenizer of byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`): splits text
//! into words with llama.cpp's regex list for the vocabulary's `tokenizer.ggml.pre`, then maps each
//! word's UTF-8 bytes to GPT-2's printable code points.
//!
//! This mirrors llama.cpp's `unicode_regex_split` (src/unicode.cpp) rather than the Hugging Face
//! tokenizers, because prima must reproduce llama.cpp's token ids exactly:
//! - the regexes are applied one after the other, each splitting the pieces left by the previous
//!   one; the text between two matches is kept as a piece of its own;
//! - the two regexes llama.cpp runs through hand-written matchers (GPT-2's and Llama 3's) are
//!   ported here as hand-written matchers too;
//! - every other regex runs, as in llama.cpp, on a "collapsed" copy of the text where each
//!   non-ASCII code point stands for its Unicode category (`\p{L}` becomes `[\u{D2}A-Za-z]`), or,
//!   when the regex names no category, on the text with non-ASCII whitespace replaced by U+000B.
//!   The quirks of that scheme (for example `~` being neither `\p{P}` nor `\p{S}`) come along.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cmp::Ordering;
use std::sync::OnceLock;

use fancy_regex::Regex;

use crate::error::{Error, Result};

/// llama.cpp's pre-tokenizer types (`LLAMA_VOCAB_PRE_TYPE_*`) that prima implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreType {
    Default,
    Llama3,
    DeepseekLlm,
    DeepseekCoder,
    Deepseek3Llm,
    Falcon,
    Mpt,
    Starcoder,
    Gpt2,
    Refact,
    CommandR,
    Stablelm2,
    Qwen2,
    Olmo,
    Dbrx,
    Smaug,
    Poro,
    Chatglm4,
    Viking,
    Jais,
    Tekken,
    Smollm,
    Codeshell,
    Bloom,
    Gpt3Finnish,
    Exaone,
    Chameleon,
    Minerva,
    Gpt4o,
    SeedCoder,
    Trillion,
    Bailingmoe,
}

/// What a `tokenizer.ggml.pre` name selects: the pre-tokenizer and the flags llama.cpp's
/// `llama_vocab::impl::load` sets alongside it.
#[derive(Clone, Copy, Debug)]
pub struct PreConfig {
    pub pre_type: PreType,
    pub clean_spaces: bool,
    pub ignore_merges: bool,
    /// `Some(true)` where llama.cpp turns `add_bos` on for this pre type (metadata may still override).
    pub add_bos: Option<bool>,
    /// llama.cpp clears the default BOS id for chatglm.
    pub clear_bos: bool,
}

impl PreConfig {
    /// Maps a `tokenizer.ggml.pre` value the way llama.cpp does; a missing value means "default".
    pub fn from_name(name: Option<&str>) -> Result<PreConfig> {
        use PreType::*;
        let mut cfg =
            PreConfig { pre_type: Default, clean_spaces: true, ignore_merges: false, add_bos: None, clear_bos: false };
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Ok(cfg);
        };
        let (pre_type, clean_spaces) = match name {
            "default" => (Default, true),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
                cfg.ignore_merges = true;
                cfg.add_bos = Some(true);
                (Llama3, true)
            }
            "deepseek-llm" => (DeepseekLlm, false),
            "deepseek-coder" => (DeepseekCoder, false),
            "deepseek-v3" => (Deepseek3Llm, false),
            "falcon" => (Falcon, true),
            "mpt" => (Mpt, true),
            "starcoder" => (Starcoder, true),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
            | "mellum" | "exaone4" => (Gpt2, true),
            "refact" => (Refact, true),
            "command-r" => (CommandR, false),
            "qwen2" | "deepseek-r1-qwen" => (Qwen2, false),
            "megrez" => (Qwen2, true),
            "stablelm2" => (Stablelm2, true),
            "olmo" => (Olmo, true),
            "dbrx" => (Dbrx, true),
            "smaug-bpe" => (Smaug, true),
            "poro-chat" => (Poro, false),
            "glm4" | "chatglm-bpe" => {
                cfg.clear_bos = true;
                (Chatglm4, true)
            }
            "viking" => (Viking, false),
            "jais" => (Jais, true),
            "tekken" => {
                cfg.ignore_merges = true;
                cfg.add_bos = Some(true);
                (Tekken, false)
            }
            "smollm" => (Smollm, false),
            "codeshell" => (Codeshell, true),
            "bloom" => (Bloom, true),
            "gpt3-finnish" => (Gpt3Finnish, true),
            "exaone" => (Exaone, true),
            "chameleon" => {
                cfg.add_bos = Some(true);
                (Chameleon, false)
            }
            "minerva-7b" => (Minerva, true),
            "gpt-4o" | "llama4" => (Gpt4o, false),
            "seed-coder" => (SeedCoder, false),
            "trillion" => (Trillion, false),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => (Bailingmoe, false),
            other => return Err(Error::Tokenizer(format!("unknown or unsupported pre-tokenizer type {other:?}"))),
        };
        cfg.pre_type = pre_type;
        cfg.clean_spaces = clean_spaces;
        Ok(cfg)
    }
}

const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_REGEX: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's regex list for each pre-tokenizer type (src/llama-vocab.cpp, `llm_tokenizer_bpe`).
pub fn regex_list(pre_type: PreType) -> Vec<&'static str> {
    use PreType::*;
    match pre_type {
        Llama3 | Dbrx | Smaug | Chatglm4 => vec![LLAMA3_REGEX],
        DeepseekLlm => vec![
            "[\r\n]",
            "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
            "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
            "\\s+$",
            "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
            "\\p{N}+",
        ],
        Deepseek3Llm => vec![
            "\\p{N}{1,3}",
            "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        ],
        DeepseekCoder => vec![
            "[\r\n]",
            "\\s?\\p{L}+",
            "\\s?\\p{P}+",
            "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
            "\\p{N}",
        ],
        Falcon => vec![
            "[\\p{P}\\$\\+<=>\\^~\\|`]+",
            GPT2_REGEX,
            "[0-9][0-9][0-9]",
        ],
        Starcoder | Refact | CommandR | Smollm | Codeshell | Exaone | Minerva => {
            vec!["\\p{N}", GPT2_REGEX]
        }
        Gpt2 | Mpt | Olmo | Jais | Trillion => vec![GPT2_REGEX],
        Stablelm2 | Qwen2 => vec![QWEN2_REGEX],
        Poro | Bloom | Gpt3Finnish => vec![" ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+"],
        Viking => vec![" ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+", "\\p{N}"],
        Tekken => vec![
            "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        ],
        Chameleon => vec![
            "<sentinel:[0-9]+>",
            "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
            "([\\t\\n]|    |  )",
            "\\p{N}",
            "[\\p{P}!-/:-@\\[-`{-~]",
            GPT2_REGEX,
        ],
        Gpt4o => vec![GPT4O_REGEX],
        SeedCoder => vec![
            "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        ],
        Bailingmoe => vec![
            "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
        ],
        Default => vec![
            "[\\p{P}\\$\\+<=>\\^~\\|]+",
            GPT2_REGEX,
            "\\p{N}+",
            "[0-9][0-9][0-9]",
        ],
    }
}

/// A compiled regex list: splits text into byte-encoded words.
pub struct PreTokenizer {
    splitters: Vec<Splitter>,
}

enum Splitter {
    Gpt2,
    Llama3,
    Regex { re: Regex, collapsed: bool },
}

/// The prefix of each Unicode-category escape llama.cpp knows, with the collapsed code point that
/// stands for the category and the ASCII members of the category.
const CATEGORY_ESCAPES: [(&str, char, &str); 10] = [
    ("\\p{N}", '\u{D1}', "0-9"),
    ("\\p{L}", '\u{D2}', "A-Za-z"),
    ("\\p{P}", '\u{D3}', "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}"),
    ("\\p{M}", '\u{D4}', ""),
    ("\\p{S}", '\u{D5}', "\\$\\+<->^`\\|"),
    ("\\p{Lu}", '\u{D2}', "A-Za-z"),
    ("\\p{Ll}", '\u{D2}', "A-Za-z"),
    ("\\p{Lt}", '\u{D2}', "A-Za-z"),
    ("\\p{Lm}", '\u{D2}', "A-Za-z"),
    ("\\p{Lo}", '\u{D2}', "A-Za-z"),
];

/// fancy-regex gives up after this many backtracking steps; llama.cpp's std::regex has no limit.
/// A piece whose regex run gives up is kept whole (see `split_regex`).
const BACKTRACK_LIMIT: usize = 50_000_000;

impl PreTokenizer {
    pub fn new(exprs: &[&str]) -> Result<PreTokenizer> {
        let mut splitters = Vec::with_capacity(exprs.len());
        for &expr in exprs {
            // llama.cpp picks its hand-written matchers by comparing the regex text.
            if expr == GPT2_REGEX {
                splitters.push(Splitter::Gpt2);
                continue;
            }
            if expr == LLAMA3_REGEX {
                splitters.push(Splitter::Llama3);
                continue;
            }
            let collapsed = uses_categories(expr);
            let pattern = if collapsed { collapse_regex(expr)? } else { expr.to_string() };
            let re = fancy_regex::RegexBuilder::new(&pattern)
                .backtrack_limit(BACKTRACK_LIMIT)
                .build()
                .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex {expr:?}: {e}")))?;
            splitters.push(Splitter::Regex { re, collapsed });
        }
        Ok(PreTokenizer { splitters })
    }

    /// Splits `text` into words, each given as its UTF-8 bytes mapped through GPT-2's
    /// byte-to-unicode table (the alphabet of the merges and the vocabulary).
    pub fn split(&self, text: &str) -> Vec<String> {
        let cpts: Vec<char> = text.chars().collect();
        let mut offsets = vec![cpts.len()];
        let mut collapsed: Option<MappedText> = None;
        let mut wide: Option<MappedText> = None;
        for splitter in &self.splitters {
            offsets = match splitter {
                Splitter::Gpt2 => split_gpt2(&cpts, &offsets),
                Splitter::Llama3 => split_llama3(&cpts, &offsets),
                Splitter::Regex { re, collapsed: true } => {
                    let mapped = collapsed.get_or_insert_with(|| MappedText::collapsed(&cpts));
                    split_regex(re, mapped, &offsets)
                }
                Splitter::Regex { re, collapsed: false } => {
                    let mapped = wide.get_or_insert_with(|| MappedText::wide(&cpts));
                    split_regex(re, mapped, &offsets)
                }
            };
        }
        let table = byte_to_unicode();
        let mut words = Vec::with_capacity(offsets.len());
        let mut start = 0usize;
        let mut utf8 = [0u8; 4];
        for len in offsets {
            let Some(chars) = cpts.get(start..start + len) else {
                break;
            };
            start += len;
            let mut word = String::with_capacity(len * 2);
            for c in chars {
                for b in c.encode_utf8(&mut utf8).bytes() {
                    if let Some(&encoded) = table.get(usize::from(b)) {
                        word.push(encoded);
                    }
                }
            }
            words.push(word);
        }
        words
    }
}

fn uses_categories(expr: &str) -> bool {
    CATEGORY_ESCAPES.iter().any(|(esc, _, _)| expr.contains(esc))
}

/// Rewrites a regex for the collapsed text, exactly as llama.cpp's `unicode_regex_split` does:
/// each `\p{X}` becomes the collapsed code point of category X plus X's ASCII members, wrapped in
/// `[...]` unless it already sits inside a class.
fn collapse_regex(expr: &str) -> Result<String> {
    if !expr.is_ascii() {
        return Err(Error::Tokenizer(format!(
            "regex {expr:?} mixes unicode categories and non-ASCII characters (llama.cpp rejects it too)"
        )));
    }
    let bytes = expr.as_bytes();
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut out = String::with_capacity(expr.len() * 2);
    let mut inside = false;
    let mut i = 0usize;
    while i < bytes.len() {
        let c = at(i);
        if c == b'[' && (i == 0 || at(i - 1) != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && c == b']' && at(i.wrapping_sub(1)) != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if c == b'\\' && i + 3 < bytes.len() && at(i + 1) == b'p' && at(i + 2) == b'{' {
            let close = expr.get(i + 3..).and_then(|rest| rest.find('}')).map(|p| p + i + 3);
            if let Some(close) = close.filter(|&c| c <= i + 10) {
                let pat = expr.get(i..=close).unwrap_or("");
                if let Some((_, cpt, ascii)) = CATEGORY_ESCAPES.iter().find(|(e, _, _)| *e == pat) {
                    if !inside {
                        out.push('[');
                    }
                    out.push(*cpt);
                    out.push_str(ascii);
                    if !inside {
                        out.push(']');
                    }
                    i = close + 1;
                    continue;
                }
            }
        }
        out.push(char::from(c));
        i += 1;
    }
    Ok(out)
}

/// A string with one char per code point of the original text, plus each char's byte offset.
struct MappedText {
    text: String,
    /// `byte_offsets[i]` is where code point `i` starts; one extra entry holds the length.
    byte_offsets: Vec<usize>,
}

impl MappedText {
    fn from_chars(chars: impl Iterator<Item = char>, n: usize) -> MappedText {
        let mut text = String::with_capacity(n * 2);
        let mut byte_offsets = Vec::with_capacity(n + 1);
        for c in chars {
            byte_offsets.push(text.len());
            text.push(c);
        }
        byte_offsets.push(text.len());
        MappedText { text, byte_offsets }
    }

    /// llama.cpp's collapsed text: ASCII as is, other code points replaced by their category.
    fn collapsed(cpts: &[char]) -> MappedText {
        let chars = cpts.iter().map(|&c| {
            if c.is_ascii() {
                return c;
            }
            let flags = flags(c);
            if flags.whitespace {
                return '\u{0B}';
            }
            match flags.category {
                Category::Number => '\u{D1}',
                Category::Letter => '\u{D2}',
                Category::Punctuation => '\u{D3}',
                Category::Mark => '\u{D4}',
                Category::Symbol => '\u{D5}',
                _ => '\u{D0}',
            }
        });
        MappedText::from_chars(chars, cpts.len())
    }

    /// The text llama.cpp hands to std::wregex: non-ASCII whitespace becomes U+000B.
    fn wide(cpts: &[char]) -> MappedText {
        let chars = cpts.iter().map(|&c| if !c.is_ascii() && flags(c).whitespace { '\u{0B}' } else { c });
        MappedText::from_chars(chars, cpts.len())
    }

    fn cpt_index(&self, byte: usize) -> Option<usize> {
        self.byte_offsets.binary_search(&byte).ok()
    }
}

/// Splits every piece by the matches of `re`: each match and each gap between matches becomes a
/// piece (llama.cpp's `unicode_regex_split_stl`).
fn split_regex(re: &Regex, mapped: &MappedText, offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0usize;
    for &len in offsets {
        let piece = mapped
            .byte_offsets
            .get(start)
            .zip(mapped.byte_offsets.get(start + len))
            .and_then(|(&b0, &b1)| mapped.text.get(b0..b1).map(|s| (b0, s)));
        let Some((base, piece)) = piece else {
            out.push(len);
            start += len;
            continue;
        };
        let mut done = 0usize; // code points of this piece already emitted
        for m in re.find_iter(piece) {
            // A regex that gives up (backtrack limit) leaves the rest of the piece whole.
            let Ok(m) = m else { break };
            let (Some(m0), Some(m1)) = (mapped.cpt_index(base + m.start()), mapped.cpt_index(base + m.end())) else {
                break;
            };
            let (m0, m1) = (m0 - start, m1 - start);
            if m0 > done {
                out.push(m0 - done);
            }
            if m1 > m0 {
                out.push(m1 - m0);
            }
            done = done.max(m1);
        }
        if done < len {
            out.push(len - done);
        }
        start += len;
    }
    out
}

/// Walks one piece of code points for the hand-written matchers, emitting word lengths.
struct Cursor<'a> {
    cpts: &'a [char],
    ini: usize,
    end: usize,
    prev_end: usize,
    out: &'a mut Vec<usize>,
}

impl Cursor<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        if self.ini <= pos && pos < self.end {
            self.cpts.get(pos).copied()
        } else {
            None
        }
    }

    fn flags(&self, pos: usize) -> Flags {
        self.cpt(pos).map(flags).unwrap_or(Flags::OUT_OF_RANGE)
    }

    fn is(&self, pos: usize, c: char) -> bool {
        self.cpt(pos) == Some(c)
    }

    fn add_token(&mut self, end: usize) -> usize {
        let len = end.saturating_sub(self.prev_end);
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (with `lower` folding case for Llama 3's `(?i:...)`).
    fn contraction_len(&self, pos: usize, lower: bool) -> Option<usize> {
        if !self.is(pos, '\'') || pos + 1 >= self.end {
            return None;
        }
        let fold = |c: Option<char>| c.map(|c| if lower { c.to_ascii_lowercase() } else { c });
        let next = fold(self.cpt(pos + 1));
        if matches!(next, Some('s' | 't' | 'm' | 'd')) {
            return Some(2);
        }
        if pos + 2 < self.end {
            let next2 = fold(self.cpt(pos + 2));
            if matches!((next, next2), (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))) {
                return Some(3);
            }
        }
        None
    }
}

/// llama.cpp's `unicode_regex_split_custom_gpt2`:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0usize;
    for &len in offsets {
        let mut c = Cursor { cpts, ini: start, end: start + len, prev_end: start, out: &mut out };
        start += len;
        let mut pos = c.ini;
        while pos < c.end {
            if let Some(n) = c.contraction_len(pos, false) {
                pos += c.add_token(pos + n);
                continue;
            }
            let is_space = c.is(pos, ' ');
            let mut f2 = if is_space { c.flags(pos + 1) } else { c.flags(pos) };
            if f2.is_letter() {
                pos += usize::from(is_space);
                while f2.is_letter() {
                    pos += 1;
                    f2 = c.flags(pos);
                }
                c.add_token(pos);
                continue;
            }
            if f2.is_number() {
                pos += usize::from(is_space);
                while f2.is_number() {
                    pos += 1;
                    f2 = c.flags(pos);
                }
                c.add_token(pos);
                continue;
            }
            if f2.is_other_symbol() {
                pos += usize::from(is_space);
                while f2.is_other_symbol() {
                    pos += 1;
                    f2 = c.flags(pos);
                }
                c.add_token(pos);
                continue;
            }
            let mut n_ws = 0usize;
            while c.flags(pos + n_ws).whitespace {
                n_ws += 1;
            }
            if n_ws > 1 && c.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                c.add_token(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                c.add_token(pos);
                continue;
            }
            pos += 1;
            c.add_token(pos);
        }
    }
    out
}

/// llama.cpp's `unicode_regex_split_custom_llama3`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|
/// [^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
fn split_llama3(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0usize;
    for &len in offsets {
        let mut c = Cursor { cpts, ini: start, end: start + len, prev_end: start, out: &mut out };
        start += len;
        let mut pos = c.ini;
        while pos < c.end {
            if let Some(n) = c.contraction_len(pos, true) {
                pos += c.add_token(pos + n);
                continue;
            }
            let f = c.flags(pos);
            let is_newline = c.is(pos, '\r') || c.is(pos, '\n');
            if !(is_newline || f.is_number()) && (f.is_letter() || c.flags(pos + 1).is_letter()) {
                pos += 1;
                while c.flags(pos).is_letter() {
                    pos += 1;
                }
                c.add_token(pos);
                continue;
            }
            if f.is_number() {
                let mut ini = pos;
                while c.flags(pos).is_number() {
                    pos += 1;
                    if pos - ini >= 3 {
                        c.add_token(pos);
                        ini = pos;
                    }
                }
                c.add_token(pos);
                continue;
            }
            let is_space = c.is(pos, ' ');
            let mut f2 = if is_space { c.flags(pos + 1) } else { f };
            // llama.cpp tests the first code point's own flags for "defined" here, not `f2`'s.
            if !(f2.whitespace || f2.is_letter() || f2.is_number()) && f.is_defined() {
                pos += usize::from(is_space);
                while f2.is_other_symbol() {
                    pos += 1;
                    f2 = c.flags(pos);
                }
                while c.is(pos, '\r') || c.is(pos, '\n') {
                    pos += 1;
                }
                c.add_token(pos);
                continue;
            }
            let mut n_ws = 0usize;
            let mut last_newline_end = 0usize;
            while c.flags(pos + n_ws).whitespace {
                if c.is(pos + n_ws, '\r') || c.is(pos + n_ws, '\n') {
                    last_newline_end = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            if last_newline_end > 0 {
                pos = last_newline_end;
                c.add_token(pos);
                continue;
            }
            if n_ws > 1 && c.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                c.add_token(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                c.add_token(pos);
                continue;
            }
            pos += 1;
            c.add_token(pos);
        }
    }
    out
}

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order (so ' ' is 'Ġ' and '\n' is 'Ċ').
pub fn byte_to_unicode() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut n = 0u32;
        for (b, slot) in (0u32..).zip(table.iter_mut()) {
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
            let cp = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            *slot = char::from_u32(cp).unwrap_or('\0');
        }
        table
    })
}

/// The inverse of [`byte_to_unicode`]: `None` for code points outside GPT-2's alphabet.
pub fn unicode_to_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<Vec<Option<u8>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut inv = vec![None; 0x144];
        for (b, &c) in (0u8..=255).zip(byte_to_unicode().iter()) {
            if let Some(slot) = inv.get_mut(c as usize) {
                *slot = Some(b);
            }
        }
        inv
    });
    table.get(c as usize).copied().flatten()
}

/// The Unicode general category of a code point, grouped as llama.cpp's `unicode_cpt_flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Undefined,
    Number,
    Letter,
    Separator,
    Mark,
    Punctuation,
    Symbol,
    Control,
}

/// What llama.cpp's matchers ask of a code point: its category and whether it is whitespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    pub category: Category,
    pub whitespace: bool,
}

impl Flags {
    /// What llama.cpp reports for a position outside the piece: nothing at all.
    const OUT_OF_RANGE: Flags = Flags { category: Category::Undefined, whitespace: false };

    fn is_letter(self) -> bool {
        self.category == Category::Letter
    }

    fn is_number(self) -> bool {
        self.category == Category::Number
    }

    fn is_defined(self) -> bool {
        self.category != Category::Undefined || self.whitespace
    }

    /// `[^\s\p{L}\p{N}]` for a code point that exists.
    fn is_other_symbol(self) -> bool {
        !(self.whitespace || self.is_letter() || self.is_number()) && self.is_defined()
    }
}

struct CategoryTable {
    /// Disjoint, sorted `(first, last, category)` ranges.
    ranges: Vec<(u32, u32, Category)>,
    /// Sorted `(first, last)` ranges of White_Space.
    whitespace: Vec<(u32, u32)>,
}

/// The code point ranges of a one-class regex such as `\p{L}`, taken from regex-syntax's Unicode
/// tables (the same tables fancy-regex matches with).
fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => {
            class.ranges().iter().map(|r| (u32::from(r.start()), u32::from(r.end()))).collect()
        }
        _ => Vec::new(),
    }
}

fn category_table() -> &'static CategoryTable {
    static TABLE: OnceLock<CategoryTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut ranges = Vec::new();
        for (pattern, category) in [
            (r"\p{N}", Category::Number),
            (r"\p{L}", Category::Letter),
            (r"\p{Z}", Category::Separator),
            (r"\p{M}", Category::Mark),
            (r"\p{P}", Category::Punctuation),
            (r"\p{S}", Category::Symbol),
            (r"\p{C}", Category::Control),
        ] {
            ranges.extend(class_ranges(pattern).into_iter().map(|(a, b)| (a, b, category)));
        }
        ranges.sort_unstable_by_key(|r| r.0);
        CategoryTable { ranges, whitespace: class_ranges(r"\s") }
    })
}

fn in_ranges<T>(ranges: &[T], cp: u32, bounds: impl Fn(&T) -> (u32, u32)) -> Option<&T> {
    let i = ranges
        .binary_search_by(|r| {
            let (a, b) = bounds(r);
            if b < cp {
                Ordering::Less
            } else if a > cp {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .ok()?;
    ranges.get(i)
}

/// The flags of one code point.
pub fn flags(c: char) -> Flags {
    let table = category_table();
    let cp = u32::from(c);
    let category = in_ranges(&table.ranges, cp, |r| (r.0, r.1)).map(|r| r.2).unwrap_or(Category::Undefined);
    let whitespace = in_ranges(&table.whitespace, cp, |r| *r).is_some();
    Flags { category, whitespace }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn check(pre: &[&str], text: &str, expect: &[&str]) {
        let tok = PreTokenizer::new(pre).unwrap_or_else(|e| panic!("{e}"));
        let words: Vec<String> = tok
            .split(text)
            .into_iter()
            .map(|w| {
                let bytes: Vec<u8> = w.chars().filter_map(unicode_to_byte).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect();
        assert_eq!(words, expect, "text {text:?}");
    }

    #[test]
    fn byte_table_is_gpt2() {
        // Goal: the byte<->unicode table is GPT-2's; method: spot-check known entries and invert all.
        let t = byte_to_unicode();
        assert_eq!(t[usize::from(b' ')], 'Ġ');
        assert_eq!(t[usize::from(b'\n')], 'Ċ');
        assert_eq!(t[usize::from(b'a')], 'a');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        for b in 0u8..=255 {
            assert_eq!(unicode_to_byte(t[usize::from(b)]), Some(b));
        }
        assert_eq!(unicode_to_byte('€'), None);
    }

    #[test]
    fn categories_come_from_unicode_tables() {
        // Goal: the category table is populated; method: classify one code point of each kind.
        assert_eq!(flags('a').category, Category::Letter);
        assert_eq!(flags('日').category, Category::Letter);
        assert_eq!(flags('7').category, Category::Number);
        assert_eq!(flags('½').category, Category::Number);
        assert_eq!(flags('.').category, Category::Punctuation);
        assert_eq!(flags('~').category, Category::Symbol);
        assert_eq!(flags('\u{301}').category, Category::Mark);
        assert_eq!(flags('\u{7}').category, Category::Control);
        assert!(flags('\u{A0}').whitespace);
        assert!(flags('\u{3000}').whitespace);
        assert!(!flags('\u{1C}').whitespace);
    }

    #[test]
    fn gpt2_splits_like_the_regex() {
        // Goal: the hand-written GPT-2 matcher splits as its regex would; method: known cases.
        check(&[GPT2_REGEX], "Hello world", &["Hello", " world"]);
        check(&[GPT2_REGEX], "  hello", &[" ", " hello"]);
        check(&[GPT2_REGEX], "don't  stop\n\n", &["don", "'t", " ", " stop", "\n\n"]);
        check(&[GPT2_REGEX], "a1234 !!x", &["a", "1234", " !!", "x"]);
    }

    #[test]
    fn smollm_splits_digits_first() {
        // Goal: sequential regexes split each other's pieces; method: smollm's digit-first list.
        let smollm = regex_list(PreType::Smollm);
        check(&smollm, "ab 123", &["ab", " ", "1", "2", "3"]);
    }

    #[test]
    fn llama3_groups_three_digits_and_newlines() {
        // Goal: the Llama 3 matcher; method: digit groups, contractions, trailing newlines.
        check(&[LLAMA3_REGEX], "12345 I'M ok!\n\n x", &["123", "45", " I", "'M", " ok", "!\n\n", " x"]);
        check(&[LLAMA3_REGEX], "a  \n  b", &["a", "  \n", " ", " b"]);
    }

    #[test]
    fn qwen2_regex_runs_on_collapsed_text() {
        // Goal: a regex with categories runs on the collapsed text; method: qwen2's list.
        let qwen = regex_list(PreType::Qwen2);
        check(&qwen, "Führer 123 日本語!!\n", &["Führer", " ", "1", "2", "3", " 日本語", "!!\n"]);
        check(&qwen, "I've  x", &["I", "'ve", " ", " x"]);
    }

    #[test]
    fn collapse_rewrites_categories() {
        // Goal: the regex rewrite matches llama.cpp's; method: compare rewritten strings.
        assert_eq!(collapse_regex(r"\p{N}+").ok().as_deref(), Some("[\u{D1}0-9]+"));
        assert_eq!(collapse_regex(r"[^\s\p{L}\p{N}]").ok().as_deref(), Some("[^\\s\u{D2}A-Za-z\u{D1}0-9]"));
        assert!(collapse_regex("\\p{N}é").is_err());
    }

    #[test]
    fn unknown_pre_type_is_an_error() {
        // Goal: an unsupported pre name is rejected, a missing one means default; method: both.
        assert!(PreConfig::from_name(Some("no-such-pre")).is_err());
        assert_eq!(PreConfig::from_name(None).map(|c| c.pre_type).ok(), Some(PreType::Default));
    }

    #[test]
    fn every_regex_list_compiles_and_splits_losslessly() {
        // Goal: each supported pre type's regexes build and never lose or reorder text;
        // method: split a mixed sample with each list and join the words back.
        use PreType::*;
        let sample = "Hello, y'all! How're you 😁 ?我想在apple工作1314151天～ -----=== нещо 3.3 3..3\n\n \t x~y  ";
        for pre in [
            Default,
            Llama3,
            DeepseekLlm,
            DeepseekCoder,
            Deepseek3Llm,
            Falcon,
            Mpt,
            Starcoder,
            Gpt2,
            Refact,
            CommandR,
            Stablelm2,
            Qwen2,
            Olmo,
            Dbrx,
            Smaug,
            Poro,
            Chatglm4,
            Viking,
            Jais,
            Tekken,
            Smollm,
            Codeshell,
            Bloom,
            Gpt3Finnish,
            Exaone,
            Chameleon,
            Minerva,
            Gpt4o,
            SeedCoder,
            Trillion,
            Bailingmoe,
        ] {
            let tok = match PreTokenizer::new(&regex_list(pre)) {
                Ok(t) => t,
                Err(e) => panic!("{pre:?}: {e}"),
            };
            let bytes: Vec<u8> = tok.split(sample).concat().chars().filter_map(unicode_to_byte).collect();
            assert_eq!(String::from_utf8_lossy(&bytes), sample, "{pre:?}");
        }
    }
}
