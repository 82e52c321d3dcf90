//! The plan cache: plans of completed runs, reused by later runs with the same task, tools,
//! planner model and planner prompt so that they skip the planner call.
//!
//! The key and the bounds (expiry, size) are pure functions here; the stores keep the entries
//! ([`PlanCache`], reached through [`RunStore::plan_cache`](super::RunStore::plan_cache)).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::llm::ToolSpec;
use crate::plan::PlanSpec;
use crate::run::{RunId, RunStatus};

/// What a plan depends on, each as a SHA-256 hex digest, and the key they make together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCacheKey {
    /// Digest of the four component digests: the cache key.
    pub key: String,
    /// The normalised task ([`normalise_task`]).
    pub task_digest: String,
    /// The tool set: names, descriptions and schemas, sorted by name.
    pub tools_digest: String,
    /// The planner's `provider/model`.
    pub model_digest: String,
    /// The planner's system prompt.
    pub prompt_digest: String,
    /// The planner's `provider/model` in clear, for `stepwise cache list`.
    pub model: String,
}

impl PlanCacheKey {
    /// The key of planning `task` with `tools` on `provider`/`model` under `prompt`.
    pub fn new(task: &str, tools: &[ToolSpec], provider: &str, model: &str, prompt: &str) -> Self {
        let model = format!("{provider}/{model}");
        let task_digest = digest(normalise_task(task).as_bytes());
        let tools_digest = tools_digest(tools);
        let model_digest = digest(model.as_bytes());
        let prompt_digest = digest(prompt.as_bytes());
        let key =
            digest(format!("{task_digest}\n{tools_digest}\n{model_digest}\n{prompt_digest}").as_bytes());
        Self { key, task_digest, tools_digest, model_digest, prompt_digest, model }
    }
}

/// The task as the key sees it: trimmed, runs of whitespace made one space, lower-cased.
pub fn normalise_task(task: &str) -> String {
    task.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// One digest of a tool set, whatever order the tools were registered in.
fn tools_digest(tools: &[ToolSpec]) -> String {
    let mut described: Vec<String> = tools
        .iter()
        .map(|t| {
            let schema = serde_json::to_string(&*t.parameters).unwrap_or_default();
            // JSON strings, so no name or description can forge a separator.
            serde_json::json!([t.name, t.description, schema]).to_string()
        })
        .collect();
    described.sort();
    digest(described.join("\n").as_bytes())
}

/// SHA-256 of `bytes`, lower-case hex.
fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A cached plan: the plan a completed run followed first, and what it was keyed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCacheEntry {
    /// The key and its components.
    #[serde(flatten)]
    pub key: PlanCacheKey,
    /// The task of the run that wrote the entry, as it was submitted.
    pub task: String,
    /// The plan.
    pub plan: PlanSpec,
    /// The completed run it comes from.
    pub source_run: RunId,
    /// When it was written (a later completed run with the same key writes it again).
    pub created_at: DateTime<Utc>,
}

/// How many entries the cache keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanCacheBounds {
    /// At most this many entries; writing one more evicts the oldest.
    pub max_entries: usize,
    /// An entry older than this is neither reused nor kept.
    pub ttl: Duration,
}

impl PlanCacheBounds {
    /// Whether an entry written at `created_at` may still be reused at `now`.
    pub fn is_fresh(&self, created_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(created_at).to_std().map_or(true, |age| age < self.ttl)
    }

    /// The oldest write time an entry may have at `now` and still be kept.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.ttl).map_or(DateTime::<Utc>::MIN_UTC, |ttl| now - ttl)
    }

    /// The keys to drop from a cache holding `entries` (key, write time) at `now`: the expired
    /// ones, then the oldest until at most `max_entries` are left (ties: the smaller key goes).
    pub fn evictions(&self, entries: &[(String, DateTime<Utc>)], now: DateTime<Utc>) -> Vec<String> {
        let (mut kept, expired): (Vec<_>, Vec<_>) =
            entries.iter().partition(|(_, at)| self.is_fresh(*at, now));
        let mut out: Vec<String> = expired.into_iter().map(|(k, _)| k.clone()).collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        out.extend(kept.into_iter().skip(self.max_entries).map(|(k, _)| k.clone()));
        out
    }
}

