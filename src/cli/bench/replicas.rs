//! `replicas`: several `stepwise serve` replicas sharing one Postgres (multi-replica mode).
//!
//! ```sh
//! cargo build --release --features postgres --bin stepwise --example fake_openai_server
//! eval "$(bash .ci/postgres.sh)"     # a throwaway Postgres on loopback
//! target/release/stepwise bench replicas --store-url "$STEPWISE_TEST_POSTGRES_URL" --runs 100
//! ```
//!
//! **Scaling.** For each count N of `--replicas` (default `1,2,3`): a fresh schema in the
//! `--store-url` database (`CREATE SCHEMA bench_<N>_<random>`, reached with
//! `options[search_path]=…`, dropped afterwards), N replicas of this executable (or
//! `--serve-exe`) as `serve --provider openai` against the fake model server, each with its own
//! data dir and port, all with `STEPWISE_SERVER__STORE_URL` on that schema and `[executors]
//! max_workers` = `--max-workers` (default 8), so that a replica's capacity rather than the
//! machine's cores bounds the throughput. `--runs` runs of a `steps=K` plan are submitted round
//! robin over the replicas (64 requests in flight), the bench waits until none is in progress and
//! reads them back from one replica. Reported: wall time (to the last `finished_at`), runs/s,
//! steps/s, speed-up against the first count (1 replica by default), CPU per step summed over
//! the replicas' processes, and the steps each replica claimed from the queue (`/metrics`).
//!
//! **Failover.** 3 replicas on a fresh schema, the runs submitted round robin. Once a third of
//! the runs submitted to replica 1 (which owns them) have ended, it is killed with SIGKILL. The
//! others take its runs over once its lease expires (`[cluster] lease_ttl_secs`, set from
//! `--lease-ttl-secs`, default 5). When every run has ended, the events of each run that was
//! unfinished at the kill are read back (SSE, from a survivor): the delay from the kill to the
//! run's first event stamped after it is its takeover time, reported against the lease TTL
//! (event timestamps rather than polling, so the figure has no poll granularity).
//!
//! A benchmark, not a test: no timing asserts. It fails when a replica does not start, or when a
//! run does not complete (in both parts: failover must lose no run).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::child::{self, Spawned};
use super::serve::{self, IN_FLIGHT, IN_PROGRESS, ModelServer, Totals};

/// The fake model server's latency when `--latency-ms` is not given.
const DEFAULT_LATENCY_MS: u64 = 200;
/// Replicas of the failover measurement.
const FAILOVER_REPLICAS: usize = 3;
/// The replica killed in the failover measurement (replica 0 answers the bench's queries).
const VICTIM: usize = 1;
/// Share of the victim's runs that have ended when it is killed.
const KILL_AFTER_ENDED: f64 = 1.0 / 3.0;
/// `[executors] min_workers` of a replica, unless `--max-workers` is lower.
const MIN_WORKERS: usize = 4;
/// How long a replica may take to drain and exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long reading one run's events may take.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(30);

/// What the scenario is given.
pub(crate) struct ReplicasBench {
    /// The Postgres database the replicas share (`postgres://…`); each part gets its own schema.
    pub store_url: String,
    /// Replica counts of the scaling part.
    pub replicas: Vec<usize>,
    /// Runs submitted in each part.
    pub runs: usize,
    /// Steps of each run's plan (the fake server reads `steps=K` from the task).
    pub steps: usize,
    /// `[executors] max_workers` of every replica.
    pub max_workers: usize,
    /// `[cluster] lease_ttl_secs` of every replica.
    pub lease_ttl_secs: u64,
    /// The model server's latency per call (default 200 ms for the fake server the bench starts).
    pub latency_ms: Option<u64>,
    /// Where the model server comes from.
    pub server: ModelServer,
    /// Model name sent to the server.
    pub model: String,
    /// A config file for the replicas instead of the defaults.
    pub config: Option<PathBuf>,
    /// The stepwise binary to run as `serve`; None: this executable.
    pub serve_exe: Option<PathBuf>,
}

