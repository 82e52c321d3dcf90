//! The Anthropic provider against a fake Messages API server on 127.0.0.1.

mod support_llm;

use std::time::Duration;

use serde_json::{Value, json};
use stepwise::llm::anthropic::{AnthropicModel, AnthropicSettings};
use stepwise::llm::{
    AgentRole, CallContext, ChatModel, ChatRequest, LlmError, Message, StructuredOutput, ToolCall, ToolSpec,
    Usage, structured_call,
};
use support_llm::{FakeServer, Reply};

const KEY: &str = "sk-ant-test-secret-42";

fn model(base: &str) -> AnthropicModel {
    let mut s = AnthropicSettings::new("claude-test", KEY);
    s.base_url = base.to_owned();
    s.timeout = Duration::from_secs(5);
    s.max_retries = 2;
    s.backoff_base = Duration::from_millis(1);
    AnthropicModel::new(s).unwrap()
}

fn ctx(role: AgentRole) -> CallContext {
    CallContext { run_id: "run-1".into(), role, step: None, attempt: 1, trace: Default::default() }
}

fn message(content: Value, stop_reason: &str) -> Value {
    json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-20260101",
           "content": content, "stop_reason": stop_reason, "stop_sequence": null,
           "usage": {"input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 5}})
}

fn error(kind: &str, text: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": text}})
}

#[tokio::test]
async fn text_happy_path_sends_exact_body_and_headers() {
    let server = FakeServer::with_replies(vec![Reply::ok(message(
        json!([{"type": "text", "text": "Hi there"}]),
        "end_turn",
    ))])
    .await;
    let m = model(&server.url);
    let r = m
        .chat(ChatRequest {
            context: ctx(AgentRole::Synthesizer),
            messages: vec![Message::system("Be brief."), Message::user("Say hi")],
            tools: vec![],
            structured: None,
            max_tokens: None,
        })
        .await
        .unwrap();
    assert_eq!(r.content, "Hi there");
    assert_eq!(r.usage, Usage::of_tokens(35, 12).with_cached_input(5));
    assert_eq!(r.model, "claude-test-20260101");
    assert_eq!((m.provider(), m.model_name()), ("anthropic", "claude-test"));

    let got = server.received();
    assert_eq!(got[0].path, "/v1/messages");
    assert_eq!(got[0].headers["x-api-key"], KEY);
    assert_eq!(got[0].headers["anthropic-version"], "2023-06-01");
    assert!(!got[0].headers.contains_key("authorization"));
    assert_eq!(
        got[0].body,
        json!({"model": "claude-test", "max_tokens": 4096, "system": "Be brief.",
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]})
    );
}

#[tokio::test]
async fn tool_use_round_trip_merges_tool_results() {
    let server = FakeServer::with_replies(vec![
        Reply::ok(message(
            json!([
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_a", "name": "read_file", "input": {"path": "a.txt"}},
                {"type": "tool_use", "id": "toolu_b", "name": "read_file", "input": {"path": "b.txt"}}
            ]),
            "tool_use",
        )),
        Reply::ok(message(json!([{"type": "text", "text": "Both read."}]), "end_turn")),
    ])
    .await;
    let m = model(&server.url);
    let mut req = ChatRequest {
        context: CallContext { step: Some("s1".into()), ..ctx(AgentRole::Executor) },
        messages: vec![Message::system("Run the step."), Message::user("Read a and b")],
        tools: vec![ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}).into(),
        }],
        structured: None,
        max_tokens: Some(500),
    };
    let first = m.chat(req.clone()).await.unwrap();
    assert_eq!(first.content, "Let me look.");
    assert_eq!(
        first.tool_calls,
        vec![
            ToolCall { id: "toolu_a".into(), name: "read_file".into(), arguments: json!({"path": "a.txt"}) },
            ToolCall { id: "toolu_b".into(), name: "read_file".into(), arguments: json!({"path": "b.txt"}) },
        ]
    );
    req.messages.push(Message::assistant(first.content.clone(), first.tool_calls.clone()));
    req.messages.push(Message::tool("toolu_a", "A"));
    req.messages.push(Message::tool("toolu_b", "B"));
    assert_eq!(m.chat(req).await.unwrap().content, "Both read.");

    let bodies = server.bodies();
    assert_eq!(
        bodies[0]["tools"],
        json!([{"name": "read_file", "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}])
    );
    assert_eq!(bodies[1]["max_tokens"], 500);
    assert_eq!(
        bodies[1]["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Read a and b"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_a", "name": "read_file", "input": {"path": "a.txt"}},
                {"type": "tool_use", "id": "toolu_b", "name": "read_file", "input": {"path": "b.txt"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "A"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "B"}]}
        ])
    );
}

