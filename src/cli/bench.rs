//! `stepwise bench`: repeatable performance scenarios, one JSON object per scenario on stdout.
//!
//! `overhead` measures what the orchestration itself costs per step: a zero-latency scripted
//! model, N concurrent runs of K independent steps, CPU time of the whole process (user+system,
//! from /proc/self/stat) and wall time, divided by the number of steps.
//!
//! `tracing` measures what OpenTelemetry export costs: the `overhead` workload, repeated with
//! export off and on alternately (each repetition on a fresh current-thread runtime with its own
//! subscriber, mirroring `stepwise run`: logs at `warn`, plus the OTel layer when on), exporting
//! OTLP/HTTP to a receiver on 127.0.0.1 that discards what it gets. Reports the median ratio of
//! wall times (on / off), the flush at the end included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use stepwise::Stepwise;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::RunStatus;

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

/// The zero-latency script: a plan of `steps` independent steps, one answer per step.
fn overhead_script(steps: usize) -> serde_json::Value {
    let plan_steps: Vec<_> = (0..steps)
        .map(|i| json!({"id": format!("s{i}"), "description": format!("step {i}"), "expected_outcome": "", "tool": null, "depends_on": []}))
        .collect();
    json!({
        "planner": [{"json": {"goal": "bench", "steps": plan_steps}}],
        "executor": ["done"],
        "synthesizer": ["merged"],
        "model": "bench-zero-latency"
    })
}

/// Runs the `overhead` scenario and returns its JSON report.
pub async fn overhead(runs: usize, steps: usize, pool: usize) -> anyhow::Result<serde_json::Value> {
    let model = Arc::new(ScriptedModel::from_json(overhead_script(steps))?);
    let runtime = Stepwise::builder().model(model).executor_pool_size(pool).build().await?;
    // Warm-up, so allocation of the pools and first-use costs are not counted.
    runtime.run("warm-up").await?;
    let cpu0 = cpu_time_us();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(runs);
    for i in 0..runs {
        handles.push(runtime.submit(&format!("bench run {i}")).await?);
    }
    let mut completed = 0;
    for h in &handles {
        if h.result().await?.status == RunStatus::Completed {
            completed += 1;
        }
    }
    let wall = t0.elapsed();
    let cpu = cpu_time_us().zip(cpu0).map(|(a, b)| a.saturating_sub(b));
    runtime.shutdown().await;
    let total_steps = (runs * steps) as f64;
    Ok(json!({
        "scenario": "overhead",
        "store": "memory",
        "runs": runs,
        "steps_per_run": steps,
        "executor_pool": pool,
        "completed_runs": completed,
        "wall_ms": wall.as_secs_f64() * 1e3,
        "wall_us_per_step": wall.as_secs_f64() * 1e6 / total_steps,
        "cpu_us_per_step": cpu.map(|c| c as f64 / total_steps),
        "note": "per step includes its share of planning and synthesis (one planner and one synthesizer call per run)"
    }))
}

/// One repetition of the overhead workload on the current runtime: the measured wall time.
async fn workload(runs: usize, steps: usize, pool: usize) -> anyhow::Result<Duration> {
    let model = Arc::new(ScriptedModel::from_json(overhead_script(steps))?);
    let runtime = Stepwise::builder().model(model).executor_pool_size(pool).build().await?;
    runtime.run("warm-up").await?;
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(runs);
    for i in 0..runs {
        handles.push(runtime.submit(&format!("bench run {i}")).await?);
    }
    for h in &handles {
        let status = h.result().await?.status;
        anyhow::ensure!(status == RunStatus::Completed, "a bench run ended {}", status.as_str());
    }
    let wall = t0.elapsed();
    runtime.shutdown().await;
    Ok(wall)
}

/// A local OTLP/HTTP receiver that accepts and discards everything, counting what it got.
struct DiscardReceiver {
    url: String,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl DiscardReceiver {
    async fn start() -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (r, b) = (requests.clone(), bytes.clone());
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            r.fetch_add(1, Ordering::Relaxed);
            b.fetch_add(body.len() as u64, Ordering::Relaxed);
            // An empty protobuf message is a valid Export*ServiceResponse.
            async { ([("content-type", "application/x-protobuf")], Vec::<u8>::new()) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, requests, bytes })
    }
}

/// One repetition on its own thread and current-thread runtime, with export off or on; the
/// thread-local subscriber keeps the two variants apart in one process.
async fn tracing_rep(
    runs: usize,
    steps: usize,
    pool: usize,
    export: Option<stepwise::telemetry::ExportSettings>,
) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let pipeline = match &export {
            Some(settings) => stepwise::telemetry::build_pipeline(settings)?,
            None => None,
        };
        // As `stepwise run` sets it up: logs at warn (to a sink here), the OTel layer when on.
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::EnvFilter::new("warn"));
        let subscriber = tracing_subscriber::registry().with(logs).with(pipeline.as_ref().map(|p| p.layer()));
        let _default = tracing::subscriber::set_default(subscriber);
        let wall = rt.block_on(workload(runs, steps, pool))?;
        let flush = Instant::now();
        drop(pipeline.map(|p| p.into_guard()));
        Ok(wall + flush.elapsed())
    })
    .await?
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

/// Runs the `tracing` scenario and returns its JSON report.
pub async fn tracing(
    runs: usize,
    steps: usize,
    pool: usize,
    reps: usize,
) -> anyhow::Result<serde_json::Value> {
    let receiver = DiscardReceiver::start().await?;
    let settings = stepwise::telemetry::ExportSettings {
        endpoint: Some(receiver.url.clone()),
        protocol: stepwise::telemetry::OtlpProtocol::HttpProtobuf,
        service_name: "stepwise-bench".into(),
        resource_attributes: vec![],
        // Large enough that no span is dropped: a dropped span would make export look cheaper.
        max_queue_size: 1 << 20,
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        off.push(tracing_rep(runs, steps, pool, None).await?.as_secs_f64() * 1e3);
        on.push(tracing_rep(runs, steps, pool, Some(settings.clone())).await?.as_secs_f64() * 1e3);
    }
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    Ok(json!({
        "scenario": "tracing",
        "runs": runs,
        "steps_per_run": steps,
        "executor_pool": pool,
        "repetitions": off.len(),
        "wall_ms_export_off": off,
        "wall_ms_export_on": on,
        "median_wall_ms_export_off": median(&off),
        "median_wall_ms_export_on": median(&on),
        "median_ratio_on_over_off": median(&ratios),
        "otlp_requests_received": receiver.requests.load(Ordering::Relaxed),
        "otlp_bytes_received": receiver.bytes.load(Ordering::Relaxed),
        "note": "OTLP/HTTP to a local receiver that discards; wall time includes the final flush"
    }))
}
