//! `stepwise cache list|clear` on the real binary, after `stepwise run` filled the cache in the
//! data dir's SQLite store (`[plan_cache] enabled = true`), and the `[plan_cache]` config checks.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn fixture(dir: &Path, config: &str) {
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "say hello", "expected_outcome": "", "tool": null, "depends_on": []}
        ]}}],
        "steps": {"s1": ["hello"]},
        "synthesizer": ["the answer"]
    });
    std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
    std::fs::write(dir.join("stepwise.toml"), config).unwrap();
}

fn stepwise(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(args)
        .args(["--config", "stepwise.toml"])
        .current_dir(dir)
        .env("STEPWISE_RUNTIME__DATA_DIR", dir.join("data"))
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn runs_fill_the_cache_and_cache_list_and_clear_show_and_empty_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fixture(dir, "[plan_cache]\nenabled = true\nmax_entries = 10\nttl_secs = 3600\n");

    let first = json_of(&stepwise(dir, &["run", "Say hello", "--script", "script.json", "--json"]));
    assert_eq!(first["status"], "completed");
    let out = stepwise(dir, &["run", "say   HELLO", "--script", "script.json", "--json"]);
    let second = json_of(&out);
    assert_eq!(second["status"], "completed");
    assert_eq!(second["usage"]["llm_calls"], 2, "no planner call: one step and the synthesis");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("[cached plan of run {}]", first["id"].as_str().unwrap())), "{stderr}");

    let listed = json_of(&stepwise(dir, &["cache", "list", "--json"]));
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["source_run"], first["id"]);
    assert_eq!(entries[0]["task"], "Say hello");
    assert_eq!(entries[0]["model"], "scripted/scripted");
    for digest in ["key", "task_digest", "tools_digest", "model_digest", "prompt_digest"] {
        assert_eq!(entries[0][digest].as_str().map(str::len), Some(64), "{digest}");
    }
    let table = stepwise(dir, &["cache", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(first["id"].as_str().unwrap()) && text.contains("1 steps"), "{text}");

    let cleared = stepwise(dir, &["cache", "clear"]);
    assert!(cleared.status.success());
    assert_eq!(String::from_utf8_lossy(&cleared.stdout).trim(), "cleared 1 cached plan");
    assert_eq!(json_of(&stepwise(dir, &["cache", "list", "--json"])), json!([]));

    // Emptied: the next run plans again.
    let third = json_of(&stepwise(dir, &["run", "Say hello", "--script", "script.json", "--json"]));
    assert_eq!(third["usage"]["llm_calls"], 3);
}

#[test]
fn plan_cache_config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (config, key) in [
        ("[plan_cache]\nenabeld = true\n", "enabeld"),
        ("[plan_cache]\nenabled = true\nmax_entries = 0\n", "plan_cache.max_entries"),
        ("[plan_cache]\nttl_secs = 0\n", "plan_cache.ttl_secs"),
    ] {
        fixture(dir, config);
        let out = stepwise(dir, &["run", "x", "--script", "script.json"]);
        assert!(!out.status.success(), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{config}: {stderr}");
    }
}
