//! The owner's side: take over runs whose leases are free, keep the held leases alive, and hand
//! the inbox (steps' events and reports, control requests) to the runs' trackers.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPool;

use super::queue::{self, InboxMessage};
use super::{Inner, control, decide};
use crate::actors::messages::{Input, SupervisorMsg, TrackerMsg};
use crate::run::{EventKind, RunEvent, RunId};
use crate::store::{StoreError, backend};

/// Most runs one replica takes over per look, so that the runs of a dead replica spread over
/// the replicas that are left instead of all going to the first to look.
const TAKE_OVER_BATCH: i64 = 16;

/// Starts the heartbeat, the takeover and the inbox tasks.
pub(super) fn spawn(inner: Arc<Inner>) {
    tokio::spawn(heartbeats(inner.clone()));
    tokio::spawn(takeovers(inner.clone()));
    tokio::spawn(inbox(inner));
}

/// Every third of the TTL: renew the held run leases and step claims; stop what was lost.
async fn heartbeats(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(decide::heartbeat_every(inner.ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = heartbeat(&inner).await {
            tracing::warn!(replica = %inner.id, error = %e, "lease heartbeat failed");
        }
    }
}

async fn heartbeat(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let held: Vec<(RunId, i64)> = inner.held().iter().map(|(r, e)| (r.clone(), *e)).collect();
    let renewed = renew_runs(&inner.pg_pool(), &inner.id, &held, inner.ttl).await?;
    let lost: Vec<RunId> = {
        let mut leases = inner.held();
        // Still held at the same epoch: a run that ended meanwhile is not lost.
        let lost: Vec<RunId> = decide::not_renewed(&held, &renewed)
            .into_iter()
            .filter(|(r, e)| leases.get(r) == Some(e))
            .map(|(r, _)| r)
            .collect();
        for r in &lost {
            leases.remove(r);
        }
        lost
    };
    for run in lost {
        inner.metrics.lease_lost();
        tracing::warn!(replica = %inner.id, run = %run, "run lease taken over by another replica; stopping here");
        stop_tracker(inner, &run);
    }
    let claims: Vec<(i64, i64)> = inner.claims().iter().map(|(id, c)| (*id, c.token)).collect();
    let kept = queue::renew_claims(&inner.pg_pool(), &inner.id, &claims, inner.ttl).await?;
    cancel_lost_claims(inner, &claims, &kept);
    let (depth, oldest) = queue::depth(&inner.pg_pool()).await?;
    inner.metrics.queue(depth, oldest);
    Ok(())
}

/// Stops the attempts whose claims (`renewed`: row, token) a renewal did not return: they were
/// taken over. A claim made or finished since the renewal began is left alone.
fn cancel_lost_claims(inner: &Inner, renewed: &[(i64, i64)], kept: &[i64]) {
    let claims = inner.claims();
    for (row, token) in decide::not_renewed(renewed, kept) {
        if let Some(c) = claims.get(&row).filter(|c| c.token == token) {
            c.cancel.cancel();
        }
    }
}

/// Pushes the held leases on; returns the runs whose lease (owner and epoch) is still ours, and
/// those whose row is not committed yet (being submitted here).
async fn renew_runs(
    pool: &PgPool,
    replica: &str,
    held: &[(RunId, i64)],
    ttl: Duration,
) -> Result<Vec<RunId>, StoreError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, epochs): (Vec<String>, Vec<i64>) = held.iter().map(|(r, e)| (r.0.clone(), *e)).unzip();
    // A run this replica is creating right now has no committed row yet: not lost.
    let rows: Vec<String> = sqlx::query_scalar(
        "WITH h AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS h(id, epoch)), \
         renewed AS ( \
             UPDATE runs r SET lease_expires_at = now() + make_interval(secs => $4) \
             FROM h WHERE r.id = h.id AND r.lease_epoch = h.epoch AND r.owner = $3 \
             RETURNING r.id \
         ) \
         SELECT h.id FROM h \
         WHERE h.id IN (SELECT id FROM renewed) OR NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = h.id)",
    )
    .bind(ids)
    .bind(epochs)
    .bind(replica)
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    Ok(rows.into_iter().map(RunId).collect())
}

/// Stops the local tracker of a run whose lease was lost (its steps stop with it).
fn stop_tracker(inner: &Inner, run: &RunId) {
    if let Some(shared) = inner.shared()
        && let Some(t) = shared.runs.get(run).and_then(|c| c.tracker)
    {
        t.stop(Some("lease taken over by another replica".into()));
        shared.runs.remove_tracker(run, &t);
    }
}

/// Every poll: take over the runs whose leases are free.
async fn takeovers(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(inner.poll) => {}
        }
        if let Err(e) = take_over(&inner).await {
            tracing::warn!(replica = %inner.id, error = %e, "could not look for runs to take over");
        }
    }
}

