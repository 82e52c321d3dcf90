//! The Anthropic provider: the Messages API (`POST {base}/v1/messages`).
//!
//! Mapping from the runtime's conversation: system turns become the top-level `system` string;
//! assistant tool calls become `tool_use` blocks; tool results become `tool_result` blocks, and
//! consecutive turns of one role (e.g. several tool results) are merged into one turn, since the
//! API wants user and assistant turns to alternate. Structured output uses a forced tool
//! (`tool_choice = {"type":"tool","name":<schema name>}`) whose input is the answer. A streamed
//! call (`stream: true`, for the streaming planner) hands the forced tool's `input_json_delta`
//! (or the text deltas) on as they arrive.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::config::{LlmConfig, ProviderKind, RoleModelConfig};
use super::endpoint::{
    Defaults, Endpoint, configured_policy, endpoint, normalize_base_url, transport_policy, wire_temperature,
};
use super::http::{HttpTransport, RetryPolicy, json_bytes, secret_header};
use super::stream::post_streamed;
use super::{ChatRequest, ChatResponse, LlmError, SinkModel, TextSink};
use response::MessageResponse;
use stream::AnthropicEvents;

mod request;
mod response;
mod stream;

/// The public Anthropic endpoint (without `/v1`).
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent with every request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the request nor the config sets one (the API requires it).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Where the anthropic provider calls when the config does not say.
const ENDPOINT: Defaults = Defaults {
    kind: ProviderKind::Anthropic,
    base_url_var: "ANTHROPIC_BASE_URL",
    base_url: DEFAULT_ANTHROPIC_BASE_URL,
    api_key_var: "ANTHROPIC_API_KEY",
};

/// Everything an [`AnthropicModel`] needs; built by hand or with [`AnthropicSettings::from_config`].
#[derive(Clone, PartialEq)]
pub struct AnthropicSettings {
    /// API base without `/v1`, e.g. `https://api.anthropic.com`.
    pub base_url: String,
    /// The `x-api-key` value.
    pub api_key: String,
    /// Model name sent as `model`.
    pub model: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retries on 429, 5xx (including 529 "overloaded"), connection errors and timeouts.
    pub max_retries: u32,
    /// Default `max_tokens` (a request's own cap wins).
    pub max_tokens: u32,
    /// Sampling temperature, if set.
    pub temperature: Option<f32>,
    /// First retry backoff (doubles per retry).
    pub backoff_base: Duration,
    /// How long a call waits for the provider while it is unavailable (see
    /// [`crate::llm::outage`]); zero (the default here, not in `[llm]`): fail after the retries.
    pub outage_max_wait: Duration,
}

impl std::fmt::Debug for AnthropicSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("backoff_base", &self.backoff_base)
            .field("outage_max_wait", &self.outage_max_wait)
            .finish()
    }
}

impl AnthropicSettings {
    /// Defaults (public endpoint, 120 s timeout, 3 retries, 4096 tokens) for `model` and `api_key`.
    pub fn new(model: impl Into<String>, api_key: impl Into<String>) -> Self {
        let policy = RetryPolicy::default();
        Self {
            base_url: DEFAULT_ANTHROPIC_BASE_URL.into(),
            api_key: api_key.into(),
            model: model.into(),
            timeout: policy.timeout,
            max_retries: policy.max_retries,
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: None,
            backoff_base: policy.backoff_base,
            outage_max_wait: policy.outage_max_wait,
        }
    }

    /// Settings from `[llm]` and an optional per-role override: base URL from the role, else
    /// `[llm].base_url`, else `env("ANTHROPIC_BASE_URL")`, else the public endpoint; the key from
    /// the variable named by `api_key_env` (default `ANTHROPIC_API_KEY`), which must be set.
    pub fn from_config(
        cfg: &LlmConfig,
        role: Option<&RoleModelConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, LlmError> {
        let Endpoint { model, base_url, key_var, api_key } = endpoint(cfg, role, &ENDPOINT, env)?;
        let api_key = api_key.ok_or_else(|| {
            LlmError::Config(format!(
                "the anthropic provider needs an API key: set the {key_var} environment variable"
            ))
        })?;
        let mut s = Self::new(model, api_key);
        let policy = configured_policy(cfg);
        (s.timeout, s.max_retries, s.outage_max_wait) =
            (policy.timeout, policy.max_retries, policy.outage_max_wait);
        s.base_url = base_url;
        s.max_tokens = cfg.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        s.temperature = cfg.temperature;
        Ok(s)
    }
}

/// A model behind the Anthropic Messages API.
#[derive(Debug)]
pub struct AnthropicModel {
    settings: AnthropicSettings,
    http: HttpTransport,
    url: String,
}

impl AnthropicModel {
    /// A model with these settings (no request is made yet).
    pub fn new(settings: AnthropicSettings) -> Result<Self, LlmError> {
        let base_url = normalize_base_url(&settings.base_url)?;
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-api-key"), secret_header(&settings.api_key)?);
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        let policy = transport_policy(
            settings.timeout,
            settings.max_retries,
            settings.backoff_base,
            settings.outage_max_wait,
        );
        let http = HttpTransport::new(policy, headers, Some(settings.api_key.clone()))?;
        let url = format!("{base_url}/v1/messages");
        Ok(Self { settings: AnthropicSettings { base_url, ..settings }, http, url })
    }

