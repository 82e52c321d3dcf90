//! MCP client tools against real MCP servers nobody here wrote: the reference npm servers
//! (`@modelcontextprotocol/server-everything`, `@modelcontextprotocol/server-filesystem`) over
//! stdio, and a small server on the Python `mcp` package over streamable HTTP
//! (`tests/mcp/http_server.py`), which a test can kill and start again. All are installed by
//! `scripts/deps/mcp.sh`; a test fails, naming that script, when they are missing.

#[path = "mcp/support.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use stepwise::llm::scripted::ScriptedModel;
use stepwise::options::{FailurePolicy, RunOptions};
use stepwise::run::{EventKind, RunEvent, RunResult, RunStatus};
use stepwise::tools::mcp::{McpConfig, McpError, McpServerConfig, McpServers};
use stepwise::tools::{ToolContext, ToolError, ToolRegistry, ToolSource, typed_tool};
use stepwise::{Runtime, Stepwise};

fn step(id: &str, tool: &str, deps: &[&str]) -> Value {
    json!({"id": id, "description": format!("do {id}"), "expected_outcome": "", "tool": tool, "depends_on": deps})
}

fn calls(calls: Value) -> Value {
    json!({"tool_calls": calls})
}

async fn start(servers: Vec<McpServerConfig>) -> McpServers {
    McpServers::start(&McpConfig { servers }).await.expect("the MCP servers start")
}

fn registry(servers: &McpServers) -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    servers.register(&mut tools);
    tools
}

/// A runtime on the scripted model with the servers' tools (plus `extra`), runs that abort on
/// the first failed step.
async fn runtime(script: Value, servers: &McpServers, extra: ToolRegistry) -> (Runtime, std::path::PathBuf) {
    let mut tools = extra;
    servers.register(&mut tools);
    let mut options = RunOptions::default();
    options.policy.on_step_failure = FailurePolicy::Abort;
    options.policy.max_retries = 0;
    let root = tempfile::tempdir().unwrap().keep();
    let rt = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).expect("script")))
        .tools(tools)
        .options(options)
        .workspace_root(&root)
        .build()
        .await
        .expect("runtime");
    (rt, root)
}

async fn run_collecting(rt: &Runtime, options: Option<RunOptions>) -> (RunResult, Vec<RunEvent>) {
    let handle = match options {
        Some(o) => rt.submit_with("task", o).await.unwrap(),
        None => rt.submit("task").await.unwrap(),
    };
    let events: Vec<RunEvent> = handle.events().map(|e| e.unwrap()).collect().await;
    (handle.result().await.unwrap(), events)
}

/// `(tool, ok, output, seconds between call and return)` of every tool call, in order.
fn tool_results(events: &[RunEvent]) -> Vec<(String, bool, String, f64)> {
    let mut called = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::ToolCalled { call_id, tool, .. } => {
                called.insert(call_id.clone(), (tool.clone(), e.at));
            }
            EventKind::ToolReturned { call_id, ok, output, .. } => {
                let (tool, at) = called[call_id].clone();
                out.push((tool, *ok, output.clone(), (e.at - at).num_milliseconds() as f64 / 1000.0));
            }
            _ => {}
        }
    }
    out
}

fn ctx() -> ToolContext {
    ToolContext::standalone(std::env::temp_dir())
}

