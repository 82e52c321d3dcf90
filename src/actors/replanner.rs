//! The replanner: given the live plan (and the failure that prompted it), decides to continue,
//! revise the remaining steps, finish early, or abort.
//!
//! A `replan` decision is validated against the completed steps (new steps may depend on them
//! but not reuse their ids) and the tool registry, with one repair round-trip like the planner.

use std::sync::Arc;

use super::messages::{ReplanJob, ReplannerMsg, ServiceResult};
use super::{Shared, schema, service_failure, spawn_service, structured_usage};
use crate::llm::{AgentRole, CallContext, ChatRequest, Message, StructuredOutput, structured_call_spent};
use crate::plan::{StepStatus, strip_code_fence, validate_steps};
use crate::run::{Decision, ReplanDecision};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// The replanner actor.
pub struct Replanner {
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
fn describe_plan(job: &ReplanJob) -> String {
    let mut text = format!(
        "Task: {}\nPlan goal: {}\n\nCurrent plan (revision {}):\n",
        job.task, job.plan.goal, job.plan.revision
    );
    for s in &job.plan.steps {
        let deps = s.depends_on.iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(", ");
        text.push_str(&format!(
            "- {} [{:?}] {} (depends on: {})\n",
            s.id,
            s.status,
            s.description,
            if deps.is_empty() { "-" } else { &deps }
        ));
        match s.status {
            StepStatus::Completed => {
                text.push_str(&format!("  output: {}\n", s.output.as_deref().unwrap_or("")))
            }
            StepStatus::Failed | StepStatus::Skipped => {
                text.push_str(&format!("  error: {}\n", s.error.as_deref().unwrap_or("")))
            }
            _ => {}
        }
    }
    match &job.failed {
        Some((step, error)) => text.push_str(&format!("\nStep {step} failed: {error}\nDecide how to go on.")),
        None => text.push_str("\nA step just completed. Decide whether the remaining plan still fits."),
    }
    text
}

async fn replan(shared: &Shared, job: ReplanJob) -> ServiceResult<ReplanDecision> {
    let model = shared.models.get(AgentRole::Replanner).clone();
    let request = ChatRequest {
        context: CallContext {
            run_id: job.run_id.0.clone(),
            role: AgentRole::Replanner,
            step: None,
            attempt: 0,
            trace: job.trace.clone(),
        },
        messages: vec![
            Message::system(shared.prompts.get(AgentRole::Replanner)),
            Message::user(describe_plan(&job)),
        ],
        tools: vec![],
        structured: Some(StructuredOutput {
            name: "replan_decision".into(),
            schema: schema::<ReplanDecision>(),
        }),
        max_tokens: None,
    };
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
