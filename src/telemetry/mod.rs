//! Tracing, OpenTelemetry and metrics: the span tree of a run, OTLP export
//! ([`init`]), metrics and their Prometheus rendering ([`prometheus_text`]).
//!
//! # How spans are parented (and why not by ractor)
//!
//! ractor's `message_span_propogation` feature is off (Cargo.toml), deliberately. With it on,
//! ractor captures `Span::current()` when a message is sent and enters it around the receiving
//! handler, so a handler's spans nest under whatever span happened to be current at the sender:
//! a tracker under the supervisor, a step's work under whichever run last sent to the pool. Under
//! parallel steps and concurrent runs that mixes trees, and it cannot cross a machine.
//!
//! Instead every span is created with an explicit parent. Spans the tracker owns (`stepwise.run`,
//! `stepwise.plan`, `stepwise.step {id}`, `stepwise.replan`, `stepwise.synthesize`) use
//! `parent: &span`; every job message carries the W3C `traceparent` of its span
//! ([`TraceContext`]), and the spans made where the job runs (`chat {model}`,
//! `execute_tool {name}`) take it with [`TraceContext::parent`]. That must happen before the span
//! starts: tracing-opentelemetry 0.34 builds the OTel span lazily (on first enter, or when a child
//! or `context()` asks for it) and ignores `set_parent` afterwards, so [`TraceContext::parent`] is
//! called right after creating the span, before it is entered or instrumented.
//!
//! One run is one trace: `stepwise.run` is always a root. A step that a replan created carries a
//! span link to the failed step attempt that caused the replan.
//!
//! # Content
//!
//! Prompts, model outputs and tool arguments go into spans only when [`ContentCapture`] is on
//! (`[telemetry] record_content`), truncated. Credentials are never recorded: providers keep API
//! keys in request headers, which no span or log sees.

pub mod context;
mod export;
mod ids;
pub mod metrics;

use crate::text::clip;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use context::TraceContext;
pub use export::{
    ExportSettings, OtlpPipeline, OtlpProtocol, TelemetryError, TelemetryGuard, build_pipeline, init,
    init_with, otel_filter,
};
pub(crate) use ids::with_trace_id;
pub use ids::{RunTraceIds, trace_id_of};
pub use metrics::prometheus_text;

use crate::config::TelemetryConfig;
use crate::llm::price::PriceTable;
use crate::llm::{ChatRequest, ChatResponse, LlmError, Models, SharedModel, SinkModel, TextSink};

/// The OTel span context of `span` (invalid when tracing is off), e.g. to link to it later.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Whether, and how much of, prompts, outputs and tool arguments go into spans.
///
/// Off by default: content may hold data that must not leave the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentCapture {
    max_bytes: Option<usize>,
}

impl ContentCapture {
    /// Record nothing.
    pub const OFF: ContentCapture = ContentCapture { max_bytes: None };

    /// Record content, each attribute cut to `max_bytes`.
    pub fn up_to(max_bytes: usize) -> Self {
        Self { max_bytes: Some(max_bytes) }
    }

    /// From `[telemetry] record_content` and `max_content_bytes`.
    pub fn from_config(cfg: &TelemetryConfig) -> Self {
        if cfg.record_content { Self::up_to(cfg.max_content_bytes) } else { Self::OFF }
    }

    /// True when content is recorded.
    pub fn is_on(&self) -> bool {
        self.max_bytes.is_some()
    }

    /// Sets attribute `key` on `span` to `text` cut to the limit; does nothing when off.
    pub fn record(&self, span: &tracing::Span, key: &'static str, text: &str) {
        if let Some(max) = self.max_bytes {
            span.set_attribute(key, clip(text, max));
        }
    }
}

/// Wraps a model so every call gets a `chat {model}` span (GenAI semantic conventions) under the
/// caller's trace context, with token usage, error type and (when enabled) content recorded, and
/// feeds the LLM metrics. The runtime wraps every role's model with it, so providers need no
/// telemetry code of their own.
/// It also prices each call from `prices`, so every answer's usage carries its cost.
pub struct Traced {
    inner: SharedModel,
    content: ContentCapture,
    prices: Arc<PriceTable>,
}

