//! Api (head): an OpenAI-compatible HTTP server over a node's Batcher (axum).
//!
//! `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream: true` as
//! server-sent events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus text), `POST /v1/cancel` (`{"task_id": N}`; the id comes back
//! in the `X-Task-Id` header and in each response body). Errors use OpenAI's JSON shape.
//! Requests queue in the Batcher, which decodes up to `n_parallel` of them together.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use compute::SamplerConfig;
use gguf::Tokenizer;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::batcher::{Event, GenerateRequest, GenerationStats};
use crate::node::Node;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `host:port` to listen on.
    pub addr: String,
    /// Bearer token required on `/v1/*` and `/metrics` when set.
    pub api_key: Option<String>,
    /// Requests accepted at once (running + queued); more get 429.
    pub max_queue: usize,
    /// Name reported by `/v1/models` (and accepted as `model`).
    pub model_name: String,
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Mean per-hop compute time of the last request's decode steps, by (rank, first layer).
    hops: Mutex<BTreeMap<(u32, u32), f64>>,
}

struct AppState {
    node: Arc<Node>,
    cfg: ApiConfig,
    tok: Arc<Tokenizer>,
    chat: gguf::chat::ChatFormat,
    in_flight: AtomicUsize,
    metrics: Metrics,
}

type Shared = Arc<AppState>;

/// An OpenAI-shaped error response.
fn error(status: StatusCode, kind: &str, code: Option<&str>, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", None, message)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Builds the server's router for `node` (which must be a head).
pub fn router(node: Arc<Node>, cfg: ApiConfig) -> Result<Router, String> {
    let tok = node.tokenizer().ok_or("the API runs on the head only")?.clone();
    let chat = gguf::chat::ChatFormat::new(node.chat_template().map(str::to_string), &tok);
    let state =
        Arc::new(AppState { chat, node, cfg, tok, in_flight: AtomicUsize::new(0), metrics: Metrics::default() });
    Ok(Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/cancel", post(cancel))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .route("/health", get(health))
        .with_state(state))
}

/// Serves until `shutdown` completes.
pub async fn serve(
    node: Arc<Node>,
    cfg: ApiConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let addr = cfg.addr.clone();
    let app = router(node, cfg)?;
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(
        "OpenAI-compatible API on http://{}/v1",
        listener.local_addr().map(|a| a.to_string()).unwrap_or(addr)
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(|e| format!("HTTP server: {e}"))
}

async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|got| crate::api::ct_eq(got.as_bytes(), key.as_bytes()));
        if !ok {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                Some("invalid_api_key"),
                "invalid or missing API key",
            );
        }
    }
    next.run(req).await
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(st): State<Shared>) -> Response {
    match st.node.failure() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "error", "error": e}))).into_response(),
    }
}

async fn models(State(st): State<Shared>) -> Response {
    Json(json!({"object": "list", "data": [{"id": st.cfg.model_name, "object": "model", "created": 0, "owned_by": "prima"}]}))
        .into_response()
}

async fn metrics(State(st): State<Shared>) -> Response {
    let m = &st.metrics;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        out.push_str(&format!("# HELP prima_{name} {help}\n# TYPE prima_{name} counter\nprima_{name} {v}\n"));
    };
    counter("requests_total", "Requests accepted.", m.requests.load(Ordering::Relaxed));
    counter("requests_failed_total", "Requests that ended with an error.", m.failed.load(Ordering::Relaxed));
    counter(
        "requests_cancelled_total",
        "Requests cancelled (endpoint, disconnect or stop string).",
        m.cancelled.load(Ordering::Relaxed),
    );
    counter(
        "requests_rejected_total",
        "Requests refused because the queue was full.",
        m.rejected.load(Ordering::Relaxed),
    );
    counter("prompt_tokens_total", "Prompt tokens processed.", m.prompt_tokens.load(Ordering::Relaxed));
    counter("completion_tokens_total", "Tokens generated.", m.completion_tokens.load(Ordering::Relaxed));
    out.push_str(&format!(
        "# HELP prima_requests_in_flight Requests running or queued.\n# TYPE prima_requests_in_flight gauge\nprima_requests_in_flight {}\n",
        st.in_flight.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# HELP prima_kv_slots_busy Sequences decoding now (KV slots in use).\n# TYPE prima_kv_slots_busy gauge\nprima_kv_slots_busy {}\n\
         # HELP prima_kv_slots Sequences the ring decodes together.\n# TYPE prima_kv_slots gauge\nprima_kv_slots {}\n",
        st.node.slots_busy(),
        st.node.n_slots()
    ));
    out.push_str("# HELP prima_hop_compute_ms Mean compute time per decode step of each ring hop (last request).\n# TYPE prima_hop_compute_ms gauge\n");
    if let Ok(h) = m.hops.lock() {
        for ((rank, first), ms) in h.iter() {
            out.push_str(&format!("prima_hop_compute_ms{{node=\"{rank}\",first_layer=\"{first}\"}} {ms:.3}\n"));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Deserialize)]
