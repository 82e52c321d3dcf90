//! What goes into the machine ([`Input`]) and what comes out of it ([`Transition`],
//! [`Command`]): plain data, so that any transport (actor messages today, a database queue
//! tomorrow) can drive the same run logic.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::options::StepBudget;
use crate::plan::{PlanError, PlanSpec, StepId, StepSpec};
use crate::run::{
    EventKind, PendingCall, ReplanDecision, RunEvent, RunStatus, StepCheckpoint, StepError, ToolDecision,
    Usage,
};

/// A model-backed service call that failed, with what it spent before failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServiceFailure {
    /// What went wrong, in words (it becomes the run's error).
    pub error: String,
    /// Usage of the calls that were made: a failed plan still cost tokens.
    pub usage: Usage,
}

/// What a planner, replanner or synthesizer call produced.
pub(crate) type ServiceResult<T> = Result<(T, Usage), ServiceFailure>;

/// A dependency's result, handed to the steps that depend on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepInput {
    /// The dependency's id.
    pub id: StepId,
    /// What it was to do.
    pub description: String,
    /// Its output (None when it was skipped).
    pub output: Option<String>,
}

impl StepInput {
    /// A step's result as the steps after it (and the synthesis) see it.
    pub(crate) fn of(step: &crate::plan::Step) -> Self {
        Self { id: step.id.clone(), description: step.description.clone(), output: step.output.clone() }
    }
}

/// How a step attempt that did not fail ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StepEnd {
    /// The step's final answer.
    Answer(String),
    /// The attempt paused: these calls wait for a person; it resumes from the checkpoint.
    Paused {
        /// The calls waiting.
        calls: Vec<PendingCall>,
        /// Where to resume.
        checkpoint: StepCheckpoint,
    },
}

impl From<String> for StepEnd {
    fn from(answer: String) -> Self {
        StepEnd::Answer(answer)
    }
}

impl From<&str> for StepEnd {
    fn from(answer: &str) -> Self {
        StepEnd::Answer(answer.to_owned())
    }
}

/// How a step attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepReport {
    /// Step.
    pub step: StepId,
    /// Attempt.
    pub attempt: u32,
    /// The final answer or a pause, or why there is neither.
    pub outcome: Result<StepEnd, StepError>,
    /// Model usage of the attempt (ReAct loop and verification).
    pub usage: Usage,
}

/// The model-backed services a run asks for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Service {
    /// Writes the plan.
    Planner,
    /// Revises the rest of the plan.
    Replanner,
    /// Merges the results into the answer.
    Synthesizer,
}

impl Service {
    /// The snake_case name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Service::Planner => "planner",
            Service::Replanner => "replanner",
            Service::Synthesizer => "synthesizer",
        }
    }
}

/// A request to a service; kept by the machine while it is outstanding, so that a lost request
/// can be sent again as it was.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ServiceRequest {
    /// Write the plan (`stream`: send steps as they are parsed).
    Plan {
        /// Stream the plan's steps as they arrive.
        stream: bool,
    },
    /// Revise the plan: after a failed step (with its error), or after a completed one.
    Replan {
        /// The failed step and its error; none for `replan = after_each_step`.
        failed: Option<(StepId, StepError)>,
    },
    /// Merge every step's result.
    Synthesize,
}

impl ServiceRequest {
    /// The service that answers this request.
    pub(crate) fn service(&self) -> Service {
        match self {
            ServiceRequest::Plan { .. } => Service::Planner,
            ServiceRequest::Replan { .. } => Service::Replanner,
            ServiceRequest::Synthesize => Service::Synthesizer,
        }
    }
}

/// The run's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The run's wall-clock budget (`run_budget.timeout_ms`).
    Run,
    /// How long a plan may wait for approval (`policy.approval_timeout_secs`).
    Approval,
    /// The earliest deadline of the tool calls waiting for approval
    /// (`policy.tool_approval_timeout_secs`): calls past theirs are answered `timed_out`.
    ToolApprovals,
    /// Send a lost request again (after its `loss`-th loss), giving the supervisor time to
    /// replace the service; ignored if the run no longer waits for that very request.
    Resend {
        /// The service.
        service: Service,
        /// Which loss this resend answers.
        loss: u32,
    },
}