impl Traced {
    /// Wraps `inner`; `content` says whether prompts and outputs go into the span; `prices`
    /// prices the calls.
    pub fn new(inner: SharedModel, content: ContentCapture, prices: Arc<PriceTable>) -> Self {
        Self { inner, content, prices }
    }
}

#[async_trait::async_trait]
impl SinkModel for Traced {
    fn model_id(&self) -> &str {
        self.inner.model_name()
    }

    fn provider_id(&self) -> &str {
        self.inner.provider()
    }

    fn on_run_finished(&self, run_id: &str) {
        self.inner.run_finished(run_id);
    }

    async fn call(
        &self,
        request: ChatRequest,
        sink: Option<&TextSink<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        self.traced_call(request, sink).await
    }
}

impl Traced {
    /// One call, streamed into `sink` when there is one, inside its `chat` span.
    async fn traced_call(
        &self,
        request: ChatRequest,
        sink: Option<&TextSink<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let model = self.inner.model_name();
        let role = request.context.role;
        let span = tracing::info_span!(
            "chat",
            otel.name = %format_args!("chat {model}"),
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "chat",
            gen_ai.system = self.inner.provider(),
            gen_ai.provider.name = self.inner.provider(),
            gen_ai.request.model = model,
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            stepwise.usage.cached_input_tokens = tracing::field::Empty,
            stepwise.usage.cost = tracing::field::Empty,
            stepwise.role = role.as_str(),
            stepwise.run.id = %request.context.run_id,
            stepwise.step.id = tracing::field::Empty,
            stepwise.step.attempt = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        // Before anything starts the span: see the module docs.
        request.context.trace.parent(&span);
        if let Some(step) = &request.context.step {
            span.record("stepwise.step.id", step.as_str());
            span.record("stepwise.step.attempt", request.context.attempt);
        }
        if self.content.is_on() {
            let input = serde_json::to_string(&request.messages).unwrap_or_default();
            self.content.record(&span, "gen_ai.input.messages", &input);
        }
        let started = Instant::now();
        let mut result = crate::llm::chat_maybe_streaming(self.inner.as_ref(), request, sink)
            .instrument(span.clone())
            .await;
        if let Ok(r) = &mut result {
            r.usage.cost = self.prices.cost(self.inner.provider(), model, &r.usage);
        }
        let usage = result.as_ref().ok().map(|r| r.usage);
        metrics::global().llm_call(role.as_str(), model, result.is_ok(), usage, started.elapsed());
        match &result {
            Ok(r) => {
                span.record("gen_ai.usage.input_tokens", r.usage.input_tokens);
                span.record("gen_ai.usage.output_tokens", r.usage.output_tokens);
                span.record("stepwise.usage.cached_input_tokens", r.usage.cached_input_tokens);
                // Absent when the model has no price: unknown, not zero.
                if let Some(cost) = r.usage.cost.amount() {
                    span.record("stepwise.usage.cost", cost);
                }
                if !r.model.is_empty() {
                    span.record("gen_ai.response.model", r.model.as_str());
                }
                if self.content.is_on() {
                    let output = serde_json::json!([{
                        "role": "assistant", "content": r.content, "tool_calls": r.tool_calls,
                    }]);
                    self.content.record(&span, "gen_ai.output.messages", &output.to_string());
                }
            }
            Err(e) => {
                // The error's type only: its message may quote a provider's response body.
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
        LlmError::Unavailable { .. } => "provider_unavailable",
        LlmError::InvalidResponse(_) => "invalid_response",
        LlmError::Structured { .. } => "invalid_structured_output",
        LlmError::Script(_) => "script",
        LlmError::Config(_) => "config",
    }
}

/// Wraps every role's model in [`Traced`], pricing their calls from `prices`.
pub fn traced(models: &Models, content: ContentCapture, prices: &Arc<PriceTable>) -> Models {
    models.map(|_, model| -> SharedModel { Arc::new(Traced::new(model.clone(), content, prices.clone())) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_capture_follows_the_config() {
        let mut cfg = TelemetryConfig::default();
        assert!(!ContentCapture::from_config(&cfg).is_on());
        cfg.record_content = true;
        cfg.max_content_bytes = 10;
        assert_eq!(ContentCapture::from_config(&cfg), ContentCapture::up_to(10));
    }
}
