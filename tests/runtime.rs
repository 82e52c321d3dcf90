//! The actor system end to end, offline: real actors, real tools, the scripted model.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use stepwise::llm::AgentRole;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::options::{FailurePolicy, ReplanMode, RunOptions};
use stepwise::plan::StepStatus;
use stepwise::run::{EventKind, RunEvent, RunResult, RunStatus};
use stepwise::store::RunStore;
use stepwise::tools::{ToolError, typed_tool};
use stepwise::{Runtime, Stepwise};

mod support_spy;
use support_spy::Spy;

fn plan(steps: Value) -> Value {
    json!({"json": {"goal": "test goal", "steps": steps}})
}

fn step(id: &str, deps: &[&str]) -> Value {
    json!({"id": id, "description": format!("do {id}"), "expected_outcome": format!("{id} done"), "tool": null, "depends_on": deps})
}

fn options(on_failure: FailurePolicy, retries: u32) -> RunOptions {
    let mut o = RunOptions::default();
    o.policy.on_step_failure = on_failure;
    o.policy.max_retries = retries;
    o
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Nothing {}

async fn runtime(script: Value, opts: RunOptions) -> Runtime {
    let model = ScriptedModel::from_json(script).expect("script");
    Stepwise::builder()
        .model(Arc::new(model))
        .options(opts)
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .tool(typed_tool("echo", "Returns ok", |_: Nothing, _ctx| async { Ok("ok".to_owned()) }))
        .tool(typed_tool("explode", "Panics", |_: Nothing, _ctx| async { panic!("kaboom") }))
        .build()
        .await
        .expect("runtime")
}

async fn run_collecting(rt: &Runtime, task: &str) -> (RunResult, Vec<RunEvent>) {
    let handle = rt.submit(task).await.unwrap();
    let events: Vec<RunEvent> = handle.events().map(|e| e.unwrap()).collect().await;
    let result = handle.result().await.unwrap();
    (result, events)
}

fn status_of(r: &RunResult, id: &str) -> StepStatus {
    r.plan.steps.iter().find(|s| s.id.as_str() == id).unwrap_or_else(|| panic!("no step {id}")).status
}

fn assert_gapless(events: &[RunEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "events must be gapless: {events:#?}");
    }
}

fn at(events: &[RunEvent], name: &str, step: &str) -> chrono::DateTime<chrono::Utc> {
    events
        .iter()
        .find(|e| {
            e.kind.name() == name
                && match &e.kind {
                    EventKind::StepStarted { step: s, .. } | EventKind::StepCompleted { step: s, .. } => {
                        s.as_str() == step
                    }
                    _ => false,
                }
        })
        .unwrap_or_else(|| panic!("no {name} for {step}"))
        .at
}

#[tokio::test]
async fn independent_steps_overlap_and_dependents_see_their_outputs() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &[]), step("s3", &["s1", "s2"])]))],
        "steps": {
            "s1": [{"content": "alpha result", "delay_ms": 300}],
            "s2": [{"content": "beta result", "delay_ms": 300}],
            "s3": ["combined"]
        },
        "synthesizer": ["final answer"]
    });
    let spy = Arc::new(Spy::new(script));
    let rt = Stepwise::builder().model(spy.clone()).build().await.unwrap();
    let (r, events) = run_collecting(&rt, "parallel").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_eq!(r.final_output.as_deref(), Some("final answer"));
    assert_gapless(&events);
    // Overlap, proven by the event log: each of s1/s2 started before the other completed.
    assert!(at(&events, "StepStarted", "s2") < at(&events, "StepCompleted", "s1"));
    assert!(at(&events, "StepStarted", "s1") < at(&events, "StepCompleted", "s2"));
    // s3 only started after both, and saw both outputs.
    assert!(at(&events, "StepStarted", "s3") >= at(&events, "StepCompleted", "s1"));
    assert!(at(&events, "StepStarted", "s3") >= at(&events, "StepCompleted", "s2"));
    let seen = spy.seen.lock().unwrap();
    let s3 = seen
        .iter()
        .find(|r| {
            r.context.role == AgentRole::Executor
                && r.context.step.as_ref().is_some_and(|s| s.as_str() == "s3")
        })
        .unwrap();
    let prompt = &s3.messages[1].content;
    assert!(prompt.contains("alpha result") && prompt.contains("beta result"), "{prompt}");
    assert_eq!(r.usage.llm_calls, 5, "planner + 3 steps + synthesizer");
}

