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
    /// Tools whose every call waits for a person's approval (approve, edit the arguments, or
    /// reject) before it runs; the rest of the run goes on meanwhile. Names must be tools the
    /// runtime has.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approve_tools: Vec<String>,
    /// Also wait for approval before each call of a tool that says it is destructive (an MCP
    /// tool annotated `destructiveHint: true`).
    pub approve_destructive: bool,
    /// How long a call of an `approve_tools` tool waits for its answer before it counts as
    /// rejected (`timed_out`, which the model sees), in seconds (0: forever). The wait does not
    /// count against the step's wall-clock budget.
    pub tool_approval_timeout_secs: u64,
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
            approve_tools: Vec::new(),
            approve_destructive: false,
            tool_approval_timeout_secs: 3600,
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
    /// Money over the attempt's model calls, in `[llm] price_currency`; 0 means no limit. Checked
    /// before each call against the most that call can cost; not applied to unpriced models.
    #[serde(deserialize_with = "money_cap")]
    pub max_cost: f64,
    /// Wall-clock limit of one attempt, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for StepBudget {
    fn default() -> Self {
        Self { max_iterations: 8, max_tool_calls: 16, max_tokens: 0, max_cost: 0.0, timeout_ms: 300_000 }
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
    /// Money over every model call of the run, in `[llm] price_currency`; 0 means no limit. A
    /// step's model call that could take the run past it is not made (the run fails, `run budget
    /// exhausted`); other calls are not made once the run has spent it. Not applied while any of
    /// the run's calls was to an unpriced model (its cost is unknown).
    #[serde(deserialize_with = "money_cap")]
    pub max_cost: f64,
    /// Wall-clock limit of the run in milliseconds (not counting time awaiting approval); 0: none.
    pub timeout_ms: u64,
}

/// A `max_cost`: a finite number ≥ 0, so that a typo cannot turn a cap off silently.
fn money_cap<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let cap = f64::deserialize(d)?;
    if cap.is_finite() && cap >= 0.0 {
        Ok(cap)
    } else {
        Err(serde::de::Error::custom(format!("max_cost must be a number ≥ 0 (0: no limit), got {cap}")))
    }
}

/// Everything that shapes one run; recorded in its first event so a restart resumes it as it was.
///
/// Defaults come from [`RuntimeBuilder::options`](crate::RuntimeBuilder::options) (the binary:
/// `[policy]` and `[budget]`); [`Runtime::submit_with`](crate::Runtime::submit_with) (HTTP: the
/// submission's body) overrides them per run:
///
/// ```
/// use stepwise::{FailurePolicy, RunOptions};
///
/// let mut options = RunOptions::default();
/// options.policy.on_step_failure = FailurePolicy::Retry;
/// options.policy.max_retries = 2;
/// options.policy.approve_tools = vec!["run_command".into()]; // each call waits for a person
/// options.step_budget.max_tool_calls = 8;
/// options.run_budget.max_tokens = 200_000;
/// let json = serde_json::to_value(&options).unwrap();
/// assert_eq!(json["policy"]["max_retries"], 2);
/// ```
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

/// The most a run's options may ask for, per run (`[server.limits]`): a request asking for more
/// is refused (HTTP 422) rather than trimmed, so that one client cannot make a run that retries
/// or replans without end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunLimits {
    /// Most `policy.max_retries`.
    pub max_retries: u32,
    /// Most `policy.max_replans`.
    pub max_replans: u32,
    /// Most `step_budget.max_iterations`.
    pub max_iterations: u32,
    /// Most `step_budget.max_tool_calls`.
    pub max_tool_calls: u32,
    /// Most `step_budget.timeout_ms`.
    pub step_timeout_ms: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_retries: 10,
            max_replans: 10,
            max_iterations: 64,
            max_tool_calls: 256,
            step_timeout_ms: 3_600_000,
        }
    }
}

/// A run's option asks for more than [`RunLimits`] allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value} is more than this server allows ({limit}, set by server.limits.{limit_key})")]
pub struct LimitExceeded {
    /// The option, e.g. `policy.max_retries`.
    pub field: &'static str,
    /// What was asked for.
    pub value: u64,
    /// The most allowed.
    pub limit: u64,
    /// The `[server.limits]` key that sets it.
    pub limit_key: &'static str,
}

impl RunLimits {
    /// The first option of `options` beyond these limits, if any.
    pub fn check(&self, options: &RunOptions) -> Result<(), LimitExceeded> {
        let (p, b) = (&options.policy, &options.step_budget);
        let checks: [(&'static str, u64, u64, &'static str); 5] = [
            ("policy.max_retries", p.max_retries.into(), self.max_retries.into(), "max_retries"),
            ("policy.max_replans", p.max_replans.into(), self.max_replans.into(), "max_replans"),
            (
                "step_budget.max_iterations",
                b.max_iterations.into(),
                self.max_iterations.into(),
                "max_iterations",
            ),
            (
                "step_budget.max_tool_calls",
                b.max_tool_calls.into(),
                self.max_tool_calls.into(),
                "max_tool_calls",
            ),
            ("step_budget.timeout_ms", b.timeout_ms, self.step_timeout_ms, "step_timeout_ms"),
        ];
        match checks.into_iter().find(|(_, value, limit, _)| value > limit) {
            Some((field, value, limit, limit_key)) => Err(LimitExceeded { field, value, limit, limit_key }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_money_cap_is_refused_naming_the_field() {
        let e = serde_json::from_value::<RunOptions>(serde_json::json!({"run_budget": {"max_cost": -1}}))
            .unwrap_err();
        assert!(e.to_string().contains("max_cost must be a number ≥ 0 (0: no limit), got -1"), "{e}");
        let ok: RunOptions =
            serde_json::from_value(serde_json::json!({"step_budget": {"max_cost": 0.25}})).unwrap();
        assert_eq!(ok.step_budget.max_cost, 0.25);
    }

    #[test]
    fn options_within_the_limits_pass_and_the_first_beyond_them_is_named() {
        let limits = RunLimits::default();
        assert_eq!(limits.check(&RunOptions::default()), Ok(()));
        let mut o = RunOptions::default();
        o.policy.max_retries = 4_000_000_000;
        o.step_budget.timeout_ms = u64::MAX;
        let e = limits.check(&o).unwrap_err();
        assert_eq!((e.field, e.value, e.limit), ("policy.max_retries", 4_000_000_000, 10));
        assert_eq!(
            e.to_string(),
            "policy.max_retries: 4000000000 is more than this server allows (10, set by server.limits.max_retries)"
        );
        o.policy.max_retries = 10;
        assert_eq!(limits.check(&o).unwrap_err().field, "step_budget.timeout_ms");
    }
}
