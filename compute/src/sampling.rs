//! Token sampling: greedy, or repetition penalty → top-k → top-p → min-p → temperature →
//! a draw from a seeded RNG (llama.cpp's default chain order).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings; the defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 or below means greedy (argmax).
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0xC0FFEE,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding.
    pub fn greedy() -> SamplerConfig {
        SamplerConfig { temperature: 0.0, ..SamplerConfig::default() }
    }
}

/// A sampler with its RNG state and the recent-token window.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    recent: Vec<u32>,
    cands: Vec<(u32, f32)>,
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Sampler { cfg, rng, recent: Vec::new(), cands: Vec::new() }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Records a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, token: u32) {
        self.recent.push(token);
        let n = self.cfg.repeat_last_n;
        if self.recent.len() > 2 * n.max(1) {
            self.recent.drain(..self.recent.len() - n);
        }
    }

    /// Picks the next token from `logits` (which it may modify).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        if self.cfg.repeat_penalty != 1.0 {
            let start = self.recent.len().saturating_sub(self.cfg.repeat_last_n);
            let mut seen: Vec<u32> = self.recent[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / self.cfg.repeat_penalty } else { *l * self.cfg.repeat_penalty };
                }
            }
        }
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.cands;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        // A total order (logit descending, then id), so selecting the top k before sorting
        // yields exactly the prefix a full sort would: the vocabulary is not sorted per token.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.cfg.top_k > 0 && self.cfg.top_k < c.len() {
            c.select_nth_unstable_by(self.cfg.top_k - 1, order);
            c.truncate(self.cfg.top_k);
        }
        c.sort_unstable_by(order);
        softmax(c);
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, &(_, p)) in c.iter().enumerate() {
                cum += p;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if self.cfg.min_p > 0.0 {
            let thresh = c[0].1 * self.cfg.min_p;
            let keep = c.iter().take_while(|&&(_, p)| p >= thresh).count();
            c.truncate(keep.max(1));
        }
        // Temperature on the surviving logits: recover them from probabilities via ln.
        for x in c.iter_mut() {
            x.1 = x.1.ln() / self.cfg.temperature;
        }
        softmax(c);
        let r: f32 = self.rng.gen();
        let mut cum = 0.0;
        for &(t, p) in c.iter() {
            cum += p;
            if r < cum {
                return t;
            }
        }
        c.last().map(|x| x.0).unwrap_or(0)
    }
}

/// Softmax over candidate logits in place (sorted descending, so the max is first).
fn softmax(c: &mut [(u32, f32)]) {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in c.iter_mut() {
        x.1 = (x.1 - max).exp();
        sum += x.1;
    }
    for x in c.iter_mut() {
        x.1 /= sum;
    }
}

/// Log-softmax of `logits` at `id` (for reporting and tests).
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    logits[id as usize] - max - sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        // Goal: greedy returns the first index of the maximum, like llama.cpp.
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        // Goal: the same seed gives the same draws; top-k 2 never yields a third token.
        let cfg = SamplerConfig { temperature: 1.5, top_k: 2, top_p: 1.0, min_p: 0.0, ..SamplerConfig::default() };
        let logits = [1.0, 0.9, 0.8, 0.7];
        let draw = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..50).map(|_| s.sample(&mut logits.clone())).collect::<Vec<_>>()
        };
        let a = draw(&cfg);
        assert_eq!(a, draw(&cfg));
        assert!(a.iter().all(|&t| t < 2));
        assert!(a.contains(&0) && a.contains(&1));
    }

    #[test]
    fn repetition_penalty_lowers_seen_tokens() {
        // Goal: a penalised token loses the argmax to the runner-up.
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() });
        s.accept(0);
        assert_eq!(s.sample(&mut [2.0, 1.5, 0.0]), 1);
    }

    #[test]
    fn min_p_keeps_only_likely_tokens() {
        // Goal: with min-p 0.5, a token far below the top is never drawn.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..SamplerConfig::default()
        });
        for _ in 0..100 {
            assert_ne!(s.sample(&mut [5.0, 4.9, 0.0]), 2);
        }
    }
}
