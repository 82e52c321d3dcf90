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

use tokio::time::Instant;

use ractor::ActorProcessingErr;
use ractor::factory::{FactoryRef, Job, Worker, WorkerId};
use tracing::Instrument;

use super::Shared;
use super::messages::{ExecutorMsg, StepEnd, StepJob, StepReport, StepResume};
use super::outage::{BudgetElapsed, TrackerWatch, WaitClock, within_budget};
use crate::executors::PoolGauges;
use crate::llm::{AgentRole, CallContext, ChatRequest, ChatResponse, Message, ToolCall, ToolSpec};
use crate::options::StepBudget;
use crate::plan::strip_code_fence;
use crate::prompts::user::{ExecutorInput, StepResultLine, VerifierInput};
use crate::run::{
    EventKind, PendingCall, StepCheckpoint, StepError, StepErrorKind, StepVerdict, ToolDecision, Usage,
};
use crate::text::clip;
use crate::tools::{ToolContext, ToolError};
use serde_json::Value;

/// Longest observation (tool output) fed back to the model and stored in events, in bytes.
const MAX_OBSERVATION: usize = 16 * 1024;

/// The job key: one per step attempt, for the factory's bookkeeping.
pub(crate) type JobKey = String;

/// A worker of the executor pool.
pub(crate) struct ExecutorWorker {
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

/// Runs one step attempt to its end: a final answer, a pause on tool calls that wait for a
/// person, or a [`StepError`]. A resumed attempt carries on with the budget its checkpoint left.
pub(crate) async fn run_step(shared: &Shared, job: StepJob) -> StepReport {
    let checkpoint = job.resume.as_ref().map(|r| &r.checkpoint);
    let mut usage = checkpoint.map_or_else(Usage::default, |c| c.usage);
    let worked_before = Duration::from_millis(checkpoint.map_or(0, |c| c.worked_ms));
    let budget_timeout = job.budget.timeout();
    let cancel = job.cancel.clone();
    // Time spent waiting for an unavailable provider does not count against the budget.
    let clock = Arc::new(WaitClock::default());
    let started = Instant::now();
    let worked = || worked_before + started.elapsed().saturating_sub(clock.waited(Instant::now()));
    let watch =
        |role| TrackerWatch::step(job.events.clone(), role, job.step.id.clone(), job.attempt, clock.clone());
    let work = watch(AgentRole::Executor).watch(react_loop(shared, &job, &mut usage, &worked));
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(StepError::new(StepErrorKind::Cancelled, "the run was cancelled")),
        r = within_budget(budget_timeout.saturating_sub(worked_before), &clock, work) => match r {
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
        Ok(StepEnd::Answer(answer)) if job.verify && !job.step.expected_outcome.trim().is_empty() => {
            let verified = watch(AgentRole::Verifier).watch(verify(shared, &job, &answer, &mut usage));
            verified.await.map(|()| StepEnd::Answer(answer))
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

/// An attempt's conversation and counters: what a pause saves and a resume starts from.
struct Conversation {
    messages: Vec<Message>,
    iterations: u32,
    tool_calls: u32,
}

impl Conversation {
    fn fresh(shared: &Shared, job: &StepJob) -> Result<Self, StepError> {
        let messages = vec![
            Message::system(shared.prompts.get(AgentRole::Executor)),
            Message::user(step_prompt(shared, job)?),
        ];
        Ok(Self { messages, iterations: 0, tool_calls: 0 })
    }

    fn resumed(c: &StepCheckpoint) -> Self {
        Self { messages: c.messages.clone(), iterations: c.iterations, tool_calls: c.tool_calls }
    }

    /// Counts one more tool call against the budget; its index (for the idempotency key).
    fn take_call(&mut self, budget: &StepBudget) -> Result<u32, StepError> {
        if self.tool_calls >= budget.max_tool_calls {
            return Err(exhausted(format!("max_tool_calls ({}) reached", budget.max_tool_calls)));
        }
        self.tool_calls += 1;
        Ok(self.tool_calls - 1)
    }

    fn checkpoint(self, usage: Usage, worked: Duration) -> StepCheckpoint {
        StepCheckpoint {
            messages: self.messages,
            iterations: self.iterations,
            tool_calls: self.tool_calls,
            usage,
            worked_ms: worked.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }
}

/// What one attempt's loop works with: the same for every turn.
struct Turns<'a> {
    shared: &'a Shared,
    job: &'a StepJob,
    context: CallContext,
    tools: Vec<ToolSpec>,
    /// Which MCP servers the run may use.
    scope: Option<Arc<[String]>>,
}

/// The ReAct loop: model turns and their tool calls until a final answer, a pause on calls
/// that wait for a person, or a budget runs out.
async fn react_loop(
    shared: &Shared,
    job: &StepJob,
    usage: &mut Usage,
    worked: &(dyn Fn() -> Duration + Sync),
) -> Result<StepEnd, StepError> {
    let turns = Turns::new(shared, job);
    let mut conv = match &job.resume {
        Some(resume) => turns.resume(resume).await?,
        None => Conversation::fresh(shared, job)?,
    };
    let budget = &job.budget;
    while conv.iterations < budget.max_iterations {
        conv.iterations += 1;
        let response = turns.model_turn(&conv.messages, usage).await?;
        if response.tool_calls.is_empty() {
            return Ok(StepEnd::Answer(response.content));
        }
        conv.messages.push(Message::assistant(response.content.clone(), response.tool_calls.clone()));
        let calls = turns.run_calls(&mut conv, response.tool_calls).await?;
        if !calls.is_empty() {
            return Ok(StepEnd::Paused { calls, checkpoint: conv.checkpoint(*usage, worked()) });
        }
    }
    Err(exhausted(format!("max_iterations ({}) reached without a final answer", budget.max_iterations)))
}

impl<'a> Turns<'a> {
    fn new(shared: &'a Shared, job: &'a StepJob) -> Self {
        let context = CallContext::new(AgentRole::Executor, job.run_id.0.clone(), job.trace.clone())
            .step(job.step.id.clone(), job.attempt);
        let tools = shared.step_tool_specs(&job.run_id);
        Self { shared, job, context, tools, scope: shared.runs.mcp_servers(&job.run_id) }
    }

    /// One model call, counted against the token budget.
    async fn model_turn(&self, messages: &[Message], usage: &mut Usage) -> Result<ChatResponse, StepError> {
        let model = self.shared.models.get(AgentRole::Executor);
        let request = ChatRequest::builder(self.context.clone())
            .messages(messages.iter().cloned())
            .tools(self.tools.clone())
            .build();
        self.shared.check_call_cost(model.as_ref(), &request, self.job, usage)?;
        let response =
            model.chat(request).await.map_err(|e| StepError::new(StepErrorKind::LlmError, e.to_string()))?;
        usage.add_call(response.usage);
        let max = self.job.budget.max_tokens;
        if max > 0 && usage.tokens() > max {
            return Err(exhausted(format!(
                "max_tokens: {} tokens used, the step may use {max}",
                usage.tokens()
            )));
        }
        Ok(response)
    }

    /// Runs a turn's tool calls in order, except those that wait for a person: those are
    /// returned (the attempt pauses on them once the others have run).
    async fn run_calls(
        &self,
        conv: &mut Conversation,
        calls: Vec<ToolCall>,
    ) -> Result<Vec<PendingCall>, StepError> {
        let mut pending = Vec::new();
        for call in calls {
            let call_index = conv.take_call(&self.job.budget)?;
            if self.needs_approval(&call.name) {
                let approval_id = uuid::Uuid::now_v7().to_string();
                let ToolCall { id: call_id, name: tool, arguments } = call;
                pending.push(PendingCall { approval_id, call_id, tool, arguments, call_index });
                continue;
            }
            let observation = self.run_call(&call.id, &call.name, call.arguments, call_index).await?;
            conv.messages.push(Message::tool(call.id, observation));
        }
        Ok(pending)
    }

    /// Whether a call of `tool` waits for a person: the run names it, or asks for every tool
    /// that says it is destructive and this one does.
    fn needs_approval(&self, tool: &str) -> bool {
        let job = self.job;
        job.approve_tools.iter().any(|t| t == tool)
            || (job.approve_destructive
                && (self.shared.tools.get_in(tool, self.scope.as_deref()))
                    .is_ok_and(|t| t.hints().destructive == Some(true)))
    }

    /// Carries on a paused attempt: each approved (or edited) call runs, each rejected or timed
    /// out one gets its reason as the observation.
    async fn resume(&self, resume: &StepResume) -> Result<Conversation, StepError> {
        let mut conv = Conversation::resumed(&resume.checkpoint);
        for (call, decision) in &resume.calls {
            let arguments = match decision {
                ToolDecision::Edit { arguments } => arguments.clone(),
                _ => call.arguments.clone(),
            };
            let observation = match decision.refusal() {
                Some(refusal) => refusal,
                None => self.run_call(&call.call_id, &call.tool, arguments, call.call_index).await?,
            };
            conv.messages.push(Message::tool(call.call_id.clone(), observation));
        }
        Ok(conv)
    }

    /// Runs one tool call with its events: the observation for the model, or the error that
    /// ends the attempt (a panic, a cancel).
    async fn run_call(
        &self,
        call_id: &str,
        tool: &str,
        arguments: Value,
        call_index: u32,
    ) -> Result<String, StepError> {
        let (job, step, attempt) = (self.job, self.job.step.id.clone(), self.job.attempt);
        let call_id = call_id.to_owned();
        notify(
            job,
            EventKind::ToolCalled {
                step: step.clone(),
                attempt,
                call_id: call_id.clone(),
                tool: tool.to_owned(),
                arguments: arguments.clone(),
            },
        );
        let result = self.invoke(&call_id, tool, arguments, call_index).await;
        let (ok, output) = match &result {
            Ok(out) => (true, clip(out, MAX_OBSERVATION)),
            Err(e) => (false, clip(&format!("error: {e}"), MAX_OBSERVATION)),
        };
        notify(job, EventKind::ToolReturned { step, attempt, call_id, ok, output: output.clone() });
        match result {
            Err(ToolError::Panicked(msg)) => {
                Err(StepError::new(StepErrorKind::ToolPanicked, format!("tool {tool} panicked: {msg}")))
            }
            Err(ToolError::Cancelled) if job.cancel.is_cancelled() => {
                Err(StepError::new(StepErrorKind::Cancelled, "the run was cancelled"))
            }
            _ => Ok(output),
        }
    }

    /// Calls the tool under its span, recording arguments, result or error type.
    async fn invoke(
        &self,
        call_id: &str,
        tool: &str,
        arguments: Value,
        call_index: u32,
    ) -> Result<String, ToolError> {
        let (shared, job) = (self.shared, self.job);
        let ctx = ToolContext {
            run_id: job.run_id.0.clone(),
            step_id: job.step.id.0.clone(),
            attempt: job.attempt,
            call_index,
            workspace: shared.workspace(&job.run_id),
            cancel: job.cancel.child_token(),
        };
        let span = super::tool_span(tool, call_id, &job.trace);
        shared.content.record(&span, "gen_ai.tool.call.arguments", &arguments.to_string());
        let result =
            call_tool(shared, self.scope.as_deref(), tool, arguments, ctx).instrument(span.clone()).await;
        match &result {
            Ok(out) => shared.content.record(&span, "gen_ai.tool.call.result", out),
            Err(e) => {
                span.record("error.type", tool_error_type(e));
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }
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