struct CancelRequest {
    task_id: u64,
}

async fn cancel(State(st): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<CancelRequest>(&body) {
        Ok(r) => {
            st.node.cancel(r.task_id);
            Json(json!({"task_id": r.task_id, "cancelled": true})).into_response()
        }
        Err(e) => bad_request(format!("invalid request: {e}")),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// The sampling and length fields both endpoints share.
#[derive(Deserialize)]
struct Common {
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: Stop,
    #[serde(flatten)]
    common: Common,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat_completions(State(st): State<Shared>, body: Bytes) -> Response {
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid request: {e}")),
    };
    let mut msgs = Vec::new();
    for m in &req.messages {
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return bad_request(format!("content parts of type {:?} are not supported", p.kind));
                }
                parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join("")
            }
        };
        msgs.push(gguf::chat::ChatMessage::new(&m.role, &text));
    }
    if msgs.is_empty() {
        return bad_request("messages must not be empty");
    }
    let text = match st.chat.render(&msgs, true) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("cannot apply the chat template: {e}")),
    };
    let prompt = st.tok.encode(&text, true, true);
    run(st, prompt, req.common, Kind::Chat).await
}

async fn completions(State(st): State<Shared>, body: Bytes) -> Response {
    let req: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid request: {e}")),
    };
    let text = match req.prompt {
        Stop::One(s) => s,
        Stop::Many(v) if v.len() == 1 => v.into_iter().next().unwrap_or_default(),
        Stop::Many(_) => return bad_request("only one prompt per request is supported"),
    };
    let prompt = st.tok.encode(&text, true, true);
    run(st, prompt, req.common, Kind::Completion).await
}

/// Turns token ids into text as it streams, never splitting a UTF-8 character, and holds back
/// text that may be the start of a stop string.
struct TextStream {
    tok: Arc<Tokenizer>,
    bytes: Vec<u8>,
    text: String,
    emitted: usize,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    /// Adds a token; returns the text that may be sent now.
    fn push(&mut self, id: u32) -> String {
        self.bytes.extend(self.tok.token_to_piece(id, false));
        match std::str::from_utf8(&self.bytes) {
            Ok(s) => {
                self.text.push_str(s);
                self.bytes.clear();
            }
            Err(e) if e.error_len().is_some() => {
                self.text.push_str(&String::from_utf8_lossy(&self.bytes));
                self.bytes.clear();
            }
            Err(e) => {
                let ok = e.valid_up_to();
                let head: Vec<u8> = self.bytes.drain(..ok).collect();
                self.text.push_str(&String::from_utf8_lossy(&head));
            }
        }
        let search_from = self.emitted.saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        let search_from = (0..=search_from).rev().find(|&i| self.text.is_char_boundary(i)).unwrap_or(0);
        if let Some(pos) =
            self.stops.iter().filter_map(|s| self.text[search_from..].find(s.as_str()).map(|p| p + search_from)).min()
        {
            self.text.truncate(pos);
            self.stopped = true;
            return self.take(self.text.len());
        }
        // Hold back the longest tail that could still grow into a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= self.text.len() && s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        self.take(self.text.len() - hold)
    }

    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.emitted);
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// Whatever is left at the end.
    fn finish(&mut self) -> String {
        if !self.bytes.is_empty() {
            self.text.push_str(&String::from_utf8_lossy(&self.bytes));
            self.bytes.clear();
        }
        self.take(self.text.len())
    }
}

/// Cancels the task when dropped before it finished (a client that disconnects).
struct CancelOnDrop {
    node: Arc<Node>,
    id: u64,
    done: bool,
    st: Shared,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.node.cancel(self.id);
            self.st.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        self.st.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn finish_reason(stopped: bool, stats: &GenerationStats) -> &'static str {
    if stopped || stats.stop == "eog" {
        "stop"
    } else {
        "length"
    }
}

