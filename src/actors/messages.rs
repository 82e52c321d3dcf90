//! Every message the actors exchange. Actors talk only through these types.
//!
//! Payloads are serde-serialisable (a job can cross a machine boundary); reply ports, actor
//! references and cancellation tokens ride beside them and are local by nature. Each job carries
//! its trace context so spans parent correctly wherever the job runs.

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::options::StepBudget;
use crate::plan::{Plan, PlanSpec, StepId, StepSpec};
use crate::run::StepError;
use crate::run::{ReplanDecision, RunId, RunResult};
use crate::store::StoreError;
use crate::telemetry::TraceContext;

pub(crate) use crate::run::machine::{
    Input, Refusal, Service, ServiceFailure, ServiceResult, StepEnd, StepInput, StepReport, StepResume,
};

/// One step attempt for an executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepJob {
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
    /// What the run had spent when the attempt started, and its money cap.
    #[serde(default)]
    pub run_spend: crate::run::RunSpend,
    /// Check the output against `expected_outcome` with the verifier model.
    pub verify: bool,
    /// Tools whose calls wait for a person's approval: the attempt pauses on them.
    #[serde(default)]
    pub approve_tools: Vec<String>,
    /// Calls of tools that say they are destructive wait too.
    #[serde(default)]
    pub approve_destructive: bool,
    /// For a paused attempt carrying on: where, and the answers to its pending calls.
    #[serde(default)]
    pub resume: Option<Box<StepResume>>,
    /// The step span's context.
    pub trace: TraceContext,
    /// Fired on cancel; tools see it through their context.
    #[serde(skip)]
    pub cancel: CancellationToken,
    /// Where tool events go: the run's tracker, or the replica that claimed the step.
    #[serde(skip)]
    pub events: EventSink,
}

/// Where a running step's events go: its tool calls, and its waits for an unavailable provider.
#[derive(Debug, Clone, Default)]
pub(crate) enum EventSink {
    /// Nowhere (tests, benches).
    #[default]
    None,
    /// The run's tracker, in this process.
    Tracker(ActorRef<TrackerMsg>),
    /// A channel to whoever forwards them to the run's owner (a step claimed from the queue).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Channel(tokio::sync::mpsc::UnboundedSender<crate::run::EventKind>),
}

impl EventSink {
    /// Sends one event. A receiver that is gone (the run ended, the claim was lost) no longer
    /// records events: nothing to do.
    pub(crate) fn send(&self, kind: crate::run::EventKind) {
        match self {
            EventSink::None => {}
            EventSink::Tracker(t) => {
                let _ = t.cast(TrackerMsg::Input(Input::from_step_event(kind)));
            }
            EventSink::Channel(tx) => {
                let _ = tx.send(kind);
            }
        }
    }
}

/// Messages to the executor pool (a ractor factory).
pub(crate) enum ExecutorMsg {
    /// Run one step attempt and reply with its report.
    Run(Box<StepJob>, RpcReplyPort<StepReport>),
}

/// A planning request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlanJob {
    /// The run.
    pub run_id: RunId,
    /// The task to plan.
    pub task: String,
    /// The run span's context.
    pub trace: TraceContext,
    /// Where to send each step as soon as it is parsed ([`Input::PlanStreamed`]), before
    /// the reply brings the whole plan; none: do not stream.
    #[serde(skip)]
    pub stream_to: Option<ActorRef<TrackerMsg>>,
}

/// Messages to the planner. A request dropped unanswered (the actor died with it in its
/// mailbox) drops its reply port, which the asking tracker sees as a lost request.
pub(crate) enum PlannerMsg {
    /// Write a plan.
    Plan(PlanJob, RpcReplyPort<ServiceResult<Planned>>),
}

/// The planner's answer: a plan, and the earlier completed run it was reused from when it came
/// from the plan cache (no planner call was made).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    /// The plan.
    pub plan: PlanSpec,
    /// The run whose cached plan this is; none when the planner wrote it.
    pub cached_from: Option<RunId>,
}

impl Planned {
    /// The machine's input for this answer (or for the planner's failure).
    pub(crate) fn input(result: ServiceResult<Planned>) -> Input {
        match result {
            Ok((Planned { plan, cached_from: Some(from) }, _)) => Input::PlanReused { plan, from },
            other => Input::PlanReady(other.map(|(p, usage)| (p.plan, usage))),
        }
    }
}

/// A replanning request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplanJob {
    /// The run.
    pub run_id: RunId,
    /// The task.
    pub task: String,
    /// The live plan, with each step's status and output.
    pub plan: Plan,
    /// The failed step that asks for the replan, and its error.
    pub failed: Option<(StepId, StepError)>,
    /// The replan span's context.
    pub trace: TraceContext,
}

/// Messages to the replanner.
pub(crate) enum ReplannerMsg {
    /// Decide how to go on.
    Replan(ReplanJob, RpcReplyPort<ServiceResult<ReplanDecision>>),
}

/// A synthesis request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SynthesisJob {
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
pub(crate) enum SynthesizerMsg {
    /// Merge the results into the answer.
    Synthesize(SynthesisJob, RpcReplyPort<ServiceResult<String>>),
}

/// Why a control request (approve, reject, cancel) did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The run's state does not allow it (not awaiting approval, already ended, invalid edit).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The run's tracker is gone (the runtime is shutting down).
    #[error("run is not active in this runtime")]
    NotActive,
    /// The change could not be stored; the run resumes from its stored log.
    #[error("could not record the change: {0}")]
    Store(Arc<StoreError>),
}

/// Messages to a run's tracker.
pub(crate) enum TrackerMsg {
    /// Something that happened to the run, for its state machine: start, a service's answer, a
    /// step's report or tool event, a lost request, a timer.
    Input(Input),
    /// Approve the plan, optionally edited.
    Approve(Option<PlanSpec>, RpcReplyPort<Result<(), ControlError>>),
    /// Reject the plan.
    Reject(String, RpcReplyPort<Result<(), ControlError>>),
    /// Cancel the run.
    Cancel(String, RpcReplyPort<Result<(), ControlError>>),
    /// Answer a tool call waiting for approval (approval id, answer).
    ResolveToolCall(String, crate::run::ToolDecision, RpcReplyPort<Result<(), ControlError>>),
    /// The run's current result.
    Snapshot(RpcReplyPort<RunResult>),
}

/// Messages to the supervisor.
pub(crate) enum SupervisorMsg {
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
            run_spend: Default::default(),
            verify: true,
            approve_tools: vec![],
            approve_destructive: false,
            resume: None,
            trace: TraceContext::default(),
            cancel: CancellationToken::new(),
            events: EventSink::None,
        };
        let back: StepJob = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back.step, job.step);
        assert_eq!(back.attempt, 2);
        assert_eq!(back.inputs, job.inputs);
    }
}
