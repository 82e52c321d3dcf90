//! The supervisor: starts the services and the executor pool, spawns one tracker per run, and
//! restarts what dies.
//!
//! ractor has no restart strategies of its own, so this is where they live: a
//! crashed tracker is respawned from its run's stored events (at most [`MAX_TRACKER_RESTARTS`]
//! times per run, so a tracker that panics on the same event cannot loop forever); a crashed
//! service actor is respawned and its new reference published. Crashed executor workers are
//! replaced by the factory itself; the pool's size is its own business ([`super::pool`]).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::messages::{Input, SupervisorMsg, TrackerMsg};
use super::planner::Planner;
use super::pool::{ExecutorPool, PoolBounds};
use super::replanner::Replanner;
use super::synthesizer::Synthesizer;
use super::tracker::Tracker;
use super::{Services, Shared};
use crate::run::RunId;

/// How often one run's tracker may be respawned after crashing.
pub(crate) const MAX_TRACKER_RESTARTS: u32 = 3;

/// The supervisor actor.
pub(crate) struct Supervisor {
    pub(crate) shared: Arc<Shared>,
    /// Bounds of the executor pool it starts.
    pub(crate) executor_bounds: PoolBounds,
}

/// The supervisor's bookkeeping.
pub(crate) struct SupervisorState {
    trackers: HashMap<ActorId, RunId>,
    restarts: HashMap<RunId, u32>,
    services: Services,
}

impl Supervisor {
    async fn spawn_services(&self, me: &ActorRef<SupervisorMsg>) -> Result<Services, ActorProcessingErr> {
        let cell = me.get_cell();
        let (planner, _) =
            Actor::spawn_linked(None, Planner { shared: self.shared.clone() }, (), cell.clone()).await?;
        let (replanner, _) =
            Actor::spawn_linked(None, Replanner { shared: self.shared.clone() }, (), cell.clone()).await?;
        let (synthesizer, _) =
            Actor::spawn_linked(None, Synthesizer { shared: self.shared.clone() }, (), cell.clone()).await?;
        let executors = ExecutorPool::spawn(self.shared.clone(), self.executor_bounds, cell).await?;
        Ok(Services { planner, replanner, synthesizer, executors })
    }

    fn publish(&self, services: &Services) {
        *self.shared.services.write().unwrap_or_else(|p| p.into_inner()) = Some(services.clone());
    }

    async fn start_tracker(
        &self,
        me: &ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
        run: RunId,
    ) -> Result<ActorRef<TrackerMsg>, String> {
        self.shared.runs.channels(&run);
        let (tracker, _) =
            Actor::spawn_linked(None, Tracker { shared: self.shared.clone() }, run.clone(), me.get_cell())
                .await
                .map_err(|e| format!("could not start the tracker of run {run}: {e}"))?;
        st.trackers.insert(tracker.get_id(), run.clone());
        self.shared.runs.set_tracker(&run, tracker.clone());
        tracker
            .cast(TrackerMsg::Input(Input::Start))
            .map_err(|e| format!("run {run}: tracker did not take Start: {e}"))?;
        Ok(tracker)
    }

    /// Respawns a crashed service actor and publishes the new reference.
    async fn restart_service(
        &self,
        me: &ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
        cell: &ActorCell,
    ) -> Result<(), ActorProcessingErr> {
        let id = cell.get_id();
        let sh = || self.shared.clone();
        let c = me.get_cell();
        if id == st.services.planner.get_id() {
            st.services.planner = Actor::spawn_linked(None, Planner { shared: sh() }, (), c).await?.0;
        } else if id == st.services.replanner.get_id() {
            st.services.replanner = Actor::spawn_linked(None, Replanner { shared: sh() }, (), c).await?.0;
        } else if id == st.services.synthesizer.get_id() {
            st.services.synthesizer = Actor::spawn_linked(None, Synthesizer { shared: sh() }, (), c).await?.0;
        } else if id == st.services.executors.get_id() {
            return Err("the executor pool stopped".into());
        } else {
            return Ok(());
        }
        tracing::warn!(actor = ?id, "restarted a crashed service actor");
        self.publish(&st.services);
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let services = self.spawn_services(&me).await?;
        self.publish(&services);
        Ok(SupervisorState { trackers: HashMap::new(), restarts: HashMap::new(), services })
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartRun(run, reply) => {
                let r = self.start_tracker(&me, st, run).await;
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // The pool stops with its supervisor; its gauges must not keep reporting its workers.
        st.services.executors.stopped();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(run) = st.trackers.remove(&cell.get_id()) {
                    st.restarts.remove(&run);
                } else {
                    self.restart_service(&me, st, &cell).await?;
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(run) = st.trackers.remove(&cell.get_id()) {
                    let n = st.restarts.entry(run.clone()).or_insert(0);
                    *n += 1;
                    if *n > MAX_TRACKER_RESTARTS {
                        tracing::error!(run = %run, %error, "tracker keeps crashing; the run stays unfinished in the store");
                        st.restarts.remove(&run);
                        self.shared.runs.remove(&run);
                    } else {
                        tracing::warn!(run = %run, %error, "tracker crashed; resuming the run from its events");
                        if let Err(e) = self.start_tracker(&me, st, run.clone()).await {
                            tracing::error!(run = %run, error = %e, "could not restart the tracker");
                        }
                    }
                } else {
                    tracing::warn!(actor = ?cell.get_id(), %error, "a service actor crashed");
                    self.restart_service(&me, st, &cell).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
