//! A quick load probe of a running API, for `stepwise bench http`: concurrent clients submit
//! runs and read each one back, for a fixed time.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Clients submitting at once in [`load_probe`].
pub const LOAD_PROBE_CONCURRENCY: usize = 8;

/// What [`load_probe`] measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Wall-clock time of the probe, in seconds.
    pub seconds: f64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Submissions answered 202.
    pub submitted: u64,
    /// Submissions answered 429 (queue full): backpressure, not failures.
    pub rejected: u64,
    /// Requests that failed otherwise (transport errors, other statuses).
    pub errors: u64,
    /// Accepted submissions per second.
    pub submissions_per_sec: f64,
    /// `GET /v1/runs/{id}` answered 200.
    pub gets: u64,
    /// Median latency of those GETs, in milliseconds.
    pub get_p50_ms: f64,
    /// 99th percentile latency of those GETs, in milliseconds.
    pub get_p99_ms: f64,
    /// Slowest of those GETs, in milliseconds.
    pub get_max_ms: f64,
}

#[derive(Default)]
struct Tally {
    submitted: u64,
    rejected: u64,
    errors: u64,
    get_ms: Vec<f64>,
}

/// Runs [`LOAD_PROBE_CONCURRENCY`] clients against `base_url` (e.g. `http://127.0.0.1:8080`)
/// for `duration`: each submits a run (`{"task": "load probe"}`), then GETs it, in a loop.
/// The service's model decides what the runs do; a scripted model keeps the probe about the API.
pub async fn load_probe(
    base_url: &str,
    token: Option<&str>,
    duration: Duration,
) -> Result<LoadReport, reqwest::Error> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let base = base_url.trim_end_matches('/').to_owned();
    let auth = token.map(|t| format!("Bearer {t}"));
    let start = Instant::now();
    let deadline = start + duration;
    let workers = (0..LOAD_PROBE_CONCURRENCY).map(|_| {
        let (client, base, auth) = (client.clone(), base.clone(), auth.clone());
        tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let mut req =
                    client.post(format!("{base}/v1/runs")).json(&serde_json::json!({"task": "load probe"}));
                if let Some(a) = &auth {
                    req = req.header(reqwest::header::AUTHORIZATION, a);
                }
                let id = match req.send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                        match r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned))
                        {
                            Some(id) => id,
                            None => {
                                t.errors += 1;
                                continue;
                            }
                        }
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                        t.rejected += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    _ => {
                        t.errors += 1;
                        continue;
                    }
                };
                t.submitted += 1;
                let mut req = client.get(format!("{base}/v1/runs/{id}"));
                if let Some(a) = &auth {
                    req = req.header(reqwest::header::AUTHORIZATION, a);
                }
                let began = Instant::now();
                let ok = match req.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    t.get_ms.push(began.elapsed().as_secs_f64() * 1000.0);
                } else {
                    t.errors += 1;
                }
            }
            t
        })
    });
    let mut total = Tally::default();
    for w in futures::future::join_all(workers).await {
        let Ok(t) = w else {
            total.errors += 1;
            continue;
        };
        total.submitted += t.submitted;
        total.rejected += t.rejected;
        total.errors += t.errors;
        total.get_ms.extend(t.get_ms);
    }
    let seconds = start.elapsed().as_secs_f64();
    total.get_ms.sort_by(f64::total_cmp);
    Ok(LoadReport {
        seconds,
        concurrency: LOAD_PROBE_CONCURRENCY,
        submitted: total.submitted,
        rejected: total.rejected,
        errors: total.errors,
        submissions_per_sec: total.submitted as f64 / seconds.max(f64::EPSILON),
        gets: total.get_ms.len() as u64,
        get_p50_ms: percentile(&total.get_ms, 0.50),
        get_p99_ms: percentile(&total.get_ms, 0.99),
        get_max_ms: total.get_ms.last().copied().unwrap_or(0.0),
    })
}

/// The `q` quantile of sorted samples (nearest rank); 0 when there are none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 0.99), 99.0);
        assert_eq!(super::percentile(&v, 0.50), 50.0);
        assert_eq!(super::percentile(&[], 0.99), 0.0);
        assert_eq!(super::percentile(&[3.0], 0.99), 3.0);
    }
    use std::sync::Arc;

    use serde_json::json;
    use stepwise::Stepwise;
    use stepwise::llm::scripted::ScriptedModel;
    use stepwise::server::{ServerState, serve};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_load_probe_makes_progress_and_counts_refusals_as_errors() {
        let plan = json!({"goal": "g", "steps": [{"id": "s1", "description": "d", "expected_outcome": "e",
                                                   "tool": null, "depends_on": []}]});
        let script = json!({"planner": [{"json": plan}], "steps": {"s1": ["out"]}, "synthesizer": ["done"]});
        let model = ScriptedModel::from_json(script).unwrap();
        let workspace = tempfile::tempdir().unwrap();
        let builder = Stepwise::builder().model(Arc::new(model)).workspace_root(workspace.path().to_owned());
        let runtime = Arc::new(builder.build().await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = ServerState::new(runtime).tokens(vec!["secret".into()]);
        let server = tokio::spawn(serve(listener, state, std::future::pending::<()>()));

        let report = load_probe(&base, Some("secret"), Duration::from_secs(1)).await.unwrap();
        assert!(report.submitted > 0 && report.gets > 0, "{report:?}");
        assert_eq!(report.errors, 0, "{report:?}");
        assert!(
            report.get_p99_ms >= report.get_p50_ms && report.get_max_ms >= report.get_p99_ms,
            "{report:?}"
        );
        let report = load_probe(&base, Some("wrong"), Duration::from_millis(200)).await.unwrap();
        assert_eq!((report.submitted, report.gets), (0, 0));
        assert!(report.errors > 0);
        server.abort();
    }
}
