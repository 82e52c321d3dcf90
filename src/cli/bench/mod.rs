//! `stepwise bench`: repeatable performance scenarios, one JSON object per scenario on stdout.
//!
//! Every scenario runs the real actor system. By default the model is the scripted provider
//! (zero or fixed latency, so what is measured is stepwise itself); with `--provider openai`
//! (and `OPENAI_BASE_URL`) an external OpenAI-compatible server answers instead, for the
//! scenarios whose plan shape does not matter (overhead, concurrency, http).
//!
//! - `overhead`: CPU and wall time per step at zero model latency, event store in memory or SQLite.
//! - `makespan`: a D×W layered plan at latency L, against its critical path and a 1-executor run.
//! - `concurrency`: R concurrent runs at latency L: wall time, runs/s, peak RSS, RSS per run.
//! - `http`: the concurrency scenario through the HTTP API, a timed load of submit + GET, and the
//!   memory a run awaiting approval holds.
//! - `tracing`: the overhead workload with OTLP export off and on.

mod concurrency;
mod http;
mod makespan;
mod overhead;
mod tracing;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepwise::llm::Models;
use stepwise::llm::config::ProviderKind;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::RunStatus;
use stepwise::store::RunStore;
use stepwise::{Runtime, Stepwise};

use super::{BenchArgs, BenchScenario, StoreArg, load_config};

/// Runs the chosen scenario and returns its report.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Value> {
    let setup = Setup::new(args)?;
    match args.scenario {
        BenchScenario::Overhead => overhead::run(&setup, args.runs, args.steps).await,
        BenchScenario::Makespan => makespan::run(&setup, args.depth, args.width).await,
        BenchScenario::Concurrency => concurrency::run(&setup, args.runs).await,
        BenchScenario::Http => http::run(&setup, args.runs, Duration::from_secs(args.load_secs)).await,
        BenchScenario::Tracing => {
            let latency = Duration::from_millis(args.latency_ms.unwrap_or(0));
            tracing::run(args.runs, args.steps, args.pool, args.reps, latency).await
        }
    }
}

/// How a scenario builds its runtimes.
pub(crate) struct Setup {
    /// The configured provider's models, when `--provider` names a network provider.
    external: Option<Models>,
    pool: usize,
    latency: Duration,
    store: StoreArg,
}

impl Setup {
    fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let external = match args.model.provider {
            Some(p) if p != super::ProviderArg::Scripted => {
                let cfg = load_config(&args.model)?;
                anyhow::ensure!(cfg.llm.provider != ProviderKind::Scripted, "unexpected scripted provider");
                Some(stepwise::llm::providers::build_models(
                    &cfg.llm,
                    &stepwise::llm::providers::process_env,
                )?)
            }
            _ => None,
        };
        Ok(Self {
            external,
            pool: args.pool,
            latency: Duration::from_millis(args.latency_ms.unwrap_or(50)),
            store: args.store,
        })
    }

    /// `provider` for reports.
    fn provider(&self) -> &'static str {
        if self.external.is_some() { "external" } else { "scripted" }
    }

    /// A runtime whose scripted model follows `script` at `latency` (or the external models).
    async fn runtime(
        &self,
        script: Value,
        latency: Duration,
        pool: usize,
    ) -> anyhow::Result<(Runtime, StoreGuard)> {
        let models = match &self.external {
            Some(m) => m.clone(),
            None => Models::uniform(Arc::new(ScriptedModel::from_json(script)?.with_latency(latency))),
        };
        let guard = StoreGuard::open(self.store).await?;
        let mut builder = Stepwise::builder().models(models).executor_pool_size(pool).llm_concurrency(4096);
        if let Some(store) = &guard.store {
            builder = builder.store(store.clone());
        }
        Ok((builder.build().await?, guard))
    }
}

/// The bench's event store; a SQLite file lives in a temp dir removed on drop.
pub(crate) struct StoreGuard {
    store: Option<Arc<dyn RunStore>>,
    _dir: Option<tempfile::TempDir>,
    name: &'static str,
}

impl StoreGuard {
    async fn open(kind: StoreArg) -> anyhow::Result<Self> {
        Ok(match kind {
            StoreArg::Memory => Self { store: None, _dir: None, name: "memory" },
            StoreArg::Sqlite => {
                let dir = tempfile::tempdir()?;
                let store =
                    stepwise::store::sqlite::SqliteStore::open_path(&dir.path().join("bench.db")).await?;
                Self { store: Some(Arc::new(store)), _dir: Some(dir), name: "sqlite" }
            }
        })
    }
}

/// A plan of independent steps, one answer per step.
fn flat_script(steps: usize) -> Value {
    let plan_steps: Vec<_> = (0..steps)
        .map(|i| json!({"id": format!("s{i}"), "description": format!("step {i}"), "expected_outcome": "", "tool": null, "depends_on": []}))
        .collect();
    json!({
        "planner": [{"json": {"goal": "bench", "steps": plan_steps}}],
        "executor": ["done"],
        "synthesizer": ["merged"],
        "model": "bench"
    })
}

/// The 3-step plan of the concurrency scenarios: two steps in parallel, then one after both.
fn diamond_script() -> Value {
    json!({
        "planner": [{"json": {"goal": "bench", "steps": [
            {"id": "a", "description": "first", "expected_outcome": "", "tool": null, "depends_on": []},
            {"id": "b", "description": "second", "expected_outcome": "", "tool": null, "depends_on": []},
            {"id": "c", "description": "merge", "expected_outcome": "", "tool": null, "depends_on": ["a", "b"]}
        ]}}],
        "executor": ["done"],
        "synthesizer": ["merged"],
        "model": "bench"
    })
}

/// Submits `runs` tasks at once and waits for all; returns the wall time and how many completed.
async fn submit_and_wait(runtime: &Runtime, runs: usize) -> anyhow::Result<(Duration, usize)> {
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(runs);
    for i in 0..runs {
        handles.push(runtime.submit(&format!("bench run {i}")).await?);
    }
    let results = futures::future::join_all(handles.iter().map(|h| h.result())).await;
    let completed =
        results.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == RunStatus::Completed)).count();
    Ok((t0.elapsed(), completed))
}

/// Process CPU time (user + system) in microseconds, or None where /proc is unavailable.
fn cpu_time_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s (USER_HZ) on every mainstream configuration.
    Some((utime + stime) * 10_000)
}

/// Resident set size now and at its peak, in KiB (Linux /proc).
fn rss_kib() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
