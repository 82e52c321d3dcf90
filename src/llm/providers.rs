//! Building the per-role models from the `[llm]` config.
//!
//! Each role resolves its settings (the role's override over `[llm]`); roles whose resolved
//! settings are identical share one model instance (one HTTP connection pool, one script).
//! A role whose override switches provider does not inherit `[llm]`'s `model`, `base_url` or
//! `api_key_env`, which belong to the other provider; timeouts, retries, `structured_output`,
//! `max_tokens` and `temperature` always come from `[llm]`.

use std::path::PathBuf;
use std::sync::Arc;

use super::anthropic::{AnthropicModel, AnthropicSettings};
use super::config::{LlmConfig, ProviderKind, RoleModelConfig};
use super::openai::{OpenAiModel, OpenAiSettings};
use super::scripted::ScriptedModel;
use super::{AgentRole, LlmError, Models, PerRole, SharedModel};

/// Builds one model per role from `cfg`. `env` looks up environment variables (API keys,
/// `OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`); pass [`process_env`] outside tests.
pub fn build_models(cfg: &LlmConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Models, LlmError> {
    let mut built: Vec<(Resolved, SharedModel)> = Vec::new();
    let per_role = PerRole::try_from_fn(|role| -> Result<SharedModel, LlmError> {
        let role_cfg = role_override(cfg, role);
        let in_role = |e: LlmError| match (e, role_cfg) {
            (LlmError::Config(m), Some(_)) => LlmError::Config(format!("[llm.roles.{role}]: {m}")),
            (e, _) => e,
        };
        let resolved = resolve(cfg, role_cfg, env).map_err(in_role)?;
        if let Some((_, m)) = built.iter().find(|(r, _)| *r == resolved) {
            return Ok(m.clone());
        }
        let m = instantiate(&resolved).map_err(in_role)?;
        built.push((resolved, m.clone()));
        Ok(m)
    })?;
    Ok(Models::per_role(per_role))
}

/// The real process environment, for [`build_models`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The override section for `role`, if any.
pub fn role_override(cfg: &LlmConfig, role: AgentRole) -> Option<&RoleModelConfig> {
    cfg.roles.get(role).as_ref()
}

/// A role's fully resolved model settings; equal values share one model.
#[derive(Debug, PartialEq)]
enum Resolved {
    OpenAi(OpenAiSettings),
    Anthropic(AnthropicSettings),
    Scripted(PathBuf),
}

fn resolve(
    cfg: &LlmConfig,
    role: Option<&RoleModelConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, LlmError> {
    match role.and_then(|r| r.provider).unwrap_or(cfg.provider) {
        ProviderKind::Openai => OpenAiSettings::from_config(cfg, role, env).map(Resolved::OpenAi),
        ProviderKind::Anthropic => AnthropicSettings::from_config(cfg, role, env).map(Resolved::Anthropic),
        ProviderKind::Scripted => cfg.script.clone().map(Resolved::Scripted).ok_or_else(|| {
            LlmError::Config(
                "the scripted provider needs a script file: set `script` in [llm] or pass --script FILE"
                    .into(),
            )
        }),
    }
}

fn instantiate(resolved: &Resolved) -> Result<SharedModel, LlmError> {
    Ok(match resolved {
        Resolved::OpenAi(s) => Arc::new(OpenAiModel::new(s.clone())?),
        Resolved::Anthropic(s) => Arc::new(AnthropicModel::new(s.clone())?),
        Resolved::Scripted(path) => Arc::new(ScriptedModel::from_file(path)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::config::RoleOverrides;

    fn env(k: &str) -> Option<String> {
        match k {
            "OPENAI_API_KEY" => Some("sk-o".into()),
            "ANTHROPIC_API_KEY" => Some("sk-a".into()),
            _ => None,
        }
    }

    #[test]
    fn scripted_without_script_is_a_clear_error() {
        let err = build_models(&LlmConfig::default(), &env).unwrap_err();
        assert!(matches!(&err, LlmError::Config(m) if m.contains("script")), "{err}");
    }

    #[test]
    fn missing_keys() {
        let cfg = LlmConfig { provider: ProviderKind::Anthropic, model: "c".into(), ..LlmConfig::default() };
        let err = build_models(&cfg, &|_| None).unwrap_err();
        assert!(matches!(&err, LlmError::Config(m) if m.contains("ANTHROPIC_API_KEY")), "{err}");

        let cfg = LlmConfig { provider: ProviderKind::Openai, model: "g".into(), ..LlmConfig::default() };
        let err = build_models(&cfg, &|_| None).unwrap_err();
        assert!(matches!(&err, LlmError::Config(m) if m.contains("OPENAI_API_KEY")), "{err}");

        let local = LlmConfig { base_url: Some("http://127.0.0.1:11434/v1".into()), ..cfg };
        let models = build_models(&local, &|_| None).unwrap();
        assert_eq!(models.get(AgentRole::Planner).provider(), "openai");
    }

    #[test]
    fn roles_share_identical_models_and_override_others() {
        let cfg = LlmConfig {
            provider: ProviderKind::Openai,
            model: "small".into(),
            roles: RoleOverrides::default()
                .with(
                    AgentRole::Planner,
                    Some(RoleModelConfig {
                        provider: Some(ProviderKind::Anthropic),
                        model: Some("claude-big".into()),
                        ..RoleModelConfig::default()
                    }),
                )
                .with(
                    AgentRole::Verifier,
                    Some(RoleModelConfig { model: Some("small".into()), ..RoleModelConfig::default() }),
                ),
            ..LlmConfig::default()
        };
        let models = build_models(&cfg, &env).unwrap();
        let planner = models.get(AgentRole::Planner);
        assert_eq!((planner.provider(), planner.model_name()), ("anthropic", "claude-big"));
        let executor = models.get(AgentRole::Executor);
        assert_eq!((executor.provider(), executor.model_name()), ("openai", "small"));
        for role in [AgentRole::Verifier, AgentRole::Replanner, AgentRole::Synthesizer] {
            assert!(Arc::ptr_eq(executor, models.get(role)), "{role} should share the executor's model");
        }
        assert!(!Arc::ptr_eq(executor, planner));
    }

    #[test]
    fn switching_provider_needs_its_own_model() {
        let cfg = LlmConfig {
            provider: ProviderKind::Openai,
            model: "gpt".into(),
            roles: RoleOverrides::default().with(
                AgentRole::Synthesizer,
                Some(RoleModelConfig {
                    provider: Some(ProviderKind::Anthropic),
                    ..RoleModelConfig::default()
                }),
            ),
            ..LlmConfig::default()
        };
        let err = build_models(&cfg, &env).unwrap_err();
        assert!(matches!(&err, LlmError::Config(m) if m.contains("[llm.roles.synthesizer]")), "{err}");
    }
}
