//! The library API: build a [`Runtime`], submit tasks, follow and steer runs.
//!
//! `Stepwise::builder().model(m).build().await?` starts the actor system on the current tokio
//! runtime; `runtime.run(task)` waits for the result, `runtime.submit(task)` returns a
//! [`RunHandle`] with the run's event stream, its result, and cancel / approve / reject.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use ractor::{Actor, ActorRef};
use tokio::sync::Semaphore;

use crate::actors::messages::{ControlError, Refusal, SupervisorMsg, TrackerMsg};
use crate::actors::replication::ControlRequest;
use crate::actors::supervisor::Supervisor;
use crate::actors::{RunChannels, RunTable, Shared};
use crate::executors::{ExecutorLoad, PoolBounds};
use crate::llm::price::PriceTable;
use crate::llm::{Models, SharedModel};
use crate::options::RunOptions;
use crate::plan::PlanSpec;
use crate::prompts::Prompts;
use crate::run::{EventKind, PendingApproval, RunEvent, RunId, RunResult, RunState, ToolDecision};
use crate::store::{MemoryStore, RunStore, StoreError};
use crate::telemetry::ContentCapture;
use crate::tools::{Tool, ToolRegistry};

/// Errors of the library API.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The builder is missing something or was given something unusable.
    #[error("runtime configuration: {0}")]
    Config(String),
    /// The actor system could not start or answer.
    #[error("actor system: {0}")]
    Actor(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored run could not be folded (corrupt log).
    #[error(transparent)]
    State(#[from] crate::run::StateError),
    /// The run's options name an MCP server that is not configured.
    #[error("mcp_servers: unknown MCP server {name:?} (configured: {configured})")]
    UnknownMcpServer {
        /// The name given.
        name: String,
        /// The configured servers' names.
        configured: String,
    },
    /// The run's options ask for approval of a tool the runtime does not have.
    #[error("policy.approve_tools: unknown tool {name:?} (available: {available})")]
    UnknownApproveTool {
        /// The name given.
        name: String,
        /// The tools there are.
        available: String,
    },
    /// No such run.
    #[error("unknown run {0}")]
    UnknownRun(RunId),
    /// The run ended without a result reaching this handle (the runtime shut down).
    #[error("run {0} ended without a result (runtime shut down)")]
    NoResult(RunId),
}

/// Entry point: `Stepwise::builder()`.
pub struct Stepwise;

impl Stepwise {
    /// A builder with defaults: no tools, in-memory store, an executor pool of 4 to 512 workers.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }
}

pub use crate::llm::DEFAULT_LLM_CONCURRENCY;

/// Configures and starts a [`Runtime`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use stepwise::{RunOptions, SqliteStore, Stepwise, typed_tool};
/// # let script = serde_json::json!({
/// #     "planner": [{"json": {"goal": "g", "steps": [{"id": "s1", "description": "d",
/// #         "expected_outcome": "e", "tool": null, "depends_on": []}]}}],
/// #     "steps": {"s1": ["done"]}, "synthesizer": ["final"]});
/// # let model = Arc::new(stepwise::llm::scripted::ScriptedModel::from_json(script)?);
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Ticket { title: String }
///
/// let dir = tempfile::tempdir()?;
/// let mut options = RunOptions::default();
/// options.step_budget.max_iterations = 4;
/// options.run_budget.max_cost = 0.50; // in the price table's currency
/// let runtime = Stepwise::builder()
///     .model(model)
///     .tool(typed_tool("open_ticket", "Opens a ticket", |t: Ticket, _ctx| async move {
///         Ok(format!("opened {}", t.title))
///     }))
///     .store(Arc::new(SqliteStore::open_path(&dir.path().join("runs.db")).await?))
///     .options(options)
///     .executors(2, 64)
///     .build()
///     .await?;
/// # assert_eq!(runtime.run("t").await?.final_output.as_deref(), Some("final"));
/// # runtime.shutdown().await;
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub struct RuntimeBuilder {
    models: Option<Models>,
    tools: ToolRegistry,
    options: RunOptions,
    executor_bounds: PoolBounds,
    llm_concurrency: usize,
    workspace_root: Option<PathBuf>,
    store: Option<Arc<dyn RunStore>>,
    prompts: Prompts,
    content: ContentCapture,
    prices: Arc<PriceTable>,
    plan_cache: Option<crate::store::plan_cache::PlanCacheBounds>,
    #[cfg(feature = "postgres")]
    replica: Option<crate::cluster::Replica>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            models: None,
            tools: ToolRegistry::new(),
            options: RunOptions::default(),
            executor_bounds: PoolBounds::default(),
            llm_concurrency: DEFAULT_LLM_CONCURRENCY,
            workspace_root: None,
            store: None,
            prompts: Prompts::default(),
            content: ContentCapture::OFF,
            prices: Arc::default(),
            plan_cache: None,
            #[cfg(feature = "postgres")]
            replica: None,
        }
    }
}

