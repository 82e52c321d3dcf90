//! The plan cache at a run's end: a completed run that planned leaves its plan for the next run
//! with the same key; a run that reused a plan and failed takes that plan away.

use chrono::Utc;

use super::{Tracker, TrackerState};
use crate::plan::PlanSpec;
use crate::run::RunEvent;
use crate::store::plan_cache::{CacheUpdate, PlanCacheEntry, on_run_end};

impl Tracker {
    /// Updates the cache when `events` (just committed) end the run. Called before the result
    /// is published, so a run submitted after this one ended finds its plan. The cache only
    /// saves time: a store failure here is logged, and the run's result stands.
    pub(super) async fn settle_plan_cache(&self, st: &TrackerState, events: &[RunEvent]) {
        let Some(bounds) = self.shared.plan_cache else { return };
        if !events.iter().any(|e| e.kind.is_terminal()) {
            return;
        }
        let Some(cache) = self.shared.store.plan_cache() else { return };
        let run = st.machine.run();
        let first = run.revisions.first();
        let done = match on_run_end(run.status, first.is_some(), run.plan_cached_from.as_ref()) {
            CacheUpdate::Nothing => return,
            CacheUpdate::Write => {
                // The first revision as it ran (an edit on approval is in it), not the replans.
                let steps = first.map(|r| r.steps.clone()).unwrap_or_default();
                let entry = PlanCacheEntry {
                    key: crate::actors::planner::cache_key(&self.shared, &run.id, &run.task),
                    task: run.task.clone(),
                    plan: PlanSpec { goal: run.plan.goal.clone(), steps },
                    source_run: run.id.clone(),
                    created_at: Utc::now(),
                };
                cache.put(&entry, &bounds).await
            }
            CacheUpdate::Invalidate(source) => cache.remove_from(&source).await.map(drop),
        };
        if let Err(e) = done {
            tracing::warn!(run = %run.id, error = %e, "plan cache not updated");
        }
    }
}
