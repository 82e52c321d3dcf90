//! The span tree of a run (docs/telemetry.md), asserted on the OpenTelemetry SDK's in-memory exporter: names,
//! parents (by span id), attributes, error statuses and the replan link, with parallel steps,
//! a failing tool, a failing step and a replan; and trace isolation between concurrent runs.
//!
//! Each test installs a thread-local subscriber (only the OTel layer) and runs the runtime on a
//! current-thread tokio runtime, so every actor's spans reach that subscriber.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::RunStatus;
use stepwise::tools::{ToolError, typed_tool};
use stepwise::{Runtime, Stepwise};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Spans exported in memory while it lives.
struct Capture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _default: tracing::subscriber::DefaultGuard,
}

impl Capture {
    fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        // The id generator stepwise's own pipeline installs: a run's trace id is its id.
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_id_generator(stepwise::telemetry::RunTraceIds::default())
            .build();
        // The same per-layer filter `telemetry::init` uses, so parenting is tested through it.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(stepwise::telemetry::otel_filter());
        let default = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        Self { exporter, provider, _default: default }
    }

    /// Every finished span (force-flushed first: the exporter clears its spans on shutdown).
    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }
}

fn attr(s: &SpanData, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "expected one {name:?} span, got {}: {:?}", found.len(), names(spans));
    found[0]
}

fn children<'a>(spans: &'a [SpanData], parent: &SpanData) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.parent_span_id == parent.span_context.span_id()).collect()
}

fn is_error(s: &SpanData) -> bool {
    matches!(s.status, Status::Error { .. })
}

