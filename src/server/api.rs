//! The request and response bodies of the API. Each derives `utoipa::ToSchema`, so the route that
//! names it in `#[utoipa::path]` documents every field of it in `/openapi.json`; library types
//! inside them (runs, plans, options, events) are described by their own schemas (see
//! `openapi.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::options::{Policy, RunBudget, StepBudget};
use crate::plan::PlanSpec;
use crate::run::{RunId, RunStatus};
use crate::store::RunSummary;
use crate::tools::{SourceStatus, ToolHints};

/// `POST /v1/runs`: a task and the options of its run. Each option section is merged key by key
/// onto the service's defaults, so any subset of its keys may be given.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    /// What the run should do; must contain a non-blank character.
    #[schema(min_length = 1, pattern = r"\S")]
    pub task: String,
    /// Wait for approval of the plan; wins over `policy.require_approval`.
    #[serde(default)]
    pub require_approval: Option<bool>,
    /// Keys of the run's policy to change.
    #[serde(default)]
    #[schema(value_type = Option<Policy>)]
    pub policy: Option<Value>,
    /// Keys of the per-step budget to change.
    #[serde(default)]
    #[schema(value_type = Option<StepBudget>)]
    pub step_budget: Option<Value>,
    /// Keys of the per-run budget to change.
    #[serde(default)]
    #[schema(value_type = Option<RunBudget>)]
    pub run_budget: Option<Value>,
    /// The MCP servers the run may use (absent: all configured ones; each must be configured).
    #[serde(default)]
    pub mcp_servers: Option<Vec<String>>,
}

/// `POST /v1/runs/{id}/approve`: optionally, an edited plan to run instead of the proposed one.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveRequest {
    /// The plan to run instead (validated like the planner's).
    #[serde(default)]
    pub plan: Option<PlanSpec>,
}

/// `POST /v1/runs/{id}/reject` and `/cancel`: optionally, why.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonRequest {
    /// Recorded in the run's events.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /v1/runs` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only runs in this status.
    #[param(value_type = RunStatus, required = false)]
    pub status: Option<String>,
    /// Page size: default 50 (also for 0), at most 500 (more is taken as 500).
    #[param(value_type = u64, required = false)]
    pub limit: Option<usize>,
    /// Cursor: the `next_before` of the previous page.
    #[param(value_type = RunId, required = false)]
    pub before: Option<RunId>,
}

/// `GET /v1/runs/{id}/events` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsParams {
    /// Only events with a greater seq (the `Last-Event-ID` header wins).
    #[param(value_type = u64, required = false)]
    pub after: Option<u64>,
}

/// `202` to a submission, and `200` to approve / reject / cancel: the run and its status right
/// after the change was committed.
#[derive(Serialize, ToSchema)]
pub(crate) struct RunAck {
    /// The run.
    pub id: RunId,
    /// Its status now.
    pub status: RunStatus,
}

/// A page of `GET /v1/runs`, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct RunList {
    /// The runs of this page.
    pub runs: Vec<RunSummary>,
    /// Pass as `before` for the next page; null on the last.
    pub next_before: Option<RunId>,
}

/// One frame of `GET /v1/runs/{id}/events` (`text/event-stream`).
#[derive(Serialize, ToSchema)]
pub(crate) struct EventFrame {
    /// The event's seq (to resume with `Last-Event-ID`); absent on an `error` frame.
    pub id: Option<String>,
    /// The event's type (`RunSubmitted`, `StepCompleted`…), or `error` when the store failed
    /// mid-stream (the stream then ends).
    pub event: String,
    /// A `RunEvent` as JSON, or an `Error` for an `error` frame.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok`: the process answers.
    pub status: Liveness,
}

/// The one answer of a live process.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Liveness {
    /// The process answers.
    Ok,
}

/// `GET /readyz` when ready.
#[derive(Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// Always `ready` in a 200.
    pub status: Ready,
    /// Each configured MCP server's state (absent when none is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<Vec<SourceStatus>>,
}

/// The one answer of a ready service.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Ready {
    /// The store answers and every required MCP server is connected.
    Ready,
}

/// `GET /v1/tools`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ToolList {
    /// Every tool a run may be offered now, by name.
    pub tools: Vec<ToolInfo>,
}

/// One tool as `GET /v1/tools` lists it.
#[derive(Serialize, ToSchema)]
pub(crate) struct ToolInfo {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, as the model is told.
    pub description: String,
    /// JSON Schema of its arguments object (any valid JSON Schema).
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// Running the same call twice is harmless.
    pub idempotent: bool,
    /// What the tool's author says about its side effects.
    pub hints: ToolHints,
    /// The MCP server it comes from; null for the built-in tools.
    pub mcp_server: Option<String>,
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, machine-readable: not_found, invalid_json, bad_request, unprocessable,
    /// unauthorized, payload_too_large, unsupported_media_type, too_many_runs, conflict,
    /// method_not_allowed, unavailable, internal.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// What is wrong and where, for people.
    pub message: String,
}
