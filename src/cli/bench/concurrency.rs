//! `concurrency`: many runs at once at a fixed model latency: throughput and memory.

use serde_json::{Value, json};

use super::{Setup, diamond_script, pool_report, rss_kib, submit_and_wait};

/// `runs` runs of a 3-step plan submitted at once; RSS is read before and at the peak.
pub(super) async fn run(setup: &Setup, runs: usize) -> anyhow::Result<Value> {
    let (runtime, store) = setup.runtime(diamond_script(), setup.latency, setup.pool).await?;
    runtime.run("warm-up").await?;
    let (rss_before, _) = rss_kib();
    let (wall, completed) = submit_and_wait(&runtime, runs, "").await?;
    let (_, peak) = rss_kib();
    runtime.shutdown().await;
    let per_run = peak.zip(rss_before).map(|(p, b)| p.saturating_sub(b) as f64 / runs.max(1) as f64);
    Ok(json!({
        "scenario": "concurrency",
        "provider": setup.provider(),
        "store": store.name,
        "runs": runs,
        "completed_runs": completed,
        "latency_ms": setup.latency_ms(),
        "executor_pool": pool_report(&setup.pool),
        "wall_ms": wall.as_secs_f64() * 1e3,
        "runs_per_s": runs as f64 / wall.as_secs_f64(),
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak,
        "rss_per_run_kib": per_run,
    }))
}
