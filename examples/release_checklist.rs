//! A release orchestrator: CI → smoke test → deploy → verify, with a replanner that reacts to
//! failures.
//!
//! Shows:
//! - typed domain types of your own ([`ReleasePlan`], [`ReleaseStep`], [`ReplanDecision`],
//!   [`StepResult`]; serde + schemars) converted to and from stepwise's plan JSON: a
//!   `ReleasePlan` becomes the planner's answer, a `ReplanDecision` the replanner's, and the
//!   run's steps come back as `StepResult`s;
//! - your own tools made with [`typed_tool`]: fake CI / smoke / deploy / verify adapters that read
//!   a shared [`Scenario`] and record every call;
//! - policy `on_step_failure = replan` with `max_retries = 0`, and the three ways a run ends:
//!   - `happy`: every step completes, no replan;
//!   - `smoke-fails`: smoke fails on staging; the replanner inserts `fix_smoke` (a hotfix build,
//!     depending on the completed `ci` step), then re-runs smoke, deploys and verifies: the run
//!     completes at plan revision 2 and `ci` is not run again;
//!   - `verify-fails`: verification fails after the deploy; the replanner aborts and the run
//!     fails with its reason.
//!
//! How the script stands in for the LLM. The model is the offline scripted one, with scripts
//! built in code per scenario. For every step the executor's script says "call this adapter",
//! then gives the summary it would write on success; the script never says that a step fails.
//! Failures come from the adapters: a scripted model cannot read, so [`ReadsObservations`], a
//! thin wrapper around it, plays the one judgement a real model would make here — when the
//! adapter's observation is an error, the executor gives the step up (its call fails, so the
//! step fails and the failure policy applies) instead of reading the next scripted line. A real
//! model would instead answer that the step could not be done; with `verify_outcome` on, the
//! verifier then fails the step the same way. What the replanner decides (fix, or abort) is
//! scripted per scenario, as its answer to that failure.
//!
//! Run it:
//!
//! ```text
//! cargo run --example release_checklist                   # all three scenarios
//! cargo run --example release_checklist -- smoke-fails    # or happy, verify-fails
//! cargo test --example release_checklist
//! ```

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stepwise::Stepwise;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::llm::{AgentRole, ChatModel, ChatRequest, ChatResponse, LlmError, Role};
use stepwise::options::{FailurePolicy, RunOptions};
use stepwise::plan::{PlanSpec, StepSpec, StepStatus};
use stepwise::run::{Decision, RunEvent, RunResult};
use stepwise::tools::{ToolError, typed_tool};

/// The version this example releases.
pub const VERSION: &str = "v2.4.0";

/// Which world the fake adapters live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Everything passes.
    Happy,
    /// Smoke tests fail on staging until a hotfix has been built.
    SmokeFails,
    /// Production verification fails after the deploy.
    VerifyFails,
}

impl Scenario {
    /// Every scenario, in the order `main` runs them.
    pub const ALL: [Scenario; 3] = [Scenario::Happy, Scenario::SmokeFails, Scenario::VerifyFails];
}

// ---------------------------------------------------------------------------------------------
// The release domain, typed, and its conversion to stepwise's plan JSON.

/// What a release step does; each action is carried out by one adapter tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Build and test the release branch.
    Ci,
    /// Build and test a hotfix for a failed smoke check.
    Hotfix,
    /// Smoke-test the release on staging.
    Smoke,
    /// Deploy to production.
    Deploy,
    /// Verify production after the deploy.
    Verify,
}

