//! A fake OpenAI-compatible model server that answers stepwise's calls by role, so the bench
//! scenarios (and tests) can drive the real provider over HTTP. Shared by
//! `examples/fake_openai_server.rs` and `tests/bench_openai.rs` through `#[path]`.
//!
//! The role is inferred from the request as `src/llm/openai.rs` builds it: a structured-output
//! name (`response_format.json_schema.name`, a forced tool's name, or the schema instruction that
//! the `json_object` and `prompt` modes append to the system prompt), else plain text. The plan's
//! shape comes from the task: `depth=D width=W` gives the makespan bench's layered plan,
//! `steps=K` the overhead bench's K independent steps, anything else the 3-step diamond of the
//! concurrency benches. Every answer takes `latency`; a streamed answer spreads it over its chunks.
//!
//! Faults for the outage tests: `POST /fault {"status": 429, "retry_after_secs": 5, "for_ms":
//! 10000}` makes every chat call answer that status (with that `Retry-After`) for a while, and
//! `GET /stats` counts the chat calls seen and those answered with a fault. (A server that is
//! down altogether is this process stopped: `tests/provider_outage.rs` kills and restarts it.)

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Characters of content per streamed chunk, about what a model emits in a few tokens.
const CHUNK_CHARS: usize = 40;

/// The server's routes: `POST /v1/chat/completions`, `GET /v1/models`, and the fault controls
/// `POST /fault` and `GET /stats`.
pub fn app(latency: Duration) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/fault", post(set_fault))
        .route("/stats", get(stats))
        .with_state(Fake { latency, control: Arc::default() })
}

/// The server's state: the answers' latency and the fault controls.
#[derive(Clone)]
struct Fake {
    latency: Duration,
    control: Arc<Control>,
}

/// Chat calls counted, and the fault in force.
#[derive(Default)]
struct Control {
    requests: AtomicU64,
    faulted: AtomicU64,
    fault: Mutex<Option<Fault>>,
}

/// A status every chat call gets until `until`.
#[derive(Clone, Copy)]
struct Fault {
    status: u16,
    retry_after_secs: Option<u64>,
    until: Instant,
}

/// `POST /fault` body.
#[derive(serde::Deserialize)]
struct FaultRequest {
    status: u16,
    #[serde(default)]
    retry_after_secs: Option<u64>,
    for_ms: u64,
}

async fn set_fault(State(fake): State<Fake>, Json(req): Json<FaultRequest>) -> Json<Value> {
    let until = Instant::now() + Duration::from_millis(req.for_ms);
    let fault = Fault { status: req.status, retry_after_secs: req.retry_after_secs, until };
    *fake.control.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault);
    stats(State(fake)).await
}

async fn stats(State(fake): State<Fake>) -> Json<Value> {
    let c = &fake.control;
    Json(json!({"requests": c.requests.load(Ordering::SeqCst), "faulted": c.faulted.load(Ordering::SeqCst)}))
}

/// The fault answer for a chat call now, if a fault is in force.
fn fault_answer(control: &Control) -> Option<Response> {
    let fault = (*control.fault.lock().unwrap_or_else(|p| p.into_inner()))?;
    if Instant::now() >= fault.until {
        return None;
    }
    control.faulted.fetch_add(1, Ordering::SeqCst);
    let status = axum::http::StatusCode::from_u16(fault.status).ok()?;
    let body = Json(json!({"error": {"message": format!("fake server: fault {}", fault.status)}}));
    let mut response = (status, body).into_response();
    if let Some(secs) = fault.retry_after_secs {
        response.headers_mut().insert("retry-after", secs.into());
    }
    Some(response)
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "stepwise"}]}),
    )
}

/// What the answer is: text, or JSON returned as text or as a forced tool call.
enum Answer {
    Text(String),
    ToolCall { name: String, arguments: String },
}

async fn chat(State(fake): State<Fake>, Json(req): Json<Value>) -> Response {
    fake.control.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = fault_answer(&fake.control) {
        return response;
    }
    let latency = fake.latency;
    let start = Instant::now();
    let answer = answer_for(&req);
    let model = req["model"].as_str().unwrap_or("fake").to_owned();
    let id = format!("chatcmpl-{:016x}", fastrand::u64(..));
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prompt_tokens = tokens(&req["messages"].to_string());
    let completion_text = match &answer {
        Answer::Text(t) => t,
        Answer::ToolCall { arguments, .. } => arguments,
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": tokens(completion_text),
                       "total_tokens": prompt_tokens + tokens(completion_text)});
    let head = Head { id, created, model };
    if req["stream"].as_bool() == Some(true) {
        let include_usage =
            req.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        return stream(head, answer, include_usage.then_some(usage), start, latency);
    }
    tokio::time::sleep_until(start + latency).await;
    let (message, finish) = match answer {
        Answer::Text(content) => (json!({"role": "assistant", "content": content, "refusal": null}), "stop"),
        Answer::ToolCall { name, arguments } => (
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": call_id(&head.id), "type": "function", "function": {"name": name, "arguments": arguments}}]}),
            "tool_calls",
        ),
    };
    Json(json!({
        "id": head.id, "object": "chat.completion", "created": head.created, "model": head.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage,
    }))
    .into_response()
}

/// The fields every completion and chunk repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        c
    }
}

/// A rough token count (4 characters a token), at least 1.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn call_id(completion_id: &str) -> String {
    format!("call_{}", &completion_id[completion_id.len() - 8..])
}

