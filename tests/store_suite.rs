//! One suite of `RunStore` checks, run against every backend: `MemoryStore`, `SqliteStore` on a
//! temp file, and `PostgresStore` when built with `--features postgres` and
//! `STEPWISE_TEST_POSTGRES_URL` is set (`eval "$(bash .ci/postgres.sh)"` starts one; each test
//! gets a fresh schema). Checks a backend cannot take part in (reopening or corrupting a memory
//! store) say so on stdout and pass.
//!
//! The `measure_append` check prints append throughput: run with `--nocapture` to see it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use stepwise::options::RunOptions;
use stepwise::plan::{PlanSpec, StepSpec};
use stepwise::run::{EventKind, RunEvent, RunId, RunStatus, StepError, StepErrorKind, Usage};
use stepwise::store::plan_cache::{PlanCacheBounds, PlanCacheEntry, PlanCacheKey};
use stepwise::store::{ListQuery, MemoryStore, RunStore, RunSummary, StoreError};

// ---------------------------------------------------------------- backends

#[async_trait::async_trait]
trait Backend: Send + Sync {
    /// For printed figures.
    fn name(&self) -> &'static str;
    /// The store under test.
    fn store(&self) -> Arc<dyn RunStore>;
    /// Closes the store and opens the same storage again; None when nothing is kept.
    async fn reopen(&mut self) -> Option<Arc<dyn RunStore>>;
    /// Overwrites the stored body of event `seq` of `run`; false when the backend cannot.
    async fn corrupt(&self, run: &RunId, seq: u64, body: &str) -> bool;
    /// Whether `append_batch` is all or nothing.
    fn atomic_batches(&self) -> bool;
    /// Frees what the test used.
    async fn cleanup(&self) {}
}

struct Memory(Arc<MemoryStore>);

#[async_trait::async_trait]
impl Backend for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn store(&self) -> Arc<dyn RunStore> {
        self.0.clone()
    }
    async fn reopen(&mut self) -> Option<Arc<dyn RunStore>> {
        None
    }
    async fn corrupt(&self, _: &RunId, _: u64, _: &str) -> bool {
        false
    }
    fn atomic_batches(&self) -> bool {
        false
    }
}

async fn memory() -> Option<Box<dyn Backend>> {
    Some(Box::new(Memory(Arc::new(MemoryStore::new()))))
}

struct Sqlite {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<stepwise::store::sqlite::SqliteStore>,
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    fn store(&self) -> Arc<dyn RunStore> {
        self.store.clone()
    }
    async fn reopen(&mut self) -> Option<Arc<dyn RunStore>> {
        self.store.close().await;
        self.store = Arc::new(stepwise::store::sqlite::SqliteStore::open_path(&self.path).await.unwrap());
        Some(self.store.clone())
    }
    async fn corrupt(&self, run: &RunId, seq: u64, body: &str) -> bool {
        // A second, independent connection: what another process (or a disk fault) would do.
        let pool =
            sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&self.path))
                .await
                .unwrap();
        let done = sqlx::query("UPDATE events SET body = ? WHERE run_id = ? AND seq = ?")
            .bind(body)
            .bind(run.as_str())
            .bind(seq as i64)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        pool.close().await;
        true
    }
    fn atomic_batches(&self) -> bool {
        true
    }
}

async fn sqlite() -> Option<Box<dyn Backend>> {
    let dir = tempfile::tempdir().unwrap();
    // A nested path: open must create the directories.
    let path = dir.path().join("nested/dir/stepwise.db");
    let store = Arc::new(stepwise::store::sqlite::SqliteStore::open_path(&path).await.unwrap());
    Some(Box::new(Sqlite { _dir: dir, path, store }))
}

#[cfg(feature = "postgres")]
struct Postgres {
    admin: sqlx::PgPool,
    schema: String,
    url: String,
    store: Arc<stepwise::store::postgres::PostgresStore>,
}