#[tokio::test]
async fn tool_calls_are_recorded_and_fed_back() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"tool_calls": [{"name": "echo", "arguments": {}}, {"name": "nope", "arguments": {}}]}, "used the tools"]},
        "synthesizer": ["done"]
    });
    let rt = runtime(script, RunOptions::default()).await;
    let (r, events) = run_collecting(&rt, "tools").await;
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.usage.tool_calls, 2);
    let returned: Vec<(bool, String)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ToolReturned { ok, output, .. } => Some((*ok, output.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(returned[0], (true, "ok".into()));
    assert!(!returned[1].0 && returned[1].1.contains("unknown tool \"nope\""), "{returned:?}");
}

#[tokio::test]
async fn a_panicking_tool_fails_the_attempt_and_the_retry_succeeds() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"tool_calls": [{"name": "explode", "arguments": {}}]}, "recovered"]},
        "synthesizer": ["done"]
    });
    let rt = runtime(script, options(FailurePolicy::Abort, 0)).await;
    // With abort the run fails, naming the panic …
    let (r, _) = run_collecting(&rt, "panic").await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("tool_panicked"), "{r:#?}");
    // … and with a retry the step runs again and the run completes.
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"tool_calls": [{"name": "explode", "arguments": {}}]}, "recovered"]},
        "synthesizer": ["done"]
    });
    let rt = runtime(script, options(FailurePolicy::Retry, 1)).await;
    let (r, events) = run_collecting(&rt, "panic").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_eq!(r.plan.steps[0].attempts, 2);
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, EventKind::StepFailed { error, .. } if error.message.contains("kaboom"))
        )
    );
}

#[tokio::test]
async fn a_crashing_executor_is_replaced_and_its_step_retried() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &["s1"])]))],
        "steps": {"s1": [{"panic": "executor bug"}, "fine"], "s2": ["also fine"]},
        "synthesizer": ["done"]
    });
    let model = ScriptedModel::from_json(script).unwrap();
    // One executor: the step after the crash can only run if the crashed worker was replaced.
    let rt = Stepwise::builder()
        .model(Arc::new(model))
        .options(options(FailurePolicy::Retry, 1))
        .executors(1, 1)
        .build()
        .await
        .unwrap();
    let (r, events) = run_collecting(&rt, "crash").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert!(events.iter().any(|e| matches!(&e.kind, EventKind::StepFailed { error, .. } if error.kind.as_str() == "executor_crashed")));
    assert_eq!(status_of(&r, "s2"), StepStatus::Completed);
}

#[tokio::test]
async fn a_model_that_loops_on_tools_runs_out_of_budget() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"tool_calls": [{"name": "echo", "arguments": {}}]}]},
        "synthesizer": ["done"]
    });
    let mut opts = options(FailurePolicy::Abort, 0);
    opts.step_budget.max_iterations = 3;
    let rt = runtime(script, opts).await;
    let (r, events) = run_collecting(&rt, "loop").await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("budget_exhausted: max_iterations (3)"), "{:?}", r.error);
    assert_eq!(r.usage.tool_calls, 3);
    assert!(events.iter().any(|e| e.kind.name() == "StepFailed"));
}

#[tokio::test]
async fn a_slow_step_runs_out_of_time() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"content": "too late", "delay_ms": 30000}]},
        "synthesizer": ["done"]
    });
    let mut opts = options(FailurePolicy::Skip, 0);
    opts.step_budget.timeout_ms = 100;
    let rt = runtime(script, opts).await;
    let (r, _) = run_collecting(&rt, "slow").await;
    // Skip policy: the step is skipped and the run still completes.
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_eq!(status_of(&r, "s1"), StepStatus::Skipped);
    assert!(r.plan.steps[0].error.as_deref().unwrap().contains("budget_exhausted: timeout"));
}