/// An SSE answer in OpenAI's chunk format. The role chunk goes out at once; content chunk i of n
/// at `start + latency·(i+1)/n` (deadlines from one start, so sleeps do not drift), so the last
/// content arrives after `latency`, as a model generating tokens would send it.
fn stream(head: Head, answer: Answer, usage: Option<Value>, start: Instant, latency: Duration) -> Response {
    // With `include_usage`, OpenAI sends `"usage": null` in every chunk but the last.
    let null_usage = usage.as_ref().map(|_| Value::Null);
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let (first, pieces, finish) = match &answer {
        Answer::Text(content) => (json!({"role": "assistant", "content": ""}), split(content), "stop"),
        Answer::ToolCall { name, arguments } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id(&head.id),
                   "type": "function", "function": {"name": name, "arguments": ""}}]}),
            split(arguments),
            "tool_calls",
        ),
    };
    let n = pieces.len() as u32;
    let mut events = vec![(start, head.chunk(choice(first, Value::Null), null_usage.clone()).to_string())];
    for (i, piece) in pieces.into_iter().enumerate() {
        let delta = match &answer {
            Answer::Text(_) => json!({"content": piece}),
            Answer::ToolCall { .. } => {
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            }
        };
        let at = start + latency * (i as u32 + 1) / n;
        events.push((at, head.chunk(choice(delta, Value::Null), null_usage.clone()).to_string()));
    }
    let end = start + latency;
    events.push((end, head.chunk(choice(json!({}), json!(finish)), null_usage).to_string()));
    if let Some(u) = usage {
        events.push((end, head.chunk(json!([]), Some(u)).to_string()));
    }
    events.push((end, "[DONE]".to_owned()));
    let body = futures::stream::iter(events).then(|(at, data)| async move {
        tokio::time::sleep_until(at).await;
        Ok::<_, Infallible>(Bytes::from(format!("data: {data}\n\n")))
    });
    ([("content-type", "text/event-stream"), ("cache-control", "no-cache")], Body::from_stream(body))
        .into_response()
}

/// `text` in pieces of about [`CHUNK_CHARS`] characters (at least one piece, on char boundaries).
fn split(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(CHUNK_CHARS).map(|c| c.iter().collect()).collect()
}

/// The answer stepwise expects from the role that sent `req`.
fn answer_for(req: &Value) -> Answer {
    let messages = req["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let text_of = |role: &str| {
        messages
            .iter()
            .filter(|m| m["role"] == role)
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
    };
    let system = text_of("system").join("\n");
    let user = text_of("user").first().copied().unwrap_or_default().to_owned();
    let forced_tool = req.pointer("/tool_choice/function/name").and_then(Value::as_str);
    let schema = req
        .pointer("/response_format/json_schema/name")
        .and_then(Value::as_str)
        .or(forced_tool)
        .map(str::to_owned)
        .or_else(|| instructed_schema(&system));
    let json = match schema.as_deref() {
        Some("plan") => plan_for(&user),
        Some("replan_decision") => json!({"decision": "continue", "reason": "ok", "steps": []}).to_string(),
        Some("step_verdict") => {
            json!({"passed": true, "reason": "the output meets the expected outcome"}).to_string()
        }
        Some(other) => json!({"error": format!("fake server: unknown schema {other}")}).to_string(),
        // No structured output: a step (its prompt names "Your step") or the synthesis.
        None if user.contains("Step results:") => return Answer::Text("merged".into()),
        None => return Answer::Text("done".into()),
    };
    match (forced_tool, schema) {
        (Some(_), Some(name)) => Answer::ToolCall { name, arguments: json },
        _ => Answer::Text(json),
    }
}

/// The schema named by the instruction the `json_object` and `prompt` modes put in the system
/// prompt ("Reply with only a JSON object for the `plan` schema …").
fn instructed_schema(system: &str) -> Option<String> {
    let rest = system.split("JSON object for the `").nth(1)?;
    rest.split('`').next().map(str::to_owned)
}

/// `key=N` in the task line of the planner's prompt (`Task: …`), if present.
fn param(task: &str, key: &str) -> Option<usize> {
    task.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// A plan, its fields in the order a model writes them (`json!` would sort them), so a streaming
/// reader sees the goal first and each step's id first.
#[derive(serde::Serialize)]
struct Plan {
    goal: &'static str,
    steps: Vec<Step>,
}

/// One step of a [`Plan`].
#[derive(serde::Serialize)]
struct Step {
    id: String,
    description: String,
    expected_outcome: &'static str,
    tool: Option<String>,
    depends_on: Vec<String>,
}

/// The plan (as JSON text) for the task in the planner's user message (see the module docs).
fn plan_for(user: &str) -> String {
    let task = user.lines().next().unwrap_or_default();
    let step = |id: String, depends_on: Vec<String>| Step {
        description: format!("step {id}"),
        id,
        expected_outcome: "",
        tool: None,
        depends_on,
    };
    let steps: Vec<Step> = match (param(task, "depth"), param(task, "width"), param(task, "steps")) {
        (Some(depth), Some(width), _) => (0..depth)
            .flat_map(|d| (0..width).map(move |w| (d, w)))
            .map(|(d, w)| {
                let deps =
                    if d == 0 { vec![] } else { (0..width).map(|p| format!("l{}w{p}", d - 1)).collect() };
                step(format!("l{d}w{w}"), deps)
            })
            .collect(),
        (_, _, Some(k)) => (0..k).map(|i| step(format!("s{i}"), vec![])).collect(),
        _ => vec![
            step("a".into(), vec![]),
            step("b".into(), vec![]),
            step("c".into(), vec!["a".into(), "b".into()]),
        ],
    };
    serde_json::to_string(&Plan { goal: "bench", steps }).unwrap_or_default()
}