#[cfg(feature = "postgres")]
#[async_trait::async_trait]
impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn store(&self) -> Arc<dyn RunStore> {
        self.store.clone()
    }
    async fn reopen(&mut self) -> Option<Arc<dyn RunStore>> {
        self.store.close().await;
        self.store = Arc::new(stepwise::store::postgres::PostgresStore::connect(&self.url).await.unwrap());
        Some(self.store.clone())
    }
    async fn corrupt(&self, run: &RunId, seq: u64, body: &str) -> bool {
        let sql =
            format!("UPDATE {}.events SET body = $1::jsonb WHERE run_id = $2 AND seq = $3", self.schema);
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(body)
            .bind(run.as_str())
            .bind(seq as i64)
            .execute(&self.admin)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        true
    }
    fn atomic_batches(&self) -> bool {
        true
    }
    async fn cleanup(&self) {
        self.store.close().await;
        let sql = format!("DROP SCHEMA {} CASCADE", self.schema);
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.admin).await.unwrap();
        self.admin.close().await;
    }
}

#[cfg(feature = "postgres")]
async fn postgres() -> Option<Box<dyn Backend>> {
    let Ok(base) = std::env::var("STEPWISE_TEST_POSTGRES_URL") else {
        println!("SKIPPED: STEPWISE_TEST_POSTGRES_URL is not set (eval \"$(bash .ci/postgres.sh)\" sets it)");
        return None;
    };
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&base).await.unwrap();
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let store = Arc::new(stepwise::store::postgres::PostgresStore::connect(&url).await.unwrap());
    Some(Box::new(Postgres { admin, schema, url, store }))
}

/// `backend: check, …` → `mod backend { #[tokio::test] fn check() }` for every check.
macro_rules! suite {
    ($backend:ident: $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(b) = super::$backend().await else { return };
                    let b = super::$check(b).await;
                    b.cleanup().await;
                }
            )*
        }
    };
}

macro_rules! all_checks {
    ($backend:ident) => {
        suite!($backend:
            append_and_read_back_in_order,
            events_after_a_seq,
            seq_must_be_next_and_duplicates_conflict,
            first_event_must_be_seq_1_run_submitted,
            concurrent_appends_of_one_seq_exactly_one_wins,
            list_newest_first_with_status_limit_and_cursor,
            list_limit_zero_means_fifty,
            unfinished_excludes_terminal_runs,
            summaries_match_the_fold_of_the_events,
            awaiting_approval_status,
            events_survive_reopening,
            corrupt_row_is_reported,
            append_batch_checks_every_event,
            measure_append_figure,
            plan_cache_round_trip_replace_and_remove,
            plan_cache_evicts_the_expired_and_the_oldest,
            plan_cache_concurrent_writers_keep_the_bound,
        );
    };
}

all_checks!(memory);
all_checks!(sqlite);
#[cfg(feature = "postgres")]
all_checks!(postgres);

// ---------------------------------------------------------------- event helpers

/// A run's events, built one by one with the right seq.
struct Log {
    id: RunId,
    events: Vec<RunEvent>,
}

impl Log {
    fn new(task: &str, require_approval: bool) -> Self {
        let mut options = RunOptions::default();
        options.policy.require_approval = require_approval;
        let mut l = Log { id: RunId::new(), events: vec![] };
        l.push(EventKind::RunSubmitted { task: task.into(), options });
        l
    }
    fn push(&mut self, kind: EventKind) -> RunEvent {
        let e = self.event(self.events.len() as u64 + 1, kind);
        self.events.push(e.clone());
        e
    }
    fn event(&self, seq: u64, kind: EventKind) -> RunEvent {
        RunEvent { run_id: self.id.clone(), seq, at: Utc::now(), kind }
    }
    fn last(&self) -> &RunEvent {
        self.events.last().unwrap()
    }
}

fn plan() -> PlanSpec {
    PlanSpec {
        goal: "ship it".into(),
        steps: vec![StepSpec {
            id: "s1".into(),
            description: "build".into(),
            expected_outcome: "a binary".into(),
            tool: Some("run_command".into()),
            depends_on: vec![],
        }],
    }
}

fn usage() -> Usage {
    Usage { llm_calls: 1, input_tokens: 10, output_tokens: 3, ..Usage::default() }
}

