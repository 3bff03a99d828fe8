//! The `prima` command line: argument parsing, logging set-up and dispatch to the subcommands.
#![forbid(unsafe_code)]

mod bench;
mod generate;
mod plan;
mod quantize;
mod ring;
mod synth;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// prima runs GGUF language models (Llama, Qwen2.5, DeepSeek-R1 distills) on one device or
/// across a ring of devices.
#[derive(Parser)]
#[command(name = "prima", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt on this device (or chat with -cnv).
    Run(RunArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(TokenizeArgs),
    /// Run one device of a ring from its node.toml (rank 0, the head, takes the prompt).
    Node(NodeArgs),
    /// Try a ring on this machine: start N node processes on 127.0.0.1 and run a prompt.
    Cluster(ClusterArgs),
    /// Serve an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, …) on this device.
    Serve(ServeArgs),
    /// Measure this device for the scheduler (CPU per weight type, memory, disk, RAM); cached per model.
    Profile(ProfileArgs),
    /// Solve the layer windows offline from saved device profiles and show the predicted
    /// latency per device and term.
    Plan(PlanArgs),
    /// Measure prompt processing (ppN) and decode (tgN) speed, llama-bench style.
    Bench(BenchArgs),
    /// Re-encode a model's weights: q8_0, q4_0, q4_1, q5_0, q4_k, q6_k or q4_k_m.
    Quantize(QuantizeArgs),
    /// Write a random-weight model at a real architecture's shapes (for speed and memory work).
    Synth(SynthArgs),
    /// Write a new random cluster key (the key_file every node of a ring shares).
    Keygen {
        /// Where to write the key (never overwritten).
        file: PathBuf,
    },
}

