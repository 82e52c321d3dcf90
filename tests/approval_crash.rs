//! A tool call waiting for approval survives `kill -9` of the real `stepwise serve`: after the
//! restart on the same data dir it is still pending under the same id, approving it runs the
//! tool exactly once (the tool appends a line to a file in the run's workspace), and the run
//! completes. The run's other step completed before the crash and never runs again.
//!
//! The model is a local server speaking the OpenAI Chat Completions wire format that answers
//! from the conversation alone, so it answers the same whichever `stepwise` process asks.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

mod support_serve;

fn completion(message: Value) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
}

/// The plan: steps `deploy` (one `run_command` call, then an answer) and `notes` (an answer);
/// then the synthesis.
async fn chat(Json(body): Json<Value>) -> Json<Value> {
    let schema = body.pointer("/response_format/json_schema/name").and_then(Value::as_str);
    let has_tools = body.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let tool_results = messages.iter().filter(|m| m["role"] == "tool").count();
    let user =
        messages.iter().find(|m| m["role"] == "user").map(|m| m["content"].to_string()).unwrap_or_default();
    let text = |t: &str| json!({"role": "assistant", "content": t});
    let reply = match schema {
        Some("plan") => text(&json!({"goal": "g", "steps": [
            {"id": "deploy", "description": "deploy it", "expected_outcome": "", "tool": "run_command", "depends_on": []},
            {"id": "notes", "description": "write notes", "expected_outcome": "", "tool": null, "depends_on": []}
        ]}).to_string()),
        Some(other) => text(&format!("unexpected schema {other}")),
        None if has_tools && user.contains("deploy it") && tool_results == 0 => {
            let args = json!({"program": "sh", "args": ["-c", "echo deploy >> executions.log"]}).to_string();
            let call = json!({"id": "call-deploy", "type": "function", "function": {"name": "run_command", "arguments": args}});
            json!({"role": "assistant", "content": null, "tool_calls": [call]})
        }
        None if has_tools => text("step done"),
        None => text("done"),
    };
    Json(completion(reply))
}

async fn model_server() -> SocketAddr {
    let app = axum::Router::new().route("/v1/chat/completions", post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn write_config(dir: &Path) {
    std::fs::write(dir.join("config.toml"), "[tools.run_command]\nenabled = true\nallow = [\"sh\"]\n")
        .unwrap();
}

/// Starts `stepwise serve`; returns it and its base URL.
fn start(dir: &Path, model: SocketAddr) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", "data", "--config", "config.toml"])
        .args(["--provider", "openai", "--model", "fake-model"])
        .env("OPENAI_BASE_URL", format!("http://{model}/v1"))
        .env("OPENAI_API_KEY", "x")
        .current_dir(dir)
        .env_remove("STEPWISE_API_TOKENS");
    support_serve::spawn_serve(command)
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Polls `url` until `done` holds (10 s at most).
async fn until(client: &reqwest::Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get(client, url).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{url}: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_call_survives_kill_9_and_runs_exactly_once_when_approved_after_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_config(dir);
    let model = model_server().await;
    let client = reqwest::Client::new();
    let (mut first, url) = start(dir, model);
    let submitted: Value = (client.post(format!("{url}/v1/runs")))
        .json(&json!({"task": "deploy", "policy": {"approve_tools": ["run_command"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().unwrap().to_owned();
    let run_url = format!("{url}/v1/runs/{id}");
    let listed = until(&client, &format!("{run_url}/approvals"), |v| {
        v["approvals"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let pending = listed["approvals"][0].clone();
    assert_eq!(
        (pending["step"].as_str(), pending["call_id"].as_str()),
        (Some("deploy"), Some("call-deploy"))
    );
    until(&client, &run_url, |r| r["plan"]["steps"][1]["status"] == "completed").await;

    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let log = dir.join("data/workspaces").join(&id).join("executions.log");
    assert!(!log.exists(), "nothing ran before the approval");

    let (mut second, url) = start(dir, model);
    let run_url = format!("{url}/v1/runs/{id}");
    let listed = until(&client, &format!("{run_url}/approvals"), |v| v["approvals"].is_array()).await;
    assert_eq!(listed["approvals"].as_array().unwrap().len(), 1, "{listed:#}");
    assert_eq!(listed["approvals"][0]["approval_id"], pending["approval_id"], "the same call, the same id");
    let approval_id = pending["approval_id"].as_str().unwrap();
    let answer = |url: String| client.post(url).json(&json!({"decision": "approve"})).send();
    // Right after the restart the run may still be resuming here (503): ask again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = answer(format!("{run_url}/approvals/{approval_id}")).await.unwrap();
        if r.status().is_success() {
            break;
        }
        assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.text().await);
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = until(&client, &run_url, |r| r["status"] != "running").await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "deploy\n", "the approved call ran exactly once");
    let again = answer(format!("{run_url}/approvals/{approval_id}")).await.unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::CONFLICT);

    let term = Command::new("sh").args(["-c", &format!("kill -TERM {}", second.id())]).status().unwrap();
    assert!(term.success());
    let exited = tokio::task::spawn_blocking(move || second.wait()).await.unwrap().unwrap();
    assert!(exited.success(), "{exited:?}");
}
