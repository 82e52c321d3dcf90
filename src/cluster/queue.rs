//! The step queue and the runs' inboxes, in SQL: what trackers queue, what executors claim,
//! and what they send back.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Inner;
use super::decide;
use crate::actors::messages::{StepJob, StepReport};
use crate::plan::StepId;
use crate::run::{EventKind, RunId};
use crate::store::{StoreError, backend};

/// The channel a queued step notifies: every replica's claimer listens.
pub(super) const STEPS_CHANNEL: &str = "stepwise_steps";
/// The channel a run's owner is woken on; the payload is the owner's replica id.
pub(super) const INBOX_CHANNEL: &str = "stepwise_inbox";

/// What a tracker asks of the queue, carried out in order by one task per replica.
pub(super) enum Outgoing {
    /// Queue a step attempt.
    Enqueue(Box<StepJob>),
    /// Take back a run's queued attempts (of one step, or all).
    Withdraw(RunId, Option<StepId>),
}

/// What an executor sends the run's owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum InboxMessage {
    /// An event of the running attempt: a tool call, or a wait for its provider.
    Tool(EventKind),
    /// The attempt ended.
    Finished(StepReport),
}

/// A claimed queue row.
pub(super) struct Claimed {
    pub id: i64,
    pub token: i64,
    pub job: StepJob,
}

/// Carries out the trackers' queue requests in the order they were made (a withdraw never
/// overtakes the enqueue it withdraws), each batch of pending requests in one transaction. A
/// store outage holds them until the store is back.
pub(super) async fn run_outbox(inner: Arc<Inner>, mut rx: UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
        }
        let mut failures = 0;
        loop {
            match write_outgoing(&inner.pg_pool(), &batch).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    failures += 1;
                    tokio::time::sleep(decide::backoff(failures)).await;
                }
                Err(e) => {
                    tracing::error!(replica = %inner.id, error = %e, "could not queue steps; their runs resume them when taken over");
                    break;
                }
            }
        }
        batch.clear();
    }
}

async fn write_outgoing(pool: &PgPool, batch: &[Outgoing]) -> Result<(), StoreError> {
    if batch.iter().all(|o| matches!(o, Outgoing::Enqueue(_))) {
        // The usual batch: one statement, no transaction to open and close.
        return enqueue(pool, batch, true).await;
    }
    let mut tx = pool.begin().await.map_err(backend)?;
    let mut queued = false;
    for group in batch.chunk_by(|a, b| matches!((a, b), (Outgoing::Enqueue(_), Outgoing::Enqueue(_)))) {
        match &group[0] {
            Outgoing::Enqueue(_) => {
                enqueue(&mut *tx, group, false).await?;
                queued = true;
            }
            Outgoing::Withdraw(run, step) => {
                sqlx::query(
                    "DELETE FROM step_queue WHERE run_id = $1 AND ($2::text IS NULL OR step_id = $2)",
                )
                .bind(run.as_str())
                .bind(step.as_ref().map(StepId::as_str))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
        }
    }
    if queued {
        notify(&mut tx, STEPS_CHANNEL, "").await?;
    }
    tx.commit().await.map_err(backend)
}

/// Queues the jobs of consecutive `Enqueue` requests with one statement, in order, notifying
/// the claimers in the same statement when `wake`.
async fn enqueue<'c, E>(conn: E, group: &[Outgoing], wake: bool) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let (mut runs, mut steps, mut attempts, mut bodies) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for job in group.iter().filter_map(|o| match o {
        Outgoing::Enqueue(job) => Some(job),
        Outgoing::Withdraw(..) => None,
    }) {
        bodies.push(serde_json::to_string(job).map_err(backend)?);
        runs.push(job.run_id.as_str());
        steps.push(job.step.id.as_str());
        attempts.push(i64::from(job.attempt));
    }
    sqlx::query(
        "WITH queued AS ( \
             INSERT INTO step_queue (run_id, step_id, attempt, job) \
             SELECT j.run_id, j.step_id, j.attempt, j.job::jsonb \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY \
                 AS j(run_id, step_id, attempt, job, n) \
             ORDER BY j.n RETURNING 1 \
         ) \
         SELECT pg_notify($6, '') FROM (SELECT 1 FROM queued LIMIT 1) AS some_queued WHERE $5",
    )
    .bind(runs)
    .bind(steps)
    .bind(attempts)
    .bind(bodies)
    .bind(wake)
    .bind(STEPS_CHANNEL)
    .execute(conn)
    .await
    .map_err(backend)?;
    Ok(())
}

