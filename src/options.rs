//! Per-run policies and budgets: what happens when a step fails, when to replan,
//! and how much a step or a run may spend. Set in config, overridable per run.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to do with a step whose retries (`max_retries`) are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Retry up to `max_retries`, then fail the run.
    Retry,
    /// Retry up to `max_retries`, then skip the step and carry on.
    Skip,
    /// Retry up to `max_retries`, then ask the replanner (up to `max_replans`).
    Replan,
    /// Fail the run at the step's first failure, without retrying.
    Abort,
}

/// When the replanner is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplanMode {
    /// Only when a step fails and the failure policy is `replan`.
    OnFailure,
    /// After every completed step too (it may continue, revise, or finish early).
    AfterEachStep,
    /// Never: failures are handled by retry / skip / abort alone.
    Never,
}

/// How a run reacts to results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// What a failed step leads to once its retries are used up.
    pub on_step_failure: FailurePolicy,
    /// Retries of a failed step before `on_step_failure` applies (not used by `abort`).
    pub max_retries: u32,
    /// Plan revisions the replanner may make in one run.
    pub max_replans: u32,
    /// When the replanner is consulted.
    pub replan: ReplanMode,
    /// Ask the LLM whether each step's output meets its `expected_outcome`; a "no" fails the step.
    pub verify_outcome: bool,
    /// Wait for a person to approve (or edit, or reject) the plan before any step runs.
    pub require_approval: bool,
    /// How long a plan waits for approval before the run is cancelled, in seconds (0: forever).
    pub approval_timeout_secs: u64,
    /// Stream the plan from the model and start each step as soon as it is parsed and its
    /// dependencies are met, before the rest of the plan has arrived (LLMCompiler-style). Not
    /// used with `require_approval`, which needs the whole plan first.
    pub stream_plan: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            on_step_failure: FailurePolicy::Replan,
            max_retries: 1,
            max_replans: 2,
            replan: ReplanMode::OnFailure,
            verify_outcome: false,
            require_approval: false,
            approval_timeout_secs: 0,
            stream_plan: false,
        }
    }
}

/// What one step attempt may spend. Running out fails the attempt with `budget_exhausted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StepBudget {
    /// Model calls in the ReAct loop.
    pub max_iterations: u32,
    /// Tool calls in the ReAct loop.
    pub max_tool_calls: u32,
    /// Tokens (input + output) over the loop; 0 means no limit.
    pub max_tokens: u64,
    /// Wall-clock limit of one attempt, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for StepBudget {
    fn default() -> Self {
        Self { max_iterations: 8, max_tool_calls: 16, max_tokens: 0, timeout_ms: 300_000 }
    }
}

impl StepBudget {
    /// The wall-clock limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// What a whole run may spend. Running out fails the run with a reason naming the limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RunBudget {
    /// Tokens over every call of the run; 0 means no limit.
    pub max_tokens: u64,
    /// Tool calls over the run; 0 means no limit.
    pub max_tool_calls: u64,
    /// Wall-clock limit of the run in milliseconds (not counting time awaiting approval); 0: none.
    pub timeout_ms: u64,
}

/// Everything that shapes one run; recorded in its first event so a restart resumes it as it was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RunOptions {
    /// Failure, replan, verification and approval policy.
    pub policy: Policy,
    /// Per-step budget.
    pub step_budget: StepBudget,
    /// Per-run budget.
    pub run_budget: RunBudget,
    /// The MCP servers (`[[tools.mcp.servers]]` names) whose tools this run may use; absent:
    /// every configured server, `[]`: none. Names must be configured servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<Vec<String>>,
}
