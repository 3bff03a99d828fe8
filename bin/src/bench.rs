//! `prima bench`: prompt-processing and decode speed, llama-bench style (`pp128`, `tg64`).
//!
//! Like llama-bench, prompts are random token ids, every test starts from an empty context,
//! one warm-up run precedes the timed repetitions, and results are the mean and standard
//! deviation of tokens/s over the repetitions. With a decode test, the memory's read bandwidth
//! is measured too (a parallel sum over 256 MiB on the same threads), so the decode's weight
//! stream can be read as a share of it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use compute::{LoadSpec, Model, Session};
use rand::{Rng, SeedableRng};

use crate::generate::open_gguf;
use crate::BenchArgs;

struct TestResult {
    test: String,
    threads: usize,
    n_prompt: usize,
    n_gen: usize,
    samples: Vec<f64>,
}

impl TestResult {
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }
    fn stddev(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
}

fn parse_list(s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',').map(|x| x.trim().parse::<usize>().with_context(|| format!("bad {what} {x:?}"))).collect()
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let f = open_gguf(&a.model)?;
    let hp = compute::HParams::from_metadata(f.metadata()).context("cannot read the model's hyper-parameters")?;
    let model = Model::load(f.clone(), LoadSpec::full(hp.n_layer)).context("cannot load the model weights")?;
    let threads = match &a.threads {
        Some(t) => parse_list(t, "thread count")?,
        None => vec![std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)],
    };
    if threads.contains(&0) {
        bail!("thread counts must be positive");
    }
    if a.reps == 0 {
        bail!("-r must be at least 1");
    }
    let n_ctx = (a.n_prompt + a.n_gen).max(1);
    // Bytes a decode step reads: every layer tensor plus the output head.
    let weight_bytes: u64 = f
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("blk.") || t.name == "output.weight" || t.name == "output_norm.weight")
        .map(|t| t.n_bytes)
        .sum::<u64>()
        + if f.tensor_info("output.weight").is_none() {
            f.tensor_info("token_embd.weight").map(|t| t.n_bytes).unwrap_or(0)
        } else {
            0
        };
    let n_params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    let name = a.model.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let progress = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let n_vocab = model.n_vocab as u32;
    let mut results = Vec::new();
    // Per thread count: the memory's read bandwidth (GB/s), what a decode can at most stream.
    let mut mem_bw = Vec::new();
    for &t in &threads {
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(t).build().context("cannot start the compute threads")?;
        let mut run = |n_prompt: usize, n_gen: usize| -> Result<f64> {
            let tokens: Vec<u32> = (0..n_prompt.max(n_gen)).map(|_| rng.gen_range(0..n_vocab)).collect();
            pool.install(|| -> Result<f64> {
                let mut s = Session::new(&model, n_ctx)?;
                let mut logits = Vec::new();
                let t0 = Instant::now();
                if n_prompt > 0 {
                    s.feed(&tokens[..n_prompt], &mut logits)?;
                }
                for &tok in &tokens[..n_gen] {
                    s.feed(&[tok], &mut logits)?;
                }
                let secs = t0.elapsed().as_secs_f64();
                Ok((n_prompt + n_gen) as f64 / secs)
            })
        };
        for (n_prompt, n_gen, test) in
            [(a.n_prompt, 0, format!("pp{}", a.n_prompt)), (0, a.n_gen, format!("tg{}", a.n_gen))]
        {
            if n_prompt + n_gen == 0 {
                continue;
            }
            run(n_prompt.min(16), n_gen.min(4))?; // warm-up: page in the weights, size the buffers
            let mut r = TestResult { test, threads: t, n_prompt, n_gen, samples: Vec::new() };
            for i in 0..a.reps {
                r.samples.push(run(n_prompt, n_gen)?);
                if progress {
                    eprint!("\r{} t={t}: run {}/{}", r.test, i + 1, a.reps);
                }
            }
            if progress {
                eprint!("\r\x1b[K");
            }
            results.push(r);
        }
        if a.n_gen > 0 {
            mem_bw.push((t, pool.install(|| solver::profile::mem_bandwidth(Duration::from_millis(1500)))));
        }
    }
    // 0: the probe could not map its buffer; the table then shows no share.
    let mem_bw_of = |t: usize| mem_bw.iter().find(|m| m.0 == t).map(|m| m.1).filter(|&m| m > 0.0);
    let gb = |bytes: u64| bytes as f64 / 1e9;
    if a.json {
        for r in &results {
            let tps = r.mean();
            let mut o = serde_json::json!({
                "model": name,
                "model_size": f.file_len(),
                "model_n_params": n_params,
                "test": r.test,
                "n_prompt": r.n_prompt,
                "n_gen": r.n_gen,
                "threads": r.threads,
                "tokens_per_s": tps,
                "stddev": r.stddev(),
                "ms_per_token": 1e3 / tps,
                "samples_ts": r.samples,
            });
            if r.n_gen > 0 {
                o["weights_gb_per_s"] = serde_json::json!(gb(weight_bytes) * tps);
                if let Some(m) = mem_bw_of(r.threads) {
                    o["mem_bandwidth_gb_per_s"] = serde_json::json!(m);
                }
            }
            println!("{o}");
        }
    } else {
        println!("| model | size | params | threads | test | t/s | ms/token | weights GB/s (of memory's) |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in &results {
            let tps = r.mean();
            let bw = match (r.n_gen > 0, mem_bw_of(r.threads)) {
                (false, _) => String::new(),
                (true, Some(m)) => {
                    format!("{:.1} ({:.0} % of {m:.1})", gb(weight_bytes) * tps, 100.0 * gb(weight_bytes) * tps / m)
                }
                (true, None) => format!("{:.1}", gb(weight_bytes) * tps),
            };
            println!(
                "| {name} | {:.2} GiB | {:.2} B | {} | {} | {:.2} ± {:.2} | {:.2} | {bw} |",
                f.file_len() as f64 / (1u64 << 30) as f64,
                n_params as f64 / 1e9,
                r.threads,
                r.test,
                tps,
                r.stddev(),
                1e3 / tps
            );
        }
    }
    Ok(())
}
