//! The Messages API answer (a `message`) as serde types, and its conversion to a [`ChatResponse`].

use serde::Deserialize;
use serde_json::{Value, json};

use crate::llm::{ChatResponse, LlmError, ToolCall};

/// A `message` body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct MessageResponse {
    /// The model that answered.
    #[serde(default)]
    pub model: Option<String>,
    /// The content blocks.
    #[serde(default)]
    pub content: Option<Vec<Block>>,
    /// Token counts.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// A content block of the answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Block {
    /// Text.
    Text {
        #[serde(default)]
        text: String,
    },
    /// A tool the model wants used.
    ToolUse {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        name: Option<String>,
        /// The tool's input (an object; a streamed input that did not parse, as its text).
        #[serde(default)]
        input: Option<Value>,
    },
    /// Thinking and whatever blocks a later API version adds: nothing the runtime uses.
    #[serde(other)]
    Other,
}

/// `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Usage {
    /// Input tokens not read from or written to the prompt cache.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl From<Usage> for crate::llm::Usage {
    /// Input counts every input token, cached or not (as OpenAI's `prompt_tokens` does).
    fn from(u: Usage) -> Self {
        let n = |v: Option<u64>| v.unwrap_or(0);
        let input = n(u.input_tokens) + n(u.cache_creation_input_tokens) + n(u.cache_read_input_tokens);
        crate::llm::Usage::of_tokens(input, n(u.output_tokens))
            .with_cached_input(n(u.cache_read_input_tokens))
    }
}

impl TryFrom<MessageResponse> for ChatResponse {
    type Error = LlmError;

    /// Text blocks joined, `tool_use` blocks as tool calls (ids made up where missing), usage and
    /// model (empty when the answer names none).
    fn try_from(m: MessageResponse) -> Result<Self, LlmError> {
        let blocks = m
            .content
            .ok_or_else(|| LlmError::InvalidResponse("no `content` array in the response".into()))?;
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        for (i, block) in blocks.into_iter().enumerate() {
            match block {
                Block::Text { text } => content.push_str(&text),
                Block::ToolUse { id, name, input } => {
                    let name = name.filter(|n| !n.is_empty());
                    let name = name.ok_or_else(|| {
                        LlmError::InvalidResponse(format!("tool_use block {i} has no name"))
                    })?;
                    let id = id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("toolu_{i}"));
                    tool_calls.push(ToolCall { id, name, arguments: input.unwrap_or_else(|| json!({})) });
                }
                Block::Other => {}
            }
        }
        Ok(ChatResponse {
            content,
            tool_calls,
            usage: m.usage.map(crate::llm::Usage::from).unwrap_or_default(),
            model: m.model.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(fixture: &str) -> Result<ChatResponse, LlmError> {
        ChatResponse::try_from(serde_json::from_str::<MessageResponse>(fixture).expect("fixture parses"))
    }

    #[test]
    fn a_plain_answer_counts_cached_input() {
        let fixture = include_str!("testdata/message_text.json");
        let usage = serde_json::from_str::<MessageResponse>(fixture).unwrap().usage.unwrap();
        assert_eq!(
            (usage.cache_read_input_tokens, usage.cache_creation_input_tokens),
            (Some(1800), Some(200))
        );
        let r = parse(fixture).unwrap();
        assert_eq!(r.content, "Hi! My name is Claude.");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (2010, 12));
        assert_eq!(r.usage.cached_input_tokens, 1800);
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
    }

    #[test]
    fn tool_use_blocks_beside_text_and_thinking() {
        let r = parse(include_str!("testdata/message_tool_use.json")).unwrap();
        assert_eq!(r.content, "I'll look that up.");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                id: "toolu_01A09q90qw90lq917835lq9".into(),
                name: "get_weather".into(),
                arguments: json!({"location": "San Francisco, CA"}),
            }]
        );
    }

    #[test]
    fn missing_content_and_nameless_tools_are_errors() {
        let err = parse(r#"{"type": "message", "model": "m"}"#).unwrap_err();
        assert!(err.to_string().contains("no `content` array"), "{err}");
        let err = parse(r#"{"content": [{"type": "tool_use", "id": "t", "input": {}}]}"#).unwrap_err();
        assert!(err.to_string().contains("tool_use block 0 has no name"), "{err}");
        let r = parse(r#"{"content": [{"type": "tool_use", "name": "x"}]}"#).unwrap();
        assert_eq!((r.tool_calls[0].id.as_str(), &r.tool_calls[0].arguments), ("toolu_0", &json!({})));
    }
}
