//! Run events in PostgreSQL (feature `postgres`): the store several `stepwise serve` replicas can
//! share.
//!
//! Same schema and semantics as the SQLite store (`migrations/postgres/`). An append is one
//! transaction that locks the run row (`SELECT … FOR UPDATE`), checks the seq, inserts the event
//! and updates the row, so two writers can never both append seq N: the second waits for the
//! first, then sees the new `last_seq` and gets `Conflict`. Two writers racing to create a run
//! collide on the primary key, and the loser gets `Conflict` too. (A batch spanning several runs
//! locks them in batch order; callers that batch concurrently across runs should keep one order.)
//!
//! Replicas (`crate::cluster`) append through [`PostgresStore::append_fenced`]: the same
//! transaction also checks that the run's lease is still the caller's (owner and epoch), so a
//! replica whose lease was taken over cannot write, even when its seq would fit. Every append
//! notifies [`EVENTS_CHANNEL`] with the run id, on commit, for event streams on other replicas.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::plan_cache::{
    EntryRow, PlanCache, PlanCacheBounds, PlanCacheEntry, entry_columns, entry_from_row, entry_to_row,
};
use super::{
    ListQuery, RunStore, RunSummary, StatusChange, StoreError, backend, check_append, seq_to_sql, sql_events,
    sql_list, sql_unfinished, summary_from_row, time_to_sql,
};
use crate::run::{RunEvent, RunId};

/// The channel every append notifies, with the run id as payload.
pub const EVENTS_CHANNEL: &str = "stepwise_events";

