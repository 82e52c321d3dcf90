//! `makespan`: a layered plan at a fixed model latency, against its critical path.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepwise::run::RunStatus;

use stepwise::PoolBounds;
use stepwise::store::plan_cache::PlanCacheBounds;

use super::{Setup, pool_report};

/// `depth` layers of `width` steps; every step of a layer depends on every step of the layer
/// before, so the critical path holds one step per layer.
fn layered_script(depth: usize, width: usize) -> Value {
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
        "model": "bench"
    })
}

async fn one_run(
    setup: &Setup,
    script: Value,
    task: &str,
    pool: PoolBounds,
    stream_plan: bool,
) -> anyhow::Result<Duration> {
    let (runtime, _store) = setup.runtime_streaming(script, setup.latency, pool, stream_plan).await?;
    let t0 = Instant::now();
    let result = runtime.run(task).await?;
    let wall = t0.elapsed();
    runtime.shutdown().await;
    anyhow::ensure!(result.status == RunStatus::Completed, "bench run did not complete: {:?}", result.error);
    Ok(wall)
}

/// One run on the pool, one on a single executor (and with `--stream-plan`, one on the pool
/// without streaming, for the gain); the bound is one plan call, one call per layer
/// and one synthesis call, each at the model latency. With an external model the task carries the
/// plan shape (`depth=D width=W`, which the fake server follows) and `--latency-ms` must state the
/// server's latency, since the bound depends on it.
pub(super) async fn run(
    setup: &Setup,
    depth: usize,
    width: usize,
    plan_cache: bool,
) -> anyhow::Result<Value> {
    let latency_ms = setup.latency_ms().ok_or_else(|| {
        anyhow::anyhow!(
            "makespan --provider {} needs --latency-ms: the server's per-call latency, which the \
             critical-path bound is computed from",
            setup.provider()
        )
    })?;
    let script = layered_script(depth, width);
    let script_for_cache = script.clone();
    let task = format!("makespan depth={depth} width={width}");
    let stream = setup.stream_plan;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let measured = ms(one_run(setup, script.clone(), &task, setup.pool, stream).await?);
    let sequential = ms(one_run(setup, script.clone(), &task, PoolBounds::fixed(1), stream).await?);
    let bound = (depth as f64 + 2.0) * latency_ms;
    let mut report = json!({
        "scenario": "makespan",
        "provider": setup.provider(),
        "depth": depth,
        "width": width,
        "latency_ms": latency_ms,
        "executor_pool": pool_report(&setup.pool),
        "completed_runs": 2,
        "makespan_ms": measured,
        "critical_path_ms": bound,
        "ratio_to_bound": measured / bound,
        "sequential_ms": sequential,
        "speedup_over_sequential": sequential / measured,
    });
    if stream {
        // The same plan without streaming, for the gain: steps of the first layer start while
        // the plan is still being written, so the bound (which waits for the whole plan) can be
        // beaten by up to one model call.
        let whole = ms(one_run(setup, script, &task, setup.pool, false).await?);
        report["completed_runs"] = json!(3);
        report["makespan_without_streaming_ms"] = json!(whole);
        report["streaming_gain_ms"] = json!(whole - measured);
    }
    if plan_cache {
        report["plan_cache"] = cached_pair(setup, script_for_cache, &task, stream).await?;
        let runs = report["completed_runs"].as_u64().unwrap_or(0);
        report["completed_runs"] = json!(runs + 2);
    }
    Ok(report)
}

/// Lookups timed for the hit's cost.
const LOOKUPS: u32 = 200;

/// The task twice on one runtime with the plan cache on: the first run plans (a miss) and leaves
/// its plan, the second reuses it. The gain should be about one planner call (one model latency);
/// the hit's cost is the store lookup that replaced it, timed alone over [`LOOKUPS`] calls.
async fn cached_pair(setup: &Setup, script: Value, task: &str, stream: bool) -> anyhow::Result<Value> {
    let bounds = PlanCacheBounds { max_entries: 1000, ttl: Duration::from_secs(3600) };
    let (runtime, _store) = setup.runtime_cached(script, setup.pool, stream, bounds).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut walls = Vec::with_capacity(2);
    let mut ids = Vec::with_capacity(2);
    for _ in 0..2 {
        let t0 = Instant::now();
        let result = runtime.run(task).await?;
        walls.push(ms(t0.elapsed()));
        anyhow::ensure!(
            result.status == RunStatus::Completed,
            "bench run did not complete: {:?}",
            result.error
        );
        ids.push(result.id);
    }
    let store = runtime.store().clone();
    let cache = store.plan_cache().ok_or_else(|| anyhow::anyhow!("the bench store keeps no plan cache"))?;
    let entry = cache.entries().await?.into_iter().next();
    let entry = entry.ok_or_else(|| anyhow::anyhow!("the first run left no cached plan"))?;
    anyhow::ensure!(entry.source_run == ids[0], "the cached plan is not the first run's");
    let t0 = Instant::now();
    for _ in 0..LOOKUPS {
        cache.get(&entry.key.key).await?;
    }
    let lookup = ms(t0.elapsed()) / f64::from(LOOKUPS);
    runtime.shutdown().await;
    Ok(json!({
        "miss_makespan_ms": walls[0],
        "hit_makespan_ms": walls[1],
        "gain_ms": walls[0] - walls[1],
        "hit_lookup_ms": lookup,
        "hit_run": ids[1],
    }))
}
