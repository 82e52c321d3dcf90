//! The default durable store: one SQLite file in WAL mode.
//!
//! Writes go through one writer task with one connection (group commit): appends that arrive
//! while a transaction is being written are committed together in the next one. Each append is
//! checked first (its seq must be the run's next; the writer keeps the summary of every live run
//! it writes, so this needs no read), and only accepted appends are written: the events with
//! multi-row inserts, each changed run's row (the fold of its events) with one upsert. Callers get
//! their answer after the commit, so an acknowledged append is as durable as a lone one, and many
//! concurrent runs share each commit instead of queueing on SQLite's write lock (whose busy
//! handler sleeps). The writer assumes it is the file's only writer (one process per file).
//! Readers use their own connections and never block it (WAL).
//!
//! Durability: `synchronous = NORMAL`. A committed append survives the process crashing or being
//! killed (`kill -9`), which is what `stepwise serve` promises; an OS crash or power loss may
//! lose the last few commits (the file stays consistent). `?synchronous=full` on the URL, or
//! [`Durability::Full`], also survives those at the price of an fsync per append (see the
//! figures printed by `tests/store_suite.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use tokio::sync::{mpsc, oneshot};

use super::plan_cache::{
    EntryRow, PlanCache, PlanCacheBounds, PlanCacheEntry, entry_columns, entry_from_row, entry_to_row,
};
use super::{
    ListQuery, RunStore, RunSummary, StoreError, SummaryRow, backend, check_append, seq_to_sql, sql_events,
    sql_list, sql_unfinished, summary_from_row, time_to_sql,
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
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stepwise::{RunStore, SqliteStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open_path(&dir.path().join("stepwise.db")).await?;
/// let unfinished = store.unfinished().await?; // what a restart resumes
/// assert!(unfinished.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
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

/// The writer task's view of the runs it is writing: each run's summary after its last committed
/// event, so appends are checked without reading the database; a run leaves it when it ends.
type Known = HashMap<RunId, RunSummary>;

/// Bind parameters per statement stay well under SQLite's limit (32766).
const ROWS_PER_STATEMENT: usize = 500;

/// The writer task: takes every request that is waiting, commits them in one transaction.
async fn write_loop(writer: SqlitePool, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut known = Known::new();
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let results = commit_group(&writer, &mut known, &group).await;
        for (request, result) in group.into_iter().zip(results) {
            // The caller may have given up waiting; the commit stands either way.
            let _ = request.done.send(result);
        }
    }
}

/// Checks every request of a group in order (each all-or-nothing, later ones seeing earlier
/// accepted ones), then writes the accepted events and the runs they change in one transaction.
async fn commit_group(
    writer: &SqlitePool,
    known: &mut Known,
    group: &[WriteRequest],
) -> Vec<Result<(), StoreError>> {
    let mut after: HashMap<RunId, RunSummary> = HashMap::new();
    let mut accepted: Vec<&RunEvent> = Vec::new();
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        let mut staged: HashMap<RunId, RunSummary> = HashMap::new();
        let mut result = Ok(());
        for event in &request.events {
            let prev = match staged.get(&event.run_id).or_else(|| after.get(&event.run_id)) {
                Some(s) => Ok(Some(s.clone())),
                None => match known.get(&event.run_id) {
                    Some(s) => Ok(Some(s.clone())),
                    None => load_summary(writer, &event.run_id).await,
                },
            };
            match prev.and_then(|prev| check_append(prev, event)) {
                Ok(next) => {
                    staged.insert(event.run_id.clone(), next);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            after.extend(staged);
            accepted.extend(&request.events);
        }
        results.push(result);
    }
    if accepted.is_empty() {
        return results;
    }
    match write_rows(writer, &accepted, &after).await {
        Ok(()) => {
            for (id, summary) in after {
                if summary.status.is_terminal() {
                    known.remove(&id);
                } else {
                    known.insert(id, summary);
                }
            }
            results
        }
        Err(e) => {
            // Nothing of the group was committed; forget what we thought we knew.
            known.clear();
            let each = |_| match &e {
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                other => StoreError::Backend(other.to_string()),
            };
            results.into_iter().map(|r| r.and_then(|()| Err(each(())))).collect()
        }
    }
}

/// A run's summary as stored, or None for a run not seen yet.
async fn load_summary(writer: &SqlitePool, run: &RunId) -> Result<Option<RunSummary>, StoreError> {
    let row: Option<SummaryRow> = sqlx::query_as(
        "SELECT id, task, status, created_at, finished_at, last_seq, require_approval FROM runs WHERE id = ?",
    )
    .bind(run.as_str())
    .fetch_optional(writer)
    .await
    .map_err(backend)?;
    row.map(summary_from_row).transpose()
}

/// One transaction: each changed run's row (upserts; events refer to it), then the events
/// (multi-row inserts).
async fn write_rows(
    writer: &SqlitePool,
    events: &[&RunEvent],
    runs: &HashMap<RunId, RunSummary>,
) -> Result<(), StoreError> {
    let bodies: Vec<String> =
        events.iter().map(serde_json::to_string).collect::<Result<_, _>>().map_err(backend)?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
    let summaries: Vec<&RunSummary> = runs.values().collect();
    for chunk in summaries.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO runs (id, task, status, created_at, finished_at, last_seq, require_approval) ",
        );
        q.push_values(chunk, |mut b, s| {
            b.push_bind(s.id.as_str())
                .push_bind(s.task.as_str())
                .push_bind(s.status.as_str())
                .push_bind(time_to_sql(&s.created_at))
                .push_bind(s.finished_at.as_ref().map(time_to_sql))
                .push_bind(seq_to_sql(s.last_seq))
                .push_bind(s.require_approval);
        });
        q.push(
            " ON CONFLICT(id) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at, \
             last_seq = excluded.last_seq",
        );
        q.build().execute(&mut *tx).await.map_err(backend)?;
    }
    let rows: Vec<(&&RunEvent, &String)> = events.iter().zip(&bodies).collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO events (run_id, seq, at, type, body) ");
        q.push_values(chunk, |mut b, (e, body)| {
            b.push_bind(e.run_id.as_str())
                .push_bind(seq_to_sql(e.seq))
                .push_bind(time_to_sql(&e.at))
                .push_bind(e.kind.name())
                .push_bind(body.as_str());
        });
        q.build().execute(&mut *tx).await.map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
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
        sql_events(&self.pool, run, after, "body").await
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

/// Cache writes go through the writer's connection, so they queue behind appends instead of
/// meeting SQLite's write lock.
#[async_trait::async_trait]
impl PlanCache for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<PlanCacheEntry>, StoreError> {
        let sql = concat!("SELECT ", entry_columns!(), " FROM plan_cache WHERE key = ?");
        let row: Option<EntryRow> =
            sqlx::query_as(sql).bind(key).fetch_optional(&self.pool).await.map_err(backend)?;
        row.map(entry_from_row).transpose()
    }

    async fn put(&self, entry: &PlanCacheEntry, bounds: &PlanCacheBounds) -> Result<(), StoreError> {
        let r = entry_to_row(entry)?;
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let upsert = concat!(
            "INSERT INTO plan_cache (",
            entry_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
        sqlx::query("DELETE FROM plan_cache WHERE created_at <= ?")
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "DELETE FROM plan_cache WHERE key NOT IN \
             (SELECT key FROM plan_cache ORDER BY created_at DESC, key DESC LIMIT ?)",
        )
        .bind(i64::try_from(bounds.max_entries).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn remove_from(&self, source: &RunId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM plan_cache WHERE source_run = ?")
            .bind(source.as_str())
            .execute(&self.writer)
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
        let done = sqlx::query("DELETE FROM plan_cache").execute(&self.writer).await.map_err(backend)?;
        Ok(done.rows_affected())
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
