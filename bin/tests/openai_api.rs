//! The OpenAI-compatible server, driven by the official `openai` Python client (when Python
//! has it; CI sets `PRIMA_REQUIRE_ORACLE=1`, which makes its absence a failure) on one device
//! and on a 3-node ring, and by raw HTTP for the error cases.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model.sh", p.display());
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn wait_healthy(port: u16) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && http(port, "GET", "/health", &[], "").0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server on port {port} did not come up");
}

fn serve(extra: &[&str]) -> (Server, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_prima"))
        .args(["serve", "-c", "2048", "-t", "2", "--port", &port.to_string()])
        .arg("-m")
        .arg(model())
        .args(extra)
        .env("PRIMA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server(child);
    wait_healthy(port);
    (s, port)
}

/// Runs scripts/openai_check.py against `base`; `false` when Python lacks the package and the
/// oracle is not required.
fn openai_client(base: &str) -> bool {
    let have = Command::new("python3").args(["-c", "import openai"]).status().map(|s| s.success()).unwrap_or(false);
    if !have {
        assert!(std::env::var_os("PRIMA_REQUIRE_ORACLE").is_none(), "python3 with the openai package is required");
        eprintln!("skipping: python3 with the openai package is not installed");
        return false;
    }
    let out = Command::new("python3").arg(root().join("scripts/openai_check.py")).arg(base).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    true
}

#[test]
fn the_openai_client_works_against_one_device() {
    let (_s, port) = serve(&[]);
    openai_client(&format!("http://127.0.0.1:{port}/v1"));
}

#[test]
fn the_openai_client_works_against_a_three_node_ring() {
    let d = std::env::temp_dir().join(format!("prima-api-ring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let key = d.join("k");
    assert!(Command::new(env!("CARGO_BIN_EXE_prima")).arg("keygen").arg(&key).status().unwrap().success());
    let head_port = free_port();
    let http_port = free_port();
    let mut kids = Vec::new();
    for rank in 0..3u32 {
        let mut cfg = format!(
            "rank = {rank}\nmodel = {:?}\nhead = \"127.0.0.1:{head_port}\"\nlisten = \"127.0.0.1:0\"\nkey_file = {key:?}\nthreads = 1\nn_ctx = 1024\n",
            model()
        );
        if rank == 0 {
            // Served through `[server]` in its config, with no --serve flag.
            cfg.push_str(&format!(
                "world = 3\nlayer_window = [4, 3, 3]\nn_parallel = 2\n[server]\nport = {http_port}\n"
            ));
        }
        let p = d.join(format!("n{rank}.toml"));
        std::fs::write(&p, cfg).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_prima"));
        c.arg("node").arg("--config").arg(&p).env("PRIMA_LOG", "warn").stdout(Stdio::null());
        kids.push(Server(c.spawn().unwrap()));
    }
    wait_healthy(http_port);
    openai_client(&format!("http://127.0.0.1:{http_port}/v1"));
    drop(kids);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_requests_get_openai_errors_and_do_not_disturb_the_server() {
    let (_s, port) = serve(&["--api-key", "sesame", "--max-queue", "1"]);
    let auth = [("Authorization", "Bearer sesame")];
    let (st, body) = http(port, "GET", "/v1/models", &[], "");
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    for (payload, want) in [
        ("{not json", "invalid request"),
        ("{\"messages\": \"x\"}", "invalid type"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": \"ten\"}", "invalid type"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 3}", "n = 1"),
        ("{\"messages\": []}", "must not be empty"),
    ] {
        let (st, body) = http(port, "POST", "/v1/chat/completions", &auth, payload);
        assert_eq!(st, 400, "{payload}: {body}");
        assert!(body.contains(want) && body.contains("invalid_request_error"), "{payload}: {body}");
    }
    let long = format!("{{\"prompt\": \"{}\", \"max_tokens\": 2}}", "word ".repeat(600));
    let (st, body) = http(port, "POST", "/v1/completions", &auth, &long);
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("context_length_exceeded"), "{body}");
    // A full queue answers 429; cancelling the running request (task 1: the first accepted)
    // ends it at once.
    let long_run = std::thread::spawn(move || {
        let body = "{\"prompt\": \"Once\", \"max_tokens\": 400, \"temperature\": 0}";
        http(port, "POST", "/v1/completions", &[("Authorization", "Bearer sesame")], body)
    });
    let t = Instant::now();
    while !http(port, "GET", "/metrics", &auth, "").1.contains("prima_requests_in_flight 1") {
        assert!(t.elapsed() < Duration::from_secs(20), "the long request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, body) = http(port, "POST", "/v1/completions", &auth, "{\"prompt\": \"Hi\", \"max_tokens\": 1}");
    assert_eq!(st, 429, "{body}");
    assert!(body.contains("queue_full"), "{body}");
    let (st, body) = http(port, "POST", "/v1/cancel", &auth, "{\"task_id\": 1}");
    assert_eq!(st, 200, "{body}");
    let t = Instant::now();
    let (st, body) = long_run.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "cancel took {:?}", t.elapsed());
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("cancelled"), "{body}");
    // Still serving, and the metrics say nothing is left in flight.
    let (st, body) =
        http(port, "POST", "/v1/completions", &auth, "{\"prompt\": \"Hi\", \"max_tokens\": 3, \"temperature\": 0}");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"completion_tokens\":3"), "{body}");
    let (st, metrics) = http(port, "GET", "/metrics", &auth, "");
    assert_eq!(st, 200);
    assert!(metrics.contains("prima_requests_in_flight 0"), "{metrics}");
    assert!(metrics.contains("prima_requests_cancelled_total 1"), "{metrics}");
    assert!(metrics.contains("prima_requests_rejected_total 1"), "{metrics}");
}

#[test]
fn closing_the_connection_cancels_the_request() {
    let (_s, port) = serve(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = "{\"prompt\": \"Once upon a time\", \"max_tokens\": 400, \"temperature\": 0, \"stream\": true}";
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // Read until the first event has arrived, then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed the stream early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let t = Instant::now();
    loop {
        let (_, m) = http(port, "GET", "/metrics", &[], "");
        if m.contains("prima_requests_cancelled_total 1")
            && m.contains("prima_requests_in_flight 0")
            && m.contains("prima_kv_slots_busy 0")
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "not cancelled: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The slot is free: the next request runs at once.
    let (st, body) = http(port, "POST", "/v1/completions", &[], "{\"prompt\": \"Hi\", \"max_tokens\": 2}");
    assert_eq!(st, 200, "{body}");
}

#[test]
fn a_load_test_loses_no_request_and_leaks_no_slot() {
    let (_s, port) = serve(&["-np", "8", "--max-queue", "64"]);
    let prompts = ["Hi", "The capital of France is", "Once upon a time", "1, 2, 3,", "Water boils at"];
    let body = |p: &str| format!("{{\"prompt\": \"{p}\", \"max_tokens\": 6, \"temperature\": 0}}");
    // What each prompt gives alone.
    let solo: Vec<String> = prompts
        .iter()
        .map(|p| {
            let (st, b) = http(port, "POST", "/v1/completions", &[], &body(p));
            assert_eq!(st, 200, "{b}");
            text_of(&b)
        })
        .collect();
    // 200 requests, 16 clients at a time, with a malformed one now and then.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (next, solo) = (next.clone(), solo.clone());
            std::thread::spawn(move || {
                let mut done = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= 200 {
                        return done;
                    }
                    if i % 25 == 7 {
                        let (st, b) = http(port, "POST", "/v1/completions", &[], "{\"prompt\": 5}");
                        assert_eq!(st, 400, "{b}");
                    }
                    let k = i % prompts.len();
                    let (st, b) = http(port, "POST", "/v1/completions", &[], &body(prompts[k]));
                    assert_eq!(st, 200, "request {i}: {b}");
                    assert_eq!(text_of(&b), solo[k], "request {i} differs from its solo run");
                    done += 1;
                }
            })
        })
        .collect();
    let served: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(served, 200);
    let (_, m) = http(port, "GET", "/metrics", &[], "");
    assert!(m.contains("prima_kv_slots_busy 0"), "{m}");
    assert!(m.contains("prima_kv_slots 8"), "{m}");
    assert!(m.contains("prima_requests_in_flight 0"), "{m}");
}

/// The `text` of a completion response.
fn text_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("no text: {body}")).to_string()
}
