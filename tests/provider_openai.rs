//! The OpenAI-compatible provider against a fake Chat Completions server on 127.0.0.1.

mod support_llm;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepwise::llm::config::StructuredMode;
use stepwise::llm::openai::{OpenAiModel, OpenAiSettings};
use stepwise::llm::{
    AgentRole, CallContext, ChatModel, ChatRequest, LlmError, Message, StructuredOutput, ToolCall, ToolSpec,
    Usage, structured_call,
};
use support_llm::{FakeServer, Reply, WarnCounter, closed_port_url};

const KEY: &str = "sk-test-0123456789abcdef";

fn settings(base: &str) -> OpenAiSettings {
    let mut s = OpenAiSettings::new("gpt-test");
    s.base_url = format!("{base}/v1");
    s.api_key = Some(KEY.into());
    s.timeout = Duration::from_secs(5);
    s.max_retries = 2;
    s.backoff_base = Duration::from_millis(1);
    s
}

fn model(base: &str) -> OpenAiModel {
    OpenAiModel::new(settings(base)).unwrap()
}

fn ctx(role: AgentRole) -> CallContext {
    CallContext { run_id: "run-1".into(), role, step: None, attempt: 1, trace: Default::default() }
}

fn text_request(text: &str) -> ChatRequest {
    ChatRequest {
        context: ctx(AgentRole::Synthesizer),
        messages: vec![Message::system("Be brief."), Message::user(text)],
        tools: vec![],
        structured: None,
        max_tokens: None,
    }
}

fn plan_schema() -> Value {
    json!({"type": "object", "required": ["goal", "steps"],
           "properties": {"goal": {"type": "string"}, "steps": {"type": "array", "items": {"type": "object"}}}})
}

fn plan_request() -> ChatRequest {
    ChatRequest {
        context: ctx(AgentRole::Planner),
        messages: vec![Message::system("You are the planner."), Message::user("Task: write hello.txt")],
        tools: vec![],
        structured: Some(StructuredOutput { name: "plan".into(), schema: plan_schema().into() }),
        max_tokens: Some(1024),
    }
}

fn completion(content: &str) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test-0613",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
}

fn error_body(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
}

const PLAN: &str = r#"{"goal":"g","steps":[]}"#;

fn parse_plan(text: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("goal").and_then(Value::as_str).is_none() {
        return Err("missing `goal`".into());
    }
    Ok(v)
}

#[tokio::test]
async fn text_happy_path_sends_exact_body_and_reads_usage() {
    let server = FakeServer::with_replies(vec![Reply::ok(completion("Hello!"))]).await;
    let mut s = settings(&server.url);
    s.temperature = Some(0.2);
    s.max_tokens = Some(256);
    let m = OpenAiModel::new(s).unwrap();
    let r = m.chat(text_request("Say hi")).await.unwrap();
    assert_eq!(r.content, "Hello!");
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.usage, Usage::of_tokens(11, 7));
    assert_eq!(r.model, "gpt-test-0613");
    assert_eq!((m.provider(), m.model_name()), ("openai", "gpt-test"));

    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert_eq!(got[0].headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(
        got[0].body,
        json!({"model": "gpt-test",
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
               "max_tokens": 256, "temperature": 0.2})
    );
}

