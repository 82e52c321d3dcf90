//! The synthesizer: merges every step's result into the run's final answer (plain text).

use std::sync::Arc;

use super::messages::{ServiceFailure, ServiceResult, SynthesisJob, SynthesizerMsg};
use super::{Shared, spawn_service, template_failure};
use crate::llm::{AgentRole, CallContext, ChatRequest};
use crate::prompts::user::{StepResultLine, SynthesizerInput};
use crate::run::Usage;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// The synthesizer actor.
pub(crate) struct Synthesizer {
    pub(crate) shared: Arc<Shared>,
}

impl Actor for Synthesizer {
    type Msg = SynthesizerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<SynthesizerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<SynthesizerMsg>,
        msg: SynthesizerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let SynthesizerMsg::Synthesize(job, reply) = msg;
        let shared = self.shared.clone();
        // A wait for an unavailable provider shows in the run's events.
        let watch =
            super::outage::TrackerWatch::service(&shared, &job.run_id, crate::llm::AgentRole::Synthesizer);
        spawn_service(&self.shared, watch.watch(async move { synthesize(&shared, job).await }), reply);
        Ok(())
    }
}

async fn synthesize(shared: &Shared, job: SynthesisJob) -> ServiceResult<String> {
    let model = shared.models.get(AgentRole::Synthesizer).clone();
    let results = job
        .results
        .iter()
        .map(|r| StepResultLine { id: &r.id.0, description: &r.description, output: r.output.as_deref() })
        .collect();
    let input = SynthesizerInput { task: &job.task, goal: &job.goal, results };
    let text = shared.prompts.user().synthesizer(&input).map_err(template_failure)?;
    let context = CallContext::new(AgentRole::Synthesizer, job.run_id.0.clone(), job.trace.clone());
    let request =
        ChatRequest::builder(context).system(shared.prompts.get(AgentRole::Synthesizer)).user(text).build();
    let response = model
        .chat(request)
        .await
        .map_err(|e| ServiceFailure { error: format!("synthesis failed: {e}"), usage: Usage::default() })?;
    let mut usage = Usage::default();
    usage.add_call(response.usage);
    Ok((response.content, usage))
}
