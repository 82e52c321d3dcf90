//! The claimer: while this replica's executors have room, claim ready steps from the queue, run
//! each on the local executor pool, and send its tool events and report to the run's owner.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::queue::{self, Claimed, InboxMessage};
use super::{Inner, decide};
use crate::actors::messages::{EventSink, ExecutorMsg, StepReport};
use crate::run::{EventKind, StepError, StepErrorKind, Usage};

/// A step this replica's executors claimed.
pub(super) struct Claim {
    /// The claim's token: a report must name it.
    pub token: i64,
    /// Stops the attempt (its claim was lost, or the replica stops).
    pub cancel: CancellationToken,
}

/// Starts the claimer task.
pub(super) fn spawn(inner: Arc<Inner>) {
    tokio::spawn(async move {
        let mut failures = 0;
        loop {
            let max = inner.max_claims.get().copied().unwrap_or(1);
            let want = decide::claim_count(max, inner.claims().len(), CLAIM_BATCH);
            let mut got = 0;
            if want > 0 {
                match queue::claim(&inner.pg_pool(), &inner.id, want, inner.ttl).await {
                    Ok(claimed) => {
                        failures = 0;
                        got = claimed.len();
                        inner.metrics.claimed(got);
                        for c in claimed {
                            start(&inner, c);
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(replica = %inner.id, error = %e, "cannot claim steps");
                        }
                        tokio::time::sleep(decide::backoff(failures)).await;
                    }
                }
            }
            if got == want && want > 0 {
                continue; // there may be more
            }
            tokio::select! {
                _ = inner.stop.cancelled() => return,
                _ = inner.steps_ready.notified() => {}
                _ = tokio::time::sleep(inner.poll) => {}
            }
        }
    });
}

/// Most steps claimed in one query.
const CLAIM_BATCH: usize = 64;

/// Runs a claimed step on the local pool, forwarding its events, then reports.
fn start(inner: &Arc<Inner>, c: Claimed) {
    let cancel = inner.stop.child_token();
    inner.claims().insert(c.id, Claim { token: c.token, cancel: cancel.clone() });
    let inner = inner.clone();
    tokio::spawn(async move {
        let claim = (c.id, c.token);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut job = c.job;
        job.cancel = cancel;
        job.events = EventSink::Channel(events_tx);
        let (step, attempt) = (job.step.id.clone(), job.attempt);
        let key = format!("{}/{step}/{attempt}", job.run_id);
        let (tx, rx) = ractor::concurrency::oneshot();
        let sent = inner
            .shared()
            .and_then(|s| s.services())
            .map(|s| s.executors.dispatch(key, ExecutorMsg::Run(Box::new(job), tx.into())));
        let report = if matches!(sent, Some(Ok(()))) {
            forward_until_report(&inner, claim, &mut events, rx).await
        } else {
            None
        };
        let report = report.unwrap_or_else(|| {
            let error =
                StepError::new(StepErrorKind::ExecutorCrashed, "the executor stopped before reporting");
            StepReport { step, attempt, outcome: Err(error), usage: Usage::default() }
        });
        let mut last: Vec<InboxMessage> = drain(&mut events);
        last.push(InboxMessage::Finished(report));
        send(&inner, claim, &last, true).await;
        inner.claims().remove(&claim.0);
        inner.steps_ready.notify_one();
    });
}

/// Sends tool events to the owner as they come, until the attempt's report; None when the
/// executor died without one.
async fn forward_until_report(
    inner: &Arc<Inner>,
    claim: (i64, i64),
    events: &mut mpsc::UnboundedReceiver<EventKind>,
    mut report: ractor::concurrency::OneshotReceiver<StepReport>,
) -> Option<StepReport> {
    loop {
        tokio::select! {
            r = &mut report => return r.ok(),
            Some(first) = events.recv() => {
                let mut batch = vec![InboxMessage::Tool(first)];
                batch.extend(drain(events));
                if !send(inner, claim, &batch, false).await {
                    // The claim was lost: the attempt runs on elsewhere; stop it here.
                    if let Some(c) = inner.claims().get(&claim.0) {
                        c.cancel.cancel();
                    }
                }
            }
        }
    }
}

fn drain(events: &mut mpsc::UnboundedReceiver<EventKind>) -> Vec<InboxMessage> {
    std::iter::from_fn(|| events.try_recv().ok()).map(InboxMessage::Tool).collect()
}

/// Sends to the run's inbox, waiting out a store outage; false when the claim is no longer ours.
async fn send(inner: &Arc<Inner>, claim: (i64, i64), messages: &[InboxMessage], done: bool) -> bool {
    let mut failures = 0;
    loop {
        match queue::report(&inner.pg_pool(), &inner.id, claim, messages, done).await {
            Ok(true) => return true,
            Ok(false) => {
                tracing::info!(replica = %inner.id, row = claim.0, "step claim was taken over; its report is dropped");
                return false;
            }
            Err(e) if e.is_transient() && !inner.stop.is_cancelled() => {
                failures += 1;
                tokio::time::sleep(decide::backoff(failures)).await;
            }
            Err(e) => {
                tracing::error!(replica = %inner.id, row = claim.0, error = %e, "could not report a step; it runs again when its claim expires");
                return false;
            }
        }
    }
}