#[tokio::test]
async fn a_failed_step_is_replanned_and_completed_steps_are_kept() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &["s1"]), step("s3", &["s2"])]))],
        "steps": {"s1": ["one"], "s2": [{"error": "smoke test failed"}], "fix": ["fixed"], "s3b": ["three"]},
        "replanner": [{"json": {"decision": "replan", "reason": "insert a fix", "steps": [
            {"id": "fix", "description": "fix it", "expected_outcome": "fixed", "tool": null, "depends_on": ["s1"]},
            {"id": "s3b", "description": "redo s3", "expected_outcome": "", "tool": null, "depends_on": ["fix"]}
        ]}}],
        "synthesizer": ["done after fix"]
    });
    let rt = runtime(script, options(FailurePolicy::Replan, 0)).await;
    let (r, events) = run_collecting(&rt, "replan").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert!(r.replanned);
    assert_eq!(r.plan.revision, 2);
    assert_eq!(r.revisions.len(), 2);
    assert_eq!(r.revisions[1].reason.as_deref(), Some("insert a fix"));
    let ids: Vec<&str> = r.plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s1", "fix", "s3b"]);
    assert_eq!(r.plan.steps[0].attempts, 1, "a completed step never runs again");
    let starts_of_s1 = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::StepStarted { step, .. } if step.as_str() == "s1"))
        .count();
    assert_eq!(starts_of_s1, 1);
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, EventKind::Replanned { caused_by: Some(s), .. } if s.as_str() == "s2")
        )
    );
}

#[tokio::test]
async fn the_replanner_can_abort_with_a_reason() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"error": "verify failed"}]},
        "replanner": [{"json": {"decision": "abort", "reason": "verification failed in production"}}]
    });
    let rt = runtime(script, options(FailurePolicy::Replan, 0)).await;
    let (r, events) = run_collecting(&rt, "abort").await;
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("aborted by the replanner: verification failed in production"));
    assert_eq!(events.last().unwrap().kind.name(), "RunFailed");
}

#[tokio::test]
async fn replan_after_each_step_can_finish_early() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &["s1"])]))],
        "steps": {"s1": ["enough"]},
        "replanner": [{"json": {"decision": "finish", "reason": "s1 answered it", "final_answer": "early answer"}}]
    });
    let mut opts = RunOptions::default();
    opts.policy.replan = ReplanMode::AfterEachStep;
    let rt = runtime(script, opts).await;
    let (r, _) = run_collecting(&rt, "early").await;
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.final_output.as_deref(), Some("early answer"));
    assert_eq!(status_of(&r, "s2"), StepStatus::Pending);
}

#[tokio::test]
async fn skip_policy_lets_dependents_run_without_the_result() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &["s1"])]))],
        "steps": {"s1": [{"error": "nope"}], "s2": ["ran anyway"]},
        "synthesizer": ["partial"]
    });
    let rt = runtime(script, options(FailurePolicy::Skip, 1)).await;
    let (r, _) = run_collecting(&rt, "skip").await;
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(status_of(&r, "s1"), StepStatus::Skipped);
    assert_eq!(r.plan.steps[0].attempts, 2, "retried once before skipping");
    assert_eq!(status_of(&r, "s2"), StepStatus::Completed);
}

#[tokio::test]
async fn verify_outcome_fails_a_step_that_misses_it() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": ["wrong", "right"]},
        "verifier": [{"json": {"passed": false, "reason": "not it"}}, {"json": {"passed": true, "reason": "good"}}],
        "synthesizer": ["ok"]
    });
    let mut opts = options(FailurePolicy::Retry, 1);
    opts.policy.verify_outcome = true;
    let rt = runtime(script, opts).await;
    let (r, events) = run_collecting(&rt, "verify").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_eq!(r.plan.steps[0].output.as_deref(), Some("right"));
    assert!(events.iter().any(|e| matches!(&e.kind, EventKind::StepFailed { error, .. } if error.kind.as_str() == "verification_failed")));
}