impl RuntimeBuilder {
    /// One model for every role.
    pub fn model(mut self, model: SharedModel) -> Self {
        self.models = Some(Models::uniform(model));
        self
    }

    /// A model per role.
    pub fn models(mut self, models: Models) -> Self {
        self.models = Some(models);
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools.register(tool);
        self
    }

    /// Replaces the tool registry.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// Default policies and budgets of runs (each submit may override them).
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// Bounds of the executor pool: it keeps `min` workers (at least 1) and grows with the steps
    /// ready to run up to `max` (raised to `min` if lower), the most steps running at once across
    /// all runs. Defaults: 4 and 512 (see [`PoolBounds`](crate::PoolBounds)).
    pub fn executors(mut self, min: usize, max: usize) -> Self {
        self.executor_bounds = PoolBounds::new(min, max, self.executor_bounds.shrink_after);
        self
    }

    /// How long the executor pool must have had more workers than steps before it shrinks
    /// (default 30 s): longer rides out gaps in the load, shorter gives idle workers back sooner.
    pub fn executor_shrink_after(mut self, idle: Duration) -> Self {
        self.executor_bounds.shrink_after = idle;
        self
    }

    /// A fixed pool of `n` executors.
    #[deprecated(note = "the executor pool scales with the work: use `executors(min, max)`")]
    pub fn executor_pool_size(self, n: usize) -> Self {
        self.executors(n, n)
    }

    /// Planner, replanner and synthesizer calls in flight at once across all runs (executors'
    /// model calls are bounded by the pool's size instead). Default [`DEFAULT_LLM_CONCURRENCY`].
    pub fn llm_concurrency(mut self, n: usize) -> Self {
        self.llm_concurrency = n.max(1);
        self
    }

    /// Where each run's workspace directory is created (default: a `stepwise-workspaces`
    /// directory under the system temp dir).
    pub fn workspace_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workspace_root = Some(dir.into());
        self
    }

    /// The event store (default: in memory).
    pub fn store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Makes this runtime one replica of several sharing a Postgres store: the replica's fenced
    /// store replaces [`store`](Self::store), steps go to the shared queue, and runs whose
    /// replica died are taken over (see [`crate::cluster`]).
    #[cfg(feature = "postgres")]
    pub fn replica(mut self, replica: crate::cluster::Replica) -> Self {
        self.store = Some(replica.store());
        self.replica = Some(replica);
        self
    }

    /// System prompts per role.
    pub fn prompts(mut self, prompts: Prompts) -> Self {
        self.prompts = prompts;
        self
    }

    /// Whether prompts, outputs and tool arguments go into spans (default: off); see
    /// [`ContentCapture::from_config`] for `[telemetry] record_content`.
    pub fn record_content(mut self, content: ContentCapture) -> Self {
        self.content = content;
        self
    }

    /// What model calls cost (`[[llm.prices]]`; default: no prices, every cost unknown).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = Arc::new(prices);
        self
    }

    /// Turns the plan cache on within `bounds` (`None`, the default: off). A run whose task,
    /// tools, planner model and planner prompt match an earlier completed run's then reuses its
    /// plan without calling the planner; the cache lives in the store.
    pub fn plan_cache(mut self, bounds: Option<crate::store::plan_cache::PlanCacheBounds>) -> Self {
        self.plan_cache = bounds;
        self
    }

    /// Starts the actor system on the current tokio runtime.
    pub async fn build(self) -> Result<Runtime, RuntimeError> {
        let models =
            self.models.ok_or_else(|| RuntimeError::Config("no model: call .model() or .models()".into()))?;
        // Plan validation knows the MCP tools listed at start; steps see each server's list as
        // it is when they run.
        let tool_names: Arc<[String]> = self.tools.names().into();
        let tool_specs = self.tools.fixed_specs();
        let shared = Arc::new(Shared {
            models: crate::telemetry::traced(&models, self.content, &self.prices),
            content: self.content,
            prices: self.prices,
            spending: Default::default(),
            tools: self.tools,
            tool_names,
            tool_specs,
            prompts: self.prompts,
            store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
            workspace_root: self
                .workspace_root
                .unwrap_or_else(|| std::env::temp_dir().join("stepwise-workspaces")),
            llm_permits: Arc::new(Semaphore::new(self.llm_concurrency)),
            runs: RunTable::default(),
            services: RwLock::new(None),
            replication: std::sync::OnceLock::new(),
            plan_cache: self.plan_cache,
        });
        let (supervisor, handle) = Actor::spawn(
            None,
            Supervisor { shared: shared.clone(), executor_bounds: self.executor_bounds },
            (),
        )
        .await
        .map_err(|e| RuntimeError::Actor(e.to_string()))?;
        #[cfg(feature = "postgres")]
        if let Some(replica) = &self.replica {
            replica.attach(&shared, supervisor.clone(), self.executor_bounds.max);
        }
        Ok(Runtime { shared, supervisor, handle: Some(handle), options: self.options })
    }
}

