//! What a run's events and service answers mean for its spans and metrics, in one place.

use std::collections::HashMap;

use super::{TrackerState, spans};
use crate::actors::messages::Service;
use crate::run::machine::Input;
use crate::run::{Decision, EventKind};
use crate::telemetry;

/// Closes a finished attempt's span and records its metrics; keeps what a replan links to.
pub(super) fn event(st: &mut TrackerState, kind: &EventKind) {
    let metrics = telemetry::metrics::global();
    match kind {
        EventKind::StepCompleted { step, .. } => {
            if let Some(a) = st.attempts.remove(step) {
                a.span.record("stepwise.step.status", "completed");
                metrics.step_ended("completed", Some(a.started.elapsed()));
            }
        }
        EventKind::StepFailed { step, error, .. } => {
            if let Some(a) = st.attempts.remove(step) {
                spans::failed(&a.span, "failed", error.kind.as_str());
                metrics.step_ended("failed", Some(a.started.elapsed()));
                st.failed_spans.insert(step.clone(), telemetry::span_context(&a.span));
            }
        }
        EventKind::StepSkipped { .. } => metrics.step_ended("skipped", None),
        EventKind::ToolApprovalRequested { step, calls, .. } => {
            let parent = st.attempts.get(step).map_or(&st.span, |a| &a.span);
            for c in calls {
                let span = spans::approval(parent, &c.approval_id, &c.tool, &c.call_id);
                st.approval_spans.insert(c.approval_id.clone(), span);
            }
        }
        EventKind::ToolApprovalResolved { approval_id, decision, .. } => {
            if let Some(span) = st.approval_spans.remove(approval_id) {
                span.record("stepwise.approval.outcome", decision.outcome());
            }
        }
        EventKind::PlanStreamed { .. } => {
            if let Some(span) = &st.service_span {
                span.record("stepwise.plan.streamed_steps", st.machine.run().plan.steps.len());
            }
        }
        EventKind::Replanned { caused_by, steps, .. } => {
            let cause = caused_by.as_ref().and_then(|s| st.failed_spans.get(s));
            st.replan_links = match cause {
                Some(cause) => steps.iter().map(|s| (s.id.clone(), cause.clone())).collect(),
                None => HashMap::new(),
            };
        }
        _ => {}
    }
}

/// Closes the span of a service's answer (when the run was waiting for it).
pub(super) fn answer(st: &mut TrackerState, input: &Input) {
    let (service, failed, error_type) = match input {
        Input::PlanReady(r) => (Service::Planner, r.is_err(), "planning_failed"),
        Input::PlanReused { .. } => (Service::Planner, false, ""),
        Input::ReplanReady(r) => (Service::Replanner, r.is_err(), "replanning_failed"),
        Input::SynthesisReady(r) => (Service::Synthesizer, r.is_err(), "synthesis_failed"),
        _ => return,
    };
    if st.machine.waiting_for() != Some(service) {
        return;
    }
    let Some(span) = st.service_span.take() else { return };
    if failed {
        spans::failed(&span, "failed", error_type);
    }
    match input {
        Input::PlanReady(Ok((plan, _))) => {
            span.record("stepwise.plan.steps", plan.steps.len());
            span.record("stepwise.plan.cached", false);
        }
        Input::PlanReused { plan, from } => {
            span.record("stepwise.plan.steps", plan.steps.len());
            span.record("stepwise.plan.cached", true);
            span.record("stepwise.plan.cached_from", from.as_str());
        }
        Input::ReplanReady(Ok((d, _))) => {
            let decided = decision_name(d.decision);
            span.record("stepwise.replan.decision", decided);
            telemetry::metrics::global().replanned(decided);
        }
        _ => {}
    }
}

fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Continue => "continue",
        Decision::Replan => "replan",
        Decision::Finish => "finish",
        Decision::Abort => "abort",
    }
}
