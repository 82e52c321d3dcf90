//! Transitions of step attempts: dispatch, results, the failure policy, tool events.

use super::{
    Command, MachineError, ReplanCause, Step, StepAssignment, StepEnd, StepInput, StepReport, StepResume,
};
use crate::options::StepBudget;
use crate::plan::{StepId, StepStatus};
use crate::run::{EventKind, FailureAction, RunState, StateError, Usage};
use crate::run::{on_step_failure, replan_after_success};

impl Step<'_> {
    /// Starts every step that may run now: retries that are due and pending steps whose
    /// dependencies are resolved.
    pub(super) fn dispatch_ready(&mut self) -> Result<(), StateError> {
        let run = &self.m.run;
        let retries = run.plan.steps.iter().filter(|s| {
            s.status == StepStatus::Failed
                && !self.m.in_flight.contains_key(&s.id)
                && retry_due(run, &s.id, s.failures)
        });
        let ready = run.plan.ready().into_iter().filter(|s| !self.m.in_flight.contains_key(&s.id));
        let steps: Vec<StepId> = retries.chain(ready).map(|s| s.id.clone()).collect();
        for step in steps {
            self.dispatch(&step)?;
        }
        Ok(())
    }

    /// Starts the next attempt of `step`.
    fn dispatch(&mut self, step: &StepId) -> Result<(), StateError> {
        let Some(s) = self.m.run.plan.step(step) else { return Ok(()) };
        let attempt = s.attempts + 1;
        self.emit(EventKind::StepStarted { step: step.clone(), attempt })?;
        self.start_attempt(step, attempt, None);
        Ok(())
    }

    /// Hands `attempt` of `step` to an executor: a new attempt, or (with `resume`) a paused one
    /// carrying on.
    pub(super) fn start_attempt(&mut self, step: &StepId, attempt: u32, resume: Option<Box<StepResume>>) {
        let run = &self.m.run;
        let Some(s) = run.plan.step(step) else { return };
        let inputs = s.depends_on.iter().filter_map(|d| run.plan.step(d)).map(StepInput::of).collect();
        let assignment = StepAssignment {
            step: s.spec(),
            attempt,
            inputs,
            budget: step_budget(run),
            run_spend: crate::run::RunSpend {
                spent: run.usage.cost,
                max_cost: run.options.run_budget.max_cost,
            },
            verify: run.options.policy.verify_outcome,
            revision: run.plan.revision,
            approve_tools: run.options.policy.approve_tools.clone(),
            approve_destructive: run.options.policy.approve_destructive,
            resume,
        };
        self.m.in_flight.insert(step.clone(), attempt);
        self.command(Command::StartStep(assignment));
    }

    /// After a restart: runs again the steps that were running (at-least-once), resumes the
    /// paused ones whose calls were all answered (the others wait on), decides the failures
    /// that were not decided yet, and moves on.
    pub(super) fn resume_steps(&mut self) -> Result<(), StateError> {
        let run = &self.m.run;
        let interrupted: Vec<StepId> = (run.plan.steps.iter())
            .filter(|s| s.status == StepStatus::Running && !run.paused.contains_key(&s.id))
            .map(|s| s.id.clone())
            .collect();
        for step in interrupted {
            self.dispatch(&step)?;
        }
        let answered: Vec<StepId> =
            (self.m.run.paused.iter()).filter(|(_, p)| p.answered()).map(|(s, _)| s.clone()).collect();
        for step in answered {
            self.resume_paused(&step);
        }
        self.arm_tool_approval_timeout();
        let plan = &self.m.run.plan;
        let failed: Vec<StepId> =
            plan.steps.iter().filter(|s| s.status == StepStatus::Failed).map(|s| s.id.clone()).collect();
        for step in failed {
            self.decide_failure(&step)?;
        }
        self.advance()
    }

    pub(super) fn step_finished(&mut self, report: StepReport) -> Result<(), MachineError> {
        let current = self.m.in_flight.get(&report.step) == Some(&report.attempt);
        if !current || !self.m.run.steps_may_run() {
            return Ok(());
        }
        self.m.in_flight.remove(&report.step);
        let StepReport { step, attempt, outcome, usage } = report;
        match outcome {
            Ok(StepEnd::Paused { calls, checkpoint }) => {
                self.step_paused(step, attempt, calls, checkpoint)?
            }
            Ok(StepEnd::Answer(output)) => {
                self.emit(EventKind::StepCompleted { step, attempt, output, usage })?;
                let run = &self.m.run;
                if self.m.replan_due.is_none() && replan_after_success(&run.options.policy, run) {
                    self.m.replan_due = Some(ReplanCause::AfterSuccess);
                }
            }
            Err(error) => {
                self.emit(EventKind::StepFailed { step: step.clone(), attempt, error, usage })?;
                self.decide_failure(&step)?;
            }
        }
        self.advance()?;
        Ok(())
    }

    /// Applies the failure policy to a failed step. A retry is not recorded here: a failed step
    /// whose policy says retry is started by the next dispatch (see [`retry_due`]).
    fn decide_failure(&mut self, step: &StepId) -> Result<(), StateError> {
        let run = &self.m.run;
        let (Some(s), Some(error)) = (run.plan.step(step), run.last_errors.get(step)) else { return Ok(()) };
        if !run.steps_may_run() {
            return Ok(());
        }
        let error = error.clone();
        match on_step_failure(&run.options.policy, step, s.failures, &error, run.replans()) {
            FailureAction::Retry => {}
            FailureAction::Skip => {
                let reason = format!("skipped after failing: {error}");
                self.emit(EventKind::StepSkipped { step: step.clone(), reason })?;
            }
            FailureAction::Replan => {
                if self.m.replan_due.is_none() {
                    self.m.replan_due = Some(ReplanCause::StepFailed(step.clone(), error));
                }
            }
            FailureAction::FailRun(reason) => self.fail_run(reason, Usage::default())?,
        }
        Ok(())
    }

    pub(super) fn tool_event(&mut self, kind: EventKind) -> Result<(), MachineError> {
        let current = match &kind {
            EventKind::ToolCalled { step, attempt, .. } | EventKind::ToolReturned { step, attempt, .. } => {
                self.m.in_flight.get(step) == Some(attempt)
            }
            _ => false,
        };
        if current && !self.m.run.status.is_terminal() {
            self.emit(kind)?;
        }
        Ok(())
    }
}

/// True when a failed step's policy says to run it again.
fn retry_due(run: &RunState, step: &StepId, failures: u32) -> bool {
    let Some(error) = run.last_errors.get(step) else { return false };
    on_step_failure(&run.options.policy, step, failures, error, run.replans()) == FailureAction::Retry
}

/// The budget of the next attempt: the run's step budget, its tokens clipped by what the run
/// has left.
pub(super) fn step_budget(run: &RunState) -> StepBudget {
    let mut budget = run.options.step_budget.clone();
    let run_tokens = run.options.run_budget.max_tokens;
    if run_tokens > 0 {
        let left = run_tokens.saturating_sub(run.usage.tokens()).max(1);
        budget.max_tokens = if budget.max_tokens == 0 { left } else { budget.max_tokens.min(left) };
    }
    budget
}