fn step(id: &str, deps: &[&str]) -> Value {
    json!({"id": id, "description": format!("do {id}"), "expected_outcome": "", "tool": null, "depends_on": deps})
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NoArgs {}

/// Ten independent steps: eight meet at a barrier (so they provably run at once), s1 calls a
/// failing tool and then answers, s2's model call fails on every attempt; the replanner
/// replaces s2 with r1.
fn parallel_script() -> Value {
    let steps: Vec<Value> = (0..10).map(|i| step(&format!("s{i}"), &[])).collect();
    json!({
        "model": "test-model",
        "planner": [{"json": {"goal": "g", "steps": steps}}],
        "executor": [{"tool_calls": [{"name": "rendezvous", "arguments": {}}]}, "done"],
        "steps": {
            "s1": [{"tool_calls": [{"name": "fail_tool", "arguments": {}}]}, "s1 done"],
            "s2": [{"error": "model exploded"}],
            "r1": ["r1 done"]
        },
        "replanner": [{"json": {"decision": "replan", "reason": "s2 broke",
                                "steps": [step("r1", &["s0"])]}}],
        "synthesizer": ["merged"]
    })
}

/// Parallel participants of the rendezvous tool.
const PARALLEL: usize = 8;

async fn parallel_runtime() -> Runtime {
    let barrier = Arc::new(tokio::sync::Barrier::new(PARALLEL));
    Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(parallel_script()).unwrap()))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .tool(typed_tool("rendezvous", "Waits until 8 steps are here", move |_: NoArgs, _ctx| {
            let barrier = barrier.clone();
            async move {
                // Fails (instead of hanging) if the steps do not run in parallel.
                tokio::time::timeout(Duration::from_secs(20), barrier.wait())
                    .await
                    .map(|_| "met".to_owned())
                    .map_err(|_| ToolError::Failed("the other steps never arrived".into()))
            }
        }))
        .tool(typed_tool("fail_tool", "Always fails", |_: NoArgs, _ctx| async {
            Err::<String, _>(ToolError::Failed("nope".into()))
        }))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_is_one_trace_shaped_like_the_documented_span_tree() {
    let capture = Capture::install();
    let runtime = parallel_runtime().await;
    let result = runtime.run("the task").await.unwrap();
    assert_eq!(result.status, RunStatus::Completed, "{result:?}");
    runtime.shutdown().await;
    let spans = capture.spans();

    // One trace, rooted at stepwise.run.
    let run = one(&spans, "stepwise.run");
    assert_eq!(run.parent_span_id, SpanId::INVALID);
    let trace = run.span_context.trace_id();
    for s in &spans {
        assert_eq!(s.span_context.trace_id(), trace, "{} is in another trace", s.name);
    }
    assert_eq!(attr(run, "stepwise.run.id").as_deref(), Some(result.id.as_str()));
    assert_eq!(attr(run, "stepwise.task").as_deref(), Some("the task"));
    assert_eq!(attr(run, "stepwise.run.status").as_deref(), Some("completed"));
    // The OpenTelemetry GenAI agent attributes, beside stepwise's own.
    assert_eq!(attr(run, "gen_ai.operation.name").as_deref(), Some("invoke_agent"));
    assert_eq!(attr(run, "gen_ai.agent.name").as_deref(), Some("stepwise"));
    assert_eq!(attr(run, "gen_ai.conversation.id").as_deref(), Some(result.id.as_str()));
    let by_id: HashMap<SpanId, &SpanData> = spans.iter().map(|s| (s.span_context.span_id(), s)).collect();
    for s in &spans {
        if s.span_context.span_id() != run.span_context.span_id() {
            assert!(by_id.contains_key(&s.parent_span_id), "{}'s parent is not in the trace", s.name);
        }
    }

    // stepwise.plan ─ chat, under the run.
    let plan = one(&spans, "stepwise.plan");
    assert_eq!(plan.parent_span_id, run.span_context.span_id());
    assert_eq!(attr(plan, "stepwise.plan.revision").as_deref(), Some("1"));
    let plan_chats = children(&spans, plan);
    assert_eq!(names(&plan_chats.iter().map(|s| (*s).clone()).collect::<Vec<_>>()), ["chat test-model"]);
    let chat = plan_chats[0];
    assert_eq!(attr(chat, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(attr(chat, "gen_ai.request.model").as_deref(), Some("test-model"));
    assert_eq!(attr(chat, "stepwise.role").as_deref(), Some("planner"));
    assert_eq!(attr(chat, "gen_ai.provider.name").as_deref(), Some("scripted"));
    assert!(
        attr(chat, "gen_ai.usage.input_tokens").is_some()
            && attr(chat, "gen_ai.usage.output_tokens").is_some()
    );

    // Steps: s0..s9 once, s2 twice (retry), r1 once; all children of the run.
    let steps: Vec<&SpanData> = spans.iter().filter(|s| s.name.starts_with("stepwise.step ")).collect();
    let mut seen: Vec<(String, String)> = steps
        .iter()
        .map(|s| (attr(s, "stepwise.step.id").unwrap(), attr(s, "stepwise.step.attempt").unwrap()))
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> = (0..10).map(|i| (format!("s{i}"), "1".to_owned())).collect();
    expected.push(("s2".into(), "2".into()));
    expected.push(("r1".into(), "1".into()));
    expected.sort();
    assert_eq!(seen, expected);
    let mut step_span: HashMap<(String, String), &SpanData> = HashMap::new();
    for s in &steps {
        let id = attr(s, "stepwise.step.id").unwrap();
        assert_eq!(s.name, format!("stepwise.step {id}"));
        assert_eq!(s.parent_span_id, run.span_context.span_id(), "{} parent", s.name);
        assert_eq!(attr(s, "stepwise.run.id").as_deref(), Some(result.id.as_str()));
        let status = attr(s, "stepwise.step.status").unwrap();
        if id == "s2" {
            assert_eq!(status, "failed");
            assert_eq!(attr(s, "error.type").as_deref(), Some("llm_error"));
            assert!(is_error(s), "failed step span must have error status");
        } else {
            assert_eq!(status, "completed", "{}", s.name);
            assert!(!is_error(s), "{}", s.name);
        }
        step_span.insert((id, attr(s, "stepwise.step.attempt").unwrap()), s);
    }

    // Every executor chat span hangs under its own step attempt's span.
    let step_chats: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "chat test-model" && attr(s, "stepwise.step.id").is_some())
        .collect();
    // 8 rendezvous steps and s1: 2 calls each; s2: 1 per attempt; r1: 1.
    assert_eq!(step_chats.len(), 9 * 2 + 2 + 1, "{:?}", names(&spans));
    for c in &step_chats {
        let key = (attr(c, "stepwise.step.id").unwrap(), attr(c, "stepwise.step.attempt").unwrap());
        let parent = step_span.get(&key).unwrap_or_else(|| panic!("no step span for {key:?}"));
        assert_eq!(c.parent_span_id, parent.span_context.span_id(), "chat of {key:?} is under another span");
        assert_eq!(attr(c, "stepwise.role").as_deref(), Some("executor"));
        assert_eq!(is_error(c), key.0 == "s2", "chat of {key:?}: error status iff its call failed");
        if key.0 == "s2" {
            assert_eq!(attr(c, "error.type").as_deref(), Some("script"));
        }
    }

    // Tool spans: under their step; the rendezvous proves 8 steps were in flight at once.
    let tools: Vec<&SpanData> = spans.iter().filter(|s| s.name.starts_with("execute_tool ")).collect();
    assert_eq!(tools.len(), PARALLEL + 1);
    for t in &tools {
        let name = attr(t, "gen_ai.tool.name").unwrap();
        assert_eq!(t.name, format!("execute_tool {name}"));
        assert_eq!(attr(t, "gen_ai.operation.name").as_deref(), Some("execute_tool"));
        assert!(attr(t, "gen_ai.tool.call.id").is_some_and(|id| !id.is_empty()));
        let parent = by_id[&t.parent_span_id];
        assert!(parent.name.starts_with("stepwise.step "), "tool under {}", parent.name);
        let parent_step = attr(parent, "stepwise.step.id").unwrap();
        if name == "fail_tool" {
            assert_eq!(parent_step, "s1");
            assert!(is_error(t));
            assert_eq!(attr(t, "error.type").as_deref(), Some("failed"));
        } else {
            assert_eq!(name, "rendezvous");
            assert!(!["s1", "s2", "r1"].contains(&parent_step.as_str()));
            assert!(!is_error(t), "rendezvous failed: the steps did not run in parallel");
        }
    }
    let tool_parents: HashSet<SpanId> = tools.iter().map(|t| t.parent_span_id).collect();
    assert_eq!(tool_parents.len(), PARALLEL + 1, "one tool call per step");

    // stepwise.replan under the run, with its chat, linked to the failed attempt.
    let replan = one(&spans, "stepwise.replan");
    assert_eq!(replan.parent_span_id, run.span_context.span_id());
    assert_eq!(attr(replan, "stepwise.plan.revision").as_deref(), Some("2"));
    assert!(attr(replan, "reason").is_some_and(|r| r.contains("s2")), "{:?}", attr(replan, "reason"));
    assert_eq!(attr(replan, "stepwise.replan.decision").as_deref(), Some("replan"));
    let replan_chats = children(&spans, replan);
    assert_eq!(replan_chats.len(), 1);
    assert_eq!(attr(replan_chats[0], "stepwise.role").as_deref(), Some("replanner"));
    let failed = step_span[&("s2".to_owned(), "2".to_owned())];
    let linked = |s: &SpanData| -> Vec<SpanId> { s.links.iter().map(|l| l.span_context.span_id()).collect() };
    assert_eq!(linked(replan), [failed.span_context.span_id()]);

    // The step the replan created links to the failed step attempt that caused it; others don't.
    let r1 = step_span[&("r1".to_owned(), "1".to_owned())];
    assert_eq!(attr(r1, "stepwise.plan.revision").as_deref(), Some("2"));
    assert_eq!(linked(r1), [failed.span_context.span_id()]);
    assert_eq!(r1.links.iter().next().unwrap().span_context.trace_id(), trace);
    for (key, s) in &step_span {
        if key.0 != "r1" {
            assert!(s.links.is_empty(), "{key:?} has links");
        }
    }

    // stepwise.synthesize under the run, with its chat.
    let synth = one(&spans, "stepwise.synthesize");
    assert_eq!(synth.parent_span_id, run.span_context.span_id());
    let synth_chats = children(&spans, synth);
    assert_eq!(synth_chats.len(), 1);
    assert_eq!(attr(synth_chats[0], "stepwise.role").as_deref(), Some("synthesizer"));

    // Nothing else: run, plan, 12 step attempts, replan, synthesize, their chats and 9 tool calls.
    assert_eq!(spans.len(), 1 + 1 + 12 + 1 + 1 + (1 + step_chats.len() + 1 + 1) + tools.len());

    // The run fed the metrics too.
    let text = stepwise::telemetry::prometheus_text();
    for needle in [
        "stepwise_runs_total{status=\"completed\"}",
        "stepwise_steps_total{status=\"failed\"}",
        "stepwise_replans_total{decision=\"replan\"}",
        "stepwise_llm_calls_total{model=\"test-model\",outcome=\"error\",role=\"executor\"}",
        "stepwise_llm_tokens_total{model=\"test-model\",role=\"planner\",type=\"input\"}",
        "stepwise_step_duration_seconds_bucket{status=\"completed\",le=\"+Inf\"}",
        "stepwise_llm_duration_seconds_count{model=\"test-model\",role=\"synthesizer\"}",
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_runs_never_share_a_trace() {
    let capture = Capture::install();
    let steps: Vec<Value> = (0..3).map(|i| step(&format!("s{i}"), &[])).collect();
    let script = json!({
        "model": "test-model",
        "latency_ms": 2,
        "planner": [{"json": {"goal": "g", "steps": steps}}],
        "executor": [{"tool_calls": [{"name": "echo", "arguments": {}}]}, "done"],
        "synthesizer": ["merged"]
    });
    let runtime = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .tool(typed_tool("echo", "Returns ok", |_: NoArgs, _ctx| async { Ok("ok".to_owned()) }))
        .build()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(runtime.submit(&format!("task {i}")).await.unwrap());
    }
    let mut run_ids = HashSet::new();
    for h in &handles {
        assert_eq!(h.result().await.unwrap().status, RunStatus::Completed);
        run_ids.insert(h.id().as_str().to_owned());
    }
    runtime.shutdown().await;
    let spans = capture.spans();

    let mut traces: HashMap<TraceId, Vec<&SpanData>> = HashMap::new();
    for s in &spans {
        traces.entry(s.span_context.trace_id()).or_default().push(s);
    }
    assert_eq!(traces.len(), 10, "one trace per run");
    let mut seen_runs = HashSet::new();
    for group in traces.values() {
        let roots: Vec<_> = group.iter().filter(|s| s.name == "stepwise.run").collect();
        assert_eq!(roots.len(), 1);
        let ids: HashSet<String> = group.iter().filter_map(|s| attr(s, "stepwise.run.id")).collect();
        assert_eq!(ids.len(), 1, "spans of several runs in one trace: {ids:?}");
        let run = stepwise::run::RunId(ids.iter().next().unwrap().clone());
        assert_eq!(
            roots[0].span_context.trace_id(),
            stepwise::telemetry::trace_id_of(&run),
            "trace id = run id"
        );
        seen_runs.extend(ids);
        let in_group: HashSet<SpanId> = group.iter().map(|s| s.span_context.span_id()).collect();
        for s in group.iter().filter(|s| s.name != "stepwise.run") {
            assert!(in_group.contains(&s.parent_span_id), "{}'s parent is outside its run's trace", s.name);
        }
        // run, plan, 3 steps, synthesize; 1 + 3×2 + 1 chats; 3 tool calls.
        assert_eq!(
            group.len(),
            6 + 8 + 3,
            "{:?}",
            group.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        );
    }
    assert_eq!(seen_runs, run_ids);
}

#[tokio::test(flavor = "current_thread")]
async fn chat_spans_carry_the_calls_cost_when_the_model_has_a_price() {
    use stepwise::llm::config::ProviderKind;
    use stepwise::llm::price::{Price, PriceTable};
    let capture = Capture::install();
    let script = |model: &str| {
        json!({
            "model": model,
            "planner": [{"json": {"goal": "g", "steps": [step("s1", &[])]},
                         "usage": {"input_tokens": 1000, "output_tokens": 500}}],
            "executor": ["done"],
            "synthesizer": ["merged"]
        })
    };
    // 1000 input at 2 per million and 500 output at 4 per million: 0.004.
    let price = Price {
        provider: ProviderKind::Scripted,
        model: "priced".into(),
        input_per_mtok: 2.0,
        output_per_mtok: 4.0,
        cached_input_per_mtok: None,
    };
    for model in ["priced", "unpriced"] {
        let runtime = Stepwise::builder()
            .model(Arc::new(ScriptedModel::from_json(script(model)).unwrap()))
            .prices(PriceTable::new("USD", std::slice::from_ref(&price), None).unwrap())
            .workspace_root(tempfile::tempdir().unwrap().keep())
            .build()
            .await
            .unwrap();
        assert_eq!(runtime.run("t").await.unwrap().status, RunStatus::Completed);
        runtime.shutdown().await;
    }
    let spans = capture.spans();
    let planner_chat = |model: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == format!("chat {model}") && attr(s, "stepwise.role").as_deref() == Some("planner")
            })
            .unwrap_or_else(|| panic!("no planner chat span for {model}: {:?}", names(&spans)))
    };
    assert_eq!(attr(planner_chat("priced"), "stepwise.usage.cost").as_deref(), Some("0.004"));
    assert_eq!(attr(planner_chat("priced"), "stepwise.usage.cached_input_tokens").as_deref(), Some("0"));
    assert_eq!(attr(planner_chat("unpriced"), "stepwise.usage.cost"), None, "unknown is not zero");
    assert!(attr(planner_chat("unpriced"), "gen_ai.usage.input_tokens").is_some());
}

