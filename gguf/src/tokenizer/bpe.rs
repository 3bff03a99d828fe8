//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): pre-tokenize, then merge adjacent symbols of
//! each word by merge rank, as llama.cpp's `llm_tokenizer_bpe_session` does.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::pretokenize::PreTokenizer;
use super::Vocab;
use crate::error::{Error, Result};
use crate::value::Value;

/// Merge ranks plus the pre-tokenizer: everything BPE needs beyond the vocabulary.
pub struct Bpe {
    /// `"left right"` -> rank. A space can join the pair unambiguously because byte-level
    /// symbols never contain a raw space (byte 0x20 is encoded as 'Ġ').
    ranks: HashMap<String, u32>,
    pre: PreTokenizer,
    /// Emit a word that is itself a token without merging (llama3-style vocabularies).
    ignore_merges: bool,
}

impl Bpe {
    /// Reads `tokenizer.ggml.merges`: each entry is "first second", split at the first space
    /// after the first byte; an entry without such a space becomes an unmatchable pair, and a
    /// repeated pair keeps its first rank (llama.cpp's `emplace`).
    pub fn new(merges: &[Value], pre: PreTokenizer, ignore_merges: bool) -> Result<Bpe> {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, merge) in (0u32..).zip(merges) {
            let merge = merge
                .as_str()
                .ok_or_else(|| Error::Tokenizer(format!("tokenizer.ggml.merges[{rank}] is not a string")))?;
            let split = merge.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
            let key = match split {
                Some(i) => {
                    let (first, rest) = merge.split_at(i);
                    format!("{first} {}", rest.get(1..).unwrap_or(""))
                }
                None => " ".to_string(),
            };
            ranks.entry(key).or_insert(rank);
        }
        Ok(Bpe { ranks, pre, ignore_merges })
    }

    /// Appends the tokens of one raw-text fragment.
    pub fn tokenize(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut session = Session::default();
        for word in self.pre.split(text) {
            if self.ignore_merges {
                if let Some(id) = vocab.text_to_token(&word) {
                    out.push(id);
                    continue;
                }
            }
            session.merge_word(self, &word);
            for sym in session.symbols.iter().filter(|s| s.len > 0) {
                let Some(piece) = word.get(sym.start..sym.start + sym.len) else {
                    continue;
                };
                match vocab.text_to_token(piece) {
                    Some(id) => out.push(id),
                    None => {
                        // llama.cpp looks each byte of the symbol up as a one-byte token; only an
                        // ASCII byte can be such a token in a valid-UTF-8 vocabulary.
                        for b in piece.bytes().filter(u8::is_ascii) {
                            let mut buf = [0u8; 4];
                            if let Some(id) = vocab.text_to_token(char::from(b).encode_utf8(&mut buf)) {
                                out.push(id);
                            }
                        }
                    }
                }
            }
        }
    }

    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.get(key.as_str()).copied()
    }
}

#[derive(Clone, Copy, Debug)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    /// Byte range of the symbol in its word; `len == 0` once merged into its left neighbour.
    start: usize,
    len: usize,
}

/// Scratch space reused across the words of one call.
#[derive(Default)]
struct Session {
    symbols: Vec<Symbol>,
    /// Min-heap on (rank, left index), llama.cpp's `llm_bigram_bpe::comparator`.
    queue: BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
    key: String,
}

impl Session {
    fn merge_word(&mut self, bpe: &Bpe, word: &str) {
        self.symbols.clear();
        self.queue.clear();
        let n = word.chars().count();
        for (i, (start, c)) in word.char_indices().enumerate() {
            self.symbols.push(Symbol {
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
                start,
                len: c.len_utf8(),
            });
        }
        for i in 1..self.symbols.len() {
            self.add_bigram(bpe, word, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, left, right, size))) = self.queue.pop() {
            let (Some(&l), Some(&r)) = (self.symbols.get(left), self.symbols.get(right)) else {
                continue;
            };
            // A bigram is stale once either side has changed: symbols only ever grow, so
            // unchanged sides are exactly those whose lengths still add up.
            if l.len == 0 || r.len == 0 || l.len + r.len != size || l.next != Some(right) {
                continue;
            }
            if let Some(ls) = self.symbols.get_mut(left) {
                ls.len += r.len;
                ls.next = r.next;
            }
            if let Some(rs) = self.symbols.get_mut(right) {
                rs.len = 0;
            }
            if let Some(next) = r.next.and_then(|i| self.symbols.get_mut(i)) {
                next.prev = Some(left);
            }
            self.add_bigram(bpe, word, l.prev, Some(left));
            self.add_bigram(bpe, word, Some(left), r.next);
        }
    }

    fn add_bigram(&mut self, bpe: &Bpe, word: &str, left: Option<usize>, right: Option<usize>) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (Some(l), Some(r)) = (self.symbols.get(left), self.symbols.get(right)) else {
            return;
        };
        let (Some(lt), Some(rt)) = (word.get(l.start..l.start + l.len), word.get(r.start..r.start + r.len)) else {
            return;
        };
        if let Some(rank) = bpe.rank(&mut self.key, lt, rt) {
            self.queue.push(Reverse((rank, left, right, l.len + r.len)));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::tokenizer::pretokenize::{regex_list, PreType};

    fn vocab(tokens: &[&str]) -> Vocab {
        Vocab::from_texts(tokens.iter().map(|s| s.to_string()).collect())
    }

    fn merges(list: &[&str]) -> Vec<Value> {
        list.iter().map(|s| Value::String(s.to_string())).collect()
    }

    #[test]
    fn merges_by_rank_not_by_position() {
        // Goal: the lowest-rank pair merges first; method: "abc" with "b c" ranked before "a b".
        let v = vocab(&["a", "b", "c", "ab", "bc", "abc"]);
        let pre = PreTokenizer::new(&regex_list(PreType::Gpt2)).unwrap();
        let bpe = Bpe::new(&merges(&["b c", "a b"]), pre, false).unwrap();
        let mut out = Vec::new();
        bpe.tokenize(&v, "abc", &mut out);
        assert_eq!(out, [0, 4]);
    }

    #[test]
    fn ignore_merges_takes_whole_words() {
        // Goal: llama3-style ignore_merges uses a word's own token; method: no merges at all.
        let v = vocab(&["h", "i", "hi"]);
        let pre = PreTokenizer::new(&regex_list(PreType::Gpt2)).unwrap();
        let mut out = Vec::new();
        Bpe::new(&[], pre, true).unwrap().tokenize(&v, "hi", &mut out);
        assert_eq!(out, [2]);
    }

    #[test]
    fn unknown_symbols_fall_back_to_ascii_bytes_or_vanish() {
        // Goal: llama.cpp's fallback; method: "é" has no token and no one-byte tokens exist.
        let v = vocab(&["x"]);
        let pre = PreTokenizer::new(&regex_list(PreType::Gpt2)).unwrap();
        let mut out = Vec::new();
        Bpe::new(&[], pre, false).unwrap().tokenize(&v, "xé", &mut out);
        assert_eq!(out, [0]);
    }
}
