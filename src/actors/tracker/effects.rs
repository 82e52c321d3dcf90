//! The tracker's effects: what each [`Command`] of the machine means in this process.
//!
//! Every send reads the service's current reference from the runtime (the supervisor replaces a
//! crashed service actor and publishes the new one), and every request's reply port is watched:
//! an answer comes back as the matching message, a request dropped unanswered (a dead actor, a
//! failed send) as a loss the machine acts on. Nothing is sent and forgotten.

use std::time::Instant;

use ractor::ActorRef;

use super::{Attempt, Tracker, TrackerState, spans};
use crate::actors::messages::{
    EventSink, ExecutorMsg, PlanJob, Planned, PlannerMsg, ReplanJob, ReplannerMsg, StepInput, StepJob,
    StepReport, SynthesisJob, SynthesizerMsg, TrackerMsg,
};
use crate::actors::reply;
use crate::run::machine::{Command, Input, ServiceRequest, StepAssignment, Transition};
use crate::run::{StepError, StepErrorKind, Usage};
use crate::telemetry::{self, TraceContext};

impl Tracker {
    /// Carries out a transition's commands, in order.
    pub(super) fn carry_out(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState, t: Transition) {
        for command in t.commands {
            match command {
                Command::StartStep(a) => self.start_step(me, st, a),
                Command::StopStep { step, attempt } => {
                    if st.attempts.get(&step).is_some_and(|a| a.attempt == attempt) {
                        if let Some(a) = st.attempts.remove(&step) {
                            stop(a);
                        }
                        if let Some(r) = self.shared.replication() {
                            r.withdraw(&st.machine.run().id, Some(step));
                        }
                    }
                }
                Command::Ask(request) => self.ask(me, st, request),
                Command::Schedule { timer, after } => {
                    me.send_after(after, move || TrackerMsg::Input(Input::Timeout(timer)));
                }
                Command::Finish => self.finish(me, st),
            }
        }
    }

    /// Starts a step attempt on the executor pool, or queues it for every replica's executors.
    fn start_step(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState, a: StepAssignment) {
        let run = st.machine.run();
        // A resumed attempt carries on under the span (and clock) it paused in, when this
        // tracker started it; after a restart it gets a new one.
        let paused = st.attempts.get(&a.step.id).filter(|p| a.resume.is_some() && p.attempt == a.attempt);
        let (span, started) = match paused {
            Some(p) => (p.span.clone(), p.started),
            None => (spans::step(&st.span, run, &a, st.replan_links.get(&a.step.id)), Instant::now()),
        };
        let cancel = st.cancel.child_token();
        let (step, attempt) = (a.step.id.clone(), a.attempt);
        let key = format!("{}/{step}/{attempt}", run.id);
        let job = StepJob {
            run_id: run.id.clone(),
            task: run.task.clone(),
            goal: run.plan.goal.clone(),
            step: a.step,
            attempt,
            inputs: a.inputs,
            budget: a.budget,
            run_spend: a.run_spend,
            verify: a.verify,
            approve_tools: a.approve_tools,
            approve_destructive: a.approve_destructive,
            resume: a.resume,
            trace: TraceContext::of(&span),
            cancel: cancel.clone(),
            events: EventSink::Tracker(me.clone()),
        };
        st.attempts.insert(step.clone(), Attempt { attempt, span, started, cancel });
        if let Some(replicas) = self.shared.replication() {
            // Any replica's executors may run it; the report comes back through the database.
            replicas.enqueue(job);
            return;
        }
        let lost = move || {
            let error =
                StepError::new(StepErrorKind::ExecutorCrashed, "the executor stopped before reporting");
            StepReport { step, attempt, outcome: Err(error), usage: Usage::default() }
        };
        let (tx, rx) = ractor::concurrency::oneshot();
        let sent = self
            .shared
            .services()
            .map(|s| s.executors.dispatch(key, ExecutorMsg::Run(Box::new(job), tx.into())));
        if !matches!(sent, Some(Ok(()))) {
            let _ = me.cast(TrackerMsg::Input(Input::StepFinished(lost())));
            return;
        }
        // A dropped reply port means the worker died mid-step: that is the attempt's report.
        let finished = |report| TrackerMsg::Input(Input::StepFinished(report));
        reply::forward(me, rx, finished, move || finished(lost()));
    }

