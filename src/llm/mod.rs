//! The model abstraction: one [`ChatModel`] trait that every provider implements.
//!
//! A request carries the conversation, the tool schemas, an optional structured-output schema
//! (by name: `plan`, `replan_decision`, `step_verdict`) and a [`CallContext`] saying which run,
//! role and step is asking. Providers map it to their wire format; the scripted provider uses the
//! context to pick its scripted answer, so one script serves many concurrent runs.

pub mod anthropic;
pub mod config;
mod endpoint;
pub mod http;
pub mod openai;
pub mod outage;
pub mod price;
pub mod providers;
pub mod record;
mod request;
mod role;
pub mod scripted;
mod stream;
pub mod usage;

pub use request::ChatRequestBuilder;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::plan::StepId;
use crate::telemetry::context::TraceContext;
pub use usage::{Cost, Usage};

pub use role::{AgentRole, PerRole};

/// Default of [`RuntimeBuilder::llm_concurrency`](crate::RuntimeBuilder::llm_concurrency) (`runtime.llm_concurrency`). A run has at most
/// one planner, replanner or synthesizer call in flight, so this bound only delays runs when more
/// runs than this are live: 2,048 lets 2,000 concurrent runs all plan at once (at 100 ms per call,
/// 512 permits would queue them in four waves), and still caps a runaway burst.
pub const DEFAULT_LLM_CONCURRENCY: usize = 2048;

/// Where a call comes from: routing for the scripted provider, attributes for telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallContext {
    /// The run's id.
    pub run_id: String,
    /// The calling role.
    pub role: AgentRole,
    /// The step, for executor and verifier calls.
    pub step: Option<StepId>,
    /// The step's attempt (1-based), for executor and verifier calls.
    pub attempt: u32,
    /// The calling span's trace context: model-call spans hang under it, and a provider may
    /// forward it (`traceparent`) to a server that traces too.
    #[serde(default, skip_serializing_if = "TraceContext::is_empty")]
    pub trace: TraceContext,
}

/// A conversation turn's author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions.
    System,
    /// The task or step.
    User,
    /// The model's earlier turns (text and/or tool calls).
    Assistant,
    /// A tool's result, answering one tool call.
    Tool,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider-assigned id, echoed back with the result.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as JSON (an object for well-behaved models; validated by the tool).
    pub arguments: serde_json::Value,
}

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text content (may be empty when the turn is only tool calls).
    pub content: String,
    /// Tool calls of an assistant turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `Tool` turn: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A system turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self { role: Role::System, content: content.into(), tool_calls: vec![], tool_call_id: None }
    }
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into(), tool_calls: vec![], tool_call_id: None }
    }
    /// An assistant turn.
    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self { role: Role::Assistant, content: content.into(), tool_calls, tool_call_id: None }
    }
    /// A tool result answering `call_id`.
    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: Some(call_id.into()),
        }
    }
}

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object; shared, since every executor call sends it again.
    pub parameters: Arc<serde_json::Value>,
}

/// A request for JSON matching a named schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StructuredOutput {
    /// `plan`, `replan_decision` or `step_verdict`.
    pub name: String,
    /// JSON Schema the answer must match; shared, since the same schema goes with every call
    /// (and every copy of a request kept for a repair).
    pub schema: Arc<serde_json::Value>,
}

/// One model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Who is asking.
    pub context: CallContext,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools the model may call (empty: none).
    #[serde(default)]
    pub tools: Vec<ToolSpec>,
    /// Ask for JSON matching this schema instead of free text.
    #[serde(default)]
    pub structured: Option<StructuredOutput>,
    /// Cap on output tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Text (for structured calls: the JSON text).
    pub content: String,
    /// Tool calls, if the model wants tools run.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// What this call used (`llm_calls` 0: the caller counts the call; cost once priced).
    #[serde(default)]
    pub usage: Usage,
    /// The model that answered (as the provider names it).
    #[serde(default)]
    pub model: String,
}

