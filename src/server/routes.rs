//! The handlers. Each is annotated for the OpenAPI document (`openapi.rs`); bodies are described
//! there by the JSON Schemas of the library types they carry.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{ApiJson, OptionalJson, from_value};
use super::{ServerError, ServerState};
use crate::options::RunOptions;
use crate::plan::PlanSpec;
use crate::run::{RunId, RunResult, RunStatus};
use crate::store::ListQuery;

type AppState = State<Arc<ServerState>>;

/// Default page size of `GET /v1/runs`.
const DEFAULT_LIMIT: usize = 50;
/// Largest page size of `GET /v1/runs`.
const MAX_LIMIT: usize = 500;

/// `POST /v1/runs` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    task: String,
    #[serde(default)]
    require_approval: Option<bool>,
    #[serde(default)]
    policy: Option<Value>,
    #[serde(default)]
    step_budget: Option<Value>,
    #[serde(default)]
    run_budget: Option<Value>,
    /// The MCP servers the run may use (absent: all configured ones).
    #[serde(default)]
    mcp_servers: Option<Vec<String>>,
}

/// Submit a task: the run is committed before the 202 is sent.
#[utoipa::path(
    post, path = "/v1/runs", tag = "runs",
    request_body(content = Object, description = "`{\"task\": \"…\", \"require_approval\"?: bool, \"policy\"?: {…}, \"step_budget\"?: {…}, \"run_budget\"?: {…}, \"mcp_servers\"?: [\"name\", …]}`; \
        options are merged key by key onto the service's defaults (schema: SubmitRequest)"),
    responses(
        (status = 202, description = "Accepted: `{\"id\", \"status\"}`", body = Object,
            headers(("Location" = String, description = "/v1/runs/{id}"))),
        (status = 400, description = "Body is not JSON", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 413, description = "Body over the size limit", body = Object),
        (status = 415, description = "Body declared as something other than JSON", body = Object),
        (status = 422, description = "Unknown field, wrong type, bad option value or blank task", body = Object),
        (status = 429, description = "Too many runs in progress",  body = Object,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 503, description = "Run store unavailable", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn submit(
    State(state): AppState,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> Result<Response, ServerError> {
    let task = req.task.trim();
    if task.is_empty() {
        return Err(ServerError::Unprocessable("task: must not be empty".into()));
    }
    let options = merge_options(state.runtime.options(), &req)?;
    state.limits.check(&options).map_err(|e| ServerError::Unprocessable(e.to_string()))?;
    let live = state.runtime.live_runs();
    if live >= state.queue_limit {
        return Err(ServerError::TooManyRuns { live, limit: state.queue_limit });
    }
    let handle = state.runtime.submit_with(task, options).await.map_err(|e| match e {
        e @ (crate::runtime::RuntimeError::UnknownMcpServer { .. }
        | crate::runtime::RuntimeError::UnknownApproveTool { .. }) => {
            ServerError::Unprocessable(e.to_string())
        }
        e => ServerError::Unavailable(format!("could not accept the run: {e}")),
    })?;
    let id = handle.id().clone();
    let location = HeaderValue::from_str(&format!("/v1/runs/{id}"))
        .map_err(|e| ServerError::Internal(format!("run id is not a header value: {e}")))?;
    let body = json!({"id": id, "status": RunStatus::Planning});
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(body)).into_response())
}

/// The run's options: the defaults with each given section merged onto them key by key.
fn merge_options(defaults: &RunOptions, req: &SubmitRequest) -> Result<RunOptions, ServerError> {
    let mut base = serde_json::to_value(defaults).map_err(|e| ServerError::Internal(e.to_string()))?;
    let sections =
        [("policy", &req.policy), ("step_budget", &req.step_budget), ("run_budget", &req.run_budget)];
    for (name, patch) in sections {
        let Some(patch) = patch else { continue };
        let Value::Object(patch) = patch else {
            return Err(ServerError::Unprocessable(format!("{name}: expected an object, got {patch}")));
        };
        if let Some(Value::Object(section)) = base.get_mut(name) {
            for (k, v) in patch {
                section.insert(k.clone(), v.clone());
            }
        }
    }
    let mut options: RunOptions = from_value(base)?;
    if let Some(a) = req.require_approval {
        options.policy.require_approval = a;
    }
    if let Some(servers) = &req.mcp_servers {
        options.mcp_servers = Some(servers.clone());
    }
    Ok(options)
}

/// `GET /v1/runs` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// List runs, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    params(
        ("status" = Option<String>, Query, description = "planning | awaiting_approval | running | completed | failed | cancelled"),
        ("limit" = Option<usize>, Query, description = "Page size, default 50, at most 500"),
        ("before" = Option<String>, Query, description = "Cursor: the `next_before` of the previous page"),
    ),
    responses(
        (status = 200, description = "`{\"runs\": [RunSummary…], \"next_before\": id | null}`", body = Object),
        (status = 400, description = "Bad status, limit or unknown parameter", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 503, description = "Run store unavailable", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): AppState,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ServerError> {
    let Query(p) = params.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let status =
        p.status.as_deref().map(str::parse::<RunStatus>).transpose().map_err(ServerError::BadRequest)?;
    let limit = match p.limit {
        None | Some(0) => DEFAULT_LIMIT,
        Some(n) => n.min(MAX_LIMIT),
    };
    // One more than asked tells whether another page exists.
    let query = ListQuery { status, limit: limit + 1, before: p.before.map(RunId) };
    let mut runs = state
        .runtime
        .store()
        .list(&query)
        .await
        .map_err(|e| ServerError::Unavailable(format!("run store: {e}")))?;
    let next_before = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(Json(json!({"runs": runs, "next_before": next_before})))
}

/// A run's result as it stands.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "RunResult", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 404, description = "No such run", body = Object),
        (status = 503, description = "Run store unavailable", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_run(
    State(state): AppState,
    Path(id): Path<String>,
) -> Result<Json<RunResult>, ServerError> {
    load(&state, &RunId(id)).await.map(Json)
}

async fn load(state: &ServerState, id: &RunId) -> Result<RunResult, ServerError> {
    state.runtime.get(id).await.map_err(|e| ServerError::from_runtime(id, e))
}

/// `GET /v1/runs/{id}/events` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsParams {
    after: Option<u64>,
}

/// The run's events as Server-Sent Events: history, then live, ending after the last event.
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "runs",
    params(
        ("id" = String, Path, description = "Run id"),
        ("after" = Option<u64>, Query, description = "Only events with a greater seq (the Last-Event-ID header wins)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq"),
    ),
    responses(
        (status = 200, description = "text/event-stream: per event `id: <seq>`, `event: <type>`, `data: <RunEvent JSON>`", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad Last-Event-ID or after", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 404, description = "No such run", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    State(state): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServerError> {
    let Query(p) = params.map_err(|e| ServerError::BadRequest(e.body_text()))?;
    let after = match headers.get("last-event-id") {
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            ServerError::BadRequest("Last-Event-ID must be an event seq (a non-negative integer)".into())
        })?,
        None => p.after.unwrap_or(0),
    };
    let id = RunId(id);
    load(&state, &id).await?;
    let stream = state
        .runtime
        .handle(&id)
        .events_after(after)
        .map(|item| {
            Ok(match item {
                Ok(e) => Event::default()
                    .id(e.seq.to_string())
                    .event(e.kind.name())
                    .json_data(&e)
                    .unwrap_or_else(|err| error_event(&err.to_string())),
                Err(err) => error_event(&err.to_string()),
            })
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(state.keep_alive)))
}