fn is_lost(e: &str) -> bool {
    e.contains("lost") || e.contains("failed") || e.contains("stopped")
}

async fn run(st: Shared, prompt: Vec<u32>, c: Common, kind: Kind) -> Response {
    if c.n.is_some_and(|n| n != 1) {
        return bad_request("only n = 1 is supported");
    }
    let n_ctx = st.node.n_ctx();
    if prompt.is_empty() {
        return bad_request("the prompt is empty");
    }
    if prompt.len() >= n_ctx {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("context_length_exceeded"),
            format!("the prompt has {} tokens; the context holds {n_ctx}", prompt.len()),
        );
    }
    let room = n_ctx - prompt.len();
    let max_tokens = c.max_completion_tokens.or(c.max_tokens).unwrap_or(room).min(room);
    if max_tokens == 0 {
        return bad_request("max_tokens must be positive");
    }
    if st.in_flight.fetch_add(1, Ordering::Relaxed) >= st.cfg.max_queue {
        st.in_flight.fetch_sub(1, Ordering::Relaxed);
        st.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("queue_full"),
            "too many requests queued; retry later",
        );
    }
    let sampling = SamplerConfig {
        temperature: c.temperature.unwrap_or(1.0),
        top_k: c.top_k.unwrap_or(0),
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        repeat_penalty: c.repeat_penalty.unwrap_or(1.0),
        repeat_last_n: 64,
        seed: c
            .seed
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)),
    };
    let n_prompt = prompt.len();
    let req = GenerateRequest { prompt, n_predict: max_tokens, sampling, trace: true };
    let (id, rx) = match st.node.submit(req) {
        Ok(x) => x,
        Err(e) => {
            st.in_flight.fetch_sub(1, Ordering::Relaxed);
            return error(StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("ring_unavailable"), e.to_string());
        }
    };
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    st.metrics.prompt_tokens.fetch_add(n_prompt as u64, Ordering::Relaxed);
    let stops = match c.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();
    let text =
        TextStream { tok: st.tok.clone(), bytes: Vec::new(), text: String::new(), emitted: 0, stops, stopped: false };
    let guard = CancelOnDrop { node: st.node.clone(), id, done: false, st: st.clone() };
    let mut headers = HeaderMap::new();
    headers.insert("x-task-id", HeaderValue::from(id));
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    let ctx = Ctx { st, id, name: format!("{prefix}-{id}"), created: now(), kind, n_prompt };
    if c.stream.unwrap_or(false) {
        (headers, stream_response(ctx, rx, text, guard)).into_response()
    } else {
        let mut r = whole_response(ctx, rx, text, guard).await;
        r.headers_mut().extend(headers);
        r
    }
}

struct Ctx {
    st: Shared,
    id: u64,
    name: String,
    created: u64,
    kind: Kind,
    n_prompt: usize,
}

impl Ctx {
    fn body(&self, text: &str, finish: Option<&str>, usage: Option<Value>) -> Value {
        let model = &self.st.cfg.model_name;
        let mut v = match self.kind {
            Kind::Chat => json!({
                "id": self.name, "object": "chat.completion", "created": self.created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            }),
            Kind::Completion => json!({
                "id": self.name, "object": "text_completion", "created": self.created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            }),
        };
        v["task_id"] = json!(self.id);
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }

    fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let model = &self.st.cfg.model_name;
        let mut v = match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"id": self.name, "object": "chat.completion.chunk", "created": self.created, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            }
            Kind::Completion => {
                json!({"id": self.name, "object": "text_completion", "created": self.created, "model": model,
                       "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
            }
        };
        if first {
            v["task_id"] = json!(self.id);
        }
        v
    }

    fn usage(&self, n_gen: usize) -> Value {
        json!({"prompt_tokens": self.n_prompt, "completion_tokens": n_gen, "total_tokens": self.n_prompt + n_gen})
    }

    fn record(&self, stats: &GenerationStats) {
        let m = &self.st.metrics;
        m.completion_tokens.fetch_add(stats.n_gen as u64, Ordering::Relaxed);
        if stats.hops.is_empty() {
            return;
        }
        let mut sums: BTreeMap<(u32, u32), f64> = BTreeMap::new();
        for hops in &stats.hops {
            for h in hops {
                *sums.entry((h.rank, h.first_layer)).or_default() +=
                    h.compute_us as f64 / 1e3 / stats.hops.len() as f64;
            }
        }
        if let Ok(mut g) = m.hops.lock() {
            *g = sums;
        }
    }
}