#[tokio::test]
async fn a_run_writes_a_file_through_the_filesystem_server_reads_it_back_and_echoes_through_everything() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let file = root_path.join("note.txt");
    let servers = start(vec![support::filesystem("fs", &root_path), support::everything("everything")]).await;
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [
            step("write", "fs__write_file", &[]),
            step("read", "fs__read_text_file", &["write"]),
            step("echo", "everything__echo", &[]),
        ]}}],
        "steps": {
            "write": [calls(json!([{"name": "fs__write_file", "arguments": {"path": file, "content": "hello from the write step"}}])), "written"],
            "read": [calls(json!([{"name": "fs__read_text_file", "arguments": {"path": file}}])), "read back"],
            "echo": [calls(json!([{"name": "everything__echo", "arguments": {"message": "ping"}}])), "echoed"],
        },
        "synthesizer": ["done"]
    });
    let (rt, _) = runtime(script, &servers, ToolRegistry::new()).await;
    let (result, events) = run_collecting(&rt, None).await;
    assert_eq!(result.status, RunStatus::Completed, "{result:#?}");
    let results = tool_results(&events);
    let by_tool = |name: &str| {
        results.iter().find(|r| r.0 == name).unwrap_or_else(|| panic!("no call of {name}: {results:?}"))
    };
    assert!(by_tool("fs__write_file").1, "{results:?}");
    let read = by_tool("fs__read_text_file");
    assert!(read.1 && read.2.contains("hello from the write step"), "{read:?}");
    let echo = by_tool("everything__echo");
    assert!(echo.1 && echo.2.contains("ping"), "{echo:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello from the write step");
    // The filesystem server refuses what is outside its root, and the model sees why.
    let outside = registry(&servers)
        .lookup("fs__read_text_file")
        .unwrap()
        .call(json!({"path": "/etc/hostname"}), &ctx())
        .await;
    assert!(
        matches!(&outside, Err(ToolError::Failed(m)) if m.contains("denied") || m.contains("outside")),
        "{outside:?}"
    );
    servers.stop();
}

#[tokio::test]
async fn tools_carry_the_servers_descriptions_schemas_and_annotations() {
    let http = support::HttpServer::start(false);
    let servers =
        start(vec![McpServerConfig::http("py", &http.url()), support::everything("everything")]).await;
    let tools = registry(&servers);
    let echo = tools.lookup("py__echo").unwrap();
    assert_eq!(echo.description(), "Returns the text it is given.");
    assert_eq!(echo.parameters()["type"], "object");
    assert_eq!(echo.parameters()["required"], json!(["text"]));
    assert_eq!(echo.hints().read_only, Some(true));
    assert_eq!(echo.hints().idempotent, Some(true));
    assert!(echo.idempotent(), "an idempotent-hinted tool reports itself idempotent");
    let fail = tools.lookup("py__fail").unwrap();
    assert!(!fail.idempotent());
    assert_eq!(fail.hints(), Default::default());
    assert!(tools.names().iter().any(|n| n == "everything__get-sum"), "{:?}", tools.names());
    // Allow and deny lists.
    let mut narrow = McpServerConfig::http("py2", &http.url());
    narrow.allow = vec!["echo".into(), "fail".into()];
    narrow.deny = vec!["fail".into()];
    let narrowed = start(vec![narrow]).await;
    assert_eq!(registry(&narrowed).names(), ["py2__echo"]);
    servers.stop();
    narrowed.stop();
}

#[tokio::test]
async fn results_become_observations_and_error_results_fail_the_call() {
    let http = support::HttpServer::start(false);
    let servers =
        start(vec![McpServerConfig::http("py", &http.url()), support::everything("everything")]).await;
    let tools = registry(&servers);
    let ok = tools.lookup("py__echo").unwrap().call(json!({"text": "hi"}), &ctx()).await;
    assert_eq!(ok, Ok("echo: hi".to_owned()));
    let failed = tools.lookup("py__fail").unwrap().call(json!({"reason": "because"}), &ctx()).await;
    assert!(
        matches!(&failed, Err(ToolError::Failed(m)) if m.contains("failing on purpose: because")),
        "{failed:?}"
    );
    // An image comes back summarised by type and size, never as base64.
    let image = tools.lookup("everything__get-tiny-image").unwrap().call(json!({}), &ctx()).await.unwrap();
    assert!(image.contains("[image: image/png, ") && image.contains(" bytes]"), "{image}");
    assert!(!image.contains("iVBOR"), "base64 in the observation: {image}");
    // Arguments that are not an object are refused before reaching the server.
    let bad = tools.lookup("py__echo").unwrap().call(json!([1]), &ctx()).await;
    assert!(matches!(&bad, Err(ToolError::InvalidArguments(m)) if m.contains("py")), "{bad:?}");
    servers.stop();
}