/// `pg_notify` inside a transaction: delivered on commit.
pub(super) async fn notify(
    conn: &mut sqlx::PgConnection,
    channel: &str,
    payload: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Claims up to `n` ready steps for `replica`, fairly across runs: each run's oldest ready step
/// first, then each run's second, and so on, so that one run with a thousand ready steps does
/// not starve ten runs with one. A claim whose lease expired is ready again. Steps of runs that
/// ended are left alone.
pub(super) async fn claim(
    pool: &PgPool,
    replica: &str,
    n: usize,
    ttl: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "WITH ready AS ( \
             SELECT q.id, row_number() OVER (PARTITION BY q.run_id ORDER BY q.id) AS turn \
             FROM step_queue q JOIN runs r ON r.id = q.run_id \
             WHERE (q.claimed_by IS NULL OR q.lease_expires_at < now()) \
               AND r.status NOT IN ('completed', 'failed', 'cancelled') \
         ), picked AS ( \
             SELECT q.id FROM step_queue q JOIN ready ON ready.id = q.id \
             WHERE q.claimed_by IS NULL OR q.lease_expires_at < now() \
             ORDER BY ready.turn, q.id LIMIT $1 \
             FOR UPDATE OF q SKIP LOCKED \
         ) \
         UPDATE step_queue s SET claimed_by = $2, claim_token = s.claim_token + 1, \
             lease_expires_at = now() + make_interval(secs => $3) \
         FROM picked WHERE s.id = picked.id \
         RETURNING s.id, s.claim_token, s.job::text",
    )
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .bind(replica)
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    let mut claimed = Vec::with_capacity(rows.len());
    for (id, token, body) in rows {
        match serde_json::from_str::<StepJob>(&body) {
            Ok(job) => claimed.push(Claimed { id, token, job }),
            Err(e) => {
                // A row no build of ours could have written: drop it rather than claim it forever.
                tracing::error!(row = id, error = %e, "undecodable step in the queue; removed");
                let _ = sqlx::query("DELETE FROM step_queue WHERE id = $1").bind(id).execute(pool).await;
            }
        }
    }
    Ok(claimed)
}

/// Pushes the leases of `claims` (row, token) on; returns the rows still claimed by `replica`.
pub(super) async fn renew_claims(
    pool: &PgPool,
    replica: &str,
    claims: &[(i64, i64)],
    ttl: Duration,
) -> Result<Vec<i64>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens): (Vec<i64>, Vec<i64>) = claims.iter().copied().unzip();
    sqlx::query_scalar(
        "UPDATE step_queue q SET lease_expires_at = now() + make_interval(secs => $4) \
         FROM unnest($1::bigint[], $2::bigint[]) AS c(id, token) \
         WHERE q.id = c.id AND q.claim_token = c.token AND q.claimed_by = $3 \
         RETURNING q.id",
    )
    .bind(ids)
    .bind(tokens)
    .bind(replica)
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await
    .map_err(backend)
}

