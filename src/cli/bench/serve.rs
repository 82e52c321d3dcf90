//! `serve`: the service as a user meets it.
//!
//! The real `stepwise serve` binary (this executable, as a child process) runs with its default
//! config in an empty temp dir (SQLite store, no config file, no `STEPWISE_*` variables) and
//! `--provider openai` against an OpenAI-compatible server: the fake model server, which the
//! bench starts (`--fake-server PATH`, by default `examples/fake_openai_server` beside this
//! executable) at `--latency-ms`, or one already running (`--model-url`):
//!
//! ```sh
//! cargo build --release --bin stepwise --example fake_openai_server
//! target/release/stepwise bench serve --runs 200 --latency-ms 100
//! ```
//!
//! `runs` runs of a `steps=K` plan (K = `--steps`, default 2) are submitted over HTTP, 64
//! requests in flight; a 429 is retried after its `Retry-After`, as a client should. The bench
//! polls until no run is planning or running, then reads every run back: any run that did not
//! complete fails the bench. The wall time runs to the last run's `finished_at`. The serve
//! process's CPU time (user + system from `/proc/<pid>/stat`, from when it listens until the runs
//! ended; in clock ticks of 10 ms, so small runs report it coarsely) is divided per step and per
//! model call; its peak RSS is `VmHWM`. `--serve-exe` runs another stepwise build as the service,
//! to compare two builds with the same client.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::child::{self, Spawned};

/// Requests in flight while submitting and reading back.
pub(super) const IN_FLIGHT: usize = 64;
/// How often the bench asks whether runs are still in progress. The wall time comes from the
/// runs' own `finished_at`, not from when a poll saw them end, so polling seldom loses no
/// precision and costs the service under test little.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(50);
/// A run still in progress after this long fails the bench.
pub(super) const DEADLINE: Duration = Duration::from_secs(600);
/// Statuses of a run in progress (the default config never waits for approval).
pub(super) const IN_PROGRESS: [&str; 2] = ["planning", "running"];

/// What the scenario is given.
pub(crate) struct ServeBench {
    /// Runs submitted.
    pub runs: usize,
    /// Steps of each run's plan (the fake server reads `steps=K` from the task).
    pub steps: usize,
    /// The model server's latency per call: passed to the fake server the bench starts, else
    /// only reported (None: unknown).
    pub latency_ms: Option<u64>,
    /// Where the model server comes from.
    pub server: ModelServer,
    /// Model name sent to the server.
    pub model: String,
    /// A config file for `serve` instead of the defaults.
    pub config: Option<PathBuf>,
    /// The stepwise binary to run as `serve`; None: this executable.
    pub serve_exe: Option<PathBuf>,
}

/// The OpenAI-compatible server `serve` talks to.
pub(crate) enum ModelServer {
    /// The fake server's binary, which the bench starts and stops.
    Start(PathBuf),
    /// The base URL (`http://HOST:PORT/v1`) of a server already running.
    Running(String),
}

/// The fake server's latency when the bench starts it and `--latency-ms` is not given.
const DEFAULT_LATENCY_MS: u64 = 50;

/// A model server ready for `serve`: the child when the bench started it, its base URL
/// (`…/v1`) and its latency per call (None: unknown).
pub(super) type ReadyModelServer = (Option<Spawned>, String, Option<u64>);

impl ModelServer {
    /// Starts the fake server at `latency_ms` (else `default_latency_ms`), or takes the running
    /// server as it is.
    pub(super) async fn ready(
        &self,
        latency_ms: Option<u64>,
        default_latency_ms: u64,
    ) -> anyhow::Result<ReadyModelServer> {
        match self {
            ModelServer::Start(path) => {
                let latency = latency_ms.unwrap_or(default_latency_ms);
                let fake = child::start_fake_server(path, Duration::from_millis(latency))
                    .await
                    .with_context(|| format!("starting the fake model server {}", path.display()))?;
                let url = format!("{}/v1", fake.url);
                Ok((Some(fake), url, Some(latency)))
            }
            ModelServer::Running(url) => Ok((None, url.clone(), latency_ms)),
        }
    }
}

/// The stepwise binary to run as `serve`: `path` when given, else this executable.
pub(super) fn serve_exe(path: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    match path {
        Some(path) => Ok(std::path::absolute(path)?),
        None => std::env::current_exe().context("locating the stepwise executable"),
    }
}

