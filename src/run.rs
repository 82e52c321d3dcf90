//! A run as data: the events that happen to it, the state they fold into, and the result.
//!
//! Pure: no I/O, no actors. The tracker actor appends a [`RunEvent`] for every state change and
//! applies it to its [`RunState`]; a store, an SSE stream or crash recovery can rebuild the very
//! same state with [`RunState::from_events`]. The policy decisions (retry, skip, replan, abort)
//! are pure functions here too, so every path is unit-tested without tokio.

use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::options::{FailurePolicy, Policy, ReplanMode, RunOptions};
use crate::plan::{Plan, PlanSpec, StepId, StepSpec, StepStatus};

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

/// A run's total usage (DESIGN §6 `usage`).
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

impl StepError {
    /// Reads back an error from its display form (`kind: message`), as kept in a step's `error`;
    /// text without a known kind prefix becomes an `llm_error`.
    pub fn parse(text: &str) -> StepError {
        text.split_once(": ")
            .and_then(|(kind, message)| {
                let kind: StepErrorKind =
                    serde_json::from_value(serde_json::Value::String(kind.to_owned())).ok()?;
                Some(StepError::new(kind, message))
            })
            .unwrap_or_else(|| StepError::new(StepErrorKind::LlmError, text))
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// What the replanner decided (DESIGN §2).
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

/// One state change of a run. Every variant is stored, streamed and folded (DESIGN §2).
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
    /// The planner wrote a valid plan.
    PlanProposed {
        /// Always 1 (later revisions are `Replanned`).
        revision: u32,
        /// The plan.
        plan: PlanSpec,
        /// Planner usage.
        usage: LlmUsage,
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
    /// A step attempt succeeded.
    StepCompleted {
        /// Step.
        step: StepId,
        /// Attempt.
        attempt: u32,
        /// Final answer.
        output: String,
        /// Executor and verifier usage.
        usage: LlmUsage,
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
        usage: LlmUsage,
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
        usage: LlmUsage,
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
        usage: LlmUsage,
    },
    /// The run finished with an answer.
    RunCompleted {
        /// The final answer.
        final_output: String,
        /// Synthesizer (or finishing replanner) usage.
        usage: LlmUsage,
    },
    /// The run failed.
    RunFailed {
        /// Why, naming the step or limit.
        error: String,
        /// Usage of the model work that led here, if any.
        #[serde(default)]
        usage: LlmUsage,
    },
    /// The run was cancelled.
    RunCancelled {
        /// Who or what cancelled it.
        reason: String,
    },
}

impl EventKind {
    /// The variant name (the SSE `event:` field).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunSubmitted { .. } => "RunSubmitted",
            EventKind::PlanProposed { .. } => "PlanProposed",
            EventKind::PlanApproved { .. } => "PlanApproved",
            EventKind::StepStarted { .. } => "StepStarted",
            EventKind::ToolCalled { .. } => "ToolCalled",
            EventKind::ToolReturned { .. } => "ToolReturned",
            EventKind::StepCompleted { .. } => "StepCompleted",
            EventKind::StepFailed { .. } => "StepFailed",
            EventKind::StepSkipped { .. } => "StepSkipped",
            EventKind::ReplanConsidered { .. } => "ReplanConsidered",
            EventKind::Replanned { .. } => "Replanned",
            EventKind::RunCompleted { .. } => "RunCompleted",
            EventKind::RunFailed { .. } => "RunFailed",
            EventKind::RunCancelled { .. } => "RunCancelled",
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

/// A run's lifecycle state (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for the planner.
    Planning,
    /// The plan waits for a person.
    AwaitingApproval,
    /// Steps are running.
    Running,
    /// Finished with an answer.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunStatus {
    /// Completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Planning => "planning",
            RunStatus::AwaitingApproval => "awaiting_approval",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!("unknown run status {s:?} (planning, awaiting_approval, running, completed, failed, cancelled)")
        })
    }
}

