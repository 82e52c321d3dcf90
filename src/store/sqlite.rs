//! The default durable store: one SQLite file in WAL mode.
//!
//! Writes go through one writer task with one connection (group commit): appends that arrive
//! while a transaction is being written are committed together in the next one, each inside its
//! own savepoint, so a `Conflict` in one append (its seq is not the run's next) rolls back only
//! that append. Every append checks the seq against the run row, inserts the event and updates
//! the run row (the fold of its events). Callers get their answer after the commit, so an
//! acknowledged append is as durable as a lone one; many concurrent runs share each commit
//! instead of queueing on SQLite's write lock (whose busy handler sleeps). Readers use their own
//! connections and never block the writer (WAL).
//!
//! Durability: `synchronous = NORMAL`. A committed append survives the process crashing or being
//! killed (`kill -9`), which is what `stepwise serve` promises; an OS crash or power loss may
//! lose the last few commits (the file stays consistent). `?synchronous=full` on the URL, or
//! [`Durability::Full`], also survives those at the price of an fsync per append (see the
//! figures printed by `tests/store_suite.rs`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{
    ListQuery, RunStore, RunSummary, StoreError, SummaryRow, UNFINISHED_SQL, backend, check_append,
    event_from_sql, list_query, seq_to_sql, summary_from_row, time_to_sql,
};
use crate::run::{RunEvent, RunId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = NORMAL`: survives a process crash; an OS crash may lose the last commits.
    #[default]
    Normal,
    /// `synchronous = FULL`: an fsync per commit; survives power loss too.
    Full,
}

/// Run events in a SQLite file (see the module docs for the durability promise).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    writes: mpsc::Sender<WriteRequest>,
}

/// Appends waiting for the writer: one or more events committed all-or-nothing.
struct WriteRequest {
    events: Vec<RunEvent>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Most appends committed in one transaction.
const MAX_GROUP: usize = 512;

impl SqliteStore {
    /// Opens (creating file and parent directories) the store at a path or a `sqlite:` URL, and
    /// brings its schema up to date. `?synchronous=full` on a URL selects [`Durability::Full`].
    pub async fn open(path_or_url: &str) -> Result<Self, StoreError> {
        if !path_or_url.starts_with("sqlite:") {
            return Self::open_path(Path::new(path_or_url)).await;
        }
        let (url, durability) = split_durability(path_or_url)?;
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| StoreError::InvalidUrl { url: path_or_url.to_owned(), message: e.to_string() })?;
        Self::open_with(options, durability).await
    }

    /// Opens (creating it) the store in the file at `path`, with [`Durability::Normal`].
    pub async fn open_path(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(SqliteConnectOptions::new().filename(path), Durability::Normal).await
    }

    /// Opens with explicit connect options (the pragmas below are applied on top).
    pub async fn open_with(
        options: SqliteConnectOptions,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        let file = options.get_filename().to_path_buf();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let opening = |e: sqlx::Error| StoreError::Backend(format!("opening {}: {e}", file.display()));
        // One connection writes (see the module docs); a few more let readers run beside it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(opening)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", file.display())))?;
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(opening)?;
        let (writes, queue) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(write_loop(writer.clone(), queue));
        Ok(Self { pool, writer, writes })
    }

    /// Closes the pools, waiting for connections to finish (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// Hands events to the writer and waits for their commit.
    async fn write(&self, events: Vec<RunEvent>) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let closed = || StoreError::Backend("the SQLite writer has stopped".into());
        self.writes.send(WriteRequest { events, done }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// Takes our own `synchronous=normal|full` parameter off a URL (sqlx does not know it).
fn split_durability(url: &str) -> Result<(String, Durability), StoreError> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), Durability::Normal)) };
    let mut durability = Durability::Normal;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("synchronous", v)) => {
                durability = match v.to_ascii_lowercase().as_str() {
                    "normal" => Durability::Normal,
                    "full" => Durability::Full,
                    _ => {
                        return Err(StoreError::InvalidUrl {
                            url: url.to_owned(),
                            message: format!("synchronous={v}: expected normal or full"),
                        });
                    }
                }
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((url, durability))
}

/// The writer task: takes every request that is waiting, commits them in one transaction.
async fn write_loop(writer: SqlitePool, mut queue: mpsc::Receiver<WriteRequest>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let results = match commit_group(&writer, &group).await {
            Ok(results) => results,
            // The transaction itself failed: nothing of it was committed.
            Err(e) => group.iter().map(|_| Err(StoreError::Backend(e.to_string()))).collect(),
        };
        for (request, result) in group.into_iter().zip(results) {
            // The caller may have given up waiting; the commit stands either way.
            let _ = request.done.send(result);
        }
    }
}

/// One transaction over a group of requests, each in its own savepoint.
async fn commit_group(
    writer: &SqlitePool,
    group: &[WriteRequest],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        sqlx::query("SAVEPOINT w").execute(&mut *tx).await.map_err(backend)?;
        let mut result = Ok(());
        for event in &request.events {
            if let Err(e) = append_in(&mut tx, event).await {
                result = Err(e);
                break;
            }
        }
        if result.is_err() {
            sqlx::query("ROLLBACK TO w").execute(&mut *tx).await.map_err(backend)?;
        }
        sqlx::query("RELEASE w").execute(&mut *tx).await.map_err(backend)?;
        results.push(result);
    }
    tx.commit().await.map_err(backend)?;
    Ok(results)
}

/// One append inside an open write transaction.
async fn append_in(conn: &mut SqliteConnection, event: &RunEvent) -> Result<(), StoreError> {
    let row: Option<SummaryRow> = sqlx::query_as(
        "SELECT id, task, status, created_at, finished_at, last_seq, require_approval FROM runs WHERE id = ?",
    )
    .bind(event.run_id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(backend)?;
    let exists = row.is_some();
    let prev = row.map(summary_from_row).transpose()?;
    let expected = prev.as_ref().map_or(1, |s| s.last_seq + 1);
    let next = check_append(prev, event)?;
    let finished_at = next.finished_at.as_ref().map(time_to_sql);
    if exists {
        sqlx::query("UPDATE runs SET status = ?, finished_at = ?, last_seq = ? WHERE id = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        .map_err(backend)?;
    }
    let body = serde_json::to_string(event).map_err(backend)?;
    sqlx::query("INSERT INTO events (run_id, seq, at, type, body) VALUES (?, ?, ?, ?, ?)")
        .bind(event.run_id.as_str())
        .bind(seq_to_sql(event.seq))
        .bind(time_to_sql(&event.at))
        .bind(event.kind.name())
        .bind(body)
        .execute(&mut *conn)
        .await
        .map_err(|e| match e.as_database_error() {
            // Only reachable if the run row and the events disagree; still never a second seq N.
            Some(d) if d.is_unique_violation() => {
                StoreError::Conflict { run: event.run_id.clone(), expected, got: event.seq }
            }
            _ => backend(e),
        })?;
    Ok(())
}

#[async_trait::async_trait]
impl RunStore for SqliteStore {
    async fn append(&self, event: &RunEvent) -> Result<(), StoreError> {
        self.write(vec![event.clone()]).await
    }

    async fn append_batch(&self, events: &[RunEvent]) -> Result<(), StoreError> {
        self.write(events.to_vec()).await
    }

    async fn events(&self, run: &RunId, after: u64) -> Result<Vec<RunEvent>, StoreError> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, body FROM events WHERE run_id = ? AND seq > ? ORDER BY seq")
                .bind(run.as_str())
                .bind(seq_to_sql(after))
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        if rows.is_empty() {
            let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM runs WHERE id = ?")
                .bind(run.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            if known.is_none() {
                return Err(StoreError::UnknownRun(run.clone()));
            }
        }
        rows.iter().map(|(seq, body)| event_from_sql(run, *seq, body)).collect()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<RunSummary>, StoreError> {
        let rows: Vec<SummaryRow> =
            list_query::<Sqlite>(query).build_query_as().fetch_all(&self.pool).await.map_err(backend)?;
        rows.into_iter().map(summary_from_row).collect()
    }

    async fn unfinished(&self) -> Result<Vec<RunId>, StoreError> {
        let ids: Vec<String> =
            sqlx::query_scalar(UNFINISHED_SQL).fetch_all(&self.pool).await.map_err(backend)?;
        Ok(ids.into_iter().map(RunId).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_is_taken_off_the_url() {
        let (u, d) = split_durability("sqlite:///x/y.db?mode=rwc&synchronous=FULL").unwrap();
        assert_eq!((u.as_str(), d), ("sqlite:///x/y.db?mode=rwc", Durability::Full));
        let (u, d) = split_durability("sqlite://y.db").unwrap();
        assert_eq!((u.as_str(), d), ("sqlite://y.db", Durability::Normal));
        assert!(split_durability("sqlite://y.db?synchronous=off").is_err());
    }
}
