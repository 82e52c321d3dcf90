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