#[tokio::test]
async fn no_key_means_no_authorization_header() {
    let server = FakeServer::with_replies(vec![Reply::ok(completion("ok"))]).await;
    let mut s = settings(&server.url);
    s.api_key = None;
    OpenAiModel::new(s).unwrap().chat(text_request("x")).await.unwrap();
    assert!(!server.received()[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn tool_call_loop_round_trips_two_calls() {
    let tool_turn = json!({"id": "chatcmpl-2", "model": "gpt-test",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "read_file", "arguments": "{\"path\":\"a.txt\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "run_command", "arguments": "{\"cmd\": [\"ls\""}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 9}});
    let server =
        FakeServer::with_replies(vec![Reply::ok(tool_turn), Reply::ok(completion("a.txt says hi"))]).await;
    let m = model(&server.url);
    let tools = vec![
        ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}).into(),
        },
        ToolSpec {
            name: "run_command".into(),
            description: "Run a program".into(),
            parameters: json!({"type": "object", "properties": {"cmd": {"type": "array"}}}).into(),
        },
    ];
    let mut req = ChatRequest {
        context: CallContext { step: Some("s1".into()), ..ctx(AgentRole::Executor) },
        messages: vec![Message::system("Run the step."), Message::user("Read a.txt")],
        tools,
        structured: None,
        max_tokens: None,
    };
    let first = m.chat(req.clone()).await.unwrap();
    assert_eq!(first.content, "");
    assert_eq!(
        first.tool_calls,
        vec![
            ToolCall { id: "call_a".into(), name: "read_file".into(), arguments: json!({"path": "a.txt"}) },
            // Unparsable arguments stay a JSON string, so the tool can report them as invalid.
            ToolCall {
                id: "call_b".into(),
                name: "run_command".into(),
                arguments: json!("{\"cmd\": [\"ls\"")
            },
        ]
    );
    assert_eq!(first.usage, Usage::of_tokens(20, 9));

    req.messages.push(Message::assistant(first.content.clone(), first.tool_calls.clone()));
    req.messages.push(Message::tool("call_a", "hi"));
    req.messages.push(Message::tool("call_b", "error: invalid arguments"));
    let second = m.chat(req).await.unwrap();
    assert_eq!(second.content, "a.txt says hi");

    let bodies = server.bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[0]["tools"],
        json!([
            {"type": "function", "function": {"name": "read_file", "description": "Read a file",
              "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "run_command", "description": "Run a program",
              "parameters": {"type": "object", "properties": {"cmd": {"type": "array"}}}}}
        ])
    );
    assert_eq!(
        bodies[1]["messages"],
        json!([
            {"role": "system", "content": "Run the step."},
            {"role": "user", "content": "Read a.txt"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "read_file", "arguments": "{\"path\":\"a.txt\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "run_command", "arguments": "{\"cmd\": [\"ls\""}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "hi"},
            {"role": "tool", "tool_call_id": "call_b", "content": "error: invalid arguments"}
        ])
    );
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let server = FakeServer::with_replies(vec![
        Reply::status(429, error_body("Rate limit reached")).header("retry-after", "1"),
        Reply::ok(completion("after the wait")),
    ])
    .await;
    let r = model(&server.url).chat(text_request("x")).await.unwrap();
    assert_eq!(r.content, "after the wait");
    let got = server.received();
    assert_eq!(got.len(), 2);
    let waited = got[1].at - got[0].at;
    // The backoff base is 1 ms, so only Retry-After explains a wait near a second.
    assert!(waited >= Duration::from_millis(950), "waited only {waited:?}");
}

#[tokio::test]
async fn retries_500_then_succeeds() {
    let server = FakeServer::with_replies(vec![
        Reply::status(500, error_body("upstream exploded")),
        Reply::status(503, json!({"error": "busy"})),
        Reply::ok(completion("fine")),
    ])
    .await;
    let r = model(&server.url).chat(text_request("x")).await.unwrap();
    assert_eq!(r.content, "fine");
    assert_eq!(server.received().len(), 3);
}

#[tokio::test]
async fn gives_up_after_max_retries_with_the_last_status() {
    let replies = (0..5).map(|_| Reply::status(502, error_body("bad gateway"))).collect();
    let server = FakeServer::with_replies(replies).await;
    let err = model(&server.url).chat(text_request("x")).await.unwrap_err();
    assert_eq!(err, LlmError::Status { status: 502, message: "bad gateway".into() });
    assert_eq!(server.received().len(), 3, "one try plus max_retries = 2");
}

