//! Several `stepwise serve` replicas on one Postgres (feature `postgres`): real processes of the
//! built binary, a real PostgreSQL (`.ci/postgres.sh`), the fake model server on loopback.
//!
//! - 300 runs over 3 replicas, one of them `kill -9`ed mid-run and started again: every run
//!   completes, no completed step runs again, every replica ran steps;
//! - a replica frozen (SIGSTOP) past its leases, then thawed: it writes nothing to the runs taken
//!   over meanwhile, and every log stays gapless and consistent;
//! - SSE from a replica that does not own the run: every event, in order, live;
//! - cancel and approve sent to a replica that does not own the run take effect;
//! - the store refuses an append from a replica whose lease was taken over (fencing).
#![cfg(feature = "postgres")]

mod replicas_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use replicas_support::{Api, Db, LEASE_TTL_SECS, Replica, check_log, model_server, wait_ended};
use serde_json::{Value, json};

/// The workload of the main test: 3 layers of 2 steps.
const TASK: &str = "depth=3 width=2";

fn start(n: usize, db: &Db, model: &str, env: &[(&str, String)]) -> Vec<Replica> {
    (0..n).map(|i| Replica::start(&format!("r{i}"), db, model, env)).collect()
}

fn urls(replicas: &[Replica]) -> Vec<String> {
    replicas.iter().map(|r| r.url.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_finish_300_runs_through_a_kill_9_and_every_replica_runs_steps() {
    let db = Db::fresh().await;
    let model = model_server(Duration::from_millis(50)).await;
    let mut replicas = start(3, &db, &model, &[]);
    let api = Api::new();
    let bases = urls(&replicas);
    let mut runs = Vec::new();
    for i in 0..300 {
        runs.push(api.submit(&bases[i % 3], TASK, json!({})).await);
    }
    // Mid-run: some runs finished, most not.
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.scalar("SELECT count(*) FROM runs WHERE status = 'completed'").await < 30 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let claimed_before = api.metric(&bases[2], "stepwise_cluster_steps_claimed_total").await;
    assert!(claimed_before > 0.0, "replica r2 claimed no step before it was killed");
    replicas[2].kill();
    let survivors = bases[..2].to_vec();
    // Its runs move on: another replica takes them over once their leases expire.
    db.wait_taken_from("r2", Duration::from_secs(LEASE_TTL_SECS + 30)).await;
    replicas[2] = Replica::start("r2-again", &db, &model, &[]);
    let mut bases = survivors;
    bases.push(replicas[2].url.clone());
    let results = wait_ended(&api, &bases, &runs, Duration::from_secs(300)).await;
    for r in &results {
        assert_eq!(r["status"], "completed", "{r:#}");
    }
    for run in &runs {
        check_log(run, &db.events(run).await);
    }
    for base in &bases[..2] {
        assert!(
            api.metric(base, "stepwise_cluster_steps_claimed_total").await > 0.0,
            "{base} claimed no step"
        );
    }
    let taken_over: f64 = {
        let mut n = 0.0;
        for base in &bases[..2] {
            n += api.metric(base, "stepwise_cluster_leases_taken_over_total").await;
        }
        n
    };
    assert!(taken_over > 0.0, "no lease was taken over after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_frozen_past_its_leases_writes_nothing_to_runs_taken_over() {
    let db = Db::fresh().await;
    // Slow steps, so that the frozen replica holds runs mid-step.
    let model = model_server(Duration::from_millis(400)).await;
    let replicas = start(2, &db, &model, &[]);
    let api = Api::new();
    let bases = urls(&replicas);
    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(api.submit(&bases[i % 2], TASK, json!({})).await);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    replicas[1].signal("STOP");
    // Frozen well past its lease: r0 takes its runs over.
    db.wait_taken_from("r1", Duration::from_secs(LEASE_TTL_SECS + 30)).await;
    let taken: Vec<(String, i64)> = {
        let sql = format!("SELECT id, last_seq FROM {}.runs WHERE lease_epoch > 1", db.schema);
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&db.admin).await.unwrap()
    };
    assert!(!taken.is_empty(), "no run changed hands");
    replicas[1].signal("CONT");
    let results = wait_ended(&api, &bases, &runs, Duration::from_secs(120)).await;
    for r in &results {
        assert_eq!(r["status"], "completed", "{r:#}");
    }
    for run in &runs {
        check_log(run, &db.events(run).await);
    }
    // The thawed replica found its leases gone: it lost them rather than writing.
    let lost = api.metric(&bases[1], "stepwise_cluster_leases_lost_total").await;
    assert!(lost > 0.0, "r1 did not notice its leases were taken:\n{}", replicas[1].log());
    // And the runs r0 took over were written by r0 alone from then on: r1 holds none of them.
    let still_r1 = db.scalar("SELECT count(*) FROM runs WHERE owner = 'r1' AND lease_epoch > 1").await;
    assert_eq!(still_r1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_from_a_replica_that_does_not_own_the_run_sees_every_event_live() {
    let db = Db::fresh().await;
    let model = model_server(Duration::from_millis(100)).await;
    let replicas = start(2, &db, &model, &[]);
    let api = Api::new();
    // Owned by r0 (it took the submission); watched on r1 from the first event.
    let run = api.submit(&replicas[0].url, TASK, json!({})).await;
    let res = api.0.get(format!("{}/v1/runs/{run}/events", replicas[1].url)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut seqs = Vec::new();
    let mut arrivals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    'read: while let Some(chunk) =
        tokio::time::timeout_at(deadline.into(), body.next()).await.expect("stream stalled")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            seqs.push(event["seq"].as_u64().unwrap());
            arrivals.push(Instant::now());
            if matches!(event["type"].as_str(), Some("RunCompleted" | "RunFailed" | "RunCancelled")) {
                break 'read;
            }
        }
    }
    let stored = db.events(&run).await;
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>(), "every event, in order");
    // Live: the events came over seconds, as the run went, not in one burst at the end.
    let spread = arrivals.last().unwrap().duration_since(arrivals[0]);
    assert!(spread > Duration::from_millis(300), "events arrived in one burst ({spread:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_approve_sent_to_a_replica_that_does_not_own_the_run_take_effect() {
    let db = Db::fresh().await;
    let model = model_server(Duration::from_millis(50)).await;
    let replicas = start(2, &db, &model, &[]);
    let api = Api::new();
    let (owner, other) = (&replicas[0].url, &replicas[1].url);
    let approved = api.submit(owner, TASK, json!({"require_approval": true})).await;
    let rejected = api.submit(owner, TASK, json!({"require_approval": true})).await;
    for run in [&approved, &rejected] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.get(other, run).await["status"] != "awaiting_approval" {
            assert!(Instant::now() < deadline, "run {run} never awaited approval");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, body) = api.post(other, &format!("/v1/runs/{approved}/approve"), json!({})).await;
    assert!(status < 300, "approve via the non-owner: {status} {body}");
    let (status, body) =
        api.post(other, &format!("/v1/runs/{rejected}/reject"), json!({"reason": "no"})).await;
    assert!(status < 300, "reject via the non-owner: {status} {body}");
    // Approving again is refused by the owner's state machine, and the refusal comes back.
    let (status, _) = api.post(other, &format!("/v1/runs/{rejected}/approve"), json!({})).await;
    assert_eq!(status, 409);
    let results = wait_ended(
        &api,
        std::slice::from_ref(other),
        &[approved.clone(), rejected.clone()],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(results[0]["status"], "completed", "{:#}", results[0]);
    assert_eq!(results[1]["status"], "cancelled", "{:#}", results[1]);

    // A long chain (20 steps one after another), so that the cancel finds it running.
    let running = api.submit(owner, "depth=20 width=1", json!({})).await;
    let (status, body) =
        api.post(other, &format!("/v1/runs/{running}/cancel"), json!({"reason": "stop"})).await;
    assert!(status < 300, "cancel via the non-owner: {status} {body}");
    let r = wait_ended(
        &api,
        std::slice::from_ref(other),
        std::slice::from_ref(&running),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r[0]["status"], "cancelled", "{:#}", r[0]);
    for run in [&approved, &rejected, &running] {
        check_log(run, &db.events(run).await);
    }
}

#[tokio::test]
async fn the_store_refuses_appends_from_a_replica_whose_lease_was_taken_over() {
    use stepwise::run::{EventKind, RunEvent, RunId};
    use stepwise::store::StoreError;
    use stepwise::store::postgres::Fence;
    let db = Db::fresh().await;
    let run = RunId::new();
    let event = |seq, kind| RunEvent { run_id: run.clone(), seq, at: chrono::Utc::now(), kind };
    let submitted = EventKind::RunSubmitted { task: "t".into(), options: Default::default() };
    let mine: HashMap<RunId, i64> = [(run.clone(), 1)].into();
    let a = Fence { owner: "a", epochs: &mine, ttl: Duration::from_secs(5) };
    db.store.append_fenced(&[event(1, submitted)], a).await.unwrap();
    let cancel = || EventKind::RunCancelled { reason: "x".into() };
    // Replica b takes the run over: a new epoch.
    let sql = format!("UPDATE {}.runs SET owner = 'b', lease_epoch = 2 WHERE id = $1", db.schema);
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run.as_str()).execute(&db.admin).await.unwrap();
    // a's next append fits the seq, and is refused all the same: its epoch is gone.
    let err = db.store.append_fenced(&[event(2, cancel())], a).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { ref owner, epoch: 1, .. } if owner.as_deref() == Some("b")),
        "{err}"
    );
    // b, with the new epoch, appends; a stale seq is still a conflict for anyone.
    let theirs: HashMap<RunId, i64> = [(run.clone(), 2)].into();
    let b = Fence { owner: "b", epochs: &theirs, ttl: Duration::from_secs(5) };
    db.store.append_fenced(&[event(2, cancel())], b).await.unwrap();
    let err = db.store.append_fenced(&[event(2, cancel())], b).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(db.events(run.as_str()).await.len(), 2);
}