/// Where cached plans are kept: beside the runs, so that replicas sharing a store share it.
#[async_trait::async_trait]
pub trait PlanCache: Send + Sync {
    /// The entry under `key`, fresh or not (the caller judges with [`PlanCacheBounds::is_fresh`]).
    async fn get(&self, key: &str) -> Result<Option<PlanCacheEntry>, StoreError>;
    /// Writes `entry` (replacing any under its key), then drops what `bounds` no longer allow.
    async fn put(&self, entry: &PlanCacheEntry, bounds: &PlanCacheBounds) -> Result<(), StoreError>;
    /// Drops the entries written by run `source` (whose plan has since failed a run); returns how
    /// many. An entry a later run wrote again under the same key is that run's, and stays.
    async fn remove_from(&self, source: &RunId) -> Result<u64, StoreError>;
    /// Every entry, newest first.
    async fn entries(&self) -> Result<Vec<PlanCacheEntry>, StoreError>;
    /// Drops every entry; returns how many there were.
    async fn clear(&self) -> Result<u64, StoreError>;
}

/// What a run's end does to the plan cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUpdate {
    /// Keep the run's plan (it completed, and its plan came from the planner).
    Write,
    /// Drop the entries of this run: its cached plan was reused by a run that failed.
    Invalidate(RunId),
    /// Leave the cache as it is.
    Nothing,
}

/// The cache update for a run that ended in `status`, had a plan (`planned`), and reused the
/// plan of `cached_from` if any. A reused plan is not written again, so an entry's age is that of
/// the planner call that made it and the TTL bounds it; a cancelled run says nothing of its plan.
pub fn on_run_end(status: RunStatus, planned: bool, cached_from: Option<&RunId>) -> CacheUpdate {
    match (status, cached_from) {
        (RunStatus::Completed, None) if planned => CacheUpdate::Write,
        (RunStatus::Failed, Some(source)) => CacheUpdate::Invalidate(source.clone()),
        _ => CacheUpdate::Nothing,
    }
}

/// A `plan_cache` row: key, task_digest, tools_digest, model_digest, prompt_digest, model, task,
/// plan (JSON), source_run, created_at.
pub(crate) type EntryRow = (String, String, String, String, String, String, String, String, String, String);

/// The columns of [`EntryRow`], in order (a macro, so that queries stay `&'static str`).
macro_rules! entry_columns {
    () => {
        "key, task_digest, tools_digest, model_digest, prompt_digest, model, task, plan, source_run, created_at"
    };
}
pub(crate) use entry_columns;

/// Decodes a `plan_cache` row; a bad plan or time is `Corrupt` in the source run.
pub(crate) fn entry_from_row(row: EntryRow) -> Result<PlanCacheEntry, StoreError> {
    let (key, task_digest, tools_digest, model_digest, prompt_digest, model, task, plan, source, at) = row;
    let source_run = RunId(source);
    let plan = serde_json::from_str(&plan).map_err(|e| StoreError::Corrupt {
        run: source_run.clone(),
        seq: 0,
        message: format!("plan_cache row {key}: {e}"),
    })?;
    let created_at = super::time_from_sql(&at, &source_run, 0)?;
    let key = PlanCacheKey { key, task_digest, tools_digest, model_digest, prompt_digest, model };
    Ok(PlanCacheEntry { key, task, plan, source_run, created_at })
}

