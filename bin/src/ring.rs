//! `prima node`, `prima cluster --local N` and `prima keygen`: running the ring.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use actors::{Event, GenerateRequest, GenerationStats, Node};
use anyhow::{bail, Context, Result};
use gguf::tokenizer::StreamDecoder;
use runtime::auth::ClusterKey;
use runtime::plan::parse_windows;
use runtime::NodeConfig;

use crate::generate::{report as report_speed, Conversation, Stats};
use crate::{ClusterArgs, HeadArgs, NodeArgs, ServeArgs};

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

pub fn keygen(path: PathBuf) -> Result<()> {
    let key = ClusterKey::generate()?;
    key.save(&path).with_context(|| format!("cannot write the key to {}", path.display()))?;
    eprintln!("wrote a new cluster key to {} (copy it to every device of the ring)", path.display());
    Ok(())
}

pub fn node(a: NodeArgs) -> Result<()> {
    let mut cfg = NodeConfig::load(&a.config)?;
    if let Some(lw) = &a.head.layer_window {
        cfg.layer_window = Some(parse_windows(lw).map_err(anyhow::Error::msg)?);
        cfg.validate().map_err(anyhow::Error::msg).context("-lw")?;
    }
    if let Some(np) = a.http.parallel {
        cfg.n_parallel = np;
        cfg.validate().map_err(anyhow::Error::msg).context("--parallel")?;
    }
    let serve = a.serve || (cfg.server.is_some() && a.head.prompt.is_none() && !a.head.conversation);
    if cfg.is_head() && a.head.prompt.is_none() && !a.head.conversation && !serve {
        bail!("the head (rank 0) needs a prompt (-p), chat mode (-cnv), --serve or a [server] table in its config");
    }
    let server = a.http.resolve(cfg.server.as_ref());
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        let mut node = Node::spawn(cfg.clone()).await.context("cannot start the node")?;
        if !node.rank().eq(&0) {
            if node.windows().is_empty() {
                eprintln!("No layer is assigned to me, exit");
                return Ok(());
            }
            return node.wait().await.context("node stopped with an error");
        }
        if serve {
            let name = cfg.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            return serve_node(node, &server, name).await;
        }
        let result = head_session(&node, &a.head).await;
        match result {
            Ok(()) => node.shutdown().await.context("shutting the ring down"),
            Err(e) => {
                // The request failed (a node was lost, …): stop the rest of the ring too.
                let _ = tokio::time::timeout(Duration::from_secs(2), node.shutdown()).await;
                Err(e)
            }
        }
    })
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = NodeConfig::new(0, a.model.clone(), "127.0.0.1:0");
    cfg.listen = "127.0.0.1:0".into();
    cfg.threads = a.threads;
    cfg.n_ctx = a.ctx_size;
    cfg.n_parallel = a.http.parallel.unwrap_or(4);
    cfg.validate().map_err(anyhow::Error::msg)?;
    let name = a.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    tokio_runtime()?.block_on(async move {
        let node = Node::spawn(cfg).await.context("cannot start")?;
        serve_node(node, &a.http.resolve(None), name).await
    })
}

