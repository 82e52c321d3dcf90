//! Where run events are kept: the [`RunStore`] trait and an in-memory implementation.
//!
//! The tracker appends every event before acting on it, so a store that keeps them across a
//! restart makes runs durable; the SQLite store does, [`MemoryStore`] does not (tests, benches,
//! embedders who don't need durability).
//!
//! Backends: [`MemoryStore`], [`sqlite::SqliteStore`] (the default, one file) and, with the
//! `postgres` feature, `postgres::PostgresStore` (shared by replicas). [`open_store`] picks
//! one from a URL. All of them pass the same suite (`tests/store_suite.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::run::{EventKind, RunEvent, RunId, RunStatus};

pub mod plan_cache;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

use plan_cache::{PlanCache, PlanCacheBounds, PlanCacheEntry};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An append whose seq is not the next one for its run (a second writer, or a bug).
    #[error("run {run}: append of seq {got} where {expected} was expected")]
    Conflict {
        /// The run.
        run: RunId,
        /// The next seq.
        expected: u64,
        /// The seq appended.
        got: u64,
    },
    /// The run's lease is no longer the writer's: another replica took the run over (or the
    /// writer never held it). Nothing was written.
    #[error("run {run}: lease epoch {epoch} was taken over (owner now {owner:?})")]
    Fenced {
        /// The run.
        run: RunId,
        /// The replica that holds the lease now, if any.
        owner: Option<String>,
        /// The writer's lease epoch.
        epoch: i64,
    },
    /// No such run.
    #[error("unknown run {0}")]
    UnknownRun(RunId),
    /// The backend failed.
    #[error("store backend: {0}")]
    Backend(String),
    /// The backend cannot be reached now (connection refused or lost, server restarting, disk
    /// full, database locked): the same call may work later. Runs wait instead of failing.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored event could not be decoded.
    #[error("corrupt event in run {run} at seq {seq}: {message}")]
    Corrupt {
        /// The run.
        run: RunId,
        /// The event's seq.
        seq: u64,
        /// Why it does not decode.
        message: String,
    },
    /// A store URL that names no usable backend (see [`open_store`]).
    #[error("store url {url:?}: {message}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A run as listed: enough to pick one without loading its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunSummary {
    /// Run id.
    pub id: RunId,
    /// Task.
    pub task: String,
    /// Status after the last event.
    pub status: RunStatus,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seq of the last event.
    pub last_seq: u64,
    /// Whether the plan waits for approval (from the run's options).
    #[serde(skip)]
    require_approval: bool,
}

impl RunSummary {
    /// The summary after `event` (the first event must be `RunSubmitted`).
    pub fn fold(prev: Option<RunSummary>, event: &RunEvent) -> Option<RunSummary> {
        let mut s = match (prev, &event.kind) {
            (None, EventKind::RunSubmitted { task, options }) => RunSummary {
                id: event.run_id.clone(),
                task: task.clone(),
                status: RunStatus::Planning,
                created_at: event.at,
                finished_at: None,
                last_seq: 0,
                require_approval: options.policy.require_approval,
            },
            (None, _) => return None,
            (Some(s), _) => s,
        };
        s.last_seq = event.seq;
        match StatusChange::of(&event.kind) {
            Some(StatusChange::PlanProposed) if s.require_approval => s.status = RunStatus::AwaitingApproval,
            Some(StatusChange::PlanProposed) => s.status = RunStatus::Running,
            Some(StatusChange::To(status)) => s.status = status,
            None => {}
        }
        if event.kind.is_terminal() {
            s.finished_at = Some(event.at);
        }
        Some(s)
    }
}

/// How an event changes a run's listed status (the one rule [`RunSummary::fold`] and the SQL
/// stores' one-statement appends share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusChange {
    /// To this status.
    To(RunStatus),
    /// A plan was proposed: awaiting approval if the run requires it, else running.
    PlanProposed,
}

