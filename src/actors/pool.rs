//! The executor pool: a ractor factory of [`ExecutorWorker`]s whose size follows the work.
//!
//! A worker runs one step attempt at a time and spends nearly all of it waiting on a remote
//! model, so the number of steps in flight must follow the number of steps ready to run, not
//! the number of CPUs. [`ExecutorPool::dispatch`] counts each step as queued and, when the steps
//! busy or queued outnumber the workers, asks the factory to grow at once
//! (`FactoryMessage::AdjustWorkerPool`). The factory also polls a capacity controller every
//! 100 ms, which grows the pool the same way and shrinks it once it has had more workers than
//! steps for [`PoolBounds::shrink_after`]. Both decide through the pure `target_size`
//! (in `crate::executors`, with the pool's bounds and counters).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::factory::{
    Factory, FactoryArguments, FactoryMessage, WorkerCapacityController, queues, routing, worker_builder,
};
use ractor::{Actor, ActorCell, ActorId, ActorRef, SpawnErr};

use super::Shared;
use super::executor::{ExecutorWorker, JobKey};
use super::messages::ExecutorMsg;

/// Why a step could not be handed to the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PoolError {
    /// The factory actor has stopped (the runtime is shutting down).
    #[error("the executor pool has stopped: the step was not started")]
    Stopped,
}

pub(crate) use crate::executors::{ExecutorLoad, PoolBounds, PoolGauges, target_size};

/// When the pool started having more workers than steps, and the most steps seen since.
#[derive(Debug, Default)]
struct OversizedPeriod {
    since: Option<Instant>,
    peak: usize,
    /// The pool size the period was measured against; a resize starts a new period.
    size: usize,
}

impl OversizedPeriod {
    /// Records `demand` against a pool of `current` at `now`; returns the demand to size for and
    /// how long the pool has been oversized.
    fn observe(&mut self, current: usize, demand: usize, now: Instant) -> (usize, Duration) {
        if demand >= current || current != self.size {
            *self = Self { since: None, peak: 0, size: current };
            if demand >= current {
                return (demand, Duration::ZERO);
            }
        }
        let since = *self.since.get_or_insert(now);
        self.peak = self.peak.max(demand);
        (self.peak, now.duration_since(since))
    }
}

/// The factory's capacity controller: resizes the pool from its gauges on every poll.
struct Controller {
    gauges: Arc<PoolGauges>,
    bounds: PoolBounds,
    period: OversizedPeriod,
}

impl Controller {
    fn decide(&mut self, current: usize, now: Instant) -> usize {
        let demand = self.gauges.take_peak_demand();
        let (demand, oversized_for) = self.period.observe(current, demand, now);
        let target = target_size(current, demand, &self.bounds, oversized_for);
        self.gauges.workers.store(target, Ordering::Relaxed);
        target
    }
}

impl WorkerCapacityController for Controller {
    fn get_pool_size(&mut self, current: usize) -> BoxFuture<'_, usize> {
        let size = self.decide(current, Instant::now());
        Box::pin(std::future::ready(size))
    }
}

type ExecutorFactory = Factory<
    JobKey,
    ExecutorMsg,
    (),
    ExecutorWorker,
    routing::QueuerRouting<JobKey, ExecutorMsg>,
    queues::DefaultQueue<JobKey, ExecutorMsg>,
>;

/// A handle on the executor pool: the factory and its gauges. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ExecutorPool {
    factory: ActorRef<FactoryMessage<JobKey, ExecutorMsg>>,
    gauges: Arc<PoolGauges>,
    bounds: PoolBounds,
}

impl ExecutorPool {
    /// Starts the pool's factory, linked to `supervisor`, with `bounds.min` workers, and
    /// registers its gauges with the process metrics.
    pub(crate) async fn spawn(
        shared: Arc<Shared>,
        bounds: PoolBounds,
        supervisor: ActorCell,
    ) -> Result<Self, SpawnErr> {
        let gauges = PoolGauges::new(bounds.min);
        let worker_gauges = gauges.clone();
        let controller = Controller { gauges: gauges.clone(), bounds, period: OversizedPeriod::default() };
        let args = FactoryArguments::builder()
            .worker_builder(Box::new(worker_builder(move |_wid| {
                (ExecutorWorker { shared: shared.clone(), gauges: worker_gauges.clone() }, ())
            })))
            .queue(Default::default())
            .router(Default::default())
            .num_initial_workers(bounds.min)
            .capacity_controller(Box::new(controller))
            .build();
        let (factory, _) = Actor::spawn_linked(None, ExecutorFactory::default(), args, supervisor).await?;
        crate::telemetry::metrics::global().watch_executors(&gauges);
        Ok(Self { factory, gauges, bounds })
    }