#[tokio::test]
async fn an_invalid_plan_is_repaired_once_then_fails_clearly() {
    let cyclic = plan(json!([step("a", &["b"]), step("b", &["a"])]));
    let good = plan(json!([step("a", &[])]));
    let script = json!({"planner": [cyclic.clone(), good], "steps": {"a": ["ok"]}, "synthesizer": ["done"]});
    let rt = runtime(script, RunOptions::default()).await;
    let (r, _) = run_collecting(&rt, "repair").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_eq!(r.usage.llm_calls, 4, "two planner calls, one step, one synthesis");

    let script = json!({"planner": [cyclic.clone(), cyclic], "strict": false});
    let rt = runtime(script, RunOptions::default()).await;
    let (r, _) = run_collecting(&rt, "repair fails").await;
    assert_eq!(r.status, RunStatus::Failed);
    let err = r.error.unwrap();
    assert!(err.contains("planning failed") && err.contains("dependency cycle"), "{err}");
}

#[tokio::test]
async fn a_plan_naming_an_unknown_tool_is_rejected_with_the_step() {
    let bad = json!({"json": {"goal": "g", "steps": [{"id": "s1", "description": "d", "tool": "teleport", "depends_on": []}]}});
    let rt = runtime(json!({"planner": [bad]}), RunOptions::default()).await;
    let (r, _) = run_collecting(&rt, "unknown tool").await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("step s1: unknown tool \"teleport\""), "{:?}", r.error);
}

#[tokio::test]
async fn approval_holds_the_plan_and_an_edited_plan_runs() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"mine": ["edited step ran"]},
        "synthesizer": ["done"]
    });
    let mut opts = RunOptions::default();
    opts.policy.require_approval = true;
    let rt = runtime(script, opts).await;
    let handle = rt.submit("approve me").await.unwrap();
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        if e.unwrap().kind.name() == "PlanProposed" {
            break;
        }
    }
    let snap = handle.snapshot().await.unwrap();
    assert_eq!(snap.status, RunStatus::AwaitingApproval);
    assert!(snap.plan.steps.iter().all(|s| s.attempts == 0), "no step runs before approval");
    // An invalid edit is refused and changes nothing.
    let cyclic: stepwise::plan::PlanSpec =
        serde_json::from_value(json!({"goal": "g", "steps": [step("x", &["x"])]})).unwrap();
    assert!(handle.approve(Some(cyclic)).await.unwrap_err().to_string().contains("cycle"));
    let edited: stepwise::plan::PlanSpec =
        serde_json::from_value(json!({"goal": "g", "steps": [step("mine", &[])]})).unwrap();
    handle.approve(Some(edited)).await.unwrap();
    let r = handle.result().await.unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.plan.steps[0].output.as_deref(), Some("edited step ran"));
}

#[tokio::test]
async fn cancel_stops_in_flight_tools_through_their_token() {
    let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cancelled.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let started_tx = started.clone();
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"tool_calls": [{"name": "wait", "arguments": {}}]}, "never"]},
    });
    let rt = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .tool(typed_tool("wait", "Waits for cancel", move |_: Nothing, ctx| {
            let flag = flag.clone();
            started_tx.notify_one();
            async move {
                ctx.cancel.cancelled().await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Err::<String, _>(ToolError::Cancelled)
            }
        }))
        .build()
        .await
        .unwrap();
    let handle = rt.submit("cancel me").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await.expect("the tool started");
    handle.cancel("user asked").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), handle.result()).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(r.error.as_deref(), Some("user asked"));
    for _ in 0..100 {
        if cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cancelled.load(std::sync::atomic::Ordering::SeqCst), "the tool saw its cancellation token fire");
    assert!(handle.cancel("again").await.unwrap_err().to_string().contains("already ended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_runs_complete() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &[]), step("s3", &["s1", "s2"])]))],
        "executor": [{"content": "done", "delay_ms": 5}],
        "synthesizer": ["merged"]
    });
    let rt = Arc::new(runtime(script, RunOptions::default()).await);
    let mut handles = Vec::new();
    for i in 0..100 {
        handles.push(rt.submit(&format!("task {i}")).await.unwrap());
    }
    let results = futures::future::join_all(handles.iter().map(|h| h.result())).await;
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
        assert_eq!(r.plan.steps.len(), 3);
        assert_eq!(r.final_output.as_deref(), Some("merged"));
    }
    assert_eq!(rt.live_runs(), 0, "finished runs leave the live table");
}