/// Runs the scenario and returns its report.
pub(super) async fn run(bench: &ReplicasBench) -> anyhow::Result<Value> {
    let (fake, model_url, latency_ms) = bench.server.ready(bench.latency_ms, DEFAULT_LATENCY_MS).await?;
    let harness = Harness {
        bench,
        exe: serve::serve_exe(bench.serve_exe.as_deref())?,
        model_url: model_url.clone(),
        client: reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).build()?,
    };
    let outcome = measure(&harness).await;
    if let Some(fake) = fake {
        fake.stop(Duration::from_secs(2)).await;
    }
    let (scaling, failover) = outcome?;
    Ok(json!({
        "scenario": "replicas",
        "provider": "openai",
        "store": "postgres",
        "runs": bench.runs,
        "steps_per_run": bench.steps,
        "max_workers": bench.max_workers,
        "lease_ttl_secs": bench.lease_ttl_secs,
        "latency_ms": latency_ms,
        "model_server": model_url,
        "scaling": scaling,
        "failover": failover,
    }))
}

/// What every part needs: the inputs, the binary, the model server, an HTTP client.
struct Harness<'a> {
    bench: &'a ReplicasBench,
    exe: PathBuf,
    model_url: String,
    client: reqwest::Client,
}

/// The scaling points (with their speed-ups), then the failover measurement.
async fn measure(h: &Harness<'_>) -> anyhow::Result<(Vec<Value>, Value)> {
    let mut points = Vec::new();
    for &n in &h.bench.replicas {
        eprintln!("bench replicas: {n} replica(s), {} runs", h.bench.runs);
        points.push(in_cluster(h, n, &n.to_string(), Part::Scaling).await?);
    }
    add_speedups(&mut points);
    eprintln!("bench replicas: failover, {FAILOVER_REPLICAS} replicas, {} runs", h.bench.runs);
    let failover = in_cluster(h, FAILOVER_REPLICAS, "failover", Part::Failover).await?;
    Ok((points, failover))
}

/// The two measurements.
#[derive(Clone, Copy)]
enum Part {
    Scaling,
    Failover,
}

/// Starts `n` replicas on a fresh schema, measures `part`, stops them and drops the schema.
async fn in_cluster(h: &Harness<'_>, n: usize, label: &str, part: Part) -> anyhow::Result<Value> {
    let mut cluster = Cluster::start(h, n, label).await?;
    let outcome = match part {
        Part::Scaling => scaling_point(h, &cluster).await,
        Part::Failover => failover(h, &mut cluster).await,
    };
    let outcome =
        outcome.with_context(|| format!("the replicas' stderr ends with:\n{}", cluster.stderr_tails()));
    cluster.stop().await;
    outcome
}

/// One scaling point: the runs round robin over the cluster, until all ended.
async fn scaling_point(h: &Harness<'_>, cluster: &Cluster) -> anyhow::Result<Value> {
    let pids = cluster.pids();
    let cpu_before = cpu_of(&pids)?;
    let started = Utc::now();
    let t0 = Instant::now();
    let submitted = submit_round_robin(h, &cluster.urls).await?;
    let submit_wall = t0.elapsed();
    serve::wait_until_ended(&h.client, cluster.query_url()).await?;
    let seen_ended = t0.elapsed();
    let cpu_after = cpu_of(&pids)?;
    let totals = serve::read_back(&h.client, cluster.query_url(), &submitted.ids()).await?;
    let wall = serve::wall_time(started, &totals, seen_ended).as_secs_f64();
    let cpu_us = cpu_after.saturating_sub(cpu_before) as f64;
    let report = json!({
        "replicas": cluster.urls.len(),
        "statuses": totals.statuses,
        "steps": totals.steps,
        "rejected_429": submitted.rejected,
        "submit_all_ms": submit_wall.as_secs_f64() * 1e3,
        "wall_ms": wall * 1e3,
        "runs_per_s": h.bench.runs as f64 / wall,
        "steps_per_s": totals.steps as f64 / wall,
        "cpu_ms": cpu_us / 1e3,
        "cpu_per_step_us": (totals.steps > 0).then(|| cpu_us / totals.steps as f64),
        "peak_rss_mib_max": peak_rss_mib(&pids),
        "steps_claimed_per_replica": cluster.metric_per_replica(&h.client, STEPS_CLAIMED).await,
    });
    serve::check_completed(h.bench.runs, &totals, &report)?;
    Ok(report)
}

