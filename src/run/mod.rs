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
//! - [`machine`]: the run as a state machine: an input in, events and commands out.

pub mod approval;
mod event;
pub mod machine;
mod policy;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use approval::{PausedStep, PendingApproval, PendingCall, StepCheckpoint, ToolDecision};
pub use event::{Decision, EventKind, ReplanDecision, RunEvent, StepVerdict};
pub use policy::{FailureAction, on_step_failure, replan_after_success};
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

/// Model usage carried by the event that follows the model work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LlmUsage {
    /// Model calls.
    pub llm_calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

impl LlmUsage {
    /// Input plus output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Adds one model call's tokens.
    pub fn add_call(&mut self, t: crate::llm::TokenUsage) {
        self.llm_calls += 1;
        self.input_tokens += t.input_tokens;
        self.output_tokens += t.output_tokens;
    }
}

impl std::ops::AddAssign for LlmUsage {
    fn add_assign(&mut self, o: Self) {
        self.llm_calls += o.llm_calls;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
    }
}

/// A run's total usage (`usage` in a RunResult).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Model calls.
    pub llm_calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Tool calls.
    pub tool_calls: u64,
}

impl Usage {
    fn add_llm(&mut self, u: &LlmUsage) {
        self.llm_calls += u.llm_calls;
        self.input_tokens += u.input_tokens;
        self.output_tokens += u.output_tokens;
    }

    /// Input plus output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
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
}

impl StepError {
    /// A new error.
    pub fn new(kind: StepErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}
