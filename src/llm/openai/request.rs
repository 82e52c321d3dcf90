//! The Chat Completions request body as serde types, serialized straight from a [`ChatRequest`].
//!
//! Every call sends the conversation and the tool and output schemas again (a few KiB). Building
//! a `serde_json::Value` of it first deep-copied all of that, and freeing the copy afterwards cost
//! as much again; these types borrow from the request and are written to bytes in one pass.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::llm::config::StructuredMode;
use crate::llm::{ChatRequest, Message, Role, StructuredOutput, ToolCall, ToolSpec};

/// A request body; `stream` asks for server-sent events (with usage in the last one).
#[derive(Serialize)]
pub(super) struct Body<'a> {
    pub model: &'a str,
    pub messages: Messages<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// What the public OpenAI endpoint takes instead of `max_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Tools<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

impl<'a> Body<'a> {
    /// The body for `request` in structured-output `mode` (not `auto`), unstreamed.
    pub(super) fn new(model: &'a str, request: &'a ChatRequest, mode: StructuredMode) -> Self {
        let structured = request.structured.as_ref();
        let instruction = structured
            .filter(|_| matches!(mode, StructuredMode::JsonObject | StructuredMode::Prompt))
            .map(super::schema_instruction);
        let (tools, tool_choice) = match structured {
            Some(s) if mode == StructuredMode::Tool => (
                Some(Tools::Forced(s)),
                Some(ToolChoice { kind: "function", function: Name { name: &s.name } }),
            ),
            _ if !request.tools.is_empty() => (Some(Tools::Specs(&request.tools)), None),
            _ => (None, None),
        };
        let response_format = structured.and_then(|s| match mode {
            StructuredMode::JsonSchema => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchema { name: &s.name, schema: &s.schema, strict: false },
            }),
            StructuredMode::JsonObject => Some(ResponseFormat::JsonObject { schema: &s.schema }),
            _ => None,
        });
        Self {
            model,
            messages: Messages { messages: &request.messages, instruction },
            max_tokens: None,
            max_completion_tokens: None,
            temperature: None,
            tools,
            tool_choice,
            response_format,
            stream: false,
            stream_options: None,
        }
    }

    /// Asks for a stream (or, with `false`, for the whole answer again).
    pub(super) fn streamed(&mut self, stream: bool) {
        self.stream = stream;
        self.stream_options = stream.then_some(StreamOptions { include_usage: true });
    }
}

/// `stream_options`: the usage comes in a last chunk of its own.
#[derive(Serialize)]
pub(super) struct StreamOptions {
    include_usage: bool,
}

/// The conversation, with the schema instruction of the `json_object` and `prompt` modes added
/// to the first system message (or sent as one before the others when there is none).
pub(super) struct Messages<'a> {
    messages: &'a [Message],
    instruction: Option<String>,
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let system_at = self.messages.iter().position(|m| m.role == Role::System);
        let extra = usize::from(self.instruction.is_some() && system_at.is_none());
        let mut seq = serializer.serialize_seq(Some(self.messages.len() + extra))?;
        let instruction = self.instruction.as_deref();
        if let (Some(text), None) = (instruction, system_at) {
            seq.serialize_element(&Plain { role: "system", content: text })?;
        }
        for (i, m) in self.messages.iter().enumerate() {
            match instruction.filter(|_| system_at == Some(i)) {
                Some(text) if m.content.is_empty() => {
                    seq.serialize_element(&Plain { role: "system", content: text })?
                }
                Some(text) => {
                    let content = format!("{}\n\n{text}", m.content);
                    seq.serialize_element(&Plain { role: "system", content: &content })?
                }
                None => seq.serialize_element(&Wire(m))?,
            }
        }
        seq.end()
    }
}

/// A system or user turn.
#[derive(Serialize)]
struct Plain<'a> {
    role: &'static str,
    content: &'a str,
}

/// One message in the Chat Completions wire format. An assistant turn keeps its text even when it
/// only carries tool calls (`""`, never null: llama.cpp rejects null).
struct Wire<'a>(&'a Message);

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("role", &m.role)?;
        if m.role == Role::Tool {
            map.serialize_entry("tool_call_id", m.tool_call_id.as_deref().unwrap_or_default())?;
        }
        map.serialize_entry("content", &m.content)?;
        if m.role == Role::Assistant && !m.tool_calls.is_empty() {
            map.serialize_entry("tool_calls", &Calls(&m.tool_calls))?;
        }
        map.end()
    }
}

/// An assistant turn's tool calls, their arguments as the JSON string the API carries.
struct Calls<'a>(&'a [ToolCall]);

impl Serialize for Calls<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|c| {
            let arguments = match &c.arguments {
                Value::String(raw) => Cow::Borrowed(raw.as_str()),
                other => Cow::Owned(other.to_string()),
            };
            Function::new(Some(&c.id), CallFunction { name: &c.name, arguments })
        }))
    }
}