/// `speedup` on every point: the first point's wall time over this one's (the first point is
/// 1 replica with the default `--replicas`).
fn add_speedups(points: &mut [Value]) {
    let Some(base) = points.first().and_then(|p| p["wall_ms"].as_f64()) else {
        return;
    };
    for p in points.iter_mut() {
        p["speedup"] = json!(p["wall_ms"].as_f64().map(|w| base / w));
    }
}

/// The failover measurement on a running cluster of [`FAILOVER_REPLICAS`].
async fn failover(h: &Harness<'_>, cluster: &mut Cluster) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let submitted = submit_round_robin(h, &cluster.urls).await?;
    let victim_runs: Vec<String> =
        submitted.runs.iter().filter(|(_, r)| *r == VICTIM).map(|(id, _)| id.clone()).collect();
    let ended_before = wait_for_share_ended(&h.client, cluster.query_url(), &victim_runs).await?;
    cluster.kill(VICTIM).await?;
    // Taken once the victim is reaped: any event stamped later was written by a survivor.
    let killed_at = Utc::now();
    let killed_after = t0.elapsed();
    serve::wait_until_ended(&h.client, cluster.query_url()).await?;
    let seen_ended = t0.elapsed();
    let results = serve::fetch_runs(&h.client, cluster.query_url(), &submitted.ids()).await?;
    let totals = Totals::of(&results);
    let orphans = unfinished_at(&results, &victim_runs, killed_at);
    let resumes = resume_delays(&h.client, cluster.query_url(), &orphans, killed_at).await?;
    let report = json!({
        "replicas": FAILOVER_REPLICAS,
        "killed": format!("replica {VICTIM} (SIGKILL)"),
        "killed_after_ms": killed_after.as_secs_f64() * 1e3,
        "runs_of_killed": victim_runs.len(),
        "ended_before_kill": ended_before,
        "unfinished_at_kill": orphans.len(),
        "statuses": totals.statuses,
        "takeover": takeover_report(&resumes, orphans.len(), h.bench.lease_ttl_secs),
        "all_ended_after_kill_ms": seen_ended.saturating_sub(killed_after).as_secs_f64() * 1e3,
        "leases_taken_over_per_replica": cluster.metric_per_replica(&h.client, LEASES_TAKEN_OVER).await,
    });
    serve::check_completed(h.bench.runs, &totals, &report)?;
    Ok(report)
}

/// How long the killed replica's unfinished runs took to move on, against the lease TTL.
fn takeover_report(resumes: &[Resume], orphans: usize, lease_ttl_secs: u64) -> Value {
    let mut delays: Vec<f64> = resumes.iter().map(|r| r.delay_ms).collect();
    delays.sort_by(f64::total_cmp);
    let first = resumes.iter().min_by(|a, b| a.delay_ms.total_cmp(&b.delay_ms));
    let ttl_ms = (lease_ttl_secs * 1000) as f64;
    json!({
        "runs_resumed": resumes.len(),
        "runs_never_resumed": orphans - resumes.len(),
        "first_event_after_kill_ms": first.map(|r| r.delay_ms),
        "first_event_type": first.map(|r| r.event.clone()),
        "first_over_lease_ttl": first.map(|r| r.delay_ms / ttl_ms),
        "median_resume_ms": (!delays.is_empty()).then(|| super::median(&delays)),
        "last_resume_ms": delays.last(),
        "lease_ttl_ms": ttl_ms,
    })
}

/// Polls the victim's runs (on the query replica) until at least [`KILL_AFTER_ENDED`] of them
/// have ended; returns how many had. Fails if all have, since then nothing is left to take over.
async fn wait_for_share_ended(client: &reqwest::Client, base: &str, ids: &[String]) -> anyhow::Result<usize> {
    let want = ((ids.len() as f64 * KILL_AFTER_ENDED).ceil() as usize).max(1);
    let deadline = Instant::now() + serve::DEADLINE;
    loop {
        let results = serve::fetch_runs(client, base, ids).await?;
        let ended = results.iter().filter(|r| !is_in_progress(r)).count();
        if ended >= want {
            anyhow::ensure!(
                ended < ids.len(),
                "all {} runs of replica {VICTIM} ended before it could be killed: use more --runs or a \
                 higher --latency-ms",
                ids.len()
            );
            return Ok(ended);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replica {VICTIM}'s runs did not end within {:?}",
            serve::DEADLINE
        );
        tokio::time::sleep(serve::POLL_EVERY).await;
    }
}