fn proposed() -> EventKind {
    EventKind::PlanProposed { revision: 1, plan: plan(), usage: usage(), cached_from: None }
}

fn started() -> EventKind {
    EventKind::StepStarted { step: "s1".into(), attempt: 1 }
}

/// A run's events appended to `store`, ending in `status`.
async fn run_in(store: &dyn RunStore, status: RunStatus) -> Log {
    let mut l = Log::new(&format!("a {} run", status.as_str()), status == RunStatus::AwaitingApproval);
    let mut kinds = vec![];
    if status != RunStatus::Planning {
        kinds.push(proposed());
    }
    match status {
        RunStatus::Running => kinds.push(started()),
        RunStatus::Completed => {
            kinds.push(started());
            kinds.push(EventKind::RunCompleted { final_output: "done".into(), usage: usage() })
        }
        RunStatus::Failed => kinds.push(EventKind::RunFailed { error: "boom".into(), usage: usage() }),
        RunStatus::Cancelled => kinds.push(EventKind::RunCancelled { reason: "user".into() }),
        _ => {}
    }
    for k in kinds {
        l.push(k);
    }
    for e in &l.events {
        store.append(e).await.unwrap();
    }
    l
}

fn fold(events: &[RunEvent]) -> RunSummary {
    events.iter().fold(None, RunSummary::fold).unwrap()
}

