//! Where run events are kept: the [`RunStore`] trait and an in-memory implementation.
//!
//! The tracker appends every event before acting on it, so a store that keeps them across a
//! restart makes runs durable; the SQLite store does, [`MemoryStore`] does not (tests, benches,
//! embedders who don't need durability).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::run::{EventKind, RunEvent, RunId, RunStatus};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An append whose seq is not the next one for its run (a second writer, or a bug).
    #[error("run {run}: append of seq {got} where {expected} was expected")]
    Conflict { run: RunId, expected: u64, got: u64 },
    /// No such run.
    #[error("unknown run {0}")]
    UnknownRun(RunId),
    /// The backend failed.
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored event could not be decoded.
    #[error("corrupt event in run {run} at seq {seq}: {message}")]
    Corrupt { run: RunId, seq: u64, message: String },
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
        match &event.kind {
            EventKind::PlanProposed { .. } if s.require_approval => s.status = RunStatus::AwaitingApproval,
            EventKind::PlanProposed { .. } => s.status = RunStatus::Running,
            EventKind::PlanApproved { .. } => s.status = RunStatus::Running,
            EventKind::RunCompleted { .. } => s.status = RunStatus::Completed,
            EventKind::RunFailed { .. } => s.status = RunStatus::Failed,
            EventKind::RunCancelled { .. } => s.status = RunStatus::Cancelled,
            _ => {}
        }
        if event.kind.is_terminal() {
            s.finished_at = Some(event.at);
        }
        Some(s)
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
}

/// Events in memory: fast, and gone when the process exits.
#[derive(Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<RunId, MemoryRun>>,
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
}