/// One plan revision, kept so revisions can be compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanRevision {
    /// 1 for the planner's plan, then one per replan.
    pub revision: u32,
    /// Why this revision was made (none for the first).
    pub reason: Option<String>,
    /// The steps this revision introduced (completed steps of earlier revisions are kept).
    pub steps: Vec<StepSpec>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The outcome of a run, as the library, `--json` and `GET /v1/runs/{id}` return it (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunResult {
    /// Run id.
    pub id: RunId,
    /// The task.
    pub task: String,
    /// Status.
    pub status: RunStatus,
    /// The latest plan revision with every step's state.
    pub plan: Plan,
    /// Every revision, oldest first.
    pub revisions: Vec<PlanRevision>,
    /// True when the replanner revised the plan at least once.
    pub replanned: bool,
    /// The synthesised answer of a completed run.
    pub final_output: Option<String>,
    /// Why the run failed or was cancelled.
    pub error: Option<String>,
    /// Model and tool usage.
    pub usage: Usage,
    /// When the run was submitted.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// An event that does not fit the state it is applied to: a bug or a corrupted log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// `seq` is not the next number.
    #[error("run {run}: event seq {got} where {expected} was expected")]
    Sequence { run: RunId, expected: u64, got: u64 },
    /// The event belongs to another run.
    #[error("event of run {got} applied to run {run}")]
    WrongRun { run: RunId, got: RunId },
    /// The event makes no sense in the current state.
    #[error("run {run}, event {seq} ({event}): {message}")]
    Transition { run: RunId, seq: u64, event: &'static str, message: String },
}

/// A run's state: the fold of its events.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// Run id.
    pub id: RunId,
    /// Task.
    pub task: String,
    /// Policies and budgets.
    pub options: RunOptions,
    /// Lifecycle state.
    pub status: RunStatus,
    /// Live plan.
    pub plan: Plan,
    /// Revisions.
    pub revisions: Vec<PlanRevision>,
    /// Final answer.
    pub final_output: Option<String>,
    /// Failure or cancel reason.
    pub error: Option<String>,
    /// Usage so far.
    pub usage: Usage,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// End time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seq of the last applied event.
    pub last_seq: u64,
}

impl RunState {
    /// A state for a run just submitted (seq 0: nothing applied yet).
    pub fn new(id: RunId, task: String, options: RunOptions, created_at: DateTime<Utc>) -> Self {
        Self {
            id,
            task,
            options,
            status: RunStatus::Planning,
            plan: Plan::default(),
            revisions: Vec::new(),
            final_output: None,
            error: None,
            usage: Usage::default(),
            created_at,
            finished_at: None,
            last_seq: 0,
        }
    }

    /// Rebuilds a state from a run's whole event log (first event: `RunSubmitted`).
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a RunEvent>,
    ) -> Result<Option<Self>, StateError> {
        let mut state: Option<RunState> = None;
        for e in events {
            match &mut state {
                None => {
                    let EventKind::RunSubmitted { task, options } = &e.kind else {
                        return Err(StateError::Transition {
                            run: e.run_id.clone(),
                            seq: e.seq,
                            event: e.kind.name(),
                            message: "the first event of a run must be RunSubmitted".into(),
                        });
                    };
                    let mut s = RunState::new(e.run_id.clone(), task.clone(), options.clone(), e.at);
                    s.apply(e)?;
                    state = Some(s);
                }
                Some(s) => s.apply(e)?,
            }
        }
        Ok(state)
    }

    /// The number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Replans made so far.
    pub fn replans(&self) -> u32 {
        self.revisions.len().saturating_sub(1) as u32
    }

    /// Applies one event. Rejects gaps, other runs' events and impossible transitions.
    pub fn apply(&mut self, e: &RunEvent) -> Result<(), StateError> {
        if e.run_id != self.id {
            return Err(StateError::WrongRun { run: self.id.clone(), got: e.run_id.clone() });
        }
        if e.seq != self.next_seq() {
            return Err(StateError::Sequence { run: self.id.clone(), expected: self.next_seq(), got: e.seq });
        }
        let bad = |message: String| StateError::Transition {
            run: e.run_id.clone(),
            seq: e.seq,
            event: e.kind.name(),
            message,
        };
        if self.status.is_terminal() {
            return Err(bad(format!("the run already ended ({})", self.status.as_str())));
        }
        match &e.kind {
            EventKind::RunSubmitted { .. } => {
                if e.seq != 1 {
                    return Err(bad("RunSubmitted must be the first event".into()));
                }
            }
            EventKind::PlanProposed { revision, plan, usage } => {
                if self.status != RunStatus::Planning {
                    return Err(bad(format!("no plan was expected in status {}", self.status.as_str())));
                }
                self.plan = Plan::from_spec(plan.clone(), *revision);
                self.revisions.push(PlanRevision {
                    revision: *revision,
                    reason: None,
                    steps: plan.steps.clone(),
                    created_at: e.at,
                });
                self.usage.add_llm(usage);
                self.status = if self.options.policy.require_approval {
                    RunStatus::AwaitingApproval
                } else {
                    RunStatus::Running
                };
            }
            EventKind::PlanApproved { edited } => {
                if self.status != RunStatus::AwaitingApproval {
                    return Err(bad("the plan is not awaiting approval".into()));
                }
                if let Some(plan) = edited {
                    self.plan = Plan::from_spec(plan.clone(), self.plan.revision);
                    if let Some(r) = self.revisions.last_mut() {
                        r.steps = plan.steps.clone();
                        r.reason = Some("edited on approval".into());
                    }
                }
                self.status = RunStatus::Running;
            }
            EventKind::StepStarted { step, attempt } => {
                self.expect_running(&bad)?;
                let s = self.plan.step_mut(step).ok_or_else(|| bad(format!("unknown step {step}")))?;
                // Failed → running is a retry; running → running is a restarted service
                // re-dispatching a step that was interrupted.
                if !matches!(s.status, StepStatus::Pending | StepStatus::Running | StepStatus::Failed) {
                    return Err(bad(format!("step {step} is {:?}, not pending", s.status)));
                }
                s.status = StepStatus::Running;
                s.attempts = *attempt;
                s.started_at = Some(e.at);
            }
            EventKind::ToolCalled { step, .. } => {
                self.running_step(step, &bad)?;
                self.usage.tool_calls += 1;
            }
            EventKind::ToolReturned { step, .. } => {
                self.running_step(step, &bad)?;
            }
            EventKind::StepCompleted { step, attempt, output, usage } => {
                let s = self.running_step(step, &bad)?;
                if s.attempts != *attempt {
                    return Err(bad(format!("step {step} is on attempt {}, not {attempt}", s.attempts)));
                }
                s.status = StepStatus::Completed;
                s.output = Some(output.clone());
                s.error = None;
                s.finished_at = Some(e.at);
                self.usage.add_llm(usage);
            }
            EventKind::StepFailed { step, attempt, error, usage } => {
                let s = self.running_step(step, &bad)?;
                if s.attempts != *attempt {
                    return Err(bad(format!("step {step} is on attempt {}, not {attempt}", s.attempts)));
                }
                s.status = StepStatus::Failed;
                s.failures += 1;
                s.error = Some(error.to_string());
                s.finished_at = Some(e.at);
                self.usage.add_llm(usage);
            }
            EventKind::StepSkipped { step, reason } => {
                self.expect_running(&bad)?;
                let s = self.plan.step_mut(step).ok_or_else(|| bad(format!("unknown step {step}")))?;
                if s.status == StepStatus::Completed {
                    return Err(bad(format!("step {step} is completed and cannot be skipped")));
                }
                s.status = StepStatus::Skipped;
                s.error = Some(reason.clone());
                s.finished_at = Some(e.at);
            }
            EventKind::ReplanConsidered { usage, .. } => {
                self.expect_running(&bad)?;
                self.usage.add_llm(usage);
            }
            EventKind::Replanned { revision, reason, steps, usage, .. } => {
                self.expect_running(&bad)?;
                if *revision != self.plan.revision + 1 {
                    return Err(bad(format!("revision {revision} follows revision {}", self.plan.revision)));
                }
                self.plan.replace_remaining(steps.clone());
                self.revisions.push(PlanRevision {
                    revision: *revision,
                    reason: Some(reason.clone()),
                    steps: steps.clone(),
                    created_at: e.at,
                });
                self.usage.add_llm(usage);
            }
            EventKind::RunCompleted { final_output, usage } => {
                self.usage.add_llm(usage);
                self.final_output = Some(final_output.clone());
                self.finish(RunStatus::Completed, e.at);
            }
            EventKind::RunFailed { error, usage } => {
                self.usage.add_llm(usage);
                self.error = Some(error.clone());
                self.finish(RunStatus::Failed, e.at);
            }
            EventKind::RunCancelled { reason } => {
                self.error = Some(reason.clone());
                self.finish(RunStatus::Cancelled, e.at);
            }
        }
        self.last_seq = e.seq;
        Ok(())
    }

    fn finish(&mut self, status: RunStatus, at: DateTime<Utc>) {
        self.status = status;
        self.finished_at = Some(at);
        // A step cut off by the end of the run did not complete; say so instead of "running".
        for s in &mut self.plan.steps {
            if s.status == StepStatus::Running {
                s.status = StepStatus::Failed;
                s.error.get_or_insert_with(|| format!("interrupted: run {}", status.as_str()));
            }
        }
    }

    fn expect_running(&self, bad: &impl Fn(String) -> StateError) -> Result<(), StateError> {
        if self.status == RunStatus::Running {
            Ok(())
        } else {
            Err(bad(format!("the run is {}, not running", self.status.as_str())))
        }
    }

    fn running_step(
        &mut self,
        step: &StepId,
        bad: &impl Fn(String) -> StateError,
    ) -> Result<&mut crate::plan::Step, StateError> {
        self.expect_running(bad)?;
        let s = self.plan.step_mut(step).ok_or_else(|| bad(format!("unknown step {step}")))?;
        if s.status != StepStatus::Running {
            return Err(bad(format!("step {step} is {:?}, not running", s.status)));
        }
        Ok(s)
    }

    /// The result as the API returns it.
    pub fn result(&self) -> RunResult {
        RunResult {
            id: self.id.clone(),
            task: self.task.clone(),
            status: self.status,
            plan: self.plan.clone(),
            revisions: self.revisions.clone(),
            replanned: self.revisions.len() > 1,
            final_output: self.final_output.clone(),
            error: self.error.clone(),
            usage: self.usage,
            created_at: self.created_at,
            finished_at: self.finished_at,
        }
    }

    /// Which run-level budget is used up, if any (tokens, tool calls).
    pub fn run_budget_exceeded(&self) -> Option<String> {
        let b = &self.options.run_budget;
        if b.max_tokens > 0 && self.usage.tokens() > b.max_tokens {
            return Some(format!(
                "run budget exhausted: {} tokens used, limit {}",
                self.usage.tokens(),
                b.max_tokens
            ));
        }
        if b.max_tool_calls > 0 && self.usage.tool_calls > b.max_tool_calls {
            return Some(format!(
                "run budget exhausted: {} tool calls made, limit {}",
                self.usage.tool_calls, b.max_tool_calls
            ));
        }
        None
    }
}

