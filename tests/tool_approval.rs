//! Tool calls that wait for a person: parallel steps pause on their own calls, each answer
//! reaches exactly its call, the model sees each, and the HTTP API refuses what does not fit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use stepwise::llm::Role;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::options::RunOptions;
use stepwise::plan::StepStatus;
use stepwise::run::{EventKind, PendingApproval, RunStatus, ToolDecision};
use stepwise::server::{ServerState, serve};
use stepwise::tools::typed_tool;
use stepwise::{RunHandle, Runtime, Stepwise};

mod support_spy;
use support_spy::Spy;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct DeployArgs {
    /// Where to deploy.
    target: String,
}

fn step(id: &str) -> Value {
    json!({"id": id, "description": format!("do {id}"), "expected_outcome": "", "tool": null, "depends_on": []})
}

fn deploy_call(id: &str, target: &str) -> Value {
    json!({"tool_calls": [{"id": id, "name": "deploy", "arguments": {"target": target}}]})
}

/// s1 and s2 each call `deploy` once, then answer; s3 needs no tool.
fn script() -> Value {
    json!({
        "planner": [{"json": {"goal": "g", "steps": [step("s1"), step("s2"), step("s3")]}}],
        "steps": {
            "s1": [deploy_call("call-1", "one"), "s1 answered"],
            "s2": [deploy_call("call-2", "two"), "s2 answered"],
            "s3": ["s3 done"]
        },
        "synthesizer": ["all done"]
    })
}

/// A runtime whose `deploy` tool records each target it ran with.
async fn runtime(spy: Arc<Spy>, deployed: Arc<Mutex<Vec<String>>>) -> Runtime {
    let mut options = RunOptions::default();
    options.policy.approve_tools = vec!["deploy".into()];
    Stepwise::builder()
        .model(spy)
        .options(options)
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .tool(typed_tool("deploy", "Deploys", move |a: DeployArgs, _ctx| {
            let deployed = deployed.clone();
            async move {
                deployed.lock().unwrap().push(a.target.clone());
                Ok(format!("deployed to {}", a.target))
            }
        }))
        .build()
        .await
        .expect("runtime")
}

fn spy() -> Arc<Spy> {
    Arc::new(Spy::new(script()))
}

/// Waits until `n` calls are pending and returns them.
async fn pending(handle: &RunHandle, n: usize) -> Vec<PendingApproval> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = handle.pending_approvals().await.unwrap();
        if p.len() == n {
            return p;
        }
        assert!(Instant::now() < deadline, "{} pending, expected {n}", p.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The tool observation the model was shown for `call_id` in `step`'s last request.
fn observation(spy: &Spy, step: &str, call_id: &str) -> String {
    let seen = spy.seen.lock().unwrap();
    let last = (seen.iter().rev())
        .find(|r| r.context.step.as_ref().is_some_and(|s| s.as_str() == step))
        .expect("a request of the step");
    (last.messages.iter())
        .find(|m| m.role == Role::Tool && m.tool_call_id.as_deref() == Some(call_id))
        .map(|m| m.content.clone())
        .unwrap_or_else(|| panic!("{step}'s last request has no observation for {call_id}"))
}

#[tokio::test]
async fn parallel_pending_calls_are_answered_in_any_order_each_reaching_its_own_call() {
    let (spy, deployed) = (spy(), Arc::new(Mutex::new(vec![])));
    let rt = runtime(spy.clone(), deployed.clone()).await;
    let handle = rt.submit("deploy twice").await.unwrap();
    let calls = pending(&handle, 2).await;
    assert_ne!(calls[0].approval_id, calls[1].approval_id, "each call has its own id");
    let of = |step: &str| calls.iter().find(|c| c.step.as_str() == step).unwrap().clone();
    let (first, second) = (of("s1"), of("s2"));
    assert_eq!((first.call_id.as_str(), second.call_id.as_str()), ("call-1", "call-2"));
    assert_eq!(second.arguments, json!({"target": "two"}));
    // The other step went on meanwhile, and nothing ran unapproved.
    let snap = handle.snapshot().await.unwrap();
    let s3 = snap.plan.steps.iter().find(|s| s.id.as_str() == "s3").unwrap();
    assert_eq!(s3.status, StepStatus::Completed);
    assert_eq!(snap.status, RunStatus::Running);
    assert!(deployed.lock().unwrap().is_empty());

    handle.resolve_tool_call(&second.approval_id, ToolDecision::Approve).await.unwrap();
    let reject = ToolDecision::Reject { reason: "not on a Friday".into() };
    handle.resolve_tool_call(&first.approval_id, reject).await.unwrap();
    let result = handle.result().await.unwrap();
    assert_eq!(result.status, RunStatus::Completed, "{:?}", result.error);
    assert_eq!(result.final_output.as_deref(), Some("all done"));

    assert_eq!(*deployed.lock().unwrap(), ["two"], "the approved call ran once, with its own arguments");
    assert_eq!(observation(&spy, "s2", "call-2"), "deployed to two");
    let refused = observation(&spy, "s1", "call-1");
    assert!(refused.contains("not on a Friday"), "the model sees the reason: {refused}");
    let again = handle.resolve_tool_call(&first.approval_id, ToolDecision::Approve).await;
    assert!(again.is_err(), "the run ended; the call was answered already");
    assert!(result.pending_approvals.is_empty());
}

#[tokio::test]
async fn a_per_run_list_naming_an_unknown_tool_is_refused() {
    let rt = runtime(spy(), Arc::new(Mutex::new(vec![]))).await;
    let mut options = RunOptions::default();
    options.policy.approve_tools = vec!["deploy".into(), "delpoy".into()];
    let e = rt.submit_with("t", options).await.err().expect("refused");
    assert!(e.to_string().contains("approve_tools: unknown tool \"delpoy\""), "{e}");
}

async fn http(rt: Runtime) -> (String, reqwest::Client, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, ServerState::new(Arc::new(rt)), async {
        let _ = stopped.await;
    }));
    (base, reqwest::Client::new(), stop)
}

