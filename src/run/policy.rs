//! The failure and replanning policy as pure functions.

use super::{RunState, StepError, StepErrorKind};
use crate::options::{FailurePolicy, Policy, ReplanMode};
use crate::plan::{StepId, StepStatus};

/// What to do after a step attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FailureAction {
    /// Run the step again.
    Retry,
    /// Skip it and carry on.
    Skip,
    /// Ask the replanner.
    Replan,
    /// Fail the run with this reason.
    FailRun(String),
}

/// The failure policy as a pure function.
///
/// `failures` counts the step's failed attempts including this one; `replans` the revisions made
/// so far. A cancelled attempt is never retried.
pub(crate) fn on_step_failure(
    policy: &Policy,
    step: &StepId,
    failures: u32,
    error: &StepError,
    replans: u32,
) -> FailureAction {
    if error.kind == StepErrorKind::Cancelled {
        return FailureAction::FailRun(format!("step {step} was cancelled"));
    }
    if error.run_budget {
        return FailureAction::FailRun(format!("run budget exhausted: step {step}: {}", error.message));
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
pub(crate) fn replan_after_success(policy: &Policy, state: &RunState) -> bool {
    policy.replan == ReplanMode::AfterEachStep
        && state.replans() < policy.max_replans
        && state.plan.steps.iter().any(|s| s.status == StepStatus::Pending)
}