#[tokio::test]
async fn no_retry_on_400() {
    let server = FakeServer::with_replies(vec![
        Reply::status(400, error_body("The model `nope` does not exist")),
        Reply::ok(completion("unreachable")),
    ])
    .await;
    let err = model(&server.url).chat(text_request("x")).await.unwrap_err();
    assert_eq!(err, LlmError::Status { status: 400, message: "The model `nope` does not exist".into() });
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn slow_server_times_out() {
    let server = FakeServer::with_replies(vec![
        Reply::ok(completion("too late")).delayed(Duration::from_secs(3)),
        Reply::ok(completion("too late")).delayed(Duration::from_secs(3)),
    ])
    .await;
    let mut s = settings(&server.url);
    s.timeout = Duration::from_millis(300);
    s.max_retries = 1;
    let started = Instant::now();
    let err = OpenAiModel::new(s).unwrap().chat(text_request("x")).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout(Duration::from_millis(300)));
    assert_eq!(server.received().len(), 2, "a timeout is retried");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    let url = closed_port_url().await;
    let mut s = settings(&url);
    s.max_retries = 1;
    let err = OpenAiModel::new(s).unwrap().chat(text_request("x")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Transport(m) if m.contains("/v1/chat/completions")), "{err}");
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn cached_prompt_tokens_are_read_from_the_usage_details() {
    let mut body = completion("Hello!");
    body["usage"]["prompt_tokens_details"] = json!({"cached_tokens": 4, "audio_tokens": 0});
    let server = FakeServer::with_replies(vec![Reply::ok(body)]).await;
    let r = model(&server.url).chat(text_request("Say hi")).await.unwrap();
    assert_eq!(r.usage, Usage::of_tokens(11, 7).with_cached_input(4));
}

#[tokio::test]
async fn structured_call_repairs_malformed_json_once() {
    let server = FakeServer::with_replies(vec![
        Reply::ok(completion("{\"goal\": \"g\", \"steps\": [")),
        Reply::ok(completion(PLAN)),
    ])
    .await;
    let m = model(&server.url);
    let out = structured_call(&m, plan_request(), parse_plan).await.unwrap();
    assert_eq!(out.value, json!({"goal": "g", "steps": []}));
    assert_eq!(out.calls, 2);
    assert_eq!(out.usage, Usage { llm_calls: 2, ..Usage::of_tokens(22, 14) });
    let bodies = server.bodies();
    let repair = &bodies[1]["messages"];
    assert_eq!(repair[2], json!({"role": "assistant", "content": "{\"goal\": \"g\", \"steps\": ["}));
    assert!(repair[3]["content"].as_str().unwrap().contains("not JSON"), "{repair}");
}

#[tokio::test]
async fn structured_call_fails_naming_both_errors() {
    let server = FakeServer::with_replies(vec![
        Reply::ok(completion("not json at all")),
        Reply::ok(completion("{\"steps\": []}")),
    ])
    .await;
    let err = structured_call(&model(&server.url), plan_request(), parse_plan).await.unwrap_err();
    let LlmError::Structured { schema, error } = &err else { panic!("unexpected {err:?}") };
    assert_eq!(schema, "plan");
    assert!(error.contains("missing `goal`") && error.contains("not JSON"), "{error}");
    assert_eq!(server.received().len(), 2);
}