impl Action {
    /// The adapter tool that carries the action out.
    pub fn tool(self) -> &'static str {
        match self {
            Action::Ci | Action::Hotfix => "run_ci",
            Action::Smoke => "smoke_test",
            Action::Deploy => "deploy",
            Action::Verify => "verify_deploy",
        }
    }

    fn description(self, version: &str) -> String {
        match self {
            Action::Ci => format!("Run CI (build, unit and integration tests) on release/{version}"),
            Action::Hotfix => format!("Build and test a hotfix for the failed smoke check of {version}"),
            Action::Smoke => format!("Smoke-test {version} on staging"),
            Action::Deploy => format!("Deploy {version} to production"),
            Action::Verify => format!("Verify production health after deploying {version}"),
        }
    }

    fn expected_outcome(self) -> &'static str {
        match self {
            Action::Ci | Action::Hotfix => "CI green",
            Action::Smoke => "every smoke check passes on staging",
            Action::Deploy => "all production pods ready",
            Action::Verify => "error rate under 1% and latency normal",
        }
    }

    /// The arguments the executor passes to the adapter.
    fn arguments(self, version: &str) -> Value {
        match self {
            Action::Ci => json!({"git_ref": format!("release/{version}")}),
            Action::Hotfix => json!({"git_ref": format!("hotfix/{version}-checkout-timeout")}),
            Action::Smoke => json!({"environment": "staging", "version": version}),
            Action::Deploy | Action::Verify => json!({"environment": "production", "version": version}),
        }
    }

    /// What the (scripted) executor answers once the adapter reported success.
    fn summary(self, version: &str) -> String {
        match self {
            Action::Ci => {
                format!("CI is green on release/{version}: build ok, unit and integration tests pass.")
            }
            Action::Hotfix => "The hotfix for the checkout timeout builds and passes CI.".to_owned(),
            Action::Smoke => format!("All 24 smoke checks pass on staging for {version}."),
            Action::Deploy => format!("{version} is deployed to production; 12/12 pods are ready."),
            Action::Verify => "Production is healthy: error rate 0.2%, p95 latency 180 ms.".to_owned(),
        }
    }
}

/// One step of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseStep {
    /// Step id, unique in the run.
    pub id: String,
    /// What it does.
    pub action: Action,
    /// Steps that must complete first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

impl ReleaseStep {
    fn new(id: &str, action: Action, depends_on: &[&str]) -> Self {
        Self { id: id.to_owned(), action, depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect() }
    }

    /// The step in stepwise's wire format; the adapter is the step's tool hint.
    pub fn to_step_spec(&self, version: &str) -> StepSpec {
        StepSpec {
            id: self.id.as_str().into(),
            description: self.action.description(version),
            expected_outcome: self.action.expected_outcome().to_owned(),
            tool: Some(self.action.tool().to_owned()),
            depends_on: self.depends_on.iter().map(|d| d.as_str().into()).collect(),
        }
    }
}

/// A release plan: the version and its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReleasePlan {
    /// The version released.
    pub version: String,
    /// The steps, in order.
    pub steps: Vec<ReleaseStep>,
}

impl ReleasePlan {
    /// The standard release: ci → smoke → deploy → verify.
    pub fn standard(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            steps: vec![
                ReleaseStep::new("ci", Action::Ci, &[]),
                ReleaseStep::new("smoke", Action::Smoke, &["ci"]),
                ReleaseStep::new("deploy", Action::Deploy, &["smoke"]),
                ReleaseStep::new("verify", Action::Verify, &["deploy"]),
            ],
        }
    }

    /// The plan in stepwise's wire format, as the planner returns it.
    pub fn to_plan_spec(&self) -> PlanSpec {
        PlanSpec {
            goal: format!("Release {} to production safely", self.version),
            steps: self.steps.iter().map(|s| s.to_step_spec(&self.version)).collect(),
        }
    }
}

/// What the release's replanner decides after a failed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ReplanDecision {
    /// Replace the remaining steps.
    Replan {
        /// Why.
        reason: String,
        /// The new remaining steps (may depend on completed ones).
        steps: Vec<ReleaseStep>,
    },
    /// Stop the release.
    Abort {
        /// Why.
        reason: String,
    },
}