#[tokio::test(flavor = "current_thread")]
async fn a_cached_plan_has_a_plan_span_marked_cached_without_a_chat() {
    let capture = Capture::install();
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [step("s1", &[])]}}],
        "steps": {"s1": ["ok"]},
        "synthesizer": ["done"]
    });
    let bounds =
        stepwise::store::plan_cache::PlanCacheBounds { max_entries: 10, ttl: Duration::from_secs(60) };
    let runtime = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .plan_cache(Some(bounds))
        .build()
        .await
        .unwrap();
    let first = runtime.run("the task").await.unwrap();
    let second = runtime.run("the task").await.unwrap();
    assert_eq!(second.status, RunStatus::Completed, "{second:?}");
    runtime.shutdown().await;
    let spans = capture.spans();
    let plan_of = |id: &str| {
        let run = spans
            .iter()
            .find(|s| s.name == "stepwise.run" && attr(s, "stepwise.run.id").as_deref() == Some(id))
            .unwrap();
        let plan = children(&spans, run).into_iter().find(|s| s.name == "stepwise.plan").unwrap();
        (plan, children(&spans, plan).len())
    };
    let (missed, chats) = plan_of(first.id.as_str());
    assert_eq!(attr(missed, "stepwise.plan.cached").as_deref(), Some("false"));
    assert_eq!(chats, 1, "the miss called the planner");
    let (hit, chats) = plan_of(second.id.as_str());
    assert_eq!(attr(hit, "stepwise.plan.cached").as_deref(), Some("true"));
    assert_eq!(attr(hit, "stepwise.plan.cached_from").as_deref(), Some(first.id.as_str()));
    assert_eq!(attr(hit, "stepwise.plan.steps").as_deref(), Some("1"));
    assert_eq!(chats, 0, "no chat span under a cached plan");
}

