//! The replanner: given the live plan (and the failure that prompted it), decides to continue,
//! revise the remaining steps, finish early, or abort.
//!
//! A `replan` decision is validated against the completed steps (new steps may depend on them
//! but not reuse their ids) and the tool registry, with one repair round-trip like the planner.

use std::sync::Arc;

use super::messages::{ReplanJob, ReplannerMsg, ServiceResult};
use super::{Shared, schema, service_failure, spawn_service, structured_usage, template_failure};
use crate::llm::{AgentRole, CallContext, ChatRequest, structured_call_spent};
use crate::plan::{StepStatus, strip_code_fence, validate_steps};
use crate::prompts::user::{FailureLine, PlanStepLine, ReplannerInput};
use crate::run::{Decision, ReplanDecision};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// The replanner actor.
pub(crate) struct Replanner {
    pub(crate) shared: Arc<Shared>,
}

impl Actor for Replanner {
    type Msg = ReplannerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<ReplannerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<ReplannerMsg>,
        msg: ReplannerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let ReplannerMsg::Replan(job, reply) = msg;
        let shared = self.shared.clone();
        // The replan span is the tracker's; chat spans are parented under it via the job's context.
        // A wait for an unavailable provider shows in the run's events.
        let watch =
            super::outage::TrackerWatch::service(&shared, &job.run_id, crate::llm::AgentRole::Replanner);
        spawn_service(&self.shared, watch.watch(async move { replan(&shared, job).await }), reply);
        Ok(())
    }
}

/// The plan as the replanner reads it: each step with its status and output.
fn replanner_input(job: &ReplanJob) -> ReplannerInput<'_> {
    let steps = job
        .plan
        .steps
        .iter()
        .map(|s| PlanStepLine {
            id: &s.id.0,
            status: format!("{:?}", s.status),
            description: &s.description,
            depends_on: s.depends_on.iter().map(|d| d.0.as_str()).collect(),
            output: (s.status == StepStatus::Completed).then(|| s.output.as_deref().unwrap_or("")),
            error: matches!(s.status, StepStatus::Failed | StepStatus::Skipped)
                .then(|| s.error.as_deref().unwrap_or("")),
        })
        .collect();
    let failed =
        job.failed.as_ref().map(|(step, error)| FailureLine { step: &step.0, error: error.to_string() });
    ReplannerInput { task: &job.task, goal: &job.plan.goal, revision: job.plan.revision, steps, failed }
}

async fn replan(shared: &Shared, job: ReplanJob) -> ServiceResult<ReplanDecision> {
    let model = shared.models.get(AgentRole::Replanner).clone();
    let text = shared.prompts.user().replanner(&replanner_input(&job)).map_err(template_failure)?;
    let context = CallContext::new(AgentRole::Replanner, job.run_id.0.clone(), job.trace.clone());
    let request = ChatRequest::builder(context)
        .system(shared.prompts.get(AgentRole::Replanner))
        .user(text)
        .structured("replan_decision", schema::<ReplanDecision>())
        .build();
    let completed = job.plan.completed_ids();
    let names = shared.tool_name_refs();
    let parsed = structured_call_spent(model.as_ref(), request, None, |text| {
        let d: ReplanDecision = serde_json::from_str(strip_code_fence(text)).map_err(|e| e.to_string())?;
        if d.decision == Decision::Replan {
            validate_steps(&d.steps, &completed, &names).map_err(|e| e.to_string())?;
        }
        Ok(d)
    })
    .await
    .map_err(|f| service_failure("replanning failed", f))?;
    let usage = structured_usage(&parsed);
    Ok((parsed.value, usage))
}
