//! The executor pool's workers (the pool itself is [`super::pool`]), each running one step
//! attempt at a time as a bounded ReAct loop (model → tool calls → observations → model … → final answer).
//!
//! Every loop is bounded by the step's budget (iterations, tool calls, tokens, wall clock) and
//! by the run's cancellation token, so whatever the model answers, the attempt ends. A panicking
//! tool is contained and fails the attempt (`tool_panicked`); a panic anywhere else kills the
//! worker, which the factory replaces while the tracker sees the dropped reply as
//! `executor_crashed`.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorProcessingErr;
use ractor::factory::{FactoryRef, Job, Worker, WorkerId};
use tracing::Instrument;

use super::Shared;
use super::messages::{ExecutorMsg, StepJob, StepReport};
use super::outage::{BudgetElapsed, TrackerWatch, WaitClock, within_budget};
use super::pool::PoolGauges;
use crate::llm::{AgentRole, CallContext, ChatRequest, Message};
use crate::plan::strip_code_fence;
use crate::prompts::user::{ExecutorInput, StepResultLine, VerifierInput};
use crate::run::{EventKind, StepError, StepErrorKind, StepVerdict, Usage};
use crate::text::clip;
use crate::tools::{ToolContext, ToolError};

/// Longest observation (tool output) fed back to the model and stored in events, in bytes.
const MAX_OBSERVATION: usize = 16 * 1024;

/// The job key: one per step attempt, for the factory's bookkeeping.
pub type JobKey = String;

/// A worker of the executor pool.
pub struct ExecutorWorker {
    pub(crate) shared: Arc<Shared>,
    /// The pool's counters: this worker is busy while it runs a step.
    pub(crate) gauges: Arc<PoolGauges>,
}

impl Worker for ExecutorWorker {
    type Key = JobKey;
    type Message = ExecutorMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _wid: WorkerId,
        _factory: &FactoryRef<JobKey, ExecutorMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _wid: WorkerId,
        _factory: &FactoryRef<JobKey, ExecutorMsg>,
        Job { msg, key, .. }: Job<JobKey, ExecutorMsg>,
        _state: &mut (),
    ) -> Result<JobKey, ActorProcessingErr> {
        let busy = self.gauges.start_step();
        let ExecutorMsg::Run(job, reply) = msg;
        let report = run_step(&self.shared, *job).await;
        // Free before replying: whoever hears of the step's end sees the worker free.
        drop(busy);
        // The tracker may have stopped (cancelled run); nothing else waits for this reply.
        let _ = reply.send(report);
        Ok(key)
    }
}

/// Runs one step attempt to its end: a final answer, or a [`StepError`].
pub(crate) async fn run_step(shared: &Shared, job: StepJob) -> StepReport {
    let mut usage = Usage::default();
    let budget_timeout = job.budget.timeout();
    let cancel = job.cancel.clone();
    // Time spent waiting for an unavailable provider does not count against the budget.
    let clock = Arc::new(WaitClock::default());
    let watch =
        |role| TrackerWatch::step(job.events.clone(), role, job.step.id.clone(), job.attempt, clock.clone());
    let work = watch(AgentRole::Executor).watch(react_loop(shared, &job, &mut usage));
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(StepError::new(StepErrorKind::Cancelled, "the run was cancelled")),
        r = within_budget(budget_timeout, &clock, work) => match r {
            Ok(r) => r,
            Err(BudgetElapsed) => Err(StepError::new(
                StepErrorKind::BudgetExhausted,
                format!("timeout: the step ran longer than {budget_timeout:?}"),
            )),
        },
    };
    // Whatever ended the attempt, tools still running for it must stop.
    cancel.cancel();
    let outcome = match outcome {
        Ok(answer) if job.verify && !job.step.expected_outcome.trim().is_empty() => {
            let verified = watch(AgentRole::Verifier).watch(verify(shared, &job, &answer, &mut usage));
            verified.await.map(|()| answer)
        }
        other => other,
    };
    StepReport { step: job.step.id.clone(), attempt: job.attempt, outcome, usage }
}