impl StatusChange {
    /// The change `kind` makes, if any.
    pub(crate) fn of(kind: &EventKind) -> Option<Self> {
        Some(match kind {
            EventKind::PlanProposed { .. } => StatusChange::PlanProposed,
            EventKind::PlanApproved { .. } => StatusChange::To(RunStatus::Running),
            EventKind::RunCompleted { .. } => StatusChange::To(RunStatus::Completed),
            EventKind::RunFailed { .. } => StatusChange::To(RunStatus::Failed),
            EventKind::RunCancelled { .. } => StatusChange::To(RunStatus::Cancelled),
            _ => return None,
        })
    }
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// At most this many (newest first); 0 means the default of 50.
    pub limit: usize,
    /// Only runs older than this id (pagination cursor: the last id of the previous page).
    pub before: Option<RunId>,
}

/// Durable (or not) storage of run events.
#[async_trait::async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Appends one event; fails with `Conflict` unless `event.seq` is the run's next number.
    async fn append(&self, event: &RunEvent) -> Result<(), StoreError>;
    /// A run's events with `seq > after`, in order.
    async fn events(&self, run: &RunId, after: u64) -> Result<Vec<RunEvent>, StoreError>;
    /// Runs, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Vec<RunSummary>, StoreError>;
    /// Runs whose last event is not terminal: what a restarted service resumes.
    async fn unfinished(&self) -> Result<Vec<RunId>, StoreError>;

    /// Appends several events (of one or more runs) in order, each checked like [`append`].
    ///
    /// The durable backends commit the whole batch in one transaction, all or nothing, which
    /// costs about one append; this default appends one by one and may stop part way.
    ///
    /// [`append`]: RunStore::append
    async fn append_batch(&self, events: &[RunEvent]) -> Result<(), StoreError> {
        for e in events {
            self.append(e).await?;
        }
        Ok(())
    }

    /// The store's plan cache, if it keeps one (memory, SQLite and Postgres do; a store that
    /// does not simply never lets a run reuse a plan).
    fn plan_cache(&self) -> Option<&dyn PlanCache> {
        None
    }
}

/// Events in memory: fast, and gone when the process exits.
#[derive(Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<RunId, MemoryRun>>,
    plans: Mutex<HashMap<String, PlanCacheEntry>>,
}

