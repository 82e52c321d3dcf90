//! Several real `stepwise serve` processes on one real Postgres (a fresh schema per test), and
//! the fake OpenAI-compatible model server in this process, all on loopback.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepwise::run::{RunEvent, RunId};
use stepwise::store::RunStore;
use stepwise::store::postgres::PostgresStore;

#[path = "../support_llm/fake_openai.rs"]
mod fake_openai;

/// Lease TTL of the test replicas: short, so that takeovers happen within a test's time.
pub const LEASE_TTL_SECS: u64 = 2;

/// A Postgres schema of this test's own.
pub struct Db {
    pub admin: sqlx::PgPool,
    pub schema: String,
    pub url: String,
    pub store: PostgresStore,
}

impl Db {
    /// A fresh schema on the server `STEPWISE_TEST_POSTGRES_URL` names (`.ci/postgres.sh`
    /// starts one). Without it the test fails: it does not skip.
    pub async fn fresh() -> Db {
        let base = std::env::var("STEPWISE_TEST_POSTGRES_URL").expect(
            "STEPWISE_TEST_POSTGRES_URL is not set: run `eval \"$(bash .ci/postgres.sh)\"` first (it starts a \
             throwaway PostgreSQL on loopback)",
        );
        let admin = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&base).await.unwrap();
        let schema = format!("r_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={schema}");
        let store = PostgresStore::connect(&url).await.unwrap();
        Db { admin, schema, url, store }
    }

    /// A run's events, read straight from the database.
    pub async fn events(&self, run: &str) -> Vec<RunEvent> {
        self.store.events(&RunId(run.to_owned()), 0).await.unwrap()
    }

    /// Waits until `replica` holds no unfinished run (the others took them over).
    pub async fn wait_taken_from(&self, replica: &str, within: Duration) {
        let sql = format!(
            "SELECT count(*) FROM runs WHERE owner = '{replica}' AND status NOT IN ('completed','failed','cancelled')"
        );
        let start = Instant::now();
        while self.scalar(&sql).await > 0 {
            assert!(start.elapsed() < within, "{replica}'s runs were not taken over within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One SQL scalar in this schema.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = format!("SET LOCAL search_path = {}; {sql}", self.schema);
        let mut tx = self.admin.begin().await.unwrap();
        let mut value = 0;
        for (i, stmt) in sql.split("; ").enumerate() {
            if i == 0 {
                sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned())).execute(&mut *tx).await.unwrap();
            } else {
                value = sqlx::query_scalar(sqlx::AssertSqlSafe(stmt.to_owned()))
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        value
    }
}

/// The fake model server at `latency`, on 127.0.0.1; returns `http://ADDR/v1`.
pub async fn model_server(latency: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, fake_openai::app(latency)).await });
    url
}

/// One `stepwise serve` process.
pub struct Replica {
    pub name: String,
    pub url: String,
    child: Child,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts `stepwise serve` as replica `name` on `db`, against the model server at `model`,
    /// with `env` on top; returns once it listens.
    pub fn start(name: &str, db: &Db, model: &str, env: &[(&str, String)]) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepwise"));
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--provider", "openai", "--model", "fake"])
            .env("OPENAI_BASE_URL", model)
            .env("OPENAI_API_KEY", "sk-test-local")
            .env("STEPWISE_RUNTIME__DATA_DIR", dir.path())
            .env("STEPWISE_SERVER__STORE_URL", &db.url)
            .env("STEPWISE_CLUSTER__REPLICA_ID", name)
            .env("STEPWISE_CLUSTER__LEASE_TTL_SECS", LEASE_TTL_SECS.to_string())
            .env("STEPWISE_CLUSTER__POLL_INTERVAL_MS", "200")
            .env("STEPWISE_SERVER__DRAIN_SECS", "1")
            .env("RUST_LOG", "stepwise=info")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!("replica {name} did not start:\n{}", log.lock().unwrap());
        });
        Replica { name: name.to_owned(), url: format!("http://{addr}"), child, log, _dir: dir }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for the replicas' API.
#[derive(Clone)]
pub struct Api(pub reqwest::Client);

impl Api {
    pub fn new() -> Api {
        Api(reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap())
    }

    /// Submits `task` to the replica at `base`; returns the run id.
    pub async fn submit(&self, base: &str, task: &str, extra: Value) -> String {
        let mut body = json!({"task": task});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let res = self.0.post(format!("{base}/v1/runs")).json(&body).send().await.unwrap();
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, 202, "submit to {base}: {v}");
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, base: &str, run: &str) -> Value {
        self.0.get(format!("{base}/v1/runs/{run}")).send().await.unwrap().json().await.unwrap()
    }

    pub async fn post(&self, base: &str, path: &str, body: Value) -> (u16, Value) {
        let res = self.0.post(format!("{base}{path}")).json(&body).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The value of a Prometheus counter or gauge line that starts with `prefix`, summed.
    pub async fn metric(&self, base: &str, prefix: &str) -> f64 {
        let text = self.0.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Waits until every run in `runs` has ended (read through `base`), or panics after `limit`.
pub async fn wait_ended(api: &Api, bases: &[String], runs: &[String], limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let mut results = Vec::new();
        let mut open = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let r = api.get(&bases[i % bases.len()], run).await;
            if !matches!(r["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
                open.push(r.clone());
            }
            results.push(r);
        }
        if open.is_empty() {
            return results;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} runs still open after {limit:?}; the first: {:#}",
            open.len(),
            runs.len(),
            open[0]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks a run's log: seqs 1..n without a gap, one terminal event, last; no step completed
/// twice, and no step started again after it completed.
pub fn check_log(run: &str, events: &[RunEvent]) {
    use stepwise::run::EventKind;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "run {run}: gap or disorder at {i}");
    }
    let terminal = events.iter().filter(|e| e.kind.is_terminal()).count();
    assert_eq!(terminal, 1, "run {run}: {terminal} terminal events");
    assert!(events.last().is_some_and(|e| e.kind.is_terminal()), "run {run}: terminal event not last");
    let mut completed = std::collections::HashSet::new();
    for e in events {
        match &e.kind {
            EventKind::StepCompleted { step, .. } => {
                assert!(completed.insert(step.clone()), "run {run}: step {step} completed twice");
            }
            EventKind::StepStarted { step, .. } => {
                assert!(!completed.contains(step), "run {run}: step {step} started again after it completed");
            }
            _ => {}
        }
    }
    stepwise::run::RunState::from_events(events).unwrap().expect("the log folds into a run");
}