#[tokio::test]
async fn structured_output_uses_a_forced_tool() {
    let schema = json!({"type": "object", "required": ["decision"],
                        "properties": {"decision": {"type": "string"}, "reason": {"type": "string"}}});
    let server = FakeServer::with_replies(vec![Reply::ok(message(
        json!([{"type": "tool_use", "id": "toolu_s", "name": "replan_decision",
                "input": {"decision": "continue", "reason": "on track"}}]),
        "tool_use",
    ))])
    .await;
    let req = ChatRequest {
        context: ctx(AgentRole::Replanner),
        messages: vec![Message::system("You replan."), Message::user("s1 failed")],
        tools: vec![],
        structured: Some(StructuredOutput { name: "replan_decision".into(), schema: schema.clone().into() }),
        max_tokens: None,
    };
    let out = structured_call(&model(&server.url), req, |t| {
        serde_json::from_str::<Value>(t).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert_eq!(out.value, json!({"decision": "continue", "reason": "on track"}));
    assert_eq!(out.calls, 1);
    assert_eq!(
        server.bodies()[0],
        json!({"model": "claude-test", "max_tokens": 4096, "system": "You replan.",
               "messages": [{"role": "user", "content": [{"type": "text", "text": "s1 failed"}]}],
               "tools": [{"name": "replan_decision",
                          "description": "Return the `replan_decision` object as this tool's input.",
                          "input_schema": schema}],
               "tool_choice": {"type": "tool", "name": "replan_decision"}})
    );
}

#[tokio::test]
async fn retries_overload_and_rate_limits_but_not_bad_requests() {
    let server = FakeServer::with_replies(vec![
        Reply::status(529, error("overloaded_error", "Overloaded")),
        Reply::status(429, error("rate_limit_error", "slow down")).header("retry-after", "0"),
        Reply::ok(message(json!([{"type": "text", "text": "ok"}]), "end_turn")),
        Reply::status(400, error("invalid_request_error", "messages: roles must alternate")),
        Reply::ok(message(json!([{"type": "text", "text": "unreachable"}]), "end_turn")),
    ])
    .await;
    let m = model(&server.url);
    let req = ChatRequest {
        context: ctx(AgentRole::Synthesizer),
        messages: vec![Message::user("x")],
        tools: vec![],
        structured: None,
        max_tokens: None,
    };
    assert_eq!(m.chat(req.clone()).await.unwrap().content, "ok");
    assert_eq!(server.received().len(), 3);
    let err = m.chat(req).await.unwrap_err();
    assert_eq!(err, LlmError::Status { status: 400, message: "messages: roles must alternate".into() });
    assert_eq!(server.received().len(), 4, "a 400 is not retried");
}

#[tokio::test]
async fn api_key_never_appears_in_errors() {
    let server = FakeServer::with_replies(vec![Reply::status(
        401,
        error("authentication_error", &format!("invalid x-api-key {KEY}")),
    )])
    .await;
    let m = model(&server.url);
    assert!(!format!("{m:?}").contains(KEY));
    let err = m
        .chat(ChatRequest {
            context: ctx(AgentRole::Planner),
            messages: vec![Message::user("x")],
            tools: vec![],
            structured: None,
            max_tokens: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Status { status: 401, .. }));
    assert!(!err.to_string().contains(KEY), "{err}");
    assert!(err.to_string().contains("[redacted]"), "{err}");
}

/// Anthropic's stream for one answer: `message_start`, the blocks' events, `message_delta`,
/// `message_stop`, as `data:` lines (the `event:` lines repeat each data's `type`).
fn stream(blocks: &[(Value, Vec<Value>)]) -> Vec<Value> {
    let mut events = vec![json!({"type": "message_start", "message": {
        "id": "msg_s", "type": "message", "role": "assistant", "model": "claude-test-20260101",
        "content": [], "stop_reason": null,
        "usage": {"input_tokens": 30, "output_tokens": 1, "cache_read_input_tokens": 5}}})];
    for (i, (start, deltas)) in blocks.iter().enumerate() {
        events.push(json!({"type": "content_block_start", "index": i, "content_block": start}));
        events.push(json!({"type": "ping"}));
        events.extend(deltas.iter().map(|d| json!({"type": "content_block_delta", "index": i, "delta": d})));
        events.push(json!({"type": "content_block_stop", "index": i}));
    }
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 17}}));
    events.push(json!({"type": "message_stop"}));
    events
}