struct MemoryRun {
    summary: RunSummary,
    events: Vec<RunEvent>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, MemoryRun>> {
        // A panic while holding this lock cannot leave a half-applied append (push is last), so
        // a poisoned lock is still consistent.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plans(&self) -> std::sync::MutexGuard<'_, HashMap<String, PlanCacheEntry>> {
        // Every change to the map is one call on it: a poisoned lock is still consistent.
        self.plans.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl RunStore for MemoryStore {
    async fn append(&self, event: &RunEvent) -> Result<(), StoreError> {
        let mut runs = self.lock();
        match runs.get_mut(&event.run_id) {
            None => {
                let conflict =
                    || StoreError::Conflict { run: event.run_id.clone(), expected: 1, got: event.seq };
                if event.seq != 1 {
                    return Err(conflict());
                }
                let summary = RunSummary::fold(None, event).ok_or_else(conflict)?;
                runs.insert(event.run_id.clone(), MemoryRun { summary, events: vec![event.clone()] });
            }
            Some(run) => {
                let expected = run.summary.last_seq + 1;
                if event.seq != expected {
                    return Err(StoreError::Conflict { run: event.run_id.clone(), expected, got: event.seq });
                }
                if let Some(s) = RunSummary::fold(Some(run.summary.clone()), event) {
                    run.summary = s;
                }
                run.events.push(event.clone());
            }
        }
        Ok(())
    }

    async fn events(&self, run: &RunId, after: u64) -> Result<Vec<RunEvent>, StoreError> {
        let runs = self.lock();
        let r = runs.get(run).ok_or_else(|| StoreError::UnknownRun(run.clone()))?;
        Ok(r.events.iter().filter(|e| e.seq > after).cloned().collect())
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<RunSummary>, StoreError> {
        let runs = self.lock();
        let mut out: Vec<RunSummary> = runs
            .values()
            .map(|r| r.summary.clone())
            .filter(|s| query.status.is_none_or(|st| s.status == st))
            .filter(|s| query.before.as_ref().is_none_or(|b| &s.id < b))
            .collect();
        out.sort_by(|a, b| b.id.cmp(&a.id));
        out.truncate(if query.limit == 0 { 50 } else { query.limit });
        Ok(out)
    }

    async fn unfinished(&self) -> Result<Vec<RunId>, StoreError> {
        let runs = self.lock();
        let mut ids: Vec<RunId> =
            runs.values().filter(|r| !r.summary.status.is_terminal()).map(|r| r.summary.id.clone()).collect();
        ids.sort();
        Ok(ids)
    }

    fn plan_cache(&self) -> Option<&dyn PlanCache> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl PlanCache for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<PlanCacheEntry>, StoreError> {
        Ok(self.plans().get(key).cloned())
    }

    async fn put(&self, entry: &PlanCacheEntry, bounds: &PlanCacheBounds) -> Result<(), StoreError> {
        let mut plans = self.plans();
        plans.insert(entry.key.key.clone(), entry.clone());
        let stamps: Vec<(String, DateTime<Utc>)> =
            plans.values().map(|e| (e.key.key.clone(), e.created_at)).collect();
        for key in bounds.evictions(&stamps, Utc::now()) {
            plans.remove(&key);
        }
        Ok(())
    }

    async fn remove_from(&self, source: &RunId) -> Result<u64, StoreError> {
        let mut plans = self.plans();
        let before = plans.len();
        plans.retain(|_, e| &e.source_run != source);
        Ok((before - plans.len()) as u64)
    }

    async fn entries(&self) -> Result<Vec<PlanCacheEntry>, StoreError> {
        let mut out: Vec<PlanCacheEntry> = self.plans().values().cloned().collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.key.key.cmp(&a.key.key)));
        Ok(out)
    }

    async fn clear(&self) -> Result<u64, StoreError> {
        let mut plans = self.plans();
        let n = plans.len() as u64;
        plans.clear();
        Ok(n)
    }
}

/// Opens the store a URL names, for `stepwise serve` and the CLI.
///
/// - `None` → SQLite at `<data_dir>/stepwise.db` (file and directories created);
/// - `sqlite://PATH`, `sqlite:PATH` or a plain path → SQLite (a relative path is relative to the
///   working directory, not to `data_dir`);
/// - `postgres://…` / `postgresql://…` → Postgres (only in builds with the `postgres` feature);
/// - `memory:` → [`MemoryStore`] (nothing survives the process).
///
/// Anything else that starts with `scheme:` is refused with an error naming the scheme (write
/// `./name:x.db` for a file whose name has a colon).
pub async fn open_store(url: Option<&str>, data_dir: &Path) -> Result<Arc<dyn RunStore>, StoreError> {
    let Some(url) = url else {
        return Ok(Arc::new(sqlite::SqliteStore::open_path(&data_dir.join("stepwise.db")).await?));
    };
    let invalid = |message: String| StoreError::InvalidUrl { url: url.to_owned(), message };
    match url_scheme(url).map(|s| s.to_ascii_lowercase()).as_deref() {
        None => Ok(Arc::new(sqlite::SqliteStore::open_path(Path::new(url)).await?)),
        Some("sqlite") => Ok(Arc::new(sqlite::SqliteStore::open(url).await?)),
        Some("memory") if url.len() == "memory:".len() => Ok(Arc::new(MemoryStore::new())),
        Some("memory") => Err(invalid("a memory store takes no path: write `memory:`".into())),
        #[cfg(feature = "postgres")]
        Some("postgres" | "postgresql") => Ok(Arc::new(postgres::PostgresStore::connect(url).await?)),
        #[cfg(not(feature = "postgres"))]
        Some("postgres" | "postgresql") => Err(invalid(
            "this stepwise was built without Postgres support; rebuild with `--features postgres`".into(),
        )),
        Some(other) => Err(invalid(format!(
            "unknown scheme `{other}:` (use sqlite://PATH, a plain path, postgres://…, or memory:)"
        ))),
    }
}

/// Whether `url` names a Postgres store (`postgres://…` or `postgresql://…`).
pub fn is_postgres_url(url: &str) -> bool {
    url_scheme(url)
        .is_some_and(|s| s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql"))
}

/// The `scheme` of `scheme:rest`, if `url` starts with one (RFC 3986 syntax, 2+ characters so
/// that `C:\\x` stays a path).
fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let ok = scheme.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    ok.then_some(scheme)
}

// ---- helpers shared by the SQL backends ----

/// A time as stored: RFC 3339 UTC with nanoseconds, fixed width (sorts as text, exact).
pub(crate) fn time_to_sql(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The inverse of [`time_to_sql`]; `run` and `seq` name the row in the `Corrupt` error.
pub(crate) fn time_from_sql(s: &str, run: &RunId, seq: u64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|e| StoreError::Corrupt {
        run: run.clone(),
        seq,
        message: format!("bad time {s:?}: {e}"),
    })
}

/// A `runs` row: id, task, status, created_at, finished_at, last_seq, require_approval.
pub(crate) type SummaryRow = (String, String, String, String, Option<String>, i64, bool);

/// Decodes a `runs` row; a bad value is `Corrupt` at the run's last seq.
pub(crate) fn summary_from_row(row: SummaryRow) -> Result<RunSummary, StoreError> {
    let (id, task, status, created_at, finished_at, last_seq, require_approval) = row;
    let id = RunId(id);
    let seq = u64::try_from(last_seq).unwrap_or(0);
    let status = status.parse::<RunStatus>().map_err(|message| StoreError::Corrupt {
        run: id.clone(),
        seq,
        message: format!("runs row: {message}"),
    })?;
    let created_at = time_from_sql(&created_at, &id, seq)?;
    let finished_at = finished_at.map(|t| time_from_sql(&t, &id, seq)).transpose()?;
    Ok(RunSummary { id, task, status, created_at, finished_at, last_seq: seq, require_approval })
}

/// Decodes a stored event body and checks that it is the row it was stored as.
pub(crate) fn event_from_sql(run: &RunId, seq: i64, body: &str) -> Result<RunEvent, StoreError> {
    let seq = u64::try_from(seq).unwrap_or(0);
    let corrupt = |message: String| StoreError::Corrupt { run: run.clone(), seq, message };
    let event: RunEvent = serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
    if &event.run_id != run || event.seq != seq {
        return Err(corrupt(format!("the body is event {} of run {}", event.seq, event.run_id)));
    }
    Ok(event)
}

/// A seq as an SQL BIGINT (saturating: no run gets near 2^63 events).
pub(crate) fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The checks every backend makes before writing `event` after `prev` (the run's summary, if
/// the run exists): the seq is next, and the first event is a `RunSubmitted`. Returns the new
/// summary.
pub(crate) fn check_append(prev: Option<RunSummary>, event: &RunEvent) -> Result<RunSummary, StoreError> {
    let expected = prev.as_ref().map_or(1, |s| s.last_seq + 1);
    let conflict = || StoreError::Conflict { run: event.run_id.clone(), expected, got: event.seq };
    if event.seq != expected {
        return Err(conflict());
    }
    RunSummary::fold(prev, event).ok_or_else(conflict)
}

/// The `list` query of the SQL stores, in either dialect (the builder writes the placeholders).
fn list_query<DB>(query: &ListQuery) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments: Default,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::<DB>::new(
        "SELECT id, task, status, created_at, finished_at, last_seq, require_approval FROM runs WHERE 1 = 1",
    );
    if let Some(status) = query.status {
        q.push(" AND status = ").push_bind(status.as_str().to_owned());
    }
    if let Some(before) = &query.before {
        q.push(" AND id < ").push_bind(before.0.clone());
    }
    let limit = if query.limit == 0 { 50 } else { query.limit };
    q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    q
}

/// A run's events after `after`, in either dialect; `body` is the body column as text.
fn events_query<DB>(run: &RunId, after: u64, body: &str) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments: Default,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::<DB>::new(format!("SELECT seq, {body} FROM events WHERE run_id = "));
    q.push_bind(run.0.clone()).push(" AND seq > ").push_bind(seq_to_sql(after)).push(" ORDER BY seq");
    q
}

