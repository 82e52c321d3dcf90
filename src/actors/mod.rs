//! The actor system (see `docs/architecture.md`): a supervisor over a planner, a replanner, a synthesizer, an
//! executor pool and one tracker per run.
//!
//! The model-backed services (planner, replanner, synthesizer) never await a model call inside
//! their handler: each request runs on its own task and the answer is sent to the asking
//! tracker, so many runs plan and replan at once without queueing behind one actor. Executors
//! are a ractor factory that grows with the steps ready to run, between configured bounds
//! ([`pool`]): its maximum is the runtime's step concurrency.

pub(crate) mod executor;
pub(crate) mod messages;
pub(crate) mod outage;
pub(crate) mod planner;
pub(crate) mod pool;
pub(crate) mod replanner;
pub(crate) mod replication;
pub(crate) mod reply;
pub(crate) mod spending;
pub(crate) mod supervisor;
pub(crate) mod synthesizer;
#[cfg(test)]
mod tests;
pub(crate) mod tracker;

use std::any::TypeId;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures::FutureExt;
use ractor::{ActorRef, RpcReplyPort};
use schemars::JsonSchema;
use tokio::sync::{Semaphore, broadcast, watch};

use crate::llm::Models;
use crate::prompts::Prompts;
use crate::run::{RunEvent, RunId, RunResult, Usage};
use crate::store::RunStore;
use crate::telemetry::TraceContext;
use crate::tools::ToolRegistry;
use messages::{PlannerMsg, ReplannerMsg, ServiceFailure, ServiceResult, SynthesizerMsg, TrackerMsg};

/// Capacity of a run's live event channel (allocated in full when the first subscriber comes);
/// a subscriber that falls further behind re-reads the store (see `RunHandle::events`).
pub(crate) const EVENT_CHANNEL_CAPACITY: usize = 64;

/// What every actor of one runtime shares. Immutable after start, apart from the run table.
pub(crate) struct Shared {
    pub models: Models,
    pub tools: ToolRegistry,
    /// Tool names, shared with every run's state machine (plan validation).
    pub tool_names: Arc<[String]>,
    /// The fixed tools as the model sees them, built once: their schemas are not free to
    /// generate. The tools of MCP servers are added per step ([`Shared::step_tool_specs`]).
    pub tool_specs: Vec<crate::llm::ToolSpec>,
    pub prompts: Prompts,
    pub store: Arc<dyn RunStore>,
    pub workspace_root: PathBuf,
    pub llm_permits: Arc<Semaphore>,
    pub runs: RunTable,
    pub services: RwLock<Option<Services>>,
    /// Whether tool arguments and results go into `execute_tool` spans.
    pub content: crate::telemetry::ContentCapture,
    /// What model calls cost (the models are wrapped to price every call with it too).
    pub prices: Arc<crate::llm::price::PriceTable>,
    /// What each live run has spent, running attempts included, for the money checks.
    pub spending: spending::RunSpending,
    /// The replicas this runtime shares runs with, when it has any (set once, at start).
    pub replication: OnceLock<Arc<dyn replication::Replication>>,
    /// The plan cache's bounds when it is on (`[plan_cache]`).
    pub plan_cache: Option<crate::store::plan_cache::PlanCacheBounds>,
}

impl Shared {
    /// The money check before a step attempt's model call: the most `request` to `model` can
    /// cost (priced from the table), against the step's and the run's `max_cost` given what the
    /// attempt (`spent`) and the run, its other running attempts included, have spent. Allowed,
    /// the call's most is reserved until the attempt's next check or end.
    pub(crate) fn check_call_cost(
        &self,
        model: &dyn crate::llm::ChatModel,
        request: &crate::llm::ChatRequest,
        job: &messages::StepJob,
        spent: &Usage,
    ) -> Result<(), crate::run::StepError> {
        let input = crate::llm::price::estimate_input_tokens(request);
        let most = self.prices.most(model.provider(), model.model_name(), input, request.max_tokens);
        let attempt = (&job.run_id, &job.step.id, job.attempt);
        self.spending.check_and_reserve(attempt, &job.run_spend, job.budget.max_cost, (spent.cost, most))
    }

