//! What the actors make of a model call waiting for its unavailable provider
//! ([`crate::llm::outage`]): the run's `ProviderWaiting` / `ProviderResumed` events (sent to the
//! run's tracker, which records them through its machine), the `stepwise.provider.waiting`
//! gauge, and, for a step, a [`WaitClock`] that stops the step's wall-clock budget meanwhile.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use super::messages::EventSink;
use crate::llm::AgentRole;
use crate::llm::outage::{OutageObserver, observed};
use crate::plan::StepId;
use crate::run::{EventKind, RunId};

/// Time a step spent waiting for providers, so that its wall-clock budget leaves it out.
#[derive(Debug, Default)]
pub(crate) struct WaitClock(Mutex<Waited>);

/// Waits so far, and the one going on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Waited {
    total: Duration,
    since: Option<Instant>,
}

impl WaitClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waited> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A wait started at `now` (a wait already going on goes on).
    pub(crate) fn start(&self, now: Instant) {
        self.lock().since.get_or_insert(now);
    }

    /// The wait going on ended at `now`.
    pub(crate) fn stop(&self, now: Instant) {
        let mut w = self.lock();
        if let Some(since) = w.since.take() {
            w.total += now.saturating_duration_since(since);
        }
    }

    /// Time spent waiting up to `now`, the wait going on included.
    pub(crate) fn waited(&self, now: Instant) -> Duration {
        let w = *self.lock();
        w.total + w.since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// When a budget of `budget` started at `start` runs out, as seen at `now`: waiting moves
    /// the end later by as long as it lasts.
    pub(crate) fn deadline(&self, start: Instant, budget: Duration, now: Instant) -> Instant {
        start + budget + self.waited(now)
    }
}

/// The step's budget ran out (time spent waiting for providers not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BudgetElapsed;

/// Runs `fut` for at most `budget` of time not spent waiting for a provider (per `clock`).
pub(crate) async fn within_budget<F: Future>(
    budget: Duration,
    clock: &WaitClock,
    fut: F,
) -> Result<F::Output, BudgetElapsed> {
    let start = Instant::now();
    tokio::pin!(fut);
    loop {
        let deadline = clock.deadline(start, budget, Instant::now());
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(deadline) => {
                // A wait that went on meanwhile moved the deadline: sleep on.
                if Instant::now() >= clock.deadline(start, budget, Instant::now()) {
                    return Err(BudgetElapsed);
                }
            }
        }
    }
}

/// Tells a run's tracker (and the metrics, and a step's clock) about one call's provider waits.
pub(crate) struct TrackerWatch {
    sink: EventSink,
    role: AgentRole,
    step: Option<StepId>,
    attempt: Option<u32>,
    clock: Option<Arc<WaitClock>>,
}

impl TrackerWatch {
    /// For a planner, replanner or synthesizer call of `run`: the events go to the run's live
    /// tracker.
    pub(crate) fn service(shared: &Shared, run: &RunId, role: AgentRole) -> Self {
        let sink = shared.runs.get(run).and_then(|c| c.tracker).map_or(EventSink::None, EventSink::Tracker);
        Self { sink, role, step: None, attempt: None, clock: None }
    }

    /// For an executor or verifier call of a step attempt, whose budget `clock` keeps.
    pub(crate) fn step(
        sink: EventSink,
        role: AgentRole,
        step: StepId,
        attempt: u32,
        clock: Arc<WaitClock>,
    ) -> Self {
        Self { sink, role, step: Some(step), attempt: Some(attempt), clock: Some(clock) }
    }

    /// Runs `fut` with this watch told of its provider waits.
    pub(crate) async fn watch<F: Future>(self, fut: F) -> F::Output {
        observed(Arc::new(self), fut).await
    }

    fn send(&self, kind: EventKind) {
        self.sink.send(kind);
    }
}

impl OutageObserver for TrackerWatch {
    fn waiting(&self, provider: &str, last_error: &str) {
        crate::telemetry::metrics::global().provider_waiting(self.role.as_str(), 1);
        if let Some(clock) = &self.clock {
            clock.start(Instant::now());
        }
        self.send(EventKind::ProviderWaiting {
            role: self.role,
            step: self.step.clone(),
            attempt: self.attempt,
            provider: provider.to_owned(),
            last_error: crate::text::clip(last_error, 500),
        });
    }

    fn stopped_waiting(&self, waited: Duration, answered: bool) {
        crate::telemetry::metrics::global().provider_waiting(self.role.as_str(), -1);
        if let Some(clock) = &self.clock {
            clock.stop(Instant::now());
        }
        if answered {
            self.send(EventKind::ProviderResumed {
                role: self.role,
                step: self.step.clone(),
                attempt: self.attempt,
                waited_ms: waited.as_millis() as u64,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waiting_moves_the_budgets_end_by_as_long_as_it_lasts() {
        let t0 = Instant::now();
        let clock = WaitClock::default();
        assert_eq!(clock.deadline(t0, ms(1000), t0 + ms(10)), t0 + ms(1000));
        clock.start(t0 + ms(100));
        // While the wait goes on, the end moves with the clock.
        assert_eq!(clock.deadline(t0, ms(1000), t0 + ms(400)), t0 + ms(1300));
        clock.start(t0 + ms(300)); // a nested start changes nothing
        clock.stop(t0 + ms(600));
        assert_eq!(clock.deadline(t0, ms(1000), t0 + ms(5000)), t0 + ms(1500));
        clock.stop(t0 + ms(700)); // a stop without a wait changes nothing
        clock.start(t0 + ms(800));
        clock.stop(t0 + ms(900));
        assert_eq!(clock.waited(t0 + ms(5000)), ms(600));
    }

    #[tokio::test]
    async fn a_step_waiting_for_its_provider_outlives_its_budget() {
        let clock = Arc::new(WaitClock::default());
        let c = clock.clone();
        // 100 ms of work, a 600 ms wait, 100 ms more work: within a 300 ms budget.
        let work = async move {
            tokio::time::sleep(ms(100)).await;
            c.start(Instant::now());
            tokio::time::sleep(ms(600)).await;
            c.stop(Instant::now());
            tokio::time::sleep(ms(100)).await;
            "done"
        };
        assert_eq!(within_budget(ms(300), &clock, work).await, Ok("done"));
        let stuck = async { tokio::time::sleep(ms(600)).await };
        let started = Instant::now();
        assert_eq!(within_budget(ms(300), &WaitClock::default(), stuck).await, Err(BudgetElapsed));
        assert!(started.elapsed() < ms(550));
    }
}
