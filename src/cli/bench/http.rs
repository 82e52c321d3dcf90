//! `http`: the concurrency scenario through `stepwise serve`'s HTTP API, a timed load of submit +
//! GET, and the memory held by runs that wait for approval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use stepwise::run::RunStatus;
use stepwise::server::{self, ServerState};

use super::{Setup, diamond_script, heap_in_use, pool_report, rss_kib};

async fn submit(client: &reqwest::Client, base: &str, body: Value) -> anyhow::Result<String> {
    let resp = client.post(format!("{base}/v1/runs")).json(&body).send().await?;
    anyhow::ensure!(resp.status() == reqwest::StatusCode::ACCEPTED, "submit: HTTP {}", resp.status());
    let v: Value = resp.json().await?;
    v["id"].as_str().map(str::to_owned).ok_or_else(|| anyhow::anyhow!("submit: no id in {v}"))
}

/// Polls a run until it is no longer planning or running; returns its final status.
async fn wait(client: &reqwest::Client, base: &str, id: String) -> anyhow::Result<String> {
    loop {
        let v: Value = client.get(format!("{base}/v1/runs/{id}")).send().await?.json().await?;
        let status = v["status"].as_str().unwrap_or("").to_owned();
        if status != "planning" && status != "running" {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the runtime has no run in progress.
async fn settle(runtime: &stepwise::Runtime) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while runtime.live_runs() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn run(setup: &Setup, runs: usize, load: Duration) -> anyhow::Result<Value> {
    let (runtime, store) = setup.runtime(diamond_script(), setup.latency, setup.pool).await?;
    let runtime = Arc::new(runtime);
    let state = ServerState::new(runtime.clone()).queue_limit(runs.max(1) * 4 + 10_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;

    // 1. `runs` runs through the API: submit them all (64 requests in flight), then wait for each.
    let t0 = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..runs)
        .map(|i| submit(&client, &base, json!({"task": format!("http run {i}")})))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let submit_wall = t0.elapsed();
    let statuses: Vec<String> = futures::stream::iter(ids)
        .map(|id| wait(&client, &base, id))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let wall = t0.elapsed();
    let completed = statuses.iter().filter(|s| *s == "completed").count();

    // 2. A timed load: clients submitting runs and reading them back.
    let probe = super::load::load_probe(&base, None, load).await?;
    settle(&runtime).await;

    // 3. Memory of a run at rest: runs whose plans wait for approval hold a tracker each.
    let idle = runs.clamp(1, 10_000);
    let (rss_before, _) = rss_kib();
    let heap_before = heap_in_use();
    let mut opts = runtime.options().clone();
    opts.policy.require_approval = true;
    // Approval needs the whole plan first.
    opts.policy.stream_plan = false;
    let mut handles = Vec::with_capacity(idle);
    for i in 0..idle {
        handles.push(runtime.submit_with(&format!("idle {i}"), opts.clone()).await?);
    }
    for h in &handles {
        while h.snapshot().await?.status != RunStatus::AwaitingApproval {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (rss_idle, _) = rss_kib();
    let heap_idle = heap_in_use();
    for h in &handles {
        h.reject("bench over").await?;
    }
    let _ = stop.send(());
    server.await??;
    let per_idle = rss_idle.zip(rss_before).map(|(a, b)| a.saturating_sub(b) as f64 / idle as f64);
    let heap_per_idle =
        heap_idle.zip(heap_before).map(|(a, b)| a.saturating_sub(b) as f64 / 1024.0 / idle as f64);
    Ok(json!({
        "scenario": "http",
        "provider": setup.provider(),
        "store": store.name,
        "runs": runs,
        "completed_runs": completed,
        "latency_ms": setup.latency_ms(),
        "executor_pool": pool_report(&setup.pool),
        "submit_all_ms": submit_wall.as_secs_f64() * 1e3,
        "wall_ms": wall.as_secs_f64() * 1e3,
        "runs_per_s": runs as f64 / wall.as_secs_f64(),
        "load": probe,
        "idle_runs": idle,
        // RSS can stay flat while idle runs reuse what finished runs freed; the heap cannot.
        "rss_per_idle_run_kib": per_idle,
        "heap_per_idle_run_kib": heap_per_idle,
    }))
}
