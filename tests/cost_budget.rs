//! Budgets in money, end to end with the scripted model: every call priced from the price table,
//! the cost in the result, `max_cost` checked before each step's model call, and a model
//! without a price costing "unknown" (with one warning) and capped by nothing.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use stepwise::llm::Cost;
use stepwise::llm::config::ProviderKind;
use stepwise::llm::price::{Price, PriceTable};
use stepwise::llm::scripted::ScriptedModel;
use stepwise::options::{FailurePolicy, RunOptions};
use stepwise::plan::StepStatus;
use stepwise::run::{RunResult, RunStatus};
use stepwise::{Runtime, Stepwise};

/// Every scripted call reports 100 input and 50 output tokens: at 1000 and 2000 per million
/// tokens, 0.1 + 0.1 = 0.2 a call.
const CALL_COST: f64 = 0.2;

fn usage() -> Value {
    json!({"input_tokens": 100, "output_tokens": 50})
}

fn step(id: &str, deps: &[&str]) -> Value {
    json!({"id": id, "description": format!("do {id}"), "expected_outcome": "", "tool": null, "depends_on": deps})
}

/// A chain of `n` steps, each answering in one call, planned and synthesised by `model`.
fn chain_script(model: &str, n: usize) -> Value {
    let ids: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
    let steps: Vec<Value> = (0..n)
        .map(|i| step(&ids[i], &ids[..i].last().map(|p| vec![p.as_str()]).unwrap_or_default()))
        .collect();
    let answers: serde_json::Map<String, Value> = ids
        .iter()
        .map(|id| (id.clone(), json!([{"content": format!("{id} done"), "usage": usage()}])))
        .collect();
    json!({
        "model": model,
        "planner": [{"json": {"goal": "g", "steps": steps}, "usage": usage()}],
        "steps": answers,
        "synthesizer": [{"content": "all done", "usage": usage()}]
    })
}

fn prices(model: &str) -> PriceTable {
    let price = Price {
        provider: ProviderKind::Scripted,
        model: model.into(),
        input_per_mtok: 1000.0,
        output_per_mtok: 2000.0,
        cached_input_per_mtok: Some(100.0),
    };
    // `[llm] max_tokens = 100`: the most a call writes, for the check before it.
    PriceTable::new("USD", &[price], Some(100)).unwrap()
}

async fn runtime(script: Value, opts: RunOptions, prices: PriceTable) -> Runtime {
    Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).expect("script")))
        .options(opts)
        .prices(prices)
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .build()
        .await
        .expect("runtime")
}

fn cost(r: &RunResult) -> f64 {
    r.usage.cost.amount().unwrap_or_else(|| panic!("cost unknown: {r:#?}"))
}

#[tokio::test]
async fn a_run_whose_max_cost_is_below_what_its_plan_needs_ends_budget_exhausted() {
    let mut opts = RunOptions::default();
    opts.run_budget.max_cost = 1.0;
    let rt = runtime(chain_script("priced", 5), opts, prices("priced")).await;
    let r = rt.run("five steps, money for fewer").await.unwrap();

    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    let error = r.error.as_deref().unwrap();
    assert!(error.contains("run budget exhausted") && error.contains("run_budget.max_cost"), "{error}");
    // Every call made was priced and counted: the cost is reported, and exactly what they cost.
    assert!(r.usage.llm_calls >= 2, "the planner and at least one step ran: {r:#?}");
    assert_eq!(r.usage.cost, Cost::from_amount(CALL_COST * r.usage.llm_calls as f64));
    // The check before each step's call kept the run within its cap (at most one call over).
    assert!(cost(&r) <= 1.0 + CALL_COST, "cost {} over the cap by more than a call", cost(&r));
    assert!(cost(&r) <= 1.0, "the executor's checked calls never pass the cap: {}", cost(&r));
    let refused = r.plan.steps.iter().find(|s| s.status == StepStatus::Failed).expect("a refused step");
    assert!(refused.error.as_deref().unwrap().contains("budget_exhausted"), "{refused:#?}");
    assert_eq!(r.plan.steps.last().unwrap().status, StepStatus::Pending, "nothing runs after the cap");
    // The result's JSON carries the cost as a number beside the old usage fields.
    let json = serde_json::to_value(&r).unwrap();
    for key in ["llm_calls", "input_tokens", "output_tokens", "tool_calls"] {
        assert!(json["usage"][key].is_u64(), "usage.{key}: {}", json["usage"]);
    }
    assert_eq!(json["usage"]["cost"].as_f64(), Some(cost(&r)));
}

