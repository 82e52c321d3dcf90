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
use serde_json::{Map, Value, json};

use super::config::{LlmConfig, ProviderKind, RoleModelConfig};
use super::http::{HttpTransport, RetryPolicy, secret_header};
use super::openai::normalize_base_url;
use super::providers::inherited;
use super::stream::{AnthropicEvents, post_streamed};
use super::{ChatModel, ChatRequest, ChatResponse, LlmError, Role, TextSink, ToolCall, Usage};

/// The public Anthropic endpoint (without `/v1`).
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent with every request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the request nor the config sets one (the API requires it).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

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
        let inh = inherited(cfg, role, ProviderKind::Anthropic)?;
        let base_url = inh.base_url(env, "ANTHROPIC_BASE_URL", DEFAULT_ANTHROPIC_BASE_URL)?;
        let (key_var, api_key) = inh.api_key(env, "ANTHROPIC_API_KEY");
        let api_key = api_key.ok_or_else(|| {
            LlmError::Config(format!(
                "the anthropic provider needs an API key: set the {key_var} environment variable"
            ))
        })?;
        let mut s = Self::new(inh.model, api_key);
        s.base_url = base_url;
        s.timeout = Duration::from_secs(cfg.request_timeout_secs);
        s.max_retries = cfg.max_retries;
        s.outage_max_wait = Duration::from_secs(cfg.outage_max_wait_secs);
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
        let policy = RetryPolicy {
            timeout: settings.timeout,
            max_retries: settings.max_retries,
            backoff_base: settings.backoff_base,
            outage_max_wait: settings.outage_max_wait,
            ..RetryPolicy::default()
        };
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
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System && !m.content.is_empty())
            .map(|m| m.content.as_str())
            .collect();
        let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
        for m in &request.messages {
            let (role, blocks) = match m.role {
                Role::System => continue,
                Role::User => ("user", text_block(&m.content).into_iter().collect()),
                Role::Tool => (
                    "user",
                    vec![json!({"type": "tool_result",
                                "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                                "content": m.content})],
                ),
                Role::Assistant => {
                    let mut blocks: Vec<Value> = text_block(&m.content).into_iter().collect();
                    blocks.extend(m.tool_calls.iter().map(|c| {
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)})
                    }));
                    ("assistant", blocks)
                }
            };
            if blocks.is_empty() {
                continue; // the API rejects empty turns
            }
            match turns.last_mut() {
                Some((last, existing)) if *last == role => existing.extend(blocks),
                _ => turns.push((role, blocks)),
            }
        }
        let messages: Vec<Value> =
            turns.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();

        let mut body = Map::new();
        body.insert("model".into(), json!(self.settings.model));
        body.insert("max_tokens".into(), json!(request.max_tokens.unwrap_or(self.settings.max_tokens)));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        body.insert("messages".into(), Value::Array(messages));
        if let Some(t) = self.settings.temperature {
            let t: f64 = t.to_string().parse().unwrap_or(f64::from(t));
            body.insert("temperature".into(), json!(t));
        }
        if let Some(s) = &request.structured {
            body.insert(
                "tools".into(),
                json!([{"name": s.name,
                        "description": format!("Return the `{}` object as this tool's input.", s.name),
                        "input_schema": s.schema}]),
            );
            body.insert("tool_choice".into(), json!({"type": "tool", "name": s.name}));
        } else if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        Value::Object(body)
    }

    fn parse_response(&self, v: Value, structured: Option<&str>) -> Result<ChatResponse, LlmError> {
        let blocks = v
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| LlmError::InvalidResponse("no `content` array in the response".into()))?;
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    content.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default())
                }
                Some("tool_use") => {
                    let name = block.get("name").and_then(Value::as_str).unwrap_or_default();
                    if name.is_empty() {
                        return Err(LlmError::InvalidResponse(format!("tool_use block {i} has no name")));
                    }
                    let id = block
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map_or_else(|| format!("toolu_{i}"), str::to_owned);
                    let arguments = block.get("input").cloned().unwrap_or_else(|| json!({}));
                    tool_calls.push(ToolCall { id, name: name.to_owned(), arguments });
                }
                _ => {} // thinking and other blocks carry nothing the runtime uses
            }
        }
        if let Some(name) = structured {
            if let Some(pos) = tool_calls.iter().position(|c| c.name == name) {
                content = tool_calls.remove(pos).arguments.to_string();
            }
        }
        let usage = v.get("usage").map_or_else(Usage::default, |u| {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            let input = n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens");
            Usage::of_tokens(input, n("output_tokens")).with_cached_input(n("cache_read_input_tokens"))
        });
        let model = v.get("model").and_then(Value::as_str).unwrap_or(&self.settings.model).to_owned();
        Ok(ChatResponse { content, tool_calls, usage, model })
    }
}

#[async_trait::async_trait]
impl ChatModel for AnthropicModel {
    fn model_name(&self) -> &str {
        &self.settings.model
    }

    fn provider(&self) -> &str {
        "anthropic"
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.complete(request, None).await
    }

    async fn chat_streaming(
        &self,
        request: ChatRequest,
        sink: &TextSink<'_>,
    ) -> Result<ChatResponse, LlmError> {
        self.complete(request, Some(sink)).await
    }
}

impl AnthropicModel {
    /// One call; with a sink, streamed (`"stream": true`) and handed to it as it arrives.
    async fn complete(
        &self,
        request: ChatRequest,
        sink: Option<&TextSink<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let mut body = self.request_body(&request);
        let tool = request.structured.as_ref().map(|s| s.name.as_str());
        let v = match sink {
            None => self.http.post_json(&self.url, &body).await?,
            Some(sink) => {
                body["stream"] = json!(true);
                let never = |_: u16, _: &str| false;
                let bytes = super::http::json_bytes(&body)?;
                post_streamed(&self.http, &self.url, bytes, &never, AnthropicEvents::new(tool), sink).await?
            }
        };
        self.parse_response(v, tool)
    }
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// A `tool_use` input must be an object: a raw (unparsable) argument string is parsed if it can
/// be, else wrapped as `{"raw": …}`.
fn tool_input(arguments: &Value) -> Value {
    match arguments {
        Value::Object(_) => arguments.clone(),
        Value::String(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"raw": raw}),
        },
        Value::Null => json!({}),
        other => json!({"raw": other}),
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn tool_inputs_are_objects() {
        assert_eq!(tool_input(&json!({"a": 1})), json!({"a": 1}));
        assert_eq!(tool_input(&json!("{\"a\":1}")), json!({"a": 1}));
        assert_eq!(tool_input(&json!("{oops")), json!({"raw": "{oops"}));
    }
}
