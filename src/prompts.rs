//! The system prompts of the five roles, built in from `config/prompts/*.md`.
//!
//! These are only the SYSTEM prompts: the runtime puts the task, the step, the available tools and
//! the results so far into user messages. A deployment can replace any of them by putting a file of
//! the same name (`planner.md`, `executor.md`, `verifier.md`, `replanner.md`, `synthesizer.md`) in
//! the directory named by `[prompts] dir`; files that are absent keep the built-in text.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::llm::{AgentRole, PerRole};

/// The system prompt of every role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompts(PerRole<String>);

impl Default for Prompts {
    fn default() -> Self {
        Self(PerRole::from_fn(|role| built_in(role).to_owned()))
    }
}

/// The prompt `config/prompts/<role>.md` built into the binary.
fn built_in(role: AgentRole) -> &'static str {
    match role {
        AgentRole::Planner => include_str!("../config/prompts/planner.md"),
        AgentRole::Executor => include_str!("../config/prompts/executor.md"),
        AgentRole::Verifier => include_str!("../config/prompts/verifier.md"),
        AgentRole::Replanner => include_str!("../config/prompts/replanner.md"),
        AgentRole::Synthesizer => include_str!("../config/prompts/synthesizer.md"),
    }
}

impl Prompts {
    /// The built-in prompts, with each `<role>.md` found in `dir` replacing its role's prompt.
    /// A file that exists but cannot be read (or is not UTF-8) is an error naming it.
    pub fn load(dir: Option<&Path>) -> Result<Prompts, ConfigError> {
        let mut prompts = Prompts::default();
        let Some(dir) = dir else { return Ok(prompts) };
        if !dir.is_dir() {
            return Err(ConfigError::Invalid {
                key: "prompts.dir".into(),
                message: format!("{} is not a directory", dir.display()),
            });
        }
        for role in AgentRole::ALL {
            let path = dir.join(format!("{role}.md"));
            match std::fs::read_to_string(&path) {
                Ok(text) => *prompts.0.get_mut(role) = text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::Read { path, source }),
            }
        }
        Ok(prompts)
    }

    /// The system prompt for `role`.
    pub fn get(&self, role: AgentRole) -> &str {
        self.0.get(role)
    }
}

// Here rather than in `config` so that the config module need not know about prompts (it would
// depend on this module, which depends on it for its errors).
impl Config {
    /// The system prompts: the built-in ones, with files from `prompts.dir` taking precedence.
    pub fn prompts(&self) -> Result<Prompts, ConfigError> {
        Prompts::load(self.prompts.dir.as_deref())
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
            assert!(p.get(AgentRole::Planner).contains(key), "planner prompt lacks {key}");
        }
        for key in ["\"passed\"", "\"reason\""] {
            assert!(p.get(AgentRole::Verifier).contains(key), "verifier prompt lacks {key}");
        }
        for key in
            ["\"decision\"", "\"continue\"", "\"replan\"", "\"finish\"", "\"abort\"", "\"final_answer\""]
        {
            assert!(p.get(AgentRole::Replanner).contains(key), "replanner prompt lacks {key}");
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
        assert_eq!(p.get(AgentRole::Planner), "custom planner");
        assert_eq!(p.get(AgentRole::Synthesizer), "custom synthesizer");
        assert_eq!(
            (p.get(AgentRole::Executor), p.get(AgentRole::Verifier), p.get(AgentRole::Replanner)),
            (d.get(AgentRole::Executor), d.get(AgentRole::Verifier), d.get(AgentRole::Replanner))
        );
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
