//! The tracker: one actor per run, the run's single writer, and a thin driver of the run's
//! state machine ([`RunMachine`]).
//!
//! Each message becomes an [`Input`]; the machine answers with events and commands. The
//! tracker stores the events (one batch per input), publishes them, opens and closes the spans
//! and records the metrics they imply, then carries out the commands (`effects`). Every
//! decision is committed before it is acted on, so a tracker started on a stored run (after a
//! crash, or a panic of its own) carries on from exactly where the log ends.

mod effects;
mod observe;
mod plan_cache;
mod spans;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use opentelemetry::trace::SpanContext;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::messages::{ControlError, Refusal, TrackerMsg};
use super::{RunChannels, Shared};
use crate::plan::StepId;
use crate::run::machine::{Input, MachineError, RunMachine};
use crate::run::{RunEvent, RunId, RunState, ToolDecision};
use crate::store::StoreError;
use crate::tools::check::check_arguments;

/// The tracker actor (stateless; its state is [`TrackerState`]).
pub(crate) struct Tracker {
    pub(crate) shared: Arc<Shared>,
}

/// A step attempt in flight, as the driver sees it.
struct Attempt {
    attempt: u32,
    span: tracing::Span,
    started: Instant,
    /// Stops this attempt alone (a child of the run's token).
    cancel: CancellationToken,
}

/// The tracker's state: the machine, and the handles that only a live driver has.
pub(crate) struct TrackerState {
    machine: RunMachine,
    channels: RunChannels,
    cancel: CancellationToken,
    /// Cancels `cancel` when the state is dropped: ractor skips `post_stop` when a handler
    /// panics, and the attempts of a crashed tracker must not run on beside its successor's.
    _stop_on_drop: DropGuard,
    span: tracing::Span,
    attempts: HashMap<StepId, Attempt>,
    /// The span of the outstanding service request.
    service_span: Option<tracing::Span>,
    /// The span of each step's latest failed attempt, for links from what a replan makes of it.
    failed_spans: HashMap<StepId, SpanContext>,
    /// Steps of the latest revision and the failed attempt that caused it: their spans link to it.
    replan_links: HashMap<StepId, SpanContext>,
    /// The wait of each tool call pending approval, by approval id.
    approval_spans: HashMap<String, tracing::Span>,
}

/// How long to wait before trying the store again after `failures` failures in a row: 100 ms,
/// doubling up to 2 s.
fn store_backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis(100u64.saturating_mul(1 << failures.min(5).saturating_sub(1)).min(2000))
}

/// A failure that stops the tracker; the supervisor restarts it from the stored log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrackerError {
    /// The store refused or failed the append.
    #[error("run {run}: could not store event: {source}")]
    Store { run: RunId, source: Arc<StoreError> },
    /// The machine could not make the transition (a bug, or a corrupt log).
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The stored log did not fold into a state.
    #[error(transparent)]
    State(#[from] crate::run::StateError),
    /// The run is not in the store.
    #[error("run {0} is not in the store")]
    Missing(RunId),
}

impl Actor for Tracker {
    type Msg = TrackerMsg;
    type State = TrackerState;
    type Arguments = RunId;

