//! `stepwise bench`: repeatable performance scenarios, one JSON object per scenario on stdout.
//!
//! Every scenario runs the real actor system. By default the model is the scripted provider
//! (zero or fixed latency, so what is measured is stepwise itself); with `--provider openai`
//! (and `OPENAI_BASE_URL`) an external OpenAI-compatible server answers instead (every scenario
//! but `tracing`). Tasks then name the plan shape they expect (`steps=K`, `depth=D width=W`), which
//! `examples/fake_openai_server.rs` follows; the concurrency scenarios use its default 3-step plan.
//! `--stream-plan` sets `policy.stream_plan` on every run and says so in the report.
//!
//! - `overhead`: CPU and wall time per step at zero model latency, event store in memory or SQLite.
//! - `makespan`: a D×W layered plan at latency L, against its critical path and a 1-executor run.
//! - `concurrency`: R concurrent runs at latency L: wall time, runs/s, peak RSS, RSS per run.
//! - `http`: the concurrency scenario through the HTTP API, a timed load of submit + GET, and the
//!   memory a run awaiting approval holds.
//! - `tracing`: the overhead workload with OTLP export off and on.
//! - `serve`: the real `stepwise serve` binary as a child process with its default config,
//!   against the fake model server: R runs of a K-step plan over HTTP, the service's CPU time per
//!   step and per model call, its peak RSS (see `serve.rs`).
//! - `replicas`: 1, 2, 3 `serve` replicas sharing one Postgres (`--store-url`): throughput and
//!   speed-up per replica count, then the takeover time after one replica is killed (see
//!   `replicas.rs`).

mod child;
mod concurrency;
mod http;
mod load;
mod makespan;
mod overhead;
mod replicas;
mod serve;
mod tracing;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepwise::PoolBounds;
use stepwise::llm::Models;
use stepwise::llm::config::ProviderKind;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::options::RunOptions;
use stepwise::run::RunStatus;
use stepwise::store::RunStore;
use stepwise::{Runtime, Stepwise};

use super::{BenchArgs, BenchScenario, StoreArg, load_config};

/// Runs the chosen scenario and returns its report.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Value> {
    if args.scenario == BenchScenario::Serve {
        return serve::run(&serve_bench(args)?).await;
    }
    if args.scenario == BenchScenario::Replicas {
        return replicas::run(&replicas_bench(args)?).await;
    }
    anyhow::ensure!(
        args.fake_server.is_none() && args.model_url.is_none() && args.serve_exe.is_none(),
        "--fake-server, --model-url and --serve-exe are for the serve and replicas scenarios"
    );
    anyhow::ensure!(args.store_url.is_none(), "--store-url is for the replicas scenario");
    anyhow::ensure!(
        !args.plan_cache || matches!(args.scenario, BenchScenario::Makespan),
        "--plan-cache is for the makespan scenario"
    );
    let steps = args.steps.unwrap_or(DEFAULT_STEPS);
    let setup = Setup::new(args)?;
    let report = match args.scenario {
        BenchScenario::Overhead => overhead::run(&setup, args.runs, steps).await,
        BenchScenario::Makespan => makespan::run(&setup, args.depth, args.width, args.plan_cache).await,
        BenchScenario::Concurrency => concurrency::run(&setup, args.runs).await,
        BenchScenario::Http => http::run(&setup, args.runs, Duration::from_secs(args.load_secs)).await,
        BenchScenario::Tracing => {
            anyhow::ensure!(!args.stream_plan, "the tracing scenario does not take --stream-plan");
            let latency = Duration::from_millis(args.latency_ms.unwrap_or(0));
            return tracing::run(args.runs, steps, executor_pool(args.pool), args.reps, latency).await;
        }
        BenchScenario::Serve | BenchScenario::Replicas => unreachable!("handled above"),
    }?;
    Ok(setup.annotate(report))
}

/// Steps per run of `overhead` and `tracing` unless `--steps` says otherwise.
const DEFAULT_STEPS: usize = 10;
/// Steps per run of `serve` and `replicas` unless `--steps` says otherwise.
const DEFAULT_SERVE_STEPS: usize = 2;

