//! Tracing and OpenTelemetry glue.
//!
//! Trace context crosses actor boundaries inside the messages as a W3C `traceparent` carrier
//! ([`TraceContext`]), not through task-locals or ractor's message span propagation (switched
//! off in Cargo.toml): that keeps every `chat` and `execute_tool` span under its own step even
//! when many steps and runs interleave on the same executor threads.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::llm::{AgentRole, ChatModel, ChatRequest, ChatResponse, LlmError, Models, SharedModel};

/// A W3C trace-context carrier (`traceparent`, `tracestate`); empty when tracing is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext(pub HashMap<String, String>);

impl TraceContext {
    /// The context of `span`, ready to travel in a message.
    pub fn of(span: &tracing::Span) -> Self {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        TraceContext(carrier)
    }

    /// Makes `span` a child of this context (no-op when the carrier is empty).
    pub fn parent(&self, span: &tracing::Span) {
        if self.0.is_empty() {
            return;
        }
        let cx = TraceContextPropagator::new().extract(&self.0);
        // Fails only when the span is disabled or already started; then there is nothing to parent.
        let _ = span.set_parent(cx);
    }

    /// True when there is no context to carry (tracing off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `traceparent` value, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.0.get("traceparent").map(String::as_str)
    }
}

/// Wraps a model so every call gets a `chat {model}` span (GenAI semantic conventions) under the
/// caller's trace context, with token usage and error type recorded. The runtime wraps every
/// model with it, so providers need no tracing code of their own.
pub struct Traced(pub SharedModel);

#[async_trait::async_trait]
impl ChatModel for Traced {
    fn model_name(&self) -> &str {
        self.0.model_name()
    }

    fn provider(&self) -> &str {
        self.0.provider()
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let model = self.0.model_name();
        let span = tracing::info_span!(
            "chat",
            otel.name = %format_args!("chat {model}"),
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "chat",
            gen_ai.system = self.0.provider(),
            gen_ai.request.model = model,
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            stepwise.role = request.context.role.as_str(),
            error.type = tracing::field::Empty,
        );
        request.context.trace.parent(&span);
        let result = self.0.chat(request).instrument(span.clone()).await;
        match &result {
            Ok(r) => {
                span.record("gen_ai.usage.input_tokens", r.usage.input_tokens);
                span.record("gen_ai.usage.output_tokens", r.usage.output_tokens);
                if !r.model.is_empty() {
                    span.record("gen_ai.response.model", r.model.as_str());
                }
            }
            Err(e) => {
                span.record("error.type", llm_error_type(e));
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }
}

/// The `error.type` of a model error.
fn llm_error_type(e: &LlmError) -> &'static str {
    match e {
        LlmError::Status { .. } => "http_status",
        LlmError::Timeout(_) => "timeout",
        LlmError::Transport(_) => "transport",
        LlmError::InvalidResponse(_) => "invalid_response",
        LlmError::Structured { .. } => "invalid_structured_output",
        LlmError::Script(_) => "script",
        LlmError::Config(_) => "config",
    }
}

/// Wraps every role's model in [`Traced`].
pub fn traced(models: &Models) -> Models {
    let mut out = Models::uniform(Arc::new(Traced(models.get(AgentRole::Planner).clone())));
    for role in AgentRole::ALL {
        out = out.with(role, Arc::new(Traced(models.get(role).clone())));
    }
    out
}