/// Something that happened to a run, fed to [`RunMachine::handle`](super::RunMachine::handle).
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// The driver started: begin, or resume wherever the stored log ends.
    Start,
    /// Steps parsed from a plan that is still streaming in, in plan order.
    PlanStreamed(Vec<StepSpec>),
    /// The planner answered.
    PlanReady(ServiceResult<PlanSpec>),
    /// The planner found the plan of `from`, an earlier completed run, in the plan cache.
    PlanReused {
        /// The cached plan.
        plan: PlanSpec,
        /// The run it comes from.
        from: crate::run::RunId,
    },
    /// The replanner answered.
    ReplanReady(ServiceResult<ReplanDecision>),
    /// The synthesizer answered.
    SynthesisReady(ServiceResult<String>),
    /// A request to a service will never be answered (the actor died with it, or could not be
    /// reached); the machine asks again, a bounded number of times.
    ServiceLost(Service),
    /// A step attempt ended (or its executor died: an `executor_crashed` report).
    StepFinished(StepReport),
    /// A tool event from a running attempt (`ToolCalled` / `ToolReturned`).
    Tool(EventKind),
    /// A model call of the run started or stopped waiting for its unavailable provider
    /// (`ProviderWaiting` / `ProviderResumed`).
    Provider(EventKind),
    /// A person approved the plan, possibly edited.
    Approve(Option<PlanSpec>),
    /// A person rejected the plan.
    Reject(String),
    /// Cancel the run.
    Cancel(String),
    /// A person answered a tool call waiting for approval.
    ResolveToolCall {
        /// The approval.
        approval_id: String,
        /// The answer (`timed_out` is the machine's own).
        decision: ToolDecision,
    },
    /// A timer the machine scheduled went off.
    Timeout(Timer),
}

impl Input {
    /// An event of a running step attempt as the machine takes it: a provider wait, or a tool
    /// event.
    pub(crate) fn from_step_event(kind: EventKind) -> Self {
        match kind {
            EventKind::ProviderWaiting { .. } | EventKind::ProviderResumed { .. } => Input::Provider(kind),
            kind => Input::Tool(kind),
        }
    }
}

/// One step attempt to start: everything an executor needs, apart from the driver's own
/// handles (trace context, cancellation token).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepAssignment {
    /// The step as planned.
    pub step: StepSpec,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// Outputs of the step's dependencies.
    pub inputs: Vec<StepInput>,
    /// What the attempt may spend (clipped by what the run has left).
    pub budget: StepBudget,
    /// What the run had spent when the attempt started, and its money cap.
    pub run_spend: crate::run::RunSpend,
    /// Check the output against `expected_outcome`.
    pub verify: bool,
    /// The plan revision the step belongs to.
    pub revision: u32,
    /// Tools whose calls wait for a person's approval (`policy.approve_tools`).
    pub approve_tools: Vec<String>,
    /// Calls of tools that say they are destructive wait too (`policy.approve_destructive`).
    pub approve_destructive: bool,
    /// For an attempt that paused: where it resumes, and each pending call with its answer.
    pub resume: Option<Box<StepResume>>,
}

/// A paused attempt to carry on: its checkpoint, and what to do with each call it paused on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepResume {
    /// Where to resume.
    pub checkpoint: StepCheckpoint,
    /// Each pending call and its answer, in the model's order.
    pub calls: Vec<(PendingCall, ToolDecision)>,
}

/// An effect for the driver to carry out, after the transition's events are stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Start a step attempt on an executor.
    StartStep(StepAssignment),
    /// Stop an attempt whose step the whole plan left out.
    StopStep {
        /// Step.
        step: StepId,
        /// Attempt.
        attempt: u32,
    },
    /// Send a request to a service; its answer comes back as an [`Input`].
    Ask(ServiceRequest),
    /// Feed [`Input::Timeout`] back after this long.
    Schedule {
        /// Which timer.
        timer: Timer,
        /// When, from now.
        after: Duration,
    },
    /// The run ended: stop every attempt still running and publish the result.
    Finish,
}

/// What one input led to: events to append (already applied to the machine's state, in order)
/// and commands to carry out once they are stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Transition {
    /// Events to append, in order.
    pub events: Vec<RunEvent>,
    /// Effects to carry out after the events are stored, in order.
    pub commands: Vec<Command>,
}

/// Why the machine refused a control request (approve, reject, cancel).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Approve/reject when the plan is not waiting for approval.
    #[error("run is {}, not awaiting approval", .0.as_str())]
    NotAwaitingApproval(RunStatus),
    /// The run already ended.
    #[error("run already ended ({})", .0.as_str())]
    AlreadyEnded(RunStatus),
    /// The edited plan is invalid.
    #[error("edited plan is invalid: {0}")]
    InvalidPlan(PlanError),
    /// No tool call of the run waits under this approval id.
    #[error("no tool call waits for approval {0}")]
    UnknownApproval(String),
    /// The tool call was answered already.
    #[error("approval {0} was already answered")]
    AlreadyResolved(String),
    /// Edited arguments that do not match the tool's schema.
    #[error("edited arguments of {tool} are invalid: {field}: {message}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// The argument at fault (a JSON pointer-like path, `/` for the whole object).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}