/// The `serve` scenario's inputs from the flags.
fn serve_bench(args: &BenchArgs) -> anyhow::Result<serve::ServeBench> {
    Ok(serve::ServeBench {
        runs: args.runs,
        steps: args.steps.unwrap_or(DEFAULT_SERVE_STEPS),
        latency_ms: args.latency_ms,
        server: model_server(args, "serve")?,
        model: args.model.model.clone().unwrap_or_else(|| "fake".into()),
        config: args.model.config.clone(),
        serve_exe: args.serve_exe.clone(),
    })
}

/// The `replicas` scenario's inputs from the flags.
fn replicas_bench(args: &BenchArgs) -> anyhow::Result<replicas::ReplicasBench> {
    let store_url = args.store_url.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "the replicas scenario needs --store-url postgres://… (the database the replicas share)"
        )
    })?;
    anyhow::ensure!(
        !args.replicas.is_empty() && !args.replicas.contains(&0),
        "--replicas takes replica counts of at least 1, e.g. 1,2,3"
    );
    anyhow::ensure!(args.max_workers > 0, "--max-workers must be at least 1");
    anyhow::ensure!(args.lease_ttl_secs > 0, "--lease-ttl-secs must be at least 1");
    Ok(replicas::ReplicasBench {
        store_url,
        replicas: args.replicas.clone(),
        runs: args.runs,
        steps: args.steps.unwrap_or(DEFAULT_SERVE_STEPS),
        max_workers: args.max_workers,
        lease_ttl_secs: args.lease_ttl_secs,
        latency_ms: args.latency_ms,
        server: model_server(args, "replicas")?,
        model: args.model.model.clone().unwrap_or_else(|| "fake".into()),
        config: args.model.config.clone(),
        serve_exe: args.serve_exe.clone(),
    })
}

/// The model server of the scenarios that run the `serve` binary (`scenario` names it in
/// errors): `--model-url`, else the `--fake-server` binary, else the fake server built beside
/// this executable.
fn model_server(args: &BenchArgs, scenario: &str) -> anyhow::Result<serve::ModelServer> {
    let m = &args.model;
    anyhow::ensure!(
        m.provider.is_none_or(|p| p == super::ProviderArg::Openai)
            && m.script.is_none()
            && m.record.is_none(),
        "the {scenario} scenario always runs `serve --provider openai`; --script and --record do not apply"
    );
    anyhow::ensure!(!args.stream_plan, "the {scenario} scenario runs the default config: no --stream-plan");
    Ok(match (&args.model_url, &args.fake_server) {
        (Some(url), _) => serve::ModelServer::Running(url.trim_end_matches('/').to_owned()),
        (None, Some(path)) => serve::ModelServer::Start(path.clone()),
        (None, None) => serve::ModelServer::Start(serve::default_fake_server().ok_or_else(|| {
            anyhow::anyhow!(
                "no model server: build it with `cargo build --release --example fake_openai_server` \
                 (found beside this executable), or pass --fake-server PATH or --model-url URL"
            )
        })?),
    })
}

/// The executor pool of a bench runtime: `--pool N` fixes it at N workers; without it, the
/// runtime's default bounds (what a service gets).
fn executor_pool(fixed: Option<usize>) -> PoolBounds {
    fixed.map_or_else(PoolBounds::default, PoolBounds::fixed)
}

/// The pool's bounds as reports show them.
fn pool_report(pool: &PoolBounds) -> Value {
    json!({"min_workers": pool.min, "max_workers": pool.max})
}

/// How a scenario builds its runtimes.
pub(crate) struct Setup {
    /// The configured provider's models and its name, when `--provider` names a network provider.
    external: Option<(Models, &'static str)>,
    pool: PoolBounds,
    latency: Duration,
    /// `--latency-ms` as given: with an external server, only the user knows its latency.
    latency_arg: Option<u64>,
    store: StoreArg,
    /// `--stream-plan`: runs stream their plan (`policy.stream_plan`).
    stream_plan: bool,
}

impl Setup {
    fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let external = match args.model.provider {
            Some(p) if p != super::ProviderArg::Scripted => {
                let cfg = load_config(&args.model)?;
                anyhow::ensure!(cfg.llm.provider != ProviderKind::Scripted, "unexpected scripted provider");
                let models =
                    stepwise::llm::providers::build_models(&cfg.llm, &stepwise::llm::providers::process_env)?;
                let name = match p {
                    super::ProviderArg::Anthropic => "anthropic",
                    _ => "openai",
                };
                Some((models, name))
            }
            _ => None,
        };
        Ok(Self {
            external,
            pool: executor_pool(args.pool),
            latency: Duration::from_millis(args.latency_ms.unwrap_or(50)),
            latency_arg: args.latency_ms,
            store: args.store,
            stream_plan: args.stream_plan,
        })
    }