    async fn pre_start(
        &self,
        _me: ActorRef<TrackerMsg>,
        run_id: RunId,
    ) -> Result<TrackerState, ActorProcessingErr> {
        let events = self.shared.store.events(&run_id, 0).await?;
        let run = RunState::from_events(&events)?.ok_or_else(|| TrackerError::Missing(run_id.clone()))?;
        let cancel = CancellationToken::new();
        let span = spans::run(&run);
        // Waits that began before a restart go on under the new driver's run span.
        let approval_spans = (run.pending_approvals().into_iter())
            .map(|p| (p.approval_id.clone(), spans::approval(&span, &p.approval_id, &p.tool, &p.call_id)))
            .collect();
        Ok(TrackerState {
            channels: self.shared.runs.channels(&run_id),
            span,
            machine: RunMachine::new(run, self.shared.tool_names.clone()),
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
            attempts: HashMap::new(),
            service_span: None,
            failed_spans: HashMap::new(),
            replan_links: HashMap::new(),
            approval_spans,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<TrackerMsg>,
        msg: TrackerMsg,
        st: &mut TrackerState,
    ) -> Result<(), ActorProcessingErr> {
        let input = match msg {
            TrackerMsg::Input(input) => input,
            TrackerMsg::Approve(edited, reply) => {
                return self.control(&me, st, Input::Approve(edited), reply).await;
            }
            TrackerMsg::Reject(reason, reply) => {
                return self.control(&me, st, Input::Reject(reason), reply).await;
            }
            TrackerMsg::Cancel(reason, reply) => {
                return self.control(&me, st, Input::Cancel(reason), reply).await;
            }
            TrackerMsg::ResolveToolCall(approval_id, decision, reply) => {
                if let Err(refusal) = self.check_edit(st, &approval_id, &decision) {
                    let _ = reply.send(Err(refusal.into()));
                    return Ok(());
                }
                let input = Input::ResolveToolCall { approval_id, decision };
                return self.control(&me, st, input, reply).await;
            }
            TrackerMsg::Snapshot(reply) => {
                let _ = reply.send(st.machine.run().result());
                return Ok(());
            }
        };
        observe::answer(st, &input);
        let transition = st.machine.handle(input, Utc::now()).map_err(TrackerError::from)?;
        match self.commit(st, &transition.events).await {
            Err(TrackerError::Store { source, .. }) if matches!(*source, StoreError::Fenced { .. }) => {
                effects::fenced(&me, st, &self.shared);
                Ok(())
            }
            Err(e) => Err(e.into()),
            Ok(()) => {
                settle_spending(&self.shared, st);
                self.settle_plan_cache(st, &transition.events).await;
                self.carry_out(&me, st, transition);
                Ok(())
            }
        }
    }

    async fn post_stop(
        &self,
        _me: ActorRef<TrackerMsg>,
        st: &mut TrackerState,
    ) -> Result<(), ActorProcessingErr> {
        // Whatever stopped the tracker, no step of this run may keep running unobserved.
        st.cancel.cancel();
        self.shared.spending.forget(&st.machine.run().id);
        Ok(())
    }
}

impl Tracker {
    /// Approve, reject, cancel or answer a tool call: a refusal is the reply; a store failure is the reply too, and
    /// then stops the tracker, whose state is ahead of the store.
    async fn control(
        &self,
        me: &ActorRef<TrackerMsg>,
        st: &mut TrackerState,
        input: Input,
        reply: RpcReplyPort<Result<(), ControlError>>,
    ) -> Result<(), ActorProcessingErr> {
        let transition = match st.machine.handle(input, Utc::now()) {
            Ok(t) => t,
            Err(MachineError::Refused(refusal)) => {
                let _ = reply.send(Err(refusal.into()));
                return Ok(());
            }
            Err(e) => return Err(TrackerError::from(e).into()),
        };
        if let Err(e) = self.commit(st, &transition.events).await {
            if let TrackerError::Store { source, .. } = &e {
                let _ = reply.send(Err(ControlError::Store(source.clone())));
                if matches!(**source, StoreError::Fenced { .. }) {
                    effects::fenced(me, st, &self.shared);
                    return Ok(());
                }
            }
            return Err(e.into());
        }
        self.settle_plan_cache(st, &transition.events).await;
        self.carry_out(me, st, transition);
        let _ = reply.send(Ok(()));
        Ok(())
    }

    /// Refuses edited arguments that do not match the tool's schema, naming the field: nothing
    /// is recorded and nothing runs. Unknown or answered approvals are the machine's to refuse.
    fn check_edit(
        &self,
        st: &TrackerState,
        approval_id: &str,
        decision: &ToolDecision,
    ) -> Result<(), Refusal> {
        let ToolDecision::Edit { arguments } = decision else { return Ok(()) };
        let Some((_, paused)) = st.machine.run().paused_step_of(approval_id) else { return Ok(()) };
        let Some(call) = paused.calls.iter().find(|c| c.approval_id == approval_id) else { return Ok(()) };
        let invalid = |field: String, message: String| Refusal::InvalidArguments {
            tool: call.tool.clone(),
            field,
            message,
        };
        let tool = self.shared.tools.lookup(&call.tool).map_err(|e| invalid("/".into(), e.to_string()))?;
        check_arguments(&tool.parameters(), arguments).map_err(|e| invalid(e.field, e.message))
    }

    /// Stores a transition's events (one batch), then publishes them and records what they
    /// mean for spans and metrics. While the store is unreachable the run waits here, trying
    /// again with backoff: an outage pauses runs, it does not fail them.
    async fn commit(&self, st: &mut TrackerState, events: &[RunEvent]) -> Result<(), TrackerError> {
        if events.is_empty() {
            return Ok(());
        }
        let run = &st.machine.run().id;
        let mut failures = 0_u32;
        loop {
            let stored = match events {
                [one] => self.shared.store.append(one).await,
                many => self.shared.store.append_batch(many).await,
            };
            match stored {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(run = %run, error = %e, "run store unreachable: the run waits for it");
                    }
                    tokio::time::sleep(store_backoff(failures)).await;
                }
                Err(e) => return Err(TrackerError::Store { run: run.clone(), source: Arc::new(e) }),
            }
        }
        if failures > 0 {
            tracing::info!(run = %run, attempts = failures + 1, "run store back: the run goes on");
        }
        for event in events {
            observe::event(st, &event.kind);
            st.channels.publish(event.clone());
        }
        Ok(())
    }
}

/// Tells the money checks what the run's state now counts and which attempts still run.
fn settle_spending(shared: &Shared, st: &TrackerState) {
    let run = st.machine.run();
    let running: Vec<(StepId, u32)> = st.attempts.iter().map(|(s, a)| (s.clone(), a.attempt)).collect();
    shared.spending.settle(&run.id, run.usage.cost, &running, run.status.is_terminal());
}
