//! What the network providers share about where and as whom they call: the model, base URL and
//! key variable a role inherits from `[llm]`, and base URL checks.
//!
//! Its own module (below both providers and the model builder) so that neither provider depends
//! on the other or on [`super::providers`], which depends on both.

use super::LlmError;
use super::config::{LlmConfig, ProviderKind, RoleModelConfig};

/// What a network provider takes from `[llm]` and the role override.
pub(crate) struct Inherited {
    pub model: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
}

impl Inherited {
    /// The base URL: the inherited one, else the environment variable `var`, else `default`;
    /// normalised (no trailing slash, no credentials).
    pub fn base_url(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        var: &str,
        default: &str,
    ) -> Result<String, LlmError> {
        let url = self
            .base_url
            .clone()
            .or_else(|| env(var).filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| default.to_owned());
        normalize_base_url(&url)
    }

    /// The name of the variable holding the key (`default_var` unless configured) and the key
    /// it holds, if set and not blank.
    pub fn api_key(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        default_var: &str,
    ) -> (String, Option<String>) {
        let var = self.api_key_env.clone().unwrap_or_else(|| default_var.to_owned());
        let key = env(&var).map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
        (var, key)
    }
}

/// The model, base URL and key variable for `kind`: the role's own values, else `[llm]`'s when
/// `[llm].provider` is `kind`. Errors when no model name results.
pub(crate) fn inherited(
    cfg: &LlmConfig,
    role: Option<&RoleModelConfig>,
    kind: ProviderKind,
) -> Result<Inherited, LlmError> {
    let top = (cfg.provider == kind).then_some(cfg);
    let pick = |own: Option<&String>, top_value: Option<&String>| own.or(top_value).cloned();
    let model = pick(role.and_then(|r| r.model.as_ref()), top.map(|c| &c.model))
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| {
            let name = kind.name();
            LlmError::Config(format!(
                "the {name} provider needs a model name: set `model` in [llm] or pass --model M"
            ))
        })?;
    Ok(Inherited {
        model,
        base_url: pick(role.and_then(|r| r.base_url.as_ref()), top.and_then(|c| c.base_url.as_ref())),
        api_key_env: pick(
            role.and_then(|r| r.api_key_env.as_ref()),
            top.and_then(|c| c.api_key_env.as_ref()),
        ),
    })
}

/// Checks a base URL (http or https) and drops a trailing slash.
pub(crate) fn normalize_base_url(url: &str) -> Result<String, LlmError> {
    let trimmed = url.trim().trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(trimmed.to_owned()),
        _ => Err(LlmError::Config(format!(
            "invalid model base URL `{trimmed}` (expected http:// or https://)"
        ))),
    }
}
