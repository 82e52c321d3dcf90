//! Streamed answers (server-sent events) put back together, for the providers' `chat_streaming`.
//!
//! Each provider's events are folded by an [`Assembler`] into the body its non-streaming API
//! would have returned, so the provider parses a streamed answer with the same code as a whole
//! one; on the way, the answer's text (for a structured call: the JSON, whichever field carries
//! it) goes to the caller's sink as it arrives. A server that ignores the request to stream and
//! answers whole is accepted too.

use serde_json::{Value, json};

use super::http::{HttpFailure, HttpTransport};
use super::{LlmError, TextSink};

/// Folds one provider's stream events into its non-streaming response body.
pub(crate) trait Assembler {
    /// Takes one event (parsed JSON, not an error).
    fn take(&mut self, event: Value, sink: &TextSink<'_>) -> Flow;
    /// The answer as the provider's non-streaming response body; `complete` when the stream
    /// said it was (rather than just stopping).
    fn into_response(self, complete: bool) -> Result<Value, LlmError>;
}

/// What an event means for the rest of the stream.
pub(crate) enum Flow {
    /// Read on.
    More,
    /// The answer is complete.
    Done,
    /// The event was a whole, non-streamed answer (a server that ignored `stream: true`).
    Whole(Value),
    /// The event cannot be part of a sound answer.
    Invalid(String),
}

/// Tool calls or content blocks one answer may have: an index beyond it is a broken (or hostile)
/// server, and must not size an allocation.
const MAX_PARTS: usize = 256;

/// The part `index` of `parts`, growing it as needed; `None` past [`MAX_PARTS`].
fn part<T: Clone>(parts: &mut Vec<T>, index: usize, empty: T) -> Option<&mut T> {
    if index >= MAX_PARTS {
        return None;
    }
    if parts.len() <= index {
        parts.resize(index + 1, empty);
    }
    parts.get_mut(index)
}

fn too_many_parts(index: usize) -> Flow {
    Flow::Invalid(format!("stream event for part #{index}; an answer has at most {MAX_PARTS}"))
}

/// POSTs `body` (JSON bytes asking for a stream), hands the answer's text to `sink` as it arrives, and
/// returns the whole answer in the non-streaming shape.
pub(crate) async fn post_streamed<A: Assembler + Send>(
    http: &HttpTransport,
    url: &str,
    body: Vec<u8>,
    give_up: &(dyn Fn(u16, &str) -> bool + Send + Sync),
    mut answer: A,
    sink: &TextSink<'_>,
) -> Result<Value, HttpFailure> {
    let (mut complete, mut whole, mut failed) = (false, None, None);
    let mut on_data = |data: &str| {
        match event(data) {
            Ok(Some(e)) => match answer.take(e, sink) {
                Flow::More => return true,
                Flow::Done => complete = true,
                Flow::Whole(v) => whole = Some(v),
                Flow::Invalid(e) => failed = Some(LlmError::InvalidResponse(e)),
            },
            Ok(None) => complete = true,
            Err(e) => failed = Some(e),
        }
        false
    };
    http.post_sse(url, body, give_up, &mut on_data).await?;
    let answer = match (failed, whole) {
        (Some(error), _) => Err(error),
        (None, Some(whole)) => Ok(whole),
        (None, None) => answer.into_response(complete),
    };
    answer.map_err(|error| HttpFailure { error, body: None })
}

/// One event's data: JSON, `None` for OpenAI's `[DONE]`, or the error an error event carries.
fn event(data: &str) -> Result<Option<Value>, LlmError> {
    if data.trim() == "[DONE]" {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(data)
        .map_err(|e| LlmError::InvalidResponse(format!("stream event is not JSON ({e})")))?;
    match v.get("error") {
        Some(error) if !error.is_null() => {
            let message = super::http::error_message(&json!({"error": error}).to_string());
            Err(LlmError::InvalidResponse(format!("the stream ended with an error: {message}")))
        }
        _ => Ok(Some(v)),
    }
}

fn cut_short() -> LlmError {
    LlmError::InvalidResponse("the stream ended before any answer".into())
}

/// OpenAI's `chat.completion.chunk` events, put back together as a `chat.completion`.
pub(crate) struct OpenAiChunks<'a> {
    /// The forced structured tool whose arguments are the answer's text (tool mode).
    tool: Option<&'a str>,
    content: String,
    /// Tool calls by index: id, name, arguments so far.
    calls: Vec<(String, String, String)>,
    usage: Option<Value>,
    model: Option<String>,
}

impl<'a> OpenAiChunks<'a> {
    /// An empty answer; in `tool` mode, `tool` names the forced call whose arguments are the text.
    pub(crate) fn new(tool: Option<&'a str>) -> Self {
        Self { tool, content: String::new(), calls: Vec::new(), usage: None, model: None }
    }
}

impl Assembler for OpenAiChunks<'_> {
    fn take(&mut self, chunk: Value, sink: &TextSink<'_>) -> Flow {
        if let Some(message) = chunk.pointer("/choices/0/message") {
            let text = match self.tool {
                Some(tool) => message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .and_then(|calls| {
                        calls.iter().find(|c| c.pointer("/function/name") == Some(&json!(tool)))
                    })
                    .and_then(|c| c.pointer("/function/arguments"))
                    .and_then(Value::as_str),
                None => message.get("content").and_then(Value::as_str),
            };
            sink(text.unwrap_or_default());
            return Flow::Whole(chunk);
        }
        if let Some(m) = chunk.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_owned());
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(delta) = chunk.pointer("/choices/0/delta") else { return Flow::More };
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.content.push_str(text);
            if self.tool.is_none() {
                sink(text);
            }
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            let Some(slot) = part(&mut self.calls, index, Default::default()) else {
                return too_many_parts(index);
            };
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                slot.0 = id.to_owned();
            }
            if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                slot.1.push_str(name);
            }
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                slot.2.push_str(args);
                if self.tool.is_some_and(|t| t == slot.1) {
                    sink(args);
                }
            }
        }
        Flow::More
    }

    fn into_response(self, complete: bool) -> Result<Value, LlmError> {
        if !complete && self.content.is_empty() && self.calls.is_empty() {
            return Err(cut_short());
        }
        let calls: Vec<Value> = self
            .calls
            .into_iter()
            .map(|(id, name, arguments)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
            })
            .collect();
        let mut message = json!({"role": "assistant", "content": self.content});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        let mut body = json!({"choices": [{"index": 0, "message": message}]});
        if let Some(u) = self.usage {
            body["usage"] = u;
        }
        if let Some(m) = self.model {
            body["model"] = json!(m);
        }
        Ok(body)
    }
}

