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
//! Not here yet (DESIGN §3): leases for multi-replica claiming of runs and ready steps
//! (`FOR UPDATE SKIP LOCKED` plus heartbeats and expiry). Today the seq check keeps a second
//! writer from corrupting a log, but nothing stops two replicas from both resuming a run.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use super::{
    ListQuery, RunStore, RunSummary, StoreError, SummaryRow, backend, check_append, seq_to_sql, sql_events,
    sql_list, sql_unfinished, summary_from_row, time_to_sql,
};
use crate::run::{RunEvent, RunId};

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
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to Postgres: {e}")))?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Backend(format!("migrating Postgres: {e}")))?;
        Ok(Self { pool })
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

    /// Runs `events` in one transaction; a primary-key collision becomes `Conflict`.
    async fn append_all(&self, events: &[RunEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for event in events {
            match append_in(&mut tx, event).await {
                Ok(()) => {}
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Collision) => {
                    drop(tx);
                    return Err(self.lost_race(event).await);
                }
            }
        }
        tx.commit().await.map_err(backend)
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

/// One append inside an open transaction.
async fn append_in(conn: &mut PgConnection, event: &RunEvent) -> Result<(), Failure> {
    let row: Option<SummaryRow> = sqlx::query_as(
        "SELECT id, task, status, created_at, finished_at, last_seq, require_approval \
         FROM runs WHERE id = $1 FOR UPDATE",
    )
    .bind(event.run_id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(backend)?;
    let exists = row.is_some();
    let prev = row.map(summary_from_row).transpose()?;
    let next = check_append(prev, event)?;
    let finished_at = next.finished_at.as_ref().map(time_to_sql);
    if exists {
        sqlx::query("UPDATE runs SET status = $1, finished_at = $2, last_seq = $3 WHERE id = $4")
            .bind(next.status.as_str())
            .bind(finished_at)
            .bind(seq_to_sql(next.last_seq))
            .bind(event.run_id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
    } else {
        sqlx::query(
            "INSERT INTO runs (id, task, status, created_at, finished_at, last_seq, require_approval) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event.run_id.as_str())
        .bind(&next.task)
        .bind(next.status.as_str())
        .bind(time_to_sql(&next.created_at))
        .bind(finished_at)
        .bind(seq_to_sql(next.last_seq))
        .bind(next.require_approval)
        .execute(&mut *conn)
        .await
        .map_err(db_failure)?;
    }
    let body = serde_json::to_string(event).map_err(backend)?;
    sqlx::query("INSERT INTO events (run_id, seq, at, type, body) VALUES ($1, $2, $3, $4, $5::jsonb)")
        .bind(event.run_id.as_str())
        .bind(seq_to_sql(event.seq))
        .bind(time_to_sql(&event.at))
        .bind(event.kind.name())
        .bind(body)
        .execute(&mut *conn)
        .await
        .map_err(db_failure)?;
    Ok(())
}

#[async_trait::async_trait]
impl RunStore for PostgresStore {
    async fn append(&self, event: &RunEvent) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(event)).await
    }

    async fn append_batch(&self, events: &[RunEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.append_all(events).await
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
}