impl ReplanDecision {
    /// After a failed smoke test: build a hotfix on top of the completed CI run, smoke-test
    /// again, then deploy and verify.
    pub fn fix_smoke() -> Self {
        ReplanDecision::Replan {
            reason: "smoke failed on staging (checkout timeout): build a hotfix, re-run smoke, then deploy and verify"
                .to_owned(),
            steps: vec![
                ReleaseStep::new("fix_smoke", Action::Hotfix, &["ci"]),
                ReleaseStep::new("smoke_rerun", Action::Smoke, &["fix_smoke"]),
                ReleaseStep::new("deploy", Action::Deploy, &["smoke_rerun"]),
                ReleaseStep::new("verify", Action::Verify, &["deploy"]),
            ],
        }
    }

    /// After failed verification in production: stop, a person has to roll back.
    pub fn abort_after_verify() -> Self {
        ReplanDecision::Abort {
            reason: "production verification failed after the deploy (error rate 7.3%, limit 1%); \
                     rolling back needs a person, so the release stops here"
                .to_owned(),
        }
    }

    /// The decision in stepwise's wire format, as the replanner returns it.
    pub fn to_wire(&self, version: &str) -> stepwise::run::ReplanDecision {
        match self {
            ReplanDecision::Replan { reason, steps } => stepwise::run::ReplanDecision {
                decision: Decision::Replan,
                reason: reason.clone(),
                steps: steps.iter().map(|s| s.to_step_spec(version)).collect(),
                final_answer: None,
            },
            ReplanDecision::Abort { reason } => stepwise::run::ReplanDecision {
                decision: Decision::Abort,
                reason: reason.clone(),
                steps: vec![],
                final_answer: None,
            },
        }
    }
}

/// A finished step, read back from the run's plan JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepResult {
    /// Step id.
    pub id: String,
    /// Final status.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The executor's summary, when completed.
    pub output: Option<String>,
    /// What went wrong, when failed.
    pub error: Option<String>,
}

impl StepResult {
    /// Every step of the run's latest plan revision, parsed from the `RunResult` JSON (what
    /// `stepwise run --json` prints), so the same code reads results from the CLI or the API.
    pub fn from_run(result: &RunResult) -> Result<Vec<StepResult>, serde_json::Error> {
        let json = serde_json::to_value(result)?;
        serde_json::from_value(json["plan"]["steps"].clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Fake adapters, as tools.

/// One adapter call, as the adapters recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterCall {
    /// The adapter (tool) name.
    pub adapter: &'static str,
    /// Its main argument: the git ref or the environment.
    pub target: String,
    /// Whether it reported success.
    pub ok: bool,
}

impl std::fmt::Display for AdapterCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.adapter, self.target, if self.ok { "ok" } else { "FAILED" })
    }
}

/// The adapters' shared world: the scenario, whether a hotfix exists, and the call log.
#[derive(Debug)]
pub struct Adapters {
    scenario: Scenario,
    hotfix_built: AtomicBool,
    calls: Mutex<Vec<AdapterCall>>,
}