    /// The run's workspace directory (created on first use by the tools).
    pub(crate) fn workspace(&self, run: &RunId) -> PathBuf {
        self.workspace_root.join(run.as_str())
    }

    /// The current service references (refreshed by the supervisor when it restarts one).
    pub(crate) fn services(&self) -> Option<Services> {
        self.services.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The tools a step of `run` is offered: the fixed tools, and the tools the run's MCP servers
    /// list now (a server's list may change while the run goes on).
    pub(crate) fn step_tool_specs(&self, run: &RunId) -> Vec<crate::llm::ToolSpec> {
        let scope = self.runs.mcp_servers(run);
        let mut specs = self.tool_specs.clone();
        specs.extend(self.tools.source_specs(scope.as_deref()));
        specs
    }

    /// The replicas this runtime shares runs with, if any.
    pub(crate) fn replication(&self) -> Option<&Arc<dyn replication::Replication>> {
        self.replication.get()
    }

    /// Tool names, for plan validation.
    pub(crate) fn tool_name_refs(&self) -> Vec<&str> {
        self.tool_names.iter().map(String::as_str).collect()
    }
}

/// References to the shared service actors.
#[derive(Clone)]
pub(crate) struct Services {
    pub planner: ActorRef<PlannerMsg>,
    pub replanner: ActorRef<ReplannerMsg>,
    pub synthesizer: ActorRef<SynthesizerMsg>,
    pub executors: pool::ExecutorPool,
}

/// The channels of a live run, which outlive a crashed tracker so a respawned one reuses them.
#[derive(Clone)]
pub(crate) struct RunChannels {
    /// Made by the first subscriber: most runs are never watched live, and the channel's buffer
    /// was most of a live run's memory and a good part of starting one.
    events: Arc<OnceLock<broadcast::Sender<RunEvent>>>,
    pub result: watch::Sender<Option<RunResult>>,
    pub tracker: Option<ActorRef<TrackerMsg>>,
    /// The MCP servers the run may use (its `RunOptions::mcp_servers`); `None`: all of them.
    pub mcp_servers: Option<Arc<[String]>>,
}

impl RunChannels {
    pub(crate) fn new() -> Self {
        let (result, _) = watch::channel(None);
        Self { events: Arc::default(), result, tracker: None, mcp_servers: None }
    }

    /// Hands a committed event to the live subscribers, if there are any.
    pub(crate) fn publish(&self, event: RunEvent) {
        if let Some(events) = self.events.get() {
            // No receiver left is fine: the store has the event.
            let _ = events.send(event);
        }
    }

    /// A receiver of the events published from now on. Subscribe before reading the stored
    /// history: an event missing from the history read is then published after this.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.events.get_or_init(|| broadcast::channel(EVENT_CHANNEL_CAPACITY).0).subscribe()
    }
}

/// The live runs of a runtime.
#[derive(Default)]
pub(crate) struct RunTable(Mutex<HashMap<RunId, RunChannels>>);