/// Whether a run result is planning or running.
fn is_in_progress(result: &Value) -> bool {
    result["status"].as_str().is_some_and(|s| IN_PROGRESS.contains(&s))
}

/// The ids among `of` whose run had not ended at `at`.
fn unfinished_at(results: &[Value], of: &[String], at: DateTime<Utc>) -> Vec<String> {
    results
        .iter()
        .filter(|r| r["id"].as_str().is_some_and(|id| of.iter().any(|o| o == id)))
        .filter(|r| serve::finished_at(r).is_none_or(|t| t > at))
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// When a run moved on after the kill: the delay to its first event after it, and that event's type.
struct Resume {
    delay_ms: f64,
    event: String,
}

/// Each run's first event stamped after `after` (None for a run that has none).
async fn resume_delays(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    after: DateTime<Utc>,
) -> anyhow::Result<Vec<Resume>> {
    let found: Vec<Option<Resume>> = futures::stream::iter(ids)
        .map(|id| first_event_after(client, base, id, after))
        .buffer_unordered(8)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Reads a finished run's whole event stream (`GET /v1/runs/{id}/events`, which ends after the
/// last event) and returns its first event stamped after `after`.
async fn first_event_after(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    after: DateTime<Utc>,
) -> anyhow::Result<Option<Resume>> {
    let url = format!("{base}/v1/runs/{id}/events");
    let resp = client.get(&url).timeout(EVENTS_TIMEOUT).send().await?.error_for_status()?;
    let text = resp.text().await.with_context(|| format!("reading {url}"))?;
    let first = sse_events(&text)
        .into_iter()
        .filter_map(|(event, data)| {
            let at = DateTime::parse_from_rfc3339(data["at"].as_str()?).ok()?.with_timezone(&Utc);
            (at > after).then_some((at, event))
        })
        .min_by_key(|(at, _)| *at);
    Ok(first.map(|(at, event)| Resume {
        delay_ms: (at - after).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3,
        event,
    }))
}

/// The `(event, data as JSON)` of each message of a Server-Sent Events body; messages without
/// JSON data are left out.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|message| {
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in message.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            let data = serde_json::from_str(&data.join("\n")).ok()?;
            Some((event, data))
        })
        .collect()
}

/// The accepted runs, each with the replica it was submitted to, and how many 429s were retried.
struct Submitted {
    runs: Vec<(String, usize)>,
    rejected: u64,
}

impl Submitted {
    fn ids(&self) -> Vec<String> {
        self.runs.iter().map(|(id, _)| id.clone()).collect()
    }
}

