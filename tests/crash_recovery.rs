//! Crash recovery with the real binary: start `stepwise serve`, submit runs, `kill -9` it mid-run,
//! start it again on the same data dir.
//! Every run completes; a step that completed before the crash never runs again (each step's
//! executions are counted by the tool itself, appending to a file in the run's workspace); a plan
//! awaiting approval is still waiting after the restart.

use std::collections::{HashMap, HashSet};

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support_serve;

const STEPS: [&str; 3] = ["s1", "s2", "s3"];

fn write_fixture(dir: &Path) {
    std::fs::write(dir.join("config.toml"), "[tools.run_command]\nenabled = true\nallow = [\"sh\"]\n")
        .unwrap();
    let mut steps = serde_json::Map::new();
    for s in STEPS {
        // The tool appends only after its work (the sleep), so a step killed mid-way leaves no line.
        let cmd = format!("sleep 0.4; echo {s} >> executions.log");
        steps.insert(
            s.into(),
            json!([{"tool_calls": [{"name": "run_command", "arguments": {"program": "sh", "args": ["-c", cmd]}}]}, format!("{s} done")]),
        );
    }
    let script = json!({
        "planner": [{"json": {"goal": "chain", "steps": [
            {"id": "s1", "description": "first", "expected_outcome": "", "tool": "run_command", "depends_on": []},
            {"id": "s2", "description": "second", "expected_outcome": "", "tool": "run_command", "depends_on": ["s1"]},
            {"id": "s3", "description": "third", "expected_outcome": "", "tool": "run_command", "depends_on": ["s2"]}
        ]}}],
        "steps": steps,
        "synthesizer": ["all three ran"]
    });
    std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
}

/// Starts `stepwise serve` in its own process group; returns it and its base URL.
fn start(dir: &Path) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "data",
            "--config",
            "config.toml",
            "--script",
            "script.json",
        ])
        .current_dir(dir)
        .env_remove("STEPWISE_API_TOKENS");
    support_serve::spawn_serve(command)
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn step_status(run: &Value, id: &str) -> String {
    run["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .map_or("absent".into(), |s| s["status"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_completes_every_run_without_rerunning_completed_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fixture(dir);
    let client = reqwest::Client::new();

    let (mut first, url) = start(dir);
    let mut ids = Vec::new();
    for i in 0..4 {
        let r: Value = client
            .post(format!("{url}/v1/runs"))
            .json(&json!({"task": format!("chain {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    let approval: Value = client
        .post(format!("{url}/v1/runs"))
        .json(&json!({"task": "needs a person", "require_approval": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let approval_id = approval["id"].as_str().unwrap().to_owned();

    // Kill once some step has completed and some step is running: the crash lands mid-run.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut completed = 0;
        let mut running = 0;
        for id in &ids {
            let run = get(&client, &format!("{url}/v1/runs/{id}")).await;
            for s in STEPS {
                match step_status(&run, s).as_str() {
                    "completed" => completed += 1,
                    "running" => running += 1,
                    _ => {}
                }
            }
        }
        if completed > 0 && running > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no step completed while another ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // Its tool processes (sh) may outlive it briefly, as orphans; let them finish before counting.
    tokio::time::sleep(Duration::from_millis(800)).await;

    // What the store says happened before the crash.
    let store = stepwise::store::sqlite::SqliteStore::open_path(&dir.join("data/stepwise.db")).await.unwrap();
    let mut done_before: HashMap<String, HashSet<String>> = HashMap::new();
    let mut interrupted = 0;
    for id in &ids {
        use stepwise::store::RunStore;
        let events = store.events(&stepwise::run::RunId(id.clone()), 0).await.unwrap();
        let state = stepwise::run::RunState::from_events(&events).unwrap().unwrap();
        assert!(!state.status.is_terminal(), "run {id} ended before the crash; the test must crash mid-run");
        let done = state
            .plan
            .steps
            .iter()
            .filter(|s| s.status == stepwise::plan::StepStatus::Completed)
            .map(|s| s.id.0.clone())
            .collect();
        interrupted +=
            state.plan.steps.iter().filter(|s| s.status == stepwise::plan::StepStatus::Running).count();
        done_before.insert(id.clone(), done);
    }
    store.close().await;
    assert!(interrupted > 0, "some step must have been interrupted by the crash");

    let (mut second, url) = start(dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut results = HashMap::new();
    for id in &ids {
        loop {
            let run = get(&client, &format!("{url}/v1/runs/{id}")).await;
            if run["status"] != "running" && run["status"] != "planning" {
                results.insert(id.clone(), run);
                break;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish after the restart: {run:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for id in &ids {
        let run = &results[id];
        assert_eq!(run["status"], "completed", "{run:#}");
        let log =
            std::fs::read_to_string(dir.join("data/workspaces").join(id).join("executions.log")).unwrap();
        let count = |s: &str| log.lines().filter(|l| *l == s).count();
        for s in STEPS {
            assert_eq!(step_status(run, s), "completed");
            if done_before[id].contains(s) {
                assert_eq!(
                    count(s),
                    1,
                    "run {id}: step {s} completed before the crash and must not run again\n{log}"
                );
            } else {
                // Interrupted or not yet started: ran to completion after the restart. An interrupted
                // step may show 2: its orphaned tool process finished after the kill (at-least-once).
                assert!((1..=2).contains(&count(s)), "run {id}: step {s} ran {} times\n{log}", count(s));
            }
        }
    }

    // The plan awaiting approval survived the crash and still waits; approving it runs it.
    let waiting = get(&client, &format!("{url}/v1/runs/{approval_id}")).await;
    assert_eq!(waiting["status"], "awaiting_approval", "{waiting:#}");
    let approved =
        client.post(format!("{url}/v1/runs/{approval_id}/approve")).json(&json!({})).send().await.unwrap();
    assert!(approved.status().is_success(), "{:?}", approved.text().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = get(&client, &format!("{url}/v1/runs/{approval_id}")).await;
        if run["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{run:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: the service drains and exits on its own.
    // The shell's builtin kill: no dependency on a procps binary being installed.
    let term = Command::new("sh").args(["-c", &format!("kill -TERM {}", second.id())]).status().unwrap();
    assert!(term.success());
    let exited = tokio::task::spawn_blocking(move || second.wait()).await.unwrap().unwrap();
    assert!(exited.success(), "{exited:?}");
}