fn assert_conflict(r: Result<(), StoreError>, run: &RunId, expected: u64, got: u64) {
    match r {
        Err(StoreError::Conflict { run: r, expected: e, got: g }) => {
            assert_eq!((&r, e, g), (run, expected, got), "conflict fields")
        }
        other => panic!("expected Conflict {{expected: {expected}, got: {got}}}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- checks

async fn append_and_read_back_in_order(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let mut l = Log::new("naïve task with ünïcode, \"quotes\" and \n newlines", false);
    l.push(proposed());
    l.push(started());
    l.push(EventKind::ToolCalled {
        step: "s1".into(),
        attempt: 1,
        call_id: "c1".into(),
        tool: "run_command".into(),
        arguments: serde_json::json!({"cmd": "ls", "n": 3, "f": 0.1, "big": u64::MAX, "nested": {"a": [1, null]}}),
    });
    l.push(EventKind::ToolReturned {
        step: "s1".into(),
        attempt: 1,
        call_id: "c1".into(),
        ok: false,
        output: "x".repeat(10_000),
    });
    l.push(EventKind::StepFailed {
        step: "s1".into(),
        attempt: 1,
        error: StepError::new(StepErrorKind::ToolPanicked, "panicked"),
        usage: usage(),
    });
    l.push(EventKind::RunCompleted { final_output: "done".into(), usage: usage() });
    for e in &l.events {
        store.append(e).await.unwrap();
    }
    // Another run interleaved must not show up.
    let other = run_in(&*store, RunStatus::Running).await;
    assert_eq!(store.events(&l.id, 0).await.unwrap(), l.events, "exactly what was appended, in order");
    assert_eq!(store.events(&other.id, 0).await.unwrap(), other.events);
    match store.events(&RunId::new(), 0).await {
        Err(StoreError::UnknownRun(_)) => {}
        other => panic!("unknown run: {other:?}"),
    }
    b
}

async fn events_after_a_seq(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let l = run_in(&*store, RunStatus::Completed).await;
    assert_eq!(l.events.len(), 4);
    assert_eq!(store.events(&l.id, 2).await.unwrap(), l.events[2..]);
    assert_eq!(store.events(&l.id, 3).await.unwrap(), l.events[3..]);
    assert!(store.events(&l.id, 4).await.unwrap().is_empty(), "nothing after the last seq");
    assert!(store.events(&l.id, u64::MAX).await.unwrap().is_empty());
    b
}

async fn seq_must_be_next_and_duplicates_conflict(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let mut l = Log::new("t", false);
    store.append(&l.events[0]).await.unwrap();
    assert_conflict(store.append(&l.event(3, proposed())).await, &l.id, 2, 3);
    assert_conflict(store.append(&l.event(1, proposed())).await, &l.id, 2, 1);
    assert_conflict(store.append(&l.events[0]).await, &l.id, 2, 1);
    let e2 = l.push(proposed());
    store.append(&e2).await.unwrap();
    assert_conflict(store.append(&e2).await, &l.id, 3, 2);
    assert_conflict(store.append(&l.event(0, started())).await, &l.id, 3, 0);
    assert_eq!(store.events(&l.id, 0).await.unwrap(), l.events, "rejected appends left no trace");
    assert_eq!(store.list(&ListQuery::default()).await.unwrap()[0].last_seq, 2);
    b
}

async fn first_event_must_be_seq_1_run_submitted(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let l = Log::new("t", false);
    assert_conflict(store.append(&l.event(2, proposed())).await, &l.id, 1, 2);
    assert_conflict(store.append(&l.event(1, proposed())).await, &l.id, 1, 1);
    assert!(matches!(store.events(&l.id, 0).await, Err(StoreError::UnknownRun(_))));
    assert!(store.list(&ListQuery::default()).await.unwrap().is_empty());
    store.append(&l.events[0]).await.unwrap();
    assert_eq!(store.events(&l.id, 0).await.unwrap(), l.events);
    b
}

async fn concurrent_appends_of_one_seq_exactly_one_wins(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    for round in 0..10 {
        // Round 0 races on creating the run (seq 1); later rounds on seq round + 1.
        let mut l = Log::new("race", false);
        let (a, c) = if round == 0 {
            let a = l.events[0].clone();
            let mut c = a.clone();
            c.kind =
                EventKind::RunSubmitted { task: "the other writer".into(), options: RunOptions::default() };
            (a, c)
        } else {
            store.append(&l.events[0]).await.unwrap();
            for _ in 1..round {
                let e = l.push(started());
                store.append(&e).await.unwrap();
            }
            let seq = round as u64 + 1;
            (l.event(seq, started()), l.event(seq, EventKind::RunCancelled { reason: "other".into() }))
        };
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let spawn = |e: RunEvent| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.append(&e).await
            })
        };
        let (ta, tc) = (spawn(a.clone()), spawn(c.clone()));
        let (ra, rc) = (ta.await.unwrap(), tc.await.unwrap());
        let winner = match (&ra, &rc) {
            (Ok(()), Err(StoreError::Conflict { got, .. })) if *got == a.seq => &a,
            (Err(StoreError::Conflict { got, .. }), Ok(())) if *got == c.seq => &c,
            _ => panic!("round {round}: expected exactly one winner and one Conflict, got {ra:?} and {rc:?}"),
        };
        let stored = store.events(&l.id, 0).await.unwrap();
        assert_eq!(stored.len() as u64, a.seq, "round {round}: one event per seq");
        assert_eq!(stored.last().unwrap(), winner, "round {round}: the winner's event is stored");
    }
    b
}

