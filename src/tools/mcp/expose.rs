//! stepwise as an MCP server: tools to start a run (returning its id, or waiting for its result
//! with a progress notification per step), get a run's result, list runs, and approve, reject or
//! cancel a run. Served over stdio by `stepwise mcp` and over streamable HTTP at `/mcp` by
//! `stepwise serve` (behind the API's bearer tokens).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::options::{Policy, RunOptions};
use crate::plan::PlanSpec;
use crate::run::{EventKind, RunId, RunStatus};
use crate::runtime::{Runtime, RuntimeError};
use crate::store::ListQuery;

/// Longest `start_run` with `wait` waits by default, in seconds; then it returns the run as it
/// stands (still running), and `get_run` follows it up.
const DEFAULT_WAIT_SECS: u64 = 600;

/// The MCP server's handler: one per connection, all on the same runtime.
#[derive(Clone)]
pub struct StepwiseMcp {
    runtime: Arc<Runtime>,
    limits: crate::options::RunLimits,
}

impl StepwiseMcp {
    /// A handler serving `runtime`, with the default [`crate::options::RunLimits`].
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime, limits: Default::default() }
    }

    /// The most a started run's options may ask for (`[server.limits]`).
    pub fn limits(mut self, limits: crate::options::RunLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// `start_run` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// What to do.
    pub task: String,
    /// Policy keys to change from the service's defaults (on_step_failure, max_retries,
    /// max_replans, replan, verify_outcome, require_approval, approval_timeout_secs, stream_plan).
    #[serde(default)]
    pub policy: Option<serde_json::Map<String, Value>>,
    /// The MCP servers (of stepwise's config) the run may use; absent: all.
    #[serde(default)]
    pub mcp_servers: Option<Vec<String>>,
    /// Wait for the run to end and return its result (with a progress notification per step)
    /// instead of returning its id at once.
    #[serde(default)]
    pub wait: bool,
    /// With `wait`: give up waiting after this many seconds and return the run as it stands
    /// (default 600).
    #[serde(default)]
    pub wait_timeout_secs: Option<u64>,
}

/// Arguments naming a run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    /// The run's id.
    pub id: String,
}

/// `list_runs` arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRuns {
    /// Only runs in this status: planning, awaiting_approval, running, completed, failed, cancelled.
    #[serde(default)]
    pub status: Option<String>,
    /// At most this many, newest first (default 20, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `approve_run` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The run's id.
    pub id: String,
    /// A replacement plan (same shape as the planner's), to approve an edited plan.
    #[serde(default)]
    pub plan: Option<PlanSpec>,
}

/// `reject_run` and `cancel_run` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WithReason {
    /// The run's id.
    pub id: String,
    /// Why (recorded in the run).
    #[serde(default)]
    pub reason: Option<String>,
}

fn schema<T: JsonSchema>() -> Arc<serde_json::Map<String, Value>> {
    match crate::tools::schema_of::<T>() {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::from_iter([("type".to_owned(), json!("object"))])),
    }
}

fn annotations(read_only: bool, destructive: bool, idempotent: bool) -> ToolAnnotations {
    let mut a = ToolAnnotations::new();
    a.read_only_hint = Some(read_only);
    a.destructive_hint = Some(destructive);
    a.idempotent_hint = Some(idempotent);
    a.open_world_hint = Some(false);
    a
}

/// The tools, as listed.
fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "start_run",
            "Start a stepwise run: a model plans the task as steps, runs them with tools, and \
             synthesises an answer. Returns {id, status} at once, or with wait=true the run's \
             result (sending a progress notification per step when the call has a progress token).",
            schema::<StartRun>(),
        )
        .with_annotations(annotations(false, false, false)),
        Tool::new(
            "get_run",
            "A run's result as it stands: status, plan with each step's status and output, final answer, usage.",
            schema::<RunRef>(),
        )
        .with_annotations(annotations(true, false, true)),
        Tool::new("list_runs", "Runs, newest first: id, task, status, times.", schema::<ListRuns>())
            .with_annotations(annotations(true, false, true)),
        Tool::new(
            "approve_run",
            "Approve the plan of a run awaiting approval, optionally replacing it with an edited plan.",
            schema::<Approve>(),
        )
        .with_annotations(annotations(false, false, false)),
        Tool::new(
            "reject_run",
            "Reject the plan of a run awaiting approval: the run ends cancelled.",
            schema::<WithReason>(),
        )
        .with_annotations(annotations(false, true, false)),
        Tool::new("cancel_run", "Cancel a run: no new step starts, running tool calls are cancelled.", schema::<WithReason>())
            .with_annotations(annotations(false, true, false)),
    ]
}

fn parse<T: DeserializeOwned>(
    tool: &str,
    args: Option<serde_json::Map<String, Value>>,
) -> Result<T, ErrorData> {
    let value = Value::Object(args.unwrap_or_default());
    serde_path_to_error::deserialize(value).map_err(|e| {
        ErrorData::invalid_params(format!("{tool}: invalid arguments at {}: {}", e.path(), e.inner()), None)
    })
}

fn ok(value: Value) -> CallToolResult {
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}