/// The error response for a request that failed after it was accepted.
fn failed(ctx: &Ctx, e: String) -> Response {
    if e == "cancelled" {
        ctx.st.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        return error(StatusCode::CONFLICT, "cancelled", Some("cancelled"), "the request was cancelled");
    }
    ctx.st.metrics.failed.fetch_add(1, Ordering::Relaxed);
    if is_lost(&e) {
        error(StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("ring_unavailable"), e)
    } else {
        error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, e)
    }
}

async fn whole_response(
    ctx: Ctx,
    mut rx: UnboundedReceiver<Event>,
    mut text: TextStream,
    mut guard: CancelOnDrop,
) -> Response {
    let mut out = String::new();
    let mut n_gen = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(id) => {
                n_gen += 1;
                out.push_str(&text.push(id));
                if text.stopped {
                    guard.node.cancel(ctx.id);
                    guard.done = true;
                    let stats = GenerationStats { n_gen, ..Default::default() };
                    ctx.record(&stats);
                    return Json(ctx.body(&out, Some("stop"), Some(ctx.usage(n_gen)))).into_response();
                }
            }
            Event::Done(stats) => {
                guard.done = true;
                out.push_str(&text.finish());
                ctx.record(&stats);
                let usage = ctx.usage(stats.n_gen);
                return Json(ctx.body(&out, Some(finish_reason(false, &stats)), Some(usage))).into_response();
            }
            Event::Error(e) => {
                guard.done = true;
                return failed(&ctx, e);
            }
        }
    }
    guard.done = true;
    failed(&ctx, "the node stopped".into())
}

fn stream_response(
    ctx: Ctx,
    rx: UnboundedReceiver<Event>,
    text: TextStream,
    guard: CancelOnDrop,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    struct S {
        ctx: Ctx,
        rx: UnboundedReceiver<Event>,
        text: TextStream,
        guard: CancelOnDrop,
        first: bool,
        n_gen: usize,
        end: u8,
    }
    let s = S { ctx, rx, text, guard, first: true, n_gen: 0, end: 0 };
    let data = |v: Value| Ok::<_, Infallible>(SseEvent::default().data(v.to_string()));
    let stream = futures_util::stream::unfold(s, move |mut s| async move {
        match s.end {
            1 => {
                s.end = 2;
                return Some((Ok(SseEvent::default().data("[DONE]")), s));
            }
            2 => return None,
            _ => {}
        }
        loop {
            let Some(ev) = s.rx.recv().await else {
                s.guard.done = true;
                s.end = 1;
                let err = json!({"error": {"message": "the node stopped", "type": "server_error"}});
                return Some((data(err), s));
            };
            match ev {
                Event::Token(id) => {
                    s.n_gen += 1;
                    let piece = s.text.push(id);
                    if s.text.stopped {
                        s.guard.node.cancel(s.ctx.id);
                        s.guard.done = true;
                        s.ctx.record(&GenerationStats { n_gen: s.n_gen, ..Default::default() });
                        let mut v = s.ctx.chunk(Some(&piece), s.first, Some("stop"));
                        v["usage"] = s.ctx.usage(s.n_gen);
                        s.end = 1;
                        return Some((data(v), s));
                    }
                    if piece.is_empty() && !s.first {
                        continue;
                    }
                    let v = s.ctx.chunk(Some(&piece), s.first, None);
                    s.first = false;
                    return Some((data(v), s));
                }
                Event::Done(stats) => {
                    s.guard.done = true;
                    let rest = s.text.finish();
                    s.ctx.record(&stats);
                    let mut v = s.ctx.chunk(Some(&rest), s.first, Some(finish_reason(false, &stats)));
                    v["usage"] = s.ctx.usage(stats.n_gen);
                    s.end = 1;
                    return Some((data(v), s));
                }
                Event::Error(e) => {
                    s.guard.done = true;
                    let counter = if e == "cancelled" { &s.ctx.st.metrics.cancelled } else { &s.ctx.st.metrics.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let kind = if is_lost(&e) { "server_error" } else { "invalid_request_error" };
                    s.end = 1;
                    return Some((data(json!({"error": {"message": e, "type": kind}})), s));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn key_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
