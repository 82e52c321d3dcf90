//! `stepwise bench`: repeatable performance scenarios, one JSON object per scenario on stdout.
//!
//! `overhead` measures what the orchestration itself costs per step: a zero-latency scripted
//! model, N concurrent runs of K independent steps, CPU time of the whole process (user+system,
//! from /proc/self/stat) and wall time, divided by the number of steps.

use std::sync::Arc;
use std::time::Instant;

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