impl Adapters {
    /// A fresh world for `scenario`.
    pub fn new(scenario: Scenario) -> Arc<Self> {
        Arc::new(Self { scenario, hotfix_built: AtomicBool::new(false), calls: Mutex::new(vec![]) })
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<AdapterCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(
        &self,
        adapter: &'static str,
        target: &str,
        outcome: Result<String, String>,
    ) -> Result<String, ToolError> {
        let call = AdapterCall { adapter, target: target.to_owned(), ok: outcome.is_ok() };
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
        outcome.map_err(ToolError::Failed)
    }

    fn ci(&self, git_ref: &str) -> Result<String, ToolError> {
        if git_ref.starts_with("hotfix/") {
            self.hotfix_built.store(true, Ordering::SeqCst);
        }
        self.record(
            "run_ci",
            git_ref,
            Ok(format!("CI passed for {git_ref}: build ok, 412 unit + 38 integration tests green")),
        )
    }

    fn smoke(&self, env: &str, version: &str) -> Result<String, ToolError> {
        let outcome = if self.scenario == Scenario::SmokeFails && !self.hotfix_built.load(Ordering::SeqCst) {
            Err(format!(
                "smoke tests failed on {env}: POST /checkout timed out after 30s (3 of 24 checks failed)"
            ))
        } else {
            Ok(format!("24/24 smoke checks passed on {env} for {version}"))
        };
        self.record("smoke_test", env, outcome)
    }

    fn deploy(&self, env: &str, version: &str) -> Result<String, ToolError> {
        self.record("deploy", env, Ok(format!("deployed {version} to {env}: 12/12 pods ready")))
    }

    fn verify(&self, env: &str, version: &str) -> Result<String, ToolError> {
        let outcome = if self.scenario == Scenario::VerifyFails {
            Err(format!(
                "verification failed on {env} for {version}: error rate 7.3% over 5 minutes (limit 1.0%)"
            ))
        } else {
            Ok(format!("{env} healthy on {version}: error rate 0.2%, p95 latency 180 ms"))
        };
        self.record("verify_deploy", env, outcome)
    }
}

/// Arguments of `run_ci`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CiArgs {
    /// The git ref to build and test, e.g. `release/v2.4.0`.
    git_ref: String,
}

/// Arguments of the smoke, deploy and verify adapters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EnvArgs {
    /// `staging` or `production`.
    environment: String,
    /// The version, e.g. `v2.4.0`.
    version: String,
}

/// The four adapters as tools, sharing `adapters`.
fn adapter_tools(adapters: &Arc<Adapters>) -> stepwise::tools::ToolRegistry {
    let mut tools = stepwise::tools::ToolRegistry::new();
    let a = adapters.clone();
    tools.register(typed_tool("run_ci", "Builds and tests a git ref in CI", move |args: CiArgs, _ctx| {
        let result = a.ci(&args.git_ref);
        async move { result }
    }));
    let a = adapters.clone();
    tools.register(typed_tool(
        "smoke_test",
        "Runs the smoke-test suite against an environment",
        move |args: EnvArgs, _ctx| {
            let result = a.smoke(&args.environment, &args.version);
            async move { result }
        },
    ));
    let a = adapters.clone();
    tools.register(typed_tool(
        "deploy",
        "Deploys a version to an environment",
        move |args: EnvArgs, _ctx| {
            let result = a.deploy(&args.environment, &args.version);
            async move { result }
        },
    ));
    let a = adapters.clone();
    tools.register(typed_tool(
        "verify_deploy",
        "Checks an environment's health (error rate, latency) after a deploy",
        move |args: EnvArgs, _ctx| {
            let result = a.verify(&args.environment, &args.version);
            async move { result }
        },
    ));
    tools
}

// ---------------------------------------------------------------------------------------------
// The model: a script per scenario, and the wrapper that reads observations.

