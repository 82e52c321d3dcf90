//! Model configuration: the `[llm]` section of `config/stepwise.toml`.
//!
//! One default provider/model, and optional per-role overrides (`[llm.roles.planner]` …) so a
//! strong planner can sit beside a cheap executor. Keys never live here: `api_key_env` names the
//! environment variable that holds one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::PerRole;

/// Which provider speaks to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ProviderKind {
    /// Chat Completions (OpenAI, vLLM, llama.cpp, Ollama /v1, LM Studio, OpenRouter …).
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Deterministic, offline: replays a script file.
    #[default]
    Scripted,
}

/// How structured output (plans, decisions, verdicts) is requested from an OpenAI-compatible server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StructuredMode {
    /// `json_schema`, falling back by itself when the server rejects it.
    #[default]
    Auto,
    /// `response_format = {"type":"json_schema", …}`.
    JsonSchema,
    /// `response_format = {"type":"json_object","schema":{…}}` (llama.cpp's server).
    JsonObject,
    /// A forced function call whose arguments are the answer.
    Tool,
    /// The schema in the prompt, the answer validated afterwards.
    Prompt,
}

impl ProviderKind {
    /// The config spelling (its serde name), as in `provider = "openai"`.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl StructuredMode {
    /// The config spelling (its serde name), as in `structured_output = "json_object"`.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Default of `[llm] outage_max_wait_secs`: ten minutes, longer than most deploys and 503
/// spells of a provider.
pub const DEFAULT_OUTAGE_MAX_WAIT_SECS: u64 = 600;

/// The `[llm]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Provider for every role without an override.
    pub provider: ProviderKind,
    /// Model name sent to the provider.
    pub model: String,
    /// Base URL; defaults to `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL`, then the public endpoint.
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key (default `OPENAI_API_KEY` /
    /// `ANTHROPIC_API_KEY`).
    pub api_key_env: Option<String>,
    /// Script file for the `scripted` provider.
    pub script: Option<PathBuf>,
    /// Per-request timeout in seconds.
    pub request_timeout_secs: u64,
    /// Retries on 408, 429, 5xx and connection errors when `outage_max_wait_secs` is 0.
    pub max_retries: u32,
    /// How long a model call waits, in seconds, for a provider that is unavailable (unreachable,
    /// timing out, 5xx, 408, 429) before its run or step fails; 0: no wait, fail after
    /// `max_retries` retries.
    pub outage_max_wait_secs: u64,
    /// How structured output is requested (OpenAI-compatible servers).
    pub structured_output: StructuredMode,
    /// Cap on output tokens per call.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, if set.
    pub temperature: Option<f32>,
    /// Per-role overrides.
    pub roles: RoleOverrides,
    /// The currency of `prices` and of every cost shown (a label; nothing is converted).
    pub price_currency: String,
    /// What each provider's model costs (`[[llm.prices]]`); a model without an entry has an
    /// unknown cost. There are no built-in prices.
    pub prices: Vec<Price>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            provider: ProviderKind::Scripted,
            model: String::new(),
            base_url: None,
            api_key_env: None,
            script: None,
            request_timeout_secs: 120,
            max_retries: 3,
            outage_max_wait_secs: DEFAULT_OUTAGE_MAX_WAIT_SECS,
            structured_output: StructuredMode::Auto,
            max_tokens: None,
            temperature: None,
            roles: RoleOverrides::default(),
            price_currency: "USD".into(),
            prices: Vec::new(),
        }
    }
}

/// Optional model settings per role: `[llm.roles.<role>]`.
pub type RoleOverrides = PerRole<Option<RoleModelConfig>>;

/// What a role overrides; unset fields come from `[llm]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleModelConfig {
    /// Provider.
    pub provider: Option<ProviderKind>,
    /// Model name.
    pub model: Option<String>,
    /// Base URL.
    pub base_url: Option<String>,
    /// Environment variable holding the key.
    pub api_key_env: Option<String>,
}

/// One `[[llm.prices]]` entry: what a provider's model costs per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The provider (`openai`, `anthropic`, `scripted`).
    pub provider: ProviderKind,
    /// The model name as configured (`[llm] model` or a role's `model`).
    pub model: String,
    /// Price of a million prompt tokens.
    pub input_per_mtok: f64,
    /// Price of a million completion tokens.
    pub output_per_mtok: f64,
    /// Price of a million prompt tokens read from the provider's cache; absent: `input_per_mtok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for kind in [ProviderKind::Openai, ProviderKind::Anthropic, ProviderKind::Scripted] {
            assert_eq!(json!(kind), json!(kind.name()));
        }
        let modes = [
            StructuredMode::Auto,
            StructuredMode::JsonSchema,
            StructuredMode::JsonObject,
            StructuredMode::Tool,
            StructuredMode::Prompt,
        ];
        for mode in modes {
            assert_eq!(json!(mode), json!(mode.name()));
        }
        assert_eq!(StructuredMode::JsonObject.name(), "json_object");
    }

    #[test]
    fn role_overrides_read_the_role_tables() {
        let cfg: LlmConfig =
            toml::from_str("provider = \"openai\"\n[roles.verifier]\nmodel = \"small\"\n").unwrap();
        let verifier = cfg.roles.get(crate::llm::AgentRole::Verifier).as_ref().unwrap();
        assert_eq!(verifier.model.as_deref(), Some("small"));
        assert_eq!(cfg.roles.iter().filter(|(_, r)| r.is_some()).count(), 1);
        let back: LlmConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let err = toml::from_str::<LlmConfig>("[roles.boss]\nmodel = \"m\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `boss`"), "{err}");
    }
}
