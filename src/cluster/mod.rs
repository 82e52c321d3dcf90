//! Several replicas on one Postgres store (feature `postgres`): any replica takes submissions,
//! drives the runs whose leases it holds, and runs any run's steps.
//!
//! - **Runs are leased.** The replica that submits a run holds its lease (owner, epoch, expiry
//!   in the `runs` row) and drives it; a heartbeat every third of `lease_ttl` pushes the expiry
//!   on. A lease that expired (its replica died or froze) is taken over by whichever replica
//!   looks first (`FOR UPDATE SKIP LOCKED`): the epoch goes up, the run's queued steps and inbox
//!   are cleared, and a tracker resumes it from its log.
//! - **Steps are queued.** A tracker here does not run steps itself: it queues them
//!   (`step_queue`, the job with its trace context), and every replica's executors claim them,
//!   fairly across runs, while they have free workers. A claim is a lease too, renewed by the
//!   heartbeat; an expired one is claimed again (tools are called at least once).
//! - **Reports come back through the database**: tool events and the report go to the run's
//!   inbox and wake its owner (`LISTEN/NOTIFY`, with polling as the fallback).
//! - **Fencing.** An append checks the run's lease epoch in its transaction
//!   ([`PostgresStore::append_fenced`]), and a report checks its claim token in its transaction,
//!   so a replica that froze past its leases and comes back cannot write to a run or report a
//!   step that was taken over.
//!
//! The design record is `docs/architecture.md` ("Several replicas").

mod control;
mod decide;
mod fence;
mod listen;
mod metrics;
mod owner;
mod queue;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::ActorRef;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::actors::Shared;
use crate::actors::messages::{ControlError, StepJob, SupervisorMsg};
use crate::actors::replication::{ControlRequest, Replication};
use crate::config::ClusterConfig;
use crate::plan::StepId;
use crate::run::RunId;
use crate::store::postgres::PostgresStore;
use crate::store::{RunStore, StoreError};

pub use fence::FencedStore;

/// This process as one replica of several sharing a Postgres store. Give it to
/// [`RuntimeBuilder::replica`](crate::RuntimeBuilder::replica); it becomes the runtime's store
/// and takes part in the lease and queue protocol for as long as the runtime runs.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

/// What the replica's tasks share.
pub(crate) struct Inner {
    /// This replica's name in leases.
    id: String,
    pg: PostgresStore,
    ttl: Duration,
    poll: Duration,
    /// The epoch of each run whose lease this replica holds.
    leases: Mutex<HashMap<RunId, i64>>,
    /// The queue rows this replica's executors claimed.
    claims: Mutex<HashMap<i64, worker::Claim>>,
    /// Most claims at once: the executor pool's maximum.
    max_claims: OnceLock<usize>,
    /// Wakes the step claimer (a step was queued, or a worker freed up).
    steps_ready: Notify,
    /// Wakes the inbox reader: an executor reported to a run of this replica.
    inbox_ready: Notify,
    /// Wakes the control server: an approve, reject or cancel came for a run of this replica.
    control_ready: Notify,
    /// Event streams waiting for a run's log to grow.
    watchers: Mutex<HashMap<RunId, watch::Sender<()>>>,
    /// Enqueue and withdraw, in the order the trackers asked.
    outbox: tokio::sync::mpsc::UnboundedSender<queue::Outgoing>,
    outbox_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<queue::Outgoing>>>,
    /// The runtime, once attached.
    runtime: OnceLock<Attached>,
    stop: CancellationToken,
    metrics: metrics::ReplicaMetrics,
}

/// The runtime a replica serves.
struct Attached {
    shared: Weak<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
}

/// Connections of a replica's pool: appends, claims, reports, heartbeats and the listener.
const CONNECTIONS: u32 = 16;

impl Replica {
    /// Connects to the Postgres store at `url` as a replica with the `[cluster]` settings. Its
    /// sessions end when idle inside a transaction for a lease TTL, so that a replica frozen
    /// mid-transaction (a GC pause, SIGSTOP) cannot keep a run locked beyond its lease.
    pub async fn connect(url: &str, config: &ClusterConfig) -> Result<Self, StoreError> {
        let ttl = Duration::from_secs(config.lease_ttl_secs.max(1));
        let store = PostgresStore::connect_with(url, CONNECTIONS, Some(ttl)).await?;
        Ok(Self::new(store, config))
    }

