//! A run's state as the fold of its events, and the result it shows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::approval::{PausedStep, PendingApproval};
use super::{EventKind, RunEvent, RunId, StepError, Usage};
use crate::llm::AgentRole;
use crate::options::RunOptions;
use crate::plan::{Plan, StepId, StepSpec, StepStatus};

/// A run's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for the planner.
    Planning,
    /// The plan waits for a person.
    AwaitingApproval,
    /// Steps are running.
    Running,
    /// Finished with an answer.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunStatus {
    /// Completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Planning => "planning",
            RunStatus::AwaitingApproval => "awaiting_approval",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!("unknown run status {s:?} (planning, awaiting_approval, running, completed, failed, cancelled)")
        })
    }
}

/// One plan revision, kept so revisions can be compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanRevision {
    /// 1 for the planner's plan, then one per replan.
    pub revision: u32,
    /// Why this revision was made (none for the first).
    pub reason: Option<String>,
    /// The steps this revision introduced (completed steps of earlier revisions are kept).
    pub steps: Vec<StepSpec>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A model call of a run that waits for its unavailable provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderWait {
    /// The calling role.
    pub role: AgentRole,
    /// The step, for executor and verifier calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    /// The provider (scheme, host, port).
    pub provider: String,
    /// What the provider last answered, or how it could not be reached.
    pub last_error: String,
    /// When the call started waiting.
    pub since: DateTime<Utc>,
}

/// The outcome of a run, as the library, `--json` and `GET /v1/runs/{id}` return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunResult {
    /// Run id.
    pub id: RunId,
    /// The task.
    pub task: String,
    /// Status.
    pub status: RunStatus,
    /// The latest plan revision with every step's state.
    pub plan: Plan,
    /// Every revision, oldest first.
    pub revisions: Vec<PlanRevision>,
    /// True when the replanner revised the plan at least once.
    pub replanned: bool,
    /// The synthesised answer of a completed run.
    pub final_output: Option<String>,
    /// Why the run failed or was cancelled.
    pub error: Option<String>,
    /// Model and tool usage.
    pub usage: Usage,
    /// When the run was submitted.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The model calls of the run waiting for an unavailable provider (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_on_provider: Vec<ProviderWait>,
    /// The tool calls waiting for a person's approval, oldest first (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_approvals: Vec<PendingApproval>,
}

/// An event that does not fit the state it is applied to: a bug or a corrupted log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// `seq` is not the next number.
    #[error("run {run}: event seq {got} where {expected} was expected")]
    Sequence {
        /// The run.
        run: RunId,
        /// The next seq.
        expected: u64,
        /// The event's seq.
        got: u64,
    },
    /// The event belongs to another run.
    #[error("event of run {got} applied to run {run}")]
    WrongRun {
        /// The run whose state it is.
        run: RunId,
        /// The event's run.
        got: RunId,
    },
    /// The event makes no sense in the current state.
    #[error("run {run}, event {seq} ({event}): {message}")]
    Transition {
        /// The run.
        run: RunId,
        /// The event's seq.
        seq: u64,
        /// The event's kind.
        event: &'static str,
        /// What does not fit.
        message: String,
    },
}

/// A run's state: the fold of its events.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// Run id.
    pub id: RunId,
    /// Task.
    pub task: String,
    /// Policies and budgets.
    pub options: RunOptions,
    /// Lifecycle state.
    pub status: RunStatus,
    /// Live plan.
    pub plan: Plan,
    /// Revisions.
    pub revisions: Vec<PlanRevision>,
    /// Final answer.
    pub final_output: Option<String>,
    /// Failure or cancel reason.
    pub error: Option<String>,
    /// Usage so far.
    pub usage: Usage,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// End time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seq of the last applied event.
    pub last_seq: u64,
    /// When the plan was approved (runs that wait for approval).
    pub approved_at: Option<DateTime<Utc>>,
    /// Each step's latest failure, typed (the plan's `error` is its text), so that a driver
    /// resuming the run decides a failure exactly as it was.
    pub last_errors: BTreeMap<StepId, StepError>,
    /// The model calls waiting for an unavailable provider, oldest first.
    pub waiting_on_provider: Vec<ProviderWait>,
    /// The run whose cached plan this run reused, if it did.
    pub plan_cached_from: Option<RunId>,
    /// Steps whose attempt is paused on tool calls waiting for approval (the step stays
    /// `running`); kept until the resumed attempt ends or pauses again.
    pub paused: BTreeMap<StepId, PausedStep>,
    /// Every approval id answered so far (a second answer is refused as such).
    pub answered_approvals: std::collections::BTreeSet<String>,
}

