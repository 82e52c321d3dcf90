//! Per-replica metrics: steps claimed, leases lost and taken over, the queue's depth and the age
//! of its oldest ready step. Recorded in the process-wide meter provider, so `/metrics` and OTLP
//! carry them with the rest, labelled `replica`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, MeterProvider as _};

/// The instruments of one replica.
pub(super) struct ReplicaMetrics {
    label: [KeyValue; 1],
    claimed: Counter<u64>,
    lost: Counter<u64>,
    taken: Counter<u64>,
    /// Ready steps, and the oldest one's age in milliseconds, as of the last heartbeat.
    queue: Arc<(AtomicU64, AtomicU64)>,
}

impl ReplicaMetrics {
    pub(super) fn new(replica: &str) -> Self {
        let meter = crate::telemetry::metrics::global().provider().meter("stepwise");
        let label = [KeyValue::new("replica", replica.to_owned())];
        let queue: Arc<(AtomicU64, AtomicU64)> = Arc::default();
        let (q, l) = (queue.clone(), label.clone());
        meter
            .u64_observable_gauge("stepwise.cluster.queue_depth")
            .with_unit("{step}")
            .with_description("Steps in the shared queue that no replica has claimed")
            .with_callback(move |g| g.observe(q.0.load(Ordering::Relaxed), &l))
            .build();
        let (q, l) = (queue.clone(), label.clone());
        meter
            .f64_observable_gauge("stepwise.cluster.queue_oldest_ready")
            .with_unit("s")
            .with_description("How long the oldest unclaimed step in the shared queue has waited")
            .with_callback(move |g| g.observe(q.1.load(Ordering::Relaxed) as f64 / 1000.0, &l))
            .build();
        let counter = |name: &'static str, description: &'static str| {
            meter.u64_counter(name).with_description(description).build()
        };
        let metrics = Self {
            claimed: counter("stepwise.cluster.steps_claimed", "Steps this replica's executors claimed"),
            lost: counter("stepwise.cluster.leases_lost", "Run leases this replica lost to another"),
            taken: counter("stepwise.cluster.leases_taken_over", "Run leases this replica took over"),
            label,
            queue,
        };
        // Shown as 0 from the start, not missing until the first event.
        for c in [&metrics.claimed, &metrics.lost, &metrics.taken] {
            c.add(0, &metrics.label);
        }
        metrics
    }

    pub(super) fn claimed(&self, n: usize) {
        if n > 0 {
            self.claimed.add(n as u64, &self.label);
        }
    }

    pub(super) fn lease_lost(&self) {
        self.lost.add(1, &self.label);
    }

    pub(super) fn taken_over(&self) {
        self.taken.add(1, &self.label);
    }

    pub(super) fn queue(&self, depth: u64, oldest_secs: f64) {
        self.queue.0.store(depth, Ordering::Relaxed);
        self.queue.1.store((oldest_secs * 1000.0) as u64, Ordering::Relaxed);
    }
}
