//! The fake OpenAI-compatible server of `examples/fake_openai_server.rs` speaks the Chat
//! Completions wire format: the real provider gets a plan from it in every structured-output mode,
//! its streamed answers are OpenAI's chunk format, and the real `stepwise bench makespan
//! --provider openai` completes against it.

#[path = "support_llm/fake_openai.rs"]
mod fake_openai;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepwise::llm::config::StructuredMode;
use stepwise::llm::openai::{OpenAiModel, OpenAiSettings};
use stepwise::llm::{AgentRole, CallContext, ChatModel, ChatRequest, Message, StructuredOutput};

/// Starts the fake on 127.0.0.1; returns `http://ADDR`.
async fn start(latency: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, fake_openai::app(latency)).await.unwrap() });
    url
}

fn plan_request(task: &str) -> ChatRequest {
    ChatRequest {
        context: CallContext {
            run_id: "r1".into(),
            role: AgentRole::Planner,
            step: None,
            attempt: 0,
            trace: Default::default(),
        },
        messages: vec![
            Message::system("You are the planner."),
            Message::user(format!("Task: {task}\n\nAvailable tools:\n(no tools)")),
        ],
        tools: vec![],
        structured: Some(StructuredOutput { name: "plan".into(), schema: json!({"type": "object"}).into() }),
        max_tokens: None,
    }
}

fn step_ids(plan: &Value) -> Vec<String> {
    plan["steps"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_real_provider_gets_a_plan_in_every_structured_mode() {
    let url = start(Duration::ZERO).await;
    for mode in
        [StructuredMode::JsonSchema, StructuredMode::JsonObject, StructuredMode::Tool, StructuredMode::Prompt]
    {
        let mut settings = OpenAiSettings::new("fake");
        settings.base_url = format!("{url}/v1");
        settings.api_key = Some("sk-bench-local".into());
        settings.structured = mode;
        let model = OpenAiModel::new(settings).unwrap();
        let response = model.chat(plan_request("makespan depth=2 width=3")).await.unwrap();
        let plan: Value = serde_json::from_str(&response.content).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(step_ids(&plan), ["l0w0", "l0w1", "l0w2", "l1w0", "l1w1", "l1w2"], "{mode:?}");
        assert_eq!(plan["steps"][3]["depends_on"], json!(["l0w0", "l0w1", "l0w2"]));
        assert!(response.usage.input_tokens > 0 && response.usage.output_tokens > 0, "{mode:?}");
        assert_eq!(response.model, "fake");
    }
    // `steps=K`: K independent steps, as the overhead bench's scripted plan.
    let mut settings = OpenAiSettings::new("fake");
    settings.base_url = format!("{url}/v1");
    let model = OpenAiModel::new(settings).unwrap();
    let plan: Value =
        serde_json::from_str(&model.chat(plan_request("bench run 7 steps=4")).await.unwrap().content)
            .unwrap();
    assert_eq!(step_ids(&plan), ["s0", "s1", "s2", "s3"]);
    assert!(plan["steps"].as_array().unwrap().iter().all(|s| s["depends_on"] == json!([])));

    let models: Value = reqwest::get(format!("{url}/v1/models")).await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");
}

/// The `data:` payloads of an SSE body, each event ended by a blank line.
fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "every event ends with a blank line: {body:?}");
    body.split_terminator("\n\n").map(|e| e.strip_prefix("data: ").expect(e).to_owned()).collect()
}

