//! Aggregate decode throughput with 1, 2, 4 and 8 concurrent requests on a ring that decodes
//! up to 8 sequences together (continuous batching), against the same requests one at a time.
//!
//!     cargo run --release --example batching -- models/SmolLM2-135M-Instruct.Q4_1.gguf [nodes] [threads]

use std::sync::Arc;
use std::time::Instant;

use prima::compute::SamplerConfig;
use prima::{Cluster, GenerateRequest, LocalCluster};

const PROMPTS: [&str; 8] = [
    "Write a long story about a dragon who learns to cook.",
    "Explain how a steam engine works, step by step.",
    "List every country in Europe with its capital.",
    "Describe a walk through a forest in autumn.",
    "Tell me the history of the bicycle in detail.",
    "What are the rules of chess? Explain them all.",
    "Write a letter to a friend about your holiday by the sea.",
    "Describe how bread is made, from the field to the table.",
];

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let nodes: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    let mut opts = LocalCluster::new(model, nodes);
    opts.n_parallel = 8;
    opts.n_ctx = 8 * 512;
    opts.threads = threads;
    if nodes > 1 {
        opts.layer_window = Some((0..nodes).map(|r| 30 / nodes as usize + usize::from(r < 30 % nodes)).collect());
    }
    let cluster = Cluster::local(opts).await?;
    let head = Arc::new(cluster.head);
    let tok = head.tokenizer().ok_or("no tokenizer")?.clone();
    let chat = |text: &str| format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
    let request = |text: &str| GenerateRequest {
        prompt: tok.encode(&chat(text), true, true),
        n_predict: 64,
        sampling: SamplerConfig::greedy(),
        trace: std::env::var_os("TRACE").is_some(),
    };
    // Warm-up.
    head.generate_all(request(PROMPTS[0])).await?;
    println!("{nodes} node(s), {threads} thread(s) each, SmolLM2 decode, 64 tokens per request");
    println!("| concurrent | tokens | wall s | aggregate tokens/s | per request tokens/s |");
    println!("|---|---|---|---|---|");
    let mut single = 0.0;
    for n in [1usize, 2, 4, 8] {
        let t0 = Instant::now();
        let runs: Vec<_> = PROMPTS[..n]
            .iter()
            .map(|p| {
                let (head, req) = (head.clone(), request(p));
                tokio::spawn(async move { head.generate_all(req).await })
            })
            .collect();
        let mut tokens = 0;
        let mut per_request = 0.0;
        for r in runs {
            let (ids, stats) = r.await??;
            tokens += ids.len();
            if !stats.hops.is_empty() {
                let steps = stats.hops.len() as f64;
                let layers: f64 =
                    stats.hops.iter().flatten().filter(|h| h.n_layers > 0).map(|h| h.compute_us as f64).sum();
                let head: f64 =
                    stats.hops.iter().flatten().filter(|h| h.n_layers == 0).map(|h| h.compute_us as f64).sum();
                eprintln!(
                    "  {n} concurrent: {:.2} ms per step decoding, layers {:.2} ms, logits {:.2} ms",
                    stats.gen_ms / steps,
                    layers / steps / 1e3,
                    head / steps / 1e3
                );
            }
            per_request += stats.n_gen as f64 / (stats.gen_ms / 1e3).max(1e-9) / n as f64;
        }
        let wall = t0.elapsed().as_secs_f64();
        let agg = tokens as f64 / wall;
        if n == 1 {
            single = agg;
        }
        println!("| {n} | {tokens} | {wall:.2} | {agg:.1} ({:.2}×) | {per_request:.1} |", agg / single);
    }
    let head = Arc::try_unwrap(head).map_err(|_| "head still shared")?;
    Cluster { head, nodes: cluster.nodes }.shutdown().await?;
    Ok(())
}
