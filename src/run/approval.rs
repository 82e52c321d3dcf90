//! Tool calls that wait for a person: what a paused step keeps (its checkpoint), which calls
//! wait, and how each was answered.
//!
//! A step whose model asks for a tool of `policy.approve_tools` ends its attempt paused: the
//! conversation so far is recorded with the pending calls, the executor is free, and once every
//! pending call of the step is answered the attempt resumes from the checkpoint, on whichever
//! executor takes it. Everything here is data recorded in events, so a pause survives a restart.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Usage;
use crate::llm::Message;
use crate::plan::StepId;

/// A tool call the model asked for that waits for a person's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PendingCall {
    /// The approval's own id (a UUIDv7), unique across runs: answers name it.
    pub approval_id: String,
    /// The model's call id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The arguments the model gave.
    pub arguments: serde_json::Value,
    /// The call's position among the attempt's tool calls (part of its idempotency key).
    pub call_index: u32,
}

/// A person's (or the clock's) answer to a pending call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ToolDecision {
    /// Run the call as the model asked.
    Approve,
    /// Run the call with these arguments instead (checked against the tool's schema).
    Edit {
        /// The replacement arguments.
        arguments: serde_json::Value,
    },
    /// Do not run it; the model sees the reason as the call's observation.
    Reject {
        /// Why, for the model.
        reason: String,
    },
    /// Nobody answered within `policy.tool_approval_timeout_secs`; treated as a rejection.
    TimedOut,
}

impl ToolDecision {
    /// The outcome's name (`stepwise.approval.outcome`).
    pub fn outcome(&self) -> &'static str {
        match self {
            ToolDecision::Approve => "approved",
            ToolDecision::Edit { .. } => "edited",
            ToolDecision::Reject { .. } => "rejected",
            ToolDecision::TimedOut => "timed_out",
        }
    }

    /// The observation the model gets instead of running the call, or `None` when it runs.
    pub fn refusal(&self) -> Option<String> {
        match self {
            ToolDecision::Approve | ToolDecision::Edit { .. } => None,
            ToolDecision::Reject { reason } => Some(format!("error: a person rejected this call: {reason}")),
            ToolDecision::TimedOut => {
                Some("error: this call was not approved in time; it did not run".into())
            }
        }
    }
}

/// Where a paused attempt stands, so that it resumes exactly there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepCheckpoint {
    /// The conversation so far, the observations of the turn's other calls included.
    #[schemars(with = "Vec<serde_json::Value>")]
    pub messages: Vec<Message>,
    /// Model calls made.
    pub iterations: u32,
    /// Tool calls made (the pending ones included).
    pub tool_calls: u32,
    /// Model usage so far; counted once, when the attempt ends.
    pub usage: Usage,
    /// Wall-clock work time spent so far, in milliseconds (waits for people and providers not
    /// counted).
    pub worked_ms: u64,
}

/// A step whose attempt is paused on tool calls, as the run's state keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct PausedStep {
    /// The attempt that paused (it resumes under the same number).
    pub attempt: u32,
    /// Where to resume.
    pub checkpoint: StepCheckpoint,
    /// The calls waiting, in the model's order.
    pub calls: Vec<PendingCall>,
    /// The answers given so far, by approval id.
    pub answers: std::collections::BTreeMap<String, ToolDecision>,
    /// When the step paused.
    pub since: DateTime<Utc>,
}

impl PausedStep {
    /// True once every pending call is answered: the attempt may resume.
    pub fn answered(&self) -> bool {
        self.calls.iter().all(|c| self.answers.contains_key(&c.approval_id))
    }

    /// Each call with its answer, once all are answered.
    pub fn resolved_calls(&self) -> Option<Vec<(PendingCall, ToolDecision)>> {
        self.calls.iter().map(|c| Some((c.clone(), self.answers.get(&c.approval_id)?.clone()))).collect()
    }
}

/// A tool call waiting for an answer, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PendingApproval {
    /// The id to answer.
    pub approval_id: String,
    /// The step.
    pub step: StepId,
    /// The step's attempt.
    pub attempt: u32,
    /// The model's call id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The arguments the model gave.
    pub arguments: serde_json::Value,
    /// Since when it waits.
    pub requested_at: DateTime<Utc>,
}
