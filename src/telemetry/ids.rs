//! A run's trace id is its run id: the 128 bits of the run's UUID. A trace UI link can then be
//! made from the run id alone (the web page's `[server] trace_url_template` with `{trace_id}`),
//! and a tracker that restarts after a crash or a process restart opens its new `stepwise.run`
//! span in the same trace, so a run stays one trace.
//!
//! The OpenTelemetry SDK asks its [`IdGenerator`] for the trace id of every root span, so
//! [`RunTraceIds`] answers with the id set by [`with_trace_id`] around the creation of the run's
//! span on that thread, and with a random id otherwise. `stepwise`'s own OTLP pipeline installs
//! it; an embedder with its own tracer provider adds it with
//! `SdkTracerProvider::builder().with_id_generator(RunTraceIds::default())` (without it, runs
//! get random trace ids and everything else works the same).

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use crate::run::RunId;

thread_local! {
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The id generator that gives a run's root span its run's trace id.
#[derive(Debug, Default)]
pub struct RunTraceIds(RandomIdGenerator);

impl IdGenerator for RunTraceIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID.take().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// The trace id of `run`'s spans: its UUID's bits (a random id for an id that is not a UUID).
pub fn trace_id_of(run: &RunId) -> TraceId {
    uuid::Uuid::parse_str(run.as_str())
        .map(|u| TraceId::from(u.as_u128()))
        .unwrap_or_else(|_| RandomIdGenerator::default().new_trace_id())
}

/// Runs `start` (which must create and start a root span on this thread) so that the span gets
/// `trace_id`, when the tracer provider uses [`RunTraceIds`].
pub(crate) fn with_trace_id<R>(trace_id: TraceId, start: impl FnOnce() -> R) -> R {
    NEXT_TRACE_ID.set(Some(trace_id));
    let out = start();
    // Unused (tracing off, or another id generator): it must not name the next root span.
    NEXT_TRACE_ID.set(None);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_trace_id_is_its_uuid_and_is_used_once() {
        let run = RunId::new();
        let id = trace_id_of(&run);
        assert_eq!(format!("{id}"), run.as_str().replace('-', ""));
        let ids = RunTraceIds::default();
        let first = with_trace_id(id, || ids.new_trace_id());
        assert_eq!(first, id);
        assert_ne!(ids.new_trace_id(), id, "the next root span gets a random id");
        with_trace_id(id, || ());
        assert_ne!(ids.new_trace_id(), id, "an unused id does not leak to a later span");
    }
}
