//! Provider waits: a model call of the run started or stopped waiting for its unavailable
//! provider. Recorded only for a call the run still waits for; anything else is stale.

use super::{MachineError, Service, Step};
use crate::llm::AgentRole;
use crate::plan::StepId;
use crate::run::EventKind;

impl Step<'_> {
    /// Records a `ProviderWaiting` or `ProviderResumed` of a call the run still waits for: the
    /// attempt in flight (executor, verifier) or the outstanding service request. A resume
    /// without a recorded wait is dropped.
    pub(super) fn provider_event(&mut self, kind: EventKind) -> Result<(), MachineError> {
        let (role, step, attempt, resumed) = match &kind {
            EventKind::ProviderWaiting { role, step, attempt, .. } => (*role, step, *attempt, false),
            EventKind::ProviderResumed { role, step, attempt, .. } => (*role, step, *attempt, true),
            _ => return Ok(()),
        };
        let run = &self.m.run;
        if run.status.is_terminal() || !self.call_outstanding(role, step.as_ref(), attempt) {
            return Ok(());
        }
        let recorded = run.waiting_on_provider.iter().any(|w| w.role == role && w.step == *step);
        if resumed && !recorded {
            return Ok(());
        }
        self.emit(kind)?;
        Ok(())
    }

    /// Whether the run still waits for the call of `role` (for `step`'s `attempt`).
    fn call_outstanding(&self, role: AgentRole, step: Option<&StepId>, attempt: Option<u32>) -> bool {
        let service = match role {
            AgentRole::Executor | AgentRole::Verifier => {
                return match (step, attempt) {
                    (Some(step), Some(attempt)) => self.m.in_flight.get(step) == Some(&attempt),
                    _ => false,
                };
            }
            AgentRole::Planner => Service::Planner,
            AgentRole::Replanner => Service::Replanner,
            AgentRole::Synthesizer => Service::Synthesizer,
        };
        step.is_none() && self.m.waiting_for() == Some(service)
    }
}