/// A running actor system. Cheap to share behind an `Arc`; stop it with [`Runtime::shutdown`].
pub struct Runtime {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    handle: Option<tokio::task::JoinHandle<()>>,
    options: RunOptions,
}

impl Runtime {
    /// What the actors share (tests reach the service actors through it).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The default options of runs.
    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.shared.store
    }

    /// Runs `task` to its end with the default options.
    pub async fn run(&self, task: &str) -> Result<RunResult, RuntimeError> {
        self.submit(task).await?.result().await
    }

    /// Starts `task` with the default options.
    pub async fn submit(&self, task: &str) -> Result<RunHandle, RuntimeError> {
        self.submit_with(task, self.options.clone()).await
    }

    /// Starts `task` with `options`. The run is committed to the store before this returns.
    pub async fn submit_with(&self, task: &str, options: RunOptions) -> Result<RunHandle, RuntimeError> {
        self.check_mcp_servers(&options)?;
        self.check_approve_tools(&options)?;
        let id = RunId::new();
        let mcp_servers = options.mcp_servers.clone();
        let event = RunEvent {
            run_id: id.clone(),
            seq: 1,
            at: chrono::Utc::now(),
            kind: EventKind::RunSubmitted { task: task.to_owned(), options },
        };
        self.shared.store.append(&event).await?;
        self.shared.runs.set_mcp_servers(&id, mcp_servers.as_deref());
        let channels = self.shared.runs.channels(&id);
        self.start(&id).await?;
        Ok(RunHandle { id, shared: self.shared.clone(), channels: Some(channels) })
    }

    async fn start(&self, id: &RunId) -> Result<(), RuntimeError> {
        ractor::call!(self.supervisor, SupervisorMsg::StartRun, id.clone())
            .map_err(|e| RuntimeError::Actor(e.to_string()))?
            .map_err(RuntimeError::Actor)?;
        Ok(())
    }

    /// Resumes every unfinished run in the store (after a restart). Returns their ids.
    ///
    /// With replicas, only the runs whose leases are free (their replica died, or never came
    /// back) are taken, as every replica keeps doing while it runs.
    pub async fn recover(&self) -> Result<Vec<RunId>, RuntimeError> {
        if let Some(replicas) = self.shared.replication() {
            return Ok(replicas.take_over().await?);
        }
        let ids = self.shared.store.unfinished().await?;
        for id in &ids {
            if self.shared.runs.get(id).is_none() {
                // The run's MCP servers come from its options, before any step can run.
                let first = self.shared.store.events(id, 0).await?.into_iter().next();
                if let Some(RunEvent { kind: EventKind::RunSubmitted { options, .. }, .. }) = first {
                    self.shared.runs.set_mcp_servers(id, options.mcp_servers.as_deref());
                }
                self.start(id).await?;
            }
        }
        Ok(ids)
    }

    /// Refuses options naming an MCP server that is not configured.
    fn check_mcp_servers(&self, options: &RunOptions) -> Result<(), RuntimeError> {
        let configured: Vec<&str> = self.shared.tools.sources().iter().map(|s| s.name()).collect();
        for name in options.mcp_servers.iter().flatten() {
            if !configured.contains(&name.as_str()) {
                return Err(RuntimeError::UnknownMcpServer {
                    name: name.clone(),
                    configured: configured.join(", "),
                });
            }
        }
        Ok(())
    }

    /// Refuses options asking for approval of a tool that does not exist (a typo would
    /// otherwise let every call of the real tool run unapproved).
    fn check_approve_tools(&self, options: &RunOptions) -> Result<(), RuntimeError> {
        let known = self.shared.tools.names();
        match options.policy.approve_tools.iter().find(|t| !known.contains(t)) {
            Some(name) => {
                Err(RuntimeError::UnknownApproveTool { name: name.clone(), available: known.join(", ") })
            }
            None => Ok(()),
        }
    }

    /// The state of each tool source (MCP server), for readiness checks.
    pub fn tool_sources(&self) -> Vec<crate::tools::SourceStatus> {
        self.shared.tools.sources().iter().map(|s| s.status()).collect()
    }

    /// Every tool a run may be offered now, fixed and from the MCP servers.
    pub fn tools(&self) -> &ToolRegistry {
        &self.shared.tools
    }

    /// A handle on a run, live or finished.
    pub fn handle(&self, id: &RunId) -> RunHandle {
        RunHandle { id: id.clone(), shared: self.shared.clone(), channels: self.shared.runs.get(id) }
    }

    /// A run's current result: from its tracker while live, from the store otherwise.
    pub async fn get(&self, id: &RunId) -> Result<RunResult, RuntimeError> {
        self.handle(id).snapshot().await
    }

    /// Number of runs in progress in this process.
    pub fn live_runs(&self) -> usize {
        self.shared.runs.len()
    }

    /// Ids of the runs in progress in this process.
    pub fn live_run_ids(&self) -> Vec<RunId> {
        self.shared.runs.ids()
    }

    /// The executor pool's load now: its workers, how many run a step, how many steps wait.
    pub fn executor_load(&self) -> ExecutorLoad {
        self.shared.services().map(|s| s.executors.load()).unwrap_or_default()
    }

    /// Stops every actor. Unfinished runs stay in the store and resume with [`Runtime::recover`].
    pub async fn shutdown(mut self) {
        self.supervisor.stop(None);
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        if let Some(replicas) = self.shared.replication() {
            replicas.shutdown().await;
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.supervisor.stop(None);
            // Without `shutdown` the leases are not given back: they expire.
            if let Some(replicas) = self.shared.replication() {
                replicas.halt();
            }
        }
    }
}