#[tokio::test]
async fn a_streamed_answer_is_openai_chunks_then_usage_then_done() {
    let latency = Duration::from_millis(30);
    let url = start(latency).await;
    let client = reqwest::Client::new();
    let post = |body: Value| client.post(format!("{url}/v1/chat/completions")).json(&body).send();

    let t0 = Instant::now();
    let resp = post(json!({
        "model": "fake", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "plan"},
                     {"role": "user", "content": "Task: makespan depth=3 width=2\n\nAvailable tools:\n(no tools)"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "plan", "schema": {}, "strict": false}}
    }))
    .await
    .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    assert!(t0.elapsed() >= latency, "the latency is spread over the chunks, not skipped");
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.len() >= 5, "role, several content pieces, finish, usage: {chunks:#?}");
    let id = &chunks[0]["id"];
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!((&c["id"], &c["model"]), (id, &json!("fake")));
        assert!(c["created"].is_u64());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let (finish, content_chunks) = rest.split_last().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert!(content_chunks[1..].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    let content: String =
        content_chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    // In the order a model writes it, so a streaming reader meets each step's id first.
    assert!(content.starts_with(r#"{"goal":"bench","steps":[{"id":"l0w0","#), "{content}");
    let plan: Value = serde_json::from_str(&content).unwrap();
    assert_eq!(step_ids(&plan).len(), 6);

    // A forced tool: the id and name only in the first tool-call delta, then argument pieces.
    let body = post(json!({
        "model": "fake", "stream": true,
        "messages": [{"role": "user", "content": "Task: something small"}],
        "tools": [{"type": "function", "function": {"name": "plan", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "plan"}}
    }))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let calls: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"].get("tool_calls")).collect();
    assert!(calls.len() >= 2, "{chunks:#?}");
    assert_eq!(calls[0][0]["function"]["name"], "plan");
    assert!(calls[0][0]["id"].is_string());
    assert!(calls[1..].iter().all(|c| c[0].get("id").is_none() && c[0]["function"].get("name").is_none()));
    let arguments: String = calls.iter().map(|c| c[0]["function"]["arguments"].as_str().unwrap()).collect();
    assert_eq!(step_ids(&serde_json::from_str(&arguments).unwrap()), ["a", "b", "c"]);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage chunk unless asked");
}

fn bench(url: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["bench", "makespan", "--provider", "openai", "--model", "fake", "--pool", "4"];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(&args)
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", "sk-bench-local")
        .env("STEPWISE_RUNTIME__DATA_DIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: exit {:?}\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_makespan_runs_against_the_fake_server() {
    let url = start(Duration::from_millis(20)).await;
    let report = tokio::task::spawn_blocking({
        let url = url.clone();
        move || bench(&url, &["--latency-ms", "20", "--depth", "2", "--width", "2"])
    })
    .await
    .unwrap();
    assert_eq!(report["scenario"], "makespan");
    assert_eq!(report["provider"], "openai");
    assert_eq!(report["completed_runs"], 2);
    assert_eq!(report["critical_path_ms"], 80.0);
    assert!(report["makespan_ms"].as_f64().unwrap() >= 80.0, "{report:#}");
    assert!(report.get("stream_plan").is_none());

    let streamed = tokio::task::spawn_blocking({
        let url = url.clone();
        move || bench(&url, &["--latency-ms", "20", "--depth", "1", "--width", "2", "--stream-plan"])
    })
    .await
    .unwrap();
    assert_eq!(streamed["stream_plan"], true);
    assert_eq!(streamed["completed_runs"], 3, "streamed on the pool and alone, unstreamed on the pool");
    assert!(streamed["makespan_without_streaming_ms"].as_f64().unwrap() >= 60.0, "{streamed:#}");
    assert!(streamed["streaming_gain_ms"].is_number(), "{streamed:#}");

    // The bound needs the server's latency, which only the user knows.
    let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["bench", "makespan", "--provider", "openai", "--model", "fake"])
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", "sk-bench-local")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--latency-ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_streamed_over_http_starts_its_first_steps_before_it_is_complete() {
    // 400 ms per answer, spread over its chunks: the first layer's steps are in the first chunks.
    let url = start(Duration::from_millis(400)).await;
    let mut settings = OpenAiSettings::new("fake");
    settings.base_url = format!("{url}/v1");
    settings.api_key = Some("sk-bench-local".into());
    let model = std::sync::Arc::new(OpenAiModel::new(settings).unwrap());
    let mut options = stepwise::options::RunOptions::default();
    options.policy.stream_plan = true;
    let rt = stepwise::Stepwise::builder().model(model).options(options).build().await.unwrap();
    let handle = rt.submit("makespan depth=2 width=2").await.unwrap();
    let result = handle.result().await.unwrap();
    assert_eq!(result.status, stepwise::run::RunStatus::Completed, "{result:#?}");
    let events: Vec<_> = {
        use futures::StreamExt;
        handle.events().map(|e| e.unwrap()).collect().await
    };
    let seq = |name: &str| events.iter().find(|e| e.kind.name() == name).map(|e| e.seq).unwrap();
    assert!(seq("PlanStreamed") < seq("PlanProposed"));
    assert!(seq("StepStarted") < seq("PlanProposed"), "{events:#?}");
    rt.shutdown().await;
}

/// `stepwise bench serve` against the in-process fake (`--model-url`): the real `serve` binary as
/// a child process, its runs over HTTP, one JSON report.
fn bench_serve(url: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let model_url = format!("{url}/v1");
    let mut args = vec!["bench", "serve", "--model-url", &model_url];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(&args)
        // The child must not see these: the scenario runs serve with its default config.
        .env("STEPWISE_RUNTIME__EXECUTOR_POOL_SIZE", "not a number")
        .current_dir(dir.path())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_runs_the_real_service_against_the_fake_server() {
    let url = start(Duration::ZERO).await;
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || bench_serve(&url, &["--runs", "3", "--latency-ms", "0"])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["scenario"], "serve");
    assert_eq!(
        (&report["provider"], &report["store"], &report["config"]),
        (&json!("openai"), &json!("sqlite"), &json!("default"))
    );
    assert_eq!(report["model_server"], format!("{url}/v1"));
    assert_eq!(report["runs"], 3);
    assert_eq!(report["steps_per_run"], 2, "a 2-step plan by default");
    assert_eq!(report["statuses"], json!({"completed": 3}));
    assert_eq!(report["steps"], 6);
    // A plan, a call per step and a synthesis per run.
    assert!(report["llm_calls"].as_u64().unwrap() >= 12, "{report:#}");
    assert_eq!(report["latency_ms"], 0.0);
    for key in ["wall_ms", "runs_per_s", "submit_all_ms", "peak_rss_mib"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {report:#}");
    }
    // CPU time comes in clock ticks (10 ms): three tiny runs may take less than one.
    assert!(report["serve_cpu_ms"].as_f64().is_some_and(|v| v >= 0.0), "{report:#}");
    let (before, after) =
        (report["serve_cpu_before_ms"].as_f64().unwrap(), report["serve_cpu_after_ms"].as_f64().unwrap());
    assert!(before >= 0.0 && after >= before, "{report:#}");
    assert!(report["cpu_per_step_us"].as_f64().unwrap() >= 0.0 && report["cpu_per_llm_call_us"].is_number());
    assert_eq!(report["rejected_429"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_fails_clearly_when_runs_do_not_complete() {
    // A model server that answers every call with a client error: every run fails at its plan.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async {
        (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "no such model"}})))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let out = tokio::task::spawn_blocking(move || bench_serve(&url, &["--runs", "2"])).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 of 2 runs completed") && stderr.contains("failed"), "{stderr}");
    assert!(stderr.contains("no such model"), "the first run's error is shown: {stderr}");
}
