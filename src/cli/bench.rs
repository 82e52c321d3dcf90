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

/// A plan of `depth` layers of `width` steps; every step of a layer depends on every step of the
/// layer before, so the critical path is one step per layer.
fn layered_script(depth: usize, width: usize) -> serde_json::Value {
    let mut steps = Vec::with_capacity(depth * width);
    for d in 0..depth {
        for w in 0..width {
            let deps: Vec<String> =
                if d == 0 { vec![] } else { (0..width).map(|p| format!("l{}w{p}", d - 1)).collect() };
            steps.push(json!({"id": format!("l{d}w{w}"), "description": format!("layer {d} step {w}"),
                              "expected_outcome": "", "tool": null, "depends_on": deps}));
        }
    }
    json!({
        "planner": [{"json": {"goal": "bench", "steps": steps}}],
        "executor": ["done"],
        "synthesizer": ["merged"],
        "model": "bench-fixed-latency"
    })
}

async fn one_run_ms(script: serde_json::Value, latency_ms: u64, pool: usize) -> anyhow::Result<f64> {
    let model = ScriptedModel::from_json(script)?.with_latency(std::time::Duration::from_millis(latency_ms));
    let runtime = Stepwise::builder().model(Arc::new(model)).executor_pool_size(pool).build().await?;
    let t0 = Instant::now();
    let result = runtime.run("makespan").await?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    runtime.shutdown().await;
    anyhow::ensure!(result.status == RunStatus::Completed, "bench run did not complete: {:?}", result.error);
    Ok(ms)
}

/// `makespan`: one run of a `depth`×`width` plan at a fixed latency per model call, against the
/// critical-path bound and against the same plan on a single executor.
pub async fn makespan(
    depth: usize,
    width: usize,
    latency_ms: u64,
    pool: usize,
) -> anyhow::Result<serde_json::Value> {
    let script = layered_script(depth, width);
    let measured = one_run_ms(script.clone(), latency_ms, pool).await?;
    let sequential = one_run_ms(script, latency_ms, 1).await?;
    // One plan call, one call per layer on the critical path, one synthesis call.
    let bound = (depth as f64 + 2.0) * latency_ms as f64;
    Ok(json!({
        "scenario": "makespan",
        "depth": depth,
        "width": width,
        "latency_ms": latency_ms,
        "executor_pool": pool,
        "makespan_ms": measured,
        "critical_path_ms": bound,
        "ratio_to_bound": measured / bound,
        "sequential_ms": sequential,
        "speedup_over_sequential": sequential / measured,
    }))
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

/// `concurrency`: `runs` runs submitted at once (a 3-step plan, two steps in parallel) at a fixed
/// latency per model call; wall time, throughput and memory.
pub async fn concurrency(runs: usize, latency_ms: u64, pool: usize) -> anyhow::Result<serde_json::Value> {
    let script = json!({
        "planner": [{"json": {"goal": "bench", "steps": [
            {"id": "a", "description": "first", "expected_outcome": "", "tool": null, "depends_on": []},
            {"id": "b", "description": "second", "expected_outcome": "", "tool": null, "depends_on": []},
            {"id": "c", "description": "merge", "expected_outcome": "", "tool": null, "depends_on": ["a", "b"]}
        ]}}],
        "executor": ["done"],
        "synthesizer": ["merged"],
        "model": "bench-fixed-latency"
    });
    let model = ScriptedModel::from_json(script)?.with_latency(std::time::Duration::from_millis(latency_ms));
    let runtime = Stepwise::builder()
        .model(Arc::new(model))
        .executor_pool_size(pool)
        .llm_concurrency(runs.max(1))
        .build()
        .await?;
    runtime.run("warm-up").await?;
    let (rss_before, _) = rss_kib();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(runs);
    for i in 0..runs {
        handles.push(runtime.submit(&format!("run {i}")).await?);
    }
    let results = futures::future::join_all(handles.iter().map(|h| h.result())).await;
    let wall = t0.elapsed();
    let completed =
        results.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == RunStatus::Completed)).count();
    let (_, peak) = rss_kib();
    drop(handles);
    runtime.shutdown().await;
    let per_run = peak.zip(rss_before).map(|(p, b)| p.saturating_sub(b) as f64 / runs.max(1) as f64);
    Ok(json!({
        "scenario": "concurrency",
        "runs": runs,
        "completed_runs": completed,
        "latency_ms": latency_ms,
        "executor_pool": pool,
        "wall_ms": wall.as_secs_f64() * 1e3,
        "runs_per_s": runs as f64 / wall.as_secs_f64(),
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak,
        "rss_per_run_kib": per_run,
        "note": "memory store: every event of every run stays in memory for the process's life"
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
