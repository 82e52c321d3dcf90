//! The synthesizer: merges every step's result into the run's final answer (plain text).

use std::sync::Arc;

use super::messages::{ServiceFailure, ServiceResult, SynthesisJob, SynthesizerMsg};
use super::{Shared, spawn_service};
use crate::llm::{AgentRole, CallContext, ChatRequest, Message};
use crate::run::Usage;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// The synthesizer actor.
pub struct Synthesizer {
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
    let mut text = format!("Task: {}\nPlan goal: {}\n\nStep results:\n", job.task, job.goal);
    for r in &job.results {
        match &r.output {
            Some(out) => text.push_str(&format!("## {} — {}\n{}\n\n", r.id, r.description, out)),
            None => text.push_str(&format!("## {} — {}\n(skipped)\n\n", r.id, r.description)),
        }
    }
    let request = ChatRequest {
        context: CallContext {
            run_id: job.run_id.0.clone(),
            role: AgentRole::Synthesizer,
            step: None,
            attempt: 0,
            trace: job.trace.clone(),
        },
        messages: vec![Message::system(shared.prompts.synthesizer.clone()), Message::user(text)],
        tools: vec![],
        structured: None,
        max_tokens: None,
    };
    let response = model
        .chat(request)
        .await
        .map_err(|e| ServiceFailure { error: format!("synthesis failed: {e}"), usage: Usage::default() })?;
    let mut usage = Usage::default();
    usage.add_call(response.usage);
    Ok((response.content, usage))
}
