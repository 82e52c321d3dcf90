//! Transitions of the model-backed services: the plan (whole or streamed), the replanner's
//! decision, the synthesis, and requests that were lost on the way.

use std::time::Duration;

use super::{Command, MAX_SERVICE_LOSSES, MachineError, Service, ServiceRequest, ServiceResult, Step, Timer};
use crate::plan::{PlanSpec, StepId, StepSpec, StepStatus, validate_steps, validate_streamed_step};
use crate::run::{Decision, EventKind, ReplanDecision, RunId, RunStatus, StateError, Usage};

impl Step<'_> {
    /// A service's answer, or `None` after failing the run with its error (and what it spent).
    fn succeeded<T>(&mut self, result: ServiceResult<T>) -> Result<Option<(T, Usage)>, StateError> {
        match result {
            Ok(ok) => Ok(Some(ok)),
            Err(f) => self.fail_run(f.error, f.usage).map(|()| None),
        }
    }

    /// Sends a request and remembers it until it is answered (or lost).
    pub(super) fn ask(&mut self, request: ServiceRequest) {
        self.m.waiting = Some((request.clone(), 0));
        self.command(Command::Ask(request));
    }

    pub(super) fn ask_planner(&mut self) {
        let policy = &self.m.run.options.policy;
        // Approval needs the whole plan before anything runs.
        let stream = policy.stream_plan && !policy.require_approval;
        self.ask(ServiceRequest::Plan { stream });
    }

    /// Takes the answer to the outstanding request of `service`; `None` if the run does not wait
    /// for it (a late answer after a cancel, or a duplicate).
    fn answered(&mut self, service: Service) -> Option<ServiceRequest> {
        match &self.m.waiting {
            Some((request, _)) if request.service() == service => self.m.waiting.take().map(|(r, _)| r),
            _ => None,
        }
    }

    /// A request was lost: send it again after a growing delay, or fail the run once it was
    /// lost [`MAX_SERVICE_LOSSES`] times.
    pub(super) fn service_lost(&mut self, service: Service) -> Result<(), MachineError> {
        let Some((request, losses)) = self.m.waiting.as_mut() else { return Ok(()) };
        if request.service() != service {
            return Ok(());
        }
        *losses += 1;
        let loss = *losses;
        if loss >= MAX_SERVICE_LOSSES {
            let error = format!(
                "the {} did not answer: its request was lost {loss} times (the service kept stopping)",
                service.as_str()
            );
            self.fail_run(error, Usage::default())?;
        } else {
            let after = resend_delay(loss);
            self.command(Command::Schedule { timer: Timer::Resend { service, loss }, after });
        }
        Ok(())
    }

    /// Sends the outstanding request again, if it is the one whose loss scheduled this.
    pub(super) fn resend(&mut self, service: Service, loss: u32) {
        match &self.m.waiting {
            Some((request, losses)) if request.service() == service && *losses == loss => {
                let again = request.clone();
                self.command(Command::Ask(again));
            }
            _ => {}
        }
    }

    /// Takes steps of a plan that is still streaming in, and starts those that are ready. A
    /// step that cannot be judged on its own yet (it depends on a step still to come, or reuses
    /// an id) waits for the whole plan.
    pub(super) fn plan_streamed(&mut self, steps: Vec<StepSpec>) -> Result<(), MachineError> {
        if self.m.waiting_for() != Some(Service::Planner) || self.m.run.status != RunStatus::Planning {
            return Ok(());
        }
        let tools: Vec<&str> = self.m.tools.iter().map(String::as_str).collect();
        let mut known: Vec<StepId> = self.m.run.plan.steps.iter().map(|s| s.id.clone()).collect();
        let mut accepted = Vec::with_capacity(steps.len());
        for step in steps {
            if validate_streamed_step(&step, &known, &tools).is_ok() {
                known.push(step.id.clone());
                accepted.push(step);
            }
        }
        if accepted.is_empty() {
            return Ok(());
        }
        self.emit(EventKind::PlanStreamed { steps: accepted })?;
        self.advance()?;
        Ok(())
    }

    /// Adopts the planner's plan, or (`cached_from`) the one it reused from the plan cache.
    pub(super) fn plan_ready(
        &mut self,
        result: ServiceResult<PlanSpec>,
        cached_from: Option<RunId>,
    ) -> Result<(), MachineError> {
        if self.answered(Service::Planner).is_none() || self.m.run.status != RunStatus::Planning {
            return Ok(());
        }
        let Some((plan, usage)) = self.succeeded(result)? else { return Ok(()) };
        self.emit(EventKind::PlanProposed { revision: 1, plan, usage, cached_from })?;
        // A streamed step that the whole plan left out (a repair rewrote it) stops.
        let plan = &self.m.run.plan;
        let dropped: Vec<(StepId, u32)> = (self.m.in_flight.iter())
            .filter(|(id, _)| plan.step(id).is_none())
            .map(|(id, attempt)| (id.clone(), *attempt))
            .collect();
        for (step, attempt) in dropped {
            self.m.in_flight.remove(&step);
            self.command(Command::StopStep { step, attempt });
        }
        if self.m.run.status == RunStatus::AwaitingApproval {
            self.arm_approval_timeout();
        }
        self.advance()?;
        Ok(())
    }

    pub(super) fn replan_ready(&mut self, result: ServiceResult<ReplanDecision>) -> Result<(), MachineError> {
        if self.answered(Service::Replanner).is_none() || self.m.run.status != RunStatus::Running {
            return Ok(());
        }
        let Some((decision, usage)) = self.succeeded(result)? else { return Ok(()) };
        match decision.decision {
            Decision::Continue => self.keep_plan(decision.reason, usage)?,
            Decision::Replan => {
                if !self.revise(decision, usage)? {
                    return Ok(());
                }
            }
            Decision::Finish => {
                let final_output = decision.final_answer.unwrap_or(decision.reason);
                return Ok(self.emit(EventKind::RunCompleted { final_output, usage })?);
            }
            Decision::Abort => {
                let error = format!("aborted by the replanner: {}", decision.reason);
                return Ok(self.fail_run(error, usage)?);
            }
        }
        self.advance()?;
        Ok(())
    }

    /// `continue`: the plan stays; its failed steps are skipped.
    fn keep_plan(&mut self, reason: String, usage: Usage) -> Result<(), StateError> {
        self.emit(EventKind::ReplanConsidered { reason: reason.clone(), usage })?;
        let failed: Vec<StepId> = (self.m.run.plan.steps.iter())
            .filter(|s| s.status == StepStatus::Failed)
            .map(|s| s.id.clone())
            .collect();
        for step in failed {
            let reason = format!("replanner chose to continue without it: {reason}");
            self.emit(EventKind::StepSkipped { step, reason })?;
        }
        Ok(())
    }

    /// `replan`: a new revision replaces every step that is not completed. False when the
    /// revision is invalid and the run failed instead.
    fn revise(&mut self, decision: ReplanDecision, usage: Usage) -> Result<bool, StateError> {
        let plan = &self.m.run.plan;
        let tools: Vec<&str> = self.m.tools.iter().map(String::as_str).collect();
        // The replanner validated these already; re-check against the state as it is now.
        if let Err(e) = validate_steps(&decision.steps, &plan.completed_ids(), &tools) {
            self.fail_run(format!("replanning failed: invalid revision: {e}"), usage)?;
            return Ok(false);
        }
        let caused_by = plan.steps.iter().find(|s| s.status == StepStatus::Failed).map(|s| s.id.clone());
        let revision = plan.revision + 1;
        let ReplanDecision { reason, steps, .. } = decision;
        self.emit(EventKind::Replanned { revision, reason, steps, caused_by, usage })?;
        Ok(true)
    }

    pub(super) fn synthesis_ready(&mut self, result: ServiceResult<String>) -> Result<(), MachineError> {
        if self.answered(Service::Synthesizer).is_none() || self.m.run.status.is_terminal() {
            return Ok(());
        }
        if let Some((final_output, usage)) = self.succeeded(result)? {
            self.emit(EventKind::RunCompleted { final_output, usage })?;
        }
        Ok(())
    }
}

/// 100 ms after the first loss, doubling, at most 2 s: about 7 s in all before the run fails,
/// far more than a supervisor needs to replace a service actor.
fn resend_delay(loss: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << loss.saturating_sub(1).min(5)))
        .min(Duration::from_secs(2))
}
