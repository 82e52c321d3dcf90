//! What can happen to a run: every state change is a [`RunEvent`].

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::approval::{PendingCall, StepCheckpoint, ToolDecision};
use super::{RunId, StepError, Usage};
use crate::llm::AgentRole;
use crate::options::RunOptions;
use crate::plan::{PlanSpec, StepId, StepSpec};

/// What the replanner decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Keep the plan as it is (a failed step is then skipped).
    Continue,
    /// Replace every step that is not completed with `steps`.
    Replan,
    /// Stop now; `final_answer` is the run's output.
    Finish,
    /// Fail the run with `reason`.
    Abort,
}

/// The replanner's answer, as JSON from the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplanDecision {
    /// What to do.
    pub decision: Decision,
    /// Why, in a sentence.
    #[serde(default)]
    pub reason: String,
    /// New remaining steps (for `replan`).
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// The answer (for `finish`).
    #[serde(default)]
    pub final_answer: Option<String>,
}

/// The verifier's answer about a step's expected outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepVerdict {
    /// Whether the output meets the expected outcome.
    pub passed: bool,
    /// Why, in a sentence.
    #[serde(default)]
    pub reason: String,
}

/// One state change of a run. Every variant is stored, streamed and folded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum EventKind {
    /// The run was accepted.
    RunSubmitted {
        /// The task.
        task: String,
        /// Its policies and budgets.
        options: RunOptions,
    },
    /// Steps the planner has written so far, parsed while its plan is still streaming in
    /// (`stream_plan`); each may start as soon as its dependencies are met. `PlanProposed`
    /// follows with the whole plan.
    PlanStreamed {
        /// The steps new since the last `PlanStreamed`, in plan order.
        steps: Vec<StepSpec>,
    },
    /// The planner wrote a valid plan.
    PlanProposed {
        /// Always 1 (later revisions are `Replanned`).
        revision: u32,
        /// The plan.
        plan: PlanSpec,
        /// Planner usage.
        usage: Usage,
        /// The completed run whose plan this is, when it came from the plan cache instead of a
        /// planner call (absent: the planner wrote it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cached_from: Option<RunId>,
    },
    /// A person approved the plan, possibly edited.
    PlanApproved {
        /// The edited plan, when the approver changed it.
        #[serde(default)]
        edited: Option<PlanSpec>,
    },
    /// A step attempt was dispatched.
    StepStarted {
        /// Step.
        step: StepId,
        /// Attempt, 1-based.
        attempt: u32,
    },
    /// The executor called a tool.
    ToolCalled {
        /// Step.
        step: StepId,
        /// Attempt.
        attempt: u32,
        /// The model's call id.
        call_id: String,
        /// Tool name.
        tool: String,
        /// Arguments.
        arguments: serde_json::Value,
    },
    /// A tool call finished.
    ToolReturned {
        /// Step.
        step: StepId,
        /// Attempt.
        attempt: u32,
        /// The model's call id.
        call_id: String,
        /// False when the tool failed (the error is the output).
        ok: bool,
        /// The observation (truncated).
        output: String,
    },
    /// A step attempt paused: tool calls of `policy.approve_tools` wait for a person. The rest of
    /// the run goes on; the attempt resumes from `checkpoint` once every call is answered.
    ToolApprovalRequested {
        /// Step.
        step: StepId,
        /// Attempt.
        attempt: u32,
        /// The calls waiting, each with its own approval id.
        calls: Vec<PendingCall>,
        /// Where the attempt resumes.
        checkpoint: StepCheckpoint,
    },
    /// A pending tool call was answered (or its wait timed out).
    ToolApprovalResolved {
        /// The approval.
        approval_id: String,
        /// Its step.
        step: StepId,
        /// The answer.
        #[serde(flatten)]
        decision: ToolDecision,
    },
    /// A step attempt succeeded.
    StepCompleted {
        /// Step.
        step: StepId,
        /// Attempt.
        attempt: u32,
        /// Final answer.
        output: String,
        /// Executor and verifier usage.
        usage: Usage,
    },
    /// A step attempt failed.
    StepFailed {
        /// Step.
        step: StepId,
        /// Attempt.
        attempt: u32,
        /// What went wrong.
        error: StepError,
        /// Executor and verifier usage.
        usage: Usage,
    },
    /// A step was skipped (policy `skip`, or the replanner chose to continue without it).
    StepSkipped {
        /// Step.
        step: StepId,
        /// Why.
        reason: String,
    },
    /// The replanner was asked and kept the plan (`continue`).
    ReplanConsidered {
        /// The replanner's reason.
        reason: String,
        /// Replanner usage.
        usage: Usage,
    },
    /// The replanner replaced the remaining steps: a new revision.
    Replanned {
        /// The new revision number.
        revision: u32,
        /// Why.
        reason: String,
        /// The new remaining steps.
        steps: Vec<StepSpec>,
        /// The failed step that led to it, if any.
        #[serde(default)]
        caused_by: Option<StepId>,
        /// Replanner usage.
        usage: Usage,
    },
    /// The run finished with an answer.
    RunCompleted {
        /// The final answer.
        final_output: String,
        /// Synthesizer (or finishing replanner) usage.
        usage: Usage,
    },
    /// The run failed.
    RunFailed {
        /// Why, naming the step or limit.
        error: String,
        /// Usage of the model work that led here, if any.
        #[serde(default)]
        usage: Usage,
    },
    /// The run was cancelled.
    RunCancelled {
        /// Who or what cancelled it.
        reason: String,
    },
    /// A model call of the run started waiting for its provider, which is unavailable
    /// (unreachable, timing out, 5xx, 408, 429). The wait does not count against the step's
    /// wall-clock budget or its retries; `[llm] outage_max_wait_secs` bounds it.
    ProviderWaiting {
        /// The calling role.
        role: AgentRole,
        /// The step, for executor and verifier calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<StepId>,
        /// The step's attempt, for executor and verifier calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        /// The provider (scheme, host, port).
        provider: String,
        /// What the provider last answered, or how it could not be reached.
        last_error: String,
    },
    /// A model call that waited for its provider got an answer again.
    ProviderResumed {
        /// The calling role.
        role: AgentRole,
        /// The step, for executor and verifier calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<StepId>,
        /// The step's attempt, for executor and verifier calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        /// How long it waited, in milliseconds.
        waited_ms: u64,
    },
}