/// Submits the bench's runs, run i to replica i mod N, [`IN_FLIGHT`] requests at a time.
async fn submit_round_robin(h: &Harness<'_>, urls: &[String]) -> anyhow::Result<Submitted> {
    let steps = h.bench.steps;
    let answers: Vec<(String, u64, usize)> = futures::stream::iter(0..h.bench.runs)
        .map(|i| async move {
            let replica = i % urls.len();
            let task = format!("bench run {i} steps={steps}");
            let (id, rejected) = serve::submit(&h.client, &urls[replica], task)
                .await
                .with_context(|| format!("submitting to replica {replica}"))?;
            anyhow::Ok((id, rejected, replica))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(Submitted {
        rejected: answers.iter().map(|(_, r, _)| r).sum(),
        runs: answers.into_iter().map(|(id, _, replica)| (id, replica)).collect(),
    })
}

/// The CPU time (user + system) of the processes, summed, in µs.
fn cpu_of(pids: &[String]) -> anyhow::Result<u64> {
    pids.iter()
        .map(|pid| child::cpu_time_us(pid).with_context(|| format!("reading the CPU time of process {pid}")))
        .sum()
}

/// The largest peak RSS (`VmHWM`) of the processes, in MiB.
fn peak_rss_mib(pids: &[String]) -> Option<f64> {
    pids.iter().filter_map(|pid| child::rss_kib(pid).1).max().map(|k| k as f64 / 1024.0)
}

/// Counter of the steps a replica claimed from the shared queue.
const STEPS_CLAIMED: &str = "stepwise_cluster_steps_claimed_total";
/// Counter of the runs a replica took over from a dead one.
const LEASES_TAKEN_OVER: &str = "stepwise_cluster_leases_taken_over_total";

/// The sum of every series of metric `name` in a Prometheus text exposition (None when absent).
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, rest) = match line.find('}') {
            Some(end) => (&line[..=end], &line[end + 1..]),
            None => line.split_once(' ').unwrap_or((line, "")),
        };
        if series.split('{').next() != Some(name) {
            continue;
        }
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// N `serve` replicas on one fresh schema of the bench's database.
struct Cluster {
    /// The replicas; None once killed.
    replicas: Vec<Option<Spawned>>,
    /// Each replica's base URL (kept after a kill, for the reports).
    urls: Vec<String>,
    schema: Schema,
    /// Each replica's working and data dir.
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Creates a schema named after `label` and starts `n` replicas on it, one after the other.
    async fn start(h: &Harness<'_>, n: usize, label: &str) -> anyhow::Result<Self> {
        let schema = Schema::create(&h.bench.store_url, label).await?;
        let mut cluster = Cluster { replicas: Vec::new(), urls: Vec::new(), schema, _dirs: Vec::new() };
        for i in 0..n {
            if let Err(e) = cluster.start_replica(h, label, i).await {
                cluster.stop().await;
                return Err(e.context(format!("starting replica {i} of {n}")));
            }
        }
        Ok(cluster)
    }

    /// Starts replica `i` in its own temp dir.
    async fn start_replica(&mut self, h: &Harness<'_>, label: &str, i: usize) -> anyhow::Result<()> {
        let dir = tempfile::tempdir().context("creating a replica's temp dir")?;
        let env = replica_env(h.bench, &self.schema.url, &format!("bench-{label}-r{i}"));
        let spawned = child::start_serve(
            &h.exe,
            dir.path(),
            &h.model_url,
            &h.bench.model,
            h.bench.config.as_deref(),
            &env,
        )
        .await?;
        self.urls.push(spawned.url.clone());
        self.replicas.push(Some(spawned));
        self._dirs.push(dir);
        Ok(())
    }

    /// The replica the bench reads runs from (never the one killed).
    fn query_url(&self) -> &str {
        &self.urls[0]
    }

    /// The live replicas' process ids.
    fn pids(&self) -> Vec<String> {
        self.replicas.iter().flatten().filter_map(|s| s.pid()).map(|p| p.to_string()).collect()
    }

    /// Kills replica `i` with SIGKILL.
    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let replica = self.replicas[i].take().with_context(|| format!("replica {i} is not running"))?;
        replica.kill().await
    }

    /// Metric `name` summed over each replica's `/metrics` (null for a dead replica or a replica
    /// that does not export it).
    async fn metric_per_replica(&self, client: &reqwest::Client, name: &str) -> Vec<Option<f64>> {
        let mut values = Vec::new();
        for (replica, url) in self.replicas.iter().zip(&self.urls) {
            let text = match replica {
                Some(_) => scrape(client, url).await,
                None => None,
            };
            values.push(text.and_then(|t| metric_sum(&t, name)));
        }
        values
    }

    /// The last lines of every replica's stderr.
    fn stderr_tails(&self) -> String {
        let tails = self.replicas.iter().enumerate().filter_map(|(i, r)| {
            r.as_ref().map(|r| format!("--- replica {i} ({})\n{}", self.urls[i], r.stderr_tail()))
        });
        tails.collect::<Vec<_>>().join("\n")
    }

    /// Stops every replica (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and drops the schema.
    async fn stop(self) {
        let stops = self.replicas.into_iter().flatten().map(|r| r.stop(STOP_GRACE));
        futures::future::join_all(stops).await;
        self.schema.drop_now().await;
    }
}

/// `GET /metrics` of a replica (None when it does not answer 200).
async fn scrape(client: &reqwest::Client, base: &str) -> Option<String> {
    let resp = client.get(format!("{base}/metrics")).send().await.ok()?.error_for_status().ok()?;
    resp.text().await.ok()
}