fn plan_request() -> ChatRequest {
    ChatRequest {
        context: ctx(AgentRole::Planner),
        messages: vec![Message::system("You are the planner."), Message::user("Task: t")],
        tools: vec![],
        structured: Some(StructuredOutput { name: "plan".into(), schema: json!({"type": "object"}).into() }),
        max_tokens: None,
    }
}

#[tokio::test]
async fn streaming_hands_over_the_forced_tools_input_as_it_arrives() {
    let parts = [r#"{"goal": "g", "#, r#""steps": [{"id": "a", "description": "d"}"#, "]}"];
    let deltas: Vec<Value> =
        parts.iter().map(|p| json!({"type": "input_json_delta", "partial_json": p})).collect();
    let events = stream(&[(
        json!({"type": "tool_use", "id": "toolu_1", "name": "plan", "input": {}}),
        std::iter::once(json!({"type": "input_json_delta", "partial_json": ""})).chain(deltas).collect(),
    )]);
    let server = FakeServer::with_replies(vec![Reply::sse(&events)]).await;
    let pieces = std::sync::Mutex::new(Vec::new());
    let sink = |p: &str| pieces.lock().unwrap().push(p.to_owned());
    let r = model(&server.url).chat_streaming(plan_request(), &sink).await.unwrap();
    assert_eq!(pieces.lock().unwrap().concat(), parts.concat());
    let plan: Value = serde_json::from_str(&r.content).unwrap();
    assert_eq!(plan, json!({"goal": "g", "steps": [{"id": "a", "description": "d"}]}));
    assert!(r.tool_calls.is_empty(), "the forced call is the answer");
    assert_eq!(r.usage, Usage::of_tokens(35, 17).with_cached_input(5));
    assert_eq!(r.model, "claude-test-20260101");
    assert_eq!(server.bodies()[0]["stream"], json!(true));
    assert_eq!(server.bodies()[0]["tool_choice"], json!({"type": "tool", "name": "plan"}));
}

#[tokio::test]
async fn streaming_text_and_tool_calls_are_assembled_and_errors_reported() {
    let events = stream(&[
        (
            json!({"type": "text", "text": ""}),
            vec![
                json!({"type": "text_delta", "text": "Let me "}),
                json!({"type": "text_delta", "text": "look."}),
            ],
        ),
        (
            json!({"type": "tool_use", "id": "toolu_9", "name": "read_file", "input": {}}),
            vec![json!({"type": "input_json_delta", "partial_json": "{\"path\": \"a.txt\"}"})],
        ),
    ]);
    let server = FakeServer::with_replies(vec![
        Reply::sse(&events),
        Reply::sse(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 1}}}),
            error("overloaded_error", "Overloaded"),
        ]),
        Reply::ok(message(json!([{"type": "text", "text": "whole"}]), "end_turn")),
    ])
    .await;
    let m = model(&server.url);
    let pieces = std::sync::Mutex::new(String::new());
    let sink = |p: &str| pieces.lock().unwrap().push_str(p);
    let request = ChatRequest {
        context: ctx(AgentRole::Executor),
        messages: vec![Message::user("read a.txt")],
        tools: vec![],
        structured: None,
        max_tokens: None,
    };
    let r = m.chat_streaming(request.clone(), &sink).await.unwrap();
    assert_eq!(r.content, "Let me look.");
    assert_eq!(
        r.tool_calls,
        vec![ToolCall {
            id: "toolu_9".into(),
            name: "read_file".into(),
            arguments: json!({"path": "a.txt"})
        }]
    );
    let err = m.chat_streaming(request.clone(), &sink).await.unwrap_err();
    assert!(matches!(&err, LlmError::InvalidResponse(m) if m.contains("Overloaded")), "{err}");
    // A server that answers whole is fine too.
    assert_eq!(m.chat_streaming(request, &sink).await.unwrap().content, "whole");
    assert_eq!(*pieces.lock().unwrap(), "Let me look.whole");
}
