//! One `LISTEN` connection per replica: notifications wake the claimer (a step was queued), the
//! inbox reader (a report or control request for this replica) and event streams (a run's log
//! grew). A lost connection is made again; whatever was missed meanwhile, polling finds.

use std::sync::Arc;

use sqlx::postgres::PgListener;

use super::control::CONTROL_CHANNEL;
use super::queue::{INBOX_CHANNEL, STEPS_CHANNEL};
use super::{Inner, decide};
use crate::store::postgres::EVENTS_CHANNEL;

/// Starts the listener task.
pub(super) fn spawn(inner: Arc<Inner>) {
    tokio::spawn(async move {
        let mut failures = 0;
        while !inner.stop.is_cancelled() {
            match listen(&inner).await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(replica = %inner.id, error = %e, "database notifications lost; polling until they are back");
                    }
                    tokio::time::sleep(decide::backoff(failures)).await;
                }
            }
        }
    });
}

/// Listens until the replica stops (Ok) or the connection fails (Err).
async fn listen(inner: &Inner) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(&inner.pg_pool()).await?;
    listener.listen_all([STEPS_CHANNEL, INBOX_CHANNEL, CONTROL_CHANNEL, EVENTS_CHANNEL]).await?;
    // Anything may have happened while not listening.
    wake_all(inner);
    loop {
        let next = tokio::select! {
            _ = inner.stop.cancelled() => return Ok(()),
            n = listener.try_recv() => n?,
        };
        let Some(n) = next else {
            // The connection dropped and will be made again: notifications were missed.
            wake_all(inner);
            continue;
        };
        let mine = n.payload() == inner.id || n.payload().is_empty();
        match n.channel() {
            STEPS_CHANNEL => inner.steps_ready.notify_one(),
            INBOX_CHANNEL if mine => inner.inbox_ready.notify_one(),
            CONTROL_CHANNEL if mine => inner.control_ready.notify_one(),
            EVENTS_CHANNEL => inner.changed(n.payload()),
            _ => {}
        }
    }
}

fn wake_all(inner: &Inner) {
    inner.steps_ready.notify_one();
    inner.inbox_ready.notify_one();
    inner.control_ready.notify_one();
    let watchers = inner.watchers.lock().unwrap_or_else(|p| p.into_inner());
    for tx in watchers.values() {
        let _ = tx.send(());
    }
}
