//! Provider outages with real processes (issue 16): `stepwise serve` against the fake
//! OpenAI-compatible server (`support_llm/fake_openai.rs`) running as a separate process (this
//! test binary started again, running only [`fake_server_process`]), which the tests kill and
//! start again on the same port, or tell to answer 429 for a while.
//!
//! - 50 runs at every phase (planning, steps, replanning, synthesis) survive a 30 s outage;
//! - a 10 s storm of 429 with `Retry-After: 5` is waited out with a bounded number of requests;
//! - a provider down past `outage_max_wait_secs` fails the runs promptly, with a clear error;
//! - `kill -9` of `serve` while runs wait, then a restart: they wait again and complete.
//!
//! The long tests are in this one file so that cargo runs them at once, on parallel threads.

#[path = "support_llm/fake_openai.rs"]
mod fake_openai;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support_serve;

/// How long the model server stays down in the outage test (the 30 s).
const OUTAGE: Duration = Duration::from_secs(30);
/// Latency of every fake answer: a 2 × 2 run with a replan after each step takes about 6 of them.
const LATENCY_MS: u64 = 250;
/// Latency in the outage test: a run takes 5 answers in a row (2.5 s), so 50 runs submitted 30 ms
/// apart are all still going when the first one synthesises.
const OUTAGE_LATENCY_MS: u64 = 500;

/// The fake model server's process: does nothing unless started by [`FakeServer::start`].
#[test]
#[ignore = "the fake model server's process, started by the other tests"]
fn fake_server_process() {
    let Ok(bind) = std::env::var("FAKE_OPENAI_BIND") else { return };
    let latency: u64 = std::env::var("FAKE_OPENAI_LATENCY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        // The port may still be held for a moment by the process this one replaces.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(&bind).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("bind {bind}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {bind}: {e}"),
            }
        };
        println!("fake listening on {}", listener.local_addr().unwrap());
        axum::serve(listener, fake_openai::app(Duration::from_millis(latency))).await.unwrap();
    });
}

/// The fake model server, a separate process.
struct FakeServer {
    child: Child,
    addr: String,
}

impl FakeServer {
    /// Starts it on `bind` (`127.0.0.1:0` for a free port) and waits until it listens.
    fn start(bind: &str) -> Self {
        Self::start_slow(bind, LATENCY_MS)
    }

