//! The handlers. Each is annotated for the OpenAPI document (`openapi.rs`) with the typed bodies
//! of `api.rs` it takes and answers, and every error status it can answer with [`ErrorBody`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::Value;

use super::api::{
    ApproveRequest, ErrorBody, EventFrame, EventsParams, Health, ListParams, Liveness, Readiness, Ready,
    ReasonRequest, RunAck, RunList, SubmitRequest, ToolInfo, ToolList,
};
use super::body::{ApiJson, ApiPath, ApiQuery, OptionalJson, from_value};
use super::{ServerError, ServerState};
use crate::options::RunOptions;
use crate::run::{RunId, RunResult, RunStatus};
use crate::store::ListQuery;

type AppState = State<Arc<ServerState>>;

/// Default page size of `GET /v1/runs`.
const DEFAULT_LIMIT: usize = 50;
/// Largest page size of `GET /v1/runs`.
const MAX_LIMIT: usize = 500;

/// Submit a task: the run is committed before the 202 is sent.
#[utoipa::path(
    post, path = "/v1/runs", tag = "runs",
    request_body(content = SubmitRequest, description = "The task and its run's options, merged key by key onto the service's defaults"),
    responses(
        (status = 202, description = "Accepted", body = RunAck,
            headers(("Location" = String, description = "/v1/runs/{id}")),
            links(
                ("GetRun" = (operation_id = "get_run", parameters(("id" = "$response.body#/id")))),
                ("Events" = (operation_id = "events", parameters(("id" = "$response.body#/id")))),
                ("Approve" = (operation_id = "approve", parameters(("id" = "$response.body#/id")))),
                ("Reject" = (operation_id = "reject", parameters(("id" = "$response.body#/id")))),
                ("Cancel" = (operation_id = "cancel", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Body declared as something other than JSON", body = ErrorBody),
        (status = 422, description = "Unknown field, wrong type, bad option value, option beyond the server's limits, unknown MCP server or blank task", body = ErrorBody),
        (status = 429, description = "Too many runs in progress", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 503, description = "Run store unavailable", body = ErrorBody),
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
    let body = RunAck { id, status: RunStatus::Planning };
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

/// List runs, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of runs", body = RunList),
        (status = 400, description = "Bad status, limit or unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Run store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): AppState,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<RunList>, ServerError> {
    let status =
        p.status.as_deref().map(str::parse::<RunStatus>).transpose().map_err(ServerError::BadRequest)?;
    let limit = match p.limit {
        None | Some(0) => DEFAULT_LIMIT,
        Some(n) => n.min(MAX_LIMIT),
    };
    // One more than asked tells whether another page exists.
    let query = ListQuery { status, limit: limit + 1, before: p.before };
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
    Ok(Json(RunList { runs, next_before }))
}

/// A run's result as it stands.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = RunId, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run's result as it stands", body = RunResult),
        (status = 400, description = "The id does not decode", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 503, description = "Run store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_run(
    State(state): AppState,
    ApiPath(id): ApiPath<RunId>,
) -> Result<Json<RunResult>, ServerError> {
    load(&state, &id).await.map(Json)
}

async fn load(state: &ServerState, id: &RunId) -> Result<RunResult, ServerError> {
    state.runtime.get(id).await.map_err(|e| ServerError::from_runtime(id, e))
}

/// The run's events as Server-Sent Events: history, then live, ending after the last event.
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "runs",
    params(
        ("id" = RunId, Path, description = "Run id"),
        EventsParams,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resume after this seq"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events, one frame per event: `id: <seq>`, `event: <type>`, `data: <RunEvent JSON>`", content_type = "text/event-stream", body = EventFrame),
        (status = 400, description = "Bad id, Last-Event-ID or after", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 503, description = "Run store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    State(state): AppState,
    ApiPath(id): ApiPath<RunId>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<EventsParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServerError> {
    let after = match headers.get("last-event-id") {
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            ServerError::BadRequest("Last-Event-ID must be an event seq (a non-negative integer)".into())
        })?,
        None => p.after.unwrap_or(0),
    };
    load(&state, &id).await?;
    let stream = state
        .runtime
        .handle(&id)
        .events_after(after)
        .map(|item| {
            let frame = match item {
                Ok(e) => match serde_json::to_string(&e) {
                    Ok(data) => EventFrame { id: Some(e.seq.to_string()), event: e.kind.name().into(), data },
                    Err(err) => error_frame(&err.to_string()),
                },
                Err(err) => error_frame(&err.to_string()),
            };
            Ok(sse_event(frame))
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(state.keep_alive)))
}

/// An `event: error` frame (the stream then ends): the store failed mid-stream.
fn error_frame(message: &str) -> EventFrame {
    let body = ServerError::Unavailable(message.to_owned()).body();
    let data = serde_json::to_string(&body).unwrap_or_else(|_| message.to_owned());
    EventFrame { id: None, event: "error".into(), data }
}

/// The frame as axum writes it (`id:` only when it has one).
fn sse_event(frame: EventFrame) -> Event {
    let event = Event::default().event(frame.event).data(frame.data);
    match frame.id {
        Some(id) => event.id(id),
        None => event,
    }
}

/// Approve the plan of a run awaiting approval, optionally replacing it.
#[utoipa::path(
    post, path = "/v1/runs/{id}/approve", tag = "control",
    params(("id" = RunId, Path, description = "Run id")),
    request_body(content = Option<ApproveRequest>, description = "Optional (an empty body approves the proposed plan)"),
    responses(
        (status = 200, description = "The run after the approval", body = RunAck),
        (status = 400, description = "Body is not JSON, or the id does not decode", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run is not awaiting approval, or already ended", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Body declared as something other than JSON", body = ErrorBody),
        (status = 422, description = "Unknown field, wrong type, or an invalid edited plan (the message names the step)", body = ErrorBody),
        (status = 503, description = "Run not active in this process, or store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn approve(
    State(state): AppState,
    ApiPath(id): ApiPath<RunId>,
    OptionalJson(req): OptionalJson<ApproveRequest>,
) -> Result<Json<RunAck>, ServerError> {
    let r = state.runtime.handle(&id).approve(req.plan).await;
    control_outcome(&state, &id, r).await
}

/// Reject the plan of a run awaiting approval: the run ends cancelled.
#[utoipa::path(
    post, path = "/v1/runs/{id}/reject", tag = "control",
    params(("id" = RunId, Path, description = "Run id")),
    request_body(content = Option<ReasonRequest>, description = "Optional"),
    responses(
        (status = 200, description = "The run after the rejection", body = RunAck),
        (status = 400, description = "Body is not JSON, or the id does not decode", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run is not awaiting approval, or already ended", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Body declared as something other than JSON", body = ErrorBody),
        (status = 422, description = "Unknown field or wrong type", body = ErrorBody),
        (status = 503, description = "Run not active in this process, or store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn reject(
    State(state): AppState,
    ApiPath(id): ApiPath<RunId>,
    OptionalJson(req): OptionalJson<ReasonRequest>,
) -> Result<Json<RunAck>, ServerError> {
    let reason = req.reason.unwrap_or_else(|| "rejected over the API".into());
    let r = state.runtime.handle(&id).reject(&reason).await;
    control_outcome(&state, &id, r).await
}

/// Cancel a run: no new step starts, in-flight tool calls are signalled.
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "control",
    params(("id" = RunId, Path, description = "Run id")),
    request_body(content = Option<ReasonRequest>, description = "Optional"),
    responses(
        (status = 200, description = "The run after the cancel", body = RunAck),
        (status = 400, description = "Body is not JSON, or the id does not decode", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run already ended", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Body declared as something other than JSON", body = ErrorBody),
        (status = 422, description = "Unknown field or wrong type", body = ErrorBody),
        (status = 503, description = "Run not active in this process, or store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel(
    State(state): AppState,
    ApiPath(id): ApiPath<RunId>,
    OptionalJson(req): OptionalJson<ReasonRequest>,
) -> Result<Json<RunAck>, ServerError> {
    let reason = req.reason.unwrap_or_else(|| "cancelled over the API".into());
    let r = state.runtime.handle(&id).cancel(&reason).await;
    control_outcome(&state, &id, r).await
}

async fn control_outcome(
    state: &ServerState,
    id: &RunId,
    r: Result<(), crate::actors::messages::ControlError>,
) -> Result<Json<RunAck>, ServerError> {
    match r {
        Ok(()) => {
            let run = load(state, id).await?;
            Ok(Json(RunAck { id: id.clone(), status: run.status }))
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
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: Liveness::Ok })
}

/// Readiness: the run store answers a one-row list within 2 seconds.
#[utoipa::path(
    get, path = "/readyz", tag = "service",
    responses(
        (status = 200, description = "Ready, with each MCP server's state", body = Readiness),
        (status = 503, description = "The run store does not answer, or a required MCP server is not connected", body = ErrorBody),
    )
)]
pub(crate) async fn readyz(State(state): AppState) -> Result<Json<Readiness>, ServerError> {
    let query = ListQuery { limit: 1, ..ListQuery::default() };
    match tokio::time::timeout(Duration::from_secs(2), state.runtime.store().list(&query)).await {
        Ok(Ok(_)) => {
            // Each MCP server's state; a required one that is not connected makes the service unready.
            let servers = state.runtime.tool_sources();
            if servers.is_empty() {
                return Ok(Json(Readiness { status: Ready::Ready, mcp_servers: None }));
            }
            let down: Vec<&str> =
                servers.iter().filter(|s| !s.ready && !s.optional).map(|s| s.name.as_str()).collect();
            if down.is_empty() {
                return Ok(Json(Readiness { status: Ready::Ready, mcp_servers: Some(servers) }));
            }
            let states = serde_json::to_string(&servers).map_err(|e| ServerError::Internal(e.to_string()))?;
            Err(ServerError::Unavailable(format!(
                "MCP server(s) not connected: {}; states: {states}",
                down.join(", ")
            )))
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
        (status = 200, description = "The tools, by name", body = ToolList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn tools(State(state): AppState) -> Json<ToolList> {
    let registry = state.runtime.tools();
    let tools = registry
        .names()
        .into_iter()
        .filter_map(|name| {
            let tool = registry.get(&name)?;
            let mcp_server =
                registry.sources().iter().find(|s| s.tool(&name).is_some()).map(|s| s.name().to_owned());
            Some(ToolInfo {
                description: tool.description().to_owned(),
                parameters: tool.parameters(),
                idempotent: tool.idempotent(),
                hints: tool.hints(),
                mcp_server,
                name,
            })
        })
        .collect();
    Json(ToolList { tools })
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "Metrics are not enabled", body = ErrorBody),
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
    // The document's own schema is the OpenAPI 3.1 meta-schema, not one of this API's.
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn openapi() -> Json<&'static Value> {
    Json(super::openapi_json())
}

pub(crate) async fn no_route(method: Method, uri: Uri) -> ServerError {
    ServerError::NotFound(format!("no route {method} {}", uri.path()))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ServerError {
    ServerError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}
