//! [`TraceContext`]: a span's context as it travels in a job message to where the work runs.
//!
//! A module of its own, depending on OpenTelemetry only, so that the model layer (whose calls
//! carry one) need not depend on the telemetry that wraps the models.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span context a job message carries to where its work runs; empty when tracing is off.
///
/// In memory it is the OTel [`SpanContext`] itself: a step crosses two of these hops, and going
/// through W3C text (format, hash map, parse) each time was a fifth of what export costs per
/// step. On the wire (serde: a message to another node, a recording) it is the W3C carrier,
/// `{"traceparent": "00-…", "tracestate": "…"}`, so any other tracer can read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceContext(Option<SpanContext>);

impl TraceContext {
    /// The context of `span`, ready to travel in a message. Starts the OTel span if it was not.
    pub fn of(span: &tracing::Span) -> Self {
        Self::in_context(&span.context())
    }

    fn in_context(cx: &opentelemetry::Context) -> Self {
        let span = cx.span();
        let sc = span.span_context();
        TraceContext(sc.is_valid().then(|| sc.clone()))
    }

    /// Makes `span` a child of this context (no-op when it is empty). Call it right after
    /// creating the span: once the span has started (entered, or asked for its context) its parent
    /// is fixed.
    pub fn parent(&self, span: &tracing::Span) {
        let Some(sc) = &self.0 else { return };
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        if let Err(e) = span.set_parent(cx) {
            // Disabled spans (tracing off or filtered) have nothing to parent; anything else is a
            // bug in the caller's ordering, which the trace tree tests would show.
            if !matches!(e, tracing_opentelemetry::SetParentError::SpanDisabled) {
                tracing::debug!(error = %e, "could not parent a span on its trace context");
            }
        }
    }

    /// True when there is no context to carry (tracing off).
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The W3C carrier: `traceparent` and, when there is one, `tracestate`.
    pub fn to_w3c(&self) -> HashMap<String, String> {
        let mut carrier = HashMap::new();
        if let Some(sc) = &self.0 {
            let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
            TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        }
        carrier
    }

    /// The context a W3C carrier names (empty when it names none, or not validly).
    pub fn from_w3c(carrier: &HashMap<String, String>) -> Self {
        Self::in_context(&TraceContextPropagator::new().extract(carrier))
    }

    /// The `traceparent` value, if any.
    pub fn traceparent(&self) -> Option<String> {
        self.to_w3c().remove("traceparent")
    }
}

// `SpanContext`'s equality is structural, hence reflexive.
impl Eq for TraceContext {}

impl Serialize for TraceContext {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_w3c().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TraceContext {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        HashMap::<String, String>::deserialize(deserializer).map(|carrier| TraceContext::from_w3c(&carrier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_travels_as_w3c_text() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "v1")]).unwrap(),
        );
        let tc = TraceContext(Some(sc));
        let json = serde_json::to_value(&tc).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                               "tracestate": "vendor=v1"})
        );
        let back: TraceContext = serde_json::from_value(json).unwrap();
        assert_eq!(back.traceparent(), tc.traceparent());
        assert!(!back.is_empty());
        let empty: TraceContext = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(empty.is_empty());
        let bad: TraceContext =
            serde_json::from_value(serde_json::json!({"traceparent": "nonsense"})).unwrap();
        assert!(bad.is_empty());
        assert_eq!(serde_json::to_value(TraceContext::default()).unwrap(), serde_json::json!({}));
    }
}
