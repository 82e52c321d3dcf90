//! The planner: turns a task into a validated plan (DESIGN §2).
//!
//! The model's plan is parsed and validated (ids, dependencies, cycles, tools); an invalid plan
//! goes back to the model once with the error that names the step ("repair"), then fails the run.
//! With `stream_plan`, the answer streams in and each step is sent to the tracker as soon as its
//! text is complete, so it can start while the planner is still writing the rest.

use std::sync::Arc;

use super::messages::{PlanJob, PlannerMsg, ServiceFailure, ServiceResult, TrackerMsg};
use super::{Shared, schema, spawn_service, structured_usage};
use crate::llm::{
    AgentRole, CallContext, ChatRequest, Message, StructuredOutput, TextSink, structured_call_streaming,
};
use crate::plan::{PlanSpec, StepStream};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// The planner actor.
pub struct Planner {
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
        let PlannerMsg::Plan(job, tracker) = msg;
        let shared = self.shared.clone();
        let to = tracker.clone();
        // The `stepwise.plan` span is the tracker's; chat spans join it through the job's context.
        spawn_service(
            &self.shared,
            tracing::Span::none(),
            async move { plan(&shared, job, &to).await },
            tracker,
            TrackerMsg::PlanReady,
        );
        Ok(())
    }
}

async fn plan(shared: &Shared, job: PlanJob, tracker: &ActorRef<TrackerMsg>) -> ServiceResult<PlanSpec> {
    let model = shared.models.get(AgentRole::Planner).clone();
    let tools: Vec<String> =
        shared.tool_specs.iter().map(|t| format!("- {}: {}", t.name, t.description)).collect();
    let tools_text = if tools.is_empty() { "(no tools)".to_owned() } else { tools.join("\n") };
    let request = ChatRequest {
        context: CallContext {
            run_id: job.run_id.0.clone(),
            role: AgentRole::Planner,
            step: None,
            attempt: 0,
            trace: job.trace.clone(),
        },
        messages: vec![
            Message::system(shared.prompts.planner.clone()),
            Message::user(format!("Task: {}\n\nAvailable tools:\n{tools_text}", job.task)),
        ],
        tools: vec![],
        structured: Some(StructuredOutput { name: "plan".into(), schema: schema::<PlanSpec>() }),
        max_tokens: None,
    };
    let names = shared.tool_name_refs();
    // The tracker decides which streamed steps may start; this only finds where each one ends.
    let steps = std::sync::Mutex::new(StepStream::new());
    let stream_to = |piece: &str| {
        let found = steps.lock().unwrap_or_else(|p| p.into_inner()).push(piece);
        if !found.is_empty() {
            let _ = tracker.cast(TrackerMsg::PlanStreamed(found));
        }
    };
    let sink: Option<&TextSink<'_>> = if job.stream { Some(&stream_to) } else { None };
    let parsed = structured_call_streaming(model.as_ref(), request, sink, |text| {
        let plan = PlanSpec::parse(text).map_err(|e| e.to_string())?;
        plan.validate(&names).map_err(|e| e.to_string())?;
        Ok(plan)
    })
    .await
    .map_err(|e| ServiceFailure { error: format!("planning failed: {e}"), usage: Default::default() })?;
    let usage = structured_usage(&parsed);
    Ok((parsed.value, usage))
}