/// A handle on one run: its events, its result, and control.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use stepwise::{EventKind, RunOptions, RunStatus, Stepwise};
/// # let script = serde_json::json!({
/// #     "planner": [{"json": {"goal": "g", "steps": [{"id": "s1", "description": "d",
/// #         "expected_outcome": "e", "tool": null, "depends_on": []}]}}],
/// #     "steps": {"s1": ["done"]}, "synthesizer": ["final"]});
/// # let model = Arc::new(stepwise::llm::scripted::ScriptedModel::from_json(script)?);
/// let runtime = Stepwise::builder().model(model).build().await?;
/// let mut options = RunOptions::default();
/// options.policy.require_approval = true; // the plan waits for a person
/// let handle = runtime.submit_with("Ship the release", options).await?;
/// let mut events = handle.events();
/// while let Some(event) = events.next().await {
///     if let EventKind::PlanProposed { plan, .. } = event?.kind {
///         println!("{} steps proposed", plan.steps.len());
///         handle.approve(None).await?; // or `Some(edited_plan)`, or `reject(reason)`
///         break;
///     }
/// }
/// assert_eq!(handle.result().await?.status, RunStatus::Completed);
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct RunHandle {
    id: RunId,
    shared: Arc<Shared>,
    channels: Option<RunChannels>,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &RunId {
        &self.id
    }

    /// Waits for the run to end and returns its result.
    pub async fn result(&self) -> Result<RunResult, RuntimeError> {
        if let Some(ch) = &self.channels {
            let mut rx = ch.result.subscribe();
            if let Ok(r) = rx.wait_for(|r| r.is_some()).await
                && let Some(result) = r.clone()
            {
                return Ok(result);
            }
        }
        let result = self.stored().await?;
        if result.status.is_terminal() { Ok(result) } else { Err(RuntimeError::NoResult(self.id.clone())) }
    }

    async fn stored(&self) -> Result<RunResult, RuntimeError> {
        let events = self.shared.store.events(&self.id, 0).await?;
        Ok(RunState::from_events(&events)?.ok_or_else(|| RuntimeError::UnknownRun(self.id.clone()))?.result())
    }

    /// The run's result as it stands now.
    pub async fn snapshot(&self) -> Result<RunResult, RuntimeError> {
        if let Some(t) = self.tracker()
            && let Ok(r) = ractor::call!(t, TrackerMsg::Snapshot)
        {
            return Ok(r);
        }
        self.stored().await
    }

    fn tracker(&self) -> Option<ActorRef<TrackerMsg>> {
        self.shared.runs.get(&self.id).and_then(|c| c.tracker)
    }

    async fn control(&self, request: ControlRequest) -> Result<(), ControlError> {
        match (self.tracker(), self.shared.replication()) {
            (Some(t), _) => match t.call(|reply| request.into_message(reply), None).await {
                Ok(ractor::rpc::CallResult::Success(r)) => r,
                _ => Err(self.ended_or_inactive().await),
            },
            // Another replica drives the run (or will, once it takes the run over).
            (None, Some(replicas)) => match self.stored().await {
                Ok(r) if r.status.is_terminal() => Err(Refusal::AlreadyEnded(r.status).into()),
                _ => self.remote_control(replicas.as_ref(), request).await,
            },
            (None, None) => Err(self.ended_or_inactive().await),
        }
    }

    async fn remote_control(
        &self,
        replicas: &dyn crate::actors::replication::Replication,
        request: ControlRequest,
    ) -> Result<(), ControlError> {
        match replicas.control(&self.id, request).await {
            Err(ControlError::NotActive) => Err(self.ended_or_inactive().await),
            answer => answer,
        }
    }

    async fn ended_or_inactive(&self) -> ControlError {
        match self.stored().await {
            Ok(r) if r.status.is_terminal() => Refusal::AlreadyEnded(r.status).into(),
            _ => ControlError::NotActive,
        }
    }

    /// Cancels the run: no new step starts, in-flight tool calls see their token cancelled.
    pub async fn cancel(&self, reason: &str) -> Result<(), ControlError> {
        self.control(ControlRequest::Cancel { reason: reason.to_owned() }).await
    }

    /// Approves the plan of a run awaiting approval, optionally replacing it with `edited`.
    pub async fn approve(&self, edited: Option<PlanSpec>) -> Result<(), ControlError> {
        self.control(ControlRequest::Approve { edited }).await
    }

    /// Rejects the plan of a run awaiting approval (the run ends cancelled).
    pub async fn reject(&self, reason: &str) -> Result<(), ControlError> {
        self.control(ControlRequest::Reject { reason: reason.to_owned() }).await
    }

    /// The tool calls of the run waiting for a person's approval, oldest first.
    pub async fn pending_approvals(&self) -> Result<Vec<PendingApproval>, RuntimeError> {
        Ok(self.snapshot().await?.pending_approvals)
    }

    /// Answers one tool call waiting for approval: approve it, run it with edited arguments
    /// (checked against the tool's schema), or reject it with a reason the model sees. Refused
    /// ([`Refusal`](crate::run::Refusal)) for an unknown id, one answered already, or arguments that do not fit.
    pub async fn resolve_tool_call(
        &self,
        approval_id: &str,
        decision: ToolDecision,
    ) -> Result<(), ControlError> {
        self.control(ControlRequest::ResolveToolCall { approval_id: approval_id.to_owned(), decision }).await
    }

    /// The run's events with `seq > after`: the stored history, then live events as they happen,
    /// in order and without gaps, ending after the run's last event.
    pub fn events_after(&self, after: u64) -> EventStream {
        let store = self.shared.store.clone();
        let id = self.id.clone();
        if let Some(replicas) = self.shared.replication() {
            // Any replica may append to the run, now or after a takeover: follow the store.
            let changes = replicas.changes(&id);
            return followed(store, id, after, changes);
        }
        // Subscribe before reading history so nothing falls between the two.
        let live = self.channels.as_ref().map(|c| c.subscribe());
        event_stream(store, id, after, live)
    }

    /// Every event of the run, from the first.
    pub fn events(&self) -> EventStream {
        self.events_after(0)
    }
}

