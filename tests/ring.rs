//! End-to-end: a ring of nodes over real TCP on loopback produces, token for token, the greedy
//! output of one device (`prima run`'s path, `Session`) on the real SmolLM2 model, for 1 to 4
//! nodes, with windows that take one and several cycles, with and without a head that holds
//! layers; and a ring that loses a node fails the request with an error naming it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prima::compute::{LoadSpec, Model, SamplerConfig, Session};
use prima::gguf::{GgufFile, Tokenizer};
use prima::{Cluster, GenerateRequest, LocalCluster};

fn model_path() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model.sh", p.display());
    p
}

const N_PREDICT: usize = 10;

fn prompt(text: &str) -> Vec<u32> {
    let f = GgufFile::open(model_path()).unwrap();
    Tokenizer::from_metadata(f.metadata()).unwrap().encode(text, true, true)
}

/// Greedy generation on one device, exactly as `prima run` does it.
fn single_device(prompt: &[u32], n_predict: usize) -> Vec<u32> {
    let file = Arc::new(GgufFile::open(model_path()).unwrap());
    let n_layer = prima::compute::HParams::from_metadata(file.metadata()).unwrap().n_layer;
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let model = Model::load(file, LoadSpec::full(n_layer)).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let mut s = Session::new(&model, 1024).unwrap();
        let mut logits = Vec::new();
        s.feed(prompt, &mut logits).unwrap();
        let mut out = Vec::new();
        for i in 0..n_predict {
            let id = prima::compute::sampling::argmax(&logits);
            if tok.is_eog(id) {
                break;
            }
            out.push(id);
            if i + 1 == n_predict {
                break;
            }
            s.feed(&[id], &mut logits).unwrap();
        }
        out
    })
}

fn request(prompt: &[u32], n_predict: usize) -> GenerateRequest {
    GenerateRequest { prompt: prompt.to_vec(), n_predict, sampling: SamplerConfig::greedy(), trace: true }
}

async fn ring_output(nodes: u32, windows: Option<Vec<usize>>, prompt: &[u32]) -> Vec<u32> {
    ring_output_n(nodes, windows, prompt, N_PREDICT).await
}

