//! The user messages of the five roles: templates built in from `config/prompts/<role>.user.md`.
//!
//! The system prompt says who a role is; the user message hands it this call's material (the
//! task, the step, the tools, the results so far). Both are text a deployment may want to change
//! without a rebuild, so both live in `config/prompts/`, and a `<role>.user.md` file in the
//! `[prompts] dir` directory replaces the built-in template of its role.
//!
//! Templates use Jinja syntax ([minijinja]); each role's variables are the fields of its context
//! type below ([`PlannerInput`], [`ExecutorInput`], …). A template is compiled and rendered once
//! against a sample context when it is loaded, so a syntax error or a misspelt variable stops the
//! service at start-up, naming the file and line, instead of failing the first run that uses it.
//! Trailing whitespace of a rendered message is dropped, so a template file may end with a newline.

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use super::{PromptsError, read_if_present};
use crate::llm::AgentRole;

/// A user-message template that does not compile, or refers to a variable its role does not have.
#[derive(Debug, thiserror::Error)]
#[error("prompt template {name}: {source:#}")]
pub struct TemplateError {
    /// The template's file name (`planner.user.md`, …).
    pub name: String,
    /// minijinja's error, which names the line.
    #[source]
    pub source: minijinja::Error,
}

/// What the planner is told: the task and the tools a plan may name.
#[derive(Debug, Serialize)]
pub struct PlannerInput<'a> {
    /// The run's task.
    pub task: &'a str,
    /// The tools steps may use.
    pub tools: Vec<ToolLine<'a>>,
}

/// One tool as the planner sees it.
#[derive(Debug, Serialize)]
pub struct ToolLine<'a> {
    /// The tool's name.
    pub name: &'a str,
    /// What it does.
    pub description: &'a str,
}

/// What an executor is told about its step.
#[derive(Debug, Serialize)]
pub struct ExecutorInput<'a> {
    /// The run's task.
    pub task: &'a str,
    /// The plan's goal (may be empty).
    pub goal: &'a str,
    /// The step's id.
    pub step_id: &'a str,
    /// The step's description.
    pub description: &'a str,
    /// The step's expected outcome (may be empty).
    pub expected_outcome: &'a str,
    /// The tool the plan suggests, if any.
    pub tool: Option<&'a str>,
    /// The results of the steps this one depends on.
    pub inputs: Vec<StepResultLine<'a>>,
}

/// A finished step's result as a later role sees it; `output` is absent for a skipped step.
#[derive(Debug, Serialize)]
pub struct StepResultLine<'a> {
    /// The step's id.
    pub id: &'a str,
    /// The step's description.
    pub description: &'a str,
    /// Its output; `None` when it was skipped.
    pub output: Option<&'a str>,
}

/// What the verifier is told: the step and the result to judge.
#[derive(Debug, Serialize)]
pub struct VerifierInput<'a> {
    /// The step's description.
    pub description: &'a str,
    /// What the step was to achieve.
    pub expected_outcome: &'a str,
    /// The step's answer.
    pub result: &'a str,
}

/// What the replanner is told: the live plan, and the failure that prompted the call if any.
#[derive(Debug, Serialize)]
pub struct ReplannerInput<'a> {
    /// The run's task.
    pub task: &'a str,
    /// The plan's goal.
    pub goal: &'a str,
    /// The plan's revision.
    pub revision: u32,
    /// Every step of the plan, in order.
    pub steps: Vec<PlanStepLine<'a>>,
    /// The failed step and its error, when a failure prompted this call.
    pub failed: Option<FailureLine<'a>>,
}

/// A plan step as the replanner sees it.
#[derive(Debug, Serialize)]
pub struct PlanStepLine<'a> {
    /// The step's id.
    pub id: &'a str,
    /// Its status (`Pending`, `Running`, `Completed`, `Failed`, `Skipped`).
    pub status: String,
    /// Its description.
    pub description: &'a str,
    /// The ids it depends on.
    pub depends_on: Vec<&'a str>,
    /// Its output, for a completed step.
    pub output: Option<&'a str>,
    /// Its error, for a failed or skipped step.
    pub error: Option<&'a str>,
}

/// The failure that prompted a replan.
#[derive(Debug, Serialize)]
pub struct FailureLine<'a> {
    /// The failed step's id.
    pub step: &'a str,
    /// Its error.
    pub error: String,
}

/// What the synthesizer is told: the task and every step's result.
#[derive(Debug, Serialize)]
pub struct SynthesizerInput<'a> {
    /// The run's task.
    pub task: &'a str,
    /// The plan's goal.
    pub goal: &'a str,
    /// Every step's result, in plan order.
    pub results: Vec<StepResultLine<'a>>,
}

