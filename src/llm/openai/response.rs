//! The Chat Completions answer (`chat.completion`) as serde types, and its conversion to a
//! [`ChatResponse`].
//!
//! Lenient where the servers that copy the API differ: every field may be absent or `null`,
//! `content` may be a string or an array of text parts, tool-call arguments may be a JSON string
//! (OpenAI, llama.cpp) or an object (some Ollama versions), and unknown fields (llama.cpp's
//! `timings`, …) are ignored.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::llm::{ChatResponse, LlmError, ToolCall};

/// A `chat.completion` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Completion {
    /// The model that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The answers; the runtime asks for one.
    #[serde(default)]
    pub choices: Option<Vec<Choice>>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// What some compatible servers send, with status 200, instead of `choices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// One answer of a completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Choice {
    /// The assistant's turn.
    #[serde(default)]
    pub message: Option<AssistantMessage>,
}

/// The assistant's turn: text and/or tool calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AssistantMessage {
    /// The text (`null` when the turn is only tool calls).
    #[serde(default)]
    pub content: Option<Content>,
    /// The tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<WireToolCall>>,
}

/// `content`: a string, or (some servers) an array of `{"type":"text","text":…}` parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    /// Plain text.
    Text(String),
    /// Parts; those without text (images, refusals) carry nothing for the runtime.
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text of the content, parts joined.
    pub(crate) fn text(self) -> String {
        match self {
            Content::Text(text) => text,
            Content::Parts(parts) => parts.into_iter().filter_map(|p| p.text).collect(),
        }
    }
}

/// One part of an array `content`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ContentPart {
    /// The part's text, if it is a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A tool call of the assistant's turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WireToolCall {
    /// The call's id (some local servers send none; one is made up then).
    #[serde(default)]
    pub id: Option<String>,
    /// The function called.
    #[serde(default)]
    pub function: Option<FunctionCall>,
}

/// The function of a tool call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FunctionCall {
    /// The tool's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The arguments: a JSON string as the API documents, or an object from servers that decode it.
    #[serde(default)]
    pub arguments: Option<Value>,
}

/// `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Usage {
    /// Input tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    /// Where the input tokens went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PromptTokensDetails {
    /// Input tokens read from the provider's prompt cache (part of `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl From<Usage> for crate::llm::Usage {
    fn from(u: Usage) -> Self {
        let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        crate::llm::Usage::of_tokens(u.prompt_tokens.unwrap_or(0), u.completion_tokens.unwrap_or(0))
            .with_cached_input(cached)
    }
}

impl TryFrom<Completion> for ChatResponse {
    type Error = LlmError;

    /// The first choice's text and tool calls (ids made up where missing, arguments parsed),
    /// usage and model (empty when the server names none).
    fn try_from(c: Completion) -> Result<Self, LlmError> {
        let choice = c.choices.and_then(|choices| choices.into_iter().next());
        let Some(message) = choice.and_then(|choice| choice.message) else {
            return Err(LlmError::InvalidResponse(match &c.error {
                Some(e) => format!("no choices in the response: {}", crate::llm::http::error_detail(e)),
                None => "no `choices[0].message` in the response".into(),
            }));
        };
        let tool_calls = message.tool_calls.unwrap_or_default();
        let tool_calls = tool_calls.into_iter().enumerate().map(|(i, call)| tool_call(i, call));
        Ok(ChatResponse {
            content: message.content.map(Content::text).unwrap_or_default(),
            tool_calls: tool_calls.collect::<Result<_, _>>()?,
            usage: c.usage.map(crate::llm::Usage::from).unwrap_or_default(),
            model: c.model.unwrap_or_default(),
        })
    }
}

/// Tool call `i` of an answer: it must name its function.
fn tool_call(i: usize, call: WireToolCall) -> Result<ToolCall, LlmError> {
    let function = call.function.unwrap_or_default();
    let name = function.name.filter(|n| !n.is_empty());
    let name =
        name.ok_or_else(|| LlmError::InvalidResponse(format!("tool call {i} has no function name")))?;
    let id = call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("call_{i}"));
    Ok(ToolCall { id, name, arguments: parse_arguments(function.arguments) })
}