    /// `provider` for reports.
    fn provider(&self) -> &'static str {
        self.external.as_ref().map_or("scripted", |(_, name)| name)
    }

    /// The model latency for reports: the scripted model's, or what `--latency-ms` says of an
    /// external server (null when not given, since it is not known).
    fn latency_ms(&self) -> Option<f64> {
        match self.external {
            Some(_) => self.latency_arg.map(|ms| ms as f64),
            None => Some(self.latency.as_secs_f64() * 1e3),
        }
    }

    /// Adds `"stream_plan": true` to a report when the runs streamed their plans.
    fn annotate(&self, mut report: Value) -> Value {
        if self.stream_plan {
            report["stream_plan"] = json!(true);
        }
        report
    }

    /// A runtime whose scripted model follows `script` at `latency` (or the external models).
    async fn runtime(
        &self,
        script: Value,
        latency: Duration,
        pool: PoolBounds,
    ) -> anyhow::Result<(Runtime, StoreGuard)> {
        self.runtime_streaming(script, latency, pool, self.stream_plan).await
    }

    /// [`Setup::runtime_streaming`] with the plan cache on within `bounds`.
    async fn runtime_cached(
        &self,
        script: Value,
        pool: PoolBounds,
        stream_plan: bool,
        bounds: stepwise::store::plan_cache::PlanCacheBounds,
    ) -> anyhow::Result<(Runtime, StoreGuard)> {
        self.build(script, self.latency, pool, stream_plan, Some(bounds)).await
    }

    /// [`Setup::runtime`] with `stream_plan` chosen by the scenario (to compare both ways).
    async fn runtime_streaming(
        &self,
        script: Value,
        latency: Duration,
        pool: PoolBounds,
        stream_plan: bool,
    ) -> anyhow::Result<(Runtime, StoreGuard)> {
        self.build(script, latency, pool, stream_plan, None).await
    }

    async fn build(
        &self,
        script: Value,
        latency: Duration,
        pool: PoolBounds,
        stream_plan: bool,
        plan_cache: Option<stepwise::store::plan_cache::PlanCacheBounds>,
    ) -> anyhow::Result<(Runtime, StoreGuard)> {
        let models = match &self.external {
            Some((m, _)) => m.clone(),
            None => Models::uniform(Arc::new(ScriptedModel::from_json(script)?.with_latency(latency))),
        };
        let guard = StoreGuard::open(self.store).await?;
        let mut options = RunOptions::default();
        options.policy.stream_plan = stream_plan;
        let mut builder = Stepwise::builder()
            .models(models)
            .options(options)
            .executors(pool.min, pool.max)
            .llm_concurrency(4096)
            .plan_cache(plan_cache);
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
/// `shape` ends each task (e.g. `steps=10`): an external fake server reads the plan shape from it.
async fn submit_and_wait(runtime: &Runtime, runs: usize, shape: &str) -> anyhow::Result<(Duration, usize)> {
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(runs);
    for i in 0..runs {
        handles.push(runtime.submit(format!("bench run {i} {shape}").trim_end()).await?);
    }
    let results = futures::future::join_all(handles.iter().map(|h| h.result())).await;
    let completed =
        results.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == RunStatus::Completed)).count();
    Ok((t0.elapsed(), completed))
}

/// This process's CPU time (user + system) in microseconds, or None where /proc is unavailable.
fn cpu_time_us() -> Option<u64> {
    child::cpu_time_us("self")
}

/// This process's resident set size now and at its peak, in KiB (Linux /proc).
fn rss_kib() -> (Option<u64>, Option<u64>) {
    child::rss_kib("self")
}

/// Bytes the allocator has handed out and not taken back (glibc's `mallinfo2`, over every
/// arena). Unlike RSS it sees memory that new runs reuse from runs that already ended.
fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
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