#[tokio::test]
async fn a_late_subscriber_gets_the_whole_history() {
    let script =
        json!({"planner": [plan(json!([step("s1", &[])]))], "steps": {"s1": ["x"]}, "synthesizer": ["y"]});
    let rt = runtime(script, RunOptions::default()).await;
    let handle = rt.submit("late").await.unwrap();
    handle.result().await.unwrap();
    let events: Vec<RunEvent> = handle.events().map(|e| e.unwrap()).collect().await;
    assert_gapless(&events);
    let names: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["RunSubmitted", "PlanProposed", "StepStarted", "StepCompleted", "RunCompleted"]);
    let tail: Vec<RunEvent> = handle.events_after(3).map(|e| e.unwrap()).collect().await;
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
}

#[tokio::test]
async fn an_unapproved_plan_times_out_and_the_run_is_cancelled() {
    let script = json!({"planner": [plan(json!([step("s1", &[])]))], "steps": {"s1": ["x"]}});
    let mut opts = RunOptions::default();
    opts.policy.require_approval = true;
    opts.policy.approval_timeout_secs = 1;
    let rt = runtime(script, opts).await;
    let handle = rt.submit("nobody approves").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), handle.result()).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert!(r.error.as_deref().unwrap().contains("not approved within 1 s"), "{:?}", r.error);
    assert!(r.plan.steps.iter().all(|s| s.attempts == 0));
}

#[tokio::test]
async fn a_rejected_plan_ends_the_run_without_running_a_step() {
    let script = json!({"planner": [plan(json!([step("s1", &[])]))], "steps": {"s1": ["x"]}});
    let mut opts = RunOptions::default();
    opts.policy.require_approval = true;
    let rt = runtime(script, opts).await;
    let handle = rt.submit("reject me").await.unwrap();
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        if e.unwrap().kind.name() == "PlanProposed" {
            break;
        }
    }
    handle.reject("not this plan").await.unwrap();
    let r = handle.result().await.unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(r.error.as_deref(), Some("plan rejected: not this plan"));
    assert!(handle.approve(None).await.is_err());
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_still_gets_every_event_in_order() {
    // 60 tool calls make 120+ events, more than the live channel holds.
    let calls: Vec<Value> = (0..60).map(|_| json!({"name": "echo", "arguments": {}})).collect();
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"tool_calls": calls}, "done"]},
        "synthesizer": ["ok"]
    });
    let mut opts = RunOptions::default();
    opts.step_budget.max_tool_calls = 100;
    let rt = runtime(script, opts).await;
    let handle = rt.submit("chatty").await.unwrap();
    // Read the first event (history), then stall until the run is over: by then the live
    // channel has lagged, and the stream must fall back to the store.
    let mut stream = handle.events();
    let first = stream.next().await.unwrap().unwrap();
    handle.result().await.unwrap();
    let mut events = vec![first];
    events.extend(stream.map(|e| e.unwrap()).collect::<Vec<_>>().await);
    assert!(events.len() > 120, "{}", events.len());
    assert_gapless(&events);
    assert_eq!(events.last().unwrap().kind.name(), "RunCompleted");
}

/// A store that panics once, on the first `StepCompleted` append: the tracker crashes mid-run.
struct PanicOnceStore {
    inner: stepwise::store::MemoryStore,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl stepwise::store::RunStore for PanicOnceStore {
    async fn append(&self, event: &RunEvent) -> Result<(), stepwise::store::StoreError> {
        if event.kind.name() == "StepCompleted" && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("store blew up");
        }
        self.inner.append(event).await
    }
    async fn events(
        &self,
        run: &stepwise::run::RunId,
        after: u64,
    ) -> Result<Vec<RunEvent>, stepwise::store::StoreError> {
        self.inner.events(run, after).await
    }
    async fn list(
        &self,
        q: &stepwise::store::ListQuery,
    ) -> Result<Vec<stepwise::store::RunSummary>, stepwise::store::StoreError> {
        self.inner.list(q).await
    }
    async fn unfinished(&self) -> Result<Vec<stepwise::run::RunId>, stepwise::store::StoreError> {
        self.inner.unfinished().await
    }
}

