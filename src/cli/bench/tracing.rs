//! `tracing`: what OpenTelemetry export costs, as the median ratio of wall times with export on
//! and off for the same workload (each repetition on a fresh current-thread runtime with its own
//! subscriber, logs at `warn` plus the OTel layer when on), exporting OTLP/HTTP to a receiver on
//! 127.0.0.1 that discards what it gets; the flush at the end is included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use stepwise::PoolBounds;
use stepwise::Stepwise;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::RunStatus;

use super::{flat_script as overhead_script, median, pool_report};

/// One repetition of the overhead workload on the current runtime: the measured wall time.
async fn workload(
    runs: usize,
    steps: usize,
    pool: PoolBounds,
    latency: Duration,
) -> anyhow::Result<Duration> {
    let model = Arc::new(ScriptedModel::from_json(overhead_script(steps))?.with_latency(latency));
    let runtime = Stepwise::builder().model(model).executors(pool.min, pool.max).build().await?;
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
    pool: PoolBounds,
    latency: Duration,
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
        let wall = rt.block_on(workload(runs, steps, pool, latency))?;
        let flush = Instant::now();
        drop(pipeline.map(|p| p.into_guard()));
        Ok(wall + flush.elapsed())
    })
    .await?
}

/// Runs the `tracing` scenario and returns its JSON report.
pub(super) async fn run(
    runs: usize,
    steps: usize,
    pool: PoolBounds,
    reps: usize,
    latency: Duration,
) -> anyhow::Result<serde_json::Value> {
    let receiver = DiscardReceiver::start().await?;
    let settings = stepwise::telemetry::ExportSettings {
        endpoint: Some(receiver.url.clone()),
        protocol: stepwise::telemetry::OtlpProtocol::HttpProtobuf,
        service_name: "stepwise-bench".into(),
        resource_attributes: vec![],
        // Room for every span of a repetition (a run has a run, plan, synthesis and three chat
        // spans, a step a step and a chat span), so none is dropped, which would make export
        // look cheaper; and no more: the SDK preallocates its queue, and touching and freeing
        // an oversized one (1 << 20 slots is about 1 GiB) would be billed to export instead.
        max_queue_size: ((runs + 1) * (2 * steps + 8)).next_power_of_two(),
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        off.push(tracing_rep(runs, steps, pool, latency, None).await?.as_secs_f64() * 1e3);
        on.push(tracing_rep(runs, steps, pool, latency, Some(settings.clone())).await?.as_secs_f64() * 1e3);
    }
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    Ok(json!({
        "scenario": "tracing",
        "runs": runs,
        "steps_per_run": steps,
        "executor_pool": pool_report(&pool),
        "repetitions": off.len(),
        "latency_ms": latency.as_secs_f64() * 1e3,
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