/// Runs the scenario and returns its report.
pub(super) async fn run(bench: &ServeBench) -> anyhow::Result<Value> {
    let (fake, base_url, latency_ms) = bench.server.ready(bench.latency_ms, DEFAULT_LATENCY_MS).await?;
    let dir = tempfile::tempdir()?;
    let exe = serve_exe(bench.serve_exe.as_deref())?;
    let serve =
        child::start_serve(&exe, dir.path(), &base_url, &bench.model, bench.config.as_deref(), &[]).await?;
    let outcome = measure(bench, &serve).await;
    let outcome =
        outcome.with_context(|| format!("stepwise serve's stderr ends with:\n{}", serve.stderr_tail()));
    serve.stop(Duration::from_secs(10)).await;
    if let Some(fake) = fake {
        fake.stop(Duration::from_secs(2)).await;
    }
    let mut report = outcome?;
    report["model_server"] = json!(base_url);
    report["latency_ms"] = json!(latency_ms);
    report["config"] = json!(bench.config.as_ref().map_or("default".into(), |p| p.display().to_string()));
    Ok(report)
}

/// The serve process's CPU time in µs and peak RSS in KiB.
fn serve_usage(pid: &str) -> anyhow::Result<(u64, Option<u64>)> {
    let cpu = child::cpu_time_us(pid).context("reading the serve process's CPU time from /proc")?;
    Ok((cpu, child::rss_kib(pid).1))
}

/// Submits the runs, waits for their end, reads them back; the report without the setup fields.
async fn measure(bench: &ServeBench, serve: &Spawned) -> anyhow::Result<Value> {
    let pid = serve.pid().context("stepwise serve exited at once")?.to_string();
    let client = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).build()?;
    let base = serve.url.as_str();
    let (cpu_before, _) = serve_usage(&pid)?;
    let started = Utc::now();
    let t0 = Instant::now();
    let submitted = submit_all(&client, base, bench.runs, bench.steps).await?;
    let submit_wall = t0.elapsed();
    wait_until_ended(&client, base).await?;
    let seen_ended = t0.elapsed();
    let (cpu_after, peak_rss) = serve_usage(&pid)?;
    let totals = read_back(&client, base, &submitted.ids).await?;
    let wall = wall_time(started, &totals, seen_ended);
    let cpu = cpu_after.saturating_sub(cpu_before) as f64;
    let per = |n: u64| if n == 0 { None } else { Some(cpu / n as f64) };
    let report = json!({
        "scenario": "serve",
        "provider": "openai",
        "store": "sqlite",
        "runs": bench.runs,
        "steps_per_run": bench.steps,
        "statuses": totals.statuses,
        "steps": totals.steps,
        "llm_calls": totals.llm_calls,
        "rejected_429": submitted.rejected,
        "submit_all_ms": submit_wall.as_secs_f64() * 1e3,
        "wall_ms": wall.as_secs_f64() * 1e3,
        "runs_per_s": bench.runs as f64 / wall.as_secs_f64(),
        "serve_cpu_before_ms": cpu_before as f64 / 1e3,
        "serve_cpu_after_ms": cpu_after as f64 / 1e3,
        "serve_cpu_ms": cpu / 1e3,
        "cpu_per_step_us": per(totals.steps),
        "cpu_per_llm_call_us": per(totals.llm_calls),
        "peak_rss_mib": peak_rss.map(|k| k as f64 / 1024.0),
    });
    check_completed(bench.runs, &totals, &report)?;
    Ok(report)
}

/// From `started` to the last run's end as the service recorded it (`finished_at`); `seen_ended`
/// (when a poll saw no run in progress) is the fallback and the upper bound.
pub(super) fn wall_time(started: DateTime<Utc>, totals: &Totals, seen_ended: Duration) -> Duration {
    totals
        .last_finished
        .and_then(|end| (end - started).to_std().ok())
        .map_or(seen_ended, |w| w.min(seen_ended))
}

/// Fails unless every run completed, naming the statuses and the first error.
pub(super) fn check_completed(runs: usize, totals: &Totals, report: &Value) -> anyhow::Result<()> {
    let completed = totals.statuses.get("completed").copied().unwrap_or(0);
    anyhow::ensure!(
        completed == runs,
        "{completed} of {runs} runs completed (statuses {:?}); first error: {}\nreport: {report}",
        totals.statuses,
        totals.first_error.as_deref().unwrap_or("none")
    );
    Ok(())
}

