//! Streamed answers (server-sent events) put back together, for the providers' `chat_streaming`.
//!
//! Each provider's events (its typed stream-chunk structs) are folded by an [`Assembler`] into
//! the typed body its non-streaming API would have returned, so the provider converts a streamed
//! answer with the same code as a whole one; on the way, the answer's text (for a structured call: the JSON, whichever field carries
//! it) goes to the caller's sink as it arrives. A server that ignores the request to stream and
//! answers whole is accepted too.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::http::{HttpFailure, HttpTransport};
use super::{LlmError, TextSink};

/// Folds one provider's stream events into its non-streaming response body.
pub(crate) trait Assembler {
    /// One event's `data`, as the provider documents it.
    type Event: DeserializeOwned;
    /// The provider's non-streaming response body.
    type Answer: Send;
    /// The error an event carries instead of a piece of the answer, if it does.
    fn error(event: &Self::Event) -> Option<&Value>;
    /// Takes one event (not an error).
    fn take(&mut self, event: Self::Event, sink: &TextSink<'_>) -> Flow<Self::Answer>;
    /// The answer as the provider's non-streaming response body; `complete` when the stream
    /// said it was (rather than just stopping).
    fn into_response(self, complete: bool) -> Result<Self::Answer, LlmError>;
}

/// What an event means for the rest of the stream.
pub(crate) enum Flow<A> {
    /// Read on.
    More,
    /// The answer is complete.
    Done,
    /// The event was a whole, non-streamed answer (a server that ignored `stream: true`).
    Whole(A),
    /// The event cannot be part of a sound answer.
    Invalid(String),
}

/// Tool calls or content blocks one answer may have: an index beyond it is a broken (or hostile)
/// server, and must not size an allocation.
const MAX_PARTS: usize = 256;

/// The part `index` of `parts`, growing it with defaults as needed; `None` past [`MAX_PARTS`].
pub(crate) fn part<T: Default>(parts: &mut Vec<T>, index: u64) -> Option<&mut T> {
    let index = usize::try_from(index).ok().filter(|i| *i < MAX_PARTS)?;
    if parts.len() <= index {
        parts.resize_with(index + 1, T::default);
    }
    parts.get_mut(index)
}

/// The [`Flow`] of an event about a part past [`MAX_PARTS`].
pub(crate) fn too_many_parts<A>(index: u64) -> Flow<A> {
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
) -> Result<A::Answer, HttpFailure> {
    let (mut complete, mut whole, mut failed) = (false, None, None);
    let mut on_data = |data: &str| {
        match event::<A>(data) {
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

/// One event's data: the provider's event, `None` for OpenAI's `[DONE]`, or the error an error
/// event carries.
fn event<A: Assembler>(data: &str) -> Result<Option<A::Event>, LlmError> {
    if data.trim() == "[DONE]" {
        return Ok(None);
    }
    let event: A::Event = serde_json::from_str(data).map_err(|e| {
        LlmError::InvalidResponse(format!("stream event is not JSON of the expected shape ({e})"))
    })?;
    match A::error(&event).filter(|e| !e.is_null()) {
        Some(error) => {
            let message = super::http::error_detail(error);
            Err(LlmError::InvalidResponse(format!("the stream ended with an error: {message}")))
        }
        None => Ok(Some(event)),
    }
}

/// The error of a stream that ended before any of the answer came.
pub(crate) fn cut_short() -> LlmError {
    LlmError::InvalidResponse("the stream ended before any answer".into())
}
