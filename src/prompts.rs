//! The prompts of the five roles, built in from `config/prompts/*.md`: each role's system prompt
//! (`<role>.md`) and the template of its user message (`<role>.user.md`, see [`user`]).
//!
//! A deployment can replace any of them by putting a file of the same name (`planner.md`,
//! `executor.md`, `verifier.md`, `replanner.md`, `synthesizer.md`, or their `.user.md`
//! templates) in the directory named by `[prompts] dir`; files that are absent keep the built-in
//! text.

use std::path::Path;

use crate::config::ConfigError;
use crate::llm::AgentRole;

pub mod user;

pub use user::{TemplateError, UserPrompts};

/// The system prompt of every role.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    /// Writes the plan as JSON (`plan` schema).
    pub planner: String,
    /// Works one step with tools and ends with a text answer.
    pub executor: String,
    /// Judges a step's output against its expected outcome (`step_verdict` schema).
    pub verifier: String,
    /// Decides how the run goes on (`replan_decision` schema).
    pub replanner: String,
    /// Writes the final answer from the step results.
    pub synthesizer: String,
    /// The user-message templates of every role.
    pub user: UserPrompts,
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            planner: include_str!("../config/prompts/planner.md").to_owned(),
            executor: include_str!("../config/prompts/executor.md").to_owned(),
            verifier: include_str!("../config/prompts/verifier.md").to_owned(),
            replanner: include_str!("../config/prompts/replanner.md").to_owned(),
            synthesizer: include_str!("../config/prompts/synthesizer.md").to_owned(),
            user: UserPrompts::default(),
        }
    }
}

impl Prompts {
    /// The built-in prompts, with each `<role>.md` found in `dir` replacing its role's prompt.
    /// A file that exists but cannot be read (or is not UTF-8) is an error naming it.
    pub fn load(dir: Option<&Path>) -> Result<Prompts, ConfigError> {
        let mut prompts = Prompts { user: UserPrompts::load(dir)?, ..Prompts::default() };
        let Some(dir) = dir else { return Ok(prompts) };
        if !dir.is_dir() {
            return Err(ConfigError::Invalid {
                key: "prompts.dir".into(),
                message: format!("{} is not a directory", dir.display()),
            });
        }
        for role in AgentRole::ALL {
            let path = dir.join(format!("{}.md", role.as_str()));
            match std::fs::read_to_string(&path) {
                Ok(text) => *prompts.get_mut(role) = text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::Read { path, source }),
            }
        }
        Ok(prompts)
    }

    /// The system prompt for `role`.
    pub fn get(&self, role: AgentRole) -> &str {
        match role {
            AgentRole::Planner => &self.planner,
            AgentRole::Executor => &self.executor,
            AgentRole::Verifier => &self.verifier,
            AgentRole::Replanner => &self.replanner,
            AgentRole::Synthesizer => &self.synthesizer,
        }
    }

    fn get_mut(&mut self, role: AgentRole) -> &mut String {
        match role {
            AgentRole::Planner => &mut self.planner,
            AgentRole::Executor => &mut self.executor,
            AgentRole::Verifier => &mut self.verifier,
            AgentRole::Replanner => &mut self.replanner,
            AgentRole::Synthesizer => &mut self.synthesizer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_prompts_are_present_and_state_their_contracts() {
        let p = Prompts::default();
        for role in AgentRole::ALL {
            assert!(p.get(role).len() > 200, "{role} prompt is suspiciously short");
        }
        for key in [
            "\"goal\"",
            "\"steps\"",
            "\"id\"",
            "\"description\"",
            "\"expected_outcome\"",
            "\"tool\"",
            "\"depends_on\"",
        ] {
            assert!(p.planner.contains(key), "planner prompt lacks {key}");
        }
        for key in ["\"passed\"", "\"reason\""] {
            assert!(p.verifier.contains(key), "verifier prompt lacks {key}");
        }
        for key in
            ["\"decision\"", "\"continue\"", "\"replan\"", "\"finish\"", "\"abort\"", "\"final_answer\""]
        {
            assert!(p.replanner.contains(key), "replanner prompt lacks {key}");
        }
    }

    #[test]
    fn load_overrides_only_the_files_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("planner.md"), "custom planner").unwrap();
        std::fs::write(dir.path().join("synthesizer.md"), "custom synthesizer").unwrap();
        std::fs::write(dir.path().join("unrelated.md"), "ignored").unwrap();
        let p = Prompts::load(Some(dir.path())).unwrap();
        let d = Prompts::default();
        assert_eq!(p.planner, "custom planner");
        assert_eq!(p.synthesizer, "custom synthesizer");
        assert_eq!((&p.executor, &p.verifier, &p.replanner), (&d.executor, &d.verifier, &d.replanner));
        assert_eq!(Prompts::load(None).unwrap(), d);
    }

    #[test]
    fn load_reports_bad_dir_and_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Prompts::load(Some(&dir.path().join("nope"))).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "prompts.dir"), "{err}");

        std::fs::write(dir.path().join("executor.md"), [0xff, 0xfe, 0x00]).unwrap();
        let err = Prompts::load(Some(dir.path())).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }) && err.to_string().contains("executor.md"), "{err}");
    }
}
