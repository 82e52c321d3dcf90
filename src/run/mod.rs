//! A run as data: the events that happen to it, the state they fold into, and the result.
//!
//! Pure: no I/O, no actors. The tracker actor appends a [`RunEvent`] for every state change and
//! applies it to its [`RunState`]; a store, an SSE stream or crash recovery can rebuild the very
//! same state with [`RunState::from_events`]. The policy decisions (retry, skip, replan, abort)
//! are pure functions here too, so every path is unit-tested without tokio.
//!
//! - `event`: what can happen ([`EventKind`], [`RunEvent`]) and the model answers it carries.
//! - `state`: the fold ([`RunState`]) and what it shows ([`RunResult`], [`RunStatus`]).
//! - `policy`: what a failure or a success leads to.
//! - `machine` (internal): the run as a state machine: an input in, events and commands out.

pub mod approval;
pub(crate) mod budget;
mod event;
pub(crate) mod machine;
mod policy;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::llm::{Cost, Usage};
pub use approval::{PausedStep, PendingApproval, PendingCall, StepCheckpoint, ToolDecision};
pub(crate) use budget::RunSpend;
pub use event::{Decision, EventKind, ReplanDecision, RunEvent, StepVerdict};
pub use machine::Refusal;
pub(crate) use policy::{FailureAction, on_step_failure, replan_after_success};
pub use state::{PlanRevision, ProviderWait, RunResult, RunState, RunStatus, StateError};

/// A run's id (a UUIDv7: unique and sortable by creation time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A fresh id.
    pub fn new() -> Self {
        RunId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a step attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepErrorKind {
    /// Iterations, tool calls, tokens or time ran out.
    BudgetExhausted,
    /// The model call failed.
    LlmError,
    /// A tool panicked (contained).
    ToolPanicked,
    /// The executor actor crashed; it was replaced.
    ExecutorCrashed,
    /// The verifier said the expected outcome was not met.
    VerificationFailed,
    /// The run was cancelled mid-step.
    Cancelled,
}

impl StepErrorKind {
    /// The snake_case name used in JSON and spans (`error.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepErrorKind::BudgetExhausted => "budget_exhausted",
            StepErrorKind::LlmError => "llm_error",
            StepErrorKind::ToolPanicked => "tool_panicked",
            StepErrorKind::ExecutorCrashed => "executor_crashed",
            StepErrorKind::VerificationFailed => "verification_failed",
            StepErrorKind::Cancelled => "cancelled",
        }
    }
}

/// A failed attempt's error: a machine-readable kind and a message for people (and the replanner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepError {
    /// What kind of failure.
    pub kind: StepErrorKind,
    /// What happened, in words.
    pub message: String,
    /// The run's budget, not the step's, ran out (`budget_exhausted` only): the run ends, with
    /// no retry, skip or replan that would only spend more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_budget: bool,
}

impl StepError {
    /// A new error.
    pub fn new(kind: StepErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), run_budget: false }
    }

    /// A `budget_exhausted` error for a run-level budget (`run_budget.*`).
    pub fn run_budget_exhausted(message: impl Into<String>) -> Self {
        Self { run_budget: true, ..Self::new(StepErrorKind::BudgetExhausted, message) }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}