/// How many runs have this id (0 or 1), in either dialect.
fn run_count_query<DB>(run: &RunId) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments: Default,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::<DB>::new("SELECT COUNT(*) FROM runs WHERE id = ");
    q.push_bind(run.0.clone());
    q
}

/// Decodes a run's event rows; no rows for a run the store does not know is `UnknownRun`.
fn events_from_rows(run: &RunId, rows: &[(i64, String)], known: bool) -> Result<Vec<RunEvent>, StoreError> {
    if rows.is_empty() && !known {
        return Err(StoreError::UnknownRun(run.clone()));
    }
    rows.iter().map(|(seq, body)| event_from_sql(run, *seq, body)).collect()
}

/// `RunStore::events` for the SQL stores; `body` is the events body column read as text.
pub(crate) async fn sql_events<DB>(
    pool: &sqlx::Pool<DB>,
    run: &RunId,
    after: u64,
    body: &str,
) -> Result<Vec<RunEvent>, StoreError>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments: Default + sqlx::IntoArguments<DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (i64, String): for<'r> sqlx::FromRow<'r, DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let rows: Vec<(i64, String)> =
        events_query::<DB>(run, after, body).build_query_as().fetch_all(pool).await.map_err(backend)?;
    let known = !rows.is_empty()
        || run_count_query::<DB>(run).build_query_scalar::<i64>().fetch_one(pool).await.map_err(backend)? > 0;
    events_from_rows(run, &rows, known)
}

