//! The seam between a run's driver and the replicas that share the work (`crate::cluster`, with
//! a Postgres store): where a step goes instead of the local pool, how control requests reach a
//! run driven elsewhere, and how a stream learns that a run's log grew on another replica.
//!
//! Without replicas (SQLite, memory) a runtime has none of this and keeps everything local.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::messages::{ControlError, StepJob, TrackerMsg};
use crate::plan::{PlanSpec, StepId};
use crate::run::RunId;
use crate::store::StoreError;

/// What a runtime asks of the replicas it shares runs with.
pub(crate) trait Replication: Send + Sync + 'static {
    /// Queues a step attempt for whichever replica's executors claim it first; its events and
    /// report come back to this run's tracker as inputs.
    fn enqueue(&self, job: StepJob);
    /// Takes back the queued or running attempts of `run` (of one step, or all of them): the
    /// plan dropped the step, or the run ended.
    fn withdraw(&self, run: &RunId, step: Option<StepId>);
    /// The run ended here: its lease is done with.
    fn finished(&self, run: &RunId);
    /// Carries a control request to the run's owner, wherever it runs, and brings back its answer.
    fn control(&self, run: &RunId, request: ControlRequest) -> BoxFuture<'static, Result<(), ControlError>>;
    /// Changes whenever the run's log grows, whichever replica appended.
    fn changes(&self, run: &RunId) -> watch::Receiver<()>;
    /// Takes over the runs whose leases are free now and starts driving them here.
    fn take_over(&self) -> BoxFuture<'_, Result<Vec<RunId>, StoreError>>;
    /// Stops taking work and gives up the leases of the runs still held, so that the other
    /// replicas take them over at once instead of after the lease expires.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// Stops taking work at once, leaving the leases to expire (the runtime is dropped).
    fn halt(&self);
}

/// Approve, reject, cancel or answer a tool call, as data that can travel to another replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ControlRequest {
    /// Approve the plan, optionally edited.
    Approve {
        /// The replacement plan.
        edited: Option<PlanSpec>,
    },
    /// Reject the plan.
    Reject {
        /// Why.
        reason: String,
    },
    /// Cancel the run.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Answer a tool call waiting for approval.
    ResolveToolCall {
        /// The approval.
        approval_id: String,
        /// The answer.
        decision: crate::run::ToolDecision,
    },
}

impl ControlRequest {
    /// The tracker message that carries this request.
    pub(crate) fn into_message(self, reply: ractor::RpcReplyPort<Result<(), ControlError>>) -> TrackerMsg {
        match self {
            ControlRequest::Approve { edited } => TrackerMsg::Approve(edited, reply),
            ControlRequest::Reject { reason } => TrackerMsg::Reject(reason, reply),
            ControlRequest::Cancel { reason } => TrackerMsg::Cancel(reason, reply),
            ControlRequest::ResolveToolCall { approval_id, decision } => {
                TrackerMsg::ResolveToolCall(approval_id, decision, reply)
            }
        }
    }
}