    /// The settings in force.
    pub fn settings(&self) -> &AnthropicSettings {
        &self.settings
    }

    /// The exact JSON body sent for `request`. Public for docs and debugging.
    pub fn request_body(&self, request: &ChatRequest) -> Value {
        serde_json::to_value(self.wire_body(request)).unwrap_or_default()
    }

    /// The body of `request`, borrowing from it.
    fn wire_body<'a>(&'a self, request: &'a ChatRequest) -> request::Body<'a> {
        let max_tokens = request.max_tokens.unwrap_or(self.settings.max_tokens);
        let mut body = request::Body::new(&self.settings.model, max_tokens, request);
        body.temperature = self.settings.temperature.map(wire_temperature);
        body
    }

    /// The answer to a call: the message converted, the model named when the answer did not,
    /// and for a structured call the forced tool's input as the text.
    fn parse_response(&self, m: MessageResponse, structured: Option<&str>) -> Result<ChatResponse, LlmError> {
        let mut r = ChatResponse::try_from(m)?;
        if r.model.is_empty() {
            r.model.clone_from(&self.settings.model);
        }
        if let Some(pos) = structured.and_then(|name| r.tool_calls.iter().position(|c| c.name == name)) {
            r.content = r.tool_calls.remove(pos).arguments.to_string();
        }
        Ok(r)
    }
}

#[async_trait::async_trait]
impl SinkModel for AnthropicModel {
    fn model_id(&self) -> &str {
        &self.settings.model
    }

    fn provider_id(&self) -> &str {
        ProviderKind::Anthropic.name()
    }

    /// One call; with a sink, streamed (`"stream": true`) and handed to it as it arrives.
    async fn call(
        &self,
        request: ChatRequest,
        sink: Option<&TextSink<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let mut body = self.wire_body(&request);
        let tool = request.structured.as_ref().map(|s| s.name.as_str());
        let never = |_: u16, _: &str| false;
        let m = match sink {
            None => self.http.post_bytes_with(&self.url, json_bytes(&body)?, &never).await?,
            Some(sink) => {
                body.stream = true;
                let bytes = json_bytes(&body)?;
                post_streamed(&self.http, &self.url, bytes, &never, AnthropicEvents::new(tool), sink).await?
            }
        };
        self.parse_response(m, tool)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::llm::{AgentRole, CallContext, Message};

    fn ctx() -> CallContext {
        CallContext {
            run_id: "r".into(),
            role: AgentRole::Executor,
            step: None,
            attempt: 1,
            trace: Default::default(),
        }
    }

    #[test]
    fn empty_turns_are_dropped_and_same_roles_merged() {
        let m = AnthropicModel::new(AnthropicSettings::new("claude-test", "k")).unwrap();
        let req = ChatRequest {
            context: ctx(),
            messages: vec![
                Message::system("S"),
                Message::user("a"),
                Message::assistant("", vec![]),
                Message::user("b"),
            ],
            tools: vec![],
            structured: None,
            max_tokens: Some(10),
        };
        assert_eq!(
            m.request_body(&req),
            json!({"model": "claude-test", "max_tokens": 10, "system": "S",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}]})
        );
    }

    #[test]
    fn missing_key_names_the_variable() {
        let cfg = LlmConfig { provider: ProviderKind::Anthropic, model: "c".into(), ..LlmConfig::default() };
        let err = AnthropicSettings::from_config(&cfg, None, &|_| None).unwrap_err();
        assert!(matches!(&err, LlmError::Config(m) if m.contains("ANTHROPIC_API_KEY")), "{err}");
        let s = AnthropicSettings::from_config(&cfg, None, &|k| {
            (k == "ANTHROPIC_API_KEY").then(|| "sk-a".into())
        })
        .unwrap();
        assert_eq!((s.base_url.as_str(), s.max_tokens), (DEFAULT_ANTHROPIC_BASE_URL, DEFAULT_MAX_TOKENS));
        assert!(!format!("{s:?}").contains("sk-a"));
    }
}