/// An `event: error` frame (the stream then ends): the store failed mid-stream.
fn error_event(message: &str) -> Event {
    Event::default()
        .event("error")
        .data(json!({"error": {"code": "unavailable", "message": message}}).to_string())
}

/// `POST /v1/runs/{id}/approve` body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveRequest {
    #[serde(default)]
    plan: Option<PlanSpec>,
}

/// `POST /v1/runs/{id}/reject` and `/cancel` body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// Approve the plan of a run awaiting approval, optionally replacing it.
#[utoipa::path(
    post, path = "/v1/runs/{id}/approve", tag = "control",
    params(("id" = String, Path, description = "Run id")),
    request_body(content = Object, description = "Optional: `{\"plan\"?: PlanSpec}` to run an edited plan instead"),
    responses(
        (status = 200, description = "`{\"id\", \"status\"}` after the approval", body = Object),
        (status = 400, description = "Body is not JSON", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 404, description = "No such run", body = Object),
        (status = 409, description = "The run is not awaiting approval, or already ended", body = Object),
        (status = 413, description = "Body over the size limit", body = Object),
        (status = 422, description = "The edited plan is invalid (the message names the step)", body = Object),
        (status = 503, description = "Run not active in this process, or store unavailable", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn approve(
    State(state): AppState,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<ApproveRequest>,
) -> Result<Json<Value>, ServerError> {
    let id = RunId(id);
    let r = state.runtime.handle(&id).approve(req.plan).await;
    control_outcome(&state, &id, r).await
}

/// Reject the plan of a run awaiting approval: the run ends cancelled.
#[utoipa::path(
    post, path = "/v1/runs/{id}/reject", tag = "control",
    params(("id" = String, Path, description = "Run id")),
    request_body(content = Object, description = "Optional: `{\"reason\"?: string}`"),
    responses(
        (status = 200, description = "`{\"id\", \"status\"}` after the rejection", body = Object),
        (status = 400, description = "Body is not JSON", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 404, description = "No such run", body = Object),
        (status = 409, description = "The run is not awaiting approval, or already ended", body = Object),
        (status = 413, description = "Body over the size limit", body = Object),
        (status = 422, description = "Unknown field or wrong type", body = Object),
        (status = 503, description = "Run not active in this process, or store unavailable", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn reject(
    State(state): AppState,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<ReasonRequest>,
) -> Result<Json<Value>, ServerError> {
    let id = RunId(id);
    let reason = req.reason.unwrap_or_else(|| "rejected over the API".into());
    let r = state.runtime.handle(&id).reject(&reason).await;
    control_outcome(&state, &id, r).await
}

/// Cancel a run: no new step starts, in-flight tool calls are signalled.
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "control",
    params(("id" = String, Path, description = "Run id")),
    request_body(content = Object, description = "Optional: `{\"reason\"?: string}`"),
    responses(
        (status = 200, description = "`{\"id\", \"status\"}` after the cancel", body = Object),
        (status = 400, description = "Body is not JSON", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 404, description = "No such run", body = Object),
        (status = 409, description = "The run already ended", body = Object),
        (status = 413, description = "Body over the size limit", body = Object),
        (status = 422, description = "Unknown field or wrong type", body = Object),
        (status = 503, description = "Run not active in this process, or store unavailable", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel(
    State(state): AppState,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<ReasonRequest>,
) -> Result<Json<Value>, ServerError> {
    let id = RunId(id);
    let reason = req.reason.unwrap_or_else(|| "cancelled over the API".into());
    let r = state.runtime.handle(&id).cancel(&reason).await;
    control_outcome(&state, &id, r).await
}

async fn control_outcome(
    state: &ServerState,
    id: &RunId,
    r: Result<(), crate::actors::messages::ControlError>,
) -> Result<Json<Value>, ServerError> {
    match r {
        Ok(()) => {
            let run = load(state, id).await?;
            Ok(Json(json!({"id": id, "status": run.status})))
        }
        Err(crate::actors::messages::ControlError::NotActive) => {
            // Either no such run, or one this process is not running (yet).
            load(state, id).await?;
            Err(ServerError::from_control(id, crate::actors::messages::ControlError::NotActive))
        }
        Err(e) => Err(ServerError::from_control(id, e)),
    }
}

/// Liveness: the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "service",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object))
)]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the run store answers a one-row list within 2 seconds.
#[utoipa::path(
    get, path = "/readyz", tag = "service",
    responses(
        (status = 200, description = "`{\"status\": \"ready\", \"mcp_servers\"?: [{\"name\", \"state\", \"ready\", \"optional\", \"tools\", \"error\"?, \"problems\"?}]}`", body = Object),
        (status = 503, description = "The run store does not answer, or a required MCP server is not connected", body = Object),
    )
)]
pub(crate) async fn readyz(State(state): AppState) -> Result<Json<Value>, ServerError> {
    let query = ListQuery { limit: 1, ..ListQuery::default() };
    match tokio::time::timeout(Duration::from_secs(2), state.runtime.store().list(&query)).await {
        Ok(Ok(_)) => {
            // Each MCP server's state; a required one that is not connected makes the service unready.
            let servers = state.runtime.tool_sources();
            if servers.is_empty() {
                return Ok(Json(json!({"status": "ready"})));
            }
            let down: Vec<&str> =
                servers.iter().filter(|s| !s.ready && !s.optional).map(|s| s.name.as_str()).collect();
            if down.is_empty() {
                Ok(Json(json!({"status": "ready", "mcp_servers": servers})))
            } else {
                Err(ServerError::Unavailable(format!(
                    "MCP server(s) not connected: {}; states: {}",
                    down.join(", "),
                    json!(servers)
                )))
            }
        }
        Ok(Err(e)) => Err(ServerError::Unavailable(format!("run store: {e}"))),
        Err(_) => Err(ServerError::Unavailable("run store did not answer within 2 s".into())),
    }
}

/// Every tool runs may be offered now: the fixed tools and each MCP server's (with the hints
/// of its annotations, and which server it comes from).
#[utoipa::path(
    get, path = "/v1/tools", tag = "service",
    responses(
        (status = 200, description = "`{\"tools\": [{\"name\", \"description\", \"parameters\", \"idempotent\", \"hints\", \"mcp_server\"?}]}`", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn tools(State(state): AppState) -> Json<Value> {
    let registry = state.runtime.tools();
    let tools: Vec<Value> = registry
        .names()
        .into_iter()
        .filter_map(|name| {
            let tool = registry.get(&name)?;
            let server =
                registry.sources().iter().find(|s| s.tool(&name).is_some()).map(|s| s.name().to_owned());
            Some(json!({
                "name": name,
                "description": tool.description(),
                "parameters": tool.parameters(),
                "idempotent": tool.idempotent(),
                "hints": tool.hints(),
                "mcp_server": server,
            }))
        })
        .collect();
    Json(json!({"tools": tools}))
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "Missing or wrong bearer token", body = Object),
        (status = 404, description = "Metrics are not enabled", body = Object),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn metrics(State(state): AppState) -> Result<Response, ServerError> {
    let hook =
        state.metrics.as_ref().ok_or_else(|| ServerError::NotFound("metrics are not enabled".into()))?;
    let text = hook();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "OpenAPI document", body = Object))
)]
pub(crate) async fn openapi() -> Json<Value> {
    Json(super::openapi_json().clone())
}

pub(crate) async fn no_route(method: Method, uri: Uri) -> ServerError {
    ServerError::NotFound(format!("no route {method} {}", uri.path()))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ServerError {
    ServerError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}