    /// Hands a step attempt to the pool, growing it first if the steps busy or queued now
    /// outnumber its workers.
    pub(crate) fn dispatch(&self, key: JobKey, msg: ExecutorMsg) -> Result<(), PoolError> {
        let demand = self.gauges.queue_one();
        self.grow_for(demand);
        self.factory.dispatch(key, msg).map_err(|_| {
            self.gauges.unqueue_one();
            PoolError::Stopped
        })
    }

    /// Asks the factory to grow when `demand` exceeds the workers. The compare-exchange lets one
    /// of many concurrent dispatches send the request, so a burst sends a few, not one per step.
    fn grow_for(&self, demand: usize) {
        let current = self.gauges.workers.load(Ordering::Relaxed);
        if demand <= current {
            return;
        }
        let target = target_size(current, demand, &self.bounds, Duration::ZERO);
        if target > current
            && self
                .gauges
                .workers
                .compare_exchange(current, target, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // A stopped factory refuses the step itself, which the caller hears about.
            let _ = self.factory.cast(FactoryMessage::AdjustWorkerPool(target));
        }
    }

    /// The factory's actor id (the supervisor recognises the pool's death by it).
    pub(crate) fn get_id(&self) -> ActorId {
        self.factory.get_id()
    }

    /// The pool's load now.
    pub(crate) fn load(&self) -> ExecutorLoad {
        self.gauges.load()
    }

