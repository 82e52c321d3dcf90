//! `overhead`: what orchestration costs per step, at zero model latency.

use serde_json::{Value, json};

use super::{Setup, cpu_time_us, flat_script, pool_report, submit_and_wait};

/// N concurrent runs of K independent steps; CPU (user + system, whole process) and wall time
/// per step. Each step's share includes its run's planner and synthesizer calls.
pub(super) async fn run(setup: &Setup, runs: usize, steps: usize) -> anyhow::Result<Value> {
    let (runtime, store) = setup.runtime(flat_script(steps), std::time::Duration::ZERO, setup.pool).await?;
    // Warm-up, so first-use costs (pools, connections, allocations) are not counted.
    runtime.run("warm-up").await?;
    let cpu0 = cpu_time_us();
    let (wall, completed) = submit_and_wait(&runtime, runs, &format!("steps={steps}")).await?;
    let cpu = cpu_time_us().zip(cpu0).map(|(a, b)| a.saturating_sub(b));
    runtime.shutdown().await;
    let total_steps = (runs * steps) as f64;
    Ok(json!({
        "scenario": "overhead",
        "provider": setup.provider(),
        "store": store.name,
        "runs": runs,
        "steps_per_run": steps,
        "executor_pool": pool_report(&setup.pool),
        "completed_runs": completed,
        "wall_ms": wall.as_secs_f64() * 1e3,
        "wall_us_per_step": wall.as_secs_f64() * 1e6 / total_steps,
        "cpu_us_per_step": cpu.map(|c| c as f64 / total_steps),
    }))
}