impl RunState {
    /// A state for a run just submitted (seq 0: nothing applied yet).
    pub fn new(id: RunId, task: String, options: RunOptions, created_at: DateTime<Utc>) -> Self {
        Self {
            id,
            task,
            options,
            status: RunStatus::Planning,
            plan: Plan::default(),
            revisions: Vec::new(),
            final_output: None,
            error: None,
            usage: Usage::default(),
            created_at,
            finished_at: None,
            last_seq: 0,
            approved_at: None,
            last_errors: BTreeMap::new(),
            waiting_on_provider: Vec::new(),
            plan_cached_from: None,
            paused: BTreeMap::new(),
            answered_approvals: Default::default(),
        }
    }

    /// Rebuilds a state from a run's whole event log (first event: `RunSubmitted`).
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a RunEvent>,
    ) -> Result<Option<Self>, StateError> {
        let mut state: Option<RunState> = None;
        for e in events {
            match &mut state {
                None => {
                    let EventKind::RunSubmitted { task, options } = &e.kind else {
                        return Err(StateError::Transition {
                            run: e.run_id.clone(),
                            seq: e.seq,
                            event: e.kind.name(),
                            message: "the first event of a run must be RunSubmitted".into(),
                        });
                    };
                    let mut s = RunState::new(e.run_id.clone(), task.clone(), options.clone(), e.at);
                    s.apply(e)?;
                    state = Some(s);
                }
                Some(s) => s.apply(e)?,
            }
        }
        Ok(state)
    }

    /// The number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Replans made so far.
    pub fn replans(&self) -> u32 {
        self.revisions.len().saturating_sub(1) as u32
    }

    /// Applies one event. Rejects gaps, other runs' events and impossible transitions.
    pub fn apply(&mut self, e: &RunEvent) -> Result<(), StateError> {
        if e.run_id != self.id {
            return Err(StateError::WrongRun { run: self.id.clone(), got: e.run_id.clone() });
        }
        if e.seq != self.next_seq() {
            return Err(StateError::Sequence { run: self.id.clone(), expected: self.next_seq(), got: e.seq });
        }
        let bad = |message: String| StateError::Transition {
            run: e.run_id.clone(),
            seq: e.seq,
            event: e.kind.name(),
            message,
        };
        if self.status.is_terminal() {
            return Err(bad(format!("the run already ended ({})", self.status.as_str())));
        }
        self.clear_answered_waits(&e.kind);
        self.clear_paused(&e.kind);
        match &e.kind {
            EventKind::RunSubmitted { .. } => {
                if e.seq != 1 {
                    return Err(bad("RunSubmitted must be the first event".into()));
                }
            }
            EventKind::PlanStreamed { steps } => {
                if self.status != RunStatus::Planning {
                    return Err(bad(format!("no plan was expected in status {}", self.status.as_str())));
                }
                if let Some(dup) = steps.iter().find(|s| self.plan.step(&s.id).is_some()) {
                    return Err(bad(format!("step {} was already streamed", dup.id)));
                }
                self.plan.extend_streamed(steps);
            }
            EventKind::PlanProposed { revision, plan, usage, cached_from } => {
                self.plan_cached_from = cached_from.clone();
                if self.status != RunStatus::Planning {
                    return Err(bad(format!("no plan was expected in status {}", self.status.as_str())));
                }
                self.plan.adopt(plan.clone(), *revision);
                // A streamed step that paused and that the whole plan left out waits no more.
                let live = &self.plan;
                self.paused.retain(|step, _| live.step(step).is_some());
                self.revisions.push(PlanRevision {
                    revision: *revision,
                    reason: None,
                    steps: plan.steps.clone(),
                    created_at: e.at,
                });
                self.usage += *usage;
                self.status = if self.options.policy.require_approval {
                    RunStatus::AwaitingApproval
                } else {
                    RunStatus::Running
                };
            }
            EventKind::PlanApproved { edited } => {
                if self.status != RunStatus::AwaitingApproval {
                    return Err(bad("the plan is not awaiting approval".into()));
                }
                if let Some(plan) = edited {
                    self.plan = Plan::from_spec(plan.clone(), self.plan.revision);
                    if let Some(r) = self.revisions.last_mut() {
                        r.steps = plan.steps.clone();
                        r.reason = Some("edited on approval".into());
                    }
                }
                self.status = RunStatus::Running;
                self.approved_at = Some(e.at);
            }
            EventKind::StepStarted { step, attempt } => {
                self.expect_running(&bad)?;
                let s = self.plan.step_mut(step).ok_or_else(|| bad(format!("unknown step {step}")))?;
                // Failed → running is a retry; running → running is a restarted service
                // re-dispatching a step that was interrupted.
                if !matches!(s.status, StepStatus::Pending | StepStatus::Running | StepStatus::Failed) {
                    return Err(bad(format!("step {step} is {:?}, not pending", s.status)));
                }
                s.status = StepStatus::Running;
                s.attempts = *attempt;
                s.started_at = Some(e.at);
            }
            EventKind::ToolCalled { step, .. } => {
                self.running_step(step, &bad)?;
                self.usage.tool_calls += 1;
            }
            EventKind::ToolReturned { step, .. } => {
                self.running_step(step, &bad)?;
            }
            EventKind::ToolApprovalRequested { step, attempt, calls, checkpoint } => {
                let s = self.running_step(step, &bad)?;
                if s.attempts != *attempt {
                    return Err(bad(format!("step {step} is on attempt {}, not {attempt}", s.attempts)));
                }
                if calls.is_empty() {
                    return Err(bad(format!("step {step} paused without a pending call")));
                }
                let paused = PausedStep {
                    attempt: *attempt,
                    checkpoint: checkpoint.clone(),
                    calls: calls.clone(),
                    answers: BTreeMap::new(),
                    since: e.at,
                };
                self.paused.insert(step.clone(), paused);
            }
            EventKind::ToolApprovalResolved { approval_id, step, decision } => {
                self.running_step(step, &bad)?;
                let p = self.paused.get_mut(step).ok_or_else(|| bad(format!("step {step} is not paused")))?;
                if !p.calls.iter().any(|c| &c.approval_id == approval_id) {
                    return Err(bad(format!("step {step} has no pending call {approval_id}")));
                }
                if p.answers.insert(approval_id.clone(), decision.clone()).is_some() {
                    return Err(bad(format!("approval {approval_id} was already answered")));
                }
                self.answered_approvals.insert(approval_id.clone());
            }
            EventKind::StepCompleted { step, attempt, output, usage } => {
                let s = self.running_step(step, &bad)?;
                if s.attempts != *attempt {
                    return Err(bad(format!("step {step} is on attempt {}, not {attempt}", s.attempts)));
                }
                s.status = StepStatus::Completed;
                s.output = Some(output.clone());
                s.error = None;
                s.finished_at = Some(e.at);
                self.usage += *usage;
            }
            EventKind::StepFailed { step, attempt, error, usage } => {
                let s = self.running_step(step, &bad)?;
                if s.attempts != *attempt {
                    return Err(bad(format!("step {step} is on attempt {}, not {attempt}", s.attempts)));
                }
                s.status = StepStatus::Failed;
                s.failures += 1;
                s.error = Some(error.to_string());
                s.finished_at = Some(e.at);
                self.last_errors.insert(step.clone(), error.clone());
                self.usage += *usage;
            }
            EventKind::StepSkipped { step, reason } => {
                self.expect_running(&bad)?;
                let s = self.plan.step_mut(step).ok_or_else(|| bad(format!("unknown step {step}")))?;
                if s.status == StepStatus::Completed {
                    return Err(bad(format!("step {step} is completed and cannot be skipped")));
                }
                s.status = StepStatus::Skipped;
                s.error = Some(reason.clone());
                s.finished_at = Some(e.at);
            }
            EventKind::ReplanConsidered { usage, .. } => {
                self.expect_running(&bad)?;
                self.usage += *usage;
            }
            EventKind::Replanned { revision, reason, steps, usage, .. } => {
                self.expect_running(&bad)?;
                if *revision != self.plan.revision + 1 {
                    return Err(bad(format!("revision {revision} follows revision {}", self.plan.revision)));
                }
                self.plan.replace_remaining(steps.clone());
                self.revisions.push(PlanRevision {
                    revision: *revision,
                    reason: Some(reason.clone()),
                    steps: steps.clone(),
                    created_at: e.at,
                });
                self.usage += *usage;
            }
            EventKind::RunCompleted { final_output, usage } => {
                self.usage += *usage;
                self.final_output = Some(final_output.clone());
                self.finish(RunStatus::Completed, e.at);
            }
            EventKind::RunFailed { error, usage } => {
                self.usage += *usage;
                self.error = Some(error.clone());
                self.finish(RunStatus::Failed, e.at);
            }
            EventKind::RunCancelled { reason } => {
                self.error = Some(reason.clone());
                self.finish(RunStatus::Cancelled, e.at);
            }
            EventKind::ProviderWaiting { role, step, provider, last_error, .. } => {
                self.waiting_on_provider.retain(|w| !(w.role == *role && w.step == *step));
                self.waiting_on_provider.push(ProviderWait {
                    role: *role,
                    step: step.clone(),
                    provider: provider.clone(),
                    last_error: last_error.clone(),
                    since: e.at,
                });
            }
            EventKind::ProviderResumed { role, step, .. } => {
                self.waiting_on_provider.retain(|w| !(w.role == *role && w.step == *step));
            }
        }
        self.last_seq = e.seq;
        Ok(())
    }

    /// Forgets the provider waits that `kind` shows are over: the call's answer arrived (a
    /// plan, a replan, a step's end or a new attempt), or the run ended. A wait whose
    /// `ProviderResumed` was never written (a crash) ends this way too.
    fn clear_answered_waits(&mut self, kind: &EventKind) {
        if self.waiting_on_provider.is_empty() {
            return;
        }
        let over = |w: &ProviderWait| match kind {
            EventKind::PlanProposed { .. } | EventKind::PlanStreamed { .. } => w.role == AgentRole::Planner,
            EventKind::ReplanConsidered { .. } | EventKind::Replanned { .. } => {
                w.role == AgentRole::Replanner
            }
            EventKind::StepStarted { step, .. }
            | EventKind::StepCompleted { step, .. }
            | EventKind::StepFailed { step, .. }
            | EventKind::StepSkipped { step, .. } => w.step.as_ref() == Some(step),
            k => k.is_terminal(),
        };
        self.waiting_on_provider.retain(|w| !over(w));
    }

    /// Forgets a paused attempt once `kind` shows it is over: it ended, a new attempt started,
    /// or it paused again (which records a new pause); the run ending ends them all.
    fn clear_paused(&mut self, kind: &EventKind) {
        match kind {
            EventKind::StepStarted { step, .. }
            | EventKind::StepCompleted { step, .. }
            | EventKind::StepFailed { step, .. }
            | EventKind::StepSkipped { step, .. } => {
                self.paused.remove(step);
            }
            k if k.is_terminal() => self.paused.clear(),
            _ => {}
        }
    }

    /// The tool calls waiting for an answer, oldest first.
    pub fn pending_approvals(&self) -> Vec<PendingApproval> {
        let mut pending: Vec<PendingApproval> = (self.paused.iter())
            .flat_map(|(step, p)| {
                (p.calls.iter()).filter(|c| !p.answers.contains_key(&c.approval_id)).map(|c| {
                    PendingApproval {
                        approval_id: c.approval_id.clone(),
                        step: step.clone(),
                        attempt: p.attempt,
                        call_id: c.call_id.clone(),
                        tool: c.tool.clone(),
                        arguments: c.arguments.clone(),
                        requested_at: p.since,
                    }
                })
            })
            .collect();
        pending.sort_by(|a, b| (a.requested_at, &a.approval_id).cmp(&(b.requested_at, &b.approval_id)));
        pending
    }

    /// The paused step that `approval_id` belongs to, if any.
    pub fn paused_step_of(&self, approval_id: &str) -> Option<(&StepId, &PausedStep)> {
        self.paused.iter().find(|(_, p)| p.calls.iter().any(|c| c.approval_id == approval_id))
    }

    fn finish(&mut self, status: RunStatus, at: DateTime<Utc>) {
        self.status = status;
        self.finished_at = Some(at);
        // A step cut off by the end of the run did not complete; say so instead of "running".
        for s in &mut self.plan.steps {
            if s.status == StepStatus::Running {
                s.status = StepStatus::Failed;
                s.error.get_or_insert_with(|| format!("interrupted: run {}", status.as_str()));
            }
        }
    }

    /// True while steps may run: the run is running, or its plan is still streaming in and some
    /// of its steps have arrived.
    pub fn steps_may_run(&self) -> bool {
        self.status == RunStatus::Running
            || (self.status == RunStatus::Planning && !self.plan.steps.is_empty())
    }

    fn expect_running(&self, bad: &impl Fn(String) -> StateError) -> Result<(), StateError> {
        if self.steps_may_run() {
            Ok(())
        } else {
            Err(bad(format!("the run is {}, not running", self.status.as_str())))
        }
    }

    fn running_step(
        &mut self,
        step: &StepId,
        bad: &impl Fn(String) -> StateError,
    ) -> Result<&mut crate::plan::Step, StateError> {
        self.expect_running(bad)?;
        let s = self.plan.step_mut(step).ok_or_else(|| bad(format!("unknown step {step}")))?;
        if s.status != StepStatus::Running {
            return Err(bad(format!("step {step} is {:?}, not running", s.status)));
        }
        Ok(s)
    }

    /// The result as the API returns it.
    pub fn result(&self) -> RunResult {
        RunResult {
            id: self.id.clone(),
            task: self.task.clone(),
            status: self.status,
            plan: self.plan.clone(),
            revisions: self.revisions.clone(),
            replanned: self.revisions.len() > 1,
            final_output: self.final_output.clone(),
            error: self.error.clone(),
            usage: self.usage,
            created_at: self.created_at,
            finished_at: self.finished_at,
            waiting_on_provider: self.waiting_on_provider.clone(),
            pending_approvals: self.pending_approvals(),
        }
    }

    /// How much of the run's wall-clock budget (`run_budget.timeout_ms`) is left at `now`; none
    /// without a limit, or while the plan awaits approval (that time does not count).
    pub fn time_left(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        let limit = self.options.run_budget.timeout_ms;
        if limit == 0 || self.status == RunStatus::AwaitingApproval || self.status.is_terminal() {
            return None;
        }
        let proposed = self.revisions.first().map(|r| r.created_at);
        let waited = match (proposed, self.approved_at) {
            (Some(p), Some(a)) => (a - p).to_std().unwrap_or_default(),
            _ => std::time::Duration::ZERO,
        };
        let elapsed = (now - self.created_at).to_std().unwrap_or_default().saturating_sub(waited);
        Some(std::time::Duration::from_millis(limit).saturating_sub(elapsed))
    }

    /// Which run-level budget is used up, if any (tokens, cost, tool calls). A money cap is used
    /// up once reached: any further call would go past it.
    pub fn run_budget_exceeded(&self) -> Option<String> {
        let b = &self.options.run_budget;
        if b.max_tokens > 0 && self.usage.tokens() > b.max_tokens {
            return Some(format!(
                "run budget exhausted: {} tokens used, limit {}",
                self.usage.tokens(),
                b.max_tokens
            ));
        }
        if let Some(spent) = self.usage.cost.nanos()
            && b.max_cost > 0.0
            && spent >= crate::llm::price::cap_nanos(b.max_cost)
        {
            return Some(format!(
                "run budget exhausted: cost {} spent, limit {}",
                self.usage.cost,
                crate::llm::Cost::from_amount(b.max_cost)
            ));
        }
        if b.max_tool_calls > 0 && self.usage.tool_calls > b.max_tool_calls {
            return Some(format!(
                "run budget exhausted: {} tool calls made, limit {}",
                self.usage.tool_calls, b.max_tool_calls
            ));
        }
        None
    }
}