    /// Sends a request to the service's current actor (a re-sent request keeps its span). A
    /// request that cannot be sent is lost at once; the machine decides when to send it again.
    fn ask(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState, request: ServiceRequest) {
        let run = st.machine.run();
        let service = request.service();
        let cause = match &request {
            ServiceRequest::Replan { failed: Some((step, _)) } => st.failed_spans.get(step),
            _ => None,
        };
        let span = (st.service_span)
            .get_or_insert_with(|| spans::service(&st.span, &request, run.plan.revision, cause));
        let trace = TraceContext::of(span);
        let (run_id, task) = (run.id.clone(), run.task.clone());
        let lost = move || TrackerMsg::Input(Input::ServiceLost(service));
        let sent = self.shared.services().is_some_and(|s| match request {
            ServiceRequest::Plan { stream } => {
                let job = PlanJob { run_id, task, trace, stream_to: stream.then(|| me.clone()) };
                let deliver = |r| TrackerMsg::Input(Planned::input(r));
                reply::request(me, &s.planner, |r| PlannerMsg::Plan(job, r), deliver, lost)
            }
            ServiceRequest::Replan { failed } => {
                let job = ReplanJob { run_id, task, plan: run.plan.clone(), failed, trace };
                let deliver = |r| TrackerMsg::Input(Input::ReplanReady(r));
                reply::request(me, &s.replanner, |r| ReplannerMsg::Replan(job, r), deliver, lost)
            }
            ServiceRequest::Synthesize => {
                let results = run.plan.steps.iter().map(StepInput::of).collect();
                let job = SynthesisJob { run_id, task, goal: run.plan.goal.clone(), results, trace };
                let deliver = |r| TrackerMsg::Input(Input::SynthesisReady(r));
                reply::request(me, &s.synthesizer, |r| SynthesizerMsg::Synthesize(job, r), deliver, lost)
            }
        });
        if !sent {
            tracing::warn!(run = %run.id, service = service.as_str(), "service not running: its request is lost");
            let _ = me.cast(lost());
        }
    }

    /// Stops in-flight work, closes the spans, publishes the result and stops the actor.
    fn finish(&self, me: &ActorRef<TrackerMsg>, st: &mut TrackerState) {
        st.cancel.cancel();
        for (_, span) in st.approval_spans.drain() {
            span.record("stepwise.approval.outcome", "abandoned");
        }
        for (_, a) in st.attempts.drain() {
            stop(a);
        }
        st.service_span = None;
        let run = st.machine.run();
        if let Some(r) = self.shared.replication() {
            r.withdraw(&run.id, None);
            r.finished(&run.id);
        }
        st.span.record("stepwise.run.status", run.status.as_str());
        if run.status == crate::run::RunStatus::Failed {
            st.span.record("otel.status_code", "ERROR");
        }
        telemetry::metrics::global().run_ended(run.status.as_str());
        for role in crate::llm::AgentRole::ALL {
            self.shared.models.get(role).run_finished(run.id.as_str());
        }
        // Leave the live table first: whoever sees the result must not still find the run live.
        self.shared.runs.remove(&run.id);
        st.channels.result.send_replace(Some(run.result()));
        me.stop(None);
    }
}

/// Stops everything of a run whose lease another replica took over, without touching what is
/// now that replica's: no event, no result, and the run leaves this process's live table.
pub(super) fn fenced(me: &ActorRef<TrackerMsg>, st: &mut TrackerState, shared: &crate::actors::Shared) {
    st.cancel.cancel();
    for (_, a) in st.attempts.drain() {
        stop(a);
    }
    st.service_span = None;
    st.span.record("stepwise.run.status", "taken_over");
    shared.runs.remove_tracker(&st.machine.run().id, me);
    me.stop(Some("lease taken over by another replica".into()));
}

/// Cancels an attempt that will not report (the run ended, or the plan dropped its step).
fn stop(a: Attempt) {
    a.cancel.cancel();
    a.span.record("stepwise.step.status", "cancelled");
    telemetry::metrics::global().step_ended("cancelled", Some(a.started.elapsed()));
}
