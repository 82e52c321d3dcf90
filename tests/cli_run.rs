//! The `stepwise` binary's `run --approve` (answered on stdin) and `runs list|show` against the
//! data dir the runs were recorded in.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn fixture(dir: &Path) {
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "say hello", "expected_outcome": "", "tool": null, "depends_on": []}
        ]}}],
        "steps": {"s1": ["hello"]},
        "synthesizer": ["the answer"]
    });
    std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
}

fn stepwise(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(args)
        .current_dir(dir)
        .env("STEPWISE_RUNTIME__DATA_DIR", dir.join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn approve_on_the_terminal_then_find_the_runs_in_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fixture(dir);

    let yes =
        stepwise(dir, &["run", "approved task", "--script", "script.json", "--approve", "--json"], "y\n");
    let stderr = String::from_utf8_lossy(&yes.stderr);
    assert!(yes.status.success(), "{stderr}");
    assert!(stderr.contains("Run this plan? [y/N]"), "{stderr}");
    let approved: Value = serde_json::from_slice(&yes.stdout).unwrap();
    assert_eq!(approved["status"], "completed");

    let no =
        stepwise(dir, &["run", "rejected task", "--script", "script.json", "--approve", "--json"], "n\n");
    assert!(!no.status.success());
    let rejected: Value = serde_json::from_slice(&no.stdout).unwrap();
    assert_eq!(rejected["status"], "cancelled");
    assert_eq!(rejected["error"], "plan rejected: rejected on the terminal");
    assert_eq!(rejected["plan"]["steps"][0]["attempts"], 0, "no step runs before approval");

    let list = stepwise(dir, &["runs", "list", "--json"], "");
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let runs: Value = serde_json::from_slice(&list.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["id"], rejected["id"], "newest first");
    assert_eq!(runs[1]["status"], "completed");

    let completed = stepwise(dir, &["runs", "list", "--status", "completed"], "");
    let table = String::from_utf8_lossy(&completed.stdout);
    assert!(
        table.contains(approved["id"].as_str().unwrap()) && !table.contains(rejected["id"].as_str().unwrap()),
        "{table}"
    );

    let show = stepwise(dir, &["runs", "show", approved["id"].as_str().unwrap()], "");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success());
    assert!(
        text.contains("completed") && text.contains("say hello") && text.contains("the answer"),
        "{text}"
    );

    let missing = stepwise(dir, &["runs", "show", "no-such-run"], "");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-run"));

    let bad = stepwise(dir, &["runs", "list", "--status", "sleeping"], "");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown run status \"sleeping\""));
}

#[test]
fn a_bad_config_key_is_an_error_that_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fixture(dir);
    std::fs::write(dir.join("bad.toml"), "[policy]\nmax_retrys = 3\n").unwrap();
    let out = stepwise(dir, &["run", "x", "--script", "script.json", "--config", "bad.toml"], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_retrys") && stderr.contains("bad.toml"), "{stderr}");
}

fn stepwise_logging(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(args)
        .current_dir(dir)
        .env("STEPWISE_RUNTIME__DATA_DIR", dir.join("data"))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes_and_json_logs_are_one_object_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fixture(dir);
    let text = stepwise_logging(dir, &["run", "log task", "--script", "script.json"]);
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(text.status.success(), "{stderr}");
    assert!(stderr.contains("DEBUG"), "the test needs log lines: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in a piped log: {stderr:?}");

    let json = stepwise_logging(dir, &["--log-format", "json", "run", "log task", "--script", "script.json"]);
    let stderr = String::from_utf8_lossy(&json.stderr);
    assert!(json.status.success(), "{stderr}");
    let logs: Vec<Value> =
        stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!logs.is_empty(), "no JSON log lines: {stderr}");
    assert!(logs.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{logs:?}");
    assert!(!stderr.contains(" DEBUG "), "text lines beside the JSON ones: {stderr}");
}

#[test]
fn each_call_of_a_tool_needing_approval_is_asked_on_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |path: &str| json!({"tool_calls": [{"name": "write_file", "arguments": {"path": path, "content": "x"}}]});
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "write a", "expected_outcome": "", "tool": "write_file", "depends_on": []},
            {"id": "s2", "description": "write b", "expected_outcome": "", "tool": "write_file", "depends_on": ["s1"]}
        ]}}],
        "steps": {"s1": [write("a.txt"), "wrote a"], "s2": [write("b.txt"), "b was refused"]},
        "synthesizer": ["the answer"]
    });
    std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
    let args =
        ["run", "write two files", "--script", "script.json", "--approve-tool", "write_file", "--json"];
    let out = stepwise(dir, &args, "y\nnot this one\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("wants to call write_file").count(), 2, "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "completed");
    let workspace = dir.join("data/workspaces").join(result["id"].as_str().unwrap());
    assert!(workspace.join("a.txt").exists(), "the approved call ran");
    assert!(!workspace.join("b.txt").exists(), "the rejected one did not");
}
