//! `prima run` and `prima tokenize`: local generation on one device.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use compute::{LoadSpec, Model, Sampler, SamplerConfig, Session};
use gguf::tokenizer::StreamDecoder;
use gguf::{GgufFile, Tokenizer};

use crate::{RunArgs, SamplingArgs, TokenizeArgs};

/// Default context when the user gives none: enough for chat, small enough for a phone.
const N_CTX_DEFAULT: usize = 4096;

impl SamplingArgs {
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

/// Opens a GGUF file with an error that says which file and why.
pub fn open_gguf(path: &std::path::Path) -> Result<Arc<GgufFile>> {
    let f = GgufFile::open(path).with_context(|| format!("cannot load model {}", path.display()))?;
    Ok(Arc::new(f))
}

/// Sizes the global rayon pool once.
pub fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("cannot start the compute threads")?;
    Ok(n)
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let f = open_gguf(&a.model)?;
    let tok = Tokenizer::from_metadata(f.metadata()).context("cannot build the tokenizer")?;
    let ids = tok.encode(&a.prompt, a.add_special, !a.no_parse_special);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

struct Generation<'a> {
    session: Session<'a>,
    tok: &'a Tokenizer,
    sampler: Sampler,
    logits: Vec<f32>,
}

pub(crate) struct Stats {
    pub n_prompt: usize,
    pub prompt_s: f64,
    pub n_gen: usize,
    pub gen_s: f64,
}

impl Generation<'_> {
    /// Feeds `prompt` (new tokens only), then samples up to `n_predict` tokens, writing text to `out`.
    fn generate(&mut self, prompt: &[u32], n_predict: usize, out: &mut impl Write) -> Result<(Vec<u32>, Stats)> {
        let t0 = Instant::now();
        for &t in prompt {
            self.sampler.accept(t);
        }
        self.session.feed(prompt, &mut self.logits)?;
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut dec = StreamDecoder::new(self.tok);
        let mut generated = Vec::new();
        for i in 0..n_predict {
            let id = self.sampler.sample(&mut self.logits);
            if self.tok.is_eog(id) {
                break;
            }
            generated.push(id);
            self.sampler.accept(id);
            out.write_all(dec.push(id).as_bytes())?;
            out.flush()?;
            if i + 1 == n_predict {
                break;
            }
            if self.session.n_past() >= self.session.n_ctx() {
                eprintln!("\n[context full after {} tokens]", self.session.n_past());
                break;
            }
            self.session.feed(&[id], &mut self.logits)?;
        }
        out.write_all(dec.flush().as_bytes())?;
        out.flush()?;
        let stats =
            Stats { n_prompt: prompt.len(), prompt_s, n_gen: generated.len(), gen_s: t1.elapsed().as_secs_f64() };
        Ok((generated, stats))
    }
}

/// Prints prompt and decode speed to stderr.
pub(crate) fn report(s: &Stats) {
    let rate = |n: usize, t: f64| if t > 0.0 { n as f64 / t } else { 0.0 };
    eprintln!(
        "\nprompt: {} tokens in {:.0} ms ({:.1} tokens/s) | decode: {} tokens in {:.0} ms ({:.1} tokens/s, {:.1} ms/token)",
        s.n_prompt,
        s.prompt_s * 1e3,
        rate(s.n_prompt, s.prompt_s),
        s.n_gen,
        s.gen_s * 1e3,
        rate(s.n_gen, s.gen_s),
        if s.n_gen > 0 { s.gen_s * 1e3 / s.n_gen as f64 } else { 0.0 },
    );
}