/// Sends `messages` of a claimed step to its run's inbox, only while the claim (row, token) is
/// still `replica`'s; `done` also removes the row (the attempt reported). One statement: the
/// claim's row is locked, checked, and everything else depends on it. Returns false when the
/// claim was lost: nothing was sent.
pub(super) async fn report(
    pool: &PgPool,
    replica: &str,
    claim: (i64, i64),
    messages: &[InboxMessage],
    done: bool,
) -> Result<bool, StoreError> {
    let bodies =
        messages.iter().map(serde_json::to_string).collect::<Result<Vec<_>, _>>().map_err(backend)?;
    let held: i64 = sqlx::query_scalar(
        "WITH claim AS ( \
             SELECT q.id, q.run_id, r.owner FROM step_queue q JOIN runs r ON r.id = q.run_id \
             WHERE q.id = $1 AND q.claim_token = $2 AND q.claimed_by = $3 FOR UPDATE OF q \
         ), sent AS ( \
             INSERT INTO run_inbox (run_id, body) \
             SELECT claim.run_id, m.body::jsonb FROM claim, unnest($4::text[]) WITH ORDINALITY AS m(body, n) \
             ORDER BY m.n \
         ), removed AS ( \
             DELETE FROM step_queue WHERE $5 AND id IN (SELECT id FROM claim) \
         ), woken AS ( \
             SELECT pg_notify($6, coalesce(claim.owner, '')) FROM claim \
         ) \
         SELECT (SELECT count(*) FROM claim) + 0 * (SELECT count(*) FROM woken)",
    )
    .bind(claim.0)
    .bind(claim.1)
    .bind(replica)
    .bind(bodies)
    .bind(done)
    .bind(INBOX_CHANNEL)
    .fetch_one(pool)
    .await
    .map_err(backend)?;
    Ok(held > 0)
}

/// Takes the inbox messages of the runs `held` (run, epoch) whose leases `replica` still holds
/// in the database, oldest first. A replica that lost a lease without knowing yet must not take
/// the new owner's messages.
pub(super) async fn take_inbox(
    pool: &PgPool,
    replica: &str,
    held: &[(String, i64)],
) -> Result<Vec<(RunId, InboxMessage)>, StoreError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let (runs, epochs): (Vec<&str>, Vec<i64>) = held.iter().map(|(r, e)| (r.as_str(), *e)).unzip();
    let mut rows: Vec<(i64, String, String)> = sqlx::query_as(
        "DELETE FROM run_inbox i USING runs r, unnest($1::text[], $2::bigint[]) AS h(id, epoch) \
         WHERE i.run_id = h.id AND r.id = h.id AND r.lease_epoch = h.epoch AND r.owner = $3 \
         RETURNING i.id, i.run_id, i.body::text",
    )
    .bind(runs)
    .bind(epochs)
    .bind(replica)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.sort_by_key(|r| r.0);
    let mut out = Vec::with_capacity(rows.len());
    for (id, run, body) in rows {
        match serde_json::from_str(&body) {
            Ok(m) => out.push((RunId(run), m)),
            Err(e) => tracing::error!(row = id, run = %run, error = %e, "undecodable inbox message; dropped"),
        }
    }
    Ok(out)
}

/// Steps waiting to be claimed, and how long the oldest has waited.
pub(super) async fn depth(pool: &PgPool) -> Result<(u64, f64), StoreError> {
    let (n, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(enqueued_at))::float8 \
         FROM step_queue WHERE claimed_by IS NULL OR lease_expires_at < now()",
    )
    .fetch_one(pool)
    .await
    .map_err(backend)?;
    Ok((u64::try_from(n).unwrap_or(0), oldest.unwrap_or(0.0)))
}

#[cfg(test)]
mod tests {
    //! Against the Postgres that `STEPWISE_TEST_POSTGRES_URL` names (`.ci/postgres.sh`).
    use super::*;
    use crate::options::StepBudget;
    use crate::plan::StepSpec;
    use crate::run::{RunEvent, RunId};
    use crate::store::RunStore;
    use crate::store::postgres::PostgresStore;
    use crate::telemetry::TraceContext;

