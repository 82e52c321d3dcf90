//! The Chat Completions stream (`chat.completion.chunk` events) as serde types, put back
//! together into a [`Completion`] while the answer's text goes on to the caller's sink.

use serde::Deserialize;
use serde_json::Value;

use super::response::{AssistantMessage, Choice, Completion, Content, FunctionCall, Usage, WireToolCall};
use crate::llm::stream::{Assembler, Flow, cut_short, part, too_many_parts};
use crate::llm::{LlmError, TextSink};

/// One streamed event: a `chat.completion.chunk`, or (a server that ignored `stream: true`) a
/// whole `chat.completion`, or an error.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Chunk {
    /// The model answering.
    #[serde(default)]
    pub model: Option<String>,
    /// Token counts: in the last chunk, with `stream_options.include_usage`.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The pieces (the runtime asks for one choice).
    #[serde(default)]
    pub choices: Option<Vec<ChunkChoice>>,
    /// An error some servers send in place of the next chunk.
    #[serde(default)]
    pub error: Option<Value>,
}

/// One choice of a chunk: a `delta`, or a whole `message` when the server did not stream.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChunkChoice {
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Option<Delta>,
    /// The whole answer.
    #[serde(default)]
    pub message: Option<AssistantMessage>,
}

/// What a chunk adds: text and/or pieces of tool calls.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Delta {
    /// More text.
    #[serde(default)]
    pub content: Option<String>,
    /// Pieces of tool calls, each saying which call (`index`) it continues.
    #[serde(default)]
    pub tool_calls: Option<Vec<DeltaToolCall>>,
}

/// A piece of a tool call: the first carries the id and name, the rest pieces of the arguments.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeltaToolCall {
    /// Which call of the answer this continues.
    #[serde(default)]
    pub index: Option<u64>,
    /// The call's id (first piece).
    #[serde(default)]
    pub id: Option<String>,
    /// Name and argument text.
    #[serde(default)]
    pub function: Option<DeltaFunction>,
}

/// The function part of a [`DeltaToolCall`].
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeltaFunction {
    /// The name, or a piece of it.
    #[serde(default)]
    pub name: Option<String>,
    /// A piece of the arguments' JSON text.
    #[serde(default)]
    pub arguments: Option<String>,
}

/// A streamed answer being put back together.
pub(crate) struct OpenAiChunks<'a> {
    /// The forced structured tool whose arguments are the answer's text (tool mode).
    tool: Option<&'a str>,
    content: String,
    /// Tool calls by index.
    calls: Vec<CallSoFar>,
    usage: Option<Usage>,
    model: Option<String>,
}

/// A tool call's id, name and argument text so far.
#[derive(Debug, Default, Clone)]
struct CallSoFar {
    id: String,
    name: String,
    arguments: String,
}

impl<'a> OpenAiChunks<'a> {
    /// An empty answer; in `tool` mode, `tool` names the forced call whose arguments are the text.
    pub(crate) fn new(tool: Option<&'a str>) -> Self {
        Self { tool, content: String::new(), calls: Vec::new(), usage: None, model: None }
    }

    /// Hands a whole (non-streamed) answer's text to `sink`: the content, or in tool mode the
    /// forced call's arguments.
    pub(crate) fn hand_over_whole(&self, message: &AssistantMessage, sink: &TextSink<'_>) {
        let text = match self.tool {
            Some(tool) => {
                let calls = message.tool_calls.iter().flatten();
                let forced =
                    calls.filter_map(|c| c.function.as_ref()).find(|f| f.name.as_deref() == Some(tool));
                match forced.and_then(|f| f.arguments.as_ref()) {
                    Some(Value::String(text)) => text.as_str(),
                    _ => "",
                }
            }
            None => match &message.content {
                Some(Content::Text(text)) => text.as_str(),
                _ => "",
            },
        };
        sink(text);
    }

    fn take_delta(&mut self, delta: Delta, sink: &TextSink<'_>) -> Flow<Completion> {
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            if self.tool.is_none() {
                sink(&text);
            }
            self.content.push_str(&text);
        }
        for call in delta.tool_calls.into_iter().flatten() {
            let index = call.index.unwrap_or(0);
            let Some(slot) = part(&mut self.calls, index) else { return too_many_parts(index) };
            if let Some(id) = call.id {
                slot.id = id;
            }
            let function = call.function.unwrap_or_default();
            if let Some(name) = function.name {
                slot.name.push_str(&name);
            }
            if let Some(args) = function.arguments {
                if self.tool.is_some_and(|t| t == slot.name) {
                    sink(&args);
                }
                slot.arguments.push_str(&args);
            }
        }
        Flow::More
    }
}

