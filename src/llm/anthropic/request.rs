//! The Messages API request body as serde types, borrowing from a [`ChatRequest`].
//!
//! System turns become the top-level `system` string; assistant tool calls become `tool_use`
//! blocks; tool results become `tool_result` blocks in a user turn; consecutive turns of one role
//! are merged (the API wants user and assistant turns to alternate) and empty ones dropped.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Value, json};

use crate::llm::{ChatRequest, Message, Role};

/// A request body.
#[derive(Debug, Serialize)]
pub(super) struct Body<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice<'a>>,
    /// Asks for server-sent events.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl<'a> Body<'a> {
    /// The body for `request`, unstreamed; the caller sets `temperature`.
    pub(super) fn new(model: &'a str, max_tokens: u32, request: &'a ChatRequest) -> Self {
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System && !m.content.is_empty())
            .map(|m| m.content.as_str())
            .collect();
        let (tools, tool_choice) = match &request.structured {
            Some(s) => {
                let description = format!("Return the `{}` object as this tool's input.", s.name);
                let forced = Tool { name: &s.name, description: description.into(), input_schema: &s.schema };
                (Some(vec![forced]), Some(ToolChoice { kind: "tool", name: &s.name }))
            }
            None if request.tools.is_empty() => (None, None),
            None => {
                let tools = request.tools.iter().map(|t| Tool {
                    name: &t.name,
                    description: Cow::Borrowed(&t.description),
                    input_schema: &t.parameters,
                });
                (Some(tools.collect()), None)
            }
        };
        Self {
            model,
            max_tokens,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            messages: turns(&request.messages),
            temperature: None,
            tools,
            tool_choice,
            stream: false,
        }
    }
}

/// The conversation as alternating turns.
fn turns(messages: &[Message]) -> Vec<Turn<'_>> {
    let mut turns: Vec<Turn<'_>> = Vec::new();
    for m in messages {
        let (role, blocks) = match m.role {
            Role::System => continue,
            Role::User => (TurnRole::User, text_block(&m.content).into_iter().collect()),
            Role::Tool => (
                TurnRole::User,
                vec![Block::ToolResult {
                    tool_use_id: m.tool_call_id.as_deref().unwrap_or_default(),
                    content: &m.content,
                }],
            ),
            Role::Assistant => {
                let mut blocks: Vec<Block<'_>> = text_block(&m.content).into_iter().collect();
                blocks.extend(m.tool_calls.iter().map(|c| Block::ToolUse {
                    id: &c.id,
                    name: &c.name,
                    input: tool_input(&c.arguments),
                }));
                (TurnRole::Assistant, blocks)
            }
        };
        if blocks.is_empty() {
            continue; // the API rejects empty turns
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => turns.push(Turn { role, content: blocks }),
        }
    }
    turns
}

/// One turn of the conversation.
#[derive(Debug, Serialize)]
pub(super) struct Turn<'a> {
    role: TurnRole,
    content: Vec<Block<'a>>,
}

/// Who a turn is from (system text goes in `system`, tool results in user turns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum TurnRole {
    User,
    Assistant,
}

/// A content block of a turn.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text { text: &'a str },
    ToolUse { id: &'a str, name: &'a str, input: Cow<'a, Value> },
    ToolResult { tool_use_id: &'a str, content: &'a str },
}

fn text_block(text: &str) -> Option<Block<'_>> {
    (!text.is_empty()).then_some(Block::Text { text })
}

/// A `tool_use` input must be an object: a raw (unparsable) argument string is parsed if it can
/// be, else wrapped as `{"raw": …}`.
fn tool_input(arguments: &Value) -> Cow<'_, Value> {
    match arguments {
        Value::Object(_) => Cow::Borrowed(arguments),
        Value::String(raw) => Cow::Owned(match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"raw": raw}),
        }),
        Value::Null => Cow::Owned(json!({})),
        other => Cow::Owned(json!({"raw": other})),
    }
}

/// A tool the model may use (or, for structured output, must).
#[derive(Debug, Serialize)]
pub(super) struct Tool<'a> {
    name: &'a str,
    description: Cow<'a, str>,
    input_schema: &'a Value,
}

/// `tool_choice` forcing one tool.
#[derive(Debug, Serialize)]
pub(super) struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_inputs_are_objects() {
        assert_eq!(tool_input(&json!({"a": 1})).into_owned(), json!({"a": 1}));
        assert_eq!(tool_input(&json!("{\"a\":1}")).into_owned(), json!({"a": 1}));
        assert_eq!(tool_input(&json!("{oops")).into_owned(), json!({"raw": "{oops"}));
    }
}
