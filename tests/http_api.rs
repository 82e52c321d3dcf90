//! The HTTP API over a real socket on 127.0.0.1, driven with reqwest, on the scripted model and
//! the in-memory store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use stepwise::llm::scripted::ScriptedModel;
use stepwise::options::RunOptions;
use stepwise::run::{RunEvent, RunId};
use stepwise::server::{ServerState, check_bind, serve};
use stepwise::store::{ListQuery, RunStore, RunSummary, StoreError};
use stepwise::{Runtime, Stepwise};

const TOKEN: &str = "test-token-0123456789";

fn plan(steps: Value) -> Value {
    json!({"json": {"goal": "test goal", "steps": steps}})
}

fn step(id: &str, deps: &[&str]) -> Value {
    json!({"id": id, "description": format!("do {id}"), "expected_outcome": format!("{id} done"), "tool": null, "depends_on": deps})
}

/// One step `s1` taking `delay_ms`; an edited plan may use step `mine`.
fn script(delay_ms: u64) -> Value {
    json!({
        "planner": [plan(json!([step("s1", &[])]))],
        "steps": {"s1": [{"content": "s1 output", "delay_ms": delay_ms}], "mine": ["edited step ran"]},
        "synthesizer": ["final answer"]
    })
}

async fn runtime(script: Value, options: RunOptions, store: Option<Arc<dyn RunStore>>) -> Arc<Runtime> {
    let model = ScriptedModel::from_json(script).expect("script");
    let mut b = Stepwise::builder()
        .model(Arc::new(model))
        .options(options)
        .workspace_root(tempfile::tempdir().unwrap().keep());
    if let Some(s) = store {
        b = b.store(s);
    }
    Arc::new(b.build().await.expect("runtime"))
}