async fn list_newest_first_with_status_limit_and_cursor(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let statuses = [
        RunStatus::Planning,
        RunStatus::Completed,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Completed,
        RunStatus::Cancelled,
    ];
    let mut logs = vec![];
    for s in statuses {
        logs.push(run_in(&*store, s).await);
    }
    let mut ids: Vec<RunId> = logs.iter().map(|l| l.id.clone()).collect();
    ids.sort();
    ids.reverse();
    let all = store.list(&ListQuery::default()).await.unwrap();
    assert_eq!(all.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), ids, "newest (largest id) first");

    let completed =
        store.list(&ListQuery { status: Some(RunStatus::Completed), ..Default::default() }).await.unwrap();
    assert_eq!(completed.len(), 3);
    assert!(completed.iter().all(|s| s.status == RunStatus::Completed));
    assert!(completed.windows(2).all(|w| w[0].id > w[1].id));

    let top2 = store.list(&ListQuery { limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(top2, all[..2]);

    // Page through with the cursor: pages of 3 concatenate to the full list.
    let mut paged = vec![];
    let mut before = None;
    loop {
        let page = store.list(&ListQuery { limit: 3, before: before.clone(), status: None }).await.unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        before = Some(page.last().unwrap().id.clone());
        paged.extend(page);
    }
    assert_eq!(paged, all);

    // The cursor and the filter together.
    let after_first = store
        .list(&ListQuery {
            status: Some(RunStatus::Completed),
            before: Some(completed[0].id.clone()),
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(after_first, completed[1..2]);
    b
}

async fn list_limit_zero_means_fifty(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    for _ in 0..53 {
        store.append(&Log::new("t", false).events[0]).await.unwrap();
    }
    assert_eq!(store.list(&ListQuery::default()).await.unwrap().len(), 50);
    assert_eq!(store.list(&ListQuery { limit: 60, ..Default::default() }).await.unwrap().len(), 53);
    b
}

async fn unfinished_excludes_terminal_runs(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let mut live = vec![];
    for s in [
        RunStatus::Planning,
        RunStatus::Completed,
        RunStatus::AwaitingApproval,
        RunStatus::Failed,
        RunStatus::Running,
        RunStatus::Cancelled,
    ] {
        let l = run_in(&*store, s).await;
        if !s.is_terminal() {
            live.push(l.id);
        }
    }
    live.sort();
    assert_eq!(store.unfinished().await.unwrap(), live);
    b
}

async fn summaries_match_the_fold_of_the_events(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    for s in [
        RunStatus::Planning,
        RunStatus::AwaitingApproval,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ] {
        run_in(&*store, s).await;
    }
    let all = store.list(&ListQuery::default()).await.unwrap();
    assert_eq!(all.len(), 6);
    for summary in all {
        let events = store.events(&summary.id, 0).await.unwrap();
        let folded = fold(&events);
        assert_eq!(summary, folded, "the stored summary is the fold of the stored events");
        assert_eq!(summary.last_seq, events.len() as u64);
        assert_eq!(summary.created_at, events[0].at, "created_at is exact (nanoseconds)");
        assert_eq!(summary.finished_at.is_some(), summary.status.is_terminal());
    }
    b
}

async fn awaiting_approval_status(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let mut l = Log::new("needs a human", true);
    store.append(&l.events[0]).await.unwrap();
    let e = l.push(proposed());
    store.append(&e).await.unwrap();
    let only = |st| ListQuery { status: Some(st), ..Default::default() };
    let waiting = store.list(&only(RunStatus::AwaitingApproval)).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].id, l.id);
    assert_eq!(store.unfinished().await.unwrap(), vec![l.id.clone()], "a waiting run is resumed on restart");
    // Without require_approval the same plan goes straight to running.
    let plain = run_in(&*store, RunStatus::Running).await;
    let e = l.push(EventKind::PlanApproved { edited: None });
    store.append(&e).await.unwrap();
    assert!(store.list(&only(RunStatus::AwaitingApproval)).await.unwrap().is_empty());
    let running = store.list(&only(RunStatus::Running)).await.unwrap();
    let mut ids: Vec<_> = running.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    let mut want = vec![l.id.clone(), plain.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    b
}

async fn events_survive_reopening(mut b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let mut l = run_in(&*store, RunStatus::Running).await;
    let done = run_in(&*store, RunStatus::Completed).await;
    let listed = store.list(&ListQuery::default()).await.unwrap();
    drop(store);
    let Some(store) = b.reopen().await else {
        println!("SKIPPED: this backend keeps nothing across a reopen");
        return b;
    };
    assert_eq!(store.events(&l.id, 0).await.unwrap(), l.events);
    assert_eq!(store.events(&done.id, 0).await.unwrap(), done.events);
    assert_eq!(store.list(&ListQuery::default()).await.unwrap(), listed);
    assert_eq!(store.unfinished().await.unwrap(), vec![l.id.clone()]);
    // The seq check carries on where the log ended.
    assert_conflict(store.append(l.last()).await, &l.id, l.events.len() as u64 + 1, l.last().seq);
    let e = l.push(EventKind::RunCompleted { final_output: "ok".into(), usage: usage() });
    store.append(&e).await.unwrap();
    assert!(store.unfinished().await.unwrap().is_empty());
    b
}

async fn corrupt_row_is_reported(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let l = run_in(&*store, RunStatus::Completed).await;
    let bogus =
        serde_json::json!({"run_id": l.id, "seq": 2, "at": Utc::now(), "type": "NoSuchEvent"}).to_string();
    if !b.corrupt(&l.id, 2, &bogus).await {
        println!("SKIPPED: this backend's rows cannot be corrupted from outside");
        return b;
    }
    match store.events(&l.id, 0).await {
        Err(StoreError::Corrupt { run, seq, message }) => {
            assert_eq!((&run, seq), (&l.id, 2));
            assert!(message.contains("NoSuchEvent"), "{message}");
            let text = StoreError::Corrupt { run, seq, message }.to_string();
            assert!(text.contains(l.id.as_str()) && text.contains("seq 2"), "{text}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.events(&l.id, 2).await.unwrap(), l.events[2..], "later events still read");
    // A body that decodes, but as another event, is corrupt too.
    let moved = serde_json::to_string(&l.events[2]).unwrap();
    assert!(b.corrupt(&l.id, 2, &moved).await);
    match store.events(&l.id, 1).await {
        Err(StoreError::Corrupt { seq: 2, message, .. }) => assert!(message.contains("event 3"), "{message}"),
        other => panic!("expected Corrupt at seq 2, got {other:?}"),
    }
    b
}

async fn append_batch_checks_every_event(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let mut l = Log::new("batched", false);
    l.push(proposed());
    l.push(started());
    let mut m = Log::new("another run in the same batch", false);
    m.push(proposed());
    let batch = [l.events.clone(), m.events.clone()].concat();
    store.append_batch(&batch).await.unwrap();
    assert_eq!(store.events(&l.id, 0).await.unwrap(), l.events);
    assert_eq!(store.events(&m.id, 0).await.unwrap(), m.events);
    store.append_batch(&[]).await.unwrap();

    // A gap in the middle of a batch: Conflict, and for SQL stores nothing of the batch is kept.
    let good = l.event(
        4,
        EventKind::StepCompleted { step: "s1".into(), attempt: 1, output: "o".into(), usage: usage() },
    );
    let gap = l.event(6, EventKind::RunCompleted { final_output: "x".into(), usage: usage() });
    assert_conflict(store.append_batch(&[good.clone(), gap]).await, &l.id, 5, 6);
    let stored = store.events(&l.id, 0).await.unwrap();
    if b.atomic_batches() {
        assert_eq!(stored, l.events, "a failed batch leaves nothing behind");
    } else {
        assert_eq!(stored.len(), 4, "the default append_batch stops at the bad event");
    }
    b
}

async fn measure_append_figure(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    // 10,000 appends over 100 runs; fewer on Postgres, where each is several round trips, to
    // keep CI quick.
    let n = if b.name() == "postgres" { 2_000 } else { 10_000 };
    let per_run = n as u64 / 100;
    let fig = measure_append(&*store, n).await.unwrap();
    println!("append figure ({}): {fig}", b.name());
    let batched = measure_append_batched(&*store, n, 10).await.unwrap();
    println!("append figure ({}): {batched}", b.name());
    // What was measured is really there: 200 runs of `per_run` gapless events.
    assert_eq!((fig.appends, fig.runs, batched.runs), (n, 100, 100));
    let runs = store.list(&ListQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(runs.len(), 200);
    assert!(runs.iter().all(|r| r.last_seq == per_run && r.status == RunStatus::Running), "{:?}", runs[0]);
    for r in [&runs[0], &runs[199]] {
        let events = store.events(&r.id, 0).await.unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=per_run).collect::<Vec<_>>());
    }
    b
}

/// What `synchronous = FULL` (an fsync per commit) costs against the default NORMAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_durability_figure() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?synchronous=full", dir.path().join("full.db").display());
    let store = stepwise::store::sqlite::SqliteStore::open(&url).await.unwrap();
    let fig = measure_append(&store, 2_000).await.unwrap();
    println!("append figure (sqlite, synchronous=full): {fig}");
    let runs = store.list(&ListQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(runs.len(), 100);
    assert!(runs.iter().all(|r| r.last_seq == 20));
}

// ---------------------------------------------------------------- plan cache

fn cache_entry(task: &str, age_secs: i64) -> PlanCacheEntry {
    PlanCacheEntry {
        key: PlanCacheKey::new(task, &[], "openai", "gpt-4o", "You plan."),
        task: task.into(),
        plan: plan(),
        source_run: RunId::new(),
        created_at: Utc::now() - chrono::Duration::seconds(age_secs),
    }
}

const ROOMY: PlanCacheBounds =
    PlanCacheBounds { max_entries: 100, ttl: std::time::Duration::from_secs(3600) };

async fn plan_cache_round_trip_replace_and_remove(mut b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let cache = store.plan_cache().expect("every backend keeps a plan cache");
    let first = cache_entry("Summarise the notes", 0);
    assert_eq!(cache.get(&first.key.key).await.unwrap(), None);
    cache.put(&first, &ROOMY).await.unwrap();
    assert_eq!(cache.get(&first.key.key).await.unwrap().as_ref(), Some(&first));
    // A later completed run with the same key writes it again: its entry replaces the first.
    let again = PlanCacheEntry { source_run: RunId::new(), ..cache_entry("summarise  the NOTES", 0) };
    assert_eq!(again.key, first.key);
    cache.put(&again, &ROOMY).await.unwrap();
    let other = cache_entry("Another task", 0);
    cache.put(&other, &ROOMY).await.unwrap();
    let listed = cache.entries().await.unwrap();
    assert_eq!(listed, vec![other.clone(), again.clone()], "newest first, one entry per key");
    // Removing the first writer's entries leaves the rewritten one alone.
    assert_eq!(cache.remove_from(&first.source_run).await.unwrap(), 0);
    drop(store);
    if let Some(store) = b.reopen().await {
        let cache = store.plan_cache().unwrap();
        assert_eq!(cache.entries().await.unwrap(), listed, "the cache survives a reopen");
    }
    let store = b.store();
    let cache = store.plan_cache().unwrap();
    assert_eq!(cache.remove_from(&again.source_run).await.unwrap(), 1);
    assert_eq!(cache.get(&again.key.key).await.unwrap(), None);
    assert_eq!(cache.clear().await.unwrap(), 1);
    assert!(cache.entries().await.unwrap().is_empty());
    b
}

async fn plan_cache_evicts_the_expired_and_the_oldest(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let cache = store.plan_cache().unwrap();
    let bounds = PlanCacheBounds { max_entries: 2, ttl: std::time::Duration::from_secs(60) };
    let expired = cache_entry("expired", 120);
    cache.put(&expired, &ROOMY).await.unwrap();
    let (old, mid, new) = (cache_entry("old", 30), cache_entry("mid", 20), cache_entry("new", 10));
    cache.put(&old, &bounds).await.unwrap();
    let keys = |v: Vec<PlanCacheEntry>| v.into_iter().map(|e| e.task).collect::<Vec<_>>();
    assert_eq!(keys(cache.entries().await.unwrap()), vec!["old"], "the expired entry went");
    cache.put(&new, &bounds).await.unwrap();
    cache.put(&mid, &bounds).await.unwrap();
    assert_eq!(keys(cache.entries().await.unwrap()), vec!["new", "mid"], "the oldest went");
    b
}

async fn plan_cache_concurrent_writers_keep_the_bound(b: Box<dyn Backend>) -> Box<dyn Backend> {
    let store = b.store();
    let bounds = PlanCacheBounds { max_entries: 5, ttl: std::time::Duration::from_secs(60) };
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let e = cache_entry(&format!("task {}", i % 8), 0);
                store.plan_cache().unwrap().put(&e, &bounds).await
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let entries = store.plan_cache().unwrap().entries().await.unwrap();
    assert_eq!(entries.len(), 5, "{entries:?}");
    b
}

// ---- a throughput figure ----

/// What [`measure_append`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AppendFigure {
    /// Events appended.
    pub appends: usize,
    /// Runs they were spread over.
    pub runs: usize,
    /// Events per `append_batch` call (1: plain `append`).
    pub batch: usize,
    /// Wall-clock time of all the appends.
    pub elapsed: Duration,
}

impl AppendFigure {
    /// Appends per second.
    pub fn per_second(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Microseconds per append.
    pub fn micros_per_append(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.appends.max(1) as f64
    }
}

impl std::fmt::Display for AppendFigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} appends over {} runs (batch {}) in {:.3} s: {:.0} appends/s, {:.1} µs/append",
            self.appends,
            self.runs,
            self.batch,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.micros_per_append()
        )
    }
}

