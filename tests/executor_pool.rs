//! The executor pool follows the work: with the default bounds many steps run at once, an idle
//! pool gives its workers back, and a crashing step leaves the pool's counters right.
//!
//! Concurrency is observed, not inferred from wall time: a gate holds every executor model call
//! until the test releases it, so the number of calls held at once is the number of steps
//! running at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepwise::ExecutorLoad;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::llm::{AgentRole, ChatModel, ChatRequest, ChatResponse, LlmError};
use stepwise::options::{FailurePolicy, RunOptions};
use stepwise::run::RunStatus;
use stepwise::{Runtime, RuntimeBuilder, Stepwise};
use tokio::sync::watch;

/// How long a test waits for something it expects before failing.
const PATIENCE: Duration = Duration::from_secs(60);

/// Holds every executor call until released (or [`PATIENCE`] has passed, so a pool too small
/// fails the test instead of hanging it), counting how many are held at once.
struct Gate {
    inner: ScriptedModel,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    release: watch::Sender<bool>,
}

impl Gate {
    fn new(script: Value) -> Arc<Self> {
        Arc::new(Self {
            inner: ScriptedModel::from_json(script).expect("script"),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            release: watch::channel(false).0,
        })
    }

    /// Waits until `n` executor calls are held at once; false if they never are.
    async fn wait_for_held(&self, n: usize) -> bool {
        eventually(|| self.in_flight.load(Ordering::SeqCst) >= n).await
    }

    fn open(&self) {
        self.release.send_replace(true);
    }
}

/// Decrements the in-flight count however the call ends.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl ChatModel for Gate {
    fn model_name(&self) -> &str {
        "gate"
    }
    fn provider(&self) -> &str {
        "scripted"
    }
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        if request.context.role != AgentRole::Executor {
            return self.inner.chat(request).await;
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _held = Held(&self.in_flight);
        self.peak.fetch_max(now, Ordering::SeqCst);
        let mut open = self.release.subscribe();
        let _ = tokio::time::timeout(PATIENCE, open.wait_for(|open| *open)).await;
        self.inner.chat(request).await
    }
}

/// Polls `condition` every 10 ms for up to [`PATIENCE`].
async fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Every run plans one step, which the executor answers, then a synthesis.
fn one_step_script() -> Value {
    json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "wait on the model", "expected_outcome": "", "tool": null, "depends_on": []}
        ]}}],
        "executor": ["done"],
        "synthesizer": ["merged"]
    })
}

fn builder(model: Arc<Gate>) -> RuntimeBuilder {
    Stepwise::builder().model(model).workspace_root(tempfile::tempdir().unwrap().keep())
}

/// Submits `runs` runs and returns their handles.
async fn submit(rt: &Runtime, runs: usize) -> Vec<stepwise::RunHandle> {
    let mut handles = Vec::with_capacity(runs);
    for i in 0..runs {
        handles.push(rt.submit(&format!("run {i}")).await.unwrap());
    }
    handles
}

async fn assert_all_completed(handles: &[stepwise::RunHandle]) {
    for h in handles {
        let r = h.result().await.unwrap();
        assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    }
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(&format!("{name} "))).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_default_bounds_every_ready_step_runs_at_once() {
    const RUNS: usize = 64;
    let gate = Gate::new(one_step_script());
    let rt = builder(gate.clone()).build().await.unwrap();
    let handles = submit(&rt, RUNS).await;

    let all_held = gate.wait_for_held(RUNS).await;
    let load = rt.executor_load();
    let metrics = stepwise::telemetry::metrics::prometheus_text();
    gate.open();
    assert!(all_held, "only {} steps ran at once", gate.peak.load(Ordering::SeqCst));
    assert_eq!((load.busy, load.queued), (RUNS, 0), "{load:?}");
    assert!(load.workers >= RUNS && load.workers <= 512, "{load:?}");
    // The process-wide gauges sum every runtime of this test binary: at least this one's.
    assert!(gauge(&metrics, "stepwise_executors_busy").is_some_and(|b| b >= RUNS as f64), "{metrics}");
    assert!(gauge(&metrics, "stepwise_executors_queued").is_some(), "{metrics}");
    assert!(gauge(&metrics, "stepwise_executors_idle").is_some(), "{metrics}");

    assert_all_completed(&handles).await;
    assert_eq!(gate.peak.load(Ordering::SeqCst), RUNS);
    let load = rt.executor_load();
    assert_eq!((load.busy, load.queued), (0, 0), "{load:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_pool_shrinks_back_to_its_minimum() {
    const RUNS: usize = 16;
    let gate = Gate::new(one_step_script());
    let rt = builder(gate.clone())
        .executors(2, 64)
        .executor_shrink_after(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    assert_eq!(rt.executor_load(), ExecutorLoad { workers: 2, busy: 0, queued: 0 });
    let handles = submit(&rt, RUNS).await;
    let all_held = gate.wait_for_held(RUNS).await;
    let grown = rt.executor_load().workers;
    gate.open();
    assert!(all_held, "only {} steps ran at once", gate.peak.load(Ordering::SeqCst));
    assert!(grown >= RUNS, "the pool did not grow: {grown} workers");
    assert_all_completed(&handles).await;

    let shrunk = eventually(|| rt.executor_load().workers == 2).await;
    assert!(shrunk, "still {:?}", rt.executor_load());
    // And it stays at the minimum.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rt.executor_load(), ExecutorLoad { workers: 2, busy: 0, queued: 0 });
    rt.shutdown().await;
}

#[tokio::test]
async fn a_step_that_crashes_its_worker_leaves_the_counters_right() {
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "crash once", "expected_outcome": "", "tool": null, "depends_on": []}
        ]}}],
        "steps": {"s1": [{"panic": "executor bug"}, "fine"]},
        "synthesizer": ["done"]
    });
    let mut options = RunOptions::default();
    options.policy.on_step_failure = FailurePolicy::Retry;
    options.policy.max_retries = 1;
    let gate = Gate::new(script);
    gate.open();
    let rt = builder(gate).executors(1, 1).options(options).build().await.unwrap();
    let r = rt.run("crash").await.unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_eq!(r.plan.steps[0].attempts, 2);
    assert_eq!(rt.executor_load(), ExecutorLoad { workers: 1, busy: 0, queued: 0 });
    rt.shutdown().await;
}
