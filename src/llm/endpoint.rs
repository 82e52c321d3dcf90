//! What the network providers share about where and as whom they call: the model, base URL and
//! key variable a role inherits from `[llm]`, and base URL checks.
//!
//! Its own module (below both providers and the model builder) so that neither provider depends
//! on the other or on [`super::providers`], which depends on both.

use std::time::Duration;

use super::LlmError;
use super::config::{LlmConfig, ProviderKind, RoleModelConfig};
use super::http::RetryPolicy;

/// Where and as whom a network provider calls, resolved from `[llm]`, a role override and the
/// environment.
pub(crate) struct Endpoint {
    /// The model name.
    pub model: String,
    /// The base URL, normalised.
    pub base_url: String,
    /// The variable the key was looked up in (for error messages).
    pub key_var: String,
    /// The key, if set and not blank.
    pub api_key: Option<String>,
}

/// A provider, and the environment variables and public endpoint it falls back on.
pub(crate) struct Defaults {
    /// The provider.
    pub kind: ProviderKind,
    /// The variable naming the base URL (`OPENAI_BASE_URL`).
    pub base_url_var: &'static str,
    /// The public endpoint.
    pub base_url: &'static str,
    /// The variable holding the key unless `api_key_env` names another.
    pub api_key_var: &'static str,
}

/// The [`Endpoint`] of a provider for a role: see [`inherited`] and [`Inherited::base_url`].
pub(crate) fn endpoint(
    cfg: &LlmConfig,
    role: Option<&RoleModelConfig>,
    defaults: &Defaults,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Endpoint, LlmError> {
    let inh = inherited(cfg, role, defaults.kind)?;
    let base_url = inh.base_url(env, defaults.base_url_var, defaults.base_url)?;
    let (key_var, api_key) = inh.api_key(env, defaults.api_key_var);
    Ok(Endpoint { model: inh.model, base_url, key_var, api_key })
}

/// The transport policy `[llm]` sets (timeout, retries, outage wait; the backoff is built in).
pub(crate) fn configured_policy(cfg: &LlmConfig) -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(cfg.request_timeout_secs),
        max_retries: cfg.max_retries,
        outage_max_wait: Duration::from_secs(cfg.outage_max_wait_secs),
        ..RetryPolicy::default()
    }
}

/// The transport policy of a provider's settings (the rest of the policy built in).
pub(crate) fn transport_policy(
    timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
    outage_max_wait: Duration,
) -> RetryPolicy {
    RetryPolicy { timeout, max_retries, backoff_base, outage_max_wait, ..RetryPolicy::default() }
}

/// A temperature as sent: through its decimal text, so 0.2f32 goes as 0.2 rather than
/// 0.20000000298….
pub(crate) fn wire_temperature(t: f32) -> f64 {
    t.to_string().parse().unwrap_or(f64::from(t))
}

/// What a network provider takes from `[llm]` and the role override.
pub(crate) struct Inherited {
    pub model: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
}

impl Inherited {
    /// The base URL: the inherited one, else the environment variable `var`, else `default`;
    /// normalised (no trailing slash, no credentials).
    pub(super) fn base_url(
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
    pub(super) fn api_key(
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