/// The body every structured mode sends for the same plan request.
#[tokio::test]
async fn structured_modes_send_exact_bodies() {
    let server = FakeServer::start(|_, body| {
        if body.get("tool_choice").is_some() {
            Reply::ok(json!({"model": "gpt-test", "choices": [{"index": 0, "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_p", "type": "function",
                                "function": {"name": "plan", "arguments": PLAN}}]}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}))
        } else {
            Reply::ok(completion(PLAN))
        }
    })
    .await;
    let instruction = format!(
        "You are the planner.\n\nReply with only a JSON object for the `plan` schema: no prose, no code fences. \
         JSON Schema:\n{}",
        plan_schema()
    );
    let messages = json!([{"role": "system", "content": "You are the planner."},
                          {"role": "user", "content": "Task: write hello.txt"}]);
    let messages_with_schema = json!([{"role": "system", "content": instruction},
                                      {"role": "user", "content": "Task: write hello.txt"}]);
    let expected = [
        (
            StructuredMode::JsonSchema,
            json!({"model": "gpt-test", "messages": messages, "max_tokens": 1024,
                   "response_format": {"type": "json_schema",
                       "json_schema": {"name": "plan", "schema": plan_schema(), "strict": false}}}),
        ),
        (
            StructuredMode::JsonObject,
            json!({"model": "gpt-test", "messages": messages_with_schema, "max_tokens": 1024,
                   "response_format": {"type": "json_object", "schema": plan_schema()}}),
        ),
        (
            StructuredMode::Tool,
            json!({"model": "gpt-test", "messages": messages, "max_tokens": 1024,
                   "tools": [{"type": "function", "function": {"name": "plan",
                       "description": "Return the `plan` object as this function's arguments.",
                       "parameters": plan_schema()}}],
                   "tool_choice": {"type": "function", "function": {"name": "plan"}}}),
        ),
        (
            StructuredMode::Prompt,
            json!({"model": "gpt-test", "messages": messages_with_schema, "max_tokens": 1024}),
        ),
    ];
    for (i, (mode, body)) in expected.into_iter().enumerate() {
        let mut s = settings(&server.url);
        s.structured = mode;
        let m = OpenAiModel::new(s).unwrap();
        let r = m.chat(plan_request()).await.unwrap();
        assert_eq!(r.content, PLAN, "{mode:?}: the answer is the JSON text");
        assert!(r.tool_calls.is_empty(), "{mode:?}: the forced call is the answer, not a tool call");
        assert_eq!(server.bodies()[i], body, "{mode:?}");
        assert_eq!(m.request_body(&plan_request(), mode), body, "{mode:?}: request_body matches the wire");
    }
}

#[tokio::test]
async fn auto_falls_back_from_json_schema_warns_once_and_remembers() {
    // llama.cpp-like: rejects json_schema, takes json_object.
    let server = FakeServer::start(|_, body| match body["response_format"]["type"].as_str() {
        Some("json_schema") => {
            Reply::status(400, error_body("'response_format.type' must be one of 'text', 'json_object'"))
        }
        _ => Reply::ok(completion(PLAN)),
    })
    .await;
    let warns = WarnCounter::new("stepwise::llm::openai");
    let _guard = warns.install();

    let first = OpenAiModel::new(settings(&server.url)).unwrap();
    assert_eq!(first.settings().structured, StructuredMode::Auto);
    let out = structured_call(&first, plan_request(), parse_plan).await.unwrap();
    assert_eq!(out.calls, 1, "the fallback is inside one model call");
    let types: Vec<Value> = server.bodies().iter().map(|b| b["response_format"]["type"].clone()).collect();
    assert_eq!(types, vec![json!("json_schema"), json!("json_object")]);
    assert_eq!(warns.count(), 1);

    // A new model for the same base URL goes straight to the mode that worked.
    let second = OpenAiModel::new(settings(&server.url)).unwrap();
    second.chat(plan_request()).await.unwrap();
    first.chat(plan_request()).await.unwrap();
    let types: Vec<Value> = server.bodies().iter().map(|b| b["response_format"]["type"].clone()).collect();
    assert_eq!(types[2..], [json!("json_object"), json!("json_object")]);
    assert_eq!(warns.count(), 1, "warned once per base URL");
    // Unstructured calls are unaffected.
    second.chat(text_request("x")).await.unwrap();
    assert_eq!(server.bodies()[4].get("response_format"), None);
}