/// Serves the API on a head until Ctrl-C or until the ring fails.
async fn serve_node(node: Node, http: &runtime::ServerConfig, model_name: String) -> Result<()> {
    let node = std::sync::Arc::new(node);
    let cfg = actors::api::ApiConfig {
        addr: format!("{}:{}", http.host, http.port),
        api_key: http.api_key.clone(),
        max_queue: http.max_queue.max(1),
        model_name,
    };
    eprintln!(
        "serving {} on http://{}/v1 ({} sequence(s) at once, {} tokens of context each; Ctrl-C stops)",
        cfg.model_name,
        cfg.addr,
        node.n_slots(),
        node.n_ctx()
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let served = actors::api::serve(node.clone(), cfg, shutdown).await;
    let node = std::sync::Arc::try_unwrap(node).map_err(|_| anyhow::anyhow!("requests still running at shutdown"))?;
    let stopped = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
    served.map_err(anyhow::Error::msg)?;
    match stopped {
        Ok(r) => r.context("shutting the ring down"),
        Err(_) => bail!("the ring did not stop within 5 s"),
    }
}

/// Runs the head's prompt, or the chat loop.
async fn head_session(node: &Node, a: &HeadArgs) -> Result<()> {
    let tok = node.tokenizer().context("the head has no tokenizer")?.clone();
    if let Some(p) = node.plan() {
        eprintln!("ring: windows {} ({} cycle(s)), nodes {:?}", p.windows_text(), p.cycles, p.ring);
    }
    let mut out = std::io::stdout();
    if !a.conversation {
        let prompt = tok.encode(a.prompt.as_deref().unwrap_or(""), true, true);
        let (_, stats) = stream(node, &tok, prompt, a, &mut out).await?;
        report(&stats, a.trace);
        predicted_vs_measured(node, &stats);
        return Ok(());
    }
    let format = gguf::chat::ChatFormat::new(node.chat_template().map(str::to_string), &tok);
    let mut conv = Conversation::new(format, &a.system);
    while let Some(text) = conv.next_prompt()? {
        // The batcher reuses the KV prefix this conversation shares with the previous turn.
        let (reply, stats) = stream(node, &tok, tok.encode(&text, true, true), a, &mut out).await?;
        writeln!(out)?;
        report(&stats, a.trace);
        conv.add_reply(tok.decode(&reply));
    }
    Ok(())
}

async fn stream(
    node: &Node,
    tok: &gguf::Tokenizer,
    prompt: Vec<u32>,
    a: &HeadArgs,
    out: &mut impl Write,
) -> Result<(Vec<u32>, GenerationStats)> {
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let req = GenerateRequest { prompt, n_predict: a.n_predict, sampling: a.sampling.config(), trace: a.trace };
    let mut rx = node.generate(req)?;
    let mut dec = StreamDecoder::new(tok);
    let mut ids = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(id) => {
                ids.push(id);
                out.write_all(dec.push(id).as_bytes())?;
                out.flush()?;
            }
            Event::Done(stats) => {
                out.write_all(dec.flush().as_bytes())?;
                out.flush()?;
                return Ok((ids, stats));
            }
            Event::Error(e) => {
                writeln!(out)?;
                bail!("generation failed: {e}");
            }
        }
    }
    bail!("the ring stopped before the request finished")
}

/// The scheduler's predicted token latency next to the measured one (automatic plans).
fn predicted_vs_measured(node: &Node, s: &GenerationStats) {
    if let (Some(p), true) = (node.predicted_token_ms(), s.n_gen > 1) {
        let measured = s.gen_ms / s.n_gen as f64;
        eprintln!("scheduler: predicted {p:.2} ms/token, measured {measured:.2} ms/token");
        tracing::info!("predicted {p:.2} ms/token, measured {measured:.2}");
    }
}

fn report(s: &GenerationStats, trace: bool) {
    report_speed(&Stats {
        n_prompt: s.n_prompt - s.n_reused,
        prompt_s: s.prompt_ms / 1e3,
        n_gen: s.n_gen,
        gen_s: s.gen_ms / 1e3,
    });
    if trace && !s.hops.is_empty() {
        // Mean per hop over the decoded tokens (the first token's hops belong to the prompt).
        let n = s.hops.len() as f64;
        let mut per: Vec<(u32, u32, u32, f64, f64)> = Vec::new();
        for hops in &s.hops {
            for (i, h) in hops.iter().enumerate() {
                if per.len() <= i {
                    per.push((h.rank, h.first_layer, h.n_layers, 0.0, 0.0));
                }
                per[i].3 += h.compute_us as f64 / 1e3 / n;
                per[i].4 += h.node_us as f64 / 1e3 / n;
            }
        }
        // Each traced step is one decoded token after the first (which the prompt produced).
        let token_ms = s.gen_ms / n;
        let busy: f64 = per.iter().map(|p| p.4).sum();
        for (rank, first, n_layers, compute, node) in &per {
            if *n_layers == 0 {
                eprintln!("  output head on node {rank}: {compute:.2} ms");
            } else {
                eprintln!(
                    "  hop: node {rank} layers {first}..{} compute {compute:.2} ms, in node {node:.2} ms",
                    first + n_layers
                );
            }
        }
        eprintln!("  per token {token_ms:.2} ms: {busy:.2} ms in nodes, {:.2} ms on links and queues", token_ms - busy);
    }
}