/// A failed model call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with an error status that retries did not fix.
    #[error("provider returned HTTP {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The provider's error message.
        message: String,
    },
    /// No answer within the request timeout (after retries).
    #[error("model request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Could not reach the provider.
    #[error("could not reach the model provider: {0}")]
    Transport(String),
    /// The provider stayed unavailable (unreachable, timing out, 5xx, 408 or 429) for as long
    /// as a call may wait for it (`[llm] outage_max_wait_secs`).
    #[error(
        "the model provider {provider} was unavailable for {}s (the limit, [llm] outage_max_wait_secs, is {}s); it last answered: {last_error}",
        waited.as_secs(), limit.as_secs()
    )]
    Unavailable {
        /// The provider (scheme, host, port).
        provider: String,
        /// How long the call waited.
        waited: std::time::Duration,
        /// How long it might wait.
        limit: std::time::Duration,
        /// What the provider last answered (or how it could not be reached).
        last_error: String,
    },
    /// The answer did not have the expected shape.
    #[error("invalid model response: {0}")]
    InvalidResponse(String),
    /// Structured output still invalid after the repair round-trip.
    #[error("{schema} output invalid after repair: {error}")]
    Structured {
        /// The schema's name (`plan`, `replan_decision`, `step_verdict`).
        schema: String,
        /// Why the last answer did not fit.
        error: String,
    },
    /// The scripted provider's script had no answer for this call, or said to fail.
    #[error("scripted model: {0}")]
    Script(String),
    /// Misconfiguration (missing key, unknown provider…).
    #[error("model configuration: {0}")]
    Config(String),
}

/// Receives an answer's text piece by piece while the model is still writing it.
pub type TextSink<'a> = dyn Fn(&str) + Send + Sync + 'a;

/// A chat model. Implementations must be cheap to share (`Arc`) and safe to call concurrently.
///
/// The built-in providers live in [`openai`], [`anthropic`] and [`scripted`]; a model of your
/// own (a gateway, a local engine, a wrapper that adds caching) implements this:
///
/// ```
/// use stepwise::llm::{ChatModel, ChatRequest, ChatResponse, LlmError, Usage};
///
/// /// Answers every call with the last user message, reversed.
/// struct Mirror;
///
/// #[async_trait::async_trait]
/// impl ChatModel for Mirror {
///     fn model_name(&self) -> &str { "mirror-1" }
///     fn provider(&self) -> &str { "mirror" }
///     async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
///         let last = request.messages.last().map(|m| m.content.as_str()).unwrap_or_default();
///         Ok(ChatResponse {
///             content: last.chars().rev().collect(),
///             tool_calls: vec![],
///             usage: Usage::of_tokens(last.len() as u64 / 4, last.len() as u64 / 4),
///             model: self.model_name().into(),
///         })
///     }
/// }
/// # let _: std::sync::Arc<dyn ChatModel> = std::sync::Arc::new(Mirror);
/// ```
#[async_trait::async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// The model name, as reported in spans (`gen_ai.request.model`).
    fn model_name(&self) -> &str;
    /// The provider name (`gen_ai.system`): `openai`, `anthropic`, `scripted`.
    fn provider(&self) -> &str;
    /// One call. Providers retry transient failures themselves; errors here are final.
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError>;

    /// Like [`ChatModel::chat`], and also hands the answer's text (for a structured call: the
    /// JSON) to `sink` piece by piece as it is generated, so a caller can act on a prefix: the
    /// streaming planner starts steps before the plan is finished. The pieces concatenate to the
    /// returned `content`, give or take a code fence. Providers that cannot stream keep this
    /// default, which hands over the whole text once it is there.
    async fn chat_streaming(
        &self,
        request: ChatRequest,
        sink: &TextSink<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let response = self.chat(request).await?;
        sink(&response.content);
        Ok(response)
    }

    /// Called once a run has ended, so a model that keeps per-run state (the scripted provider's
    /// position in its script) can drop it: a long-lived service must not grow with every run.
    fn run_finished(&self, _run_id: &str) {}
}

/// A [`ChatModel`] written as one method that takes an optional sink. The network providers'
/// `chat` and `chat_streaming` differ only in that, so they get them from this blanket impl.
#[async_trait::async_trait]
pub trait SinkModel: Send + Sync + 'static {
    /// What [`ChatModel::model_name`] answers.
    fn model_id(&self) -> &str;
    /// What [`ChatModel::provider`] answers.
    fn provider_id(&self) -> &str;
    /// What [`ChatModel::run_finished`] does.
    fn on_run_finished(&self, _run_id: &str) {}
    /// One call, streamed into `sink` when there is one.
    async fn call(&self, request: ChatRequest, sink: Option<&TextSink<'_>>)
    -> Result<ChatResponse, LlmError>;
}

#[async_trait::async_trait]
impl<M: SinkModel> ChatModel for M {
    fn model_name(&self) -> &str {
        self.model_id()
    }

    fn provider(&self) -> &str {
        self.provider_id()
    }

    fn run_finished(&self, run_id: &str) {
        self.on_run_finished(run_id)
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.call(request, None).await
    }

    async fn chat_streaming(
        &self,
        request: ChatRequest,
        sink: &TextSink<'_>,
    ) -> Result<ChatResponse, LlmError> {
        self.call(request, Some(sink)).await
    }
}