/// What to do after a step attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// Run the step again.
    Retry,
    /// Skip it and carry on.
    Skip,
    /// Ask the replanner.
    Replan,
    /// Fail the run with this reason.
    FailRun(String),
}

/// The failure policy (DESIGN §2) as a pure function.
///
/// `failures` counts the step's failed attempts including this one; `replans` the revisions made
/// so far. A cancelled attempt is never retried.
pub fn on_step_failure(
    policy: &Policy,
    step: &StepId,
    failures: u32,
    error: &StepError,
    replans: u32,
) -> FailureAction {
    if error.kind == StepErrorKind::Cancelled {
        return FailureAction::FailRun(format!("step {step} was cancelled"));
    }
    if policy.on_step_failure == FailurePolicy::Abort {
        return FailureAction::FailRun(format!("step {step} failed ({error}); policy is abort"));
    }
    if failures <= policy.max_retries {
        return FailureAction::Retry;
    }
    match policy.on_step_failure {
        FailurePolicy::Retry | FailurePolicy::Abort => {
            FailureAction::FailRun(format!("step {step} failed after {failures} attempts: {error}"))
        }
        FailurePolicy::Skip => FailureAction::Skip,
        FailurePolicy::Replan if policy.replan == ReplanMode::Never => FailureAction::FailRun(format!(
            "step {step} failed after {failures} attempts ({error}) and replanning is off (replan = never)"
        )),
        FailurePolicy::Replan if replans >= policy.max_replans => FailureAction::FailRun(format!(
            "step {step} failed after {failures} attempts ({error}) and the replan budget ({}) is used up",
            policy.max_replans
        )),
        FailurePolicy::Replan => FailureAction::Replan,
    }
}

