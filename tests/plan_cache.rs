//! The plan cache end to end, offline: real actors, the scripted model behind a spy that counts
//! calls per role, runtimes sharing one store (as replicas or restarts would).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use stepwise::llm::scripted::ScriptedModel;
use stepwise::llm::{AgentRole, ChatModel, ChatRequest, ChatResponse, LlmError};
use stepwise::options::{FailurePolicy, ReplanMode, RunOptions};
use stepwise::run::{EventKind, RunEvent, RunId, RunResult, RunStatus};
use stepwise::store::plan_cache::PlanCacheBounds;
use stepwise::store::{MemoryStore, RunStore};
use stepwise::tools::typed_tool;
use stepwise::{Runtime, Stepwise};

/// Counts the calls of each role, then answers from the script.
struct Counting {
    inner: ScriptedModel,
    calls: Mutex<Vec<AgentRole>>,
}

impl Counting {
    fn of(&self, role: AgentRole) -> usize {
        self.calls.lock().unwrap().iter().filter(|r| **r == role).count()
    }
}

#[async_trait::async_trait]
impl ChatModel for Counting {
    fn model_name(&self) -> &str {
        "counting"
    }
    fn provider(&self) -> &str {
        "scripted"
    }
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.calls.lock().unwrap().push(request.context.role);
        self.inner.chat(request).await
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Nothing {}

const BOUNDS: PlanCacheBounds = PlanCacheBounds { max_entries: 10, ttl: Duration::from_secs(3600) };

fn script(s1: Value) -> Value {
    json!({
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "s1", "description": "do s1", "expected_outcome": "s1 done", "tool": null, "depends_on": []},
            {"id": "s2", "description": "do s2", "expected_outcome": "s2 done", "tool": null, "depends_on": ["s1"]}
        ]}}],
        "steps": {"s1": [s1], "s2": ["ok"]},
        "replanner": [{"json": {"decision": "continue", "reason": "fine"}}],
        "synthesizer": ["done"]
    })
}

/// A runtime on `store` whose model answers from `script`; `extra_tool` adds a second tool.
async fn runtime(
    store: Arc<dyn RunStore>,
    script: Value,
    cache: Option<PlanCacheBounds>,
    extra_tool: bool,
) -> (Runtime, Arc<Counting>) {
    let model =
        Arc::new(Counting { inner: ScriptedModel::from_json(script).unwrap(), calls: Mutex::new(vec![]) });
    let mut opts = RunOptions::default();
    opts.policy.on_step_failure = FailurePolicy::Abort;
    let mut b = Stepwise::builder()
        .model(model.clone())
        .store(store)
        .options(opts)
        .plan_cache(cache)
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .tool(typed_tool("echo", "Returns ok", |_: Nothing, _ctx| async { Ok("ok".to_owned()) }));
    if extra_tool {
        b = b.tool(typed_tool("shout", "Returns OK", |_: Nothing, _ctx| async { Ok("OK".to_owned()) }));
    }
    (b.build().await.unwrap(), model)
}

async fn run(rt: &Runtime, task: &str, opts: Option<RunOptions>) -> (RunResult, Vec<RunEvent>) {
    let handle = match opts {
        Some(o) => rt.submit_with(task, o).await.unwrap(),
        None => rt.submit(task).await.unwrap(),
    };
    let events: Vec<RunEvent> = handle.events().map(|e| e.unwrap()).collect().await;
    (handle.result().await.unwrap(), events)
}