impl Assembler for OpenAiChunks<'_> {
    type Event = Chunk;
    type Answer = Completion;

    fn error(chunk: &Chunk) -> Option<&Value> {
        chunk.error.as_ref()
    }

    fn take(&mut self, chunk: Chunk, sink: &TextSink<'_>) -> Flow<Completion> {
        let Chunk { model, usage, choices, error: _ } = chunk;
        let choice = choices.and_then(|c| c.into_iter().next()).unwrap_or_default();
        if let Some(message) = choice.message {
            self.hand_over_whole(&message, sink);
            let choices = Some(vec![Choice { message: Some(message) }]);
            return Flow::Whole(Completion { model, choices, usage, error: None });
        }
        if model.is_some() {
            self.model = model;
        }
        if usage.is_some() {
            self.usage = usage;
        }
        match choice.delta {
            Some(delta) => self.take_delta(delta, sink),
            None => Flow::More,
        }
    }

    fn into_response(self, complete: bool) -> Result<Completion, LlmError> {
        if !complete && self.content.is_empty() && self.calls.is_empty() {
            return Err(cut_short());
        }
        let calls: Vec<WireToolCall> = self
            .calls
            .into_iter()
            .map(|c| WireToolCall {
                id: Some(c.id),
                function: Some(FunctionCall {
                    name: Some(c.name),
                    arguments: Some(Value::String(c.arguments)),
                }),
            })
            .collect();
        let message = AssistantMessage {
            content: Some(Content::Text(self.content)),
            tool_calls: (!calls.is_empty()).then_some(calls),
        };
        Ok(Completion {
            model: self.model,
            choices: Some(vec![Choice { message: Some(message) }]),
            usage: self.usage,
            error: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::llm::{ChatResponse, ToolCall};

    /// The recorded stream's events, `[DONE]` included, folded as the provider does.
    fn fold(fixture: &str, tool: Option<&str>) -> (Result<ChatResponse, LlmError>, Vec<String>) {
        let pieces = Mutex::new(Vec::new());
        let sink = |t: &str| pieces.lock().unwrap().push(t.to_owned());
        let mut answer = OpenAiChunks::new(tool);
        let mut complete = false;
        for data in fixture.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                complete = true;
                break;
            }
            let chunk: Chunk = serde_json::from_str(data).expect("a chunk");
            assert!(OpenAiChunks::error(&chunk).is_none());
            match answer.take(chunk, &sink) {
                Flow::More => {}
                other => panic!("unexpected flow: {}", matches!(other, Flow::Done)),
            }
        }
        let response = answer.into_response(complete).and_then(ChatResponse::try_from);
        (response, pieces.into_inner().unwrap())
    }

    #[test]
    fn a_streamed_text_answer_with_usage_in_the_last_chunk() {
        let (r, pieces) = fold(include_str!("testdata/stream_text.sse"), None);
        let r = r.unwrap();
        assert_eq!(pieces, ["The", " capital", " is Paris."]);
        assert_eq!(r.content, "The capital is Paris.");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (19, 10));
        assert_eq!(r.model, "gpt-4o-mini-2024-07-18");
    }

    #[test]
    fn streamed_tool_calls_are_assembled_from_fragments() {
        let (r, pieces) = fold(include_str!("testdata/stream_tool_calls.sse"), None);
        let r = r.unwrap();
        assert!(pieces.is_empty(), "{pieces:?}");
        assert_eq!(
            r.tool_calls,
            vec![
                ToolCall { id: "call_1".into(), name: "read_file".into(), arguments: json!({"path": "a"}) },
                ToolCall { id: "call_2".into(), name: "list_dir".into(), arguments: json!({}) },
            ]
        );
    }

    #[test]
    fn in_tool_mode_the_forced_calls_arguments_are_the_text() {
        let (r, pieces) = fold(include_str!("testdata/stream_tool_calls.sse"), Some("read_file"));
        assert_eq!(pieces, ["", "{\"path\"", ": \"a\"}"]);
        assert_eq!(r.unwrap().tool_calls.len(), 2);
    }

    #[test]
    fn a_whole_answer_an_error_event_and_a_cut_stream() {
        let mut answer = OpenAiChunks::new(None);
        let whole: Chunk = serde_json::from_str(include_str!("testdata/completion_text.json")).unwrap();
        let seen = Mutex::new(String::new());
        match answer.take(whole, &|t| seen.lock().unwrap().push_str(t)) {
            Flow::Whole(c) => assert_eq!(ChatResponse::try_from(c).unwrap().usage.input_tokens, 2006),
            _ => panic!("a whole answer is not a chunk"),
        }
        assert_eq!(seen.into_inner().unwrap(), "Paris is the capital of France.");
        let error: Chunk = serde_json::from_value(json!({"error": {"message": "overloaded"}})).unwrap();
        assert_eq!(OpenAiChunks::error(&error), Some(&json!({"message": "overloaded"})));
        assert!(OpenAiChunks::new(None).into_response(false).is_err());
        let mut far = OpenAiChunks::new(None);
        let chunk = json!({"choices": [{"delta": {"tool_calls": [{"index": 100000, "id": "x"}]}}]});
        assert!(matches!(far.take(serde_json::from_value(chunk).unwrap(), &|_| {}), Flow::Invalid(_)));
    }
}