/// Who may append to which runs: a replica and the lease epoch it holds for each of its runs.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    /// The replica.
    pub owner: &'a str,
    /// The epoch of each run whose lease it holds; a run it creates starts at epoch 1.
    pub epochs: &'a HashMap<RunId, i64>,
    /// How long a new run's lease lasts before its first heartbeat.
    pub ttl: Duration,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Run events in a Postgres database (see the module docs).
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`, libpq-style parameters allowed,
    /// e.g. `?options[search_path]=stepwise`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, 8, None).await
    }

    /// [`connect`](Self::connect) with a pool of `connections`, and sessions that the server
    /// ends when they sit idle inside a transaction for longer than `idle_in_transaction`: a
    /// replica frozen mid-transaction must not keep a run's row locked past its lease.
    pub async fn connect_with(
        url: &str,
        connections: u32,
        idle_in_transaction: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let invalid =
            |e: sqlx::Error| StoreError::InvalidUrl { url: "postgres://…".into(), message: e.to_string() };
        let mut options: PgConnectOptions = url.parse().map_err(invalid)?;
        if let Some(limit) = idle_in_transaction {
            options = options
                .options([("idle_in_transaction_session_timeout", format!("{}ms", limit.as_millis()))]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to Postgres: {e}")))?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Backend(format!("migrating Postgres: {e}")))?;
        Ok(Self { pool })
    }

    /// The connection pool (the replica coordination shares it).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends `events` like [`RunStore::append_batch`], only while `fence` holds each run's
    /// lease: otherwise nothing is written and the error is [`StoreError::Fenced`].
    pub async fn append_fenced(&self, events: &[RunEvent], fence: Fence<'_>) -> Result<(), StoreError> {
        self.append_all(events, Some(fence)).await
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The `Conflict` for a write that lost a race: what the run expects now.
    async fn lost_race(&self, event: &RunEvent) -> StoreError {
        let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM runs WHERE id = $1")
            .bind(event.run_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .unwrap_or(None);
        let expected = last.map_or(1, |l| u64::try_from(l).unwrap_or(0) + 1);
        StoreError::Conflict { run: event.run_id.clone(), expected, got: event.seq }
    }

    /// Runs `events` in one transaction, one run's consecutive events at a time; a primary-key
    /// collision becomes `Conflict`.
    async fn append_all(&self, events: &[RunEvent], fence: Option<Fence<'_>>) -> Result<(), StoreError> {
        if let Some(appended) = self.append_in_one(events, fence).await? {
            return Ok(appended);
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for group in events.chunk_by(|a, b| a.run_id == b.run_id) {
            match append_group(&mut tx, group, fence).await {
                Ok(()) => {}
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Collision) => {
                    drop(tx);
                    return Err(self.lost_race(&group[0]).await);
                }
            }
        }
        tx.commit().await.map_err(backend)
    }
}

impl PostgresStore {
    /// The common append, one run's next events, as one statement: the run's row is updated
    /// only if its seq, and its lease when fenced, are what the events expect, and the events
    /// are inserted only if it was. `None` when the statement did not apply (a new run, several
    /// runs, or a check that failed): the checked path then appends, or says what is wrong.
    async fn append_in_one(
        &self,
        events: &[RunEvent],
        fence: Option<Fence<'_>>,
    ) -> Result<Option<()>, StoreError> {
        let Some(first) = events.first() else { return Ok(Some(())) };
        let run = &first.run_id;
        let consecutive = events.iter().zip(first.seq..).all(|(e, seq)| &e.run_id == run && e.seq == seq);
        if !consecutive || first.seq == 0 {
            return Ok(None);
        }
        if first.seq == 1 {
            return self.create_in_one(events, fence).await;
        }
        let change = events.iter().rev().find_map(|e| StatusChange::of(&e.kind));
        let finished = events.iter().rev().find(|e| e.kind.is_terminal()).map(|e| time_to_sql(&e.at));
        let epoch = fence.map(|f| f.epochs.get(run).copied().unwrap_or(-1));
        let mut rows = EventColumns::default();
        for e in events {
            rows.push(e)?;
        }
        let done: Option<i32> = sqlx::query_scalar(
            "WITH updated AS ( \
                 UPDATE runs SET \
                     status = CASE WHEN $2::text IS NOT NULL THEN $2 \
                         WHEN $3 THEN (CASE WHEN require_approval THEN 'awaiting_approval' ELSE 'running' END) \
                         ELSE status END, \
                     finished_at = coalesce($4, finished_at), last_seq = $5 \
                 WHERE id = $1 AND last_seq = $6 AND ($7::text IS NULL OR (owner = $7 AND lease_epoch = $8)) \
                 RETURNING id \
             ), inserted AS ( \
                 INSERT INTO events (run_id, seq, at, type, body) \
                 SELECT $1, e.seq, e.at, e.type, e.body::jsonb \
                 FROM unnest($9::bigint[], $10::text[], $11::text[], $12::text[]) AS e(seq, at, type, body) \
                 WHERE EXISTS (SELECT 1 FROM updated) \
             ) \
             SELECT 1 FROM (SELECT pg_notify($13, $1) FROM updated) AS notified",
        )
        .bind(run.as_str())
        .bind(match change {
            Some(StatusChange::To(status)) => Some(status.as_str()),
            _ => None,
        })
        .bind(change == Some(StatusChange::PlanProposed))
        .bind(finished)
        .bind(seq_to_sql(events[events.len() - 1].seq))
        .bind(seq_to_sql(first.seq - 1))
        .bind(fence.map(|f| f.owner))
        .bind(epoch)
        .bind(rows.seq)
        .bind(rows.at)
        .bind(rows.kind)
        .bind(rows.body)
        .bind(EVENTS_CHANNEL)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.map(|_| ()))
    }
}

impl PostgresStore {
    /// A new run's first events as one statement: its row, its events, the notification. A run
    /// that exists already makes the insert collide: `Conflict`. `None` when the events do not
    /// start a run: the checked path says what is wrong, against the run if it exists.
    async fn create_in_one(
        &self,
        events: &[RunEvent],
        fence: Option<Fence<'_>>,
    ) -> Result<Option<()>, StoreError> {
        let mut summary = None;
        for e in events {
            match check_append(summary, e) {
                Ok(next) => summary = Some(next),
                Err(_) => return Ok(None),
            }
        }
        let Some(next) = summary else { return Ok(Some(())) };
        let mut rows = EventColumns::default();
        for e in events {
            rows.push(e)?;
        }
        let statement = sqlx::query(
            "WITH created AS ( \
                 INSERT INTO runs (id, task, status, created_at, finished_at, last_seq, require_approval, \
                     owner, lease_epoch, lease_expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10)) RETURNING id \
             ), inserted AS ( \
                 INSERT INTO events (run_id, seq, at, type, body) \
                 SELECT created.id, e.seq, e.at, e.type, e.body::jsonb FROM created, \
                     unnest($11::bigint[], $12::text[], $13::text[], $14::text[]) AS e(seq, at, type, body) \
             ) \
             SELECT pg_notify($15, id) FROM created",
        );
        let created = bind_run(statement, &next, fence)
            .bind(rows.seq)
            .bind(rows.at)
            .bind(rows.kind)
            .bind(rows.body)
            .bind(EVENTS_CHANNEL)
            .execute(&self.pool)
            .await;
        match created.map_err(db_failure) {
            Ok(_) => Ok(Some(())),
            Err(Failure::Store(e)) => Err(e),
            Err(Failure::Collision) => Err(self.lost_race(&events[0]).await),
        }
    }
}

enum Failure {
    Store(StoreError),
    /// A unique violation: another writer created the run (or the seq) first.
    Collision,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

fn db_failure(e: sqlx::Error) -> Failure {
    match e.as_database_error() {
        Some(d) if d.is_unique_violation() => Failure::Collision,
        _ => Failure::Store(backend(e)),
    }
}

/// A `runs` row with its lease: the summary columns, then owner and epoch.
type LeasedRow = (String, String, String, String, Option<String>, i64, bool, Option<String>, i64);

/// Appends one run's consecutive `events` inside an open transaction: the run's row is locked
/// and checked (seq, first event, fence), then written with every event and the notification in
/// one statement, so a batch costs the same few round trips whatever its length.
async fn append_group(
    conn: &mut PgConnection,
    events: &[RunEvent],
    fence: Option<Fence<'_>>,
) -> Result<(), Failure> {
    let run = &events[0].run_id;
    let row: Option<LeasedRow> = sqlx::query_as(
        "SELECT id, task, status, created_at, finished_at, last_seq, require_approval, owner, lease_epoch \
         FROM runs WHERE id = $1 FOR UPDATE",
    )
    .bind(run.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(backend)?;
    let exists = row.is_some();
    let mut summary = match row {
        Some((id, task, status, created, finished, seq, approval, owner, epoch)) => {
            if let Some(f) = fence {
                check_fence(run, f, owner, epoch)?;
            }
            Some(summary_from_row((id, task, status, created, finished, seq, approval))?)
        }
        None => None,
    };
    for event in events {
        summary = Some(check_append(summary, event)?);
    }
    let Some(next) = summary else { return Ok(()) };
    if !exists {
        insert_run(conn, &next, fence).await?;
    }
    let mut rows = EventColumns::default();
    for e in events {
        rows.push(e)?;
    }
    sqlx::query(
        "WITH updated AS (UPDATE runs SET status = $2, finished_at = $3, last_seq = $4 WHERE id = $1), \
         inserted AS (INSERT INTO events (run_id, seq, at, type, body) \
             SELECT $1, e.seq, e.at, e.type, e.body::jsonb \
             FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[]) AS e(seq, at, type, body)) \
         SELECT pg_notify($9, $1)",
    )
    .bind(run.as_str())
    .bind(next.status.as_str())
    .bind(next.finished_at.as_ref().map(time_to_sql))
    .bind(seq_to_sql(next.last_seq))
    .bind(rows.seq)
    .bind(rows.at)
    .bind(rows.kind)
    .bind(rows.body)
    .bind(EVENTS_CHANNEL)
    .execute(&mut *conn)
    .await
    .map_err(db_failure)?;
    Ok(())
}

/// The events of one append, column by column (for `unnest`).
#[derive(Default)]
struct EventColumns {
    seq: Vec<i64>,
    at: Vec<String>,
    kind: Vec<&'static str>,
    body: Vec<String>,
}

impl EventColumns {
    fn push(&mut self, e: &RunEvent) -> Result<(), StoreError> {
        self.body.push(serde_json::to_string(e).map_err(backend)?);
        self.seq.push(seq_to_sql(e.seq));
        self.at.push(time_to_sql(&e.at));
        self.kind.push(e.kind.name());
        Ok(())
    }
}

/// The `runs` row of a new run (its lease is `fence`'s owner's, epoch 1).
async fn insert_run(
    conn: &mut PgConnection,
    next: &RunSummary,
    fence: Option<Fence<'_>>,
) -> Result<(), Failure> {
    let insert = sqlx::query(
        "INSERT INTO runs (id, task, status, created_at, finished_at, last_seq, require_approval, \
         owner, lease_epoch, lease_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))",
    );
    bind_run(insert, next, fence).execute(&mut *conn).await.map_err(db_failure)?;
    Ok(())
}

/// Binds a new run's `runs` columns as `$1`…`$10`: its summary, then its lease (`fence`'s
/// owner at epoch 1, for the fence's TTL; no owner without a fence).
fn bind_run<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    next: &'q RunSummary,
    fence: Option<Fence<'q>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(next.id.as_str())
        .bind(&next.task)
        .bind(next.status.as_str())
        .bind(time_to_sql(&next.created_at))
        .bind(next.finished_at.as_ref().map(time_to_sql))
        .bind(seq_to_sql(next.last_seq))
        .bind(next.require_approval)
        .bind(fence.map(|f| f.owner))
        .bind(if fence.is_some() { 1_i64 } else { 0 })
        .bind(fence.map_or(0.0, |f| f.ttl.as_secs_f64()))
}

/// The run's lease must be `fence`'s: same owner, same epoch.
fn check_fence(run: &RunId, fence: Fence<'_>, owner: Option<String>, epoch: i64) -> Result<(), Failure> {
    let held = fence.epochs.get(run).copied();
    if owner.as_deref() == Some(fence.owner) && held == Some(epoch) {
        return Ok(());
    }
    Err(Failure::Store(StoreError::Fenced { run: run.clone(), owner, epoch: held.unwrap_or(0) }))
}

#[async_trait::async_trait]
impl RunStore for PostgresStore {
    async fn append(&self, event: &RunEvent) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(event), None).await
    }

    async fn append_batch(&self, events: &[RunEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.append_all(events, None).await
    }

    async fn events(&self, run: &RunId, after: u64) -> Result<Vec<RunEvent>, StoreError> {
        sql_events(&self.pool, run, after, "body::text").await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<RunSummary>, StoreError> {
        sql_list(&self.pool, query).await
    }

    async fn unfinished(&self) -> Result<Vec<RunId>, StoreError> {
        sql_unfinished(&self.pool).await
    }

    fn plan_cache(&self) -> Option<&dyn PlanCache> {
        Some(self)
    }
}

/// Replicas share the cache. A write holds a transaction-scoped advisory lock, so concurrent
/// writers' evictions take turns (no deadlock between their deletes, and the bound holds); reads
/// and removals are single statements.
#[async_trait::async_trait]
impl PlanCache for PostgresStore {
    async fn get(&self, key: &str) -> Result<Option<PlanCacheEntry>, StoreError> {
        let sql = concat!("SELECT ", entry_columns!(), " FROM plan_cache WHERE key = $1");
        let row: Option<EntryRow> =
            sqlx::query_as(sql).bind(key).fetch_optional(&self.pool).await.map_err(backend)?;
        row.map(entry_from_row).transpose()
    }

    async fn put(&self, entry: &PlanCacheEntry, bounds: &PlanCacheBounds) -> Result<(), StoreError> {
        let r = entry_to_row(entry)?;
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PLAN_CACHE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let upsert = concat!(
            "INSERT INTO plan_cache (",
            entry_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (key) DO UPDATE SET model = excluded.model, task = excluded.task, \
             plan = excluded.plan, source_run = excluded.source_run, created_at = excluded.created_at"
        );
        sqlx::query(upsert)
            .bind(r.0)
            .bind(r.1)
            .bind(r.2)
            .bind(r.3)
            .bind(r.4)
            .bind(r.5)
            .bind(r.6)
            .bind(r.7)
            .bind(r.8)
            .bind(r.9)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let cutoff = time_to_sql(&bounds.cutoff(chrono::Utc::now()));
        sqlx::query("DELETE FROM plan_cache WHERE created_at <= $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "DELETE FROM plan_cache WHERE key NOT IN \
             (SELECT key FROM plan_cache ORDER BY created_at DESC, key DESC LIMIT $1)",
        )
        .bind(i64::try_from(bounds.max_entries).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn remove_from(&self, source: &RunId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM plan_cache WHERE source_run = $1")
            .bind(source.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn entries(&self) -> Result<Vec<PlanCacheEntry>, StoreError> {
        let sql = concat!("SELECT ", entry_columns!(), " FROM plan_cache ORDER BY created_at DESC, key DESC");
        let rows: Vec<EntryRow> = sqlx::query_as(sql).fetch_all(&self.pool).await.map_err(backend)?;
        rows.into_iter().map(entry_from_row).collect()
    }

    async fn clear(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM plan_cache").execute(&self.pool).await.map_err(backend)?;
        Ok(done.rows_affected())
    }
}

/// The advisory lock key of plan cache writes (any fixed number no other lock uses).
const PLAN_CACHE_LOCK: i64 = 0x5374_6570_5043; // "StepPC"