#[tokio::test]
async fn auto_falls_back_to_prompt_when_response_format_is_unsupported() {
    // A 500 that names response_format is not retried: it is the request, not the server.
    let server = FakeServer::start(|_, body| {
        if body.get("response_format").is_some() {
            Reply::status(500, json!({"error": "Unsupported param: response_format"}))
        } else {
            Reply::ok(completion(&format!("```json\n{PLAN}\n```")))
        }
    })
    .await;
    let out = structured_call(&model(&server.url), plan_request(), parse_plan).await.unwrap();
    assert_eq!(out.value["goal"], "g", "the code fence is stripped");
    let bodies = server.bodies();
    assert_eq!(bodies.len(), 3, "json_schema, json_object, prompt: no retries of the rejections");
    assert!(bodies[2]["messages"][0]["content"].as_str().unwrap().contains("JSON Schema:"));
    // An explicit mode never falls back.
    let mut s = settings(&server.url);
    s.structured = StructuredMode::JsonSchema;
    let err = OpenAiModel::new(s).unwrap().chat(plan_request()).await.unwrap_err();
    assert!(matches!(err, LlmError::Status { status: 500, .. }), "{err}");
}

#[tokio::test]
async fn api_key_never_appears_in_errors() {
    let server = FakeServer::with_replies(vec![Reply::status(
        401,
        error_body(&format!("Incorrect API key provided: {KEY}. You can find your API key at …")),
    )])
    .await;
    let err = model(&server.url).chat(text_request("x")).await.unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, LlmError::Status { status: 401, .. }));
    assert!(!shown.contains(KEY) && shown.contains("[redacted]"), "{shown}");
    assert!(!format!("{err:?}").contains(KEY));

    let slow =
        FakeServer::with_replies(vec![Reply::ok(completion("late")).delayed(Duration::from_secs(2))]).await;
    let mut s = settings(&slow.url);
    s.timeout = Duration::from_millis(100);
    s.max_retries = 0;
    let m = OpenAiModel::new(s).unwrap();
    assert!(!format!("{m:?}").contains(KEY));
    let err = m.chat(text_request("x")).await.unwrap_err();
    assert!(!err.to_string().contains(KEY));
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test-0613",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn usage_chunk() -> Value {
    json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test-0613",
           "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}})
}

/// Collects what a streaming call hands over, piece by piece.
fn collector() -> (std::sync::Arc<std::sync::Mutex<Vec<String>>>, impl Fn(&str) + Send + Sync) {
    let pieces = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = pieces.clone();
    (pieces, move |s: &str| p.lock().unwrap().push(s.to_owned()))
}

#[tokio::test]
async fn streaming_hands_over_each_delta_and_assembles_the_answer() {
    let parts = [r#"{"goal":"g","#, r#""steps":[{"id":"a","description":"d"}"#, "]}"];
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    events.extend(parts.iter().map(|p| chunk(json!({"content": p}), None)));
    events.push(chunk(json!({}), Some("stop")));
    events.push(usage_chunk());
    let server = FakeServer::with_replies(vec![Reply::sse(&events)]).await;
    let (pieces, sink) = collector();
    let r = model(&server.url).chat_streaming(plan_request(), &sink).await.unwrap();
    assert_eq!(*pieces.lock().unwrap(), parts);
    assert_eq!(r.content, parts.concat());
    assert_eq!(r.usage, Usage::of_tokens(21, 9));
    assert_eq!(r.model, "gpt-test-0613");
    let body = &server.bodies()[0];
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["response_format"]["json_schema"]["name"], json!("plan"));
}

#[tokio::test]
async fn streaming_in_tool_mode_hands_over_the_forced_calls_arguments() {
    let events = vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_1",
                   "type": "function", "function": {"name": "plan", "arguments": ""}}]}),
            None,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"goal\":"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"g\",\"steps\":[]}"}}]}), None),
        chunk(json!({}), Some("tool_calls")),
    ];
    let server = FakeServer::with_replies(vec![Reply::sse(&events)]).await;
    let mut s = settings(&server.url);
    s.structured = StructuredMode::Tool;
    let (pieces, sink) = collector();
    let r = OpenAiModel::new(s).unwrap().chat_streaming(plan_request(), &sink).await.unwrap();
    assert_eq!(pieces.lock().unwrap().concat(), PLAN);
    assert_eq!(r.content, PLAN);
    assert!(r.tool_calls.is_empty(), "the forced call is the answer, not a tool call");
    assert_eq!(r.usage, Usage::default(), "no usage chunk was sent");
}

