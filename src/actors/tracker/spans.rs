//! The spans a run opens (names and attributes are a contract: dashboards rely on them; see
//! `docs/telemetry.md`).

use opentelemetry::trace::SpanContext;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::run::RunState;
use crate::run::machine::{ServiceRequest, StepAssignment};
use crate::telemetry;

/// `gen_ai.agent.name` of every run's span.
pub(crate) const AGENT_NAME: &str = "stepwise";

/// The run's root span: every run is its own trace, whatever span is current where the
/// tracker starts.
///
/// Its trace id is the run's id (see `telemetry::RunTraceIds`), so the span is started here,
/// where that id is set, and a restarted tracker's span joins the same trace.
pub(super) fn run(run: &RunState) -> tracing::Span {
    telemetry::with_trace_id(telemetry::trace_id_of(&run.id), || {
        let span = tracing::info_span!(
            parent: None,
            "stepwise.run",
            stepwise.run.id = %run.id,
            stepwise.task = %run.task,
            stepwise.run.status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = AGENT_NAME,
            gen_ai.conversation.id = %run.id,
        );
        let _started = span.context();
        span
    })
}

/// The span of a service request; a replan after a failure links to the failed attempt.
pub(super) fn service(
    parent: &tracing::Span,
    request: &ServiceRequest,
    revision: u32,
    cause: Option<&SpanContext>,
) -> tracing::Span {
    let span = match request {
        ServiceRequest::Plan { .. } => tracing::info_span!(
            parent: parent,
            "stepwise.plan",
            stepwise.plan.revision = 1u32,
            stepwise.plan.steps = tracing::field::Empty,
            stepwise.plan.streamed_steps = tracing::field::Empty,
            stepwise.plan.cached = tracing::field::Empty,
            stepwise.plan.cached_from = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        ),
        ServiceRequest::Replan { failed } => {
            let reason = failed
                .as_ref()
                .map_or_else(|| "after_each_step".to_owned(), |(s, e)| format!("step {s} failed: {e}"));
            tracing::info_span!(
                parent: parent,
                "stepwise.replan",
                stepwise.plan.revision = revision + 1,
                reason = %reason,
                stepwise.replan.decision = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            )
        }
        ServiceRequest::Synthesize => tracing::info_span!(
            parent: parent,
            "stepwise.synthesize",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        ),
    };
    // Before `TraceContext::of` starts the span, so the link is part of its creation.
    if let Some(cause) = cause {
        span.add_link(cause.clone());
    }
    span
}

/// A step attempt's span; a step of a revision made after a failure links to that failure.
pub(super) fn step(
    parent: &tracing::Span,
    run: &RunState,
    a: &StepAssignment,
    cause: Option<&SpanContext>,
) -> tracing::Span {
    let id = &a.step.id;
    let span = tracing::info_span!(
        parent: parent,
        "stepwise.step",
        otel.name = %format_args!("stepwise.step {id}"),
        otel.status_code = tracing::field::Empty,
        stepwise.run.id = %run.id,
        stepwise.step.id = %id,
        stepwise.step.attempt = a.attempt,
        stepwise.plan.revision = a.revision,
        stepwise.step.status = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if let Some(cause) = cause {
        span.add_link(cause.clone());
    }
    span
}

/// The wait of a tool call for its approval, under the step's span (the run's after a restart);
/// it ends with the answer.
pub(super) fn approval(
    parent: &tracing::Span,
    approval_id: &str,
    tool: &str,
    call_id: &str,
) -> tracing::Span {
    tracing::info_span!(
        parent: parent,
        "stepwise.approval",
        otel.name = %format_args!("stepwise.approval {tool}"),
        stepwise.approval.id = %approval_id,
        gen_ai.tool.name = %tool,
        gen_ai.tool.call.id = %call_id,
        stepwise.approval.outcome = tracing::field::Empty,
    )
}

/// Marks a span as failed with `error_type` (`stepwise.step.status` too when it is a step's).
pub(super) fn failed(span: &tracing::Span, status: &str, error_type: &str) {
    span.record("stepwise.step.status", status);
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}