pub fn run(a: RunArgs) -> Result<()> {
    let threads = init_threads(a.threads)?;
    let f = open_gguf(&a.model)?;
    let tok = Tokenizer::from_metadata(f.metadata()).context("cannot build the tokenizer")?;
    let hp = compute::HParams::from_metadata(f.metadata()).context("cannot read the model's hyper-parameters")?;
    let model = Model::load(f.clone(), LoadSpec::full(hp.n_layer)).context("cannot load the model weights")?;
    let n_ctx = a.ctx_size.unwrap_or(hp.n_ctx_train.min(N_CTX_DEFAULT)).max(1);
    tracing::info!(
        arch = hp.arch.name(),
        n_layer = hp.n_layer,
        n_embd = hp.n_embd,
        n_vocab = model.n_vocab,
        n_ctx,
        threads,
        "model loaded"
    );
    if tok.n_vocab() != model.n_vocab {
        bail!("the tokenizer has {} tokens but the embedding has {} rows", tok.n_vocab(), model.n_vocab);
    }
    let mut g = Generation {
        session: Session::new(&model, n_ctx)?,
        tok: &tok,
        sampler: Sampler::new(a.sampling.config()),
        logits: Vec::new(),
    };
    let stdout = std::io::stdout();
    if a.conversation {
        return chat(&mut g, &f, &a, &mut stdout.lock());
    }
    let prompt = tok.encode(&a.prompt, true, true);
    if prompt.is_empty() {
        bail!("the prompt is empty: give one with -p, or use -cnv for chat");
    }
    if prompt.len() >= n_ctx {
        bail!("the prompt has {} tokens, the context only {n_ctx} (raise -c)", prompt.len());
    }
    let (_, stats) = g.generate(&prompt, a.n_predict, &mut stdout.lock())?;
    report(&stats);
    Ok(())
}

/// A chat on stdin: user turns in, the whole conversation rendered for the model out.
pub(crate) struct Conversation {
    format: gguf::chat::ChatFormat,
    messages: Vec<gguf::chat::ChatMessage>,
}

impl Conversation {
    pub fn new(format: gguf::chat::ChatFormat, system: &str) -> Conversation {
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(gguf::chat::ChatMessage::new("system", system));
        }
        Conversation { format, messages }
    }

    /// Reads the next user turn; `None` at the end of input or on `quit`/`exit`.
    pub fn next_prompt(&mut self) -> Result<Option<String>> {
        eprint!("\n> ");
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if matches!(line.trim(), "quit" | "exit") {
            return Ok(None);
        }
        self.messages.push(gguf::chat::ChatMessage::new("user", line));
        Ok(Some(self.format.render(&self.messages, true)?))
    }

    pub fn add_reply(&mut self, text: String) {
        self.messages.push(gguf::chat::ChatMessage::new("assistant", text));
    }
}

fn chat(g: &mut Generation<'_>, f: &GgufFile, a: &RunArgs, out: &mut impl Write) -> Result<()> {
    let template = f.metadata().str_opt("tokenizer.chat_template")?.map(str::to_string);
    let mut conv = Conversation::new(gguf::chat::ChatFormat::new(template, g.tok), &a.system);
    let mut in_cache: Vec<u32> = Vec::new();
    while let Some(text) = conv.next_prompt()? {
        let all = g.tok.encode(&text, true, true);
        // Reuse the cached prefix the new rendering shares with what the cache holds.
        let common = all.iter().zip(&in_cache).take_while(|(x, y)| x == y).count();
        let common = common.min(all.len().saturating_sub(1));
        g.session.truncate(common);
        in_cache.truncate(common);
        let n_left = g.session.n_ctx().saturating_sub(all.len());
        if n_left == 0 {
            bail!("the conversation no longer fits the context of {} tokens", g.session.n_ctx());
        }
        let (reply, stats) = g.generate(&all[common..], a.n_predict.min(n_left), out)?;
        writeln!(out)?;
        report(&stats);
        in_cache.extend_from_slice(&all[common..]);
        in_cache.extend_from_slice(&reply);
        // The last sampled token may not have been fed: keep exactly what the cache holds.
        in_cache.truncate(g.session.n_past());
        conv.add_reply(g.tok.decode(&reply));
    }
    Ok(())
}