/// A runtime on a store that panics once, at the first `StepCompleted`, crashing the tracker.
async fn runtime_on_panicking_store(script: Value, opts: RunOptions) -> (Runtime, Arc<PanicOnceStore>) {
    let store = Arc::new(PanicOnceStore {
        inner: stepwise::store::MemoryStore::new(),
        armed: std::sync::atomic::AtomicBool::new(true),
    });
    let rt = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .options(opts)
        .store(store.clone())
        .build()
        .await
        .unwrap();
    (rt, store)
}

#[tokio::test]
async fn a_crashed_tracker_is_respawned_from_its_events_and_the_run_completes() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &["s1"])]))],
        "steps": {"s1": ["one"], "s2": ["two"]},
        "synthesizer": ["done"]
    });
    let (rt, store) = runtime_on_panicking_store(script, RunOptions::default()).await;
    let handle = rt.submit("crash the tracker").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), handle.result()).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    // s1's completion was lost with the crash, so the respawned tracker ran it again (attempt 2);
    // nothing else repeated, and the stored log is still gapless.
    assert_eq!(r.plan.steps[0].attempts, 2);
    assert_eq!(r.plan.steps[1].attempts, 1);
    let events = store.inner.events(handle.id(), 0).await.unwrap();
    assert_gapless(&events);
}

#[tokio::test]
async fn the_run_token_budget_ends_a_run_that_spends_too_much() {
    let script = json!({
        "planner": [plan(json!([step("s1", &[]), step("s2", &["s1"])]))],
        "steps": {"s1": [{"content": "big", "usage": {"input_tokens": 500, "output_tokens": 500}}], "s2": ["never"]},
        "synthesizer": ["never"]
    });
    let mut opts = RunOptions::default();
    opts.run_budget.max_tokens = 800;
    let rt = runtime(script, opts).await;
    let (r, _) = run_collecting(&rt, "expensive").await;
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    assert!(r.error.as_deref().unwrap().contains("run budget exhausted"), "{:?}", r.error);
    assert_eq!(status_of(&r, "s2"), StepStatus::Pending, "nothing starts once the budget is gone");
}

#[tokio::test]
async fn a_finished_run_leaves_no_state_in_the_model() {
    let script =
        json!({"planner": [plan(json!([step("s1", &[])]))], "steps": {"s1": ["x"]}, "synthesizer": ["y"]});
    let model = Arc::new(ScriptedModel::from_json(script).unwrap());
    let rt = Stepwise::builder().model(model.clone()).build().await.unwrap();
    for i in 0..5 {
        assert_eq!(rt.run(&format!("run {i}")).await.unwrap().status, RunStatus::Completed);
    }
    // A long-lived service must not grow with every run it has served.
    assert_eq!(model.runs_tracked(), 0);
}

/// A plan whose JSON the scripted planner writes over `ms` milliseconds (streamed when asked).
fn slow_plan(steps: Value, ms: u64) -> Value {
    json!({"json": {"goal": "test goal", "steps": steps}, "delay_ms": ms})
}

fn streaming() -> RunOptions {
    let mut o = RunOptions::default();
    o.policy.stream_plan = true;
    o
}

/// The sequence number of the first `name` event (for `step`, when given).
fn seq_of(events: &[RunEvent], name: &str, step: Option<&str>) -> u64 {
    events
        .iter()
        .find(|e| {
            e.kind.name() == name
                && step.is_none_or(|want| match &e.kind {
                    EventKind::StepStarted { step, .. } | EventKind::StepCompleted { step, .. } => {
                        step.as_str() == want
                    }
                    _ => false,
                })
        })
        .unwrap_or_else(|| panic!("no {name} {step:?} in {events:#?}"))
        .seq
}

fn count(events: &[RunEvent], name: &str, step: &str) -> usize {
    events
        .iter()
        .filter(|e| match &e.kind {
            EventKind::StepStarted { step: s, .. } => name == "StepStarted" && s.as_str() == step,
            _ => false,
        })
        .count()
}