/// Appends `n` events to fresh runs as trackers would, one awaited append at a time (100 runs,
/// round robin, each `RunSubmitted` then step and tool events of realistic size), and times it.
///
async fn measure_append(store: &dyn RunStore, n: usize) -> Result<AppendFigure, StoreError> {
    measure_append_batched(store, n, 1).await
}

/// Like [`measure_append`], but each run appends `batch` events per [`RunStore::append_batch`]
/// call (what a tracker that buffers a step's tool events would do).
async fn measure_append_batched(
    store: &dyn RunStore,
    n: usize,
    batch: usize,
) -> Result<AppendFigure, StoreError> {
    let runs = n.clamp(1, 100);
    let batch = batch.max(1);
    let ids: Vec<RunId> = (0..runs).map(|_| RunId::new()).collect();
    let per_run: Vec<usize> = (0..runs).map(|r| n / runs + usize::from(r < n % runs)).collect();
    let mut next = vec![1u64; runs];
    let mut done = 0;
    let start = Instant::now();
    while done < n {
        for r in 0..runs {
            let left = per_run[r] - (next[r] - 1) as usize;
            let take = left.min(batch);
            if take == 0 {
                continue;
            }
            let events: Vec<RunEvent> =
                (0..take as u64).map(|i| sample_event(&ids[r], next[r] + i)).collect();
            if take == 1 {
                store.append(&events[0]).await?;
            } else {
                store.append_batch(&events).await?;
            }
            next[r] += take as u64;
            done += take;
        }
    }
    Ok(AppendFigure { appends: n, runs, batch, elapsed: start.elapsed() })
}

