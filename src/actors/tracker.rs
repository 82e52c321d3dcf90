//! The tracker: one actor per run, the run's single writer.
//!
//! It holds the run's state as a fold of its events and drives the run: ask for a plan, dispatch
//! every ready step at once, evaluate each result under the run's policy (retry, skip, replan,
//! abort), ask for synthesis. Every decision is an event that is committed to the store before
//! it is acted on, so a tracker started on a stored run (after a crash, or a panic of its own)
//! carries on from exactly where the log ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use opentelemetry::trace::SpanContext;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::messages::{
    ControlError, ExecutorMsg, PlanJob, ReplanJob, ReplannerMsg, ServiceResult, StepInput, StepJob,
    StepReport, SynthesisJob, SynthesizerMsg, TrackerMsg,
};
use super::{RunChannels, Services, Shared};
use crate::options::StepBudget;
use crate::plan::{PlanSpec, StepId, StepSpec, StepStatus, validate_steps, validate_streamed_step};
use crate::run::{
    Decision, EventKind, FailureAction, LlmUsage, ReplanDecision, RunEvent, RunId, RunState, RunStatus,
    StepError, StepErrorKind, on_step_failure, replan_after_success,
};
use crate::telemetry::{self, TraceContext};

/// The tracker actor (stateless; its state is [`TrackerState`]).
pub struct Tracker {
    pub(crate) shared: Arc<Shared>,
}

/// A step attempt in flight.
struct InFlight {
    attempt: u32,
    span: tracing::Span,
    started: Instant,
    /// Stops this attempt alone (a child of the run's token).
    cancel: CancellationToken,
}

/// Which model-backed service the run is waiting for.
enum Waiting {
    Nothing,
    Plan(tracing::Span),
    Replan(tracing::Span),
    Synthesis(tracing::Span),
}

/// The tracker's state.
pub struct TrackerState {
    run: RunState,
    channels: RunChannels,
    services: Services,
    in_flight: HashMap<StepId, InFlight>,
    waiting: Waiting,
    /// A replan waiting for the in-flight steps to drain: the failed step and its error.
    replan_due: Option<Option<(StepId, String)>>,
    /// Failed steps the policy retries, dispatched by the next `advance`.
    retry_due: Vec<StepId>,
    cancel: CancellationToken,
    span: tracing::Span,
    /// The span of each step's latest failed attempt, for links from what a replan makes of it.
    failed_spans: HashMap<StepId, SpanContext>,
    /// The failed attempt that the pending replan answers.
    replan_cause: Option<SpanContext>,
    /// Steps of the latest revision and the failed attempt that caused it: their spans link to it.
    replan_links: HashMap<StepId, SpanContext>,
}

/// A failure to record an event: the run cannot go on in this process.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The store refused or failed the append.
    #[error("run {run}: could not store event: {source}")]
    Store { run: RunId, source: crate::store::StoreError },
    /// The event did not fit the state (a bug).
    #[error(transparent)]
    State(#[from] crate::run::StateError),
    /// The run is not in the store.
    #[error("run {0} is not in the store")]
    Missing(RunId),
    /// The supervisor's services are not up.
    #[error("the runtime's services are not running")]
    NoServices,
}

impl Actor for Tracker {
    type Msg = TrackerMsg;
    type State = TrackerState;
    type Arguments = RunId;