/// A run's events, in order: the stored history, then live events.
pub type EventStream = futures::stream::BoxStream<'static, Result<RunEvent, RuntimeError>>;

/// Where a stream of a run's events stands: the last seq handed out, events read but not yet
/// handed out, and whether the run's last event went out.
struct Cursor {
    last: u64,
    backlog: std::collections::VecDeque<RunEvent>,
    done: bool,
}

impl Cursor {
    fn after(last: u64) -> Self {
        Self { last, backlog: Default::default(), done: false }
    }

    /// The next event not handed out yet, in seq order; none once the run's last event went out.
    fn next(&mut self) -> Option<RunEvent> {
        while !self.done {
            let e = self.backlog.pop_front()?;
            if e.seq > self.last {
                self.last = e.seq;
                self.done = e.kind.is_terminal();
                return Some(e);
            }
        }
        None
    }
}

fn event_stream(
    store: Arc<dyn RunStore>,
    id: RunId,
    after: u64,
    live: Option<tokio::sync::broadcast::Receiver<RunEvent>>,
) -> EventStream {
    use tokio::sync::broadcast::error::RecvError;
    struct S {
        store: Arc<dyn RunStore>,
        id: RunId,
        live: Option<tokio::sync::broadcast::Receiver<RunEvent>>,
        cur: Cursor,
        loaded: bool,
    }
    let state = S { store, id, live, cur: Cursor::after(after), loaded: false };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.cur.done {
                return None;
            }
            if let Some(e) = s.cur.next() {
                return Some((Ok(e), s));
            }
            if !s.loaded {
                s.loaded = true;
                match s.store.events(&s.id, s.cur.last).await {
                    Ok(evs) => {
                        if evs.last().is_some_and(|e| e.kind.is_terminal())
                            || (evs.is_empty() && s.live.is_none())
                        {
                            // Nothing live to wait for: the history is the whole story.
                            s.live = None;
                        }
                        s.cur.backlog.extend(evs);
                        if s.cur.backlog.is_empty() && s.live.is_none() {
                            return None;
                        }
                        continue;
                    }
                    Err(e) => {
                        s.cur.done = true;
                        return Some((Err(e.into()), s));
                    }
                }
            }
            let rx = s.live.as_mut()?;
            match rx.recv().await {
                Ok(e) => s.cur.backlog.push_back(e),
                // Fell behind the live channel: the store has everything, read from there.
                Err(RecvError::Lagged(_)) => s.loaded = false,
                Err(RecvError::Closed) => {
                    s.live = None;
                    s.loaded = false;
                }
            }
        }
    })
    .boxed()
}