async fn ring_output_n(nodes: u32, windows: Option<Vec<usize>>, prompt: &[u32], n_predict: usize) -> Vec<u32> {
    let mut opts = LocalCluster::new(model_path(), nodes);
    opts.layer_window = windows.clone();
    opts.n_ctx = 1024;
    let cluster = Cluster::local(opts).await.unwrap_or_else(|e| panic!("{nodes} nodes {windows:?}: {e}"));
    let (tokens, stats) = cluster.head.generate_all(request(prompt, n_predict)).await.unwrap();
    // Every decoded token went round the whole ring: the hops cover every layer once.
    for hops in &stats.hops {
        let layers: u32 = hops.iter().map(|h| h.n_layers).sum();
        assert_eq!(layers, 30, "{hops:?}");
    }
    cluster.shutdown().await.unwrap();
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rings_of_one_to_four_nodes_match_one_device() {
    let p = prompt("The capital of France is");
    let want = single_device(&p, N_PREDICT);
    assert_eq!(want.len(), N_PREDICT);
    let cases: &[(u32, Option<Vec<usize>>)] = &[
        (1, None),
        (2, Some(vec![15, 15])),
        (2, Some(vec![4, 6])), // 3 cycles
        (3, Some(vec![10, 10, 10])),
        (3, Some(vec![3, 4, 5])), // 3 cycles, the last one partial
        (4, Some(vec![8, 8, 8, 6])),
        (4, Some(vec![0, 5, 2, 3])),    // a head without layers, 3 cycles
        (4, Some(vec![10, 0, 10, 10])), // a node without layers leaves the ring
    ];
    for (n, w) in cases {
        let t = Instant::now();
        let got = ring_output(*n, w.clone(), &p).await;
        assert_eq!(got, want, "{n} nodes, windows {w:?}");
        eprintln!("{n} nodes {w:?}: ok in {:.1} s", t.elapsed().as_secs_f64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_up_request_reuses_the_cached_prefix_and_still_matches() {
    let first = prompt("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n");
    let mut opts = LocalCluster::new(model_path(), 2);
    opts.layer_window = Some(vec![7, 8]);
    opts.n_ctx = 1024;
    let cluster = Cluster::local(opts).await.unwrap();
    let (out1, s1) = cluster.head.generate_all(request(&first, 4)).await.unwrap();
    assert_eq!(out1, single_device(&first, 4));
    assert_eq!(s1.n_reused, 0);
    let mut second = first.clone();
    second.extend_from_slice(&out1);
    second
        .extend(prompt("<|im_end|>\n<|im_start|>user\nAnother one.<|im_end|>\n<|im_start|>assistant\n").iter().skip(1));
    let (out2, s2) = cluster.head.generate_all(request(&second, 4)).await.unwrap();
    assert!(s2.n_reused >= first.len(), "reused {} of {}", s2.n_reused, second.len());
    assert_eq!(out2.len(), 4);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_node_fails_the_request_with_its_name() {
    let p = prompt("Once upon a time");
    let mut opts = LocalCluster::new(model_path(), 3);
    opts.n_ctx = 1024;
    opts.layer_window = Some(vec![10, 10, 10]);
    let mut cluster = Cluster::local(opts).await.unwrap();
    let mut rx = cluster.head.generate(request(&p, 200)).unwrap();
    // Let a few tokens through, then crash node 2.
    let mut got = 0;
    while got < 3 {
        match rx.recv().await {
            Some(prima::Event::Token(_)) => got += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let t = Instant::now();
    cluster.nodes[1].abort();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(prima::Event::Token(_))) => continue,
            Ok(Some(prima::Event::Error(e))) => break e,
            other => panic!("expected an error, got {other:?}"),
        }
    };
    assert!(err.contains("node 2"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert!(cluster.head.wait().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_longer_than_a_prefill_chunk_is_pipelined_and_still_matches() {
    let text = "The quick brown fox jumps over the lazy dog while the cat watches from the fence. ".repeat(18);
    let p = prompt(&text);
    assert!(p.len() > prima::compute::session::PREFILL_CHUNK, "{} tokens", p.len());
    let want = single_device(&p, 3);
    assert_eq!(ring_output_n(2, Some(vec![15, 15]), &p, 3).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hidden_states_can_travel_as_f16() {
    let p = prompt("The capital of France is");
    let mut opts = LocalCluster::new(model_path(), 2);
    opts.layer_window = Some(vec![15, 15]);
    opts.n_ctx = 1024;
    opts.wire_dtype = prima::WireDtype::F16;
    let cluster = Cluster::local(opts).await.unwrap();
    let (tokens, stats) = cluster.head.generate_all(request(&p, N_PREDICT)).await.unwrap();
    // f16 rounding at each hop may change a near tie, so only the shape of the run is checked.
    assert!(!tokens.is_empty() && tokens.len() <= N_PREDICT);
    assert!(stats.hops.iter().all(|h| h.iter().map(|x| x.n_layers).sum::<u32>() == 30));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unequal_nodes_get_a_plan_from_the_scheduler_and_still_match() {
    let p = prompt("The capital of France is");
    let want = single_device(&p, N_PREDICT);
    let mut opts = LocalCluster::new(model_path(), 3);
    opts.n_ctx = 1024;
    // No layer_window: the head profiles every node and solves. The head may keep only a few
    // MiB of weights in memory, node 1 a little more, node 2 plenty; their threads differ too.
    opts.node_threads = vec![1, 2, 1];
    opts.memory_budgets_mb = vec![8, 40, 400];
    let cluster = Cluster::local(opts).await.unwrap();
    let plan = cluster.head.plan().expect("the head has the plan").clone();
    let predicted = cluster.head.predicted_token_ms().expect("an automatic plan has a prediction");
    let (tokens, stats) = cluster.head.generate_all(request(&p, N_PREDICT)).await.unwrap();
    let measured = stats.gen_ms / stats.n_gen.max(1) as f64;
    eprintln!(
        "plan {} (ring {:?}): predicted {predicted:.2} ms/token, measured {measured:.2}",
        plan.windows_text(),
        plan.ring
    );
    assert_eq!(tokens, want);
    assert_eq!(plan.window.iter().sum::<usize>() * plan.cycles, 30, "whole cycles: {:?}", plan.window);
    // The head cannot hold the model in 8 MiB, so layers go to the roomier nodes.
    assert!(plan.ring.len() >= 2, "{:?}", plan.window);
    assert!(plan.window[0] < 30, "{:?}", plan.window);
    assert!(predicted > 0.0 && predicted.is_finite());
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_decode_together_and_each_matches_its_solo_run() {
    let texts = [
        "The capital of France is",
        "Once upon a time",
        "The quick brown fox",
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
        "1, 2, 3, 4,",
        "Water boils at",
        "My favourite food is",
        "The opposite of hot is",
    ];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| prompt(t)).collect();
    let solo: Vec<Vec<u32>> = prompts.iter().map(|p| single_device(p, N_PREDICT)).collect();
    for (nodes, windows) in [(1, None), (2, Some(vec![15, 15]))] {
        let mut opts = LocalCluster::new(model_path(), nodes);
        opts.layer_window = windows.clone();
        opts.n_parallel = 8;
        opts.n_ctx = 8 * 256;
        let cluster = Cluster::local(opts).await.unwrap();
        let head = Arc::new(cluster.head);
        let runs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let (head, p) = (head.clone(), p.clone());
                tokio::spawn(async move { head.generate_all(request(&p, N_PREDICT)).await })
            })
            .collect();
        let mut busy_seen = 0;
        for (i, r) in runs.into_iter().enumerate() {
            busy_seen = busy_seen.max(head.slots_busy());
            let (tokens, stats) = r.await.unwrap().unwrap();
            assert_eq!(tokens, solo[i], "{nodes} node(s): {:?}", texts[i]);
            // Decoded tokens went round the whole ring.
            assert!(stats.hops.iter().all(|h| h.iter().map(|x| x.n_layers).sum::<u32>() == 30));
        }
        assert_eq!(head.slots_busy(), 0, "every slot is free again");
        let head = Arc::try_unwrap(head).unwrap_or_else(|_| panic!("head still shared"));
        let cluster = Cluster { head, nodes: cluster.nodes };
        cluster.shutdown().await.unwrap();
        eprintln!("{nodes} node(s): 8 concurrent requests match their solo runs (busy seen {busy_seen})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_sequence_frees_its_slot_and_the_others_finish() {
    let p = prompt("Once upon a time");
    let q = prompt("The capital of France is");
    let mut opts = LocalCluster::new(model_path(), 1);
    opts.n_parallel = 2;
    opts.n_ctx = 2048;
    let cluster = Cluster::local(opts).await.unwrap();
    let (id, mut rx) = cluster.head.submit(request(&p, 200)).unwrap();
    let (_, mut other) = cluster.head.submit(request(&q, N_PREDICT)).unwrap();
    // Two tokens of each, then cancel the long one while the other runs.
    let mut tokens = Vec::new();
    for _ in 0..2 {
        assert!(matches!(rx.recv().await, Some(prima::Event::Token(_))));
        match other.recv().await {
            Some(prima::Event::Token(t)) => tokens.push(t),
            ev => panic!("{ev:?}"),
        }
    }
    assert_eq!(cluster.head.slots_busy(), 2, "both run at once");
    cluster.head.cancel(id);
    loop {
        match other.recv().await {
            Some(prima::Event::Token(t)) => tokens.push(t),
            Some(prima::Event::Done(_)) => break,
            ev => panic!("{ev:?}"),
        }
    }
    assert_eq!(tokens, single_device(&q, N_PREDICT));
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap() {
            Some(prima::Event::Token(_)) => continue,
            Some(prima::Event::Error(e)) => {
                assert!(e.contains("cancelled"), "{e}");
                break;
            }
            other => panic!("expected the cancellation, got {other:?}"),
        }
    }
    assert_eq!(cluster.head.slots_busy(), 0);
    // The freed slot takes the next request.
    let (again, _) = cluster.head.generate_all(request(&p, 4)).await.unwrap();
    assert_eq!(again, single_device(&p, 4));
    cluster.shutdown().await.unwrap();
}
