//! The run as a pure state machine: an [`Input`] and the current state in, the events to append
//! and the [`Command`]s to carry out ([`Transition`]) out.
//!
//! No tokio, no actors, no I/O, no clock: the time comes in with each input. The tracker actor
//! is a driver that stores the events, then carries out the commands (start a step, ask a
//! service, schedule a timer, finish); another driver (a database queue shared by replicas) can
//! run the very same logic. Transitions are data, effects are done elsewhere. See
//! `docs/architecture.md` for the states and transitions.
//!
//! The machine's state is the fold of the run's events ([`RunState`]) plus what is only true
//! while a driver is live: the attempts in flight, the service request outstanding, and a
//! replan that waits for the in-flight steps to drain. A driver that starts on a stored log
//! (after a crash) begins with none of these; [`Input::Start`] re-dispatches what was running
//! and re-decides what was not decided yet, so the run carries on from where its log ends.

#[cfg(test)]
mod approval_tests;
mod approvals;
mod io;
mod outage;
mod services;
mod steps;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use io::Refusal;
pub(crate) use io::{
    Command, Input, Service, ServiceFailure, ServiceRequest, ServiceResult, StepAssignment, StepEnd,
    StepInput, StepReport, StepResume, Timer, Transition,
};

use super::{EventKind, RunEvent, RunState, RunStatus, StateError, StepError, Usage};
use crate::plan::StepId;

/// How often a lost service request is sent again before the run fails.
pub(crate) const MAX_SERVICE_LOSSES: u32 = 8;

/// Why a transition could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum MachineError {
    /// A control request the run's state does not allow; nothing changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// An event did not fit the state (a bug, or a corrupt log).
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why the run waits for the replanner once its in-flight steps have drained.
#[derive(Debug, Clone, PartialEq)]
enum ReplanCause {
    /// A step completed and `replan = after_each_step`.
    AfterSuccess,
    /// A step failed past its retries and the policy is `replan`.
    StepFailed(StepId, StepError),
}

/// A run's state machine. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct RunMachine {
    run: RunState,
    tools: Arc<[String]>,
    /// Attempts started and not yet reported, by step.
    in_flight: BTreeMap<StepId, u32>,
    /// The service request outstanding, and how often it was lost so far.
    waiting: Option<(ServiceRequest, u32)>,
    replan_due: Option<ReplanCause>,
    /// The deadline the tool-approval timer is set for, if one is set.
    approval_timer: Option<DateTime<Utc>>,
}

/// Builds one transition: applies each event to the state as it is made, so the decisions that
/// follow in the same transition see it.
struct Step<'a> {
    m: &'a mut RunMachine,
    now: DateTime<Utc>,
    out: Transition,
}

impl RunMachine {
    /// A machine over a run's folded state; `tools` are the names plans may use.
    pub(crate) fn new(run: RunState, tools: Arc<[String]>) -> Self {
        Self { run, tools, in_flight: BTreeMap::new(), waiting: None, replan_due: None, approval_timer: None }
    }

    /// The run's state (the fold of every event so far).
    pub(crate) fn run(&self) -> &RunState {
        &self.run
    }

    /// The attempt of `step` in flight, if any.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, step: &StepId) -> Option<u32> {
        self.in_flight.get(step).copied()
    }

    /// The service the run waits for, if any.
    pub(crate) fn waiting_for(&self) -> Option<Service> {
        self.waiting.as_ref().map(|(r, _)| r.service())
    }

    /// Takes one input at time `now`.
    pub(crate) fn handle(&mut self, input: Input, now: DateTime<Utc>) -> Result<Transition, MachineError> {
        let ended_before = self.run.status.is_terminal();
        // A driver started on an ended run only has to publish its result.
        let starting = matches!(input, Input::Start);
        let mut t = Step { m: self, now, out: Transition::default() };
        match input {
            Input::Start => t.start()?,
            Input::PlanStreamed(steps) => t.plan_streamed(steps)?,
            Input::PlanReady(result) => t.plan_ready(result, None)?,
            Input::PlanReused { plan, from } => t.plan_ready(Ok((plan, Usage::default())), Some(from))?,
            Input::ReplanReady(result) => t.replan_ready(result)?,
            Input::SynthesisReady(result) => t.synthesis_ready(result)?,
            Input::ServiceLost(service) => t.service_lost(service)?,
            Input::StepFinished(report) => t.step_finished(report)?,
            Input::Tool(kind) => t.tool_event(kind)?,
            Input::Provider(kind) => t.provider_event(kind)?,
            Input::Approve(edited) => t.approve(edited)?,
            Input::Reject(reason) => t.reject(reason)?,
            Input::Cancel(reason) => t.cancel(reason)?,
            Input::ResolveToolCall { approval_id, decision } => t.resolve_tool_call(approval_id, decision)?,
            Input::Timeout(timer) => t.timeout(timer)?,
        }
        let mut out = t.out;
        if self.run.status.is_terminal() && (!ended_before || starting) {
            self.in_flight.clear();
            self.waiting = None;
            self.replan_due = None;
            self.approval_timer = None;
            // Whatever the transition started before the run ended, `Finish` stops.
            out.commands.clear();
            out.commands.push(Command::Finish);
        }
        Ok(out)
    }
}