/// `RunStore::list` for the SQL stores.
pub(crate) async fn sql_list<DB>(
    pool: &sqlx::Pool<DB>,
    query: &ListQuery,
) -> Result<Vec<RunSummary>, StoreError>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments: Default + sqlx::IntoArguments<DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    SummaryRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let rows: Vec<SummaryRow> =
        list_query::<DB>(query).build_query_as().fetch_all(pool).await.map_err(backend)?;
    rows.into_iter().map(summary_from_row).collect()
}

/// `RunStore::unfinished` for the SQL stores.
pub(crate) async fn sql_unfinished<DB>(pool: &sqlx::Pool<DB>) -> Result<Vec<RunId>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    String: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let ids: Vec<String> = sqlx::query_scalar(UNFINISHED_SQL).fetch_all(pool).await.map_err(backend)?;
    Ok(ids.into_iter().map(RunId).collect())
}

/// Runs whose last event is not terminal; the same predicate as the partial index `runs_unfinished`.
const UNFINISHED_SQL: &str =
    "SELECT id FROM runs WHERE status NOT IN ('completed', 'failed', 'cancelled') ORDER BY id";

/// Maps a backend error.
pub(crate) fn backend(e: impl Into<BackendFault>) -> StoreError {
    let BackendFault { message, transient } = e.into();
    if transient { StoreError::Unavailable(message) } else { StoreError::Backend(message) }
}

/// A backend error, and whether trying again later may work.
pub(crate) struct BackendFault {
    message: String,
    transient: bool,
}

impl From<sqlx::Error> for BackendFault {
    fn from(e: sqlx::Error) -> Self {
        BackendFault { transient: is_transient_sqlx(&e), message: e.to_string() }
    }
}

impl From<serde_json::Error> for BackendFault {
    fn from(e: serde_json::Error) -> Self {
        BackendFault { transient: false, message: e.to_string() }
    }
}

