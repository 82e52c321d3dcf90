//! Every message the actors exchange (DESIGN §3). Actors talk only through these types.
//!
//! Payloads are serde-serialisable (a job can cross a machine boundary); reply ports, actor
//! references and cancellation tokens ride beside them and are local by nature. Each job carries
//! its trace context so spans parent correctly wherever the job runs.

use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::options::StepBudget;
use crate::plan::{Plan, PlanError, PlanSpec, StepId, StepSpec};
use crate::run::{EventKind, LlmUsage, ReplanDecision, RunId, RunResult, RunStatus, StepError};
use crate::telemetry::TraceContext;

/// A model-backed service call that failed, with what it spent before failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceFailure {
    /// What went wrong.
    pub error: String,
    /// Usage of the calls that were made.
    pub usage: LlmUsage,
}

/// What a planner, replanner or synthesizer call produced.
pub type ServiceResult<T> = Result<(T, LlmUsage), ServiceFailure>;

/// A dependency's result, handed to the steps that depend on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInput {
    /// The dependency's id.
    pub id: StepId,
    /// What it was to do.
    pub description: String,
    /// Its output (None when it was skipped).
    pub output: Option<String>,
}

/// One step attempt for an executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepJob {
    /// The run.
    pub run_id: RunId,
    /// The run's task.
    pub task: String,
    /// The plan's goal.
    pub goal: String,
    /// The step.
    pub step: StepSpec,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// Outputs of the step's dependencies.
    pub inputs: Vec<StepInput>,
    /// What the attempt may spend.
    pub budget: StepBudget,
    /// Check the output against `expected_outcome` with the verifier model.
    pub verify: bool,
    /// The step span's context.
    pub trace: TraceContext,
    /// Fired on cancel; tools see it through their context.
    #[serde(skip)]
    pub cancel: CancellationToken,
    /// Where tool events go (the run's tracker).
    #[serde(skip)]
    pub events_to: Option<ActorRef<TrackerMsg>>,
}

/// How a step attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step.
    pub step: StepId,
    /// Attempt.
    pub attempt: u32,
    /// The final answer, or why there is none.
    pub outcome: Result<String, StepError>,
    /// Model usage of the attempt (ReAct loop and verification).
    pub usage: LlmUsage,
}

/// Messages to the executor pool (a ractor factory).
pub enum ExecutorMsg {
    /// Run one step attempt and reply with its report.
    Run(Box<StepJob>, RpcReplyPort<StepReport>),
}

/// A planning request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanJob {
    /// The run.
    pub run_id: RunId,
    /// The task to plan.
    pub task: String,
    /// The run span's context.
    pub trace: TraceContext,
    /// Stream the plan and send each step to the tracker as soon as it is parsed
    /// ([`TrackerMsg::PlanStreamed`]), before [`TrackerMsg::PlanReady`] brings the whole plan.
    #[serde(default)]
    pub stream: bool,
}

/// Messages to the planner.
pub enum PlannerMsg {
    /// Write a plan; the answer goes to the tracker as [`TrackerMsg::PlanReady`].
    Plan(PlanJob, ActorRef<TrackerMsg>),
}

/// A replanning request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplanJob {
    /// The run.
    pub run_id: RunId,
    /// The task.
    pub task: String,
    /// The live plan, with each step's status and output.
    pub plan: Plan,
    /// The failed step that asks for the replan, and its error.
    pub failed: Option<(StepId, String)>,
    /// The replan span's context.
    pub trace: TraceContext,
}

/// Messages to the replanner.
pub enum ReplannerMsg {
    /// Decide how to go on; the answer goes to the tracker as [`TrackerMsg::ReplanReady`].
    Replan(ReplanJob, ActorRef<TrackerMsg>),
}

/// A synthesis request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthesisJob {
    /// The run.
    pub run_id: RunId,
    /// The task.
    pub task: String,
    /// The plan's goal.
    pub goal: String,
    /// Every step's result, in plan order.
    pub results: Vec<StepInput>,
    /// The synthesis span's context.
    pub trace: TraceContext,
}

/// Messages to the synthesizer.
pub enum SynthesizerMsg {
    /// Merge the results; the answer goes to the tracker as [`TrackerMsg::SynthesisReady`].
    Synthesize(SynthesisJob, ActorRef<TrackerMsg>),
}

/// Why a control request (approve, reject, cancel) was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// Approve/reject when the plan is not waiting for approval.
    #[error("run is {}, not awaiting approval", .0.as_str())]
    NotAwaitingApproval(RunStatus),
    /// The run already ended.
    #[error("run already ended ({})", .0.as_str())]
    AlreadyEnded(RunStatus),
    /// The edited plan is invalid.
    #[error("edited plan is invalid: {0}")]
    InvalidPlan(PlanError),
    /// The run's tracker is gone (the runtime is shutting down).
    #[error("run is not active in this runtime")]
    NotActive,
    /// The event could not be stored.
    #[error("could not record the change: {0}")]
    Store(String),
}

/// Messages to a run's tracker.
pub enum TrackerMsg {
    /// Begin, or resume from the stored events.
    Start,
    /// Steps parsed from the plan while it is still streaming in (`stream_plan`), in order.
    PlanStreamed(Vec<StepSpec>),
    /// The planner answered.
    PlanReady(ServiceResult<PlanSpec>),
    /// The replanner answered.
    ReplanReady(ServiceResult<ReplanDecision>),
    /// The synthesizer answered.
    SynthesisReady(ServiceResult<String>),
    /// A step attempt ended (or its executor crashed).
    StepFinished(StepReport),
    /// A tool event from an executor (`ToolCalled` / `ToolReturned`).
    Tool(EventKind),
    /// Approve the plan, optionally edited.
    Approve(Option<PlanSpec>, RpcReplyPort<Result<(), ControlError>>),
    /// Reject the plan.
    Reject(String, RpcReplyPort<Result<(), ControlError>>),
    /// Cancel the run.
    Cancel(String, RpcReplyPort<Result<(), ControlError>>),
    /// The run's current result.
    Snapshot(RpcReplyPort<RunResult>),
    /// The run's wall-clock budget ran out.
    RunTimeout,
    /// The plan waited for approval longer than the policy allows.
    ApprovalTimeout,
}

/// Messages to the supervisor.
pub enum SupervisorMsg {
    /// Spawn (or re-spawn) the tracker of a stored run.
    StartRun(RunId, RpcReplyPort<Result<ActorRef<TrackerMsg>, String>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_job_survives_serialisation_without_its_local_handles() {
        let job = StepJob {
            run_id: RunId::new(),
            task: "t".into(),
            goal: "g".into(),
            step: StepSpec {
                id: "s1".into(),
                description: "d".into(),
                expected_outcome: "e".into(),
                tool: None,
                depends_on: vec![],
            },
            attempt: 2,
            inputs: vec![StepInput { id: "s0".into(), description: "x".into(), output: Some("y".into()) }],
            budget: StepBudget::default(),
            verify: true,
            trace: TraceContext::default(),
            cancel: CancellationToken::new(),
            events_to: None,
        };
        let back: StepJob = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back.step, job.step);
        assert_eq!(back.attempt, 2);
        assert_eq!(back.inputs, job.inputs);
    }
}