/// The script of `scenario`: the plan, each step's adapter call and success summary, the
/// replanner's answer to a failure, and the synthesis.
pub fn script(scenario: Scenario, plan: &ReleasePlan) -> Value {
    let decision = match scenario {
        Scenario::Happy => None,
        Scenario::SmokeFails => Some(ReplanDecision::fix_smoke()),
        Scenario::VerifyFails => Some(ReplanDecision::abort_after_verify()),
    };
    let mut all_steps = plan.steps.clone();
    if let Some(ReplanDecision::Replan { steps, .. }) = &decision {
        all_steps.extend(steps.iter().cloned());
    }
    let mut steps = serde_json::Map::new();
    for s in &all_steps {
        let call = json!({"name": s.action.tool(), "arguments": s.action.arguments(&plan.version)});
        steps.insert(s.id.clone(), json!([{"tool_calls": [call]}, s.action.summary(&plan.version)]));
    }
    let replanner: Vec<Value> = decision.iter().map(|d| json!({"json": d.to_wire(&plan.version)})).collect();
    let synthesizer: Vec<Value> = match scenario {
        Scenario::Happy => vec![json!(format!(
            "Release {} is live: CI green, 24/24 smoke checks on staging, deployed to production (12/12 pods), \
             production verified healthy.",
            plan.version
        ))],
        Scenario::SmokeFails => vec![json!(format!(
            "Release {} is live after one fix: the first smoke run failed (POST /checkout timeout), a hotfix \
             passed CI, the smoke re-run passed, and the deploy was verified healthy.",
            plan.version
        ))],
        Scenario::VerifyFails => vec![],
    };
    json!({
        "model": "scripted-release",
        "planner": [{"json": plan.to_plan_spec()}],
        "steps": steps,
        "replanner": replanner,
        "synthesizer": synthesizer,
    })
}

/// Wraps the scripted model with the one judgement a script cannot make: reading a tool's
/// observation. An executor turn that follows a failed tool call gives the step up (the call
/// fails, quoting the observation) instead of replaying the next scripted line; every other call
/// goes to the script unchanged.
pub struct ReadsObservations(pub ScriptedModel);