/// How often a followed stream reads the store even without a change notice (one may be missed
/// while a replica reconnects to the database).
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// A run's events read from the store, again whenever `changes` says its log grew, in order and
/// without gaps, ending after the run's last event. A store outage pauses the stream.
fn followed(
    store: Arc<dyn RunStore>,
    id: RunId,
    after: u64,
    changes: tokio::sync::watch::Receiver<()>,
) -> EventStream {
    struct F {
        store: Arc<dyn RunStore>,
        id: RunId,
        changes: tokio::sync::watch::Receiver<()>,
        cur: Cursor,
    }
    let state = F { store, id, changes, cur: Cursor::after(after) };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.cur.done {
                return None;
            }
            if let Some(e) = s.cur.next() {
                return Some((Ok(e), s));
            }
            // Seen before reading: a change during the read wakes the wait below.
            s.changes.borrow_and_update();
            match s.store.events(&s.id, s.cur.last).await {
                Ok(events) if !events.is_empty() => {
                    s.cur.backlog.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => {
                    s.cur.done = true;
                    return Some((Err(e.into()), s));
                }
            }
            if let Ok(Err(_)) = tokio::time::timeout(FOLLOW_POLL, s.changes.changed()).await {
                // No sender (the replica stopped): fall back to polling.
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    })
    .boxed()
}
