//! The prompts of the five roles, built in from `config/prompts/`: each role's system prompt
//! (`<role>.md`) and the template of its user message (`<role>.user.md`, see [`user`]).
//!
//! A deployment can replace any of them by putting a file of the same name (`planner.md`,
//! `executor.md`, `verifier.md`, `replanner.md`, `synthesizer.md`, or their `.user.md`
//! templates) in the directory named by `[prompts] dir`; files that are absent keep the built-in
//! text.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::llm::{AgentRole, PerRole};

pub mod user;

pub use user::{TemplateError, UserPrompts};

/// A prompt directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PromptsError {
    /// `[prompts] dir` names something that is not a directory.
    #[error("invalid config value `prompts.dir`: {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A prompt file exists but cannot be read (or is not UTF-8).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A user-message template does not compile, or uses a variable its role does not have.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// The prompts of every role: system prompts and user-message templates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prompts {
    system: SystemPrompts,
    user: UserPrompts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SystemPrompts(PerRole<String>);

impl Default for SystemPrompts {
    fn default() -> Self {
        Self(PerRole::from_fn(|role| built_in(role).system.to_owned()))
    }
}

/// The files `config/prompts/<role>.md` and `<role>.user.md`, built into the binary.
struct BuiltIn {
    system: &'static str,
    user: &'static str,
}

fn built_in(role: AgentRole) -> BuiltIn {
    macro_rules! files {
        ($name:literal) => {
            BuiltIn {
                system: include_str!(concat!("../config/prompts/", $name, ".md")),
                user: include_str!(concat!("../config/prompts/", $name, ".user.md")),
            }
        };
    }
    match role {
        AgentRole::Planner => files!("planner"),
        AgentRole::Executor => files!("executor"),
        AgentRole::Verifier => files!("verifier"),
        AgentRole::Replanner => files!("replanner"),
        AgentRole::Synthesizer => files!("synthesizer"),
    }
}

impl Prompts {
    /// The built-in prompts, with each `<role>.md` and `<role>.user.md` found in `dir` replacing
    /// its role's. A file that exists but cannot be read (or is not UTF-8), or a template that
    /// does not compile, is an error naming it.
    pub fn load(dir: Option<&Path>) -> Result<Prompts, PromptsError> {
        let mut prompts = Prompts::default();
        let Some(dir) = dir else { return Ok(prompts) };
        if !dir.is_dir() {
            return Err(PromptsError::NotADirectory(dir.to_owned()));
        }
        for role in AgentRole::ALL {
            if let Some(text) = read_if_present(&dir.join(format!("{role}.md")))? {
                *prompts.system.0.get_mut(role) = text;
            }
        }
        prompts.user = UserPrompts::load(dir)?;
        Ok(prompts)
    }

    /// The system prompt for `role`.
    pub fn get(&self, role: AgentRole) -> &str {
        self.system.0.get(role)
    }

    /// The user-message templates.
    pub fn user(&self) -> &UserPrompts {
        &self.user
    }
}

/// The file's text, or `None` when there is no such file.
fn read_if_present(path: &Path) -> Result<Option<String>, PromptsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PromptsError::Read { path: path.to_owned(), source }),
    }
}

// Here rather than in `config` so that the config module need not know about prompts.
impl Config {
    /// The prompts: the built-in ones, with files from `prompts.dir` taking precedence.
    pub fn prompts(&self) -> Result<Prompts, PromptsError> {
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
        assert!(
            matches!(err, PromptsError::NotADirectory(_)) && err.to_string().contains("prompts.dir"),
            "{err}"
        );

        std::fs::write(dir.path().join("executor.md"), [0xff, 0xfe, 0x00]).unwrap();
        let err = Prompts::load(Some(dir.path())).unwrap_err();
        assert!(matches!(err, PromptsError::Read { .. }) && err.to_string().contains("executor.md"), "{err}");
    }
}
