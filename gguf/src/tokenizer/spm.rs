//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`): start from single code points and keep
//! merging the adjacent pair whose joined text is the highest-scoring token, falling back to
//! `<0xXX>` byte tokens for what is left over, as llama.cpp's `llm_tokenizer_spm_session` does.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Vocab;

/// Appends the tokens of `text`, which the caller has already escaped (spaces as U+2581).
/// `unk` stands in for a byte that has no token at all, where llama.cpp would throw.
pub fn tokenize(vocab: &Vocab, text: &str, unk: Option<u32>, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let n = text.chars().count();
    for (i, (start, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol { prev: i.checked_sub(1), next: (i + 1 < n).then_some(i + 1), start, len: c.len_utf8() });
    }
    let mut queue = BinaryHeap::new();
    for i in 1..symbols.len() {
        try_add_bigram(vocab, text, &symbols, &mut queue, Some(i - 1), Some(i));
    }
    while let Some(bigram) = queue.pop() {
        let (Some(&l), Some(&r)) = (symbols.get(bigram.left), symbols.get(bigram.right)) else {
            continue;
        };
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        if let Some(ls) = symbols.get_mut(bigram.left) {
            ls.len += r.len;
            ls.next = r.next;
        }
        if let Some(rs) = symbols.get_mut(bigram.right) {
            rs.len = 0;
        }
        if let Some(next) = r.next.and_then(|i| symbols.get_mut(i)) {
            next.prev = Some(bigram.left);
        }
        try_add_bigram(vocab, text, &symbols, &mut queue, l.prev, Some(bigram.left));
        try_add_bigram(vocab, text, &symbols, &mut queue, Some(bigram.left), r.next);
    }
    // Every merged symbol is a token by construction, so llama.cpp's `rev_merge` re-segmentation
    // only ever reaches single code points that are not tokens: they become byte tokens.
    for sym in symbols.iter().filter(|s| s.len > 0) {
        let Some(piece) = text.get(sym.start..sym.start + sym.len) else {
            continue;
        };
        if let Some(id) = vocab.text_to_token(piece) {
            out.push(id);
            continue;
        }
        for b in piece.bytes() {
            if let Some(id) = byte_to_token(vocab, b).or(unk) {
                out.push(id);
            }
        }
    }
}

/// llama.cpp's `byte_to_token` for SPM: `<0xXX>`, else the byte itself as a one-byte token.
pub fn byte_to_token(vocab: &Vocab, b: u8) -> Option<u32> {
    vocab.text_to_token(&format!("<0x{b:02X}>")).or_else(|| {
        let mut buf = [0u8; 4];
        b.is_ascii().then(|| vocab.text_to_token(char::from(b).encode_utf8(&mut buf))).flatten()
    })
}

#[derive(Clone, Copy, Debug)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    len: usize,
}

#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

// Max-heap order of llama.cpp's `llm_bigram_spm::comparator`: higher score first, then the
// leftmost pair.
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

fn try_add_bigram(
    vocab: &Vocab,
    text: &str,
    symbols: &[Symbol],
    queue: &mut BinaryHeap<Bigram>,
    left: Option<usize>,
    right: Option<usize>,
) {
    let (Some(left), Some(right)) = (left, right) else {
        return;
    };
    let (Some(l), Some(r)) = (symbols.get(left), symbols.get(right)) else {
        return;
    };
    // Adjacent symbols are contiguous in `text`.
    let size = l.len + r.len;
    let Some(joined) = text.get(l.start..l.start + size) else {
        return;
    };
    let Some(id) = vocab.text_to_token(joined) else {
        return;
    };
    queue.push(Bigram { left, right, score: vocab.score(id), size });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn vocab(tokens: &[(&str, f32)]) -> Vocab {
        let mut v = Vocab::from_texts(tokens.iter().map(|(s, _)| s.to_string()).collect());
        for (i, (_, score)) in tokens.iter().enumerate() {
            v.set_score(i, *score);
        }
        v
    }

    fn check(tokens: &[(&str, f32)], text: &str, expect: &[u32]) {
        let mut out = Vec::new();
        tokenize(&vocab(tokens), text, None, &mut out);
        assert_eq!(out, expect, "text {text:?}");
    }

    #[test]
    fn highest_score_merges_first() {
        // Goal: merge order follows scores; method: "abc" where "bc" outscores "ab".
        let toks = [("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", -1.0), ("bc", -0.5)];
        check(&toks, "abc", &[0, 4]);
        let toks = [("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", -0.5), ("bc", -1.0)];
        check(&toks, "abc", &[3, 2]);
    }

    #[test]
    fn ties_merge_leftmost_first() {
        // Goal: equal scores merge the leftmost pair; method: "aaa" with only "aa".
        check(&[("a", 0.0), ("aa", -1.0)], "aaa", &[1, 0]);
    }

    #[test]
    fn unknown_code_points_become_byte_tokens() {
        // Goal: byte fallback; method: "é" (C3 A9) with <0xC3>/<0xA9> in the vocabulary.
        check(&[("x", 0.0), ("<0xC3>", 0.0), ("<0xA9>", 0.0)], "xé", &[0, 1, 2]);
    }
}
