//! What each live run of this process has spent, including its step attempts still running, so
//! that the money check before a step's model call sees the calls of the run's other steps.
//!
//! A step attempt's [`RunSpend`] is the run's cost when it started; steps running at once would
//! not see each other's calls with it alone, and could each spend what the run had left. Here
//! the tracker records what its run's state has counted (`settle`), and each check records what
//! its attempt has spent plus the most its next call can cost (a reservation), under one lock:
//! two attempts cannot both pass on the same money. An attempt run by another replica has no
//! ledger here and falls back to its job's [`RunSpend`].

use std::collections::HashMap;
use std::sync::Mutex;

use crate::llm::Cost;
use crate::plan::StepId;
use crate::run::budget::check_step_call;
use crate::run::{RunId, RunSpend, StepError};

/// Per run: what its state counts, and what each running attempt has spent or reserved.
#[derive(Debug, Default)]
pub(crate) struct RunSpending(Mutex<HashMap<RunId, Ledger>>);

#[derive(Debug, Default)]
struct Ledger {
    /// The run's cost as its state counts it (the attempts it has heard the end of).
    settled: Cost,
    /// Running attempts: spent so far plus the reservation of the call they were last allowed.
    running: HashMap<(StepId, u32), Cost>,
}

impl RunSpending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Ledger>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tracker's record after a transition: its state counts `settled`; attempts not in
    /// `running` have ended (their cost is in `settled` now). A run that ended is dropped.
    pub(crate) fn settle(&self, run: &RunId, settled: Cost, running: &[(StepId, u32)], ended: bool) {
        let mut runs = self.lock();
        if ended {
            runs.remove(run);
            return;
        }
        let ledger = runs.entry(run.clone()).or_default();
        ledger.settled = settled;
        ledger.running.retain(|key, _| running.contains(key));
    }

    /// Drops the run's ledger (its tracker stopped).
    pub(crate) fn forget(&self, run: &RunId) {
        self.lock().remove(run);
    }

    /// The check before a model call of `step`'s `attempt`, which has spent `spent` and whose
    /// call may cost up to `most`: against `step_cap` and the run's cap in `run`. Allowed, the
    /// call's `most` stays reserved until the attempt's next check or its end.
    pub(crate) fn check_and_reserve(
        &self,
        (run_id, step, attempt): (&RunId, &StepId, u32),
        run: &RunSpend,
        step_cap: f64,
        (spent, most): (Cost, Cost),
    ) -> Result<(), StepError> {
        let mut runs = self.lock();
        let Some(ledger) = runs.get_mut(run_id) else {
            return check_step_call(spent, step_cap, run, most);
        };
        let key = (step.clone(), attempt);
        let others =
            (ledger.running.iter()).filter(|(k, _)| **k != key).fold(Cost::ZERO, |sum, (_, c)| sum + *c);
        let run_now = RunSpend { spent: ledger.settled + others, max_cost: run.max_cost };
        check_step_call(spent, step_cap, &run_now, most)?;
        ledger.running.insert(key, spent + most);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(amount: f64) -> Cost {
        Cost::from_amount(amount)
    }

    #[test]
    fn attempts_running_at_once_see_each_others_reservations() {
        let ledger = RunSpending::default();
        let run = RunId("r".into());
        let (a, b) = (StepId::from("a"), StepId::from("b"));
        ledger.settle(&run, c(0.2), &[(a.clone(), 1), (b.clone(), 1)], false);
        // Both started when the run had spent 0.2 of 1.0; each call may cost up to 0.3.
        let cap = RunSpend { spent: c(0.2), max_cost: 1.0 };
        assert_eq!(ledger.check_and_reserve((&run, &a, 1), &cap, 0.0, (Cost::ZERO, c(0.3))), Ok(()));
        assert_eq!(ledger.check_and_reserve((&run, &b, 1), &cap, 0.0, (Cost::ZERO, c(0.3))), Ok(()));
        // a's next call: 0.2 settled + b's 0.3 reserved + a's 0.25 spent + 0.3 > 1.0.
        let refused = ledger.check_and_reserve((&run, &a, 1), &cap, 0.0, (c(0.25), c(0.3))).unwrap_err();
        assert!(refused.run_budget, "{refused:?}");
        // b ended and its 0.1 is in the state: its reservation is released.
        ledger.settle(&run, c(0.3), &[(a.clone(), 1)], false);
        assert_eq!(ledger.check_and_reserve((&run, &a, 1), &cap, 0.0, (c(0.25), c(0.3))), Ok(()));
    }

    #[test]
    fn without_a_ledger_the_jobs_own_view_is_checked() {
        let ledger = RunSpending::default();
        let run = RunId("remote".into());
        let cap = RunSpend { spent: c(0.9), max_cost: 1.0 };
        let refused = ledger.check_and_reserve((&run, &"a".into(), 1), &cap, 0.0, (Cost::ZERO, c(0.2)));
        assert!(refused.unwrap_err().run_budget);
        ledger.settle(&run, c(0.0), &[], false);
        ledger.forget(&run);
        ledger.settle(&run, c(0.0), &[], true);
        assert!(ledger.lock().is_empty());
    }
}