/// The values of an entry's row, in [`EntryRow`] order.
pub(crate) fn entry_to_row(e: &PlanCacheEntry) -> Result<EntryRow, StoreError> {
    let plan = serde_json::to_string(&e.plan).map_err(super::backend)?;
    let k = &e.key;
    Ok((
        k.key.clone(),
        k.task_digest.clone(),
        k.tools_digest.clone(),
        k.model_digest.clone(),
        k.prompt_digest.clone(),
        k.model.clone(),
        e.task.clone(),
        plan,
        e.source_run.0.clone(),
        super::time_to_sql(&e.created_at),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tool(name: &str, schema: serde_json::Value) -> ToolSpec {
        ToolSpec { name: name.into(), description: format!("{name} things"), parameters: Arc::new(schema) }
    }

    fn key(task: &str, tools: &[ToolSpec]) -> String {
        PlanCacheKey::new(task, tools, "openai", "gpt-4o", "You plan.").key
    }

    #[test]
    fn tasks_match_after_trimming_collapsing_whitespace_and_lowercasing() {
        assert_eq!(normalise_task("  Write\t a  REPORT\n"), "write a report");
        let tools = [tool("a", serde_json::json!({}))];
        assert_eq!(key("Write a report", &tools), key(" write   a\nreport ", &tools));
        assert_ne!(key("Write a report", &tools), key("Write a reports", &tools));
    }

    #[test]
    fn the_tool_set_is_keyed_by_content_not_order() {
        let (a, b) = (tool("a", serde_json::json!({"type": "object"})), tool("b", serde_json::json!({})));
        assert_eq!(key("t", &[a.clone(), b.clone()]), key("t", &[b.clone(), a.clone()]));
        assert_ne!(key("t", &[a.clone(), b.clone()]), key("t", std::slice::from_ref(&a)));
        let a2 = tool("a", serde_json::json!({"type": "object", "required": ["x"]}));
        assert_ne!(key("t", &[a, b.clone()]), key("t", &[a2, b]));
    }

    #[test]
    fn model_and_prompt_are_part_of_the_key() {
        let k = |provider, model, prompt| PlanCacheKey::new("t", &[], provider, model, prompt);
        let base = k("openai", "gpt-4o", "p");
        assert_eq!(base.model, "openai/gpt-4o");
        assert_ne!(base.key, k("anthropic", "gpt-4o", "p").key);
        assert_ne!(base.key, k("openai", "gpt-4o-mini", "p").key);
        assert_ne!(base.key, k("openai", "gpt-4o", "q").key);
        assert_eq!(base.task_digest, k("anthropic", "x", "q").task_digest);
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn completed_planned_runs_write_and_failed_reusers_invalidate() {
        let src = RunId::new();
        assert_eq!(on_run_end(RunStatus::Completed, true, None), CacheUpdate::Write);
        assert_eq!(on_run_end(RunStatus::Completed, false, None), CacheUpdate::Nothing);
        assert_eq!(on_run_end(RunStatus::Completed, true, Some(&src)), CacheUpdate::Nothing);
        assert_eq!(on_run_end(RunStatus::Failed, true, Some(&src)), CacheUpdate::Invalidate(src.clone()));
        assert_eq!(on_run_end(RunStatus::Failed, true, None), CacheUpdate::Nothing);
        assert_eq!(on_run_end(RunStatus::Cancelled, true, Some(&src)), CacheUpdate::Nothing);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let b = PlanCacheBounds { max_entries: 10, ttl: Duration::from_secs(60) };
        assert!(b.is_fresh(at(0), at(59)));
        assert!(!b.is_fresh(at(0), at(60)));
        // A clock that went back leaves the entry fresh rather than failing the lookup.
        assert!(b.is_fresh(at(10), at(0)));
        assert_eq!(b.cutoff(at(100)), at(40));
    }

    #[test]
    fn evictions_drop_the_expired_then_the_oldest_beyond_the_bound() {
        let b = PlanCacheBounds { max_entries: 2, ttl: Duration::from_secs(60) };
        let entries: Vec<(String, DateTime<Utc>)> = [("old", 0), ("a", 50), ("b", 70), ("c", 80)]
            .iter()
            .map(|(k, t)| (k.to_string(), at(*t)))
            .collect();
        assert_eq!(b.evictions(&entries, at(100)), vec!["old", "a"]);
        let roomy = PlanCacheBounds { max_entries: 10, ..b };
        assert_eq!(roomy.evictions(&entries, at(100)), vec!["old"]);
        assert!(roomy.evictions(&entries, at(55)).is_empty());
    }
}
