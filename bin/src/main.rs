//! The `prima` command line: argument parsing, logging set-up and dispatch to the subcommands.
#![forbid(unsafe_code)]

mod generate;

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
    // clap's own `-cnv` spelling: accept the llama.cpp single-dash form too.
    let args: Vec<String> = std::env::args().map(|a| if a == "-cnv" { "--cnv".to_string() } else { a }).collect();
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PRIMA_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let res = match cli.command {
        Command::Run(a) => generate::run(a),
        Command::Tokenize(a) => generate::tokenize(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
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
