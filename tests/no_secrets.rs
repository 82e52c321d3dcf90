//! Credentials never reach telemetry: a whole run through the OpenAI provider (against a fake
//! Chat Completions server on 127.0.0.1) with content recording on and every log level captured;
//! no exported span (name, attribute, event, link, status) and no log line contains the API key.
//! Also: content is recorded only when asked, and truncated.

mod support_llm;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use stepwise::llm::openai::{OpenAiModel, OpenAiSettings};
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::RunStatus;
use stepwise::telemetry::ContentCapture;
use stepwise::tools::typed_tool;
use stepwise::{RuntimeBuilder, Stepwise};
use support_llm::{FakeServer, Reply};
use tracing_subscriber::layer::SubscriberExt as _;

const KEY: &str = "sk-test-SECRET-5f3c2a9e71d04b8c";

/// A log sink the fmt layer writes into.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every string a span exports: name, attributes, events, links, status.
fn exported_text(spans: &[SpanData]) -> String {
    let mut text = String::new();
    for s in spans {
        text.push_str(&format!("{}\n", s.name));
        for kv in &s.attributes {
            text.push_str(&format!("{}={}\n", kv.key, kv.value));
        }
        for e in s.events.iter() {
            text.push_str(&format!("{} {:?}\n", e.name, e.attributes));
        }
        for l in s.links.iter() {
            text.push_str(&format!("{:?}\n", l.attributes));
        }
        text.push_str(&format!("{:?}\n", s.status));
    }
    text
}

fn attr(s: &SpanData, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

fn completion(message: Value) -> Value {
    json!({"id": "c", "object": "chat.completion", "model": "gpt-test",
           "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
}

/// Answers like a model would, by looking at the request: a plan, a tool call, then text. The
/// first request gets a 500 so the retry path (which logs) runs too.
fn fake_model(index: usize, body: &Value) -> Reply {
    if index == 0 {
        return Reply::status(500, json!({"error": {"message": "overloaded"}}));
    }
    let schema = body.pointer("/response_format/json_schema/name").and_then(Value::as_str);
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let after_tool = messages.last().is_some_and(|m| m["role"] == "tool");
    if schema == Some("plan") {
        let plan = json!({"goal": "g", "steps": [
            {"id": "s1", "description": "echo hello", "expected_outcome": "", "tool": "echo", "depends_on": []}]});
        Reply::ok(completion(json!({"role": "assistant", "content": plan.to_string()})))
    } else if body.get("tools").is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty())) && !after_tool {
        Reply::ok(completion(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": "{\"text\":\"hello\"}"}}]})))
    } else {
        Reply::ok(completion(json!({"role": "assistant", "content": "all done"})))
    }
}

fn echo_tool(b: RuntimeBuilder) -> RuntimeBuilder {
    b.tool(typed_tool("echo", "Echoes text", |a: EchoArgs, _ctx| async move { Ok(a.text) }))
        .workspace_root(tempfile::tempdir().unwrap().keep())
}

#[tokio::test(flavor = "current_thread")]
async fn the_api_key_is_in_no_span_and_no_log_line() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let logs = Logs::default();
    let sink = logs.clone();
    // Every level of every crate (reqwest, hyper, stepwise…) into the sink, beside the OTel layer.
    let fmt = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || sink.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("trace"))
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let server = FakeServer::start(fake_model).await;
    let mut settings = OpenAiSettings::new("gpt-test");
    settings.base_url = format!("{}/v1", server.url);
    settings.api_key = Some(KEY.into());
    settings.timeout = Duration::from_secs(10);
    settings.backoff_base = Duration::from_millis(1);
    let runtime = echo_tool(Stepwise::builder())
        .model(Arc::new(OpenAiModel::new(settings).unwrap()))
        .record_content(ContentCapture::up_to(100_000))
        .build()
        .await
        .unwrap();
    let result = runtime.run("say hello through the echo tool").await.unwrap();
    assert_eq!(result.status, RunStatus::Completed, "{result:?}");
    runtime.shutdown().await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // The key was really sent (so its absence below means something)...
    assert!(server.received().iter().all(|r| r.headers["authorization"] == format!("Bearer {KEY}")));
    // ...and content really was recorded and logs really were captured.
    assert!(spans.iter().any(|s| attr(s, "gen_ai.input.messages").is_some_and(|m| m.contains("echo tool"))));
    assert!(spans.iter().any(|s| attr(s, "gen_ai.tool.call.arguments").is_some_and(|a| a.contains("hello"))));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "the retry warning should be in the captured logs");

    let secret = &KEY["sk-test-".len()..];
    let exported = exported_text(&spans);
    assert!(!exported.contains(secret), "the API key is in an exported span");
    for line in logs.lines() {
        assert!(!line.contains(secret), "the API key is in a log line: {line}");
    }
}

fn one_step_script() -> Value {
    json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "d", "expected_outcome": "", "tool": null, "depends_on": []}]}}],
        "executor": [{"tool_calls": [{"name": "echo", "arguments": {"text": "x".repeat(500)}}]}, "done"],
        "synthesizer": ["merged"]
    })
}

async fn spans_of_run(content: Option<ContentCapture>) -> Vec<SpanData> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let mut builder =
        echo_tool(Stepwise::builder()).model(Arc::new(ScriptedModel::from_json(one_step_script()).unwrap()));
    if let Some(c) = content {
        builder = builder.record_content(c);
    }
    let runtime = builder.build().await.unwrap();
    assert_eq!(runtime.run("task").await.unwrap().status, RunStatus::Completed);
    runtime.shutdown().await;
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

const CONTENT_KEYS: [&str; 4] = [
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
];

#[tokio::test(flavor = "current_thread")]
async fn content_is_off_by_default_and_truncated_when_on() {
    let spans = spans_of_run(None).await;
    assert!(!spans.is_empty());
    for s in &spans {
        for key in CONTENT_KEYS {
            assert_eq!(attr(s, key), None, "{} records {key} by default", s.name);
        }
    }

    let spans = spans_of_run(Some(ContentCapture::up_to(64))).await;
    for key in CONTENT_KEYS {
        let values: Vec<String> = spans.iter().filter_map(|s| attr(s, key)).collect();
        assert!(!values.is_empty(), "no span records {key}");
        for v in values {
            let kept = v.split("… [truncated").next().unwrap();
            assert!(kept.len() <= 64, "{key} keeps {} bytes", kept.len());
        }
    }
    let tool = spans.iter().find(|s| s.name == "execute_tool echo").unwrap();
    assert!(attr(tool, "gen_ai.tool.call.arguments").unwrap().ends_with("bytes]"), "500 x's must be cut");
}