    /// Records that the pool stopped, so its gauges stop reporting workers.
    pub(crate) fn stopped(&self) {
        self.gauges.stopped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executors::{
        DEFAULT_MAX_EXECUTORS, DEFAULT_MIN_EXECUTORS, DEFAULT_SHRINK_AFTER, MAX_EXECUTORS_LIMIT,
    };

    const SECOND: Duration = Duration::from_secs(1);

    fn bounds(min: usize, max: usize) -> PoolBounds {
        PoolBounds::new(min, max, Duration::from_secs(30))
    }

    #[test]
    fn bounds_are_made_usable() {
        assert_eq!(PoolBounds::new(0, 0, SECOND), PoolBounds { min: 1, max: 1, shrink_after: SECOND });
        assert_eq!(PoolBounds::new(8, 2, SECOND).max, 8, "max is raised to min");
        assert_eq!(PoolBounds::new(1, usize::MAX, SECOND).max, MAX_EXECUTORS_LIMIT);
        assert_eq!(PoolBounds::fixed(3), PoolBounds::new(3, 3, DEFAULT_SHRINK_AFTER));
        let d = PoolBounds::default();
        assert_eq!((d.min, d.max), (DEFAULT_MIN_EXECUTORS, DEFAULT_MAX_EXECUTORS));
    }

    #[test]
    fn demand_above_the_pool_grows_it_at_least_twofold_up_to_max() {
        let b = bounds(4, 512);
        assert_eq!(target_size(4, 5, &b, Duration::ZERO), 8, "a step over: double");
        assert_eq!(target_size(4, 100, &b, Duration::ZERO), 100, "a burst: all of it at once");
        assert_eq!(target_size(300, 301, &b, Duration::ZERO), 512, "never above max");
        assert_eq!(target_size(512, 10_000, &b, Duration::ZERO), 512);
    }

    #[test]
    fn a_busy_or_briefly_oversized_pool_keeps_its_size() {
        let b = bounds(4, 512);
        assert_eq!(target_size(64, 64, &b, Duration::from_secs(3600)), 64, "fully used");
        assert_eq!(target_size(64, 10, &b, Duration::from_secs(29)), 64, "not oversized for long enough");
        assert_eq!(target_size(4, 0, &b, Duration::from_secs(3600)), 4, "never below min");
    }

    #[test]
    fn an_oversized_pool_shrinks_to_its_recent_peak_after_the_idle_period() {
        let b = bounds(4, 512);
        assert_eq!(target_size(64, 10, &b, Duration::from_secs(30)), 10);
        assert_eq!(target_size(64, 0, &b, Duration::from_secs(30)), 4, "idle: back to min");
    }

    #[test]
    fn sizes_outside_changed_bounds_are_brought_back() {
        assert_eq!(target_size(1, 0, &bounds(4, 8), Duration::ZERO), 4);
        assert_eq!(target_size(100, 100, &bounds(4, 8), Duration::ZERO), 8);
    }

    /// The controller as the factory drives it: a burst grows the pool, it stays while the
    /// oversized period is shorter than `shrink_after`, then shrinks to the minimum.
    #[test]
    fn the_controller_shrinks_back_to_min_after_idling() {
        let gauges = PoolGauges::new(4);
        let mut c = Controller { gauges: gauges.clone(), bounds: bounds(4, 512), period: Default::default() };
        let t0 = Instant::now();
        for _ in 0..40 {
            gauges.queue_one();
        }
        let grown = c.decide(4, t0);
        assert_eq!(grown, 40);
        let guards: Vec<_> = (0..40).map(|_| gauges.start_step()).collect();
        assert_eq!(c.decide(grown, t0 + SECOND), 40, "all busy");
        drop(guards);
        assert_eq!(c.decide(40, t0 + 2 * SECOND), 40, "idle, but not for long");
        assert_eq!(c.decide(40, t0 + 31 * SECOND), 40, "29 s idle");
        assert_eq!(c.decide(40, t0 + 32 * SECOND), 4, "30 s idle: back to min");
        assert_eq!(gauges.load(), ExecutorLoad { workers: 4, busy: 0, queued: 0 });
    }

    #[test]
    fn the_controller_sizes_for_the_peak_of_the_oversized_period() {
        let gauges = PoolGauges::new(4);
        let mut c = Controller { gauges: gauges.clone(), bounds: bounds(4, 512), period: Default::default() };
        let t0 = Instant::now();
        assert_eq!(c.decide(100, t0), 100, "idle pool: the period starts");
        // A 20-step burst between two polls counts, though it is over by the next one.
        let burst: Vec<_> = (0..20).map(|_| (gauges.queue_one(), gauges.start_step())).collect();
        drop(burst);
        assert_eq!(c.decide(100, t0 + 10 * SECOND), 100);
        assert_eq!(c.decide(100, t0 + 30 * SECOND), 20, "shrinks to the burst, not to min");
    }

    #[test]
    fn a_resize_by_dispatch_restarts_the_oversized_period() {
        let mut p = OversizedPeriod::default();
        let t0 = Instant::now();
        assert_eq!(p.observe(8, 2, t0), (2, Duration::ZERO));
        assert_eq!(p.observe(8, 2, t0 + 20 * SECOND), (2, 20 * SECOND));
        assert_eq!(p.observe(16, 2, t0 + 25 * SECOND), (2, Duration::ZERO), "grown meanwhile");
        assert_eq!(p.observe(16, 16, t0 + 26 * SECOND), (16, Duration::ZERO), "fully used");
    }

    #[test]
    fn the_busy_count_survives_a_panicking_step() {
        let gauges = PoolGauges::new(1);
        gauges.queue_one();
        let guard = gauges.start_step();
        assert_eq!(gauges.load(), ExecutorLoad { workers: 1, busy: 1, queued: 0 });
        let panicked = std::panic::catch_unwind(move || {
            let _guard = guard;
            panic!("step bug");
        });
        assert!(panicked.is_err());
        assert_eq!(gauges.load(), ExecutorLoad { workers: 1, busy: 0, queued: 0 });
        assert_eq!(gauges.load().idle(), 1);
    }

    #[test]
    fn counters_never_wrap() {
        let gauges = PoolGauges::new(2);
        gauges.unqueue_one();
        drop(gauges.start_step());
        assert_eq!(gauges.load(), ExecutorLoad { workers: 2, busy: 0, queued: 0 });
        gauges.stopped();
        assert_eq!(gauges.load().workers, 0);
    }
}