#[tokio::test]
async fn over_http_edits_are_checked_against_the_schema_and_answers_count_once() {
    let (spy, deployed) = (spy(), Arc::new(Mutex::new(vec![])));
    let rt = runtime(spy.clone(), deployed.clone()).await;
    let handle = rt.submit("deploy twice").await.unwrap();
    pending(&handle, 2).await;
    let (base, client, _stop) = http(rt).await;
    let runs = format!("{base}/v1/runs/{}", handle.id());
    let listed: Value = client.get(format!("{runs}/approvals")).send().await.unwrap().json().await.unwrap();
    let approvals = listed["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 2, "{listed:#}");
    let id_of = |step: &str| {
        approvals.iter().find(|a| a["step"] == step).unwrap()["approval_id"].as_str().unwrap().to_owned()
    };
    let (a1, a2) = (id_of("s1"), id_of("s2"));
    let post = |id: &str, body: Value| client.post(format!("{runs}/approvals/{id}")).json(&body).send();

    let r = post(&a1, json!({"decision": "edit", "arguments": {"target": 7}})).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("/target"), "names the field: {body:#}");
    let r =
        post(&a1, json!({"decision": "edit", "arguments": {"target": "x", "force": true}})).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(deployed.lock().unwrap().is_empty(), "nothing ran");
    assert_eq!(
        post("no-such-id", json!({"decision": "approve"})).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let r = post(&a2, json!({"decision": "reject", "reason": " "})).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "a blank reason");

    let r = post(&a1, json!({"decision": "edit", "arguments": {"target": "staging"}})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["approval_id"].as_str(), body["outcome"].as_str()), (Some(a1.as_str()), Some("edited")));
    let r = post(&a1, json!({"decision": "approve"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "answered already");
    let r = post(&a2, json!({"decision": "reject", "reason": "no"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let result = handle.result().await.unwrap();
    assert_eq!(result.status, RunStatus::Completed, "{:?}", result.error);
    assert_eq!(*deployed.lock().unwrap(), ["staging"], "the edited call ran once with the edit");
    let unknown_run = client.get(format!("{base}/v1/runs/nope/approvals")).send().await.unwrap();
    assert_eq!(unknown_run.status(), StatusCode::NOT_FOUND);
    let events: Vec<String> =
        (rt_events(&handle).await.into_iter()).filter(|k| k.starts_with("ToolApproval")).collect();
    assert_eq!(events.len(), 4, "{events:?}");
}

async fn rt_events(handle: &RunHandle) -> Vec<String> {
    use futures::StreamExt;
    handle.events().map(|e| e.unwrap().kind.name().to_owned()).collect().await
}

#[test]
fn decisions_have_the_documented_json_shape() {
    let edit: ToolDecision =
        serde_json::from_value(json!({"decision": "edit", "arguments": {"a": 1}})).unwrap();
    assert_eq!(edit, ToolDecision::Edit { arguments: json!({"a": 1}) });
    let e = EventKind::ToolApprovalResolved {
        approval_id: "x".into(),
        step: "s1".into(),
        decision: ToolDecision::TimedOut,
    };
    assert_eq!(serde_json::to_value(&e).unwrap()["decision"], "timed_out");
}

/// A tool that says it is destructive, as an MCP server's `destructiveHint: true` does.
struct Wipe;

#[async_trait::async_trait]
impl stepwise::tools::Tool for Wipe {
    fn name(&self) -> &str {
        "wipe"
    }
    fn description(&self) -> &str {
        "Wipes"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}})
    }
    fn hints(&self) -> stepwise::tools::ToolHints {
        stepwise::tools::ToolHints { destructive: Some(true), ..Default::default() }
    }
    async fn call(
        &self,
        _: Value,
        _: &stepwise::tools::ToolContext,
    ) -> Result<String, stepwise::tools::ToolError> {
        Ok("wiped".into())
    }
}

#[tokio::test]
async fn approve_destructive_pauses_only_on_tools_that_say_they_are_destructive() {
    let call = |id: &str, tool: &str| json!({"tool_calls": [{"id": id, "name": tool, "arguments": {}}]});
    let script = json!({
        "planner": [{"json": {"goal": "g", "steps": [step("s1"), step("s2")]}}],
        "steps": {"s1": [call("w", "wipe"), "wiped it"], "s2": [call("d", "deploy"), "s2 done"]},
        "synthesizer": ["done"]
    });
    let mut options = RunOptions::default();
    options.policy.approve_destructive = true;
    let deployed = Arc::new(Mutex::new(vec![]));
    let recorded = deployed.clone();
    let rt = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .options(options)
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .tool(Wipe)
        .tool(typed_tool("deploy", "Deploys", move |_: serde_json::Map<String, Value>, _ctx| {
            let recorded = recorded.clone();
            async move {
                recorded.lock().unwrap().push("ran".to_owned());
                Ok("ok".to_owned())
            }
        }))
        .build()
        .await
        .unwrap();
    let handle = rt.submit("t").await.unwrap();
    let calls = pending(&handle, 1).await;
    assert_eq!(calls[0].tool, "wipe");
    let deadline = Instant::now() + Duration::from_secs(10);
    while deployed.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "deploy is not destructive and runs without a person");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.resolve_tool_call(&calls[0].approval_id, ToolDecision::Approve).await.unwrap();
    assert_eq!(handle.result().await.unwrap().status, RunStatus::Completed);
}