/// The compiled user-message templates of every role.
#[derive(Debug, Clone)]
pub struct UserPrompts {
    env: Environment<'static>,
}

impl Default for UserPrompts {
    fn default() -> Self {
        let mut env = environment();
        for role in AgentRole::ALL {
            let added = env.add_template_owned(file_name(role), super::built_in(role).user);
            // Checked by the unit tests, which render every built-in template.
            debug_assert!(added.is_ok(), "built-in {} does not compile", file_name(role));
        }
        Self { env }
    }
}

impl PartialEq for UserPrompts {
    fn eq(&self, other: &Self) -> bool {
        AgentRole::ALL.iter().all(|&role| self.source(role) == other.source(role))
    }
}

impl UserPrompts {
    /// The built-in templates, with each `<role>.user.md` found in `dir` replacing its role's;
    /// every template is compiled and test-rendered before this returns.
    pub(super) fn load(dir: &Path) -> Result<UserPrompts, PromptsError> {
        let mut prompts = UserPrompts::default();
        for role in AgentRole::ALL {
            let name = file_name(role);
            if let Some(text) = read_if_present(&dir.join(&name))? {
                let added = prompts.env.add_template_owned(name.clone(), text);
                added.map_err(|source| TemplateError { name, source })?;
            }
        }
        prompts.check()?;
        Ok(prompts)
    }

    /// The text of `role`'s template (empty if it is missing, which `load` and `default` rule out).
    pub fn source(&self, role: AgentRole) -> String {
        self.env.get_template(&file_name(role)).map(|t| t.source().to_owned()).unwrap_or_default()
    }

    /// The planner's user message.
    pub fn planner(&self, input: &PlannerInput<'_>) -> Result<String, TemplateError> {
        self.render(AgentRole::Planner, input)
    }

    /// An executor's user message (the step it works).
    pub fn executor(&self, input: &ExecutorInput<'_>) -> Result<String, TemplateError> {
        self.render(AgentRole::Executor, input)
    }

    /// The verifier's user message.
    pub fn verifier(&self, input: &VerifierInput<'_>) -> Result<String, TemplateError> {
        self.render(AgentRole::Verifier, input)
    }

    /// The replanner's user message.
    pub fn replanner(&self, input: &ReplannerInput<'_>) -> Result<String, TemplateError> {
        self.render(AgentRole::Replanner, input)
    }

    /// The synthesizer's user message.
    pub fn synthesizer(&self, input: &SynthesizerInput<'_>) -> Result<String, TemplateError> {
        self.render(AgentRole::Synthesizer, input)
    }

    fn render(&self, role: AgentRole, input: &impl Serialize) -> Result<String, TemplateError> {
        let name = file_name(role);
        let rendered = self.env.get_template(&name).and_then(|t| t.render(input));
        let mut text = rendered.map_err(|source| TemplateError { name, source })?;
        text.truncate(text.trim_end().len());
        Ok(text)
    }

    /// Renders every template against a sample with every optional part present, so that a
    /// variable no role has is an error now rather than at the first run.
    fn check(&self) -> Result<(), TemplateError> {
        let line = StepResultLine { id: "s1", description: "d", output: Some("o") };
        let skipped = StepResultLine { id: "s2", description: "d", output: None };
        let tools = vec![ToolLine { name: "t", description: "d" }];
        self.planner(&PlannerInput { task: "t", tools })?;
        self.executor(&ExecutorInput {
            task: "t",
            goal: "g",
            step_id: "s",
            description: "d",
            expected_outcome: "e",
            tool: Some("t"),
            inputs: vec![line, skipped],
        })?;
        self.verifier(&VerifierInput { description: "d", expected_outcome: "e", result: "r" })?;
        let step = PlanStepLine {
            id: "s1",
            status: "Failed".into(),
            description: "d",
            depends_on: vec!["s0"],
            output: Some("o"),
            error: Some("e"),
        };
        let failed = Some(FailureLine { step: "s1", error: "e".into() });
        self.replanner(&ReplannerInput { task: "t", goal: "g", revision: 1, steps: vec![step], failed })?;
        let results = vec![StepResultLine { id: "s1", description: "d", output: None }];
        self.synthesizer(&SynthesizerInput { task: "t", goal: "g", results })?;
        Ok(())
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt variable must be an error, not an empty string the model never notices.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Block tags on their own line leave no blank line behind.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // Prompts are not HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

fn file_name(role: AgentRole) -> String {
    format!("{}.user.md", role.as_str())
}

#[cfg(test)]
mod tests;
