//! The planner: turns a task into a validated plan.
//!
//! The model's plan is parsed and validated (ids, dependencies, cycles, tools); an invalid plan
//! goes back to the model once with the error that names the step ("repair"), then fails the run.
//! With `stream_plan`, the answer streams in and each step is sent to the tracker as soon as its
//! text is complete, so it can start while the planner is still writing the rest.
//!
//! With the plan cache on (`[plan_cache]`), a run whose key (task, tools, planner model and
//! prompt: [`PlanCacheKey`]) matches a fresh entry gets that plan back without a model call.

use std::sync::Arc;

use super::messages::{Input, PlanJob, Planned, PlannerMsg, ServiceResult, TrackerMsg};
use super::{Shared, schema, service_failure, spawn_service, structured_usage, template_failure};
use crate::llm::{AgentRole, CallContext, ChatRequest, TextSink, structured_call_spent};
use crate::plan::{PlanSpec, StepStream};
use crate::prompts::user::{PlannerInput, ToolLine};
use crate::run::{RunId, Usage};
use crate::store::plan_cache::PlanCacheKey;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// The planner actor.
pub(crate) struct Planner {
    pub(crate) shared: Arc<Shared>,
}

impl Actor for Planner {
    type Msg = PlannerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<PlannerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<PlannerMsg>,
        msg: PlannerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let PlannerMsg::Plan(job, reply) = msg;
        let shared = self.shared.clone();
        // The `stepwise.plan` span is the tracker's; chat spans join it through the job's context.
        // A wait for an unavailable provider shows in the run's events.
        let watch =
            super::outage::TrackerWatch::service(&shared, &job.run_id, crate::llm::AgentRole::Planner);
        spawn_service(&self.shared, watch.watch(async move { plan(&shared, job).await }), reply);
        Ok(())
    }
}

async fn plan(shared: &Shared, job: PlanJob) -> ServiceResult<Planned> {
    if let Some((plan, from)) = cached_plan(shared, &job.run_id, &job.task).await {
        return Ok((Planned { plan, cached_from: Some(from) }, Usage::default()));
    }
    let (plan, usage) = write_plan(shared, job).await?;
    Ok((Planned { plan, cached_from: None }, usage))
}

/// The plan cache key of planning `task` for `run` now: its tools, the planner's model and prompt
/// (the system prompt and the user-message template: a change to either may change the plan).
pub(crate) fn cache_key(shared: &Shared, run: &RunId, task: &str) -> PlanCacheKey {
    let model = shared.models.get(AgentRole::Planner);
    let tools = shared.step_tool_specs(run);
    let prompt = format!(
        "{}\n{}",
        shared.prompts.get(AgentRole::Planner),
        shared.prompts.user().source(AgentRole::Planner)
    );
    PlanCacheKey::new(task, &tools, model.provider(), model.model_name(), &prompt)
}

/// A fresh cached plan for the task, still valid for today's tools, and the run it comes from.
/// The cache only saves time: when the store cannot answer, the planner is asked.
async fn cached_plan(shared: &Shared, run: &RunId, task: &str) -> Option<(PlanSpec, RunId)> {
    let bounds = shared.plan_cache?;
    let cache = shared.store.plan_cache()?;
    let key = cache_key(shared, run, task);
    let metrics = crate::telemetry::metrics::global();
    let entry = match cache.get(&key.key).await {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            metrics.plan_cache_lookup("miss");
            return None;
        }
        Err(e) => {
            metrics.plan_cache_lookup("error");
            tracing::warn!(run = %run, error = %e, "plan cache lookup failed: planning without it");
            return None;
        }
    };
    // The key covers the tools' schemas, so validation only fails for an entry written by a bug.
    if !bounds.is_fresh(entry.created_at, chrono::Utc::now())
        || entry.plan.validate(&shared.tool_name_refs()).is_err()
    {
        metrics.plan_cache_lookup("expired");
        return None;
    }
    metrics.plan_cache_lookup("hit");
    Some((entry.plan, entry.source_run))
}

/// Asks the planner model for a plan (repaired once if invalid).
async fn write_plan(shared: &Shared, job: PlanJob) -> ServiceResult<PlanSpec> {
    let model = shared.models.get(AgentRole::Planner).clone();
    let specs = shared.step_tool_specs(&job.run_id);
    let tools = specs.iter().map(|t| ToolLine { name: &t.name, description: &t.description }).collect();
    let text =
        shared.prompts.user().planner(&PlannerInput { task: &job.task, tools }).map_err(template_failure)?;
    let context = CallContext::new(AgentRole::Planner, job.run_id.0.clone(), job.trace.clone());
    let request = ChatRequest::builder(context)
        .system(shared.prompts.get(AgentRole::Planner))
        .user(text)
        .structured("plan", schema::<PlanSpec>())
        .build();
    let names = shared.tool_name_refs();
    // The tracker decides which streamed steps may start; this only finds where each one ends.
    let steps = std::sync::Mutex::new(StepStream::new());
    let stream_to = |piece: &str| {
        let found = steps.lock().unwrap_or_else(|p| p.into_inner()).push(piece);
        if let (false, Some(tracker)) = (found.is_empty(), &job.stream_to) {
            // A stopped tracker no longer wants the steps; the whole plan is in the reply.
            let _ = tracker.cast(TrackerMsg::Input(Input::PlanStreamed(found)));
        }
    };
    let sink: Option<&TextSink<'_>> = if job.stream_to.is_some() { Some(&stream_to) } else { None };
    let parsed = structured_call_spent(model.as_ref(), request, sink, |text| {
        let plan = PlanSpec::parse(text).map_err(|e| e.to_string())?;
        plan.validate(&names).map_err(|e| e.to_string())?;
        Ok(plan)
    })
    .await
    .map_err(|f| service_failure("planning failed", f))?;
    let usage = structured_usage(&parsed);
    Ok((parsed.value, usage))
}
