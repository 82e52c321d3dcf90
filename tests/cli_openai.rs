//! The real `stepwise` binary against a local server that speaks the OpenAI Chat Completions wire
//! format: plan via `json_schema`, a tool-call loop per step, synthesis in plain text.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    bodies: Vec<Value>,
    auth: Vec<Option<String>>,
}

fn completion(message: Value) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
}

async fn chat(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    {
        let mut s = seen.lock().unwrap();
        s.bodies.push(body.clone());
        s.auth.push(headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned));
    }
    let schema = body.pointer("/response_format/json_schema/name").and_then(Value::as_str);
    let has_tools = body.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let tool_results = messages.iter().filter(|m| m["role"] == "tool").count();
    let reply = match schema {
        Some("plan") => {
            let plan = json!({"goal": "look around", "steps": [
                {"id": "s1", "description": "list the workspace", "expected_outcome": "a listing", "tool": "list_dir", "depends_on": []},
                {"id": "s2", "description": "write a note", "expected_outcome": "note.txt", "tool": "write_file", "depends_on": []},
                {"id": "s3", "description": "summarise", "expected_outcome": "a summary", "tool": null, "depends_on": ["s1", "s2"]}
            ]});
            json!({"role": "assistant", "content": plan.to_string()})
        }
        Some(other) => json!({"role": "assistant", "content": format!("unexpected schema {other}")}),
        None if has_tools && tool_results == 0 => {
            let user = messages
                .iter()
                .find(|m| m["role"] == "user")
                .map(|m| m["content"].to_string())
                .unwrap_or_default();
            let call = if user.contains("write a note") {
                json!({"id": "call_w", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"note.txt\",\"content\":\"hello\"}"}})
            } else {
                json!({"id": "call_l", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}})
            };
            json!({"role": "assistant", "content": null, "tool_calls": [call]})
        }
        None if has_tools => json!({"role": "assistant", "content": "step done"}),
        None => json!({"role": "assistant", "content": "the final answer"}),
    };
    Json(completion(reply))
}

async fn start() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new().route("/v1/chat/completions", post(chat)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_step_run_against_an_openai_compatible_server() {
    let (addr, seen) = start().await;
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_stepwise");
    let out = tokio::task::spawn_blocking({
        let data = data.path().to_owned();
        move || {
            Command::new(bin)
                .args([
                    "run",
                    "look around the workspace",
                    "--provider",
                    "openai",
                    "--model",
                    "fake-model",
                    "--json",
                ])
                .env("OPENAI_BASE_URL", format!("http://{addr}/v1"))
                .env("OPENAI_API_KEY", "x")
                .env("STEPWISE_RUNTIME__DATA_DIR", &data)
                .current_dir(&data)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstderr:\n{stderr}", out.status);
    let result: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(result["status"], "completed", "{result:#}");
    let steps = result["plan"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert!(steps.iter().all(|s| s["status"] == "completed"), "{steps:#?}");
    assert_eq!(result["final_output"], "the final answer");
    // 1 plan + 2 calls per step (tool call, then answer) + 1 synthesis.
    assert_eq!(result["usage"]["llm_calls"], 8);
    assert_eq!(result["usage"]["input_tokens"], 80);
    assert_eq!(result["usage"]["output_tokens"], 40);
    assert_eq!(result["usage"]["tool_calls"], 3);
    // The write_file tool really wrote into the run's workspace.
    let note = data.path().join("workspaces").join(result["id"].as_str().unwrap()).join("note.txt");
    assert_eq!(std::fs::read_to_string(note).unwrap(), "hello");

    let seen = seen.lock().unwrap();
    assert!(seen.auth.iter().all(|a| a.as_deref() == Some("Bearer x")));
    let plan_req =
        seen.bodies.iter().find(|b| b.pointer("/response_format/json_schema/name").is_some()).unwrap();
    assert_eq!(plan_req["response_format"]["type"], "json_schema");
    assert_eq!(plan_req["model"], "fake-model");
    // Assistant turns that carry tool calls send "content": "" (never null) on the way back.
    let follow_up = seen
        .bodies
        .iter()
        .find(|b| b["messages"].as_array().unwrap().iter().any(|m| m["role"] == "tool"))
        .expect("a request carrying a tool result");
    let assistant =
        follow_up["messages"].as_array().unwrap().iter().find(|m| m["role"] == "assistant").unwrap();
    assert_eq!(assistant["content"], "");
    assert!(!stderr.contains("Bearer x"), "the key must not be logged");
}

fn run_cli(args: &[&str], envs: &[(&str, String)], dir: &std::path::Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    cmd.args(args).env("STEPWISE_RUNTIME__DATA_DIR", dir).current_dir(dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replays_offline_and_a_gap_in_the_recording_fails_loudly() {
    let (addr, _seen) = start().await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let record = dir.join("recording.json");
    let rec = record.to_str().unwrap().to_owned();
    let recorded = tokio::task::spawn_blocking({
        let (dir, rec) = (dir.clone(), rec.clone());
        move || {
            run_cli(
                &[
                    "run",
                    "look around",
                    "--provider",
                    "openai",
                    "--model",
                    "fake-model",
                    "--json",
                    "--record",
                    &rec,
                ],
                &[("OPENAI_BASE_URL", format!("http://{addr}/v1")), ("OPENAI_API_KEY", "x".into())],
                &dir,
            )
        }
    })
    .await
    .unwrap();
    assert!(recorded.status.success(), "{}", String::from_utf8_lossy(&recorded.stderr));
    let live: Value = serde_json::from_slice(&recorded.stdout).unwrap();

    // Replay: no server, no key; the scripted provider answers from the recording.
    let replayed = run_cli(&["run", "look around", "--script", &rec, "--json"], &[], &dir);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let replay: Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(replay["final_output"], live["final_output"]);
    assert_eq!(replay["usage"], live["usage"]);
    let outputs = |r: &Value| {
        r["plan"]["steps"].as_array().unwrap().iter().map(|s| s["output"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(outputs(&replay), outputs(&live));

    // A recording missing what the run asks for fails the run and names what was missing.
    let mut script: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    script["steps"].as_object_mut().unwrap().remove("s3");
    let broken = dir.join("broken.json");
    std::fs::write(&broken, script.to_string()).unwrap();
    let failed = run_cli(&["run", "look around", "--script", broken.to_str().unwrap(), "--json"], &[], &dir);
    assert!(!failed.status.success());
    let r: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(r["status"], "failed");
    let s3 = r["plan"]["steps"].as_array().unwrap().iter().find(|s| s["id"] == "s3").unwrap();
    let err = s3["error"].as_str().unwrap_or_default().to_owned() + r["error"].as_str().unwrap_or_default();
    assert!(err.contains("s3"), "the error names the missing step: {r:#}");
}
