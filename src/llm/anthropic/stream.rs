//! The Messages stream (`message_start`, `content_block_*`, `message_delta`, `message_stop`) as
//! serde types, put back together into a [`MessageResponse`] while the answer's text goes on to
//! the caller's sink.

use serde::Deserialize;
use serde_json::Value;

use super::response::{Block, MessageResponse};
use crate::llm::stream::{Assembler, Flow, cut_short, part, too_many_parts};
use crate::llm::{LlmError, TextSink};

/// One streamed event, by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    /// A whole answer: the server ignored `stream: true`.
    Message(MessageResponse),
    /// The answer's start: its model and input usage.
    MessageStart { message: MessageResponse },
    /// A content block starts.
    ContentBlockStart {
        #[serde(default)]
        index: Option<u64>,
        content_block: Block,
    },
    /// A piece of a content block.
    ContentBlockDelta {
        #[serde(default)]
        index: Option<u64>,
        delta: Delta,
    },
    /// The final output token count.
    MessageDelta {
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    /// The answer is complete.
    MessageStop,
    /// The stream failed (e.g. `overloaded_error`).
    Error { error: Value },
    /// `ping`, `content_block_stop`, and whatever a later API version adds.
    #[serde(other)]
    Other,
}

/// A piece of a content block.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Delta {
    /// More text of a text block (`text_delta`).
    #[serde(rename = "text_delta")]
    Text { text: String },
    /// More of a `tool_use` block's input JSON (`input_json_delta`).
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    /// Thinking, signatures and later kinds.
    #[serde(other)]
    Other,
}

/// `message_delta`'s usage.
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaUsage {
    /// Output tokens so far (the last one: all of them).
    #[serde(default)]
    pub output_tokens: Option<u64>,
}

/// A streamed answer being put back together.
pub(crate) struct AnthropicEvents<'a> {
    /// The forced structured tool whose input is the answer's text.
    tool: Option<&'a str>,
    /// `message_start`'s message: model and input usage.
    message: Option<MessageResponse>,
    /// Content blocks by index (`None` until started), and each `tool_use` block's input so far.
    blocks: Vec<(Option<Block>, String)>,
    output_tokens: Option<u64>,
}

impl<'a> AnthropicEvents<'a> {
    /// An empty answer; `tool` names the forced tool of a structured call.
    pub(crate) fn new(tool: Option<&'a str>) -> Self {
        Self { tool, message: None, blocks: Vec::new(), output_tokens: None }
    }