/// Ids streamed, in order, over every `PlanStreamed` event.
fn streamed_ids(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::PlanStreamed { steps } => {
                Some(steps.iter().map(|s| s.id.0.clone()).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test]
async fn a_streamed_plan_starts_steps_before_the_whole_plan_has_arrived() {
    // `c` is long, so the plan's text ends well after `a` and `b` have streamed in.
    let mut c = step("c", &[]);
    c["description"] = json!("x".repeat(800));
    let steps = json!([step("a", &[]), step("b", &["a"]), c]);
    let script = json!({
        "planner": [slow_plan(steps, 1500)],
        "steps": {"a": ["A"], "b": ["B"], "c": ["C"]},
        "synthesizer": ["done"]
    });
    let rt = runtime(script.clone(), streaming()).await;
    let (r, events) = run_collecting(&rt, "stream it").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_gapless(&events);
    let proposed = seq_of(&events, "PlanProposed", None);
    assert!(seq_of(&events, "PlanStreamed", None) < proposed);
    assert!(seq_of(&events, "StepCompleted", Some("a")) < proposed, "{events:#?}");
    assert!(seq_of(&events, "StepStarted", Some("b")) < proposed, "{events:#?}");
    assert_eq!(streamed_ids(&events), ["a", "b", "c"]);
    let ids: Vec<&str> = r.plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(r.plan.steps.iter().all(|s| s.status == StepStatus::Completed && s.attempts == 1), "{r:#?}");
    assert_eq!((r.plan.revision, r.revisions.len()), (1, 1));
    assert_eq!(r.plan.steps[1].output.as_deref(), Some("B"));

    // The same run without `stream_plan` starts nothing before the plan is whole.
    let rt = runtime(script, RunOptions::default()).await;
    let (r, events) = run_collecting(&rt, "do not stream").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert!(streamed_ids(&events).is_empty());
    assert!(seq_of(&events, "StepStarted", Some("a")) > seq_of(&events, "PlanProposed", None));
}

#[tokio::test]
async fn a_streamed_plan_waits_for_approval_as_a_whole() {
    let mut opts = streaming();
    opts.policy.require_approval = true;
    let script = json!({"planner": [slow_plan(json!([step("a", &[])]), 200)], "steps": {"a": ["A"]},
                        "synthesizer": ["done"]});
    let rt = runtime(script, opts).await;
    let handle = rt.submit("approve first").await.unwrap();
    let mut events = handle.events();
    while let Some(e) = events.next().await {
        let e = e.unwrap();
        assert_ne!(e.kind.name(), "PlanStreamed", "nothing may start before approval");
        if e.kind.name() == "PlanProposed" {
            break;
        }
    }
    handle.approve(None).await.unwrap();
    assert_eq!(handle.result().await.unwrap().status, RunStatus::Completed);
}

#[tokio::test]
async fn a_streamed_plan_that_needs_repair_keeps_what_already_ran() {
    // `bad` names a step that does not exist: the whole plan is invalid, but `a` and `b` were
    // fine on their own and started while it streamed. The repair drops `b` and adds `c`.
    let mut bad = step("bad", &["zzz"]);
    bad["description"] = json!("y".repeat(600));
    let first = slow_plan(json!([step("a", &[]), step("b", &["a"]), bad]), 1200);
    let repaired = plan(json!([step("a", &[]), step("c", &["a"])]));
    let script = json!({
        "planner": [first, repaired],
        "steps": {"a": ["A"], "b": ["B"], "c": ["C"]},
        "synthesizer": ["done"]
    });
    let rt = runtime(script, streaming()).await;
    let (r, events) = run_collecting(&rt, "repair a streamed plan").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_gapless(&events);
    assert_eq!(streamed_ids(&events), ["a", "b"], "`bad` could not start on its own");
    assert_eq!(count(&events, "StepStarted", "a"), 1, "the repair does not run `a` again");
    assert!(seq_of(&events, "StepCompleted", Some("a")) < seq_of(&events, "PlanProposed", None));
    assert_eq!(status_of(&r, "a"), StepStatus::Completed);
    assert_eq!(status_of(&r, "c"), StepStatus::Completed);
    assert!(r.plan.steps.iter().all(|s| s.id.as_str() != "bad"));
    // `b` finished before the repair arrived (kept, with its output) or was stopped and dropped.
    if let Some(b) = r.plan.steps.iter().find(|s| s.id.as_str() == "b") {
        assert_eq!((b.status, b.output.as_deref()), (StepStatus::Completed, Some("B")));
    }
}

#[tokio::test]
async fn a_tracker_that_crashes_while_the_plan_streams_resumes_without_repeating_steps() {
    let steps = json!([step("a", &[]), step("b", &["a"]), step("c", &["b"])]);
    let script = json!({
        "planner": [slow_plan(steps.clone(), 1000), slow_plan(steps, 300)],
        "steps": {"a": ["A"], "b": ["B"], "c": ["C"]},
        "synthesizer": ["done"]
    });
    // The store panics on the first StepCompleted (`a`'s, while the plan is still streaming).
    let (rt, store) = runtime_on_panicking_store(script, streaming()).await;
    let handle = rt.submit("crash while streaming").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), handle.result()).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    let events = store.inner.events(handle.id(), 0).await.unwrap();
    assert_gapless(&events);
    // `a` ran again (its completion was lost with the crash); the second plan's stream brought
    // no step twice; nothing else repeated.
    assert_eq!(r.plan.steps.iter().map(|s| s.attempts).collect::<Vec<_>>(), [2, 1, 1], "{r:#?}");
    let mut ids = streamed_ids(&events);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), streamed_ids(&events).len(), "{events:#?}");
}