#[tokio::test(flavor = "current_thread")]
async fn waiting_for_a_tool_calls_approval_is_its_own_span_under_the_step() {
    let capture = Capture::install();
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [step("s1", &[])]}}],
        "steps": {"s1": [{"tool_calls": [{"id": "call-7", "name": "echo", "arguments": {}}]}, "done"]},
        "synthesizer": ["merged"]
    });
    let mut options = stepwise::RunOptions::default();
    options.policy.approve_tools = vec!["echo".into()];
    let runtime = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .options(options)
        .tool(typed_tool("echo", "Echoes", |_: Value, _ctx| async { Ok("echoed".to_owned()) }))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .build()
        .await
        .unwrap();
    let handle = runtime.submit("t").await.unwrap();
    let pending = loop {
        let p = handle.pending_approvals().await.unwrap();
        if !p.is_empty() {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    handle.resolve_tool_call(&pending[0].approval_id, stepwise::ToolDecision::Approve).await.unwrap();
    assert_eq!(handle.result().await.unwrap().status, RunStatus::Completed);
    runtime.shutdown().await;

    let spans = capture.spans();
    let wait = one(&spans, "stepwise.approval echo");
    let step_span = one(&spans, "stepwise.step s1");
    assert_eq!(wait.parent_span_id, step_span.span_context.span_id(), "the wait hangs under its step");
    assert_eq!(attr(wait, "stepwise.approval.id"), Some(pending[0].approval_id.clone()));
    assert_eq!(attr(wait, "gen_ai.tool.name").as_deref(), Some("echo"));
    assert_eq!(attr(wait, "gen_ai.tool.call.id").as_deref(), Some("call-7"));
    assert_eq!(attr(wait, "stepwise.approval.outcome").as_deref(), Some("approved"));
    assert!(children(&spans, step_span).iter().any(|s| s.name == "execute_tool echo"), "the call ran after");
}