    /// The text of a whole answer: the forced tool's input, or the text blocks.
    fn whole_text(&self, m: &MessageResponse) -> String {
        let blocks = m.content.iter().flatten();
        match self.tool {
            Some(t) => blocks
                .filter_map(|b| match b {
                    Block::ToolUse { name: Some(name), input, .. } if name == t => {
                        Some(input.as_ref().map(Value::to_string).unwrap_or_default())
                    }
                    _ => None,
                })
                .collect(),
            None => blocks
                .filter_map(|b| match b {
                    Block::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }

    fn delta(&mut self, index: u64, delta: Delta, sink: &TextSink<'_>) -> Flow<MessageResponse> {
        let tool = self.tool;
        let Some((block, input)) = part(&mut self.blocks, index) else { return too_many_parts(index) };
        match (delta, block) {
            (Delta::Text { text }, Some(Block::Text { text: so_far })) => {
                if tool.is_none() {
                    sink(&text);
                }
                so_far.push_str(&text);
            }
            (Delta::InputJson { partial_json }, Some(Block::ToolUse { name, .. })) => {
                if tool.is_some() && name.as_deref() == tool {
                    sink(&partial_json);
                }
                input.push_str(&partial_json);
            }
            _ => {} // a delta for a block never started, or of another kind
        }
        Flow::More
    }
}

impl Assembler for AnthropicEvents<'_> {
    type Event = Event;
    type Answer = MessageResponse;

    fn error(event: &Event) -> Option<&Value> {
        match event {
            Event::Error { error } => Some(error),
            _ => None,
        }
    }

    fn take(&mut self, event: Event, sink: &TextSink<'_>) -> Flow<MessageResponse> {
        match event {
            Event::Message(m) => {
                sink(&self.whole_text(&m));
                return Flow::Whole(m);
            }
            Event::MessageStart { message } => self.message = Some(message),
            Event::ContentBlockStart { index: Some(index), content_block } => {
                match part(&mut self.blocks, index) {
                    Some(slot) => *slot = (Some(content_block), String::new()),
                    None => return too_many_parts(index),
                }
            }
            Event::ContentBlockDelta { index: Some(index), delta } => return self.delta(index, delta, sink),
            Event::MessageDelta { usage: Some(DeltaUsage { output_tokens: Some(n) }) } => {
                self.output_tokens = Some(n)
            }
            Event::MessageStop => return Flow::Done,
            _ => {}
        }
        Flow::More
    }

    fn into_response(self, complete: bool) -> Result<MessageResponse, LlmError> {
        if !complete && self.blocks.is_empty() {
            return Err(cut_short());
        }
        let content = self.blocks.into_iter().filter_map(|(block, input)| match block? {
            Block::ToolUse { id, name, input: start } => {
                // Input that does not parse goes on as text: the structured parse names it.
                let input = match input.is_empty() {
                    true => start,
                    false => Some(serde_json::from_str(&input).unwrap_or(Value::String(input))),
                };
                Some(Block::ToolUse { id, name, input })
            }
            other => Some(other),
        });
        let content = Some(content.collect());
        let message = self.message.unwrap_or_default();
        let mut usage = message.usage.unwrap_or_default();
        if self.output_tokens.is_some() {
            usage.output_tokens = self.output_tokens;
        }
        Ok(MessageResponse { model: message.model, content, usage: Some(usage) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::llm::{ChatResponse, ToolCall};

    /// The recorded stream's events folded as the provider does; the first error event ends it.
    fn fold(fixture: &str, tool: Option<&str>) -> (Result<ChatResponse, String>, Vec<String>) {
        let pieces = Mutex::new(Vec::new());
        let sink = |t: &str| pieces.lock().unwrap().push(t.to_owned());
        let mut answer = AnthropicEvents::new(tool);
        let mut complete = false;
        for data in fixture.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let event: Event = serde_json::from_str(data).expect("an event");
            if let Some(error) = AnthropicEvents::error(&event) {
                return (Err(error.to_string()), pieces.into_inner().unwrap());
            }
            match answer.take(event, &sink) {
                Flow::More => {}
                Flow::Done => complete = true,
                _ => panic!("unexpected flow"),
            }
        }
        let response = answer.into_response(complete).and_then(ChatResponse::try_from);
        (response.map_err(|e| e.to_string()), pieces.into_inner().unwrap())
    }

    #[test]
    fn text_and_tool_use_are_assembled_with_usage() {
        let (r, pieces) = fold(include_str!("testdata/stream_tool_use.sse"), None);
        let r = r.unwrap();
        assert_eq!(pieces, ["Okay", ", let's check."]);
        assert_eq!(r.content, "Okay, let's check.");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                name: "get_weather".into(),
                arguments: json!({"location": "San Francisco, CA"}),
            }]
        );
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (572, 89));
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
    }

    #[test]
    fn the_forced_tools_input_is_the_streamed_text() {
        let (_, pieces) = fold(include_str!("testdata/stream_tool_use.sse"), Some("get_weather"));
        assert_eq!(pieces, ["", "{\"location\":", " \"San Francisco, CA\"}"]);
    }

    #[test]
    fn an_error_event_and_a_whole_answer() {
        let (r, _) = fold(include_str!("testdata/stream_error.sse"), None);
        assert!(r.unwrap_err().contains("Overloaded"));
        let whole: Event = serde_json::from_str(include_str!("testdata/message_tool_use.json")).unwrap();
        let seen = Mutex::new(String::new());
        let mut answer = AnthropicEvents::new(Some("get_weather"));
        assert!(matches!(answer.take(whole, &|t| seen.lock().unwrap().push_str(t)), Flow::Whole(_)));
        assert_eq!(seen.into_inner().unwrap(), r#"{"location":"San Francisco, CA"}"#);
        assert!(AnthropicEvents::new(None).into_response(false).is_err());
    }
}