/// Event `seq` of a synthetic run: `RunSubmitted`, `PlanProposed`, then step started / tool
/// called / tool returned / step completed, over and over (the run stays `running`).
fn sample_event(run: &RunId, seq: u64) -> RunEvent {
    use stepwise::plan::StepId;
    let step = StepId::from(format!("s{}", (seq + 1) / 4).as_str());
    let kind = match seq {
        1 => EventKind::RunSubmitted {
            task: "Summarise the release notes and open an issue per regression".into(),
            options: Default::default(),
        },
        2 => EventKind::PlanProposed {
            revision: 1,
            plan: PlanSpec {
                goal: "release notes summarised".into(),
                steps: vec![StepSpec {
                    id: "s1".into(),
                    description: "grep the TODOs".into(),
                    expected_outcome: "a list".into(),
                    tool: Some("run_command".into()),
                    depends_on: vec![],
                }],
            },
            usage: Default::default(),
            cached_from: None,
        },
        _ => match (seq - 3) % 4 {
            0 => EventKind::StepStarted { step, attempt: 1 },
            1 => EventKind::ToolCalled {
                step,
                attempt: 1,
                call_id: format!("call_{seq}"),
                tool: "run_command".into(),
                arguments: serde_json::json!({"command": "grep", "args": ["-rn", "TODO", "src/"]}),
            },
            2 => EventKind::ToolReturned {
                step,
                attempt: 1,
                call_id: format!("call_{}", seq - 1),
                ok: true,
                output: "src/lib.rs:12: TODO handle the empty plan\n".repeat(6),
            },
            _ => EventKind::StepCompleted {
                step,
                attempt: 1,
                output: "Found 6 TODOs; none block the release.".into(),
                usage: Usage { llm_calls: 2, ..Usage::of_tokens(900, 120) },
            },
        },
    };
    RunEvent { run_id: run.clone(), seq, at: Utc::now(), kind }
}
