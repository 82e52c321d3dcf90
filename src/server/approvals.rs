//! Tool calls waiting for a person, over HTTP: `GET /v1/runs/{id}/approvals` lists them,
//! `POST /v1/runs/{id}/approvals/{approval_id}` answers one (approve, edit, reject).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::api::ErrorBody;
use super::body::{ApiJson, ApiPath};
use super::{ServerError, ServerState};
use crate::actors::messages::ControlError;
use crate::run::{PendingApproval, RunId, ToolDecision};

/// The tool calls of a run waiting for approval.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ApprovalList {
    /// Oldest first.
    pub approvals: Vec<ApprovalView>,
}

/// One tool call waiting for approval.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ApprovalView {
    /// The id to answer.
    pub approval_id: String,
    /// The step.
    pub step: String,
    /// The step's attempt.
    pub attempt: u32,
    /// The model's call id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The arguments the model gave.
    #[schema(value_type = Object)]
    pub arguments: Value,
    /// Since when it waits (RFC 3339).
    pub requested_at: String,
}

impl From<PendingApproval> for ApprovalView {
    fn from(p: PendingApproval) -> Self {
        Self {
            approval_id: p.approval_id,
            step: p.step.0,
            attempt: p.attempt,
            call_id: p.call_id,
            tool: p.tool,
            arguments: p.arguments,
            requested_at: p.requested_at.to_rfc3339(),
        }
    }
}

/// An answer to a tool call waiting for approval.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ApprovalAnswer {
    /// Run the call as the model asked.
    Approve,
    /// Run it with these arguments instead (checked against the tool's schema: 422 names the
    /// field that does not fit).
    Edit {
        /// The replacement arguments.
        #[schema(value_type = Object)]
        arguments: Value,
    },
    /// Do not run it; the model sees the reason as the call's result.
    Reject {
        /// Why (not blank).
        reason: String,
    },
}

/// What an answer did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ApprovalResolution {
    /// The run.
    pub id: RunId,
    /// The approval answered.
    pub approval_id: String,
    /// `approved`, `edited` or `rejected`.
    pub outcome: String,
}

/// The tool calls of a run waiting for a person's approval.
#[utoipa::path(
    get, path = "/v1/runs/{id}/approvals", tag = "control",
    params(("id" = RunId, Path, description = "Run id")),
    responses(
        (status = 200, description = "The pending calls, oldest first", body = ApprovalList),
        (status = 400, description = "The id does not decode", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 503, description = "Run store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_approvals(
    State(state): State<Arc<ServerState>>,
    ApiPath(id): ApiPath<RunId>,
) -> Result<Json<ApprovalList>, ServerError> {
    let pending =
        state.runtime.handle(&id).pending_approvals().await.map_err(|e| ServerError::from_runtime(&id, e))?;
    Ok(Json(ApprovalList { approvals: pending.into_iter().map(ApprovalView::from).collect() }))
}

/// Answer one tool call waiting for approval: approve, edit its arguments, or reject it.
#[utoipa::path(
    post, path = "/v1/runs/{id}/approvals/{approval_id}", tag = "control",
    params(
        ("id" = RunId, Path, description = "Run id"),
        ("approval_id" = String, Path, description = "The pending call's approval id"),
    ),
    request_body = ApprovalAnswer,
    responses(
        (status = 200, description = "The answer was recorded", body = ApprovalResolution),
        (status = 400, description = "Body is not JSON, or an id does not decode", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such run, or no call waits under this approval id", body = ErrorBody),
        (status = 409, description = "The call was answered already, or the run ended", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Body declared as something other than JSON", body = ErrorBody),
        (status = 422, description = "Unknown decision, blank reason, or edited arguments that do not fit the tool's schema (the message names the field)", body = ErrorBody),
        (status = 503, description = "Run not active in this process, or store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn resolve_approval(
    State(state): State<Arc<ServerState>>,
    ApiPath((id, approval_id)): ApiPath<(RunId, String)>,
    ApiJson(answer): ApiJson<ApprovalAnswer>,
) -> Result<Json<ApprovalResolution>, ServerError> {
    let decision = match answer {
        ApprovalAnswer::Approve => ToolDecision::Approve,
        ApprovalAnswer::Edit { arguments } => ToolDecision::Edit { arguments },
        ApprovalAnswer::Reject { reason } if reason.trim().is_empty() => {
            return Err(ServerError::Unprocessable("reason: must not be blank".into()));
        }
        ApprovalAnswer::Reject { reason } => ToolDecision::Reject { reason },
    };
    let outcome = decision.outcome().to_owned();
    match state.runtime.handle(&id).resolve_tool_call(&approval_id, decision).await {
        Ok(()) => Ok(Json(ApprovalResolution { id, approval_id, outcome })),
        Err(ControlError::NotActive) => {
            // Either no such run (404), or one this process is not running (yet).
            state.runtime.get(&id).await.map_err(|e| ServerError::from_runtime(&id, e))?;
            Err(ServerError::from_control(&id, ControlError::NotActive))
        }
        Err(e) => Err(ServerError::from_control(&id, e)),
    }
}