#[tokio::test]
async fn a_changed_tool_list_is_picked_up() {
    let http = support::HttpServer::start(false);
    let servers = start(vec![McpServerConfig::http("py", &http.url())]).await;
    let tools = registry(&servers);
    assert!(tools.get("py__late").is_none());
    assert_eq!(tools.lookup("py__add_tool").unwrap().call(json!({}), &ctx()).await, Ok("added".to_owned()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let late = loop {
        if let Some(t) = tools.get("py__late") {
            break t;
        }
        assert!(Instant::now() < deadline, "py__late never appeared: {:?}", tools.names());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(late.call(json!({}), &ctx()).await, Ok("late tool called".to_owned()));
    servers.stop();
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NoArgs {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_http_server_fails_calls_clearly_and_is_reconnected_when_back() {
    let http = Arc::new(Mutex::new(support::HttpServer::start(false)));
    let url = http.lock().unwrap().url();
    let mut cfg = McpServerConfig::http("py", &url);
    cfg.call_timeout_secs = 30;
    let servers = start(vec![cfg]).await;
    let mut extra = ToolRegistry::new();
    let (h1, h2) = (http.clone(), http.clone());
    extra.register(typed_tool("kill_server", "Kills the HTTP MCP server", move |_: NoArgs, _ctx| {
        let h = h1.clone();
        async move {
            tokio::task::spawn_blocking(move || h.lock().unwrap().kill()).await.unwrap();
            Ok("killed".to_owned())
        }
    }));
    extra.register(typed_tool(
        "restart_server",
        "Starts the HTTP MCP server again",
        move |_: NoArgs, _ctx| {
            let h = h2.clone();
            async move {
                tokio::task::spawn_blocking(move || h.lock().unwrap().restart()).await.unwrap();
                Ok("restarted".to_owned())
            }
        },
    ));
    let echo = |text: &str| json!({"name": "py__echo", "arguments": {"text": text}});
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [
            step("before", "py__echo", &[]),
            step("down", "py__echo", &["before"]),
            step("after", "py__echo", &["down"]),
        ]}}],
        "steps": {
            "before": [calls(json!([echo("one")])), "ok"],
            "down": [calls(json!([{"name": "kill_server", "arguments": {}}, echo("two")])), "saw it fail"],
            "after": [calls(json!([{"name": "restart_server", "arguments": {}}, echo("three")])), "ok again"],
        },
        "synthesizer": ["done"]
    });
    let (rt, _) = runtime(script, &servers, extra).await;
    let (result, events) = run_collecting(&rt, None).await;
    assert_eq!(result.status, RunStatus::Completed, "{result:#?}");
    let echoes: Vec<_> = tool_results(&events).into_iter().filter(|r| r.0 == "py__echo").collect();
    assert_eq!(echoes.len(), 3, "{echoes:?}");
    assert!(echoes[0].1 && echoes[0].2 == "echo: one", "{echoes:?}");
    let down = &echoes[1];
    assert!(!down.1 && down.2.contains("MCP server \"py\""), "a clear error naming the server: {down:?}");
    assert!(down.3 < 15.0, "the call while the server was down took {}s: it must fail, not hang", down.3);
    assert!(echoes[2].1 && echoes[2].2 == "echo: three", "the call after the restart: {echoes:?}");
    assert!(servers.servers()[0].status().ready);
    servers.stop();
}