/// Whether to consult the replanner after a step completed (`replan = after_each_step`).
///
/// Not when nothing remains to revise, nor when the replan budget is used up.
pub fn replan_after_success(policy: &Policy, state: &RunState) -> bool {
    policy.replan == ReplanMode::AfterEachStep
        && state.replans() < policy.max_replans
        && state.plan.steps.iter().any(|s| s.status == StepStatus::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::RunOptions;

    fn spec(ids: &[(&str, &[&str])]) -> PlanSpec {
        PlanSpec {
            goal: "g".into(),
            steps: ids
                .iter()
                .map(|(id, deps)| StepSpec {
                    id: (*id).into(),
                    description: format!("do {id}"),
                    expected_outcome: String::new(),
                    tool: None,
                    depends_on: deps.iter().map(|d| StepId::from(*d)).collect(),
                })
                .collect(),
        }
    }

    struct Log {
        id: RunId,
        events: Vec<RunEvent>,
    }

    impl Log {
        fn new(options: RunOptions) -> Self {
            let mut l = Log { id: RunId::new(), events: vec![] };
            l.push(EventKind::RunSubmitted { task: "t".into(), options });
            l
        }
        fn push(&mut self, kind: EventKind) -> &mut Self {
            let seq = self.events.len() as u64 + 1;
            self.events.push(RunEvent { run_id: self.id.clone(), seq, at: Utc::now(), kind });
            self
        }
        fn state(&self) -> RunState {
            RunState::from_events(&self.events).unwrap().unwrap()
        }
    }

    fn usage(calls: u64, tokens: u64) -> LlmUsage {
        LlmUsage { llm_calls: calls, input_tokens: tokens, output_tokens: tokens }
    }

    #[test]
    fn fold_of_a_happy_run() {
        let mut l = Log::new(RunOptions::default());
        l.push(EventKind::PlanProposed {
            revision: 1,
            plan: spec(&[("a", &[]), ("b", &["a"])]),
            usage: usage(1, 10),
        })
        .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
        .push(EventKind::ToolCalled {
            step: "a".into(),
            attempt: 1,
            call_id: "c1".into(),
            tool: "t".into(),
            arguments: serde_json::json!({}),
        })
        .push(EventKind::ToolReturned {
            step: "a".into(),
            attempt: 1,
            call_id: "c1".into(),
            ok: true,
            output: "x".into(),
        })
        .push(EventKind::StepCompleted {
            step: "a".into(),
            attempt: 1,
            output: "A".into(),
            usage: usage(2, 5),
        });
        let s = l.state();
        assert_eq!(s.status, RunStatus::Running);
        assert_eq!(s.plan.ready().iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["b"]);
        l.push(EventKind::StepStarted { step: "b".into(), attempt: 1 })
            .push(EventKind::StepCompleted {
                step: "b".into(),
                attempt: 1,
                output: "B".into(),
                usage: usage(1, 1),
            })
            .push(EventKind::RunCompleted { final_output: "done".into(), usage: usage(1, 2) });
        let r = l.state().result();
        assert_eq!(r.status, RunStatus::Completed);
        assert_eq!(r.final_output.as_deref(), Some("done"));
        assert!(!r.replanned);
        assert_eq!(r.usage, Usage { llm_calls: 5, input_tokens: 18, output_tokens: 18, tool_calls: 1 });
        assert!(r.finished_at.is_some());
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "id",
            "task",
            "status",
            "plan",
            "revisions",
            "replanned",
            "final_output",
            "error",
            "usage",
            "created_at",
            "finished_at",
        ] {
            assert!(json.get(key).is_some(), "RunResult JSON lacks {key}");
        }
        for key in [
            "id",
            "description",
            "expected_outcome",
            "tool",
            "depends_on",
            "status",
            "attempts",
            "output",
            "error",
        ] {
            assert!(json["plan"]["steps"][0].get(key).is_some(), "step JSON lacks {key}");
        }
        assert_eq!(json["status"], "completed");
    }

    #[test]
    fn events_round_trip_through_json_with_a_type_tag() {
        let mut l = Log::new(RunOptions::default());
        l.push(EventKind::PlanProposed { revision: 1, plan: spec(&[("a", &[])]), usage: usage(1, 1) });
        let text = serde_json::to_string(&l.events).unwrap();
        assert!(text.contains(r#""type":"PlanProposed""#), "{text}");
        let back: Vec<RunEvent> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l.events);
    }

    #[test]
    fn seq_gaps_and_foreign_events_are_rejected() {
        let mut l = Log::new(RunOptions::default());
        let mut s = l.state();
        l.push(EventKind::PlanProposed { revision: 1, plan: spec(&[("a", &[])]), usage: usage(1, 1) });
        let mut gap = l.events[1].clone();
        gap.seq = 5;
        assert!(matches!(s.apply(&gap), Err(StateError::Sequence { expected: 2, got: 5, .. })));
        let mut foreign = l.events[1].clone();
        foreign.run_id = RunId::new();
        assert!(matches!(s.apply(&foreign), Err(StateError::WrongRun { .. })));
    }

    #[test]
    fn impossible_transitions_are_rejected() {
        let mut l = Log::new(RunOptions::default());
        l.push(EventKind::StepStarted { step: "a".into(), attempt: 1 });
        assert!(RunState::from_events(&l.events).is_err(), "a step cannot start before a plan");
        let mut l = Log::new(RunOptions::default());
        l.push(EventKind::PlanProposed { revision: 1, plan: spec(&[("a", &[])]), usage: usage(1, 1) }).push(
            EventKind::StepCompleted { step: "a".into(), attempt: 1, output: "x".into(), usage: usage(0, 0) },
        );
        let err = RunState::from_events(&l.events).unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
    }

    #[test]
    fn approval_holds_the_plan_and_an_edit_replaces_it() {
        let mut opts = RunOptions::default();
        opts.policy.require_approval = true;
        let mut l = Log::new(opts);
        l.push(EventKind::PlanProposed { revision: 1, plan: spec(&[("a", &[])]), usage: usage(1, 1) });
        assert_eq!(l.state().status, RunStatus::AwaitingApproval);
        l.push(EventKind::PlanApproved { edited: Some(spec(&[("x", &[]), ("y", &["x"])])) });
        let s = l.state();
        assert_eq!(s.status, RunStatus::Running);
        assert_eq!(s.plan.steps.len(), 2);
        assert_eq!(s.plan.steps[0].id.as_str(), "x");
    }

    #[test]
    fn replan_keeps_completed_steps_and_bumps_the_revision() {
        let mut l = Log::new(RunOptions::default());
        l.push(EventKind::PlanProposed {
            revision: 1,
            plan: spec(&[("a", &[]), ("b", &["a"])]),
            usage: usage(1, 1),
        })
        .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
        .push(EventKind::StepCompleted {
            step: "a".into(),
            attempt: 1,
            output: "A".into(),
            usage: usage(1, 1),
        })
        .push(EventKind::StepStarted { step: "b".into(), attempt: 1 })
        .push(EventKind::StepFailed {
            step: "b".into(),
            attempt: 1,
            error: StepError::new(StepErrorKind::LlmError, "boom"),
            usage: usage(1, 1),
        })
        .push(EventKind::Replanned {
            revision: 2,
            reason: "b broke".into(),
            steps: spec(&[("fix", &["a"])]).steps,
            caused_by: Some("b".into()),
            usage: usage(1, 1),
        });
        let r = l.state().result();
        assert!(r.replanned);
        assert_eq!(r.plan.revision, 2);
        assert_eq!(r.revisions.len(), 2);
        assert_eq!(r.revisions[1].reason.as_deref(), Some("b broke"));
        let ids: Vec<_> = r.plan.steps.iter().map(|s| (s.id.as_str(), s.status)).collect();
        assert_eq!(ids, [("a", StepStatus::Completed), ("fix", StepStatus::Pending)]);
        assert_eq!(r.plan.steps[0].output.as_deref(), Some("A"));
    }

    #[test]
    fn a_cancelled_run_marks_running_steps_interrupted() {
        let mut l = Log::new(RunOptions::default());
        l.push(EventKind::PlanProposed { revision: 1, plan: spec(&[("a", &[])]), usage: usage(1, 1) })
            .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
            .push(EventKind::RunCancelled { reason: "user".into() });
        let s = l.state();
        assert_eq!(s.status, RunStatus::Cancelled);
        assert_eq!(s.plan.steps[0].status, StepStatus::Failed);
        l.push(EventKind::StepStarted { step: "a".into(), attempt: 2 });
        assert!(RunState::from_events(&l.events).is_err(), "nothing may follow the end of a run");
    }

    fn policy(on: FailurePolicy, retries: u32, replans: u32, mode: ReplanMode) -> Policy {
        Policy {
            on_step_failure: on,
            max_retries: retries,
            max_replans: replans,
            replan: mode,
            ..Policy::default()
        }
    }

    fn err() -> StepError {
        StepError::new(StepErrorKind::BudgetExhausted, "max_iterations (2) reached")
    }

    #[test]
    fn policy_retry_retries_then_fails_the_run() {
        let p = policy(FailurePolicy::Retry, 2, 0, ReplanMode::OnFailure);
        let s: StepId = "s1".into();
        assert_eq!(on_step_failure(&p, &s, 1, &err(), 0), FailureAction::Retry);
        assert_eq!(on_step_failure(&p, &s, 2, &err(), 0), FailureAction::Retry);
        let FailureAction::FailRun(why) = on_step_failure(&p, &s, 3, &err(), 0) else { panic!() };
        assert!(why.contains("step s1 failed after 3 attempts: budget_exhausted"), "{why}");
    }

    #[test]
    fn policy_skip_retries_then_skips() {
        let p = policy(FailurePolicy::Skip, 1, 0, ReplanMode::Never);
        assert_eq!(on_step_failure(&p, &"s".into(), 1, &err(), 0), FailureAction::Retry);
        assert_eq!(on_step_failure(&p, &"s".into(), 2, &err(), 0), FailureAction::Skip);
    }

    #[test]
    fn policy_replan_retries_then_replans_within_the_budget() {
        let p = policy(FailurePolicy::Replan, 0, 1, ReplanMode::OnFailure);
        assert_eq!(on_step_failure(&p, &"s".into(), 1, &err(), 0), FailureAction::Replan);
        let FailureAction::FailRun(why) = on_step_failure(&p, &"s".into(), 1, &err(), 1) else { panic!() };
        assert!(why.contains("replan budget (1) is used up"), "{why}");
        let never = policy(FailurePolicy::Replan, 0, 5, ReplanMode::Never);
        let FailureAction::FailRun(why) = on_step_failure(&never, &"s".into(), 1, &err(), 0) else {
            panic!()
        };
        assert!(why.contains("replan = never"), "{why}");
    }

    #[test]
    fn policy_abort_fails_at_once_and_cancel_is_never_retried() {
        let p = policy(FailurePolicy::Abort, 3, 3, ReplanMode::OnFailure);
        assert!(matches!(on_step_failure(&p, &"s".into(), 1, &err(), 0), FailureAction::FailRun(_)));
        let lenient = policy(FailurePolicy::Retry, 9, 0, ReplanMode::Never);
        let cancelled = StepError::new(StepErrorKind::Cancelled, "run cancelled");
        assert!(matches!(
            on_step_failure(&lenient, &"s".into(), 1, &cancelled, 0),
            FailureAction::FailRun(_)
        ));
    }

    #[test]
    fn replan_after_each_step_only_while_steps_remain_and_budget_lasts() {
        let mut opts = RunOptions::default();
        opts.policy.replan = ReplanMode::AfterEachStep;
        opts.policy.max_replans = 1;
        let mut l = Log::new(opts.clone());
        l.push(EventKind::PlanProposed {
            revision: 1,
            plan: spec(&[("a", &[]), ("b", &[])]),
            usage: usage(1, 1),
        })
        .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
        .push(EventKind::StepCompleted {
            step: "a".into(),
            attempt: 1,
            output: "A".into(),
            usage: usage(1, 1),
        });
        assert!(replan_after_success(&opts.policy, &l.state()));
        l.push(EventKind::StepStarted { step: "b".into(), attempt: 1 });
        assert!(!replan_after_success(&opts.policy, &l.state()), "nothing pending to revise");
        let on_failure = Policy::default();
        assert!(!replan_after_success(&on_failure, &l.state()));
    }

    #[test]
    fn a_step_error_reads_back_from_its_display_form() {
        let e = StepError::new(StepErrorKind::BudgetExhausted, "max_iterations (3) reached: a: b");
        assert_eq!(StepError::parse(&e.to_string()), e);
        assert_eq!(
            StepError::parse("something else"),
            StepError::new(StepErrorKind::LlmError, "something else")
        );
    }

    #[test]
    fn run_budget_names_the_limit() {
        let mut opts = RunOptions::default();
        opts.run_budget.max_tokens = 10;
        let mut l = Log::new(opts);
        l.push(EventKind::PlanProposed { revision: 1, plan: spec(&[("a", &[])]), usage: usage(1, 6) });
        let why = l.state().run_budget_exceeded().unwrap();
        assert!(why.contains("12 tokens used, limit 10"), "{why}");
    }
}