/// The `cached_from` of the run's `PlanProposed`.
fn cached_from(events: &[RunEvent]) -> Option<RunId> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::PlanProposed { cached_from, .. } => Some(cached_from.clone()),
        _ => None,
    })?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_identical_task_makes_no_planner_call() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let (rt, model) = runtime(store.clone(), script(json!("ok")), Some(BOUNDS), false).await;
    let (first, events) = run(&rt, "Write the report", None).await;
    assert_eq!(first.status, RunStatus::Completed);
    assert_eq!(cached_from(&events), None);
    assert_eq!(model.of(AgentRole::Planner), 1);

    // Same task after whitespace and case are normalised.
    let (second, events) = run(&rt, "  write THE\treport ", None).await;
    assert_eq!(second.status, RunStatus::Completed, "{:?}", second.error);
    assert_eq!(model.of(AgentRole::Planner), 1, "the second run made no planner call");
    assert_eq!(cached_from(&events), Some(first.id.clone()), "the reuse is in the run's events");
    assert_eq!(second.plan.steps.len(), 2);
    assert_eq!(second.usage.llm_calls, 3, "two steps and the synthesizer only");
    // The log reads back to the same state (the field survives the store).
    let stored = store.events(&second.id, 0).await.unwrap();
    assert_eq!(cached_from(&stored), Some(first.id.clone()));

    // A different task misses.
    run(&rt, "Write another report", None).await;
    assert_eq!(model.of(AgentRole::Planner), 2);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_off_unless_configured() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let (rt, model) = runtime(store.clone(), script(json!("ok")), None, false).await;
    run(&rt, "Write the report", None).await;
    let (_, events) = run(&rt, "Write the report", None).await;
    assert_eq!(model.of(AgentRole::Planner), 2);
    assert_eq!(cached_from(&events), None);
    assert!(store.plan_cache().unwrap().entries().await.unwrap().is_empty(), "nothing was written");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tool_set_misses_and_the_same_one_hits_across_runtimes() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let (a, model_a) = runtime(store.clone(), script(json!("ok")), Some(BOUNDS), false).await;
    run(&a, "Write the report", None).await;
    assert_eq!(model_a.of(AgentRole::Planner), 1);

    let (more_tools, model_b) = runtime(store.clone(), script(json!("ok")), Some(BOUNDS), true).await;
    let (_, events) = run(&more_tools, "Write the report", None).await;
    assert_eq!(model_b.of(AgentRole::Planner), 1, "another tool set: the planner is asked");
    assert_eq!(cached_from(&events), None);

    // A second runtime with the first one's tools shares its entry through the store.
    let (same_tools, model_c) = runtime(store.clone(), script(json!("ok")), Some(BOUNDS), false).await;
    let (_, events) = run(&same_tools, "Write the report", None).await;
    assert_eq!(model_c.of(AgentRole::Planner), 0);
    assert!(cached_from(&events).is_some());
    for rt in [a, more_tools, same_tools] {
        rt.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_plan_whose_run_failed_is_not_reused() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let (good, good_model) = runtime(store.clone(), script(json!("ok")), Some(BOUNDS), false).await;
    let (first, _) = run(&good, "Write the report", None).await;
    assert_eq!(first.status, RunStatus::Completed);

    // Same key (model, tools, prompt), but the step now fails: the run reuses, then fails.
    let (bad, bad_model) =
        runtime(store.clone(), script(json!({"error": "boom"})), Some(BOUNDS), false).await;
    let (failed, events) = run(&bad, "Write the report", None).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(cached_from(&events), Some(first.id.clone()));
    assert_eq!(bad_model.of(AgentRole::Planner), 0);
    assert!(store.plan_cache().unwrap().entries().await.unwrap().is_empty(), "the entry was dropped");

    // The next run plans again, and its own completed plan is cached.
    let (third, events) = run(&good, "Write the report", None).await;
    assert_eq!(good_model.of(AgentRole::Planner), 2);
    assert_eq!(cached_from(&events), None);
    let entries = store.plan_cache().unwrap().entries().await.unwrap();
    assert_eq!(entries.iter().map(|e| e.source_run.clone()).collect::<Vec<_>>(), vec![third.id]);
    // A failed run that planned itself leaves nothing.
    store.plan_cache().unwrap().clear().await.unwrap();
    run(&bad, "Write the report", None).await;
    assert!(store.plan_cache().unwrap().entries().await.unwrap().is_empty());
    good.shutdown().await;
    bad.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_plan_still_waits_for_approval_and_replans_still_call_the_replanner() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let (rt, model) = runtime(store.clone(), script(json!("ok")), Some(BOUNDS), false).await;
    run(&rt, "Write the report", None).await;

    let mut opts = rt.options().clone();
    opts.policy.require_approval = true;
    opts.policy.replan = ReplanMode::AfterEachStep;
    let handle = rt.submit_with("Write the report", opts).await.unwrap();
    let mut proposed = false;
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        if let EventKind::PlanProposed { cached_from, .. } = &e.unwrap().kind {
            assert!(cached_from.is_some());
            proposed = true;
            break;
        }
    }
    assert!(proposed, "the run proposed its plan");
    assert_eq!(handle.snapshot().await.unwrap().status, RunStatus::AwaitingApproval);
    handle.approve(None).await.unwrap();
    let result = handle.result().await.unwrap();
    assert_eq!(result.status, RunStatus::Completed, "{:?}", result.error);
    assert_eq!(model.of(AgentRole::Planner), 1, "no planner call for the approved run");
    assert_eq!(model.of(AgentRole::Replanner), 1, "the replanner was still asked after s1");
    rt.shutdown().await;
}