impl EventKind {
    /// The variant name (the SSE `event:` field).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunSubmitted { .. } => "RunSubmitted",
            EventKind::PlanStreamed { .. } => "PlanStreamed",
            EventKind::PlanProposed { .. } => "PlanProposed",
            EventKind::PlanApproved { .. } => "PlanApproved",
            EventKind::StepStarted { .. } => "StepStarted",
            EventKind::ToolCalled { .. } => "ToolCalled",
            EventKind::ToolReturned { .. } => "ToolReturned",
            EventKind::ToolApprovalRequested { .. } => "ToolApprovalRequested",
            EventKind::ToolApprovalResolved { .. } => "ToolApprovalResolved",
            EventKind::StepCompleted { .. } => "StepCompleted",
            EventKind::StepFailed { .. } => "StepFailed",
            EventKind::StepSkipped { .. } => "StepSkipped",
            EventKind::ReplanConsidered { .. } => "ReplanConsidered",
            EventKind::Replanned { .. } => "Replanned",
            EventKind::RunCompleted { .. } => "RunCompleted",
            EventKind::RunFailed { .. } => "RunFailed",
            EventKind::RunCancelled { .. } => "RunCancelled",
            EventKind::ProviderWaiting { .. } => "ProviderWaiting",
            EventKind::ProviderResumed { .. } => "ProviderResumed",
        }
    }

    /// True for the events that end a run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::RunCompleted { .. } | EventKind::RunFailed { .. } | EventKind::RunCancelled { .. }
        )
    }
}

/// An event with its place in the run: `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunEvent {
    /// The run.
    pub run_id: RunId,
    /// Position in the run's event log (1, 2, …).
    pub seq: u64,
    /// When it happened (microsecond precision).
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}