    async fn pre_start(
        &self,
        _me: ActorRef<TrackerMsg>,
        run_id: RunId,
    ) -> Result<TrackerState, ActorProcessingErr> {
        let events = self.shared.store.events(&run_id, 0).await?;
        let run = RunState::from_events(&events)?.ok_or_else(|| TrackerError::Missing(run_id.clone()))?;
        let services = self.shared.services().ok_or(TrackerError::NoServices)?;
        // Every run is its own trace, whatever span is current where the tracker starts.
        let span = tracing::info_span!(
            parent: None,
            "stepwise.run",
            stepwise.run.id = %run.id,
            stepwise.task = %run.task,
            stepwise.run.status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        Ok(TrackerState {
            channels: self.shared.runs.channels(&run_id),
            run,
            services,
            in_flight: HashMap::new(),
            waiting: Waiting::Nothing,
            replan_due: None,
            retry_due: Vec::new(),
            cancel: CancellationToken::new(),
            span,
            failed_spans: HashMap::new(),
            replan_cause: None,
            replan_links: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<TrackerMsg>,
        msg: TrackerMsg,
        st: &mut TrackerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrackerMsg::Start => self.resume(&me, st).await?,
            TrackerMsg::PlanStreamed(steps) => self.on_plan_streamed(&me, st, steps).await?,
            TrackerMsg::PlanReady(result) => self.on_plan(&me, st, result).await?,
            TrackerMsg::StepFinished(report) => self.on_step(&me, st, report).await?,
            TrackerMsg::ReplanReady(result) => self.on_replan(&me, st, result).await?,
            TrackerMsg::SynthesisReady(result) => {
                let Waiting::Synthesis(span) = std::mem::replace(&mut st.waiting, Waiting::Nothing) else {
                    return Ok(());
                };
                if result.is_err() {
                    span.record("error.type", "synthesis_failed");
                    span.record("otel.status_code", "ERROR");
                }
                match result {
                    Ok((final_output, usage)) => {
                        self.emit(st, EventKind::RunCompleted { final_output, usage }).await?
                    }
                    Err(f) => self.emit(st, EventKind::RunFailed { error: f.error, usage: f.usage }).await?,
                }
            }
            TrackerMsg::Tool(kind) => {
                let current = match &kind {
                    EventKind::ToolCalled { step, attempt, .. }
                    | EventKind::ToolReturned { step, attempt, .. } => {
                        st.in_flight.get(step).is_some_and(|f| f.attempt == *attempt)
                    }
                    _ => false,
                };
                if current && !st.run.status.is_terminal() {
                    self.emit(st, kind).await?;
                }
            }
            TrackerMsg::Approve(edited, reply) => {
                let r = self.approve(&me, st, edited).await;
                let _ = reply.send(r);
            }
            TrackerMsg::Reject(reason, reply) => {
                let r = match st.run.status {
                    RunStatus::AwaitingApproval => {
                        let reason = format!("plan rejected: {reason}");
                        self.emit(st, EventKind::RunCancelled { reason })
                            .await
                            .map_err(|e| ControlError::Store(e.to_string()))
                    }
                    s => Err(ControlError::NotAwaitingApproval(s)),
                };
                let _ = reply.send(r);
            }
            TrackerMsg::Cancel(reason, reply) => {
                let r = if st.run.status.is_terminal() {
                    Err(ControlError::AlreadyEnded(st.run.status))
                } else {
                    // Signal in-flight tools first: the cancel must stop work promptly.
                    st.cancel.cancel();
                    self.emit(st, EventKind::RunCancelled { reason })
                        .await
                        .map_err(|e| ControlError::Store(e.to_string()))
                };
                let _ = reply.send(r);
            }
            TrackerMsg::Snapshot(reply) => {
                let _ = reply.send(st.run.result());
            }
            TrackerMsg::ApprovalTimeout => {
                if st.run.status == RunStatus::AwaitingApproval {
                    let secs = st.run.options.policy.approval_timeout_secs;
                    let reason = format!("plan not approved within {secs} s (approval_timeout_secs)");
                    self.emit(st, EventKind::RunCancelled { reason }).await?;
                }
            }
            TrackerMsg::RunTimeout => {
                if !st.run.status.is_terminal() && st.run.status != RunStatus::AwaitingApproval {
                    let error = format!(
                        "run budget exhausted: timeout after {} ms",
                        st.run.options.run_budget.timeout_ms
                    );
                    self.emit(st, EventKind::RunFailed { error, usage: LlmUsage::default() }).await?;
                }
            }
        }
        if st.run.status.is_terminal() {
            self.finish(&me, st);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<TrackerMsg>,
        st: &mut TrackerState,
    ) -> Result<(), ActorProcessingErr> {
        // Whatever stopped the tracker, no step of this run may keep running unobserved.
        st.cancel.cancel();
        Ok(())
    }
}

impl Tracker {
    /// Commits an event to the store, then applies and publishes it.
    async fn emit(&self, st: &mut TrackerState, kind: EventKind) -> Result<(), TrackerError> {
        let event = RunEvent { run_id: st.run.id.clone(), seq: st.run.next_seq(), at: Utc::now(), kind };
        self.shared
            .store
            .append(&event)
            .await
            .map_err(|source| TrackerError::Store { run: st.run.id.clone(), source })?;
        st.run.apply(&event)?;
        st.channels.publish(event);
        Ok(())
    }

    /// Picks the run up wherever its log ends.
    async fn resume(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState) -> Result<(), TrackerError> {
        if st.run.options.run_budget.timeout_ms > 0 {
            let elapsed = (Utc::now() - st.run.created_at).to_std().unwrap_or_default();
            let left = std::time::Duration::from_millis(st.run.options.run_budget.timeout_ms)
                .saturating_sub(elapsed);
            me.send_after(left, || TrackerMsg::RunTimeout);
        }
        match st.run.status {
            RunStatus::Planning => {
                self.ask_planner(me, st);
                // Steps of a plan that was streaming in when the previous tracker died.
                self.resume_steps(me, st).await?;
            }
            RunStatus::AwaitingApproval => self.arm_approval_timeout(me, st),
            RunStatus::Running => self.resume_steps(me, st).await?,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => {}
        }
        Ok(())
    }

    /// Re-dispatches the steps that were running when the previous tracker died, decides the
    /// failures it had not decided yet, and moves on.
    async fn resume_steps(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
    ) -> Result<(), TrackerError> {
        // Steps that were running when the previous tracker died run again (at-least-once).
        let interrupted: Vec<StepId> = st
            .run
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Running)
            .map(|s| s.id.clone())
            .collect();
        for step in interrupted {
            self.dispatch(me, st, step).await?;
        }
        // A failure whose decision was not recorded yet is decided again.
        let failed: Vec<(StepId, u32, String)> = st
            .run
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .map(|s| (s.id.clone(), s.failures, s.error.clone().unwrap_or_default()))
            .collect();
        for (step, failures, error) in failed {
            let error = StepError::parse(&error);
            self.decide_failure(st, step, failures, &error).await?;
        }
        self.advance(me, st).await
    }

    fn ask_planner(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState) {
        let span = tracing::info_span!(
            parent: &st.span,
            "stepwise.plan",
            stepwise.plan.revision = 1u32,
            stepwise.plan.steps = tracing::field::Empty,
            stepwise.plan.streamed_steps = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let policy = &st.run.options.policy;
        let job = PlanJob {
            run_id: st.run.id.clone(),
            task: st.run.task.clone(),
            trace: TraceContext::of(&span),
            // Approval needs the whole plan before anything runs.
            stream: policy.stream_plan && !policy.require_approval,
        };
        st.waiting = Waiting::Plan(span);
        let _ = st.services.planner.cast(super::messages::PlannerMsg::Plan(job, me.clone()));
    }

    /// Takes steps of a plan that is still streaming in, and starts those that are ready. A
    /// step that cannot be judged on its own yet (it depends on a step still to come, or reuses
    /// an id) waits for the whole plan.
    async fn on_plan_streamed(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        steps: Vec<StepSpec>,
    ) -> Result<(), TrackerError> {
        let Waiting::Plan(span) = &st.waiting else { return Ok(()) };
        if st.run.status != RunStatus::Planning {
            return Ok(());
        }
        let tools = self.shared.tool_name_refs();
        let mut known: Vec<StepId> = st.run.plan.steps.iter().map(|s| s.id.clone()).collect();
        let mut accepted = Vec::with_capacity(steps.len());
        for step in steps {
            match validate_streamed_step(&step, &known, &tools) {
                Ok(()) => {
                    known.push(step.id.clone());
                    accepted.push(step);
                }
                Err(e) => {
                    tracing::debug!(run = %st.run.id, error = %e, "streamed step waits for the whole plan")
                }
            }
        }
        if accepted.is_empty() {
            return Ok(());
        }
        span.record("stepwise.plan.streamed_steps", known.len());
        self.emit(st, EventKind::PlanStreamed { steps: accepted }).await?;
        self.advance(me, st).await
    }

    async fn on_plan(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        result: ServiceResult<PlanSpec>,
    ) -> Result<(), TrackerError> {
        let Waiting::Plan(span) = std::mem::replace(&mut st.waiting, Waiting::Nothing) else { return Ok(()) };
        if st.run.status != RunStatus::Planning {
            return Ok(());
        }
        match result {
            Ok((plan, usage)) => {
                span.record("stepwise.plan.steps", plan.steps.len());
                drop(span);
                self.emit(st, EventKind::PlanProposed { revision: 1, plan, usage }).await?;
                // A streamed step that the whole plan left out (a repair rewrote it) stops.
                let dropped: Vec<StepId> =
                    st.in_flight.keys().filter(|id| st.run.plan.step(id).is_none()).cloned().collect();
                for id in dropped {
                    if let Some(f) = st.in_flight.remove(&id) {
                        f.cancel.cancel();
                        f.span.record("stepwise.step.status", "cancelled");
                        telemetry::metrics::global().step_ended("cancelled", Some(f.started.elapsed()));
                    }
                }
                if st.run.status == RunStatus::AwaitingApproval {
                    self.arm_approval_timeout(me, st);
                }
                self.advance(me, st).await
            }
            Err(f) => {
                span.record("error.type", "planning_failed");
                span.record("otel.status_code", "ERROR");
                self.emit(st, EventKind::RunFailed { error: f.error, usage: f.usage }).await
            }
        }
    }

    /// Schedules the approval deadline, counted from when the plan was proposed (so it holds
    /// across a restart).
    fn arm_approval_timeout(&self, me: &ActorRef<TrackerMsg>, st: &TrackerState) {
        let secs = st.run.options.policy.approval_timeout_secs;
        if secs == 0 {
            return;
        }
        let proposed = st.run.revisions.first().map_or(st.run.created_at, |r| r.created_at);
        let waited = (Utc::now() - proposed).to_std().unwrap_or_default();
        me.send_after(std::time::Duration::from_secs(secs).saturating_sub(waited), || {
            TrackerMsg::ApprovalTimeout
        });
    }

    async fn approve(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        edited: Option<PlanSpec>,
    ) -> Result<(), ControlError> {
        if st.run.status != RunStatus::AwaitingApproval {
            return Err(ControlError::NotAwaitingApproval(st.run.status));
        }
        if let Some(plan) = &edited {
            plan.validate(&self.shared.tool_name_refs()).map_err(ControlError::InvalidPlan)?;
        }
        let store_err = |e: TrackerError| ControlError::Store(e.to_string());
        self.emit(st, EventKind::PlanApproved { edited }).await.map_err(store_err)?;
        self.advance(me, st).await.map_err(store_err)
    }

    /// Moves the run forward: dispatch ready steps, start a due replan, or synthesise.
    async fn advance(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState) -> Result<(), TrackerError> {
        if st.run.status == RunStatus::Planning && st.run.steps_may_run() {
            // The plan is still streaming in: start what is ready; replans, synthesis and the
            // check for a stuck plan wait for the whole plan.
            if st.replan_due.is_none() {
                self.dispatch_ready(me, st).await?;
            }
            return Ok(());
        }
        if st.run.status != RunStatus::Running || !matches!(st.waiting, Waiting::Nothing) {
            return Ok(());
        }
        if let Some(error) = st.run.run_budget_exceeded() {
            st.cancel.cancel();
            return self.emit(st, EventKind::RunFailed { error, usage: LlmUsage::default() }).await;
        }
        if let Some(failed) = st.replan_due.clone() {
            if st.in_flight.is_empty() {
                st.replan_due = None;
                self.ask_replanner(me, st, failed);
            }
            return Ok(());
        }
        self.dispatch_ready(me, st).await?;
        if st.in_flight.is_empty() {
            if st.run.plan.all_resolved() {
                self.ask_synthesizer(me, st);
            } else {
                let stuck: Vec<String> = st
                    .run
                    .plan
                    .steps
                    .iter()
                    .filter(|s| !s.status.is_resolved())
                    .map(|s| format!("{} ({:?})", s.id, s.status))
                    .collect();
                let error = format!("no step can make progress: {}", stuck.join(", "));
                return self.emit(st, EventKind::RunFailed { error, usage: LlmUsage::default() }).await;
            }
        }
        Ok(())
    }

    /// Starts the retries that are due and every step whose dependencies are resolved.
    async fn dispatch_ready(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
    ) -> Result<(), TrackerError> {
        let mut ready: Vec<StepId> = std::mem::take(&mut st.retry_due);
        ready.extend(
            st.run
                .plan
                .ready()
                .into_iter()
                .filter(|s| !st.in_flight.contains_key(&s.id))
                .map(|s| s.id.clone()),
        );
        for step in ready {
            self.dispatch(me, st, step).await?;
        }
        Ok(())
    }

    /// Starts the next attempt of `step` on the executor pool.
    async fn dispatch(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        step: StepId,
    ) -> Result<(), TrackerError> {
        let Some(s) = st.run.plan.step(&step) else { return Ok(()) };
        let attempt = s.attempts + 1;
        self.emit(st, EventKind::StepStarted { step: step.clone(), attempt }).await?;
        let Some(s) = st.run.plan.step(&step) else { return Ok(()) };
        let inputs = s
            .depends_on
            .iter()
            .filter_map(|d| st.run.plan.step(d))
            .map(|d| StepInput {
                id: d.id.clone(),
                description: d.description.clone(),
                output: d.output.clone(),
            })
            .collect();
        let span = tracing::info_span!(
            parent: &st.span,
            "stepwise.step",
            otel.name = %format_args!("stepwise.step {step}"),
            otel.status_code = tracing::field::Empty,
            stepwise.run.id = %st.run.id,
            stepwise.step.id = %step,
            stepwise.step.attempt = attempt,
            stepwise.plan.revision = st.run.plan.revision,
            stepwise.step.status = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        // A step the last replan made links to the failed attempt that caused the replan (before
        // `TraceContext::of` starts the span, so the link is part of its creation).
        if let Some(cause) = st.replan_links.get(&step) {
            span.add_link(cause.clone());
        }
        let cancel = st.cancel.child_token();
        let job = StepJob {
            run_id: st.run.id.clone(),
            task: st.run.task.clone(),
            goal: st.run.plan.goal.clone(),
            step: s.spec(),
            attempt,
            inputs,
            budget: step_budget(st),
            verify: st.run.options.policy.verify_outcome,
            trace: TraceContext::of(&span),
            cancel: cancel.clone(),
            events_to: Some(me.clone()),
        };
        st.in_flight.insert(
            step.clone(),
            InFlight { attempt, span, started: Instant::now(), cancel: cancel.clone() },
        );
        let (tx, rx) = ractor::concurrency::oneshot();
        let sent = st
            .services
            .executors
            .dispatch(format!("{}/{step}/{attempt}", st.run.id), ExecutorMsg::Run(Box::new(job), tx.into()));
        let me = me.clone();
        let lost = move || StepReport {
            step,
            attempt,
            outcome: Err(StepError::new(
                StepErrorKind::ExecutorCrashed,
                "the executor stopped before reporting (it was replaced)",
            )),
            usage: LlmUsage::default(),
        };
        if sent.is_err() {
            let _ = me.cast(TrackerMsg::StepFinished(lost()));
            return Ok(());
        }
        // A dropped reply port means the worker died mid-step; report that instead of waiting forever.
        tokio::spawn(async move {
            let report = rx.await.unwrap_or_else(|_| lost());
            let _ = me.cast(TrackerMsg::StepFinished(report));
        });
        Ok(())
    }

    async fn on_step(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        report: StepReport,
    ) -> Result<(), TrackerError> {
        let current = st.in_flight.get(&report.step).is_some_and(|f| f.attempt == report.attempt);
        if !current || !st.run.steps_may_run() {
            return Ok(());
        }
        let Some(flight) = st.in_flight.remove(&report.step) else { return Ok(()) };
        match report.outcome {
            Ok(output) => {
                flight.span.record("stepwise.step.status", "completed");
                telemetry::metrics::global().step_ended("completed", Some(flight.started.elapsed()));
                self.emit(
                    st,
                    EventKind::StepCompleted {
                        step: report.step,
                        attempt: report.attempt,
                        output,
                        usage: report.usage,
                    },
                )
                .await?;
                if st.replan_due.is_none() && replan_after_success(&st.run.options.policy, &st.run) {
                    st.replan_due = Some(None);
                }
            }
            Err(error) => {
                flight.span.record("stepwise.step.status", "failed");
                flight.span.record("error.type", error.kind.as_str());
                flight.span.record("otel.status_code", "ERROR");
                telemetry::metrics::global().step_ended("failed", Some(flight.started.elapsed()));
                st.failed_spans.insert(report.step.clone(), telemetry::span_context(&flight.span));
                let step = report.step.clone();
                self.emit(
                    st,
                    EventKind::StepFailed {
                        step: report.step,
                        attempt: report.attempt,
                        error: error.clone(),
                        usage: report.usage,
                    },
                )
                .await?;
                let failures = st.run.plan.step(&step).map_or(1, |s| s.failures);
                self.decide_failure(st, step, failures, &error).await?;
            }
        }
        drop(flight);
        self.advance(me, st).await
    }

    /// Applies the failure policy to a failed step.
    async fn decide_failure(
        &self,
        st: &mut TrackerState,
        step: StepId,
        failures: u32,
        error: &StepError,
    ) -> Result<(), TrackerError> {
        if !st.run.steps_may_run() {
            return Ok(());
        }
        let replans = st.run.replans();
        match on_step_failure(&st.run.options.policy, &step, failures, error, replans) {
            // Unless a replan will replace it anyway, the next `advance` starts the next attempt.
            FailureAction::Retry => {
                if st.replan_due.is_none() {
                    st.retry_due.push(step);
                }
            }
            FailureAction::Skip => {
                let reason = format!("skipped after failing: {error}");
                self.emit(st, EventKind::StepSkipped { step, reason }).await?;
                telemetry::metrics::global().step_ended("skipped", None);
            }
            FailureAction::Replan => {
                if st.replan_due.is_none() {
                    st.replan_due = Some(Some((step, error.to_string())));
                }
            }
            FailureAction::FailRun(reason) => {
                st.cancel.cancel();
                self.emit(st, EventKind::RunFailed { error: reason, usage: LlmUsage::default() }).await?;
            }
        }
        Ok(())
    }

    fn ask_replanner(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        failed: Option<(StepId, String)>,
    ) {
        let reason = failed
            .as_ref()
            .map_or_else(|| "after_each_step".to_owned(), |(s, e)| format!("step {s} failed: {e}"));
        let span = tracing::info_span!(
            parent: &st.span,
            "stepwise.replan",
            stepwise.plan.revision = st.run.plan.revision + 1,
            reason = %reason,
            stepwise.replan.decision = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        st.replan_cause = failed.as_ref().and_then(|(step, _)| st.failed_spans.get(step).cloned());
        if let Some(cause) = &st.replan_cause {
            span.add_link(cause.clone());
        }
        let job = ReplanJob {
            run_id: st.run.id.clone(),
            task: st.run.task.clone(),
            plan: st.run.plan.clone(),
            failed,
            trace: TraceContext::of(&span),
        };
        st.waiting = Waiting::Replan(span);
        let _ = st.services.replanner.cast(ReplannerMsg::Replan(job, me.clone()));
    }

    async fn on_replan(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        result: ServiceResult<ReplanDecision>,
    ) -> Result<(), TrackerError> {
        let Waiting::Replan(span) = std::mem::replace(&mut st.waiting, Waiting::Nothing) else {
            return Ok(());
        };
        if st.run.status != RunStatus::Running {
            return Ok(());
        }
        let (decision, usage) = match result {
            Ok(ok) => ok,
            Err(f) => {
                span.record("error.type", "replanning_failed");
                span.record("otel.status_code", "ERROR");
                return self.emit(st, EventKind::RunFailed { error: f.error, usage: f.usage }).await;
            }
        };
        let decided = format!("{:?}", decision.decision).to_lowercase();
        span.record("stepwise.replan.decision", decided.as_str());
        telemetry::metrics::global().replanned(&decided);
        let cause = st.replan_cause.take();
        let caused_by =
            st.run.plan.steps.iter().find(|s| s.status == StepStatus::Failed).map(|s| s.id.clone());
        match decision.decision {
            Decision::Continue => {
                self.emit(st, EventKind::ReplanConsidered { reason: decision.reason.clone(), usage }).await?;
                let failed: Vec<StepId> = st
                    .run
                    .plan
                    .steps
                    .iter()
                    .filter(|s| s.status == StepStatus::Failed)
                    .map(|s| s.id.clone())
                    .collect();
                for step in failed {
                    let reason = format!("replanner chose to continue without it: {}", decision.reason);
                    self.emit(st, EventKind::StepSkipped { step, reason }).await?;
                    telemetry::metrics::global().step_ended("skipped", None);
                }
            }
            Decision::Replan => {
                // The replanner validated these already; re-check against the state as it is now.
                if let Err(e) = validate_steps(
                    &decision.steps,
                    &st.run.plan.completed_ids(),
                    &self.shared.tool_name_refs(),
                ) {
                    let error = format!("replanning failed: invalid revision: {e}");
                    return self.emit(st, EventKind::RunFailed { error, usage }).await;
                }
                let revision = st.run.plan.revision + 1;
                st.replan_links = match cause {
                    Some(cause) => decision.steps.iter().map(|s| (s.id.clone(), cause.clone())).collect(),
                    None => HashMap::new(),
                };
                self.emit(
                    st,
                    EventKind::Replanned {
                        revision,
                        reason: decision.reason,
                        steps: decision.steps,
                        caused_by,
                        usage,
                    },
                )
                .await?;
            }
            Decision::Finish => {
                let final_output = decision.final_answer.unwrap_or(decision.reason);
                return self.emit(st, EventKind::RunCompleted { final_output, usage }).await;
            }
            Decision::Abort => {
                let error = format!("aborted by the replanner: {}", decision.reason);
                return self.emit(st, EventKind::RunFailed { error, usage }).await;
            }
        }
        drop(span);
        self.advance(me, st).await
    }

    fn ask_synthesizer(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState) {
        let span = tracing::info_span!(
            parent: &st.span,
            "stepwise.synthesize",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let results = st
            .run
            .plan
            .steps
            .iter()
            .map(|s| StepInput {
                id: s.id.clone(),
                description: s.description.clone(),
                output: s.output.clone(),
            })
            .collect();
        let job = SynthesisJob {
            run_id: st.run.id.clone(),
            task: st.run.task.clone(),
            goal: st.run.plan.goal.clone(),
            results,
            trace: TraceContext::of(&span),
        };
        st.waiting = Waiting::Synthesis(span);
        let _ = st.services.synthesizer.cast(SynthesizerMsg::Synthesize(job, me.clone()));
    }

    /// Publishes the result, stops in-flight work and the actor.
    fn finish(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState) {
        st.cancel.cancel();
        for (_, f) in st.in_flight.drain() {
            f.span.record("stepwise.step.status", "cancelled");
            telemetry::metrics::global().step_ended("cancelled", Some(f.started.elapsed()));
        }
        st.span.record("stepwise.run.status", st.run.status.as_str());
        if st.run.status == RunStatus::Failed {
            st.span.record("otel.status_code", "ERROR");
        }
        telemetry::metrics::global().run_ended(st.run.status.as_str());
        for role in crate::llm::AgentRole::ALL {
            self.shared.models.get(role).run_finished(st.run.id.as_str());
        }
        // Leave the live table first: whoever sees the result must not still find the run live.
        self.shared.runs.remove(&st.run.id);
        st.channels.result.send_replace(Some(st.run.result()));
        me.stop(None);
    }
}

/// The step budget for the next attempt, clipped by what the run has left.
fn step_budget(st: &TrackerState) -> StepBudget {
    let mut budget = st.run.options.step_budget.clone();
    let run_tokens = st.run.options.run_budget.max_tokens;
    if run_tokens > 0 {
        let left = run_tokens.saturating_sub(st.run.usage.tokens()).max(1);
        budget.max_tokens = if budget.max_tokens == 0 { left } else { budget.max_tokens.min(left) };
    }
    budget
}