    /// This process as a replica on `store`, with the `[cluster]` settings.
    pub fn new(store: PostgresStore, config: &ClusterConfig) -> Self {
        let id = config.replica_id.clone().unwrap_or_else(default_replica_id);
        let (outbox, rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Inner {
            metrics: metrics::ReplicaMetrics::new(&id),
            id,
            pg: store,
            ttl: Duration::from_secs(config.lease_ttl_secs.max(1)),
            poll: Duration::from_millis(config.poll_interval_ms.max(10)),
            leases: Mutex::default(),
            claims: Mutex::default(),
            max_claims: OnceLock::new(),
            steps_ready: Notify::new(),
            inbox_ready: Notify::new(),
            control_ready: Notify::new(),
            watchers: Mutex::default(),
            outbox,
            outbox_rx: Mutex::new(Some(rx)),
            runtime: OnceLock::new(),
            stop: CancellationToken::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// This replica's name in leases.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The store a runtime on this replica writes through: Postgres, fenced by this replica's
    /// leases.
    pub fn store(&self) -> Arc<dyn RunStore> {
        Arc::new(FencedStore::new(self.inner.clone()))
    }

    /// Starts the replica's tasks for the runtime whose actors are `shared` and `supervisor`,
    /// and makes it the runtime's way to other replicas.
    pub(crate) fn attach(
        &self,
        shared: &Arc<Shared>,
        supervisor: ActorRef<SupervisorMsg>,
        max_claims: usize,
    ) {
        let attached = Attached { shared: Arc::downgrade(shared), supervisor };
        if self.inner.runtime.set(attached).is_err() {
            tracing::error!(replica = %self.inner.id, "a replica serves one runtime; this one is already attached");
            return;
        }
        let _ = self.inner.max_claims.set(max_claims.max(1));
        let _ = shared.replication.set(Arc::new(self.clone()));
        let rx = self.inner.outbox_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        listen::spawn(self.inner.clone());
        owner::spawn(self.inner.clone());
        worker::spawn(self.inner.clone());
        if let Some(rx) = rx {
            tokio::spawn(queue::run_outbox(self.inner.clone(), rx));
        }
        tracing::info!(replica = %self.inner.id, ttl = ?self.inner.ttl, "replica started");
    }
}

impl Inner {
    fn shared(&self) -> Option<Arc<Shared>> {
        self.runtime.get().and_then(|a| a.shared.upgrade())
    }

    fn pg_pool(&self) -> sqlx::postgres::PgPool {
        self.pg.pool().clone()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, i64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<i64, worker::Claim>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run's log grew: wake its watchers here, if any.
    fn changed(&self, run: &str) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let run = RunId(run.to_owned());
        if let Some(tx) = watchers.get(&run)
            && tx.send(()).is_err()
        {
            watchers.remove(&run);
        }
    }
}

impl Replication for Replica {
    fn enqueue(&self, job: StepJob) {
        let _ = self.inner.outbox.send(queue::Outgoing::Enqueue(Box::new(job)));
    }

    fn withdraw(&self, run: &RunId, step: Option<StepId>) {
        let _ = self.inner.outbox.send(queue::Outgoing::Withdraw(run.clone(), step));
    }

    fn finished(&self, run: &RunId) {
        self.inner.held().remove(run);
    }

    fn control(&self, run: &RunId, request: ControlRequest) -> BoxFuture<'static, Result<(), ControlError>> {
        Box::pin(control::ask(self.inner.clone(), run.clone(), request))
    }

    fn changes(&self, run: &RunId) -> watch::Receiver<()> {
        let mut watchers = self.inner.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers.entry(run.clone()).or_insert_with(|| watch::channel(()).0).subscribe()
    }

    fn take_over(&self) -> BoxFuture<'_, Result<Vec<RunId>, StoreError>> {
        Box::pin(owner::take_over(&self.inner))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(owner::release(&self.inner))
    }

    fn halt(&self) {
        self.inner.stop.cancel();
    }
}

/// `<hostname>-<pid>`: unique among the replicas of one host, readable in logs.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "stepwise".into());
    format!("{host}-{}", std::process::id())
}