#[tokio::test]
async fn a_required_server_that_never_starts_is_an_error_naming_it() {
    let missing = McpServerConfig::stdio("ghost", "/nonexistent/mcp-server", &[]);
    let err = McpServers::start(&McpConfig { servers: vec![missing] }).await.unwrap_err();
    assert!(matches!(&err, McpError::Spawn { server, .. } if server == "ghost"), "{err:?}");
    assert!(err.to_string().contains("\"ghost\""), "{err}");
    // A URL where nothing listens, and a process that exits at once.
    let mut refused =
        McpServerConfig::http("nowhere", &format!("http://127.0.0.1:{}/mcp", support::free_port()));
    refused.connect_timeout_secs = 3;
    let err = McpServers::start(&McpConfig { servers: vec![refused] }).await.unwrap_err();
    assert!(err.to_string().contains("\"nowhere\""), "{err}");
    let exits = McpServerConfig::stdio("quitter", "true", &[]);
    let started = Instant::now();
    let err = McpServers::start(&McpConfig { servers: vec![exits] }).await.unwrap_err();
    assert!(err.to_string().contains("\"quitter\""), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "a server that exits is not waited on");
    // The config is checked first, naming the key.
    let err = McpServers::start(&McpConfig { servers: vec![McpServerConfig::stdio("bad_name", "x", &[])] })
        .await
        .unwrap_err();
    assert!(matches!(&err, McpError::Config { key: "name", .. }), "{err:?}");
}

#[tokio::test]
async fn an_optional_server_that_never_starts_is_left_out_and_runs_go_on() {
    let mut ghost = McpServerConfig::stdio("ghost", "/nonexistent/mcp-server", &[]);
    ghost.optional = true;
    let servers = start(vec![ghost, support::everything("everything")]).await;
    let status = servers.servers()[0].status();
    assert!(!status.ready && status.optional, "{status:?}");
    assert!(status.error.as_deref().unwrap_or_default().contains("ghost"), "{status:?}");
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [step("s1", "everything__echo", &[])]}}],
        "steps": {"s1": [calls(json!([{"name": "everything__echo", "arguments": {"message": "still here"}}])), "ok"]},
        "synthesizer": ["done"]
    });
    let (rt, _) = runtime(script, &servers, ToolRegistry::new()).await;
    let states: Vec<(String, bool)> = rt.tool_sources().into_iter().map(|s| (s.name, s.ready)).collect();
    assert_eq!(states, [("ghost".to_owned(), false), ("everything".to_owned(), true)]);
    let (result, events) = run_collecting(&rt, None).await;
    assert_eq!(result.status, RunStatus::Completed, "{result:#?}");
    assert!(tool_results(&events)[0].2.contains("still here"));
    servers.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_during_a_long_mcp_call_ends_it_promptly() {
    let servers = start(vec![support::everything("everything")]).await;
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [step("long", "everything__trigger-long-running-operation", &[])]}}],
        "steps": {"long": [calls(json!([{"name": "everything__trigger-long-running-operation",
                                          "arguments": {"duration": 60, "steps": 60}}])), "never"]},
        "synthesizer": ["done"]
    });
    let (rt, _) = runtime(script, &servers, ToolRegistry::new()).await;
    let handle = rt.submit("task").await.unwrap();
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        if matches!(e.unwrap().kind, EventKind::ToolCalled { .. }) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = Instant::now();
    handle.cancel("enough").await.unwrap();
    let result =
        tokio::time::timeout(Duration::from_secs(10), handle.result()).await.expect("no hang").unwrap();
    assert_eq!(result.status, RunStatus::Cancelled);
    assert!(cancelled_at.elapsed() < Duration::from_secs(3), "took {:?}", cancelled_at.elapsed());
    // The server is still usable.
    let echo =
        registry(&servers).lookup("everything__echo").unwrap().call(json!({"message": "x"}), &ctx()).await;
    assert!(echo.is_ok(), "{echo:?}");
    servers.stop();
}

async fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s;
        }
        assert!(Instant::now() < deadline, "{} never appeared: the server was not told", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_cancelled_or_timed_out_call_sends_the_protocols_cancellation() {
    let http = support::HttpServer::start(false);
    let mut cfg = McpServerConfig::http("py", &http.url());
    cfg.call_timeout_secs = 1;
    let servers = start(vec![cfg]).await;
    let slow = registry(&servers).lookup("py__slow").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cancelled by the step's token.
    let marker = dir.path().join("cancelled");
    let c = ctx();
    let token = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel();
    });
    let started = Instant::now();
    let r = slow.call(json!({"seconds": 30, "marker": marker}), &c).await;
    assert_eq!(r, Err(ToolError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(wait_for_file(&marker).await, "cancelled");
    // Past the call timeout.
    let marker = dir.path().join("timed-out");
    let r = slow.call(json!({"seconds": 30, "marker": marker}), &ctx()).await;
    assert_eq!(r, Err(ToolError::Timeout(Duration::from_secs(1))));
    assert_eq!(wait_for_file(&marker).await, "cancelled");
    servers.stop();
}

#[tokio::test]
async fn bad_schemas_clashing_names_and_huge_results_are_contained() {
    let http = support::HttpServer::start(true);
    let servers = start(vec![McpServerConfig::http("py", &http.url())]).await;
    let tools = registry(&servers);
    let status = servers.servers()[0].status();
    assert!(status.ready, "{status:?}");
    let problems = status.problems.join("\n");
    assert!(problems.contains("tool \"bad_schema\" not offered: invalid input schema"), "{problems}");
    assert!(
        problems
            .contains("tool \"clash_a\" not offered: its name \"py__clash_a\" clashes with tool \"clash.a\""),
        "{problems}"
    );
    assert!(tools.get("py__bad_schema").is_none());
    assert_eq!(tools.lookup("py__clash_a").unwrap().call(json!({}), &ctx()).await, Ok("clash".to_owned()));
    // 50 MB: a clipped observation.
    let big = tools.lookup("py__big").unwrap().call(json!({"megabytes": 50}), &ctx()).await.unwrap();
    assert!(big.len() <= 300 * 1024 && big.starts_with("xxxx"), "{} bytes", big.len());
    // Over the configured response limit: a clear error, and the server still answers after.
    let mut small = McpServerConfig::http("small", &http.url());
    small.max_response_bytes = 1024 * 1024;
    let limited = start(vec![small]).await;
    let tools = registry(&limited);
    let r = tools.lookup("small__big").unwrap().call(json!({"megabytes": 50}), &ctx()).await;
    assert!(matches!(&r, Err(ToolError::Failed(m)) if m.contains("MCP server \"small\"")), "{r:?}");
    let echo = tools.lookup("small__echo").unwrap().call(json!({"text": "after"}), &ctx()).await;
    assert_eq!(echo, Ok("echo: after".to_owned()));
    servers.stop();
    limited.stop();
}

#[tokio::test]
async fn a_50_mb_result_over_stdio_is_clipped_too() {
    // server-everything has no such tool; the filesystem server reads a 50 MB file.
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let file = root_path.join("big.txt");
    std::fs::write(&file, "y".repeat(50 * 1024 * 1024)).unwrap();
    let servers = start(vec![support::filesystem("fs", &root_path)]).await;
    let r =
        registry(&servers).lookup("fs__read_text_file").unwrap().call(json!({"path": file}), &ctx()).await;
    let text = r.unwrap();
    assert!(text.len() <= 300 * 1024 && text.starts_with("yyyy"), "{} bytes", text.len());
    servers.stop();
}

#[tokio::test]
async fn a_run_may_be_narrowed_to_some_servers() {
    let root = tempfile::tempdir().unwrap();
    let servers =
        start(vec![support::filesystem("fs", root.path()), support::everything("everything")]).await;
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [step("s1", "", &[])]}}],
        "steps": {"s1": [calls(json!([
            {"name": "fs__list_allowed_directories", "arguments": {}},
            {"name": "everything__echo", "arguments": {"message": "allowed"}},
        ])), "ok"]},
        "synthesizer": ["done"]
    });
    let (rt, _) = runtime(script, &servers, ToolRegistry::new()).await;
    let mut options = rt.options().clone();
    options.mcp_servers = Some(vec!["everything".into()]);
    let (result, events) = run_collecting(&rt, Some(options.clone())).await;
    assert_eq!(result.status, RunStatus::Completed, "{result:#?}");
    let results = tool_results(&events);
    assert!(
        !results[0].1 && results[0].2.contains("MCP server \"fs\", which this run may not use"),
        "{results:?}"
    );
    assert!(results[1].1 && results[1].2.contains("allowed"), "{results:?}");
    // An unknown server is refused at submit, naming it.
    options.mcp_servers = Some(vec!["nope".into()]);
    let err = rt.submit_with("task", options).await.err().expect("refused");
    assert!(err.to_string().contains("\"nope\"") && err.to_string().contains("everything"), "{err}");
    servers.stop();
}