/// Tool arguments: the JSON string parsed; `{}` when empty; the raw text kept as a JSON string
/// when it does not parse (the tool then reports invalid arguments to the model).
pub(crate) fn parse_arguments(arguments: Option<Value>) -> Value {
    match arguments {
        Some(Value::String(raw)) if raw.trim().is_empty() => json!({}),
        Some(Value::String(raw)) => serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
        Some(Value::Null) | None => json!({}),
        Some(other) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(fixture: &str) -> Result<ChatResponse, LlmError> {
        ChatResponse::try_from(serde_json::from_str::<Completion>(fixture).expect("fixture parses"))
    }

    #[test]
    fn a_plain_answer_with_cached_tokens() {
        let fixture = include_str!("testdata/completion_text.json");
        let completion: Completion = serde_json::from_str(fixture).unwrap();
        assert_eq!(completion.usage.and_then(|u| u.prompt_tokens_details?.cached_tokens), Some(1920));
        let r = parse(fixture).unwrap();
        assert_eq!(r.content, "Paris is the capital of France.");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (2006, 300));
        assert_eq!(r.usage.cached_input_tokens, 1920);
        assert_eq!((r.model.as_str(), r.tool_calls.len()), ("gpt-4o-2024-08-06", 0));
    }

    #[test]
    fn tool_calls_keep_ids_and_parse_arguments() {
        let r = parse(include_str!("testdata/completion_tool_calls.json")).unwrap();
        assert_eq!(r.content, "");
        assert_eq!(
            r.tool_calls,
            vec![
                ToolCall {
                    id: "call_abc123".into(),
                    name: "read_file".into(),
                    arguments: json!({"path": "a.txt"})
                },
                ToolCall {
                    id: "call_def456".into(),
                    name: "list_dir".into(),
                    arguments: json!("{\"path\": ")
                },
            ]
        );
        assert_eq!(r.usage.input_tokens, 82);
    }

    #[test]
    fn llama_cpp_quirks_parts_missing_ids_and_timings() {
        let r = parse(include_str!("testdata/completion_llama_cpp.json")).unwrap();
        assert_eq!(r.content, "Hello there");
        assert_eq!(r.tool_calls[0].id, "call_0");
        assert_eq!(r.tool_calls[0].arguments, json!({}));
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (17, 4));
    }

    #[test]
    fn ollama_object_arguments_and_no_usage() {
        let r = parse(include_str!("testdata/completion_ollama.json")).unwrap();
        assert_eq!(r.tool_calls[0].arguments, json!({"city": "Oslo"}));
        assert_eq!(r.tool_calls[0].id, "call_x1");
        assert_eq!((r.usage.tokens(), r.model.as_str()), (0, "qwen2.5:7b"));
    }

    #[test]
    fn an_error_body_with_status_200_and_a_nameless_call_are_errors() {
        let err = parse(include_str!("testdata/completion_error.json")).unwrap_err();
        assert!(
            matches!(&err, LlmError::InvalidResponse(m) if m.contains("context length exceeded")),
            "{err}"
        );
        let err = parse(r#"{"choices": [{"message": {"tool_calls": [{"id": "c", "function": {}}]}}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("tool call 0 has no function name"), "{err}");
        let err = parse(r#"{"choices": []}"#).unwrap_err();
        assert!(err.to_string().contains("choices[0].message"), "{err}");
    }

    #[test]
    fn arguments_parse_or_stay_raw() {
        assert_eq!(parse_arguments(Some(json!("{\"a\":1}"))), json!({"a": 1}));
        assert_eq!(parse_arguments(Some(json!("{\"a\":"))), json!("{\"a\":"));
        assert_eq!(parse_arguments(Some(json!(""))), json!({}));
        assert_eq!(parse_arguments(Some(json!({"b": 2}))), json!({"b": 2}));
    }
}