#[tokio::test]
async fn a_step_max_cost_fails_the_attempt_budget_exhausted_and_the_run_spends_no_more() {
    let mut opts = RunOptions::default();
    opts.policy.on_step_failure = FailurePolicy::Retry;
    opts.policy.max_retries = 0;
    // Less than the output cap alone costs (100 tokens at 2000 per million: 0.2).
    opts.step_budget.max_cost = 0.15;
    let rt = runtime(chain_script("priced", 2), opts, prices("priced")).await;
    let r = rt.run("a step too dear").await.unwrap();

    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    let s1 = &r.plan.steps[0];
    assert_eq!(s1.status, StepStatus::Failed);
    let error = s1.error.as_deref().unwrap();
    assert!(error.starts_with("budget_exhausted: max_cost: 0 spent"), "{error}");
    assert_eq!((r.usage.llm_calls, cost(&r)), (1, CALL_COST), "only the planner's call was made");
}

#[tokio::test]
async fn a_completed_run_reports_its_cost_per_step_and_in_total() {
    let rt = runtime(chain_script("priced", 2), RunOptions::default(), prices("priced")).await;
    let handle = rt.submit("cheap enough").await.unwrap();
    let r = handle.result().await.unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
    assert_eq!((r.usage.llm_calls, r.usage.cost), (4, Cost::from_amount(4.0 * CALL_COST)));
    let events = rt.store().events(handle.id(), 0).await.unwrap();
    let step_costs: Vec<Value> = (events.iter())
        .filter(|e| e.kind.name() == "StepCompleted")
        .map(|e| serde_json::to_value(&e.kind).unwrap()["usage"]["cost"].clone())
        .collect();
    assert_eq!(step_costs, vec![json!(CALL_COST), json!(CALL_COST)]);
}

/// The log lines written so far, for the warning test.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_model_without_a_price_costs_unknown_enforces_no_cap_and_warns_once() {
    let logs = captured_logs();
    let mut opts = RunOptions::default();
    opts.run_budget.max_cost = 0.000001;
    opts.step_budget.max_cost = 0.000001;
    // Priced: another model only.
    let rt = runtime(chain_script("unpriced-model", 2), opts, prices("priced")).await;
    for task in ["first", "second"] {
        let r = rt.run(task).await.unwrap();
        assert_eq!(r.status, RunStatus::Completed, "no cap applies to an unpriced model: {r:#?}");
        assert_eq!(r.usage.cost, Cost::UNKNOWN);
        assert_eq!(r.usage.llm_calls, 4);
        assert_eq!(serde_json::to_value(&r).unwrap()["usage"]["cost"], Value::Null);
    }
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let warnings = text.lines().filter(|l| l.contains("WARN") && l.contains("unpriced-model")).count();
    assert_eq!(warnings, 1, "one warning for eight calls over two runs:\n{text}");
    assert!(text.contains("no [[llm.prices]] entry"), "{text}");
}

#[tokio::test]
async fn steps_running_at_once_share_the_run_budget() {
    // Output only is priced: a call may cost up to its 100 output tokens, 0.2, and these do.
    let price = Price {
        provider: ProviderKind::Scripted,
        model: "parallel".into(),
        input_per_mtok: 0.0,
        output_per_mtok: 2000.0,
        cached_input_per_mtok: None,
    };
    let prices = PriceTable::new("USD", &[price], Some(100)).unwrap();
    let full = json!({"input_tokens": 10, "output_tokens": 100});
    let ids = ["a", "b", "c"];
    let answers: serde_json::Map<String, Value> = ids
        .iter()
        .map(|id| (id.to_string(), json!([{"content": "ok", "usage": full, "delay_ms": 50}])))
        .collect();
    let script = json!({
        "model": "parallel",
        "planner": [{"json": {"goal": "g", "steps": ids.map(|id| step(id, &[]))}, "usage": usage()}],
        "steps": answers,
        "synthesizer": [{"content": "done", "usage": full}]
    });
    let mut opts = RunOptions::default();
    // The planner spends 0.1; three steps of 0.2 at once would take the run to 0.7.
    opts.run_budget.max_cost = 0.45;
    let rt = runtime(script, opts, prices).await;
    let r = rt.run("three at once").await.unwrap();
    assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
    assert!(r.error.as_deref().unwrap().contains("run budget exhausted"), "{:?}", r.error);
    assert!(cost(&r) <= 0.45, "the steps together spent past the cap: {}", cost(&r));
    // Refused before its call, with the other steps' calls counted: without them each step saw
    // 0.1 spent, all three calls fitted, and the run ended at 0.7.
    assert!(r.error.as_deref().unwrap().contains("run_budget.max_cost"), "{:?}", r.error);
}