#[tokio::test]
async fn stdio_servers_do_not_inherit_the_runtimes_secrets() {
    // cargo sets CARGO_PKG_NAME for the test process: a variable of the runtime that is not in
    // the safe set, standing in for an API key.
    assert_eq!(std::env::var("CARGO_PKG_NAME").as_deref(), Ok("stepwise"));
    let mut cfg = support::everything("everything");
    cfg.env.insert("GIVEN_ON_PURPOSE".into(), "visible".into());
    cfg.pass_env = vec!["CARGO_PKG_VERSION".into()];
    let servers = start(vec![cfg]).await;
    let env =
        registry(&servers).lookup("everything__get-env").unwrap().call(json!({}), &ctx()).await.unwrap();
    assert!(env.contains("GIVEN_ON_PURPOSE") && env.contains("PATH"), "{env}");
    assert!(env.contains("CARGO_PKG_VERSION"), "pass_env passes it on: {env}");
    assert!(!env.contains("CARGO_PKG_NAME"), "{env}");
    servers.stop();
}

#[tokio::test]
async fn round_trip_cost_of_an_mcp_call_over_stdio() {
    let servers = start(vec![support::everything("everything")]).await;
    let echo = registry(&servers).lookup("everything__echo").unwrap();
    let c = ctx();
    for _ in 0..20 {
        echo.call(json!({"message": "warm"}), &c).await.unwrap();
    }
    let n = 500;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        echo.call(json!({"message": "ping"}), &c).await.unwrap();
        samples.push(t.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() / n as u64;
    // Printed for the record (cargo test -- --nocapture); not a timed assertion.
    println!(
        "MCP tools/call round trip over stdio (server-everything echo, {n} calls): mean {mean} µs, p50 {} µs, p99 {} µs",
        samples[n / 2],
        samples[n * 99 / 100]
    );
    assert!(samples[0] > 0);
    servers.stop();
}

mod spans {
    //! The MCP client span, asserted on the OpenTelemetry SDK's in-memory exporter (a
    //! thread-local subscriber and a current-thread runtime, as in tests/trace_tree.rs).

    use opentelemetry::trace::{Status, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn attr(s: &SpanData, key: &str) -> Option<String> {
        s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    }

    #[tokio::test]
    async fn each_call_is_a_client_span_under_its_execute_tool_span() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(stepwise::telemetry::otel_filter());
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

        let http = support::HttpServer::start(false);
        let servers = start(vec![McpServerConfig::http("py", &http.url())]).await;
        let script = json!({
            "planner": [{"json": {"goal": "g", "steps": [step("s1", "py__echo", &[])]}}],
            "steps": {"s1": [calls(json!([
                {"name": "py__echo", "arguments": {"text": "traced"}},
                {"name": "py__fail", "arguments": {"reason": "traced"}},
            ])), "ok"]},
            "synthesizer": ["done"]
        });
        let (rt, _) = runtime(script, &servers, ToolRegistry::new()).await;
        let (result, _) = run_collecting(&rt, None).await;
        assert_eq!(result.status, RunStatus::Completed, "{result:#?}");
        servers.stop();
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let names: Vec<String> = spans.iter().map(|s| s.name.to_string()).collect();
        for (tool, failed) in [("echo", false), ("fail", true)] {
            let mcp = spans
                .iter()
                .find(|s| s.name == format!("tools/call {tool}"))
                .unwrap_or_else(|| panic!("no MCP span for {tool}: {names:?}"));
            let parent = spans
                .iter()
                .find(|s| s.span_context.span_id() == mcp.parent_span_id)
                .unwrap_or_else(|| panic!("the MCP span of {tool} has no exported parent"));
            assert_eq!(parent.name, format!("execute_tool py__{tool}"));
            assert_eq!(mcp.span_kind, opentelemetry::trace::SpanKind::Client);
            assert_eq!(attr(mcp, "mcp.method.name").as_deref(), Some("tools/call"));
            assert_eq!(attr(mcp, "mcp.server.name").as_deref(), Some("py"));
            assert_eq!(attr(mcp, "gen_ai.tool.name").as_deref(), Some(tool));
            assert_eq!(attr(mcp, "network.transport").as_deref(), Some("tcp"));
            let session =
                attr(mcp, "mcp.session.id").unwrap_or_else(|| panic!("no mcp.session.id on {tool}"));
            assert!(!session.is_empty());
            assert!(attr(mcp, "jsonrpc.request.id").is_some());
            assert_eq!(matches!(mcp.status, Status::Error { .. }), failed, "{:?}", mcp.status);
            if failed {
                assert_eq!(attr(mcp, "error.type").as_deref(), Some("tool_error"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_lists_mcp_tools_reports_servers_in_readyz_and_narrows_runs() {
    let mut http = support::HttpServer::start(false);
    let mut cfg = McpServerConfig::http("py", &http.url());
    cfg.call_timeout_secs = 5;
    let servers = start(vec![cfg]).await;
    let script = json!({"planner": [{"json": {"goal": "g", "steps": []}}], "synthesizer": ["done"]});
    let (rt, _) = runtime(script, &servers, ToolRegistry::new()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = stepwise::server::ServerState::new(Arc::new(rt));
    tokio::spawn(stepwise::server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();

    let tools: Value = client.get(format!("{base}/v1/tools")).send().await.unwrap().json().await.unwrap();
    let echo =
        tools["tools"].as_array().unwrap().iter().find(|t| t["name"] == "py__echo").expect("py__echo listed");
    assert_eq!(echo["mcp_server"], "py");
    assert_eq!(echo["idempotent"], true);
    assert_eq!(echo["hints"], json!({"read_only": true, "idempotent": true}));

    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["mcp_servers"][0]["name"], "py");
    assert_eq!(body["mcp_servers"][0]["state"], "ready");

    // Unknown servers in the submit body are refused, naming them.
    let r = client
        .post(format!("{base}/v1/runs"))
        .json(&json!({"task": "t", "mcp_servers": ["nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.contains("unknown MCP server") && text.contains("nope"), "{text}");
    let r = client
        .post(format!("{base}/v1/runs"))
        .json(&json!({"task": "t", "mcp_servers": ["py"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // A required server that is down makes the service unready, saying which.
    http.kill();
    let tool = registry(&servers).lookup("py__echo").unwrap();
    let r = tool.call(json!({"text": "x"}), &ctx()).await;
    assert!(r.is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let text = r.text().await.unwrap();
            assert!(text.contains("py") && text.contains("reconnecting"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed ready with its MCP server down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    servers.stop();
}
