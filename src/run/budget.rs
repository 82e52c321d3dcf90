//! Money budgets as pure decisions: may a model call be made, given what was spent, the caps,
//! and the most the call can cost?
//!
//! The check runs before the call, from the most it can cost (its prompt's estimated tokens at
//! the input price plus its output cap at the output price), so a budget is never overshot by
//! the checked calls. A cost that is unknown (an unpriced model) enforces nothing: the warning
//! that the model has no price is all there is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{StepError, StepErrorKind};
use crate::llm::Cost;
use crate::llm::price::cap_nanos;

/// What the run had spent when a step attempt started, and its money cap: the run-level part of
/// the attempt's money budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub(crate) struct RunSpend {
    /// The run's cost before this attempt.
    pub spent: Cost,
    /// `run_budget.max_cost` (0: no limit).
    pub max_cost: f64,
}

/// Whether a call that may cost up to `most` fits under `cap` (0: no cap) after `spent`.
/// `Err` carries the message of the refusal; unknown costs always fit.
pub(crate) fn check_cost(limit: &str, spent: Cost, most: Cost, cap: f64) -> Result<(), String> {
    let (Some(spent_n), Some(most_n)) = (spent.nanos(), most.nanos()) else { return Ok(()) };
    if cap <= 0.0 || spent_n.saturating_add(most_n) <= cap_nanos(cap) {
        return Ok(());
    }
    Err(format!(
        "{limit}: {spent} spent and the next model call may cost up to {most}, over the limit of {}",
        Cost::from_amount(cap)
    ))
}

/// The check before each model call of a step attempt: the step's cap (`step_budget.max_cost`)
/// on what the attempt spent, then the run's cap on what the run spent. A refusal is a
/// `budget_exhausted` error; the run's, marked so the run ends.
pub(crate) fn check_step_call(
    step_spent: Cost,
    step_cap: f64,
    run: &RunSpend,
    most: Cost,
) -> Result<(), StepError> {
    check_cost("max_cost", step_spent, most, step_cap)
        .map_err(|m| StepError::new(StepErrorKind::BudgetExhausted, m))?;
    check_cost("run_budget.max_cost", run.spent + step_spent, most, run.max_cost)
        .map_err(StepError::run_budget_exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(amount: f64) -> Cost {
        Cost::from_amount(amount)
    }

    #[test]
    fn a_call_fits_while_spent_plus_its_most_stays_within_the_cap() {
        assert_eq!(check_cost("max_cost", c(0.5), c(0.5), 1.0), Ok(()));
        let refused = check_cost("max_cost", c(0.5), c(0.500000001), 1.0).unwrap_err();
        assert_eq!(
            refused,
            "max_cost: 0.5 spent and the next model call may cost up to 0.500000001, over the limit of 1"
        );
        assert_eq!(check_cost("max_cost", c(5.0), c(5.0), 0.0), Ok(()), "0 is no cap");
    }

    #[test]
    fn an_unknown_cost_enforces_no_cap() {
        assert_eq!(check_cost("max_cost", Cost::UNKNOWN, c(1.0), 0.1), Ok(()));
        assert_eq!(check_cost("max_cost", c(1.0), Cost::UNKNOWN, 0.1), Ok(()));
    }

    #[test]
    fn the_step_cap_fails_the_attempt_and_the_run_cap_ends_the_run() {
        let run = RunSpend { spent: c(0.9), max_cost: 1.0 };
        let step = check_step_call(c(0.05), 0.1, &run, c(0.06)).unwrap_err();
        assert_eq!((step.kind, step.run_budget), (StepErrorKind::BudgetExhausted, false));
        assert!(step.message.starts_with("max_cost: 0.05 spent"), "{}", step.message);

        let whole = check_step_call(c(0.05), 0.0, &run, c(0.06)).unwrap_err();
        assert_eq!((whole.kind, whole.run_budget), (StepErrorKind::BudgetExhausted, true));
        assert!(whole.message.starts_with("run_budget.max_cost: 0.95 spent"), "{}", whole.message);

        assert_eq!(check_step_call(c(0.05), 0.0, &run, c(0.05)), Ok(()));
        let no_run_cap = RunSpend { spent: c(100.0), max_cost: 0.0 };
        assert_eq!(check_step_call(c(0.05), 0.0, &no_run_cap, c(1.0)), Ok(()));
    }
}
