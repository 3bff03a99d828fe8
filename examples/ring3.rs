//! A 3-node ring in one process over loopback TCP: generates greedily and prints the text,
//! then the per-hop timings of each decoded token.
//!
//!     cargo run --release --example ring3 -- models/SmolLM2-135M-Instruct.Q4_1.gguf "The capital of France is"

use prima::compute::SamplerConfig;
use prima::{Cluster, GenerateRequest, LocalCluster};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let prompt = args.next().unwrap_or_else(|| "The capital of France is".into());
    let mut opts = LocalCluster::new(model, 3);
    opts.layer_window = Some(vec![5, 5, 5]); // two cycles round the ring
    let cluster = Cluster::local(opts).await?;
    let tok = cluster.head.tokenizer().ok_or("no tokenizer")?.clone();
    let req = GenerateRequest {
        prompt: tok.encode(&prompt, true, true),
        n_predict: 16,
        sampling: SamplerConfig::greedy(),
        trace: true,
    };
    let (ids, stats) = cluster.head.generate_all(req).await?;
    println!("{prompt}{}", tok.decode(&ids));
    println!("\n{} tokens, {:.1} ms/token", stats.n_gen, stats.gen_ms / stats.n_gen.max(1) as f64);
    for (i, hops) in stats.hops.iter().enumerate() {
        let line: Vec<String> = hops
            .iter()
            .map(|h| {
                if h.n_layers == 0 {
                    format!("output@{} {:.1}ms", h.rank, h.compute_us as f64 / 1e3)
                } else {
                    format!(
                        "n{}[{}..{}] {:.1}ms",
                        h.rank,
                        h.first_layer,
                        h.first_layer + h.n_layers,
                        h.compute_us as f64 / 1e3
                    )
                }
            })
            .collect();
        println!("token {i:2}: {}", line.join(" → "));
    }
    cluster.shutdown().await?;
    Ok(())
}
