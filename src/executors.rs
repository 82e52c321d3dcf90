//! The executor pool's bounds, its load and the counters behind it, apart from the actors that
//! run the pool (`actors::pool`): the config and the metrics read them without depending on the
//! actor system, and the sizing decision (`target_size`) is a pure function tested alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Default lower bound of the pool: a handful of workers kept warm so a lone run never waits
/// for one to start; idle workers cost a parked task each.
pub(crate) const DEFAULT_MIN_EXECUTORS: usize = 4;

/// Default upper bound of the pool. Steps wait on remote models, so a worker costs a parked task
/// and a few KiB while its step waits: 512 lets hundreds of runs have their steps in flight at
/// once (10,000 runs of a 3-step plan finish in ~3 s at this size in `stepwise bench
/// concurrency`), while a burst of wide plans still cannot become thousands of simultaneous
/// model requests and tool calls.
pub(crate) const DEFAULT_MAX_EXECUTORS: usize = 512;

/// Default time the pool must have had more workers than steps before it shrinks: long enough
/// to ride out the gaps between the waves of a busy service (plans, replans, synthesis), short
/// enough to give back a burst's workers within a minute.
pub(crate) const DEFAULT_SHRINK_AFTER: Duration = Duration::from_secs(30);

/// The largest pool ractor's factory accepts (it silently caps larger requests).
pub(crate) const MAX_EXECUTORS_LIMIT: usize = 1_000_000;

/// How small and how large the executor pool may be, and how soon it gives back idle workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    /// Workers kept even when nothing runs (at least 1).
    pub min: usize,
    /// Most workers, i.e. most step attempts running at once across all runs.
    pub max: usize,
    /// How long the pool must have had more workers than steps before it shrinks.
    pub shrink_after: Duration,
}

impl PoolBounds {
    /// Bounds with `min` raised to 1 and `max` to `min` (both capped at a million), so that any
    /// input gives a usable pool.
    pub fn new(min: usize, max: usize, shrink_after: Duration) -> Self {
        let min = min.clamp(1, MAX_EXECUTORS_LIMIT);
        Self { min, max: max.clamp(min, MAX_EXECUTORS_LIMIT), shrink_after }
    }

    /// A pool of exactly `n` workers (at least 1).
    pub fn fixed(n: usize) -> Self {
        Self::new(n, n, DEFAULT_SHRINK_AFTER)
    }

    /// `n` brought within the bounds.
    pub fn clamp(&self, n: usize) -> usize {
        n.clamp(self.min, self.max)
    }
}

impl Default for PoolBounds {
    fn default() -> Self {
        Self::new(DEFAULT_MIN_EXECUTORS, DEFAULT_MAX_EXECUTORS, DEFAULT_SHRINK_AFTER)
    }
}

/// The pool size to move to. `demand` is the most steps busy or queued at once recently (over
/// the current oversized period when the pool is larger than needed); `oversized_for` is how long
/// the pool has had more workers than that.
///
/// Demand above `current` grows the pool at once, to at least twice its size so a burst costs a
/// few resizes rather than one per step. A pool larger than `demand` for `bounds.shrink_after`
/// shrinks to `demand`; otherwise the size stays. The result is always within `bounds`.
pub(crate) fn target_size(
    current: usize,
    demand: usize,
    bounds: &PoolBounds,
    oversized_for: Duration,
) -> usize {
    let wanted = if demand > current {
        demand.max(current.saturating_mul(2))
    } else if demand < current && oversized_for >= bounds.shrink_after {
        demand
    } else {
        current
    };
    bounds.clamp(wanted)
}

/// A snapshot of an executor pool's load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorLoad {
    /// Workers in the pool.
    pub workers: usize,
    /// Workers running a step attempt.
    pub busy: usize,
    /// Step attempts handed to the pool that no worker has started yet.
    pub queued: usize,
}

impl ExecutorLoad {
    /// Workers waiting for a step (never negative: a worker that is being retired may still be
    /// finishing a step after the pool shrank).
    pub fn idle(&self) -> usize {
        self.workers.saturating_sub(self.busy)
    }
}

/// The pool's counters, shared by its handle, its workers, its capacity controller and the
/// metrics.
#[derive(Debug, Default)]
pub(crate) struct PoolGauges {
    pub(crate) queued: AtomicUsize,
    pub(crate) busy: AtomicUsize,
    pub(crate) workers: AtomicUsize,
    /// Highest busy + queued since the controller last looked, so a burst shorter than its
    /// 100 ms poll still counts as demand.
    pub(crate) peak_demand: AtomicUsize,
}

impl PoolGauges {
    /// Counters of a pool of `workers` with nothing running.
    pub(crate) fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self { workers: AtomicUsize::new(workers), ..Self::default() })
    }

    /// The current load.
    pub(crate) fn load(&self) -> ExecutorLoad {
        ExecutorLoad {
            workers: self.workers.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }

    /// Counts one more queued step; returns the demand (busy + queued) it makes.
    pub(crate) fn queue_one(&self) -> usize {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let demand = queued + self.busy.load(Ordering::Relaxed);
        self.peak_demand.fetch_max(demand, Ordering::Relaxed);
        demand
    }

    /// Takes back a queued step that never reached the factory.
    pub(crate) fn unqueue_one(&self) {
        decrement(&self.queued);
    }

    /// A worker took a queued step: it is busy until the returned guard is dropped.
    pub(crate) fn start_step(self: &Arc<Self>) -> BusyGuard {
        decrement(&self.queued);
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(self.clone())
    }

    /// The highest demand since the last call (at least the current one), and a fresh start.
    pub(crate) fn take_peak_demand(&self) -> usize {
        let now = self.busy.load(Ordering::Relaxed) + self.queued.load(Ordering::Relaxed);
        self.peak_demand.swap(0, Ordering::Relaxed).max(now)
    }

    /// The pool stopped: it has no workers and nothing will start.
    pub(crate) fn stopped(&self) {
        self.workers.store(0, Ordering::Relaxed);
        self.queued.store(0, Ordering::Relaxed);
    }
}

/// Saturating decrement: a counter never wraps below zero, whatever order events arrive in.
fn decrement(counter: &AtomicUsize) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
}

/// Marks a worker busy for as long as it lives. It is dropped when the step ends, and also when
/// the worker panics mid-step (ractor drops the handler's future), so a crash does not leave the
/// worker counted busy forever.
pub(crate) struct BusyGuard(Arc<PoolGauges>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        decrement(&self.0.busy);
    }
}