/// The `STEPWISE_*` variables of a replica: the shared store, the executor pool, the lease TTL
/// and a readable replica id.
fn replica_env(bench: &ReplicasBench, store_url: &str, replica_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STEPWISE_SERVER__STORE_URL", store_url.to_owned()),
        ("STEPWISE_EXECUTORS__MAX_WORKERS", bench.max_workers.to_string()),
        ("STEPWISE_EXECUTORS__MIN_WORKERS", bench.max_workers.min(MIN_WORKERS).to_string()),
        ("STEPWISE_CLUSTER__LEASE_TTL_SECS", bench.lease_ttl_secs.to_string()),
        ("STEPWISE_CLUSTER__REPLICA_ID", replica_id.to_owned()),
    ]
}

/// A schema of its own in the bench's database, and the store URL that uses it.
struct Schema {
    /// The database as given (`--store-url`).
    base: String,
    name: String,
    /// `base` with `options[search_path]=<name>`.
    url: String,
}

impl Schema {
    /// Creates `bench_<label>_<random>`.
    async fn create(base: &str, label: &str) -> anyhow::Result<Self> {
        let name = format!("bench_{label}_{:08x}", fastrand::u32(..));
        execute(base, &format!("CREATE SCHEMA {name}"))
            .await
            .with_context(|| format!("creating schema {name} in --store-url"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={name}");
        Ok(Self { base: base.to_owned(), name, url })
    }

    /// Drops the schema and everything in it; a failure is only reported on stderr.
    async fn drop_now(self) {
        if let Err(e) = execute(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name)).await {
            eprintln!("bench replicas: could not drop schema {}: {e:#}", self.name);
        }
    }
}

/// Runs one statement (built by this module from fixed text and a generated name) on `url`.
#[cfg(feature = "postgres")]
async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to Postgres")?;
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&pool).await;
    pool.close().await;
    done.with_context(|| format!("running `{sql}`"))?;
    Ok(())
}

/// Without the `postgres` feature there is no Postgres client (and no replica mode).
#[cfg(not(feature = "postgres"))]
async fn execute(_url: &str, _sql: &str) -> anyhow::Result<()> {
    anyhow::bail!("the replicas scenario needs a build with `--features postgres`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_series() {
        let text = "# HELP stepwise_cluster_steps_claimed_total Steps claimed\n\
                    # TYPE stepwise_cluster_steps_claimed_total counter\n\
                    stepwise_cluster_steps_claimed_total{replica=\"a b\"} 12\n\
                    stepwise_cluster_steps_claimed_total{replica=\"c\"} 3 1700000000\n\
                    stepwise_cluster_steps_claimed_totalx 100\n\
                    other_total 7\n";
        assert_eq!(metric_sum(text, STEPS_CLAIMED), Some(15.0));
        assert_eq!(metric_sum(text, "other_total"), Some(7.0));
        assert_eq!(metric_sum(text, LEASES_TAKEN_OVER), None);
    }

    #[test]
    fn sse_messages_are_parsed() {
        let text = "id: 1\nevent: RunSubmitted\ndata: {\"seq\":1,\"at\":\"2026-01-01T00:00:00Z\"}\n\n\
                    : keep-alive\n\n\
                    id: 2\nevent: PlanReady\ndata: {\"seq\":2}\n\n";
        let events = sse_events(text);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].0, "RunSubmitted");
        assert_eq!(events[1].1["seq"], 2);
    }

    #[test]
    fn speedups_are_against_the_first_point() {
        let mut points = vec![json!({"wall_ms": 1000.0}), json!({"wall_ms": 500.0})];
        add_speedups(&mut points);
        assert_eq!(points[0]["speedup"], 1.0);
        assert_eq!(points[1]["speedup"], 2.0);
    }

    #[test]
    fn runs_unfinished_at_the_kill_are_found() {
        let at = Utc::now();
        let later = (at + chrono::Duration::seconds(1)).to_rfc3339();
        let earlier = (at - chrono::Duration::seconds(1)).to_rfc3339();
        let results = vec![
            json!({"id": "a", "finished_at": earlier}),
            json!({"id": "b", "finished_at": later}),
            json!({"id": "c", "finished_at": null}),
            json!({"id": "d", "finished_at": later}),
        ];
        let of = ["a", "b", "c"].map(String::from);
        assert_eq!(unfinished_at(&results, &of, at), ["b", "c"]);
    }
}