/// What the head of a ring does: one prompt, or chat.
#[derive(Args, Debug, Clone)]
pub struct HeadArgs {
    /// Prompt text (head only); special tokens such as <|im_start|> are recognised.
    #[arg(short = 'p', long)]
    pub prompt: Option<String>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Layers per node per cycle in rank order, e.g. "8,8,8,6" (head only; overrides
    /// layer_window). Windows repeat for several cycles when they sum to fewer layers.
    #[arg(long = "lw", alias = "layer-window")]
    pub layer_window: Option<String>,
    /// Chat mode: read user turns from stdin and apply the model's chat template.
    #[arg(long = "cnv", alias = "conversation")]
    pub conversation: bool,
    /// System prompt for chat mode.
    #[arg(long = "system", default_value = "")]
    pub system: String,
    /// Print per-hop timings of the decoded tokens.
    #[arg(long)]
    pub trace: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

impl HeadArgs {
    /// The same options, for a child `prima node` process.
    pub fn forward_args(&self) -> Vec<String> {
        let s = &self.sampling;
        let mut v = vec![
            "-n".into(),
            self.n_predict.to_string(),
            "--temp".into(),
            s.temperature.to_string(),
            "--top-k".into(),
            s.top_k.to_string(),
            "--top-p".into(),
            s.top_p.to_string(),
            "--min-p".into(),
            s.min_p.to_string(),
            "--repeat-penalty".into(),
            s.repeat_penalty.to_string(),
            "--repeat-last-n".into(),
            s.repeat_last_n.to_string(),
            "--seed".into(),
            s.seed.to_string(),
            "--system".into(),
            self.system.clone(),
        ];
        if let Some(p) = &self.prompt {
            v.extend(["-p".into(), p.clone()]);
        }
        if let Some(lw) = &self.layer_window {
            v.extend(["--lw".into(), lw.clone()]);
        }
        if self.conversation {
            v.push("--cnv".into());
        }
        if self.trace {
            v.push("--trace".into());
        }
        v
    }
}

/// HTTP options of the OpenAI-compatible server (for `prima node`, they override `[server]` in
/// node.toml).
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on [default: 8080].
    #[arg(long)]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics.
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// Requests accepted at once (running + queued); more get HTTP 429 [default: 64].
    #[arg(long = "max-queue")]
    pub max_queue: Option<usize>,
    /// Sequences decoded together (continuous batching; also `-np`): each step of the ring
    /// carries one row per running request. The context (-c / n_ctx) is split among them.
    /// Default: 4 for `prima serve`, `n_parallel` from node.toml for `prima node --serve`.
    #[arg(long = "parallel")]
    pub parallel: Option<usize>,
}

impl HttpArgs {
    /// These flags over `[server]` from node.toml (or the defaults).
    pub fn resolve(&self, file: Option<&runtime::ServerConfig>) -> runtime::ServerConfig {
        let base = file.cloned().unwrap_or_default();
        runtime::ServerConfig {
            host: self.host.clone().unwrap_or(base.host),
            port: self.port.unwrap_or(base.port),
            api_key: self.api_key.clone().or(base.api_key),
            max_queue: self.max_queue.unwrap_or(base.max_queue).max(1),
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context size in tokens, shared by the --parallel sequences.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 8192)]
    pub ctx_size: usize,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Model file (GGUF): its weight types are measured and its file is read for the disk figures.
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Print JSON instead of TOML.
    #[arg(long)]
    pub json: bool,
    /// Measure again even when a cached profile exists.
    #[arg(long)]
    pub refresh: bool,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input GGUF (F32/F16/BF16 weights; quantized ones with --allow-requantize).
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Target: q8_0, q4_0, q4_1, q5_0, q4_k, q6_k or q4_k_m (llama.cpp's mix).
    pub r#type: String,
    /// Accept already-quantized weights (they are dequantized first; quality suffers).
    #[arg(long)]
    pub allow_requantize: bool,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Architecture and size: llama2-7b, llama3-8b, llama3-70b, qwen2.5-7b, qwen2.5-14b, qwen2.5-32b, qwen2.5-72b.
    #[arg(long)]
    pub shape: String,
    /// Weight types: q8_0, q4_0, q4_1, q5_0, q4_k, q6_k or q4_k_m (llama.cpp's mix).
    #[arg(long = "type", default_value = "q4_k_m")]
    pub r#type: String,
    /// GGUF whose tokenizer is copied (padded with unused tokens up to the shape's vocabulary).
    #[arg(long = "vocab-from")]
    pub vocab_from: PathBuf,
    /// Output file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Prompt tokens of the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub n_prompt: usize,
    /// Generated tokens of the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub n_gen: usize,
    /// Thread counts, comma-separated (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<String>,
    /// Timed repetitions per test (after one warm-up).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// One JSON object per test on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's config file (see examples/node0.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Head: serve the OpenAI-compatible API instead of running a prompt (also when
    /// node.toml has a `[server]` table).
    #[arg(long)]
    pub serve: bool,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub head: HeadArgs,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Number of node processes to start on 127.0.0.1.
    #[arg(long)]
    pub local: u32,
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Compute threads per node (default: cores / nodes).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context size in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Hidden states on the wire: f32 (exact) or f16 (half the bytes).
    #[arg(long, default_value = "f32")]
    pub wire_dtype: String,
    /// Memory budget of each node in MiB, in rank order, e.g. "64,256,1024": the scheduler
    /// plans with it and the prefetcher keeps each node's resident weights under it.
    #[arg(long)]
    pub memory_budgets: Option<String>,
    /// Compute threads of each node in rank order, e.g. "1,2,1" (overrides -t).
    #[arg(long)]
    pub node_threads: Option<String>,
    #[command(flatten)]
    pub head: HeadArgs,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Folder of device profiles (`prima profile -m MODEL > DIR/NAME.toml` on each device,
    /// TOML or JSON); the head is the first by file name unless --head names it.
    #[arg(long)]
    pub profiles: PathBuf,
    /// Model file (GGUF) to plan for.
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// The head's profile (a file name in the folder, with or without its extension).
    #[arg(long)]
    pub head: Option<String>,
    /// Context size the KV caches are allocated for.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Tokens a decoded token attends to on average (the KV bytes it reads).
    #[arg(long, default_value_t = solver::inputs::DEFAULT_N_KV)]
    pub n_kv: usize,
    /// Milliseconds to send one hidden state to the next device (profiles do not carry it;
    /// a ring measures it at start-up). 5 ms is a typical home Wi-Fi hop.
    #[arg(long, default_value_t = 5.0)]
    pub link_ms: f64,
    /// Keep every device, even those that do not lower the predicted latency.
    #[arg(long)]
    pub no_select: bool,
    /// Use exactly this many cycles round the ring.
    #[arg(long)]
    pub cycles: Option<usize>,
    /// Predict a given plan instead of solving, e.g. "8,8,8,6" (rank order).
    #[arg(long = "lw", alias = "layer-window")]
    pub layer_window: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Sampling options shared by every command that generates.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 means greedy decoding.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// RNG seed for sampling.
    #[arg(long, short = 's', default_value_t = 0xC0FFEE)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Prompt text; special tokens such as <|im_start|> are recognised.
    #[arg(short = 'p', long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate at most (generation also stops at end-of-generation tokens).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context size in tokens (default: min(training context, 4096)).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Chat mode: read user turns from stdin, apply the model's chat template. `quit` or `exit` leaves.
    #[arg(long = "cnv", alias = "conversation")]
    pub conversation: bool,
    /// System prompt for chat mode.
    #[arg(long = "system", default_value = "")]
    pub system: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Model or vocab-only GGUF file.
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Text to tokenize.
    #[arg(short = 'p', long)]
    pub prompt: String,
    /// Add the BOS/EOS tokens the model asks for.
    #[arg(long)]
    pub add_special: bool,
    /// Treat special-token text (<|im_start|> …) as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
}

fn main() -> ExitCode {
    // llama.cpp / prima.cpp spell some long options with one dash (`-cnv`, `-lw`): accept them.
    let args: Vec<String> = std::env::args()
        .map(|a| match a.as_str() {
            "-cnv" => "--cnv".to_string(),
            "-lw" => "--lw".to_string(),
            "-np" => "--parallel".to_string(),
            _ => a,
        })
        .collect();
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PRIMA_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let res = match cli.command {
        Command::Run(a) => generate::run(a),
        Command::Tokenize(a) => generate::tokenize(a),
        Command::Node(a) => ring::node(a),
        Command::Cluster(a) => {
            if a.head.prompt.is_none() && !a.head.conversation {
                eprintln!("error: give a prompt (-p) or chat mode (-cnv)");
                return ExitCode::FAILURE;
            }
            ring::cluster(a)
        }
        Command::Keygen { file } => ring::keygen(file),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => ring::serve(a),
        Command::Synth(a) => synth::synth(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Profile(a) => profile(a),
        Command::Plan(a) => plan::plan(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn profile(a: ProfileArgs) -> anyhow::Result<()> {
    let mut opts = solver::ProfileOptions::default();
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    let (p, cached) = solver::profile::load_or_measure(&a.model, &opts, a.refresh).map_err(anyhow::Error::msg)?;
    if cached {
        eprintln!("(cached profile; --refresh measures again)");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", toml::to_string(&p)?);
    }
    Ok(())
}

/// The error and its causes on one line, skipping a cause its parent's message already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