/// Connection-level failures, a server shutting down or starting, too many connections, a full
/// disk or a locked database: what an outage looks like, as opposed to a bad query.
fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            true
        }
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// SQLSTATE classes 08 (connection), 53 (resources), 57P01-03 (shutdown, starting); SQLite's
/// BUSY (5), LOCKED (6), IOERR (10) and FULL (13).
fn transient_code(code: &str) -> bool {
    // A Postgres SQLSTATE has five characters; SQLite's (extended) codes have at most four digits.
    if code.len() == 5 {
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(code, "57P01" | "57P02" | "57P03");
    }
    // SQLite: the primary result code is the low byte of an extended one.
    matches!(code.parse::<u32>().map(|c| c & 0xff), Ok(5 | 6 | 10 | 13))
}

impl StoreError {
    /// Whether the same call may work later (the store is unreachable or full, not wrong).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(run: &RunId) -> RunEvent {
        RunEvent {
            run_id: run.clone(),
            seq: 1,
            at: Utc::now(),
            kind: EventKind::RunSubmitted { task: "t".into(), options: Default::default() },
        }
    }

    async fn round_trip(store: &dyn RunStore) {
        let id = RunId::new();
        store.append(&submitted(&id)).await.unwrap();
        assert_eq!(store.events(&id, 0).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn open_store_defaults_to_sqlite_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        let store = open_store(None, &data).await.unwrap();
        round_trip(&*store).await;
        assert!(data.join("stepwise.db").is_file());
    }

    #[tokio::test]
    async fn open_store_takes_sqlite_urls_and_plain_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x/url.db");
        let store = open_store(Some(&format!("sqlite://{}", file.display())), Path::new("/nonexistent"))
            .await
            .unwrap();
        round_trip(&*store).await;
        assert!(file.is_file());
        let plain = dir.path().join("y/plain.db");
        let store = open_store(Some(plain.to_str().unwrap()), Path::new("/nonexistent")).await.unwrap();
        round_trip(&*store).await;
        assert!(plain.is_file());
    }

    #[tokio::test]
    async fn open_store_memory_and_bad_urls() {
        let store = open_store(Some("memory:"), Path::new("/nonexistent")).await.unwrap();
        round_trip(&*store).await;
        let err = |url: &'static str| async move {
            match open_store(Some(url), Path::new("/nonexistent")).await {
                Err(e @ StoreError::InvalidUrl { .. }) => e.to_string(),
                Err(e) => panic!("{url}: expected InvalidUrl, got {e}"),
                Ok(_) => panic!("{url}: expected an error"),
            }
        };
        let e = err("mysql://localhost/db").await;
        assert!(e.contains("unknown scheme `mysql:`"), "{e}");
        let e = err("memory:/tmp/x").await;
        assert!(e.contains("memory:"), "{e}");
        #[cfg(not(feature = "postgres"))]
        {
            let e = err("postgres://localhost/db").await;
            assert!(e.contains("--features postgres"), "{e}");
        }
    }

    #[test]
    fn url_schemes_and_paths_are_told_apart() {
        assert_eq!(url_scheme("sqlite:///x.db"), Some("sqlite"));
        assert_eq!(url_scheme("postgresql://h/db"), Some("postgresql"));
        assert_eq!(url_scheme("memory:"), Some("memory"));
        assert_eq!(url_scheme("/var/lib/stepwise.db"), None);
        assert_eq!(url_scheme("./a:b.db"), None);
        assert_eq!(url_scheme("C:\\data\\x.db"), None);
    }

    #[test]
    fn stored_times_are_exact_and_sort_as_text() {
        let a = DateTime::parse_from_rfc3339("2026-11-24T09:00:00.000000001Z").unwrap().with_timezone(&Utc);
        let b = DateTime::parse_from_rfc3339("2026-11-24T09:00:00.1Z").unwrap().with_timezone(&Utc);
        let (sa, sb) = (time_to_sql(&a), time_to_sql(&b));
        assert_eq!(sa.len(), sb.len());
        assert!(sa < sb);
        assert_eq!(time_from_sql(&sa, &RunId::new(), 1).unwrap(), a);
    }
}
