//! The store a replica's runtime writes through: every append is fenced by the leases this
//! replica holds, reads go straight to Postgres.

use std::collections::HashMap;
use std::sync::Arc;

use super::Inner;
use crate::run::{RunEvent, RunId};
use crate::store::postgres::Fence;
use crate::store::{ListQuery, RunStore, RunSummary, StoreError};

/// Postgres, with appends allowed only to the runs whose leases this replica holds (and to the
/// runs it creates, whose lease it takes at once).
pub struct FencedStore {
    inner: Arc<Inner>,
}

impl FencedStore {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// The epochs the batch needs, taking the lease of each run it creates.
    fn epochs_for(&self, events: &[RunEvent]) -> HashMap<RunId, i64> {
        let mut held = self.inner.held();
        let mut epochs = HashMap::new();
        for e in events {
            if e.seq == 1 {
                held.insert(e.run_id.clone(), 1);
            }
            if let Some(epoch) = held.get(&e.run_id) {
                epochs.insert(e.run_id.clone(), *epoch);
            }
        }
        epochs
    }
}

#[async_trait::async_trait]
impl RunStore for FencedStore {
    async fn append(&self, event: &RunEvent) -> Result<(), StoreError> {
        self.append_batch(std::slice::from_ref(event)).await
    }

    async fn append_batch(&self, events: &[RunEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let epochs = self.epochs_for(events);
        let fence = Fence { owner: &self.inner.id, epochs: &epochs, ttl: self.inner.ttl };
        let result = self.inner.pg.append_fenced(events, fence).await;
        if result.is_err() {
            // A run this batch would have created does not exist: its lease is not ours.
            let mut held = self.inner.held();
            for e in events.iter().filter(|e| e.seq == 1) {
                held.remove(&e.run_id);
            }
        }
        if let Err(StoreError::Fenced { run, .. }) = &result {
            self.inner.held().remove(run);
            self.inner.metrics.lease_lost();
        }
        result
    }

    async fn events(&self, run: &RunId, after: u64) -> Result<Vec<RunEvent>, StoreError> {
        self.inner.pg.events(run, after).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<RunSummary>, StoreError> {
        self.inner.pg.list(query).await
    }

    async fn unfinished(&self) -> Result<Vec<RunId>, StoreError> {
        self.inner.pg.unfinished().await
    }

    /// The cache holds no run's events: its writes need no lease.
    fn plan_cache(&self) -> Option<&dyn crate::store::plan_cache::PlanCache> {
        self.inner.pg.plan_cache()
    }
}
