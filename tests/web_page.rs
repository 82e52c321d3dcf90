//! The web page served by `stepwise serve` at `/`, in a real browser: each test starts the real
//! binary on the scripted model, then runs a scenario of `tests/web/` (node + playwright-core
//! driving Debian's Chromium) against it and asserts on its exit status. The scenarios assert in
//! the page; a failure prints what they saw and leaves a screenshot in `target/web-artifacts/`.
//!
//! Needs what `scripts/deps/browser.sh` installs; without it the tests fail saying so.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support_serve;

/// One browser at a time: Chromium is heavy, and the machine may have two cores.
static BROWSER: Mutex<()> = Mutex::new(());

/// How long one scenario may take before it is killed (its own watchdog fires first).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(150);

const TOKEN: &str = "web-test-token-7f3a";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn artifacts() -> PathBuf {
    repo().join("target/web-artifacts")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails (never skips) when the browser or the node modules are missing.
fn require_browser_deps() {
    let fix = "run `bash scripts/deps/browser.sh` (it installs Chromium, tmux and playwright-core)";
    assert!(chromium().exists(), "Chromium not found at {}: {fix}", chromium().display());
    let node = Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is not on PATH: {fix}");
    let pw = repo().join("tests/web/node_modules/playwright-core/package.json");
    assert!(pw.exists(), "{} is missing: {fix}", pw.display());
}

fn plan(steps: Value) -> Value {
    json!({"json": {"goal": "test goal", "steps": steps}})
}

fn step(id: &str, description: &str, deps: &[&str]) -> Value {
    json!({"id": id, "description": description, "expected_outcome": format!("{id} done"), "tool": null, "depends_on": deps})
}

/// A running `stepwise serve`; killed when dropped.
struct Serve {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts serve on a free loopback port with `script`, the bearer `tokens` (none: auth off)
    /// and extra `config` TOML.
    fn start(script: &Value, tokens: Option<&str>, config: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("script.json"), script.to_string()).unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepwise"));
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--data-dir", "data", "--config", "config.toml"])
            .args(["--provider", "scripted", "--script", "script.json"])
            .current_dir(dir.path())
            .env_remove("STEPWISE_API_TOKENS")
            .env("NO_COLOR", "1");
        if let Some(t) = tokens {
            cmd.env("STEPWISE_API_TOKENS", t);
        }
        let (child, base) = support_serve::spawn_serve(cmd);
        Serve { child, base, _dir: dir }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/web/<scenario>.mjs` against `base`; panics with its output unless it succeeds.
fn scenario(name: &str, base: &str, env: &[(&str, &str)]) -> String {
    require_browser_deps();
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new("node")
        .arg(repo().join(format!("tests/web/{name}.mjs")))
        .arg(base)
        .current_dir(repo())
        .env("ARTIFACTS", artifacts())
        .env("CHROMIUM", chromium())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("scenario {name} failed ({s}):\n{out}\n{err}"),
        None => panic!("scenario {name} did not finish within {SCENARIO_TIMEOUT:?}:\n{out}\n{err}"),
    }
}

/// A 5-step diamond: s1 → s2, s3 → s4 → s5. s2 calls a tool; s3 fails once and is retried.
fn diamond_script() -> Value {
    json!({
        "planner": [plan(json!([
            step("s1", "Collect the merged pull requests", &[]),
            step("s2", "Write the notes file", &["s1"]),
            step("s3", "Check the changelog entries", &["s1"]),
            step("s4", "Cross-check notes and changelog", &["s2", "s3"]),
            step("s5", "Summarise for the announcement", &["s4"]),
        ]))],
        "steps": {
            "s1": [{"content": "12 pull requests merged", "delay_ms": 500}],
            "s2": [
                {"tool_calls": [{"name": "write_file", "arguments": {"path": "notes.md", "content": "# Notes\n"}}], "delay_ms": 200},
                {"content": "wrote notes.md", "delay_ms": 300}
            ],
            "s3": [{"error": "changelog service flaked", "delay_ms": 200}, {"content": "changelog ok", "delay_ms": 300}],
            "s4": [{"content": "consistent", "delay_ms": 500}],
            "s5": [{"content": "summary ready", "delay_ms": 400}]
        },
        "synthesizer": ["# Release report\n\nAll **five** steps ran:\n\n- 12 pull requests\n- `notes.md` written\n\n| step | result |\n|---|---|\n| s3 | ok after a retry |\n"]
    })
}

#[test]
fn approving_a_plan_runs_it_and_the_dag_turns_completed_live() {
    let trace = "[server]\ntrace_url_template = \"http://127.0.0.1:9/trace/{trace_id}\"\n";
    let serve = Serve::start(&diamond_script(), None, trace);
    scenario("approve", &serve.base, &[]);
    let shot = artifacts().join("run-page.png");
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "{} was not saved", shot.display());
    // The README's screenshot is refreshed on request only, so a test run leaves the tree clean.
    if std::env::var_os("STEPWISE_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&shot, repo().join("docs/run-page.png")).unwrap();
    }
}

#[test]
fn tool_calls_waiting_for_approval_are_answered_from_the_run_page() {
    let call = |path: &str| json!({"tool_calls": [{"name": "write_file", "arguments": {"path": path, "content": "x"}}]});
    let script = json!({
        "planner": [plan(json!([step("s1", "Write the first note", &[]), step("s2", "Write the second note", &[])]))],
        "steps": {"s1": [call("a.md"), "s1 done"], "s2": [call("b.md"), "s2 done"]},
        "synthesizer": ["both answered"]
    });
    let serve = Serve::start(&script, None, "");
    scenario("tool_approval", &serve.base, &[]);
}

/// 10 layers of 5 steps, each depending on every step of the layer before.
fn fifty_step_script() -> Value {
    let steps: Vec<Value> = (0..50)
        .map(|i| {
            let layer = i / 5;
            let deps: Vec<String> =
                if layer == 0 { vec![] } else { (0..5).map(|j| format!("l{}s{j}", layer - 1)).collect() };
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            step(&format!("l{layer}s{}", i % 5), &format!("Check part {i} of the release"), &deps)
        })
        .collect();
    json!({"planner": [plan(Value::Array(steps))], "executor": ["checked"], "synthesizer": ["All fifty parts checked."]})
}

#[test]
fn a_fifty_step_run_is_drawn_without_overlaps_and_its_page_time_is_reported() {
    let serve = Serve::start(&fifty_step_script(), None, "");
    let out = scenario("large", &serve.base, &[]);
    // The figure for the README and the closing note; `cargo test -- --nocapture` shows it.
    println!("{}", out.trim());
    assert!(out.contains("page shown in"), "{out}");
}

#[test]
fn an_edit_into_a_cycle_shows_the_servers_error_at_the_step_and_a_valid_edit_runs() {
    let script = json!({
        "planner": [plan(json!([step("s1", "first", &[]), step("s2", "second", &["s1"])]))],
        "steps": {"s1": ["s1 done"], "s2": ["s2 done"], "mine": ["edited step ran"]},
        "synthesizer": ["edited plan finished"]
    });
    let serve = Serve::start(&script, None, "");
    let out = scenario("edit", &serve.base, &[]);
    assert!(out.contains("dependency cycle"), "{out}");
}

#[test]
fn a_replan_shows_both_revisions_and_what_changed() {
    let replan = json!({"json": {
        "decision": "replan",
        "reason": "the primary mirror keeps timing out; fetch from the secondary",
        "steps": [step("s2b", "Fetch from the secondary mirror", &["s1"]), step("s3", "Publish", &["s2b"])]
    }});
    let script = json!({
        "planner": [plan(json!([
            step("s1", "Resolve the dataset", &[]),
            step("s2", "Fetch from the primary mirror", &["s1"]),
            step("s3", "Publish", &["s2"]),
        ]))],
        "replanner": [replan],
        "steps": {"s1": ["resolved"], "s2": [{"error": "timeout"}], "s2b": ["fetched"], "s3": ["published"]},
        "synthesizer": ["published from the secondary mirror"]
    });
    let serve = Serve::start(&script, None, "");
    scenario("replan", &serve.base, &[]);
}

#[test]
fn model_output_with_script_and_onerror_runs_nothing_and_loads_nothing() {
    let output = "# Findings\n\n<script>alert(1);window.__xss=1</script>\n\n<img src=x onerror=\"alert(2);window.__xss=2\">\n\n\
        ![chart](http://203.0.113.9/chart.png) and [click](javascript:alert(3)) and [docs](https://example.com/docs)\n\n**done**";
    let script = json!({
        "planner": [plan(json!([step("s1", "<b onmouseover=alert(6)>look</b>", &[])]))],
        "steps": {"s1": [
            {"tool_calls": [{"name": "write_file", "arguments": {"path": "x.html", "content": "<script>alert(7)</script>"}}]},
            "<img src=y onerror=\"alert(5);window.__xss=5\">"
        ]},
        "synthesizer": [output]
    });
    let serve = Serve::start(&script, None, "");
    scenario("xss", &serve.base, &[]);
}

#[tokio::test]
async fn with_tokens_the_page_shows_nothing_without_one_and_says_when_one_is_wrong() {
    let script = json!({
        "planner": [plan(json!([step("s1", "only step", &[])]))],
        "steps": {"s1": ["done"]},
        "synthesizer": ["ok"]
    });
    let serve = Serve::start(&script, Some(TOKEN), "");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/runs", serve.base))
        .bearer_auth(TOKEN)
        .json(&json!({"task": "confidential quarterly numbers"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    scenario("auth", &serve.base, &[("TOKEN", TOKEN)]);
}

/// Without a browser: the page and its assets are open and carry the policy; what the page reads
/// about the service (`/ui/config.json`) needs the token like the API.
#[tokio::test]
async fn the_page_is_open_and_strict_and_its_config_needs_the_token() {
    let config = "[server]\ntrace_url_template = \"http://jaeger.local:16686/search?service=stepwise&tags=%7B%22stepwise.run.id%22%3A%22{run_id}%22%7D\"\n";
    let serve = Serve::start(&json!({"planner": ["x"]}), Some(TOKEN), config);
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", serve.base)).send();
    for (path, kind) in [("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")]
    {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind), "{path}: {:?}", h["content-type"]);
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    assert_eq!(get("/ui/nope.js").await.unwrap().status(), 404);
    assert_eq!(get("/ui/config.json").await.unwrap().status(), 401);
    let r = client.get(format!("{}/ui/config.json", serve.base)).bearer_auth(TOKEN).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["trace_url_template"].as_str().unwrap().contains("{run_id}"), "{v}");
}

/// A template naming neither `{trace_id}` nor `{run_id}` (or not http) is a configuration error
/// naming the key.
#[test]
fn a_trace_template_naming_no_id_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[server]\ntrace_url_template = \"http://jaeger/trace/\"\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "d",
            "--config",
            "c.toml",
            "--provider",
            "scripted",
        ])
        .current_dir(dir.path())
        .env_remove("STEPWISE_API_TOKENS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("server.trace_url_template"), "{err}");
}

/// The terminal display of `stepwise run --approve` under a real pseudo-terminal (tmux, 72
/// columns): the question stays visible and is the last thing on screen while it waits (the
/// live display used to redraw over it); after `y` each step has one line, clipped to the width.
#[test]
fn terminal_approval_question_stays_visible_and_step_lines_fit_the_width() {
    assert!(
        Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()),
        "tmux is missing: run `bash scripts/deps/browser.sh`"
    );
    let dir = tempfile::tempdir().unwrap();
    let long = format!("{} TAILMARK", "very long step output ".repeat(8));
    let script = json!({
        "planner": [plan(json!([step("s1", "first", &[]), step("s2", "second", &["s1"])]))],
        "steps": {"s1": [{"content": long, "delay_ms": 300}], "s2": [{"content": "short", "delay_ms": 300}]},
        "synthesizer": ["all done"]
    });
    std::fs::write(dir.path().join("script.json"), script.to_string()).unwrap();
    let socket = format!("stepwise-test-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").arg("-L").arg(&socket).args(args).output().unwrap();
    let command = format!(
        "cd '{}' && NO_COLOR=1 '{}' run --approve --provider scripted --script script.json 'Two steps'; echo EXIT=$?; sleep 60",
        dir.path().display(),
        env!("CARGO_BIN_EXE_stepwise")
    );
    let started = tmux(&["new-session", "-d", "-x", "72", "-y", "30", "-s", "t", &command]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned();
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = screen();
            if s.contains(what) {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {what:?} on the terminal:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let last_line = |s: &str| s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
    let asked = wait_for("Run this plan? [y/N]");
    assert!(asked.contains("s1 first") && asked.contains("s2 second"), "the plan is printed first:\n{asked}");
    // A redraw would land after a tick (120 ms): the question must still be the last line.
    std::thread::sleep(Duration::from_millis(1000));
    let still = screen();
    assert!(last_line(&still).starts_with("Run this plan? [y/N]"), "the question was drawn over:\n{still}");
    tmux(&["send-keys", "-t", "t", "y", "Enter"]);
    let done = wait_for("EXIT=");
    tmux(&["kill-server"]);
    assert!(done.contains("EXIT=0") && done.contains("all done"), "{done}");
    assert!(!done.contains("TAILMARK"), "a step line was not clipped to 72 columns:\n{done}");
    let step_lines: Vec<&str> = done.lines().filter(|l| l.contains('✓')).collect();
    assert_eq!(step_lines.len(), 2, "one line per step:\n{done}");
    assert!(step_lines[0].starts_with("  s1 ") && step_lines[1].starts_with("  s2 "), "aligned:\n{done}");
}