#[tokio::test]
async fn tokens_of_a_failed_plan_and_a_failed_replan_count_in_the_runs_usage() {
    let bad = |t: u64| json!({"content": "not a plan", "usage": {"input_tokens": t, "output_tokens": 1}});
    let rt = runtime(json!({"planner": [bad(100), bad(200)]}), RunOptions::default()).await;
    let (r, _) = run_collecting(&rt, "plan badly").await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.error.as_deref().unwrap().starts_with("planning failed"), "{:?}", r.error);
    assert_eq!((r.usage.llm_calls, r.usage.input_tokens, r.usage.output_tokens), (2, 300, 2));

    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"error": "boom"}]},
        "replanner": [bad(40), bad(50)],
    });
    let rt = runtime(script, options(FailurePolicy::Replan, 0)).await;
    let (r, _) = run_collecting(&rt, "replan badly").await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.error.as_deref().unwrap().starts_with("replanning failed"), "{:?}", r.error);
    assert_eq!(r.usage.llm_calls, 1 + 2, "the plan and both replanner calls (the step's call failed)");
    assert!(r.usage.input_tokens >= 90, "{:?}", r.usage);
}

#[tokio::test]
async fn user_message_templates_from_the_prompts_dir_change_what_each_role_is_told() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("executor.user.md"), "Only this: {{ description }} [{{ step_id }}]\n")
        .unwrap();
    std::fs::write(
        dir.path().join("planner.user.md"),
        "Plan for «{{ task }}» with {{ tools | length }} tools\n",
    )
    .unwrap();
    let mut config = stepwise::config::Config::default();
    config.prompts.dir = Some(dir.path().to_owned());
    let script = json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": ["one"]},
        "synthesizer": ["final"]
    });
    let spy = Arc::new(Spy::new(script));
    let rt = Stepwise::builder().model(spy.clone()).prompts(config.prompts().unwrap()).build().await.unwrap();
    let (r, _) = run_collecting(&rt, "templated").await;
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    let seen = spy.seen.lock().unwrap();
    let told =
        |role: AgentRole| seen.iter().find(|r| r.context.role == role).unwrap().messages[1].content.clone();
    assert_eq!(told(AgentRole::Executor), "Only this: do s1 [s1]");
    assert!(
        told(AgentRole::Planner).starts_with("Plan for «templated» with "),
        "{}",
        told(AgentRole::Planner)
    );
    // Roles without a file keep the built-in template.
    assert!(
        told(AgentRole::Synthesizer).starts_with("Task: templated\n"),
        "{}",
        told(AgentRole::Synthesizer)
    );
}
