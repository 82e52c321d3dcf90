//! Postgres goes away under load and comes back (feature `postgres`; its own test binary, since
//! it stops the server every other Postgres test uses): two real `stepwise serve` replicas pause
//! their runs while the database is down, refuse submissions with 503 and say they are not
//! ready, then finish every run once it is back, with no event lost or written twice.
#![cfg(feature = "postgres")]

mod replicas_support;

use std::process::Command;
use std::time::{Duration, Instant};

use replicas_support::{Api, Db, Replica, check_log, model_server, wait_ended};
use serde_json::json;

/// `bash .ci/postgres.sh down|up`: stops or starts the test server, keeping its data.
fn postgres(what: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres.sh");
    let ok = Command::new("bash").arg(script).arg(what).status().unwrap();
    assert!(ok.success(), "postgres.sh {what} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_pause_while_postgres_is_down_and_all_complete_after() {
    let db = Db::fresh().await;
    let model = model_server(Duration::from_millis(200)).await;
    let replicas: Vec<Replica> = (0..2).map(|i| Replica::start(&format!("r{i}"), &db, &model, &[])).collect();
    let bases: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let api = Api::new();
    let mut runs = Vec::new();
    for i in 0..40 {
        runs.push(api.submit(&bases[i % 2], "depth=3 width=2", json!({})).await);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    postgres("down");
    let down = Instant::now();
    // While it is down: not ready, and a submission is refused with 503, not lost or hung.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = api.0.get(format!("{}/readyz", bases[0])).send().await.unwrap().status();
    assert_eq!(ready, 503, "readyz while the store is down");
    let (status, body) = api.post(&bases[1], "/v1/runs", json!({"task": "depth=1 width=1"})).await;
    assert_eq!(status, 503, "submit while the store is down: {body}");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    postgres("up");
    let results = wait_ended(&api, &bases, &runs, Duration::from_secs(180)).await;
    for r in &results {
        assert_eq!(r["status"], "completed", "{r:#}");
    }
    for run in &runs {
        check_log(run, &db.events(run).await);
    }
    let ready = api.0.get(format!("{}/readyz", bases[0])).send().await.unwrap().status();
    assert_eq!(ready, 200, "readyz after the store came back");
}