/// Anthropic's Messages stream (`message_start`, `content_block_*`, `message_delta`,
/// `message_stop`), put back together as a `message`.
pub(crate) struct AnthropicEvents<'a> {
    /// The forced structured tool whose input is the answer's text.
    tool: Option<&'a str>,
    /// `message_start`'s message: model and input usage.
    message: Option<Value>,
    /// Content blocks by index, and each tool_use block's input JSON so far.
    blocks: Vec<(Value, String)>,
    output_tokens: Option<u64>,
}

impl<'a> AnthropicEvents<'a> {
    /// An empty answer; `tool` names the forced tool of a structured call.
    pub(crate) fn new(tool: Option<&'a str>) -> Self {
        Self { tool, message: None, blocks: Vec::new(), output_tokens: None }
    }

    /// The block an event is about; `Err` with its index past [`MAX_PARTS`].
    fn block(&mut self, event: &Value) -> Result<Option<&mut (Value, String)>, usize> {
        let Some(index) = event.get("index").and_then(Value::as_u64) else { return Ok(None) };
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        part(&mut self.blocks, index, (Value::Null, String::new())).map(Some).ok_or(index)
    }
}

impl Assembler for AnthropicEvents<'_> {
    fn take(&mut self, event: Value, sink: &TextSink<'_>) -> Flow {
        let tool = self.tool;
        match event.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message" => {
                let blocks = event.get("content").and_then(Value::as_array).into_iter().flatten();
                let text: String = match tool {
                    Some(t) => blocks
                        .filter(|b| b.get("name").and_then(Value::as_str) == Some(t))
                        .map(|b| b.get("input").map(Value::to_string).unwrap_or_default())
                        .collect(),
                    None => blocks.filter_map(|b| b.get("text").and_then(Value::as_str)).collect(),
                };
                sink(&text);
                return Flow::Whole(event);
            }
            "message_start" => self.message = event.get("message").cloned(),
            "content_block_start" => {
                let start = event.get("content_block").cloned().unwrap_or(Value::Null);
                match self.block(&event) {
                    Ok(Some(block)) => *block = (start, String::new()),
                    Ok(None) => {}
                    Err(index) => return too_many_parts(index),
                }
            }
            "content_block_delta" => {
                let delta = event.get("delta").cloned().unwrap_or(Value::Null);
                let (block, input) = match self.block(&event) {
                    Ok(Some(b)) => b,
                    Ok(None) => return Flow::More,
                    Err(index) => return too_many_parts(index),
                };
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    let so_far = block.get("text").and_then(Value::as_str).unwrap_or_default();
                    block["text"] = json!(format!("{so_far}{text}"));
                    if tool.is_none() {
                        sink(text);
                    }
                }
                if let Some(part) = delta.get("partial_json").and_then(Value::as_str) {
                    input.push_str(part);
                    if tool.is_some() && block.get("name").and_then(Value::as_str) == tool {
                        sink(part);
                    }
                }
            }
            "message_delta" => {
                if let Some(n) = event.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.output_tokens = Some(n);
                }
            }
            "message_stop" => return Flow::Done,
            _ => {} // ping, content_block_stop, and whatever a later API version adds
        }
        Flow::More
    }

    fn into_response(self, complete: bool) -> Result<Value, LlmError> {
        if !complete && self.blocks.is_empty() {
            return Err(cut_short());
        }
        let content: Vec<Value> = self
            .blocks
            .into_iter()
            .filter(|(block, _)| !block.is_null())
            .map(|(mut block, input)| {
                if block.get("type").and_then(Value::as_str) == Some("tool_use") && !input.is_empty() {
                    // Input that does not parse goes on as text: the structured parse names it.
                    block["input"] = serde_json::from_str(&input).unwrap_or(Value::String(input));
                }
                block
            })
            .collect();
        let message = self.message.unwrap_or_else(|| json!({}));
        let mut usage = message.get("usage").cloned().unwrap_or_else(|| json!({}));
        if let Some(n) = self.output_tokens {
            usage["output_tokens"] = json!(n);
        }
        Ok(json!({"type": "message", "role": "assistant", "model": message.get("model"),
                  "content": content, "usage": usage}))
    }
}