#[tokio::test]
async fn streaming_executor_tool_calls_are_assembled_from_fragments() {
    let events = vec![
        chunk(
            json!({"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": ""}},
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}]}),
            None,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"path\":\"a.txt\"}"}}]}), None),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(),
    ];
    let server = FakeServer::with_replies(vec![Reply::sse(&events)]).await;
    let (pieces, sink) = collector();
    let r = model(&server.url).chat_streaming(text_request("go"), &sink).await.unwrap();
    assert!(pieces.lock().unwrap().is_empty(), "no text to hand over");
    assert_eq!(
        r.tool_calls,
        vec![
            ToolCall { id: "call_a".into(), name: "read_file".into(), arguments: json!({"path": "a.txt"}) },
            ToolCall { id: "call_b".into(), name: "list_dir".into(), arguments: json!({}) },
        ]
    );
}

#[tokio::test]
async fn streaming_accepts_a_server_that_answers_whole_and_reports_stream_errors() {
    let server = FakeServer::with_replies(vec![
        Reply::ok(completion(PLAN)),
        Reply::sse(&[
            chunk(json!({"content": "{\"goal\""}), None),
            json!({"error": {"message": "overloaded"}}),
        ]),
        Reply::status(503, error_body("busy")),
        Reply::sse(&[chunk(json!({"content": "ok"}), Some("stop"))]),
    ])
    .await;
    let m = model(&server.url);
    let (pieces, sink) = collector();
    let r = m.chat_streaming(plan_request(), &sink).await.unwrap();
    assert_eq!((r.content.as_str(), pieces.lock().unwrap().concat()), (PLAN, PLAN.to_owned()));
    assert_eq!(r.usage, Usage::of_tokens(11, 7));

    let err = m.chat_streaming(plan_request(), &sink).await.unwrap_err();
    assert!(matches!(&err, LlmError::InvalidResponse(m) if m.contains("overloaded")), "{err}");

    // An error status before the stream starts is retried like any other call.
    let r = m.chat_streaming(text_request("hi"), &sink).await.unwrap();
    assert_eq!(r.content, "ok");
    assert_eq!(server.received().len(), 4);
}

#[tokio::test]
async fn streaming_refuses_absurd_tool_call_indexes_and_endless_events() {
    // An index that would size an allocation by what the server says.
    let huge =
        chunk(json!({"tool_calls": [{"index": 1_000_000_000_000u64, "function": {"arguments": "x"}}]}), None);
    let endless = Reply { body: format!("data: {}", "x".repeat(17 << 20)), ..Reply::sse(&[]) };
    let server = FakeServer::with_replies(vec![Reply::sse(&[huge]), endless]).await;
    let m = model(&server.url);
    let sink = |_: &str| {};
    let err = m.chat_streaming(text_request("go"), &sink).await.unwrap_err();
    assert!(matches!(&err, LlmError::InvalidResponse(m) if m.contains("at most 256")), "{err}");
    let err = m.chat_streaming(text_request("go"), &sink).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::InvalidResponse(m) if m.contains("an event larger than 16 MiB")),
        "{err}"
    );
}

#[tokio::test]
async fn streaming_reads_crlf_events_and_multi_line_data() {
    // CRLF line ends, a comment line, and one event's JSON split over two `data:` lines.
    let body = "\r\n: keep-alive\r\n\r\ndata: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\"he\"}}]}\r\n\r\n\
                data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
    let server = FakeServer::with_replies(vec![Reply { body: body.into(), ..Reply::sse(&[]) }]).await;
    let (pieces, sink) = collector();
    let r = model(&server.url).chat_streaming(text_request("hi"), &sink).await.unwrap();
    assert_eq!(r.content, "hello");
    assert_eq!(*pieces.lock().unwrap(), ["he", "llo"]);
}