pub fn cluster(a: ClusterArgs) -> Result<()> {
    if a.local == 0 {
        bail!("--local needs at least 1 node");
    }
    let model = std::fs::canonicalize(&a.model).with_context(|| format!("cannot find model {}", a.model.display()))?;
    gguf::GgufFile::open(&model).with_context(|| format!("cannot load model {}", model.display()))?;
    if let Some(lw) = &a.head.layer_window {
        let w = parse_windows(lw).map_err(anyhow::Error::msg)?;
        if w.len() != a.local as usize {
            bail!("-lw has {} windows for {} nodes", w.len(), a.local);
        }
    }
    let dir = std::env::temp_dir().join(format!("prima-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let key = dir.join("cluster.key");
    ClusterKey::generate()?.save(&key)?;
    let head_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = a.threads.unwrap_or((cores / a.local as usize).max(1));
    let per_node = |what: &str, list: &Option<String>| -> Result<Vec<u64>> {
        let Some(list) = list else { return Ok(Vec::new()) };
        let v: Vec<u64> = list
            .split(',')
            .map(|x| x.trim().parse::<u64>().with_context(|| format!("{what}: {x:?} is not a whole number")))
            .collect::<Result<_>>()?;
        if v.len() != a.local as usize {
            bail!("{what} has {} values for {} nodes", v.len(), a.local);
        }
        Ok(v)
    };
    let budgets = per_node("--memory-budgets", &a.memory_budgets)?;
    let node_threads = per_node("--node-threads", &a.node_threads)?;
    if node_threads.contains(&0) {
        bail!("--node-threads: every node needs at least one thread");
    }
    let exe = std::env::current_exe().context("cannot find the prima executable")?;
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        let mut children = Vec::new();
        for rank in (0..a.local).rev() {
            let mut toml = format!(
                "rank = {rank}\nmodel = {model:?}\nhead = \"127.0.0.1:{head_port}\"\nlisten = \"127.0.0.1:0\"\nkey_file = {key:?}\nthreads = {}\nn_ctx = {}\nwire_dtype = \"{}\"\n",
                node_threads.get(rank as usize).copied().unwrap_or(threads as u64),
                a.ctx_size,
                a.wire_dtype.to_ascii_lowercase(),
            );
            if rank == 0 {
                toml.push_str(&format!("world = {}\n", a.local));
            }
            if let Some(mb) = budgets.get(rank as usize) {
                toml.push_str(&format!("memory_budget_mb = {mb}\n"));
            }
            let path = dir.join(format!("node{rank}.toml"));
            std::fs::write(&path, toml).with_context(|| format!("cannot write {}", path.display()))?;
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("node").arg("--config").arg(&path).kill_on_drop(true);
            if std::env::var_os("PRIMA_LOG").is_none() {
                cmd.env("PRIMA_LOG", if rank == 0 { "warn,actors::node=info,actors::planner=info" } else { "warn" });
            }
            if rank == 0 {
                cmd.args(a.head.forward_args()).stdout(Stdio::inherit()).stdin(Stdio::inherit());
            } else {
                cmd.stdout(Stdio::null()).stdin(Stdio::null());
            }
            let child = cmd.spawn().with_context(|| format!("cannot start node {rank}"))?;
            children.push((rank, child));
        }
        let (_, mut head) = children.pop().context("no head")?;
        let status = tokio::select! {
            s = head.wait() => s.context("waiting for the head")?,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted: stopping the nodes");
                let _ = head.kill().await;
                for (_, c) in &mut children { let _ = c.kill().await; }
                bail!("interrupted");
            }
        };
        // The head stops the others on its way out; give them a moment, then make sure.
        for (rank, c) in &mut children {
            match tokio::time::timeout(Duration::from_secs(5), c.wait()).await {
                Ok(Ok(s)) if !s.success() && status.success() => eprintln!("node {rank} exited with {s}"),
                Ok(_) => {}
                Err(_) => {
                    let _ = c.kill().await;
                }
            }
        }
        if !status.success() {
            bail!("the head exited with {status}");
        }
        Ok(())
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