/// The step's user message, from the executor's template.
fn step_prompt(shared: &Shared, job: &StepJob) -> Result<String, StepError> {
    let inputs = job
        .inputs
        .iter()
        .map(|i| StepResultLine { id: &i.id.0, description: &i.description, output: i.output.as_deref() })
        .collect();
    let input = ExecutorInput {
        task: &job.task,
        goal: &job.goal,
        step_id: &job.step.id.0,
        description: &job.step.description,
        expected_outcome: &job.step.expected_outcome,
        tool: job.step.tool.as_deref().filter(|t| !t.is_empty()),
        inputs,
    };
    shared.prompts.user().executor(&input).map_err(|e| StepError::new(StepErrorKind::LlmError, e.to_string()))
}

fn exhausted(what: String) -> StepError {
    StepError::new(StepErrorKind::BudgetExhausted, what)
}

async fn react_loop(shared: &Shared, job: &StepJob, usage: &mut Usage) -> Result<String, StepError> {
    let model = shared.models.get(AgentRole::Executor).clone();
    let context = CallContext::new(AgentRole::Executor, job.run_id.0.clone(), job.trace.clone())
        .step(job.step.id.clone(), job.attempt);
    let mut messages = vec![
        Message::system(shared.prompts.get(AgentRole::Executor)),
        Message::user(step_prompt(shared, job)?),
    ];
    // Which MCP servers the run may use, and their tools as listed now.
    let scope = shared.runs.mcp_servers(&job.run_id);
    let tools = &shared.step_tool_specs(&job.run_id);
    let budget = &job.budget;
    let mut tool_calls_made: u32 = 0;
    for _iteration in 0..budget.max_iterations {
        let request =
            ChatRequest::builder(context.clone()).messages(messages.clone()).tools(tools.clone()).build();
        shared.check_call_cost(model.as_ref(), &request, job, usage)?;
        let response =
            model.chat(request).await.map_err(|e| StepError::new(StepErrorKind::LlmError, e.to_string()))?;
        usage.add_call(response.usage);
        if budget.max_tokens > 0 && usage.tokens() > budget.max_tokens {
            return Err(exhausted(format!(
                "max_tokens: {} tokens used, the step may use {}",
                usage.tokens(),
                budget.max_tokens
            )));
        }
        if response.tool_calls.is_empty() {
            return Ok(response.content);
        }
        messages.push(Message::assistant(response.content.clone(), response.tool_calls.clone()));
        for call in response.tool_calls {
            if tool_calls_made >= budget.max_tool_calls {
                return Err(exhausted(format!("max_tool_calls ({}) reached", budget.max_tool_calls)));
            }
            let call_index = tool_calls_made;
            tool_calls_made += 1;
            notify(
                job,
                EventKind::ToolCalled {
                    step: job.step.id.clone(),
                    attempt: job.attempt,
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    arguments: call.arguments.clone(),
                },
            );
            let ctx = ToolContext {
                run_id: job.run_id.0.clone(),
                step_id: job.step.id.0.clone(),
                attempt: job.attempt,
                call_index,
                workspace: shared.workspace(&job.run_id),
                cancel: job.cancel.child_token(),
            };
            let span = super::tool_span(&call.name, &call.id, &job.trace);
            shared.content.record(&span, "gen_ai.tool.call.arguments", &call.arguments.to_string());
            let result = call_tool(shared, scope.as_deref(), &call.name, call.arguments.clone(), ctx)
                .instrument(span.clone())
                .await;
            match &result {
                Ok(out) => shared.content.record(&span, "gen_ai.tool.call.result", out),
                Err(e) => {
                    span.record("error.type", tool_error_type(e));
                    span.record("otel.status_code", "ERROR");
                }
            }
            let (ok, observation) = match &result {
                Ok(out) => (true, clip(out, MAX_OBSERVATION)),
                Err(e) => (false, clip(&format!("error: {e}"), MAX_OBSERVATION)),
            };
            notify(
                job,
                EventKind::ToolReturned {
                    step: job.step.id.clone(),
                    attempt: job.attempt,
                    call_id: call.id.clone(),
                    ok,
                    output: observation.clone(),
                },
            );
            match result {
                Err(ToolError::Panicked(msg)) => {
                    return Err(StepError::new(
                        StepErrorKind::ToolPanicked,
                        format!("tool {} panicked: {msg}", call.name),
                    ));
                }
                Err(ToolError::Cancelled) if job.cancel.is_cancelled() => {
                    return Err(StepError::new(StepErrorKind::Cancelled, "the run was cancelled"));
                }
                _ => messages.push(Message::tool(call.id, observation)),
            }
        }
    }
    Err(exhausted(format!("max_iterations ({}) reached without a final answer", budget.max_iterations)))
}