    async fn store() -> PostgresStore {
        let base = std::env::var("STEPWISE_TEST_POSTGRES_URL").expect(
            "STEPWISE_TEST_POSTGRES_URL is not set: eval \"$(bash .ci/postgres.sh)\" starts a Postgres",
        );
        let admin = PgPool::connect(&base).await.unwrap();
        let schema = format!("q_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        PostgresStore::connect(&format!("{base}{sep}options[search_path]={schema}")).await.unwrap()
    }

    fn job(run: &RunId, step: usize) -> Outgoing {
        Outgoing::Enqueue(Box::new(StepJob {
            run_id: run.clone(),
            task: "t".into(),
            goal: "g".into(),
            step: StepSpec {
                id: crate::plan::StepId(format!("s{step}")),
                description: "d".into(),
                expected_outcome: "e".into(),
                tool: None,
                depends_on: vec![],
            },
            attempt: 1,
            inputs: vec![],
            budget: StepBudget::default(),
            run_spend: Default::default(),
            verify: false,
            approve_tools: vec![],
            approve_destructive: false,
            resume: None,
            trace: TraceContext::default(),
            cancel: Default::default(),
            events: Default::default(),
        }))
    }

    async fn new_run(store: &PostgresStore) -> RunId {
        let run = RunId::new();
        let kind = EventKind::RunSubmitted { task: "t".into(), options: Default::default() };
        store.append(&RunEvent { run_id: run.clone(), seq: 1, at: chrono::Utc::now(), kind }).await.unwrap();
        run
    }

    #[tokio::test]
    async fn a_run_with_a_thousand_ready_steps_does_not_starve_ten_runs_with_one() {
        let store = store().await;
        let big = new_run(&store).await;
        let mut outgoing: Vec<Outgoing> = (0..1000).map(|i| job(&big, i)).collect();
        let mut small = Vec::new();
        for _ in 0..10 {
            let run = new_run(&store).await;
            outgoing.push(job(&run, 0));
            small.push(run);
        }
        write_outgoing(store.pool(), &outgoing).await.unwrap();
        let ttl = Duration::from_secs(30);
        let first = claim(store.pool(), "r", 11, ttl).await.unwrap();
        let mut runs: Vec<&RunId> = first.iter().map(|c| &c.job.run_id).collect();
        runs.sort();
        runs.dedup();
        assert_eq!(runs.len(), 11, "each run's first step comes before any run's second");
        let next = claim(store.pool(), "r", 5, ttl).await.unwrap();
        assert!(next.iter().all(|c| c.job.run_id == big));
        // Claimed rows are not claimed twice; a withdrawn run's rows are gone.
        write_outgoing(store.pool(), &[Outgoing::Withdraw(big.clone(), None)]).await.unwrap();
        assert!(claim(store.pool(), "other", 100, ttl).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_report_whose_claim_was_taken_over_is_refused() {
        let store = store().await;
        let run = new_run(&store).await;
        write_outgoing(store.pool(), &[job(&run, 0)]).await.unwrap();
        // Claimed by a, whose lease expires at once; then claimed by b.
        let a = claim(store.pool(), "a", 1, Duration::ZERO).await.unwrap().remove(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b = claim(store.pool(), "b", 1, Duration::from_secs(30)).await.unwrap().remove(0);
        assert_eq!(a.id, b.id);
        let report = |step: &str| InboxMessage::Tool(EventKind::RunCancelled { reason: step.into() });
        assert!(!report_ok(&store, "a", (a.id, a.token), report("a")).await, "a's claim was taken over");
        assert!(report_ok(&store, "b", (b.id, b.token), report("b")).await);
        // The run's lease is not b's (it has none): its inbox is not b's to take.
        assert!(take_inbox(store.pool(), "b", &[(run.0.clone(), 0)]).await.unwrap().is_empty());
        let sql = "UPDATE runs SET owner = 'b', lease_epoch = 3 WHERE id = $1";
        sqlx::query(sql).bind(run.as_str()).execute(store.pool()).await.unwrap();
        let inbox = take_inbox(store.pool(), "b", &[(run.0.clone(), 3)]).await.unwrap();
        assert_eq!(inbox.len(), 1, "only b's report arrived");
        assert!(
            renew_claims(store.pool(), "a", &[(a.id, a.token)], Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn report_ok(store: &PostgresStore, who: &str, claim: (i64, i64), m: InboxMessage) -> bool {
        report(store.pool(), who, claim, &[m], true).await.unwrap()
    }
}