#[derive(Serialize)]
struct CallFunction<'a> {
    name: &'a str,
    arguments: Cow<'a, str>,
}

/// `tools`: the request's tools, or the one forced function of the `tool` structured mode.
pub(super) enum Tools<'a> {
    Specs(&'a [ToolSpec]),
    Forced(&'a StructuredOutput),
}

impl Serialize for Tools<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Tools::Specs(specs) => serializer.collect_seq(specs.iter().map(|t| {
                let description = Cow::Borrowed(t.description.as_str());
                Function::new(None, FunctionSpec { name: &t.name, description, parameters: &t.parameters })
            })),
            Tools::Forced(s) => {
                let description =
                    format!("Return the `{}` object as this function's arguments.", s.name).into();
                let forced =
                    Function::new(None, FunctionSpec { name: &s.name, description, parameters: &s.schema });
                serializer.collect_seq(std::iter::once(forced))
            }
        }
    }
}

/// `{"id"?, "type": "function", "function": …}`: a tool call of an assistant turn (with its id),
/// or a tool the model may call.
#[derive(Serialize)]
struct Function<'a, F> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: F,
}

impl<'a, F> Function<'a, F> {
    fn new(id: Option<&'a str>, function: F) -> Self {
        Self { id, kind: "function", function }
    }
}

#[derive(Serialize)]
struct FunctionSpec<'a> {
    name: &'a str,
    description: Cow<'a, str>,
    parameters: &'a Arc<Value>,
}

/// `tool_choice` forcing one function.
#[derive(Serialize)]
pub(super) struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: Name<'a>,
}

#[derive(Serialize)]
struct Name<'a> {
    name: &'a str,
}

/// `response_format` of the `json_schema` and `json_object` modes.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ResponseFormat<'a> {
    JsonSchema { json_schema: JsonSchema<'a> },
    JsonObject { schema: &'a Arc<Value> },
}

#[derive(Serialize)]
pub(super) struct JsonSchema<'a> {
    name: &'a str,
    schema: &'a Arc<Value>,
    strict: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::llm::{AgentRole, CallContext};

    fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            context: CallContext {
                run_id: "r".into(),
                role: AgentRole::Executor,
                step: None,
                attempt: 1,
                trace: Default::default(),
            },
            messages,
            tools: vec![],
            structured: Some(StructuredOutput {
                name: "plan".into(),
                schema: Arc::new(json!({"type": "object"})),
            }),
            max_tokens: None,
        }
    }

    fn messages(request: &ChatRequest, mode: StructuredMode) -> Value {
        serde_json::to_value(Body::new("m", request, mode)).unwrap()["messages"].clone()
    }

    #[test]
    fn every_role_in_the_wire_format() {
        let call = ToolCall { id: "c1".into(), name: "read_file".into(), arguments: json!({"path": "a"}) };
        let raw = ToolCall { id: "c2".into(), name: "list_dir".into(), arguments: json!("{not json") };
        let r = request(vec![
            Message::system("sys"),
            Message::user("task"),
            Message::assistant("", vec![call, raw]),
            Message::tool("c1", "contents"),
        ]);
        assert_eq!(
            messages(&r, StructuredMode::JsonSchema),
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "task"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "list_dir", "arguments": "{not json"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "contents"},
            ])
        );
    }

    #[test]
    fn the_schema_instruction_joins_the_first_system_message_or_comes_first() {
        let instruction = super::super::schema_instruction(request(vec![]).structured.as_ref().unwrap());
        let r = request(vec![Message::system("sys"), Message::user("task"), Message::system("later")]);
        let m = messages(&r, StructuredMode::Prompt);
        assert_eq!(m[0]["content"], format!("sys\n\n{instruction}"));
        assert_eq!((&m[2]["content"], m.as_array().unwrap().len()), (&json!("later"), 3));
        let r = request(vec![Message::system(""), Message::user("task")]);
        assert_eq!(messages(&r, StructuredMode::JsonObject)[0]["content"], instruction);
        let r = request(vec![Message::user("task")]);
        assert_eq!(
            messages(&r, StructuredMode::Prompt),
            json!([{"role": "system", "content": instruction}, {"role": "user", "content": "task"}])
        );
        assert_eq!(messages(&r, StructuredMode::JsonSchema), json!([{"role": "user", "content": "task"}]));
    }

    #[test]
    fn streaming_is_asked_for_and_taken_back() {
        let r = request(vec![Message::user("task")]);
        let mut body = Body::new("m", &r, StructuredMode::JsonSchema);
        body.streamed(true);
        let v: Value = serde_json::from_slice(&crate::llm::http::json_bytes(&body).unwrap()).unwrap();
        assert_eq!((&v["stream"], &v["stream_options"]), (&json!(true), &json!({"include_usage": true})));
        body.streamed(false);
        let v: Value = serde_json::from_slice(&crate::llm::http::json_bytes(&body).unwrap()).unwrap();
        assert!(v.get("stream").is_none() && v.get("stream_options").is_none(), "{v}");
    }
}