impl RunTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, RunChannels>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run's channels, created if the run is not live yet.
    pub(crate) fn channels(&self, run: &RunId) -> RunChannels {
        self.lock().entry(run.clone()).or_insert_with(RunChannels::new).clone()
    }

    /// The run's channels if it is live.
    pub(crate) fn get(&self, run: &RunId) -> Option<RunChannels> {
        self.lock().get(run).cloned()
    }

    /// Records the tracker serving the run.
    pub(crate) fn set_tracker(&self, run: &RunId, tracker: ActorRef<TrackerMsg>) {
        if let Some(c) = self.lock().get_mut(run) {
            c.tracker = Some(tracker);
        }
    }

    /// Records which MCP servers the run may use (from its options), before its tracker starts.
    pub(crate) fn set_mcp_servers(&self, run: &RunId, servers: Option<&[String]>) {
        let mut runs = self.lock();
        let channels = runs.entry(run.clone()).or_insert_with(RunChannels::new);
        channels.mcp_servers = servers.map(Arc::from);
    }

    /// The MCP servers the run may use; `None`: all (or the run is not live).
    pub(crate) fn mcp_servers(&self, run: &RunId) -> Option<Arc<[String]>> {
        self.lock().get(run).and_then(|c| c.mcp_servers.clone())
    }

    /// Forgets the run if `tracker` still serves it (a stopped tracker must not remove the entry
    /// of the tracker that replaced it).
    pub(crate) fn remove_tracker(&self, run: &RunId, tracker: &ActorRef<TrackerMsg>) {
        let mut runs = self.lock();
        if runs.get(run).and_then(|c| c.tracker.as_ref()).is_some_and(|t| t.get_id() == tracker.get_id()) {
            runs.remove(run);
        }
    }

    /// Forgets a finished run (its result stays in the store and in existing handles).
    pub(crate) fn remove(&self, run: &RunId) {
        self.lock().remove(run);
    }

    /// Number of live runs.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Ids of the live runs.
    pub(crate) fn ids(&self) -> Vec<RunId> {
        self.lock().keys().cloned().collect()
    }
}

/// The JSON Schema of `T`, for structured-output requests. Generated once per type: schemars
/// builds and serialises the whole schema each time, which cost as much as the rest of a plan
/// call's orchestration.
pub(crate) fn schema<T: JsonSchema + 'static>() -> Arc<serde_json::Value> {
    static CACHE: OnceLock<Mutex<HashMap<TypeId, Arc<serde_json::Value>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(crate::tools::schema_of::<T>())).clone()
}

/// An `execute_tool {name}` span (GenAI conventions), child of the step's context.
pub(crate) fn tool_span(name: &str, call_id: &str, parent: &TraceContext) -> tracing::Span {
    let span = tracing::info_span!(
        "execute_tool",
        otel.name = %format_args!("execute_tool {name}"),
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = name,
        gen_ai.tool.call.id = call_id,
        error.type = tracing::field::Empty,
    );
    // Before the span starts, or the parent is ignored (see `crate::telemetry`).
    parent.parent(&span);
    span
}

/// Runs a model-backed service request on its own task (bounded by the runtime's model
/// concurrency), converts a panic into a failure, and replies to the asking tracker.
pub(crate) fn spawn_service<T, F>(shared: &Shared, work: F, reply: RpcReplyPort<ServiceResult<T>>)
where
    T: Send + 'static,
    F: Future<Output = ServiceResult<T>> + Send + 'static,
{
    let permits = shared.llm_permits.clone();
    tokio::spawn(async move {
        // The semaphore is never closed, so acquire only waits.
        let _permit = permits.acquire_owned().await;
        let result = AssertUnwindSafe(work).catch_unwind().await.unwrap_or_else(|panic| {
            Err(ServiceFailure {
                error: format!("panicked: {}", executor::panic_message(panic)),
                usage: Usage::default(),
            })
        });
        // A stopped tracker (cancelled run) no longer wants the answer.
        let _ = reply.send(result);
    });
}

/// A failed structured service call as the run records it: the error, and what was spent.
pub(crate) fn service_failure(what: &str, f: crate::llm::StructuredFailure) -> ServiceFailure {
    ServiceFailure { error: format!("{what}: {}", f.error), usage: f.usage }
}

/// A user message whose template did not render: no call is made, and the service fails
/// with the template's error (which names the file and line).
pub(crate) fn template_failure(e: crate::prompts::TemplateError) -> ServiceFailure {
    ServiceFailure { error: e.to_string(), usage: Usage::default() }
}

/// Usage of a structured call.
pub(crate) fn structured_usage<T>(s: &crate::llm::Structured<T>) -> Usage {
    s.usage
}