/// A failure the client's model should see (unknown run, refused control…): an error result.
fn failed(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

impl StepwiseMcp {
    fn options(&self, args: &StartRun) -> Result<RunOptions, String> {
        let mut options = self.runtime.options().clone();
        if let Some(patch) = &args.policy {
            let mut policy = serde_json::to_value(&options.policy).map_err(|e| e.to_string())?;
            if let Value::Object(base) = &mut policy {
                base.extend(patch.clone());
            }
            options.policy = serde_path_to_error::deserialize::<_, Policy>(policy)
                .map_err(|e| format!("policy.{}: {}", e.path(), e.inner()))?;
        }
        if args.mcp_servers.is_some() {
            options.mcp_servers = args.mcp_servers.clone();
        }
        self.limits.check(&options).map_err(|e| e.to_string())?;
        Ok(options)
    }

    async fn start_run(&self, args: StartRun, ctx: &RequestContext<RoleServer>) -> CallToolResult {
        if args.task.trim().is_empty() {
            return failed("task: must not be empty");
        }
        let options = match self.options(&args) {
            Ok(o) => o,
            Err(e) => return failed(e),
        };
        let handle = match self.runtime.submit_with(args.task.trim(), options).await {
            Ok(h) => h,
            Err(e) => return failed(format!("could not start the run: {e}")),
        };
        let id = handle.id().clone();
        if !args.wait {
            return ok(json!({"id": id, "status": RunStatus::Planning}));
        }
        let wait = Duration::from_secs(args.wait_timeout_secs.unwrap_or(DEFAULT_WAIT_SECS));
        let token = ctx.meta.get_progress_token();
        let follow = async {
            let mut events = handle.events();
            let (mut done, mut total) = (0u32, None::<f64>);
            while let Some(Ok(event)) = events.next().await {
                let message = match &event.kind {
                    EventKind::PlanProposed { plan, .. } => {
                        total = Some(plan.steps.len() as f64);
                        Some(format!("planned {} steps", plan.steps.len()))
                    }
                    EventKind::StepStarted { step, .. } => Some(format!("step {step} started")),
                    EventKind::StepCompleted { step, .. } => {
                        done += 1;
                        Some(format!("step {step} completed"))
                    }
                    EventKind::StepFailed { step, .. } => Some(format!("step {step} failed")),
                    EventKind::StepSkipped { step, .. } => {
                        done += 1;
                        Some(format!("step {step} skipped"))
                    }
                    _ => None,
                };
                if let (Some(token), Some(message)) = (&token, message) {
                    let mut param = ProgressNotificationParam::new(token.clone(), f64::from(done));
                    param.total = total;
                    param.message = Some(message);
                    // A client that went away does not stop the run.
                    let _ = ctx.peer.notify_progress(param).await;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(wait, follow) => {}
            // The client cancelled its call: stop waiting; the run goes on (cancel_run stops it).
            _ = ctx.ct.cancelled() => {}
        }
        match self.runtime.get(&id).await {
            Ok(result) => ok(json!(result)),
            Err(e) => failed(format!("run {id}: {e}")),
        }
    }

    async fn control(
        &self,
        id: &str,
        action: impl AsyncFnOnce(crate::RunHandle) -> Result<(), crate::actors::messages::ControlError>,
    ) -> CallToolResult {
        let id = RunId(id.to_owned());
        match action(self.runtime.handle(&id)).await {
            Ok(()) => match self.runtime.get(&id).await {
                Ok(r) => ok(json!({"id": id, "status": r.status})),
                Err(e) => failed(format!("run {id}: {e}")),
            },
            Err(e) => failed(format!("run {id}: {e}")),
        }
    }

    async fn dispatch(
        &self,
        request: CallToolRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let name = request.name.as_ref();
        let args = request.arguments;
        Ok(match name {
            "start_run" => self.start_run(parse(name, args)?, ctx).await,
            "get_run" => {
                let RunRef { id } = parse(name, args)?;
                match self.runtime.get(&RunId(id.clone())).await {
                    Ok(r) => ok(json!(r)),
                    Err(e @ RuntimeError::UnknownRun(_)) => failed(e.to_string()),
                    Err(e) => failed(format!("run {id}: {e}")),
                }
            }
            "list_runs" => {
                let ListRuns { status, limit } = parse(name, args)?;
                let status = match status.as_deref().map(str::parse::<RunStatus>).transpose() {
                    Ok(s) => s,
                    Err(e) => return Ok(failed(format!("status: {e}"))),
                };
                let query = ListQuery { status, limit: limit.unwrap_or(20).clamp(1, 500), before: None };
                match self.runtime.store().list(&query).await {
                    Ok(runs) => ok(json!({"runs": runs})),
                    Err(e) => failed(format!("listing runs: {e}")),
                }
            }
            "approve_run" => {
                let Approve { id, plan } = parse(name, args)?;
                self.control(&id, async move |h| h.approve(plan).await).await
            }
            "reject_run" => {
                let WithReason { id, reason } = parse(name, args)?;
                let reason = reason.unwrap_or_else(|| "rejected through MCP".into());
                self.control(&id, async move |h| h.reject(&reason).await).await
            }
            "cancel_run" => {
                let WithReason { id, reason } = parse(name, args)?;
                let reason = reason.unwrap_or_else(|| "cancelled through MCP".into());
                self.control(&id, async move |h| h.cancel(&reason).await).await
            }
            other => return Err(ErrorData::invalid_params(format!("unknown tool {other:?}"), None)),
        })
    }
}

impl ServerHandler for StepwiseMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("stepwise", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "stepwise plans a task as steps and runs them with tools. start_run starts a run \
                 (wait=true returns its result); get_run, list_runs follow runs; approve_run, \
                 reject_run and cancel_run steer them.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.dispatch(request, &context).await.map(CallToolResponse::from)
    }
}
