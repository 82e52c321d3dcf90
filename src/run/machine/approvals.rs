//! Transitions of tool calls waiting for a person: a step attempt pauses on them, each is
//! answered (or times out) on its own, and once all of a step's are answered the attempt resumes
//! from its checkpoint.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Command, MachineError, Refusal, Step, StepResume, Timer};
use crate::plan::StepId;
use crate::run::{EventKind, PendingCall, StateError, StepCheckpoint, ToolDecision};

impl Step<'_> {
    /// An attempt paused on tool calls: recorded, its deadline armed, and the run moves on.
    pub(super) fn step_paused(
        &mut self,
        step: StepId,
        attempt: u32,
        calls: Vec<PendingCall>,
        checkpoint: StepCheckpoint,
    ) -> Result<(), StateError> {
        self.emit(EventKind::ToolApprovalRequested { step, attempt, calls, checkpoint })?;
        self.arm_tool_approval_timeout();
        Ok(())
    }

    /// A person's answer to one pending call. Refused when no call waits under that id, when it
    /// was answered already, or when the run ended.
    pub(super) fn resolve_tool_call(
        &mut self,
        approval_id: String,
        decision: ToolDecision,
    ) -> Result<(), MachineError> {
        let run = &self.m.run;
        if run.status.is_terminal() {
            return Err(Refusal::AlreadyEnded(run.status).into());
        }
        if run.answered_approvals.contains(&approval_id) {
            return Err(Refusal::AlreadyResolved(approval_id).into());
        }
        let Some((step, _)) = run.paused_step_of(&approval_id) else {
            return Err(Refusal::UnknownApproval(approval_id).into());
        };
        let step = step.clone();
        self.answer(step, approval_id, decision)?;
        Ok(())
    }

    /// Records an answer; the step resumes once it has them all.
    fn answer(
        &mut self,
        step: StepId,
        approval_id: String,
        decision: ToolDecision,
    ) -> Result<(), StateError> {
        self.emit(EventKind::ToolApprovalResolved { approval_id, step: step.clone(), decision })?;
        if self.m.run.paused.get(&step).is_some_and(|p| p.answered()) {
            self.resume_paused(&step);
        }
        Ok(())
    }

    /// Hands a paused attempt whose calls are all answered back to an executor.
    pub(super) fn resume_paused(&mut self, step: &StepId) {
        let Some(p) = self.m.run.paused.get(step) else { return };
        let Some(calls) = p.resolved_calls() else { return };
        let (attempt, checkpoint) = (p.attempt, p.checkpoint.clone());
        self.start_attempt(step, attempt, Some(Box::new(StepResume { checkpoint, calls })));
    }

    /// The approval timer went off: every call past its deadline is answered `timed_out`, and
    /// the timer is set again for the next deadline.
    pub(super) fn tool_approvals_due(&mut self) -> Result<(), StateError> {
        self.m.approval_timer = None;
        let now = self.now;
        let due: Vec<(StepId, String)> = (self.m.run.pending_approvals().into_iter())
            .filter(|p| self.approval_deadline(p.requested_at).is_some_and(|d| d <= now))
            .map(|p| (p.step, p.approval_id))
            .collect();
        for (step, approval_id) in due {
            self.answer(step, approval_id, ToolDecision::TimedOut)?;
        }
        self.arm_tool_approval_timeout();
        Ok(())
    }

    /// Sets the approval timer for the earliest deadline of the calls waiting, unless it is set
    /// for that or earlier already. Deadlines count from the pause, so they hold across restarts.
    pub(super) fn arm_tool_approval_timeout(&mut self) {
        let earliest = (self.m.run.pending_approvals().iter())
            .filter_map(|p| self.approval_deadline(p.requested_at))
            .min();
        let Some(deadline) = earliest else { return };
        if self.m.approval_timer.is_some_and(|set| set <= deadline) {
            return;
        }
        self.m.approval_timer = Some(deadline);
        let after = (deadline - self.now).to_std().unwrap_or(Duration::ZERO);
        self.command(Command::Schedule { timer: Timer::ToolApprovals, after });
    }

    /// When a call waiting since `since` times out; none without a timeout.
    fn approval_deadline(&self, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let secs = self.m.run.options.policy.tool_approval_timeout_secs;
        (secs > 0).then(|| since + chrono::Duration::seconds(secs.min(i64::MAX as u64) as i64))
    }
}
