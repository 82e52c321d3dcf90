//! Building a [`ChatRequest`]: who calls (the [`CallContext`]) and what it sends, in one chain.

use std::sync::Arc;

use super::{AgentRole, CallContext, ChatRequest, Message, StructuredOutput, ToolSpec};
use crate::plan::StepId;
use crate::telemetry::TraceContext;

impl CallContext {
    /// A call by `role` for run `run_id`, its spans parented under `trace`.
    pub fn new(role: AgentRole, run_id: impl Into<String>, trace: TraceContext) -> Self {
        Self { run_id: run_id.into(), role, step: None, attempt: 0, trace }
    }

    /// The same call made while working attempt `attempt` of step `step` (executor, verifier).
    pub fn step(mut self, step: impl Into<StepId>, attempt: u32) -> Self {
        self.step = Some(step.into());
        self.attempt = attempt;
        self
    }
}

impl ChatRequest {
    /// A request made in `context`, with no messages yet; see [`ChatRequestBuilder`] for an example.
    pub fn builder(context: CallContext) -> ChatRequestBuilder {
        ChatRequestBuilder {
            request: ChatRequest {
                context,
                messages: vec![],
                tools: vec![],
                structured: None,
                max_tokens: None,
            },
        }
    }
}

/// Assembles a [`ChatRequest`] (who calls, then what it sends):
///
/// ```
/// use stepwise::llm::{AgentRole, CallContext, ChatRequest};
/// use stepwise::telemetry::TraceContext;
///
/// let context = CallContext::new(AgentRole::Executor, "run-1", TraceContext::default()).step("s1", 2);
/// let request = ChatRequest::builder(context)
///     .system("You work one step of a plan.")
///     .user("Your step (s1): count the files")
///     .max_tokens(512)
///     .build();
/// assert_eq!(request.messages.len(), 2);
/// assert_eq!(request.context.attempt, 2);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build`"]
pub struct ChatRequestBuilder {
    request: ChatRequest,
}

impl ChatRequestBuilder {
    /// Appends a system turn.
    pub fn system(self, text: impl Into<String>) -> Self {
        self.message(Message::system(text))
    }

    /// Appends a user turn.
    pub fn user(self, text: impl Into<String>) -> Self {
        self.message(Message::user(text))
    }

    /// Appends a turn.
    pub fn message(mut self, message: Message) -> Self {
        self.request.messages.push(message);
        self
    }

    /// Appends turns (a conversation carried over from earlier calls).
    pub fn messages(mut self, messages: impl IntoIterator<Item = Message>) -> Self {
        self.request.messages.extend(messages);
        self
    }

    /// The tools the model may call.
    pub fn tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.request.tools = tools;
        self
    }

    /// Asks for JSON matching `schema` (named `name` on the wire) instead of free text.
    pub fn structured(mut self, name: impl Into<String>, schema: Arc<serde_json::Value>) -> Self {
        self.request.structured = Some(StructuredOutput { name: name.into(), schema });
        self
    }

    /// Caps the answer's output tokens.
    pub fn max_tokens(mut self, max: u32) -> Self {
        self.request.max_tokens = Some(max);
        self
    }

    /// The request.
    pub fn build(self) -> ChatRequest {
        self.request
    }
}