/// Takes the leases of unfinished runs that have no live owner (bumping their epochs, clearing
/// their queued steps and inboxes) and starts their trackers here, which resume from the logs.
pub(super) async fn take_over(inner: &Arc<Inner>) -> Result<Vec<RunId>, StoreError> {
    let mine: Vec<String> = inner.held().keys().map(|r| r.0.clone()).collect();
    let mut tx = inner.pg_pool().begin().await.map_err(backend)?;
    let taken: Vec<(String, i64)> = sqlx::query_as(
        "WITH free AS ( \
             SELECT id FROM runs \
             WHERE status NOT IN ('completed', 'failed', 'cancelled') \
               AND (owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at < now()) \
               AND NOT (id = ANY($4)) \
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED \
         ) \
         UPDATE runs r SET owner = $1, lease_epoch = r.lease_epoch + 1, \
             lease_expires_at = now() + make_interval(secs => $3) \
         FROM free WHERE r.id = free.id RETURNING r.id, r.lease_epoch",
    )
    .bind(&inner.id)
    .bind(TAKE_OVER_BATCH)
    .bind(inner.ttl.as_secs_f64())
    .bind(&mine)
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = taken.iter().map(|(id, _)| id.clone()).collect();
    for clear in
        ["DELETE FROM step_queue WHERE run_id = ANY($1)", "DELETE FROM run_inbox WHERE run_id = ANY($1)"]
    {
        sqlx::query(clear).bind(&ids).execute(&mut *tx).await.map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    inner.held().extend(taken.iter().map(|(id, epoch)| (RunId(id.clone()), *epoch)));
    let runs: Vec<RunId> = ids.into_iter().map(RunId).collect();
    for run in &runs {
        inner.metrics.taken_over();
        tracing::info!(replica = %inner.id, run = %run, "took the run over");
        if let Err(e) = start_tracker(inner, run).await {
            tracing::error!(replica = %inner.id, run = %run, error = %e, "could not resume a run taken over");
            inner.held().remove(run);
        }
    }
    Ok(runs)
}

/// Starts the run's tracker on this replica, with the run's MCP servers from its options.
async fn start_tracker(inner: &Arc<Inner>, run: &RunId) -> Result<(), String> {
    let (Some(shared), Some(attached)) = (inner.shared(), inner.runtime.get()) else {
        return Err("the runtime stopped".into());
    };
    let first = shared.store.events(run, 0).await.map_err(|e| e.to_string())?.into_iter().next();
    if let Some(RunEvent { kind: EventKind::RunSubmitted { options, .. }, .. }) = first {
        shared.runs.set_mcp_servers(run, options.mcp_servers.as_deref());
    }
    ractor::call!(attached.supervisor, SupervisorMsg::StartRun, run.clone())
        .map_err(|e| e.to_string())?
        .map(|_| ())
}

/// Hands inbox messages to the runs' trackers when an executor reports, control requests when
/// one comes, and both every poll.
async fn inbox(inner: Arc<Inner>) {
    let mut failures = 0;
    let (mut messages, mut controls) = (true, true);
    // A ticker, not a sleep per wait: frequent reports must not keep postponing the poll.
    let mut poll = tokio::time::interval(inner.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match deliver(&inner, messages, controls).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(replica = %inner.id, error = %e, "cannot read the runs' inboxes");
                }
                tokio::time::sleep(decide::backoff(failures)).await;
            }
        }
        (messages, controls) = tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = inner.inbox_ready.notified() => (true, false),
            _ = inner.control_ready.notified() => (false, true),
            _ = poll.tick() => (true, true),
        };
    }
}

async fn deliver(inner: &Arc<Inner>, messages: bool, controls: bool) -> Result<(), StoreError> {
    let held: Vec<(String, i64)> = inner.held().iter().map(|(r, e)| (r.0.clone(), *e)).collect();
    let Some(shared) = inner.shared() else { return Ok(()) };
    if messages {
        for (run, message) in queue::take_inbox(&inner.pg_pool(), &inner.id, &held).await? {
            let Some(tracker) = shared.runs.get(&run).and_then(|c| c.tracker) else { continue };
            let input = match message {
                InboxMessage::Tool(kind) => Input::from_step_event(kind),
                InboxMessage::Finished(report) => Input::StepFinished(report),
            };
            let _ = tracker.cast(TrackerMsg::Input(input));
        }
    }
    if controls {
        control::serve(inner, &shared, &held).await?;
    }
    Ok(())
}

/// Gives up every held lease (expiry now), so that other replicas take the runs at once.
pub(super) async fn release(inner: &Arc<Inner>) {
    inner.stop.cancel();
    let ids: Vec<String> = inner.held().drain().map(|(r, _)| r.0).collect();
    if ids.is_empty() {
        return;
    }
    let released = sqlx::query("UPDATE runs SET lease_expires_at = now() WHERE owner = $1 AND id = ANY($2)")
        .bind(&inner.id)
        .bind(&ids)
        .execute(&inner.pg_pool())
        .await;
    match released {
        Ok(r) => tracing::info!(replica = %inner.id, runs = r.rows_affected(), "released run leases"),
        Err(e) => {
            tracing::warn!(replica = %inner.id, error = %e, "could not release run leases; they expire")
        }
    }
}