struct Server {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(state: ServerState) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, state, async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Server { base, client, stop: Some(tx), served: Some(served) }
    }

    /// A server with the default script and the bearer token `TOKEN`.
    async fn default() -> Server {
        let rt = runtime(script(200), RunOptions::default(), None).await;
        Server::start(ServerState::new(rt).tokens(vec![TOKEN.into()])).await
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base)).bearer_auth(TOKEN)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base)).bearer_auth(TOKEN)
    }

    async fn submit(&self, body: Value) -> String {
        let r = self.post("/v1/runs").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    async fn run(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/runs/{id}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Polls `GET /v1/runs/{id}` until its status is `status`.
    async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.run(id).await;
            if v["status"] == status {
                return v;
            }
            assert!(Instant::now() < deadline, "run {id} never reached {status}: {v:#}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Expects `{"error": {"code": code, "message": …}}` with `status`; returns the message.
async fn expect_error(r: reqwest::Response, status: StatusCode, code: &str) -> String {
    assert_eq!(r.status(), status);
    let v: Value = r.json().await.expect("a JSON error body");
    assert_eq!(v["error"]["code"], code, "{v:#}");
    assert_eq!(v.as_object().unwrap().len(), 1, "only `error`: {v:#}");
    v["error"]["message"].as_str().expect("a message").to_owned()
}

#[derive(Debug, Default, Clone)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comment: bool,
}

/// Reads SSE frames until the stream ends or `max` data frames arrived.
async fn sse_frames(resp: reqwest::Response, max: usize) -> (Vec<Frame>, bool) {
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        while let Some(pos) = buf.find("\n\n") {
            let raw: String = buf.drain(..pos + 2).collect();
            let mut f = Frame::default();
            for line in raw.lines() {
                if line.starts_with(':') {
                    f.comment = true;
                } else if let Some((k, v)) = line.split_once(':') {
                    let v = v.strip_prefix(' ').unwrap_or(v).to_owned();
                    match k {
                        "id" => f.id = Some(v),
                        "event" => f.event = Some(v),
                        "data" => f.data = Some(v),
                        _ => {}
                    }
                }
            }
            frames.push(f);
            if frames.iter().filter(|f| f.data.is_some()).count() >= max {
                return (frames, false);
            }
        }
        match tokio::time::timeout_at(deadline, body.next()).await.expect("SSE stalled") {
            Some(chunk) => buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
            None => return (frames, true),
        }
    }
}

/// The data frames as events, checking `id` = seq and `event` = type on each.
fn events_of(frames: &[Frame]) -> Vec<RunEvent> {
    frames
        .iter()
        .filter(|f| f.data.is_some())
        .map(|f| {
            let e: RunEvent = serde_json::from_str(f.data.as_deref().unwrap()).unwrap();
            assert_eq!(f.id.as_deref(), Some(e.seq.to_string().as_str()));
            assert_eq!(f.event.as_deref(), Some(e.kind.name()));
            e
        })
        .collect()
}

#[tokio::test]
async fn a_submitted_run_is_accepted_then_completes() {
    let s = Server::default().await;
    let r = s.post("/v1/runs").json(&json!({"task": "  write a report  "})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(v["status"], "planning");
    assert_eq!(location, format!("/v1/runs/{id}"));

    let r = s.wait_status(id, "completed").await;
    assert_eq!(r["id"], id);
    assert_eq!(r["task"], "write a report", "the task is trimmed");
    assert_eq!(r["final_output"], "final answer");
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["replanned"], false);
    assert_eq!(r["revisions"].as_array().unwrap().len(), 1);
    assert_eq!(r["plan"]["revision"], 1);
    let s1 = &r["plan"]["steps"][0];
    assert_eq!((s1["id"].as_str(), s1["status"].as_str()), (Some("s1"), Some("completed")));
    assert_eq!((s1["attempts"].as_u64(), s1["output"].as_str()), (Some(1), Some("s1 output")));
    assert_eq!(r["usage"]["llm_calls"], 3, "planner, s1, synthesizer");
    assert_eq!(r["usage"]["tool_calls"], 0);
    assert!(r["created_at"].is_string() && r["finished_at"].is_string(), "{r:#}");
}

#[tokio::test]
async fn per_run_options_merge_onto_the_defaults() {
    let mut defaults = RunOptions::default();
    defaults.policy.max_replans = 7;
    defaults.step_budget.max_iterations = 5;
    let rt = runtime(script(0), defaults, None).await;
    let s = Server::start(ServerState::new(rt).tokens(vec![TOKEN.into()])).await;
    let id = s
        .submit(json!({"task": "t", "policy": {"max_retries": 3}, "run_budget": {"max_tool_calls": 9}, "require_approval": true}))
        .await;
    s.wait_status(&id, "awaiting_approval").await;
    let r = s.get(&format!("/v1/runs/{id}/events")).send().await.unwrap();
    let (frames, _) = sse_frames(r, 1).await;
    let first = &events_of(&frames)[0];
    let stepwise::run::EventKind::RunSubmitted { options, .. } = &first.kind else { panic!("{first:?}") };
    assert_eq!(options.policy.max_retries, 3, "the given key");
    assert_eq!(options.policy.max_replans, 7, "a default of the runtime, kept");
    assert!(options.policy.require_approval, "top-level require_approval");
    assert_eq!(options.step_budget.max_iterations, 5);
    assert_eq!(options.run_budget.max_tool_calls, 9);
}

#[tokio::test]
async fn runs_are_listed_by_status_a_page_at_a_time() {
    let s = Server::default().await;
    let mut done = Vec::new();
    for i in 0..3 {
        done.push(s.submit(json!({"task": format!("task {i}")})).await);
    }
    let waiting = s.submit(json!({"task": "hold", "require_approval": true})).await;
    for id in &done {
        s.wait_status(id, "completed").await;
    }
    s.wait_status(&waiting, "awaiting_approval").await;

    let page = |q: String| {
        let s = &s;
        async move {
            let r = s.get(&format!("/v1/runs?{q}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let p1 = page("status=completed&limit=2".into()).await;
    let ids = |p: &Value| {
        p["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&p1), vec![done[2].clone(), done[1].clone()], "newest first");
    assert_eq!(p1["next_before"], done[1].as_str());
    assert!(p1["runs"].as_array().unwrap().iter().all(|r| r["status"] == "completed"));
    let p2 = page(format!("status=completed&limit=2&before={}", done[1])).await;
    assert_eq!(ids(&p2), vec![done[0].clone()]);
    assert_eq!(p2["next_before"], Value::Null, "last page");
    let w = page("status=awaiting_approval".into()).await;
    assert_eq!(ids(&w), vec![waiting.clone()]);
    assert_eq!(w["runs"][0]["task"], "hold");
    let all = page(String::new()).await;
    assert_eq!(all["runs"].as_array().unwrap().len(), 4);

    let m = expect_error(
        s.get("/v1/runs?status=finished").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("finished") && m.contains("awaiting_approval"), "{m}");
    let m = expect_error(
        s.get("/v1/runs?limit=many").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("limit"), "{m}");
}

#[tokio::test]
async fn events_stream_live_and_resume_without_gaps_or_duplicates() {
    let s = Server::default().await;
    let id = s.submit(json!({"task": "stream me"})).await;
    // Read two events, then drop the connection mid-run.
    let r = s.get(&format!("/v1/runs/{id}/events")).send().await.unwrap();
    let (first, ended) = sse_frames(r, 2).await;
    assert!(!ended);
    let mut seen = events_of(&first);
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    // Reconnect where the client left off, as EventSource does (the header wins over ?after=).
    let r =
        s.get(&format!("/v1/runs/{id}/events?after=0")).header("Last-Event-ID", "2").send().await.unwrap();
    let (rest, ended) = sse_frames(r, usize::MAX).await;
    assert!(ended, "the stream ends after the terminal event");
    seen.extend(events_of(&rest));
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "in order, no gaps, no duplicates");
    let names: Vec<&str> = seen.iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["RunSubmitted", "PlanProposed", "StepStarted", "StepCompleted", "RunCompleted"]);
    assert!(seen.iter().all(|e| e.run_id == RunId(id.clone())));

    // `?after=N` works without the header too.
    let r = s.get(&format!("/v1/runs/{id}/events?after=3")).send().await.unwrap();
    let (tail, ended) = sse_frames(r, usize::MAX).await;
    assert!(ended);
    assert_eq!(events_of(&tail).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);

    let m = expect_error(
        s.get(&format!("/v1/runs/{id}/events")).header("Last-Event-ID", "two").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("Last-Event-ID"), "{m}");
}

#[tokio::test]
async fn a_late_subscriber_gets_the_whole_history() {
    let s = Server::default().await;
    let id = s.submit(json!({"task": "finished before anyone listened"})).await;
    let done = s.wait_status(&id, "completed").await;
    let r = s.get(&format!("/v1/runs/{id}/events")).send().await.unwrap();
    let (frames, ended) = sse_frames(r, usize::MAX).await;
    assert!(ended);
    let events = events_of(&frames);
    assert_eq!(events.first().unwrap().kind.name(), "RunSubmitted");
    assert_eq!(events.last().unwrap().kind.name(), "RunCompleted");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=5).collect::<Vec<_>>());
    assert!(done["finished_at"].is_string());
}

#[tokio::test]
async fn quiet_streams_get_keep_alive_comments() {
    let rt = runtime(script(0), RunOptions::default(), None).await;
    let s = Server::start(
        ServerState::new(rt).tokens(vec![TOKEN.into()]).sse_keep_alive(Duration::from_millis(50)),
    )
    .await;
    let id = s.submit(json!({"task": "wait", "require_approval": true})).await;
    s.wait_status(&id, "awaiting_approval").await;
    let r = s.get(&format!("/v1/runs/{id}/events?after=2")).send().await.unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while !text.contains(":\n") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), body.next()).await.expect("a keep-alive").unwrap();
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(!text.contains("data:"), "no events after seq 2 while awaiting approval: {text}");
}

#[tokio::test]
async fn approval_takes_an_edited_plan_and_refuses_an_invalid_one() {
    let s = Server::default().await;
    let id = s.submit(json!({"task": "approve me", "require_approval": true})).await;
    let r = s.wait_status(&id, "awaiting_approval").await;
    assert!(r["plan"]["steps"].as_array().unwrap().iter().all(|s| s["attempts"] == 0));

    let cyclic = json!({"plan": {"goal": "g", "steps": [step("x", &["x"])]}});
    let m = expect_error(
        s.post(&format!("/v1/runs/{id}/approve")).json(&cyclic).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("step x") && m.contains("cycle"), "{m}");
    let typo = json!({"plan": {"goal": "g", "steps": [{"id": "x", "descripton": "d"}]}});
    let m = expect_error(
        s.post(&format!("/v1/runs/{id}/approve")).json(&typo).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("plan.steps[0]") && m.contains("descripton"), "{m}");
    assert_eq!(s.run(&id).await["status"], "awaiting_approval", "refused edits change nothing");

    let edited = json!({"plan": {"goal": "g", "steps": [step("mine", &[])]}});
    let r = s.post(&format!("/v1/runs/{id}/approve")).json(&edited).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_ne!(v["status"], "awaiting_approval");
    let done = s.wait_status(&id, "completed").await;
    assert_eq!(done["plan"]["steps"][0]["id"], "mine");
    assert_eq!(done["plan"]["steps"][0]["output"], "edited step ran");

    let m = expect_error(
        s.post(&format!("/v1/runs/{id}/approve")).send().await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(m.contains("already ended"), "{m}");
}

#[tokio::test]
async fn reject_and_cancel_end_runs_and_repeat_with_409() {
    let s = Server::default().await;
    let a = s.submit(json!({"task": "reject me", "require_approval": true})).await;
    s.wait_status(&a, "awaiting_approval").await;
    let r =
        s.post(&format!("/v1/runs/{a}/reject")).json(&json!({"reason": "too risky"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    let run = s.run(&a).await;
    assert!(run["error"].as_str().unwrap().contains("too risky"), "{run:#}");
    expect_error(
        s.post(&format!("/v1/runs/{a}/reject")).send().await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    expect_error(
        s.post(&format!("/v1/runs/{a}/cancel")).send().await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;

    // Cancel with no body at all.
    let b = s.submit(json!({"task": "cancel me", "require_approval": true})).await;
    s.wait_status(&b, "awaiting_approval").await;
    let r = s.post(&format!("/v1/runs/{b}/cancel")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    assert_eq!(s.run(&b).await["error"], "cancelled over the API");
    let m = expect_error(
        s.post(&format!("/v1/runs/{b}/cancel")).send().await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(m.contains("already ended"), "{m}");

    let m = expect_error(
        s.post(&format!("/v1/runs/{b}/cancel")).json(&json!({"why": "x"})).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("why"), "{m}");
    for action in ["approve", "reject", "cancel"] {
        let m = expect_error(
            s.post(&format!("/v1/runs/no-such-run/{action}")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert!(m.contains("no-such-run"), "{m}");
    }
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_running_plan_cannot_be_approved() {
    let rt = runtime(script(3000), RunOptions::default(), None).await;
    let s = Server::start(ServerState::new(rt).tokens(vec![TOKEN.into()]).queue_limit(1)).await;
    let first = s.submit(json!({"task": "slow"})).await;
    let r = s.post("/v1/runs").json(&json!({"task": "one too many"})).send().await.unwrap();
    assert_eq!(r.headers()[reqwest::header::RETRY_AFTER], "1");
    let m = expect_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_runs").await;
    assert!(m.contains("limit is 1"), "{m}");

    s.wait_status(&first, "running").await;
    let m = expect_error(
        s.post(&format!("/v1/runs/{first}/approve")).send().await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(m.contains("not awaiting approval"), "{m}");
    let m = expect_error(
        s.post(&format!("/v1/runs/{first}/reject")).send().await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(m.contains("not awaiting approval"), "{m}");
    let r = s
        .post(&format!("/v1/runs/{first}/cancel"))
        .json(&json!({"reason": "make room"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Once the cancelled run has left, there is room again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.post("/v1/runs").json(&json!({"task": "now there is room"})).send().await.unwrap();
        if r.status() == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_without_the_right_token_get_401_and_learn_nothing() {
    let s = Server::default().await;
    let id = s.submit(json!({"task": "secret task"})).await;
    let url = |p: &str| format!("{}{p}", s.base);
    let attempts = [
        s.client.get(url("/v1/runs")),
        s.client.get(url("/v1/runs")).bearer_auth("wrong"),
        s.client.get(url("/v1/runs")).bearer_auth(&TOKEN[..TOKEN.len() - 1]),
        s.client.get(url("/v1/runs")).bearer_auth(format!("{TOKEN}x")),
        s.client.get(url("/v1/runs")).basic_auth("user", Some(TOKEN)),
        s.client.get(url(&format!("/v1/runs/{id}"))).bearer_auth("wrong"),
        s.client.get(url(&format!("/v1/runs/{id}/events"))),
        s.client.post(url("/v1/runs")).json(&json!({"task": "sneak"})),
        s.client.post(url(&format!("/v1/runs/{id}/cancel"))),
        s.client.get(url("/metrics")),
    ];
    for req in attempts {
        let r = req.send().await.unwrap();
        assert_eq!(r.headers()[reqwest::header::WWW_AUTHENTICATE], "Bearer");
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": "unauthorized", "message": "missing or invalid bearer token"}})
        );
        assert!(!text.contains(TOKEN) && !text.contains(&id) && !text.contains("secret"), "{text}");
    }
    // Nothing was submitted or cancelled by them.
    let all = s.get("/v1/runs").send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(all["runs"].as_array().unwrap().len(), 1);
    assert_ne!(s.run(&id).await["status"], "cancelled");
    // Health, readiness and the API description need no token.
    for p in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(s.client.get(url(p)).send().await.unwrap().status(), StatusCode::OK, "{p}");
    }
    // Any of several configured tokens works.
    let rt = runtime(script(0), RunOptions::default(), None).await;
    let two = Server::start(ServerState::new(rt).tokens(vec!["first".into(), "second".into()])).await;
    let r = two.client.get(format!("{}/v1/runs", two.base)).bearer_auth("second").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_bodies_get_400_413_415_and_422_naming_the_problem() {
    let rt = runtime(script(0), RunOptions::default(), None).await;
    let s = Server::start(ServerState::new(rt).tokens(vec![TOKEN.into()]).max_body_bytes(1024)).await;
    let send =
        |body: &'static str| s.post("/v1/runs").header("content-type", "application/json").body(body).send();

    let m = expect_error(send("{\"task\": ").await.unwrap(), StatusCode::BAD_REQUEST, "invalid_json").await;
    assert!(m.contains("not valid JSON") && m.contains("line 1"), "{m}");
    expect_error(send("").await.unwrap(), StatusCode::BAD_REQUEST, "invalid_json").await;

    let m = expect_error(
        send(r#"{"tsak": "x"}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("unknown field `tsak`"), "{m}");
    let m = expect_error(
        send(r#"{"task": 42}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.starts_with("task: invalid type"), "{m}");
    let m = expect_error(
        send(r#"{"task": "t", "policy": {"max_retries": "three"}}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.starts_with("policy.max_retries: invalid type"), "{m}");
    let m = expect_error(
        send(r#"{"task": "t", "policy": {"on_step_failure": "pray"}}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("policy.on_step_failure") && m.contains("pray"), "{m}");
    let m = expect_error(
        send(r#"{"task": "t", "step_budget": {"max_iteration": 3}}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("step_budget") && m.contains("max_iteration"), "{m}");
    let m = expect_error(
        send(r#"{"task": "t", "run_budget": 5}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("run_budget"), "{m}");
    let m = expect_error(
        send(r#"{"task": "   "}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
    )
    .await;
    assert!(m.contains("task"), "{m}");

    let big = json!({"task": "x".repeat(4096)});
    let m = expect_error(
        s.post("/v1/runs").json(&big).send().await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(m.contains("1024"), "{m}");
    let m = expect_error(
        s.post("/v1/runs")
            .header("content-type", "text/plain")
            .body(r#"{"task": "t"}"#)
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert!(m.contains("application/json"), "{m}");

    // None of them started a run.
    let all = s.get("/v1/runs").send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(all["runs"], json!([]));
}

#[tokio::test]
async fn unknown_runs_and_routes_are_404_in_json() {
    let s = Server::default().await;
    let m =
        expect_error(s.get("/v1/runs/nope").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    assert!(m.contains("nope"), "{m}");
    expect_error(s.get("/v1/runs/nope/events").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found")
        .await;
    expect_error(s.get("/v2/things").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    expect_error(
        s.client.delete(format!("{}/v1/runs", s.base)).bearer_auth(TOKEN).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    // No metrics hook: 404.
    expect_error(s.get("/metrics").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
}

/// A run id is extracted from the path as a `RunId`: one that does not decode (not UTF-8 once
/// percent-decoded) is a 400 in the API's JSON shape, on every route that takes one.
#[tokio::test]
async fn a_run_id_that_does_not_decode_is_a_400_in_json() {
    let s = Server::default().await;
    for r in [
        s.get("/v1/runs/%FF").send().await.unwrap(),
        s.get("/v1/runs/%FF/events").send().await.unwrap(),
        s.post("/v1/runs/%FF/approve").send().await.unwrap(),
        s.post("/v1/runs/%FF/reject").send().await.unwrap(),
        s.post("/v1/runs/%FF/cancel").send().await.unwrap(),
    ] {
        let m = expect_error(r, StatusCode::BAD_REQUEST, "bad_request").await;
        assert!(m.starts_with("path: ") && m.contains("UTF-8"), "{m}");
    }
    // A well-formed id that names no run is still a 404.
    let m = expect_error(
        s.get("/v1/runs/0190e2a4-no-such-run").send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(m.contains("0190e2a4-no-such-run"), "{m}");
}

#[tokio::test]
async fn metrics_come_from_the_hook_as_prometheus_text() {
    let rt = runtime(script(0), RunOptions::default(), None).await;
    let hook = Arc::new(|| "# TYPE stepwise_runs_total counter\nstepwise_runs_total 3\n".to_owned());
    let s = Server::start(ServerState::new(rt).tokens(vec![TOKEN.into()]).metrics(hook)).await;
    let r = s.get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4")
    );
    assert!(r.text().await.unwrap().contains("stepwise_runs_total 3"));
}

/// A store that is down.
struct DownStore;

#[async_trait::async_trait]
impl RunStore for DownStore {
    async fn append(&self, _: &RunEvent) -> Result<(), StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn events(&self, _: &RunId, _: u64) -> Result<Vec<RunEvent>, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn list(&self, _: &ListQuery) -> Result<Vec<RunSummary>, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
    async fn unfinished(&self) -> Result<Vec<RunId>, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let s = Server::default().await;
    let r = s.client.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.client.get(format!("{}/readyz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let rt = runtime(script(0), RunOptions::default(), Some(Arc::new(DownStore))).await;
    let down = Server::start(ServerState::new(rt)).await;
    let r = down.client.get(format!("{}/healthz", down.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "alive even when the store is down");
    let m = expect_error(
        down.client.get(format!("{}/readyz", down.base)).send().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    assert!(m.contains("connection refused"), "{m}");
    // A submission the store cannot take is not accepted.
    let r =
        down.client.post(format!("{}/v1/runs", down.base)).json(&json!({"task": "t"})).send().await.unwrap();
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

#[tokio::test]
async fn openapi_lists_every_route_with_its_methods_and_statuses() {
    let s = Server::default().await;
    let doc: Value =
        s.client.get(format!("{}/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
    let expected: &[(&str, &str, &[&str])] = &[
        ("/v1/runs", "post", &["202", "400", "401", "413", "422", "429"]),
        ("/v1/runs", "get", &["200", "400", "401"]),
        ("/v1/runs/{id}", "get", &["200", "401", "404"]),
        ("/v1/runs/{id}/events", "get", &["200", "401", "404"]),
        ("/v1/runs/{id}/approve", "post", &["200", "404", "409", "422"]),
        ("/v1/runs/{id}/reject", "post", &["200", "404", "409"]),
        ("/v1/runs/{id}/cancel", "post", &["200", "404", "409"]),
        ("/healthz", "get", &["200"]),
        ("/readyz", "get", &["200", "503"]),
        ("/v1/tools", "get", &["200", "401"]),
        ("/metrics", "get", &["200", "401", "404"]),
        ("/openapi.json", "get", &["200"]),
        ("/v1/runs/{id}/approvals", "get", &["200", "401", "404"]),
        ("/v1/runs/{id}/approvals/{approval_id}", "post", &["200", "404", "409", "422"]),
    ];
    for (path, method, statuses) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        for st in *statuses {
            assert!(op["responses"][st].is_object(), "{method} {path} lacks {st}");
        }
    }
    assert_eq!(doc["paths"].as_object().unwrap().len(), 13);
    for name in ["RunResult", "RunEvent", "RunSummary", "PlanSpec", "RunOptions", "Error", "SubmitRequest"] {
        assert!(doc["components"]["schemas"][name].is_object(), "schema {name}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(
        doc["paths"]["/v1/runs/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RunResult"
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let mut s = Server::default().await;
    let id = s.submit(json!({"task": "waits forever", "require_approval": true})).await;
    s.wait_status(&id, "awaiting_approval").await;
    let r = s.get(&format!("/v1/runs/{id}/events")).send().await.unwrap();
    let (_, ended) = sse_frames(r, 2).await;
    assert!(!ended);
    let r = s.get(&format!("/v1/runs/{id}/events?after=2")).send().await.unwrap();
    let open = tokio::spawn(sse_frames(r, usize::MAX));
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), s.served.take().unwrap()).await;
    assert!(served.expect("serve returned").unwrap().is_ok());
    let (frames, ended) = tokio::time::timeout(Duration::from_secs(5), open).await.unwrap().unwrap();
    assert!(ended && events_of(&frames).is_empty());
}

#[tokio::test]
async fn binding_beyond_loopback_needs_tokens() {
    let err = check_bind("0.0.0.0:8080".parse().unwrap(), &[]).unwrap_err();
    let m = err.to_string();
    assert!(
        m.contains("0.0.0.0:8080") && m.contains("STEPWISE_API_TOKENS") && m.contains("127.0.0.1"),
        "{m}"
    );
    assert!(check_bind("0.0.0.0:8080".parse().unwrap(), &["t".into()]).is_ok());
    assert!(check_bind("127.0.0.1:8080".parse().unwrap(), &[]).is_ok());
}