#[tokio::test]
async fn a_server_that_refuses_stream_options_answers_whole_instead() {
    let server = FakeServer::with_replies(vec![
        Reply::status(400, error_body("Unrecognized request argument supplied: stream_options")),
        Reply::ok(completion(PLAN)),
    ])
    .await;
    let (pieces, sink) = collector();
    let r = model(&server.url).chat_streaming(plan_request(), &sink).await.unwrap();
    assert_eq!(r.content, PLAN);
    assert_eq!(pieces.lock().unwrap().concat(), PLAN, "the whole text still reaches the sink");
    let bodies = server.bodies();
    assert_eq!(bodies[0]["stream"], json!(true));
    assert!(bodies[1].get("stream").is_none() && bodies[1].get("stream_options").is_none(), "{}", bodies[1]);
}

/// What an [`OutageObserver`](stepwise::llm::outage::OutageObserver) was told.
#[derive(Default)]
struct Told(std::sync::Mutex<Vec<String>>);

impl stepwise::llm::outage::OutageObserver for Told {
    fn waiting(&self, provider: &str, last_error: &str) {
        self.0.lock().unwrap().push(format!("waiting {provider}: {last_error}"));
    }
    fn stopped_waiting(&self, _waited: Duration, answered: bool) {
        self.0.lock().unwrap().push(format!("stopped answered={answered}"));
    }
}

fn waiting_model(base: &str, max_wait: Duration) -> OpenAiModel {
    let mut s = settings(base);
    s.outage_max_wait = max_wait;
    OpenAiModel::new(s).unwrap()
}

#[tokio::test]
async fn with_an_outage_wait_503_408_and_429_are_waited_out_past_max_retries() {
    let server = FakeServer::with_replies(vec![
        Reply::status(503, error_body("deploying")),
        Reply::status(408, error_body("request timeout")),
        Reply::status(502, error_body("bad gateway")),
        Reply::status(429, error_body("slow down")).header("retry-after", "1"),
        Reply::ok(completion("back")),
    ])
    .await;
    let told = std::sync::Arc::new(Told::default());
    let model = waiting_model(&server.url, Duration::from_secs(30));
    let call = model.chat(text_request("x"));
    let r = stepwise::llm::outage::observed(told.clone(), call).await.unwrap();
    assert_eq!(r.content, "back");
    let got = server.received();
    assert_eq!(got.len(), 5, "more than max_retries (2) retries");
    assert!(got[4].at - got[3].at >= Duration::from_millis(950), "Retry-After honoured");
    let told = told.0.lock().unwrap().clone();
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told[0].starts_with("waiting http://127.0.0.1:") && told[0].contains("HTTP 503"), "{told:?}");
    assert_eq!(told[1], "stopped answered=true");
}

#[tokio::test]
async fn with_an_outage_wait_a_bad_request_is_still_an_error_at_once() {
    let server =
        FakeServer::with_replies(vec![Reply::status(400, error_body("bad")), Reply::ok(completion("no"))])
            .await;
    let told = std::sync::Arc::new(Told::default());
    let model = waiting_model(&server.url, Duration::from_secs(30));
    let call = model.chat(text_request("x"));
    let err = stepwise::llm::outage::observed(told.clone(), call).await.unwrap_err();
    assert_eq!(err, LlmError::Status { status: 400, message: "bad".into() });
    assert_eq!(server.received().len(), 1);
    assert!(told.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_provider_down_past_the_wait_limit_fails_saying_how_long_and_what_it_answered() {
    let url = closed_port_url().await;
    let started = Instant::now();
    let err = waiting_model(&url, Duration::from_secs(1)).chat(text_request("x")).await.unwrap_err();
    let took = started.elapsed();
    let LlmError::Unavailable { provider, waited, limit, last_error } = &err else { panic!("{err}") };
    assert!(url.starts_with(provider.as_str()), "{provider} {url}");
    assert!(*waited >= Duration::from_secs(1) && *limit == Duration::from_secs(1), "{err}");
    assert!(last_error.contains("could not reach the model provider"), "{err}");
    assert!(took < Duration::from_millis(2500), "gave up {took:?} after starting");
    assert!(
        err.to_string().contains("was unavailable for 1s (the limit, [llm] outage_max_wait_secs, is 1s)"),
        "{err}"
    );
}