/// [`ChatModel::chat_streaming`] when there is a sink, else [`ChatModel::chat`]: the one place a
/// caller (or a wrapping model) that may or may not stream picks the method.
pub async fn chat_maybe_streaming(
    model: &dyn ChatModel,
    request: ChatRequest,
    sink: Option<&TextSink<'_>>,
) -> Result<ChatResponse, LlmError> {
    match sink {
        Some(sink) => model.chat_streaming(request, sink).await,
        None => model.chat(request).await,
    }
}

/// A shared model handle.
pub type SharedModel = Arc<dyn ChatModel>;

/// One model per role (planner, executor, …), so a strong planner can sit beside a cheap executor.
#[derive(Clone)]
pub struct Models {
    by_role: PerRole<SharedModel>,
}

impl Models {
    /// The same model for every role.
    pub fn uniform(model: SharedModel) -> Self {
        Self { by_role: PerRole::from_fn(|_| model.clone()) }
    }

    /// One model per role.
    pub fn per_role(by_role: PerRole<SharedModel>) -> Self {
        Self { by_role }
    }

    /// Replaces the model for one role.
    pub fn with(self, role: AgentRole, model: SharedModel) -> Self {
        Self { by_role: self.by_role.with(role, model) }
    }

    /// The model for `role`.
    pub fn get(&self, role: AgentRole) -> &SharedModel {
        self.by_role.get(role)
    }

    /// Each role's model replaced by `f(role, model)` (e.g. wrapped), roles in pipeline order.
    pub fn map(&self, mut f: impl FnMut(AgentRole, &SharedModel) -> SharedModel) -> Self {
        Self { by_role: self.by_role.map(&mut f) }
    }
}

impl fmt::Debug for Models {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (role, model) in self.by_role.iter() {
            m.entry(&role.as_str(), &format!("{}/{}", model.provider(), model.model_name()));
        }
        m.finish()
    }
}

/// The outcome of a structured call: the parsed value, the usage of every call it took.
#[derive(Debug, Clone)]
pub struct Structured<T> {
    /// The parsed, validated value.
    pub value: T,
    /// Usage summed over the call and its repair, if any (each counted as a call).
    pub usage: Usage,
    /// Number of model calls made (1, or 2 with a repair).
    pub calls: u32,
}

/// Asks for structured output and parses it with `parse`; on a parse/validation error, sends the
/// error back once ("repair") and tries again, then fails with both errors named.
///
/// `parse` returns a human-readable error the model can act on (it names the offending step).
pub async fn structured_call<T>(
    model: &dyn ChatModel,
    request: ChatRequest,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Structured<T>, LlmError> {
    structured_call_streaming(model, request, None, parse).await
}

/// [`structured_call`] whose first call streams its text into `sink` (the repair call, if
/// any, does not: what streamed first was the rejected answer).
pub async fn structured_call_streaming<T>(
    model: &dyn ChatModel,
    request: ChatRequest,
    sink: Option<&TextSink<'_>>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Structured<T>, LlmError> {
    structured_call_spent(model, request, sink, parse).await.map_err(|f| f.error)
}

/// A structured call that failed, with what the calls that did answer spent (a rejected plan
/// still cost its tokens).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct StructuredFailure {
    /// Why it failed.
    pub error: LlmError,
    /// Usage of the calls that answered (each counted as a call).
    pub usage: Usage,
    /// Number of calls that answered.
    pub calls: u32,
}

/// [`structured_call_streaming`] whose failure keeps the usage spent before it.
pub async fn structured_call_spent<T>(
    model: &dyn ChatModel,
    mut request: ChatRequest,
    sink: Option<&TextSink<'_>>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Structured<T>, StructuredFailure> {
    let failed = |error, usage, calls| StructuredFailure { error, usage, calls };
    let schema = request.structured.as_ref().map(|s| s.name.clone()).unwrap_or_else(|| "json".into());
    let first = chat_maybe_streaming(model, request.clone(), sink)
        .await
        .map_err(|e| failed(e, Usage::default(), 0))?;
    let mut usage = Usage::default();
    usage.add_call(first.usage);
    match parse(&first.content) {
        Ok(value) => Ok(Structured { value, usage, calls: 1 }),
        Err(error) => {
            tracing::warn!(schema = %schema, %error, "structured output invalid; asking the model to repair it");
            request.messages.push(Message::assistant(first.content, vec![]));
            request.messages.push(Message::user(format!(
                "Your answer was rejected: {error}\nReply again with only the corrected JSON for the `{schema}` schema."
            )));
            let second = model.chat(request).await.map_err(|e| failed(e, usage, 1))?;
            usage.add_call(second.usage);
            parse(&second.content).map(|value| Structured { value, usage, calls: 2 }).map_err(|e2| {
                let error = format!("{e2} (first attempt: {error})");
                failed(LlmError::Structured { schema, error }, usage, 2)
            })
        }
    }
}
