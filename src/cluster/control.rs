//! Approve, reject and cancel for a run another replica drives: the request goes into
//! `run_control`, the owner carries it out and writes the answer, the asker waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::queue::notify;
use super::{Inner, decide};
use crate::actors::Shared;
use crate::actors::messages::{ControlError, Refusal};
use crate::actors::replication::ControlRequest;
use crate::run::RunId;
use crate::store::{StoreError, backend};

/// The channel a control request notifies; the payload is the run owner's replica id.
pub(super) const CONTROL_CHANNEL: &str = "stepwise_control";

/// How often the asker looks for the answer.
const ANSWER_POLL: Duration = Duration::from_millis(50);

/// The owner's answer, as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Done,
    Refused(Refusal),
    NotActive,
    Store(String),
}

impl From<Result<(), ControlError>> for Answer {
    fn from(r: Result<(), ControlError>) -> Self {
        match r {
            Ok(()) => Answer::Done,
            Err(ControlError::Refused(refusal)) => Answer::Refused(refusal),
            Err(ControlError::NotActive) => Answer::NotActive,
            Err(ControlError::Store(e)) => Answer::Store(e.to_string()),
        }
    }
}

impl From<Answer> for Result<(), ControlError> {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Done => Ok(()),
            Answer::Refused(refusal) => Err(ControlError::Refused(refusal)),
            Answer::NotActive => Err(ControlError::NotActive),
            Answer::Store(message) => Err(ControlError::Store(Arc::new(StoreError::Backend(message)))),
        }
    }
}

/// Sends `request` to the run's owner and waits for its answer. No answer in time (no replica
/// holds the run, or the owner froze): the request is withdrawn and the run is `NotActive`.
pub(super) async fn ask(inner: Arc<Inner>, run: RunId, request: ControlRequest) -> Result<(), ControlError> {
    let store = |e: StoreError| ControlError::Store(Arc::new(e));
    let id = post(&inner, &run, &request).await.map_err(store)?;
    let deadline = Instant::now() + decide::control_deadline(inner.ttl, inner.poll);
    loop {
        if let Some(answer) = answer(&inner, id).await.map_err(store)? {
            return answer.into();
        }
        if Instant::now() >= deadline {
            return match withdraw(&inner, id).await.map_err(store)? {
                true => Err(ControlError::NotActive),
                // Answered in the meantime.
                false => {
                    answer(&inner, id).await.map_err(store)?.map_or(Err(ControlError::NotActive), Into::into)
                }
            };
        }
        tokio::time::sleep(ANSWER_POLL).await;
    }
}

async fn post(inner: &Inner, run: &RunId, request: &ControlRequest) -> Result<i64, StoreError> {
    let body = serde_json::to_string(request).map_err(backend)?;
    let mut tx = inner.pg_pool().begin().await.map_err(backend)?;
    let (id, owner): (i64, Option<String>) = sqlx::query_as(
        "INSERT INTO run_control (run_id, request) VALUES ($1, $2::jsonb) \
         RETURNING id, (SELECT owner FROM runs WHERE id = $1)",
    )
    .bind(run.as_str())
    .bind(body)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match e.as_database_error() {
        Some(d) if d.is_foreign_key_violation() => StoreError::UnknownRun(run.clone()),
        _ => backend(e),
    })?;
    notify(&mut tx, CONTROL_CHANNEL, owner.as_deref().unwrap_or("")).await?;
    tx.commit().await.map_err(backend)?;
    Ok(id)
}

async fn answer(inner: &Inner, id: i64) -> Result<Option<Answer>, StoreError> {
    let body: Option<Option<String>> =
        sqlx::query_scalar("SELECT answer::text FROM run_control WHERE id = $1")
            .bind(id)
            .fetch_optional(&inner.pg_pool())
            .await
            .map_err(backend)?;
    body.flatten().map(|b| serde_json::from_str(&b).map_err(backend)).transpose()
}

/// Deletes an unanswered request; false when it had been answered.
async fn withdraw(inner: &Inner, id: i64) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM run_control WHERE id = $1 AND answer IS NULL")
        .bind(id)
        .execute(&inner.pg_pool())
        .await
        .map_err(backend)?;
    Ok(r.rows_affected() > 0)
}

/// Carries out the open requests for the runs `held` (run, epoch) whose leases this replica still
/// holds in the database, and stores each answer.
pub(super) async fn serve(inner: &Inner, shared: &Shared, held: &[(String, i64)]) -> Result<(), StoreError> {
    if held.is_empty() {
        return Ok(());
    }
    let (runs, epochs): (Vec<&str>, Vec<i64>) = held.iter().map(|(r, e)| (r.as_str(), *e)).unzip();
    let open: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT c.id, c.run_id, c.request::text \
         FROM run_control c JOIN runs r ON r.id = c.run_id \
         JOIN unnest($1::text[], $2::bigint[]) AS h(id, epoch) ON h.id = r.id AND h.epoch = r.lease_epoch \
         WHERE c.answer IS NULL AND r.owner = $3 ORDER BY c.id",
    )
    .bind(runs)
    .bind(epochs)
    .bind(&inner.id)
    .fetch_all(&inner.pg_pool())
    .await
    .map_err(backend)?;
    for (id, run, body) in open {
        // A run held here without a tracker is starting (just taken over): answer next time.
        let Some(tracker) = shared.runs.get(&RunId(run)).and_then(|c| c.tracker) else { continue };
        let answer: Answer = match serde_json::from_str::<ControlRequest>(&body) {
            Ok(request) => carry_out(&tracker, request).await.into(),
            Err(e) => Answer::Store(format!("undecodable control request: {e}")),
        };
        let body = serde_json::to_string(&answer).map_err(backend)?;
        sqlx::query("UPDATE run_control SET answer = $2::jsonb WHERE id = $1")
            .bind(id)
            .bind(body)
            .execute(&inner.pg_pool())
            .await
            .map_err(backend)?;
    }
    Ok(())
}

async fn carry_out(
    tracker: &ractor::ActorRef<crate::actors::messages::TrackerMsg>,
    request: ControlRequest,
) -> Result<(), ControlError> {
    match tracker.call(|reply| request.into_message(reply), None).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        _ => Err(ControlError::NotActive),
    }
}