    /// [`FakeServer::start`] with every answer taking `latency_ms`.
    fn start_slow(bind: &str, latency_ms: u64) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["fake_server_process", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("FAKE_OPENAI_BIND", bind)
            .env("FAKE_OPENAI_LATENCY_MS", latency_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("the fake server exited before listening").unwrap();
            // libtest writes "test fake_server_process ... " on the same line first.
            if let Some(addr) = line.split("fake listening on ").nth(1) {
                break addr.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    /// Stops it at once (the port refuses connections until it is started again).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `stepwise serve`, a separate process on a data dir.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    /// Starts `serve` in `dir` against the model server at `model_url`, calls waiting at most
    /// `max_wait_secs` for it.
    fn start(dir: &Path, model_url: &str, max_wait_secs: u64) -> Self {
        Self::start_with(dir, model_url, max_wait_secs, "")
    }

    /// [`Serve::start`] with `extra` appended to its config file.
    fn start_with(dir: &Path, model_url: &str, max_wait_secs: u64, extra: &str) -> Self {
        let config = format!(
            "[llm]\nprovider = \"openai\"\nmodel = \"fake\"\nbase_url = \"{model_url}/v1\"\n\
             request_timeout_secs = 10\noutage_max_wait_secs = {max_wait_secs}\n{extra}"
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", "data", "--config", "config.toml"])
            .current_dir(dir)
            .env_remove("STEPWISE_API_TOKENS")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env("RUST_LOG", "info");
        let (child, url) = support_serve::spawn_serve(command);
        Self { child, url }
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn submit(client: &reqwest::Client, url: &str, body: Value) -> String {
    let r = client.post(format!("{url}/v1/runs")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

/// A 2 × 2 plan whose replanner is asked after every step: planning, steps, replans, synthesis.
fn two_by_two(i: usize) -> Value {
    json!({"task": format!("outage {i} depth=2 width=2"), "policy": {"replan": "after_each_step"}})
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Polls until every run has ended (or `within` has passed); returns them.
async fn wait_all_ended(client: &reqwest::Client, url: &str, ids: &[String], within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let mut runs = Vec::new();
        for id in ids {
            runs.push(get(client, &format!("{url}/v1/runs/{id}")).await);
        }
        let open: Vec<&Value> = runs.iter().filter(|r| r["finished_at"].is_null()).collect();
        if open.is_empty() {
            return runs;
        }
        assert!(Instant::now() < deadline, "{} runs still open, e.g. {}", open.len(), open[0]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The run's stored events (the SSE stream of an ended run ends with it).
async fn events(client: &reqwest::Client, url: &str, id: &str) -> Vec<Value> {
    let text = client.get(format!("{url}/v1/runs/{id}/events")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

async fn fake_stats(client: &reqwest::Client, fake: &FakeServer) -> Value {
    get(client, &format!("{}/stats", fake.url())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_runs_at_every_phase_survive_a_30_s_outage_of_the_model_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fake = FakeServer::start_slow("127.0.0.1:0", OUTAGE_LATENCY_MS);
    let serve = Serve::start(tmp.path(), &fake.url(), 600);
    let client = reqwest::Client::new();

    // Submissions spread over most of one run's length, and the server stops once the first run
    // synthesises: then the others are planning, running steps or replanning.
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(submit(&client, &serve.url, two_by_two(i)).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let first = format!("{}/v1/runs/{}", serve.url, ids[0]);
    loop {
        let r = get(&client, &first).await;
        assert!(r["finished_at"].is_null(), "the first run ended before the outage: {r}");
        let steps = r["plan"]["steps"].as_array().unwrap();
        if !steps.is_empty() && steps.iter().all(|s| s["status"] == "completed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.kill();
    let stopped = Instant::now();
    for id in &ids {
        let r = get(&client, &format!("{}/v1/runs/{id}", serve.url)).await;
        assert!(r["finished_at"].is_null(), "a run ended before the outage: {r}");
    }
    tokio::time::sleep(OUTAGE).await;
    let fake = FakeServer::start_slow(&fake.addr, OUTAGE_LATENCY_MS);
    let runs = wait_all_ended(&client, &serve.url, &ids, Duration::from_secs(60)).await;
    let recovered = stopped.elapsed();
    for r in &runs {
        assert_eq!(r["status"], "completed", "{r}");
        assert!(r.get("waiting_on_provider").is_none(), "an ended run waits for nothing: {r}");
    }
    let mut roles = BTreeSet::new();
    let mut waited = 0;
    for id in &ids {
        let events = events(&client, &serve.url, id).await;
        let waits = of_type(&events, "ProviderWaiting");
        assert!(!waits.is_empty(), "every run waited: {events:?}");
        for e in waits {
            roles.insert(e["role"].as_str().unwrap().to_owned());
            waited += 1;
        }
        assert!(
            of_type(&events, "ProviderResumed").iter().all(|e| e["waited_ms"].as_u64().unwrap() > 0),
            "{events:?}"
        );
        assert!(of_type(&events, "StepFailed").is_empty(), "waiting is not a failure: {events:?}");
    }
    for role in ["planner", "executor", "replanner", "synthesizer"] {
        assert!(roles.contains(role), "no {role} waited: {roles:?}");
    }
    let stats = fake_stats(&client, &fake).await;
    eprintln!(
        "outage of {OUTAGE:?}: 50 runs completed {:.1} s after the server stopped; {waited} waits \
         ({roles:?}); the restarted server saw {} requests",
        recovered.as_secs_f64(),
        stats["requests"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_is_waited_out_with_a_bounded_number_of_requests() {
    const RUNS: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeServer::start("127.0.0.1:0");
    let serve = Serve::start(tmp.path(), &fake.url(), 600);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..RUNS {
        ids.push(submit(&client, &serve.url, two_by_two(i)).await);
    }
    tokio::time::sleep(Duration::from_millis(LATENCY_MS * 2)).await;
    let storm = Instant::now();
    let before = fake_stats(&client, &fake).await;
    client
        .post(format!("{}/fault", fake.url()))
        .json(&json!({"status": 429, "retry_after_secs": 5, "for_ms": 10_000}))
        .send()
        .await
        .unwrap();
    let runs = wait_all_ended(&client, &serve.url, &ids, Duration::from_secs(60)).await;
    let took = storm.elapsed();
    for r in &runs {
        assert_eq!(r["status"], "completed", "{r}");
    }
    let stats = fake_stats(&client, &fake).await;
    let faulted = stats["faulted"].as_u64().unwrap();
    // Each run has at most two calls in flight; each call sent before the circuit opened gets
    // one 429, then one probe goes per Retry-After (5 s) for the whole process: 10 s, 3 probes.
    let bound = 2 * RUNS as u64 + 3;
    assert!(faulted >= 1, "the storm hit no call");
    assert!(faulted <= bound, "{faulted} requests during the storm, more than {bound}");
    assert!(took >= Duration::from_secs(10), "runs completed during the storm: {took:?}");
    let mut waits = 0;
    for id in &ids {
        waits += of_type(&events(&client, &serve.url, id).await, "ProviderWaiting").len();
    }
    assert!(waits >= 1);
    eprintln!(
        "429 storm of 10 s (Retry-After 5) over {RUNS} runs: {faulted} requests answered 429 (bound {bound}), \
         {} requests before it, {} in all; {waits} waits; all completed {:.1} s after it began",
        before["requests"],
        stats["requests"],
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_past_the_limit_fails_runs_promptly_with_a_clear_error() {
    const LIMIT_SECS: u64 = 3;
    let tmp = tempfile::tempdir().unwrap();
    let mut fake = FakeServer::start("127.0.0.1:0");
    fake.kill();
    let serve = Serve::start(tmp.path(), &fake.url(), LIMIT_SECS);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&client, &serve.url, two_by_two(i)).await);
    }
    let runs = wait_all_ended(&client, &serve.url, &ids, Duration::from_secs(30)).await;
    for r in &runs {
        assert_eq!(r["status"], "failed", "{r}");
        let error = r["error"].as_str().unwrap();
        for part in ["planning failed", "was unavailable for 3s", "outage_max_wait_secs", "could not reach"] {
            assert!(error.contains(part), "{part:?} not in {error:?}");
        }
        let created = chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap()).unwrap();
        let finished = chrono::DateTime::parse_from_rfc3339(r["finished_at"].as_str().unwrap()).unwrap();
        let took = (finished - created).to_std().unwrap();
        assert!(took >= Duration::from_secs(LIMIT_SECS), "failed before the limit: {took:?}");
        assert!(took < Duration::from_secs(LIMIT_SECS + 2), "failed long after the limit: {took:?}");
    }
    let events = events(&client, &serve.url, &ids[0]).await;
    assert_eq!(of_type(&events, "ProviderWaiting").len(), 1, "{events:?}");
    assert!(of_type(&events, "ProviderResumed").is_empty(), "it never came back: {events:?}");
}

/// Polls until every run shows its planner waiting, in a wait other than those in `before`;
/// returns when each wait began.
async fn all_waiting(client: &reqwest::Client, url: &str, ids: &[String], before: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut since = Vec::new();
        for id in ids {
            let r = get(client, &format!("{url}/v1/runs/{id}")).await;
            let wait = &r["waiting_on_provider"][0];
            if wait["role"] == "planner" && !before.iter().any(|b| *b == wait["since"]) {
                since.push(wait["since"].as_str().unwrap().to_owned());
            }
        }
        if since.len() == ids.len() {
            return since;
        }
        assert!(Instant::now() < deadline, "only {} runs show a new wait", since.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_while_runs_wait_on_the_provider_then_restart_resumes_waiting_and_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fake = FakeServer::start("127.0.0.1:0");
    fake.kill();
    let mut serve = Serve::start(tmp.path(), &fake.url(), 600);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&client, &serve.url, two_by_two(i)).await);
    }
    let waits = all_waiting(&client, &serve.url, &ids, &[]).await;
    let metrics = client.get(format!("{}/metrics", serve.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("stepwise_provider_waiting{role=\"planner\"} 5"), "{metrics}");
    // The CLI shows the wait too.
    let show = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["runs", "show", &ids[0], "--server", &serve.url])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("waiting on provider http://127.0.0.1:"), "{shown}");

    serve.kill();
    let serve = Serve::start(tmp.path(), &fake.url(), 600);
    // The restarted process waits again (a new wait, not the one the log had).
    all_waiting(&client, &serve.url, &ids, &waits).await;
    let _fake = FakeServer::start(&fake.addr);
    let runs = wait_all_ended(&client, &serve.url, &ids, Duration::from_secs(60)).await;
    for r in &runs {
        assert_eq!(r["status"], "completed", "{r}");
    }
    let events = events(&client, &serve.url, &ids[0]).await;
    assert_eq!(of_type(&events, "ProviderWaiting").len(), 2, "one wait per process: {events:?}");
    assert_eq!(of_type(&events, "ProviderResumed").len(), 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_asking_for_more_than_the_server_allows_gets_422_naming_the_field_and_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let serve =
        Serve::start_with(tmp.path(), "http://127.0.0.1:9", 600, "[server.limits]\nmax_replans = 3\n");
    let client = reqwest::Client::new();
    let cases = [
        (
            json!({"policy": {"max_retries": 4_000_000_000u64}}),
            "policy.max_retries: 4000000000",
            "(10, set by server.limits.max_retries)",
        ),
        (
            json!({"policy": {"max_replans": 4}}),
            "policy.max_replans: 4",
            "(3, set by server.limits.max_replans)",
        ),
        (json!({"step_budget": {"max_iterations": 65}}), "step_budget.max_iterations: 65", "(64,"),
        (json!({"step_budget": {"max_tool_calls": 100000}}), "step_budget.max_tool_calls: 100000", "(256,"),
        (
            json!({"step_budget": {"timeout_ms": 86_400_000u64}}),
            "step_budget.timeout_ms: 86400000",
            "(3600000,",
        ),
    ];
    for (mut body, field, limit) in cases {
        body["task"] = json!("too much");
        let r = client.post(format!("{}/v1/runs", serve.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let error: Value = r.json().await.unwrap();
        let message = error.to_string();
        assert!(message.contains(field) && message.contains(limit), "{body} -> {message}");
    }
    let runs = get(&client, &format!("{}/v1/runs", serve.url)).await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "nothing was accepted: {runs}");
    let at_the_limit = json!({"task": "as much as allowed", "policy": {"max_retries": 10, "max_replans": 3}});
    let r = client.post(format!("{}/v1/runs", serve.url)).json(&at_the_limit).send().await.unwrap();
    assert_eq!(r.status(), 202);
}