impl Step<'_> {
    /// Makes an event, applies it to the state and queues it for the store.
    fn emit(&mut self, kind: EventKind) -> Result<(), StateError> {
        let run = &mut self.m.run;
        let event = RunEvent { run_id: run.id.clone(), seq: run.next_seq(), at: self.now, kind };
        run.apply(&event)?;
        self.out.events.push(event);
        Ok(())
    }

    fn command(&mut self, c: Command) {
        self.out.commands.push(c);
    }

    fn fail_run(&mut self, error: String, usage: Usage) -> Result<(), StateError> {
        self.emit(EventKind::RunFailed { error, usage })
    }

    fn start(&mut self) -> Result<(), MachineError> {
        self.arm_run_timeout();
        match self.m.run.status {
            RunStatus::Planning => {
                self.ask_planner();
                // Steps of a plan that was streaming in when the previous driver stopped.
                self.resume_steps()?;
            }
            RunStatus::AwaitingApproval => self.arm_approval_timeout(),
            RunStatus::Running => self.resume_steps()?,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => {}
        }
        Ok(())
    }

    fn approve(&mut self, edited: Option<crate::plan::PlanSpec>) -> Result<(), MachineError> {
        let status = self.m.run.status;
        if status != RunStatus::AwaitingApproval {
            return Err(Refusal::NotAwaitingApproval(status).into());
        }
        if let Some(plan) = &edited {
            let tools: Vec<&str> = self.m.tools.iter().map(String::as_str).collect();
            plan.validate(&tools).map_err(Refusal::InvalidPlan)?;
        }
        self.emit(EventKind::PlanApproved { edited })?;
        // The run's clock stopped while the plan waited; it runs again from here.
        self.arm_run_timeout();
        self.advance()?;
        Ok(())
    }

    fn reject(&mut self, reason: String) -> Result<(), MachineError> {
        let status = self.m.run.status;
        if status != RunStatus::AwaitingApproval {
            return Err(Refusal::NotAwaitingApproval(status).into());
        }
        self.emit(EventKind::RunCancelled { reason: format!("plan rejected: {reason}") })?;
        Ok(())
    }

    fn cancel(&mut self, reason: String) -> Result<(), MachineError> {
        let status = self.m.run.status;
        if status.is_terminal() {
            return Err(Refusal::AlreadyEnded(status).into());
        }
        self.emit(EventKind::RunCancelled { reason })?;
        Ok(())
    }

    fn timeout(&mut self, timer: Timer) -> Result<(), MachineError> {
        let run = &self.m.run;
        match timer {
            Timer::Approval if run.status == RunStatus::AwaitingApproval => {
                let secs = run.options.policy.approval_timeout_secs;
                let reason = format!("plan not approved within {secs} s (approval_timeout_secs)");
                self.emit(EventKind::RunCancelled { reason })?;
            }
            Timer::Run => match run.time_left(self.now) {
                // Armed before a wait for approval, which does not count: not yet.
                Some(left) if !left.is_zero() => self.command(Command::Schedule { timer, after: left }),
                Some(_) => {
                    let error = format!(
                        "run budget exhausted: timeout after {} ms",
                        run.options.run_budget.timeout_ms
                    );
                    self.fail_run(error, Usage::default())?;
                }
                None => {}
            },
            Timer::Resend { service, loss } => self.resend(service, loss),
            Timer::ToolApprovals => self.tool_approvals_due()?,
            Timer::Approval => {}
        }
        Ok(())
    }

    /// Schedules the end of the run's wall-clock budget, if it has one and its clock runs.
    fn arm_run_timeout(&mut self) {
        if let Some(after) = self.m.run.time_left(self.now) {
            self.command(Command::Schedule { timer: Timer::Run, after });
        }
    }

    /// Schedules the approval deadline, counted from when the plan was proposed (so it holds
    /// across a restart).
    fn arm_approval_timeout(&mut self) {
        let run = &self.m.run;
        let secs = run.options.policy.approval_timeout_secs;
        if secs == 0 {
            return;
        }
        let proposed = run.revisions.first().map_or(run.created_at, |r| r.created_at);
        let waited = (self.now - proposed).to_std().unwrap_or_default();
        let after = Duration::from_secs(secs).saturating_sub(waited);
        self.command(Command::Schedule { timer: Timer::Approval, after });
    }

    /// Moves the run forward: start ready steps, start a due replan, or synthesise.
    fn advance(&mut self) -> Result<(), StateError> {
        let run = &self.m.run;
        if run.status == RunStatus::Planning && run.steps_may_run() {
            // The plan is still streaming in: start what is ready; replans, synthesis and the
            // check for a stuck plan wait for the whole plan.
            if self.m.replan_due.is_none() {
                self.dispatch_ready()?;
            }
            return Ok(());
        }
        if run.status != RunStatus::Running || self.m.waiting.is_some() {
            return Ok(());
        }
        if let Some(error) = run.run_budget_exceeded() {
            return self.fail_run(error, Usage::default());
        }
        if self.m.replan_due.is_some() {
            // A replan replaces the steps not completed: paused ones are waited for too.
            if self.m.in_flight.is_empty() && self.m.run.paused.is_empty() {
                let failed = match self.m.replan_due.take() {
                    Some(ReplanCause::StepFailed(step, error)) => Some((step, error)),
                    _ => None,
                };
                self.ask(ServiceRequest::Replan { failed });
            }
            return Ok(());
        }
        self.dispatch_ready()?;
        if self.m.in_flight.is_empty() && self.m.run.paused.is_empty() {
            if self.m.run.plan.all_resolved() {
                self.ask(ServiceRequest::Synthesize);
            } else {
                let stuck: Vec<String> = (self.m.run.plan.steps.iter())
                    .filter(|s| !s.status.is_resolved())
                    .map(|s| format!("{} ({:?})", s.id, s.status))
                    .collect();
                let error = format!("no step can make progress: {}", stuck.join(", "));
                return self.fail_run(error, Usage::default());
            }
        }
        Ok(())
    }
}
