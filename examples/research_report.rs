//! A three-step research pipeline: research → analyse → write, then a synthesis that produces
//! the final report.
//!
//! Shows a linear plan in which every step depends on the one before: the runtime starts a step
//! only when its dependency has completed, and puts the dependency's output into the step's
//! prompt. The model is the offline scripted one, replaying `examples/scripts/research_report.json`
//! (the findings in it are sample data, not research).
//!
//! Run it:
//!
//! ```text
//! cargo run --example research_report
//! cargo test --example research_report
//! ```
//!
//! The same script runs through the CLI too:
//! `stepwise run --script examples/scripts/research_report.json "Write a report on enterprise LLM adoption"`.

mod common;

use std::sync::Arc;

use stepwise::Stepwise;
use stepwise::llm::SharedModel;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::{RunEvent, RunResult};

/// The task the script answers.
pub const TASK: &str = "Write a report on enterprise LLM adoption: research the current state, \
                        analyse the findings, and write a report with recommendations";

/// Where the script lives.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scripts/research_report.json");

/// The scripted model of this example.
pub fn scripted_model() -> Result<ScriptedModel, Box<dyn std::error::Error>> {
    Ok(ScriptedModel::from_file(SCRIPT.as_ref())?)
}

/// Runs the research pipeline on `model`, handing each event to `on_event` as it happens.
pub async fn research_report(
    model: SharedModel,
    on_event: impl FnMut(&RunEvent),
) -> Result<(RunResult, Vec<RunEvent>), Box<dyn std::error::Error>> {
    let workspace = tempfile::tempdir()?;
    // No tools: every step is the model's own work.
    let runtime = Stepwise::builder().model(model).workspace_root(workspace.path()).build().await?;
    let outcome = common::drive(&runtime, TASK, on_event).await?;
    runtime.shutdown().await;
    Ok(outcome)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = Arc::new(scripted_model()?);
    let (result, _events) = research_report(model, common::print_event).await?;
    common::print_summary(&result);
    if result.status != stepwise::run::RunStatus::Completed {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use stepwise::llm::{AgentRole, ChatModel, ChatRequest, ChatResponse, LlmError};
    use stepwise::plan::StepStatus;
    use stepwise::run::{EventKind, RunStatus};

    use super::*;

    /// Records every request before the scripted model answers it.
    struct Spy {
        inner: ScriptedModel,
        seen: Mutex<Vec<ChatRequest>>,
    }

    #[async_trait::async_trait]
    impl ChatModel for Spy {
        fn model_name(&self) -> &str {
            "spy"
        }
        fn provider(&self) -> &str {
            "scripted"
        }
        async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
            self.seen.lock().unwrap().push(request.clone());
            self.inner.chat(request).await
        }
    }

    fn step_event(events: &[RunEvent], name: &str, id: &str) -> chrono::DateTime<chrono::Utc> {
        events
            .iter()
            .find(|e| {
                e.kind.name() == name
                    && matches!(&e.kind,
                        EventKind::StepStarted { step, .. } | EventKind::StepCompleted { step, .. }
                            if step.as_str() == id)
            })
            .unwrap_or_else(|| panic!("no {name} event for {id}"))
            .at
    }

    /// The user message of the executor's first call for `step`.
    fn step_prompt(seen: &[ChatRequest], step: &str) -> String {
        let request = seen
            .iter()
            .find(|r| {
                r.context.role == AgentRole::Executor
                    && r.context.step.as_ref().is_some_and(|s| s.as_str() == step)
            })
            .unwrap_or_else(|| panic!("no executor call for {step}"));
        request.messages[1].content.clone()
    }

    #[tokio::test]
    async fn steps_run_in_order_and_each_sees_the_previous_output() {
        let spy = Arc::new(Spy { inner: scripted_model().unwrap(), seen: Mutex::new(vec![]) });
        let (result, events) = research_report(spy.clone(), |_| {}).await.unwrap();
        assert_eq!(result.status, RunStatus::Completed, "{result:#?}");
        assert!(!result.replanned);

        let ids: Vec<&str> = result.plan.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["research", "analyse", "write"]);
        for step in &result.plan.steps {
            assert_eq!(step.status, StepStatus::Completed, "{step:#?}");
            assert_eq!(step.attempts, 1);
        }

        // In order, by the event log's timestamps: each step starts after the previous completed.
        let research_done = step_event(&events, "StepCompleted", "research");
        let analyse_start = step_event(&events, "StepStarted", "analyse");
        let analyse_done = step_event(&events, "StepCompleted", "analyse");
        let write_start = step_event(&events, "StepStarted", "write");
        assert!(step_event(&events, "StepStarted", "research") <= research_done);
        assert!(research_done <= analyse_start, "analyse started before research completed");
        assert!(analyse_done <= write_start, "write started before analyse completed");
        // And by sequence number, which has no ties.
        let order: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::StepStarted { step, .. } => Some(format!("start {step}")),
                EventKind::StepCompleted { step, .. } => Some(format!("done {step}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            ["start research", "done research", "start analyse", "done analyse", "start write", "done write"]
        );

        // Each later step's prompt carries the earlier step's output.
        let seen = spy.seen.lock().unwrap();
        let research_out = result.plan.steps[0].output.as_deref().unwrap();
        let analyse_out = result.plan.steps[1].output.as_deref().unwrap();
        assert!(research_out.starts_with("Findings"), "{research_out}");
        let analyse_prompt = step_prompt(&seen, "analyse");
        assert!(analyse_prompt.contains(research_out), "analyse did not see the research:\n{analyse_prompt}");
        let write_prompt = step_prompt(&seen, "write");
        assert!(write_prompt.contains(analyse_out), "write did not see the analysis:\n{write_prompt}");
        assert!(!write_prompt.contains(research_out), "write depends on analyse only:\n{write_prompt}");
        assert!(!step_prompt(&seen, "research").contains("Results of the steps"));

        // The synthesizer saw every step's output and its answer is the final report.
        let synth = seen.iter().find(|r| r.context.role == AgentRole::Synthesizer).expect("a synthesis call");
        let synth_prompt = &synth.messages[1].content;
        for step in &result.plan.steps {
            assert!(synth_prompt.contains(step.output.as_deref().unwrap()), "{synth_prompt}");
        }
        let report = result.final_output.as_deref().unwrap();
        assert!(report.starts_with("# Enterprise LLM adoption\n\n## Executive summary"), "{report}");
        assert!(report.contains("## Recommendations"), "{report}");
        assert_eq!(result.usage.llm_calls, 5, "planner + 3 steps + synthesizer");
        assert_eq!(result.usage.tool_calls, 0);
    }
}