fn tool_error_type(e: &ToolError) -> &'static str {
    match e {
        ToolError::InvalidArguments(_) => "invalid_arguments",
        ToolError::Denied(_) => "denied",
        ToolError::Failed(_) => "failed",
        ToolError::Timeout(_) => "timeout",
        ToolError::Cancelled => "cancelled",
        ToolError::Unknown { .. } => "unknown_tool",
        ToolError::Panicked(_) => "panicked",
    }
}

/// How long a cancelled or timed-out tool gets to notice its token and clean up before its task
/// is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Aborts a tool task [`CANCEL_GRACE`] after being dropped (if it is still running then), so
/// a tool that ignores its cancellation token cannot outlive its step for long.
struct AbortLater(tokio::task::AbortHandle);

impl Drop for AbortLater {
    fn drop(&mut self) {
        if self.0.is_finished() {
            return;
        }
        let handle = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CANCEL_GRACE).await;
            handle.abort();
        });
    }
}

/// Runs a tool on its own task so that a panic stays a [`ToolError::Panicked`]. The step's
/// cancellation (run cancelled, budget out) reaches the tool through `ctx.cancel`.
async fn call_tool(
    shared: &Shared,
    scope: crate::tools::SourceScope<'_>,
    name: &str,
    args: serde_json::Value,
    ctx: ToolContext,
) -> Result<String, ToolError> {
    let tool = shared.tools.get_in(name, scope)?;
    if let Err(e) = tokio::fs::create_dir_all(&ctx.workspace).await {
        return Err(ToolError::Failed(format!("cannot create the run workspace: {e}")));
    }
    let task = tokio::spawn(async move { tool.call(args, &ctx).await }.in_current_span());
    let _abort = AbortLater(task.abort_handle());
    match task.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(ToolError::Panicked(panic_message(e.into_panic()))),
        Err(_) => Err(ToolError::Cancelled),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

fn notify(job: &StepJob, kind: EventKind) {
    job.events.send(kind);
}

async fn verify(shared: &Shared, job: &StepJob, answer: &str, usage: &mut Usage) -> Result<(), StepError> {
    let model = shared.models.get(AgentRole::Verifier).clone();
    let verdict_for = VerifierInput {
        description: &job.step.description,
        expected_outcome: &job.step.expected_outcome,
        result: answer,
    };
    let text = shared
        .prompts
        .user()
        .verifier(&verdict_for)
        .map_err(|e| StepError::new(StepErrorKind::LlmError, e.to_string()))?;
    let context = CallContext::new(AgentRole::Verifier, job.run_id.0.clone(), job.trace.clone())
        .step(job.step.id.clone(), job.attempt);
    let request = ChatRequest::builder(context)
        .system(shared.prompts.get(AgentRole::Verifier))
        .user(text)
        .structured("step_verdict", super::schema::<StepVerdict>())
        .build();
    shared.check_call_cost(model.as_ref(), &request, job, usage)?;
    let verdict = crate::llm::structured_call(model.as_ref(), request, |text| {
        serde_json::from_str::<StepVerdict>(strip_code_fence(text)).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| StepError::new(StepErrorKind::LlmError, format!("verification: {e}")))?;
    *usage += verdict.usage;
    if verdict.value.passed {
        Ok(())
    } else {
        Err(StepError::new(
            StepErrorKind::VerificationFailed,
            format!("expected outcome not met: {}", verdict.value.reason),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_extracted() {
        assert_eq!(panic_message(Box::new("boom")), "boom");
        assert_eq!(panic_message(Box::new(String::from("bang"))), "bang");
        assert_eq!(panic_message(Box::new(3)), "(non-string panic payload)");
    }
}