/// The accepted runs' ids and how many 429s were retried.
struct Submitted {
    ids: Vec<String>,
    rejected: u64,
}

async fn submit_all(
    client: &reqwest::Client,
    base: &str,
    runs: usize,
    steps: usize,
) -> anyhow::Result<Submitted> {
    let answers: Vec<(String, u64)> = futures::stream::iter(0..runs)
        .map(|i| submit(client, base, format!("bench run {i} steps={steps}")))
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    let rejected = answers.iter().map(|(_, r)| r).sum();
    Ok(Submitted { ids: answers.into_iter().map(|(id, _)| id).collect(), rejected })
}

/// Submits one run, retrying after a 429's `Retry-After`; returns its id and the 429s met.
pub(super) async fn submit(
    client: &reqwest::Client,
    base: &str,
    task: String,
) -> anyhow::Result<(String, u64)> {
    let mut rejected = 0;
    loop {
        let resp = client.post(format!("{base}/v1/runs")).json(&json!({"task": task})).send().await?;
        let status = resp.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            rejected += 1;
            let secs = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
            tokio::time::sleep(Duration::from_secs(secs.unwrap_or(1))).await;
            continue;
        }
        let body: Value = resp.json().await.with_context(|| format!("submit: HTTP {status}"))?;
        anyhow::ensure!(status == reqwest::StatusCode::ACCEPTED, "submit: HTTP {status}: {body}");
        let id = body["id"].as_str().with_context(|| format!("submit: no id in {body}"))?;
        return Ok((id.to_owned(), rejected));
    }
}

/// Polls `GET /v1/runs?status=S&limit=1` until no run is planning or running.
pub(super) async fn wait_until_ended(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut busy = false;
        for status in IN_PROGRESS {
            let page: Value =
                client.get(format!("{base}/v1/runs?status={status}&limit=1")).send().await?.json().await?;
            busy |= page["runs"].as_array().is_some_and(|r| !r.is_empty());
        }
        if !busy {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "runs still in progress after {DEADLINE:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// What the runs' results add up to.
#[derive(Default)]
pub(super) struct Totals {
    /// Runs per status.
    pub statuses: BTreeMap<String, usize>,
    /// Steps of the runs' final plans.
    pub steps: u64,
    /// Model calls of all runs.
    pub llm_calls: u64,
    /// The first run error met, if any.
    pub first_error: Option<String>,
    /// The latest `finished_at`.
    pub last_finished: Option<DateTime<Utc>>,
}

/// Reads every run's result (`GET /v1/runs/{id}`) and adds them up.
pub(super) async fn read_back(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
) -> anyhow::Result<Totals> {
    Ok(Totals::of(&fetch_runs(client, base, ids).await?))
}

/// Every run's result (`GET /v1/runs/{id}`), in no particular order.
pub(super) async fn fetch_runs(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
) -> anyhow::Result<Vec<Value>> {
    futures::stream::iter(ids)
        .map(|id| async move {
            let resp = client.get(format!("{base}/v1/runs/{id}")).send().await?.error_for_status()?;
            anyhow::Ok(resp.json::<Value>().await?)
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
}

impl Totals {
    /// Adds up the runs' results.
    pub(super) fn of(results: &[Value]) -> Self {
        let mut totals = Totals::default();
        for r in results {
            *totals.statuses.entry(r["status"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
            totals.steps += r["plan"]["steps"].as_array().map_or(0, |s| s.len() as u64);
            totals.llm_calls += r["usage"]["llm_calls"].as_u64().unwrap_or(0);
            if totals.first_error.is_none() {
                totals.first_error = r["error"].as_str().map(str::to_owned);
            }
            if let Some(t) = finished_at(r) {
                totals.last_finished = totals.last_finished.max(Some(t));
            }
        }
        totals
    }
}

/// A run result's `finished_at`, if it has ended.
pub(super) fn finished_at(result: &Value) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(result["finished_at"].as_str()?).ok()?;
    Some(t.with_timezone(&Utc))
}

/// Where `cargo build --release --example fake_openai_server` puts the fake server, next to this
/// executable (`target/release/stepwise` → `target/release/examples/fake_openai_server`).
pub(crate) fn default_fake_server() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join("examples").join("fake_openai_server");
    path.exists().then_some(path)
}
