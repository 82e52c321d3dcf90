//! stepwise as an MCP server, driven by a real MCP client (the Python `mcp` package, installed
//! by scripts/deps/mcp.sh): `stepwise mcp` over stdio on the scripted model.

#[path = "mcp/support.rs"]
mod support;

use std::process::Command;

use serde_json::{Value, json};

/// A script (each run follows it from its start): two steps, then the answer.
fn script() -> Value {
    json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "do s1", "expected_outcome": "", "tool": null, "depends_on": []},
            {"id": "s2", "description": "do s2", "expected_outcome": "", "tool": null, "depends_on": ["s1"]},
        ]}}],
        "steps": {"s1": ["s1 output"], "s2": ["s2 output"]},
        "synthesizer": ["the final answer"]
    })
}

fn check(out: &Value) {
    let tools: Vec<&str> = out["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tools, ["approve_run", "cancel_run", "get_run", "list_runs", "reject_run", "start_run"]);
    assert_eq!(out["annotations"]["get_run"]["readOnly"], true);
    assert_eq!(out["annotations"]["cancel_run"]["destructive"], true);

    let waited = &out["waited"];
    assert_eq!(waited["is_error"], false, "{waited}");
    assert_eq!(waited["result"]["status"], "completed", "{waited}");
    assert_eq!(waited["result"]["final_output"], "the final answer", "{waited}");

    let messages: Vec<&str> =
        out["progress"].as_array().unwrap().iter().map(|p| p["message"].as_str().unwrap()).collect();
    for expected in ["planned 2 steps", "step s1 started", "step s1 completed", "step s2 completed"] {
        assert!(messages.contains(&expected), "no progress {expected:?} in {messages:?}");
    }
    let last = out["progress"].as_array().unwrap().last().unwrap();
    assert_eq!((last["progress"].as_f64(), last["total"].as_f64()), (Some(2.0), Some(2.0)), "{last}");

    assert_eq!(out["started"]["status"], "planning");
    assert_eq!(out["second"]["status"], "completed", "{}", out["second"]);
    assert_eq!(out["second"]["final_output"], "the final answer");
    assert_ne!(out["second"]["id"], waited["result"]["id"]);
    let listed = out["listed"].as_array().unwrap();
    assert!(listed.contains(&out["started"]["id"]) && listed.contains(&waited["result"]["id"]), "{listed:?}");

    assert_eq!(out["unknown"]["is_error"], true);
    assert!(out["unknown"]["text"].as_str().unwrap().contains("no-such-run"), "{}", out["unknown"]);
    assert_eq!(out["bad_policy"]["is_error"], true);
    assert!(out["bad_policy"]["text"].as_str().unwrap().contains("max_retries"), "{}", out["bad_policy"]);
}

fn run_client(args: &[&str]) -> Value {
    let output = Command::new(support::python())
        .arg(support::dir().join("client.py"))
        .args(args)
        .output()
        .expect("run tests/mcp/client.py");
    assert!(
        output.status.success(),
        "client.py failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("client.py printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

#[test]
fn an_mcp_client_lists_starts_follows_and_steers_runs_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("script.json");
    std::fs::write(&script_path, script().to_string()).unwrap();
    let data = dir.path().join("data");
    let out = run_client(&[
        "stdio",
        env!("CARGO_BIN_EXE_stepwise"),
        "mcp",
        "--provider",
        "scripted",
        "--script",
        script_path.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    check(&out);
    // The runs are in the data dir's store, as with `serve`.
    assert!(data.join("stepwise.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_does_the_same_over_streamable_http_on_serve_behind_the_tokens() {
    use std::sync::Arc;
    let rt = stepwise::Stepwise::builder()
        .model(Arc::new(stepwise::llm::scripted::ScriptedModel::from_json(script()).unwrap()))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .build()
        .await
        .unwrap();
    let state = stepwise::server::ServerState::new(Arc::new(rt)).tokens(vec!["mcp-test-token".into()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(stepwise::server::serve(listener, state, async {
        let _ = stopped.await;
    }));

    // Without the token: 401, before any MCP handling.
    let r = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let url = format!("{base}/mcp");
    let out =
        tokio::task::spawn_blocking(move || run_client(&["http", &url, "mcp-test-token"])).await.unwrap();
    check(&out);
    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(10), served)
        .await
        .expect("shuts down")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepwise_reaches_its_own_mcp_endpoint_with_a_bearer_token_from_the_environment() {
    use std::sync::Arc;
    use stepwise::tools::mcp::{McpConfig, McpError, McpServerConfig, McpServers};
    use stepwise::tools::{ToolContext, ToolRegistry};
    let rt = stepwise::Stepwise::builder()
        .model(Arc::new(stepwise::llm::scripted::ScriptedModel::from_json(script()).unwrap()))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .build()
        .await
        .unwrap();
    let state = stepwise::server::ServerState::new(Arc::new(rt)).tokens(vec!["right-token".into()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(stepwise::server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let with_token_in = |var: &str| {
        let mut cfg = McpServerConfig::http("self", &url);
        cfg.bearer_token_env = Some(var.into());
        cfg.connect_timeout_secs = 5;
        McpConfig { servers: vec![cfg] }
    };
    // SAFETY: these variables are only read by this test's own connections.
    unsafe {
        std::env::set_var("STEPWISE_TEST_RIGHT_MCP_TOKEN", "right-token");
        std::env::set_var("STEPWISE_TEST_WRONG_MCP_TOKEN", "wrong-token");
    }
    let err = McpServers::start(&with_token_in("STEPWISE_TEST_UNSET_MCP_TOKEN")).await.unwrap_err();
    assert!(
        matches!(&err, McpError::MissingToken { server, var } if server == "self" && var == "STEPWISE_TEST_UNSET_MCP_TOKEN"),
        "{err:?}"
    );
    let err = McpServers::start(&with_token_in("STEPWISE_TEST_WRONG_MCP_TOKEN")).await.unwrap_err();
    assert!(err.to_string().contains("\"self\""), "{err}");
    assert!(!err.to_string().contains("wrong-token"), "the token leaked into an error: {err}");

    let servers = McpServers::start(&with_token_in("STEPWISE_TEST_RIGHT_MCP_TOKEN")).await.unwrap();
    let mut tools = ToolRegistry::new();
    servers.register(&mut tools);
    assert!(tools.names().iter().any(|n| n == "self__start_run"), "{:?}", tools.names());
    let ctx = ToolContext::standalone(std::env::temp_dir());
    let out = tools
        .lookup("self__start_run")
        .unwrap()
        .call(json!({"task": "nested", "wait": true}), &ctx)
        .await
        .unwrap();
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["status"], "completed", "{result}");
    assert!(tools.lookup("self__get_run").unwrap().idempotent());
    servers.stop();
    let _ = stop.send(());
}