#[async_trait::async_trait]
impl ChatModel for ReadsObservations {
    fn model_name(&self) -> &str {
        self.0.model_name()
    }
    fn provider(&self) -> &str {
        self.0.provider()
    }
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        // The executor feeds a failed tool call back as an observation starting with "error: ".
        if request.context.role == AgentRole::Executor
            && let Some(last) = request.messages.last()
            && last.role == Role::Tool
            && let Some(failure) = last.content.strip_prefix("error: ")
        {
            let step = request.context.step.as_ref().map_or("?", |s| s.as_str());
            return Err(LlmError::Script(format!("giving up on step {step}; tool result: {failure}")));
        }
        self.0.chat(request).await
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// What a release run produced.
pub struct Release {
    /// The run's result.
    pub result: RunResult,
    /// Its events, in order.
    pub events: Vec<RunEvent>,
    /// The adapters' call log.
    pub calls: Vec<AdapterCall>,
}

/// The run options of a release: a failed step goes to the replanner at once.
pub fn release_options() -> RunOptions {
    let mut options = RunOptions::default();
    options.policy.on_step_failure = FailurePolicy::Replan;
    options.policy.max_retries = 0;
    options
}

/// Runs the standard release of [`VERSION`] in `scenario`, handing each event to `on_event`.
pub async fn release(
    scenario: Scenario,
    on_event: impl FnMut(&RunEvent),
) -> Result<Release, Box<dyn std::error::Error>> {
    let plan = ReleasePlan::standard(VERSION);
    let adapters = Adapters::new(scenario);
    let model = ReadsObservations(ScriptedModel::from_json(script(scenario, &plan))?);
    let workspace = tempfile::tempdir()?;
    let runtime = Stepwise::builder()
        .model(Arc::new(model))
        .tools(adapter_tools(&adapters))
        .options(release_options())
        .workspace_root(workspace.path())
        .build()
        .await?;
    let task = format!("Release {VERSION}: run CI, smoke-test on staging, deploy to production, verify");
    let (result, events) = common::drive(&runtime, &task, on_event).await?;
    runtime.shutdown().await;
    Ok(Release { result, events, calls: adapters.calls() })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenarios = match std::env::args().nth(1) {
        None => Scenario::ALL.to_vec(),
        Some(name) => vec![
            serde_json::from_value(json!(name))
                .map_err(|_| format!("unknown scenario {name:?}: use happy, smoke-fails or verify-fails"))?,
        ],
    };
    for scenario in scenarios {
        println!("\n######## scenario: {}", json!(scenario).as_str().unwrap_or_default());
        let release = release(scenario, common::print_event).await?;
        common::print_summary(&release.result);
        println!("release checklist (typed StepResults):");
        for step in StepResult::from_run(&release.result)? {
            let mark = match step.status {
                StepStatus::Completed => "[x]",
                StepStatus::Failed => "[!]",
                _ => "[ ]",
            };
            println!("  {mark} {:<12} attempts {}", step.id, step.attempts);
        }
        println!("adapter calls:");
        for call in &release.calls {
            println!("  {call}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use stepwise::plan::validate_steps;
    use stepwise::run::{EventKind, RunStatus};

    use super::*;

    fn calls(release: &Release) -> Vec<String> {
        release.calls.iter().map(ToString::to_string).collect()
    }

    fn starts(events: &[RunEvent], id: &str) -> usize {
        events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::StepStarted { step, .. } if step.as_str() == id))
            .count()
    }

    fn statuses(result: &RunResult) -> Vec<(String, StepStatus)> {
        result.plan.steps.iter().map(|s| (s.id.0.clone(), s.status)).collect()
    }

    fn all_completed(ids: &[&str]) -> Vec<(String, StepStatus)> {
        ids.iter().map(|id| ((*id).to_owned(), StepStatus::Completed)).collect()
    }

    #[tokio::test]
    async fn happy_path_completes_every_step_without_replanning() {
        let release = release(Scenario::Happy, |_| {}).await.unwrap();
        let r = &release.result;
        assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
        assert!(!r.replanned);
        assert_eq!(r.plan.revision, 1);
        assert_eq!(statuses(r), all_completed(&["ci", "smoke", "deploy", "verify"]));
        assert_eq!(
            calls(&release),
            [
                "run_ci release/v2.4.0: ok",
                "smoke_test staging: ok",
                "deploy production: ok",
                "verify_deploy production: ok"
            ]
        );
        assert!(r.final_output.as_deref().unwrap().starts_with("Release v2.4.0 is live: CI green"));
        assert!(!release.events.iter().any(|e| e.kind.name() == "StepFailed"));
    }

    #[tokio::test]
    async fn failed_smoke_test_is_fixed_by_a_replan_and_the_release_completes() {
        let release = release(Scenario::SmokeFails, |_| {}).await.unwrap();
        let r = &release.result;
        assert_eq!(r.status, RunStatus::Completed, "{r:#?}");
        assert!(r.replanned);
        assert_eq!(r.plan.revision, 2);
        assert_eq!(r.revisions.len(), 2);
        assert_eq!(statuses(r), all_completed(&["ci", "fix_smoke", "smoke_rerun", "deploy", "verify"]));

        // The failure came from the smoke adapter, and the step failed on it.
        let failed = release
            .events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::StepFailed { step, error, .. } => Some((step.as_str(), error.message.as_str())),
                _ => None,
            })
            .expect("a failed step");
        assert_eq!(failed.0, "smoke");
        assert!(failed.1.contains("POST /checkout timed out"), "{}", failed.1);

        // The replanner answered that failure by inserting fix_smoke after the completed ci step.
        let replanned = release
            .events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::Replanned { revision, caused_by, steps, .. } => {
                    Some((*revision, caused_by.clone(), steps))
                }
                _ => None,
            })
            .expect("a Replanned event");
        assert_eq!(replanned.0, 2);
        assert_eq!(replanned.1.as_ref().map(|s| s.as_str()), Some("smoke"));
        let fix = &replanned.2[0];
        assert_eq!(fix.id.as_str(), "fix_smoke");
        assert_eq!(fix.depends_on, vec!["ci".into()]);

        // The completed CI step ran once; the second run_ci call is the hotfix build.
        assert_eq!(r.plan.steps[0].attempts, 1);
        assert_eq!(starts(&release.events, "ci"), 1);
        assert_eq!(
            calls(&release),
            [
                "run_ci release/v2.4.0: ok",
                "smoke_test staging: FAILED",
                "run_ci hotfix/v2.4.0-checkout-timeout: ok",
                "smoke_test staging: ok",
                "deploy production: ok",
                "verify_deploy production: ok",
            ]
        );
        assert!(r.final_output.as_deref().unwrap().contains("after one fix"));
    }

    #[tokio::test]
    async fn failed_verification_makes_the_replanner_abort_the_release() {
        let release = release(Scenario::VerifyFails, |_| {}).await.unwrap();
        let r = &release.result;
        assert_eq!(r.status, RunStatus::Failed, "{r:#?}");
        assert!(!r.replanned);
        assert!(r.final_output.is_none());
        let ReplanDecision::Abort { reason } = ReplanDecision::abort_after_verify() else { unreachable!() };
        assert_eq!(r.error.as_deref(), Some(format!("aborted by the replanner: {reason}").as_str()));
        let by_id: Vec<(String, StepStatus)> = statuses(r);
        assert_eq!(by_id[..3], all_completed(&["ci", "smoke", "deploy"])[..]);
        assert_eq!(by_id[3], ("verify".to_owned(), StepStatus::Failed));
        assert!(r.plan.steps[3].error.as_deref().unwrap().contains("error rate 7.3%"), "{r:#?}");
        assert_eq!(
            calls(&release),
            [
                "run_ci release/v2.4.0: ok",
                "smoke_test staging: ok",
                "deploy production: ok",
                "verify_deploy production: FAILED"
            ]
        );
        assert_eq!(release.events.last().unwrap().kind.name(), "RunFailed");
    }

    #[test]
    fn typed_plan_and_decisions_are_valid_stepwise_json() {
        let tools = adapter_tools(&Adapters::new(Scenario::Happy));
        let names = tools.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let plan = ReleasePlan::standard(VERSION);
        // Through JSON, as the planner's answer travels.
        let text = serde_json::to_string(&plan.to_plan_spec()).unwrap();
        let spec = PlanSpec::parse(&text).unwrap();
        spec.validate(&names).unwrap();
        assert_eq!(spec.steps[1].tool.as_deref(), Some("smoke_test"));

        let wire = serde_json::to_string(&ReplanDecision::fix_smoke().to_wire(VERSION)).unwrap();
        let decision: stepwise::run::ReplanDecision = serde_json::from_str(&wire).unwrap();
        assert_eq!(decision.decision, Decision::Replan);
        validate_steps(&decision.steps, &["ci".into()], &names).unwrap();
        assert!(
            validate_steps(&decision.steps, &[], &names).is_err(),
            "fix_smoke needs the completed ci step"
        );

        let abort: stepwise::run::ReplanDecision =
            serde_json::from_value(json!(ReplanDecision::abort_after_verify().to_wire(VERSION))).unwrap();
        assert_eq!(abort.decision, Decision::Abort);
        // The example's own decision type round-trips through its schema'd JSON too.
        let own = serde_json::to_value(ReplanDecision::fix_smoke()).unwrap();
        assert_eq!(own["decision"], "replan");
        assert_eq!(serde_json::from_value::<ReplanDecision>(own).unwrap(), ReplanDecision::fix_smoke());
        assert!(schemars::schema_for!(ReleasePlan).as_value()["properties"]["steps"].is_object());
    }

    #[tokio::test]
    async fn step_results_are_read_back_from_the_run_json() {
        let release = release(Scenario::VerifyFails, |_| {}).await.unwrap();
        let results = StepResult::from_run(&release.result).unwrap();
        let ids: Vec<&str> = results.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["ci", "smoke", "deploy", "verify"]);
        assert_eq!(results[0].output.as_deref(), Some(Action::Ci.summary(VERSION).as_str()));
        assert_eq!(results[3].status, StepStatus::Failed);
        assert!(results[3].error.as_deref().unwrap().contains("giving up on step verify"));
    }
}
