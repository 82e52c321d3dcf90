//! The deterministic, offline provider: replays a script of responses.
//!
//! Every example and test of the runtime runs on it, and many runs share one instance, so the
//! position in the script is kept per run. A script is JSON; every key is optional:
//!
//! ```json
//! { "strict": false, "latency_ms": 0, "model": "scripted",
//!   "planner": [R], "replanner": [R], "verifier": [R], "synthesizer": [R],
//!   "executor": [R],
//!   "steps": { "s1": [R], "s2": [R] } }
//! ```
//!
//! `R` is a plain string (the answer's text) or an object with any of `content`, `json`
//! (serialised compactly into the content), `tool_calls` (`[{"name", "arguments", "id"?}]`),
//! `usage` (`{"input_tokens", "output_tokens"}`), `delay_ms`, `error` (the call fails with
//! [`LlmError::Script`]) and `panic` (the call panics).
//!
//! Routing: planner, replanner, verifier and synthesizer calls take the next entry of their list;
//! executor calls take the next entry of `steps[<step id>]` if that key exists, else of `executor`.
//! The cursor is per (run, role, step): each run starts every list from the beginning, each step
//! reads the shared `executor` (and `verifier`) list from its own beginning — so parallel steps
//! stay deterministic — and a step's list continues across its attempts
//! (`"s2": [{"error": "boom"}, "ok"]` fails attempt 1 and succeeds on the retry).
//!
//! When a list runs out, a non-strict script repeats its last entry (handy to make a model loop
//! on tool calls); a strict one (recordings) fails loudly, naming the call. A missing or empty
//! list fails in both modes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::role::PerRoleBuilder;
use super::{AgentRole, ChatRequest, ChatResponse, LlmError, Message, PerRole, TextSink, ToolCall, Usage};

/// A whole script: per-role response lists plus global settings. Deserialised strictly: an
/// unknown key is an error naming it, so a typo cannot silently change what a test replays.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Script {
    /// Fail (instead of repeating the last entry) when a list is exhausted; used for recordings.
    pub strict: bool,
    /// Sleep this long before every answer, in milliseconds (to exercise concurrency and timeouts).
    pub latency_ms: u64,
    /// Model name reported by [`ChatModel::model_name`](super::ChatModel::model_name) (default `scripted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Answers per role, in order, under the role's name. The verifier's and executor's lists
    /// are read per step from the beginning; the executor's serves steps without a list in `steps`.
    #[serde(flatten)]
    pub roles: PerRole<Vec<ScriptedResponse>>,
    /// Executor answers for specific steps, by step id; continues across a step's attempts.
    pub steps: BTreeMap<String, Vec<ScriptedResponse>>,
}

impl Script {
    /// Checks every entry for contradictions (`content` together with `json`), naming the entry.
    pub fn validate(&self) -> Result<(), String> {
        let lists = self.roles.iter().map(|(role, list)| (role.to_string(), list));
        let steps = self.steps.iter().map(|(id, list)| (format!("steps.{id}"), list));
        for (name, list) in lists.chain(steps) {
            for (i, entry) in list.iter().enumerate() {
                if let ScriptedResponse::Reply(reply) = entry {
                    reply.check().map_err(|e| format!("{name}[{i}]: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

// By hand: serde's `flatten` (the role lists) cannot go with `deny_unknown_fields`.
impl<'de> Deserialize<'de> for Script {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Script;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a script object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                const SETTINGS: [&str; 4] = ["strict", "latency_ms", "model", "steps"];
                let mut script = Script::default();
                let mut seen = Vec::new();
                let mut roles = PerRoleBuilder::default();
                while let Some(key) = map.next_key::<String>()? {
                    if !SETTINGS.contains(&key.as_str()) {
                        let role = roles.role(&key).map_err(|_: A::Error| {
                            let roles = AgentRole::ALL.map(AgentRole::as_str);
                            let expected: Vec<_> =
                                SETTINGS.iter().chain(&roles).map(|k| format!("`{k}`")).collect();
                            de::Error::custom(format_args!(
                                "unknown field `{key}`, expected one of {}",
                                expected.join(", ")
                            ))
                        })?;
                        roles.set(role, map.next_value()?)?;
                        continue;
                    }
                    if seen.contains(&key) {
                        return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    match key.as_str() {
                        "strict" => script.strict = map.next_value()?,
                        "latency_ms" => script.latency_ms = map.next_value()?,
                        "model" => script.model = map.next_value()?,
                        _ => script.steps = map.next_value()?,
                    }
                    seen.push(key);
                }
                script.roles = roles.finish();
                Ok(script)
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// One scripted answer: a plain string (the text) or a [`ScriptedReply`] object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ScriptedResponse {
    /// Just the answer's text.
    Text(String),
    /// Text, JSON, tool calls, usage, delay, error or panic.
    Reply(ScriptedReply),
}

impl From<&str> for ScriptedResponse {
    fn from(s: &str) -> Self {
        ScriptedResponse::Text(s.to_owned())
    }
}

// Hand-written rather than `#[serde(untagged)]`: untagged enums swallow the inner error, and a
// script author needs to hear "unknown field `contnet`", not "did not match any variant".
impl<'de> Deserialize<'de> for ScriptedResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ScriptedResponse;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a response object")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ScriptedResponse::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(ScriptedResponse::Text(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ScriptedReply::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ScriptedResponse::Reply)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The object form of a scripted answer. All fields optional; absent usage is estimated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptedReply {
    /// The answer's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A JSON value sent as compact text (plans, decisions, verdicts); excludes `content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Tool calls the model asks for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptedToolCall>,
    /// Token usage to report; a missing side is estimated from the text (chars / 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<ScriptedUsage>,
    /// Extra sleep before answering, added to the script's `latency_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Fail the call with [`LlmError::Script`] carrying this message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Panic with this message (tests that a crashing executor is replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic: Option<String>,
}

impl ScriptedReply {
    fn check(&self) -> Result<(), String> {
        if self.content.is_some() && self.json.is_some() {
            return Err("`content` and `json` are exclusive: give one".into());
        }
        Ok(())
    }
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedToolCall {
    /// Tool name.
    pub name: String,
    /// Arguments (default `{}`).
    #[serde(default = "empty_object")]
    pub arguments: serde_json::Value,
    /// Call id; default `call_{n}`, unique within the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Scripted token usage; either side may be left out to have it estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptedUsage {
    /// Prompt tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Completion tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
}

/// Per-run replay position.
#[derive(Debug, Default)]
struct RunCursor {
    /// Calls made so far per (role, step).
    calls: HashMap<(AgentRole, Option<String>), usize>,
    /// Tool call ids handed out so far.
    tool_call_ids: u64,
}

/// The scripted [`ChatModel`](super::ChatModel). Share it (`Arc`) between any number of concurrent runs.
#[derive(Debug)]
pub struct ScriptedModel {
    script: Script,
    model: String,
    latency: Duration,
    runs: Mutex<HashMap<String, RunCursor>>,
}

impl ScriptedModel {
    /// A model replaying `script` (not validated; see [`ScriptedModel::from_json`]).
    pub fn new(script: Script) -> Self {
        let model = script.model.clone().unwrap_or_else(|| "scripted".to_owned());
        let latency = Duration::from_millis(script.latency_ms);
        Self { script, model, latency, runs: Mutex::new(HashMap::new()) }
    }

    /// Parses and validates a script from a JSON value; unknown keys are errors naming them.
    pub fn from_json(value: serde_json::Value) -> Result<Self, LlmError> {
        let script: Script =
            serde_json::from_value(value).map_err(|e| LlmError::Config(format!("invalid script: {e}")))?;
        script.validate().map_err(|e| LlmError::Config(format!("invalid script: {e}")))?;
        Ok(Self::new(script))
    }

    /// Reads a script file; errors name the file and, for bad JSON, the line and column.
    pub fn from_file(path: &Path) -> Result<Self, LlmError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LlmError::Config(format!("cannot read script file {}: {e}", path.display())))?;
        let script: Script = serde_json::from_str(&text)
            .map_err(|e| LlmError::Config(format!("invalid script file {}: {e}", path.display())))?;
        script
            .validate()
            .map_err(|e| LlmError::Config(format!("invalid script file {}: {e}", path.display())))?;
        Ok(Self::new(script))
    }

    /// Replaces the script's global `latency_ms` (per-entry `delay_ms` still adds to it).
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The script being replayed.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Drops a finished run's cursors; a later call with the same run id starts from the top.
    pub fn forget_run(&self, run_id: &str) {
        self.lock().remove(run_id);
    }

    /// How many runs the model holds a position for (those not finished yet).
    pub fn runs_tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunCursor>> {
        // A panic never happens while the lock is held, but a poisoned map is still consistent.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks the entry for this call and advances the cursor. Returns the entry and, for the
    /// default tool call ids, the run's id counter after reserving what the entry needs.
    fn next_entry(&self, request: &ChatRequest) -> Result<(&ScriptedResponse, u64), LlmError> {
        let ctx = &request.context;
        let step = ctx.step.as_ref().map(|s| s.as_str().to_owned());
        let own_list = match ctx.role {
            AgentRole::Executor => step.as_deref().and_then(|s| self.script.steps.get_key_value(s)),
            _ => None,
        };
        let (per_step, list) = match own_list {
            Some((id, list)) => (Some(id), list),
            None => (None, self.script.roles.get(ctx.role)),
        };
        let list_name = || per_step.map_or_else(|| ctx.role.to_string(), |id| format!("steps.{id}"));

        let mut runs = self.lock();
        let run = runs.entry(ctx.run_id.clone()).or_default();
        let counter = run.calls.entry((ctx.role, step.clone())).or_insert(0);
        let index = *counter;
        *counter += 1;

        let describe = || {
            let step = step.as_deref().map(|s| format!(" of step {s}")).unwrap_or_default();
            format!("{} call #{}{step} (attempt {}) in run {}", ctx.role, index + 1, ctx.attempt, ctx.run_id)
        };
        let entry = if list.is_empty() {
            let hint = if ctx.role == AgentRole::Executor {
                let s = step.as_deref().unwrap_or("<id>");
                format!("neither `steps.{s}` nor `executor` has any entry")
            } else {
                format!("the `{}` list is missing or empty", list_name())
            };
            return Err(LlmError::Script(format!("no scripted response for {}: {hint}", describe())));
        } else if index < list.len() {
            &list[index]
        } else if self.script.strict {
            return Err(LlmError::Script(format!(
                "strict script exhausted: {} asked for entry #{} of `{}`, which has only {}; \
                 the recording has nothing for this call",
                describe(),
                index + 1,
                list_name(),
                list.len()
            )));
        } else {
            &list[list.len() - 1]
        };

        let first_id = run.tool_call_ids;
        if let ScriptedResponse::Reply(reply) = entry {
            run.tool_call_ids += reply.tool_calls.iter().filter(|c| c.id.is_none()).count() as u64;
        }
        Ok((entry, first_id))
    }
}

/// Rough token estimate: a quarter of the characters, at least 1.
fn estimate_tokens(chars: usize) -> u64 {
    ((chars / 4) as u64).max(1)
}

fn message_chars(m: &Message) -> usize {
    m.content.chars().count()
        + m.tool_calls
            .iter()
            .map(|c| c.name.chars().count() + c.arguments.to_string().chars().count())
            .sum::<usize>()
}

#[async_trait::async_trait]
impl super::SinkModel for ScriptedModel {
    fn model_id(&self) -> &str {
        &self.model
    }

    fn provider_id(&self) -> &str {
        super::config::ProviderKind::Scripted.name()
    }

    fn on_run_finished(&self, run_id: &str) {
        self.forget_run(run_id);
    }

    async fn call(
        &self,
        request: ChatRequest,
        sink: Option<&TextSink<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        self.answer(request, sink).await
    }
}

/// Roughly a few tokens: the size of the pieces a streamed scripted answer arrives in.
const STREAM_PIECE_CHARS: usize = 24;

/// Sends `text` to `sink` in pieces spread evenly over `delay`, as a model generating tokens at
/// a steady rate would (deadlines from one start instant, so timer granularity does not add up).
async fn stream_over(text: &str, delay: Duration, sink: &TextSink<'_>) {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .step_by(STREAM_PIECE_CHARS)
        .skip(1)
        .chain(std::iter::once(text.len()))
        .collect();
    let start = tokio::time::Instant::now();
    let mut from = 0;
    for (n, &to) in bounds.iter().enumerate() {
        tokio::time::sleep_until(start + delay.mul_f64((n + 1) as f64 / bounds.len() as f64)).await;
        sink(&text[from..to]);
        from = to;
    }
}

impl ScriptedModel {
    /// The next scripted answer for `request`; with a sink, its text streams in over the delay.
    async fn answer(
        &self,
        request: ChatRequest,
        sink: Option<&TextSink<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let (entry, mut next_id) = self.next_entry(&request)?;
        // Borrowed from the script: a script's entries can be large (plans), and a long-lived
        // `serve --script` answers them again and again.
        let reply = match entry {
            ScriptedResponse::Text(content) => {
                Cow::Owned(ScriptedReply { content: Some(content.clone()), ..Default::default() })
            }
            ScriptedResponse::Reply(reply) => Cow::Borrowed(reply),
        };

        let delay = self.latency + Duration::from_millis(reply.delay_ms.unwrap_or(0));
        let fails = reply.panic.is_some() || reply.error.is_some();
        let content = match (&reply.content, &reply.json) {
            (_, Some(json)) => json.to_string(),
            (Some(content), None) => content.clone(),
            (None, None) => String::new(),
        };
        match sink {
            Some(sink) if !fails && !delay.is_zero() => stream_over(&content, delay, sink).await,
            Some(sink) if !fails => sink(&content),
            _ if !delay.is_zero() => tokio::time::sleep(delay).await,
            _ => {}
        }
        if let Some(message) = &reply.panic {
            panic!("scripted panic: {message}");
        }
        if let Some(message) = &reply.error {
            return Err(LlmError::Script(message.clone()));
        }
        reply.check().map_err(LlmError::Script)?;

        let tool_calls: Vec<ToolCall> = reply
            .tool_calls
            .iter()
            .map(|c| {
                let id = c.id.clone().unwrap_or_else(|| {
                    next_id += 1;
                    format!("call_{next_id}")
                });
                ToolCall { id, name: c.name.clone(), arguments: c.arguments.clone() }
            })
            .collect();

        let scripted = reply.usage.unwrap_or_default();
        let input = scripted
            .input_tokens
            .unwrap_or_else(|| estimate_tokens(request.messages.iter().map(message_chars).sum()));
        let output = scripted.output_tokens.unwrap_or_else(|| {
            let args: usize = tool_calls.iter().map(|c| c.arguments.to_string().chars().count()).sum();
            estimate_tokens(content.chars().count() + args)
        });
        let usage = Usage::of_tokens(input, output);
        Ok(ChatResponse { content, tool_calls, usage, model: self.model.clone() })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::llm::{CallContext, ChatModel};
    use crate::plan::StepId;

    fn req(run: &str, role: AgentRole, step: Option<&str>, attempt: u32) -> ChatRequest {
        ChatRequest {
            context: CallContext {
                run_id: run.into(),
                role,
                step: step.map(StepId::from),
                attempt,
                trace: Default::default(),
            },
            messages: vec![Message::system("sys"), Message::user("0123456789abcdef")],
            tools: vec![],
            structured: None,
            max_tokens: None,
        }
    }

    async fn content(m: &ScriptedModel, run: &str, role: AgentRole, step: Option<&str>) -> String {
        m.chat(req(run, role, step, 1)).await.unwrap().content
    }

    fn model(v: serde_json::Value) -> ScriptedModel {
        ScriptedModel::from_json(v).unwrap()
    }

    #[tokio::test]
    async fn routes_roles_and_serialises_json() {
        let m = model(json!({
            "planner": [{"json": {"goal": "g", "steps": []}}],
            "replanner": ["r1"], "verifier": [{"content": "v"}], "synthesizer": ["done"],
        }));
        assert_eq!(content(&m, "r", AgentRole::Planner, None).await, r#"{"goal":"g","steps":[]}"#);
        assert_eq!(content(&m, "r", AgentRole::Replanner, None).await, "r1");
        assert_eq!(content(&m, "r", AgentRole::Verifier, Some("s1")).await, "v");
        assert_eq!(content(&m, "r", AgentRole::Synthesizer, None).await, "done");
        assert_eq!(m.model_name(), "scripted");
        assert_eq!(m.provider(), "scripted");
        let named = model(json!({"model": "recorded-gpt", "planner": ["p"]}));
        assert_eq!(named.model_name(), "recorded-gpt");
        assert_eq!(named.chat(req("r", AgentRole::Planner, None, 1)).await.unwrap().model, "recorded-gpt");
    }

    #[tokio::test]
    async fn executor_prefers_step_list_and_continues_across_attempts() {
        let m = model(json!({
            "executor": ["generic-1", "generic-2"],
            "steps": {"s2": [{"error": "boom"}, "ok"]},
        }));
        // s1 falls back to `executor`, with its own cursor; s3 starts that list afresh.
        assert_eq!(content(&m, "r", AgentRole::Executor, Some("s1")).await, "generic-1");
        assert_eq!(content(&m, "r", AgentRole::Executor, Some("s3")).await, "generic-1");
        assert_eq!(content(&m, "r", AgentRole::Executor, Some("s1")).await, "generic-2");
        let err = m.chat(req("r", AgentRole::Executor, Some("s2"), 1)).await.unwrap_err();
        assert_eq!(err, LlmError::Script("boom".into()));
        assert_eq!(m.chat(req("r", AgentRole::Executor, Some("s2"), 2)).await.unwrap().content, "ok");
    }

    #[tokio::test]
    async fn non_strict_repeats_last_entry() {
        let m = model(json!({"executor": ["a", {"tool_calls": [{"name": "list_dir"}]}]}));
        assert_eq!(content(&m, "r", AgentRole::Executor, Some("s1")).await, "a");
        for _ in 0..3 {
            let r = m.chat(req("r", AgentRole::Executor, Some("s1"), 1)).await.unwrap();
            assert_eq!(r.tool_calls.len(), 1);
            assert_eq!(r.tool_calls[0].name, "list_dir");
            assert_eq!(r.tool_calls[0].arguments, json!({}));
        }
    }

    #[tokio::test]
    async fn strict_exhaustion_names_the_call() {
        let m = model(json!({"strict": true, "steps": {"s1": ["a"]}}));
        assert_eq!(content(&m, "run-7", AgentRole::Executor, Some("s1")).await, "a");
        let err = m.chat(req("run-7", AgentRole::Executor, Some("s1"), 2)).await.unwrap_err();
        let LlmError::Script(msg) = err else { panic!("wrong error {err:?}") };
        for needle in ["executor", "call #2", "step s1", "attempt 2", "run run-7", "steps.s1", "recording"] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg:?}");
        }
    }

    #[tokio::test]
    async fn missing_or_empty_list_fails_in_both_modes() {
        for strict in [false, true] {
            let m = model(json!({"strict": strict, "planner": [], "executor": []}));
            let err = m.chat(req("r", AgentRole::Planner, None, 1)).await.unwrap_err().to_string();
            assert!(err.contains("planner call #1") && err.contains("`planner`"), "{err}");
            let err = m.chat(req("r", AgentRole::Synthesizer, None, 1)).await.unwrap_err().to_string();
            assert!(err.contains("`synthesizer`"), "{err}");
            let err = m.chat(req("r", AgentRole::Executor, Some("s4"), 1)).await.unwrap_err().to_string();
            assert!(err.contains("steps.s4") && err.contains("executor"), "{err}");
        }
    }

    #[tokio::test]
    async fn usage_defaults_and_overrides() {
        let m = model(json!({"planner": [
            "12345678",
            {"content": "x", "usage": {"input_tokens": 100, "output_tokens": 7}},
            {"content": "", "usage": {"output_tokens": 3}},
        ]}));
        // Request: "sys" + 16 chars = 19 chars -> 4 tokens; "12345678" -> 2 tokens.
        let r = m.chat(req("r", AgentRole::Planner, None, 1)).await.unwrap();
        assert_eq!(r.usage, Usage::of_tokens(4, 2));
        let r = m.chat(req("r", AgentRole::Planner, None, 1)).await.unwrap();
        assert_eq!(r.usage, Usage::of_tokens(100, 7));
        let r = m.chat(req("r", AgentRole::Planner, None, 1)).await.unwrap();
        assert_eq!(r.usage, Usage::of_tokens(4, 3));
        // Empty content still counts at least one token; tool call arguments count as output.
        let m = model(json!({"executor": [
            "", {"tool_calls": [{"name": "write_file", "arguments": {"path": "a.txt", "content": "0123456789"}}]}
        ]}));
        let r = m.chat(req("r", AgentRole::Executor, Some("s1"), 1)).await.unwrap();
        assert_eq!(r.usage.output_tokens, 1);
        let r = m.chat(req("r", AgentRole::Executor, Some("s1"), 1)).await.unwrap();
        let args = r.tool_calls[0].arguments.to_string().len() as u64;
        assert_eq!(r.usage.output_tokens, args / 4);
    }

    #[tokio::test]
    async fn tool_call_ids_are_unique_within_a_run() {
        let m = model(json!({"executor": [{"tool_calls": [
            {"name": "read_file", "arguments": {"path": "a"}},
            {"name": "read_file", "arguments": {"path": "b"}, "id": "mine"},
            {"name": "list_dir"},
        ]}]}));
        let a = m.chat(req("r", AgentRole::Executor, Some("s1"), 1)).await.unwrap();
        let b = m.chat(req("r", AgentRole::Executor, Some("s2"), 1)).await.unwrap();
        let ids: Vec<_> = a.tool_calls.iter().chain(&b.tool_calls).map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["call_1", "mine", "call_2", "call_3", "mine", "call_4"]);
        // Another run numbers its own calls from 1.
        let c = m.chat(req("other", AgentRole::Executor, Some("s1"), 1)).await.unwrap();
        assert_eq!(c.tool_calls[0].id, "call_1");
    }

    #[tokio::test]
    async fn runs_have_independent_cursors_and_forget_run_resets() {
        let m = model(json!({"planner": ["p1", "p2"]}));
        assert_eq!(content(&m, "a", AgentRole::Planner, None).await, "p1");
        assert_eq!(content(&m, "b", AgentRole::Planner, None).await, "p1");
        assert_eq!(content(&m, "a", AgentRole::Planner, None).await, "p2");
        m.forget_run("a");
        assert_eq!(content(&m, "a", AgentRole::Planner, None).await, "p1");
        assert_eq!(content(&m, "b", AgentRole::Planner, None).await, "p2");
    }

    #[tokio::test]
    async fn concurrent_runs_interleave_on_one_instance() {
        // Each call sleeps, so the two runs' calls genuinely interleave on the shared instance.
        let m = Arc::new(model(json!({
            "latency_ms": 5,
            "executor": [{"content": "first", "delay_ms": 10}, "second", "third"],
        })));
        let run = |id: &'static str| {
            let m = m.clone();
            tokio::spawn(async move {
                let mut seen = vec![];
                for _ in 0..4 {
                    seen.push(m.chat(req(id, AgentRole::Executor, Some("s1"), 1)).await.unwrap().content);
                }
                seen
            })
        };
        let (a, b) = (run("run-a"), run("run-b"));
        let expected = ["first", "second", "third", "third"];
        assert_eq!(a.await.unwrap(), expected);
        assert_eq!(b.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn latency_and_delay_add_up() {
        // Real time (tokio's paused clock needs `test-util`): lower bounds exact, upper bounds loose.
        let m = model(json!({"latency_ms": 100, "planner": [{"content": "x", "delay_ms": 50}]}));
        let start = std::time::Instant::now();
        m.chat(req("r", AgentRole::Planner, None, 1)).await.unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(5), "{took:?}");
        // `with_latency` replaces the script's 10 s latency; the entry's delay still adds to it.
        let m = model(json!({"latency_ms": 10_000, "planner": [{"content": "x", "delay_ms": 30}]}))
            .with_latency(Duration::from_millis(20));
        let start = std::time::Instant::now();
        m.chat(req("r", AgentRole::Planner, None, 1)).await.unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50) && took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn streaming_spreads_the_text_over_the_latency() {
        let text = "x".repeat(10 * STREAM_PIECE_CHARS);
        let m = model(json!({"latency_ms": 200, "planner": [text.clone()]}));
        let start = std::time::Instant::now();
        let pieces = std::sync::Mutex::new(Vec::new());
        let sink = |p: &str| pieces.lock().unwrap().push((start.elapsed(), p.to_owned()));
        let r = m.chat_streaming(req("r", AgentRole::Planner, None, 1), &sink).await.unwrap();
        let pieces = pieces.into_inner().unwrap();
        assert_eq!(r.content, text);
        assert_eq!(pieces.iter().map(|(_, p)| p.as_str()).collect::<String>(), text);
        assert_eq!(pieces.len(), 10);
        // The first piece comes after a tenth of the latency, the last after all of it.
        assert!(pieces[0].0 >= Duration::from_millis(20), "{:?}", pieces[0].0);
        assert!(pieces[9].0 >= Duration::from_millis(200), "{:?}", pieces[9].0);
        assert!(pieces[0].0 < pieces[9].0);
        // Without latency the whole text arrives at once; an error entry streams nothing.
        let m = model(json!({"planner": ["héllo", {"error": "boom"}]}));
        let got = std::sync::Mutex::new(String::new());
        let sink = |p: &str| got.lock().unwrap().push_str(p);
        m.chat_streaming(req("r", AgentRole::Planner, None, 1), &sink).await.unwrap();
        assert!(m.chat_streaming(req("r", AgentRole::Planner, None, 1), &sink).await.is_err());
        assert_eq!(got.into_inner().unwrap(), "héllo");
    }

    #[tokio::test]
    async fn panic_entry_panics_and_leaves_the_model_usable() {
        let m = Arc::new(model(json!({"steps": {"s1": [{"panic": "executor crash"}, "recovered"]}})));
        let m2 = m.clone();
        let err = tokio::spawn(async move { m2.chat(req("r", AgentRole::Executor, Some("s1"), 1)).await })
            .await
            .unwrap_err();
        assert!(err.is_panic());
        let msg = err.into_panic();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("executor crash"), "{msg}");
        assert_eq!(content(&m, "r", AgentRole::Executor, Some("s1")).await, "recovered");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = ScriptedModel::from_json(json!({"plannr": ["x"]})).unwrap_err().to_string();
        assert!(err.contains("unknown field `plannr`"), "{err}");
        let err = ScriptedModel::from_json(json!({"planner": [{"contnet": "x"}]})).unwrap_err().to_string();
        assert!(err.contains("unknown field `contnet`"), "{err}");
        let err =
            ScriptedModel::from_json(json!({"executor": [{"tool_calls": [{"name": "x", "args": {}}]}]}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field `args`"), "{err}");
        let err = ScriptedModel::from_json(json!({"planner": [42]})).unwrap_err().to_string();
        assert!(err.contains("a string or a response object"), "{err}");
    }

    #[test]
    fn content_and_json_together_are_rejected() {
        let err = ScriptedModel::from_json(json!({"steps": {"s9": ["ok", {"content": "a", "json": {}}]}}))
            .unwrap_err();
        let err = err.to_string();
        assert!(err.contains("steps.s9[1]") && err.contains("exclusive"), "{err}");
    }

    #[test]
    fn from_file_reports_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"strict": true, "planner": ["p"]}"#).unwrap();
        assert!(ScriptedModel::from_file(&good).unwrap().script().strict);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\n  \"planner\": [\"p\",]\n}").unwrap();
        let err = ScriptedModel::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("line 2"), "{err}");

        let unknown = dir.path().join("unknown.json");
        std::fs::write(&unknown, "{\"planner\": [],\n \"bogus\": 1}").unwrap();
        let err = ScriptedModel::from_file(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown.json") && err.contains("`bogus`") && err.contains("line 2"), "{err}");

        let missing = dir.path().join("missing.json");
        let err = ScriptedModel::from_file(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");
    }

    #[test]
    fn script_round_trips_through_serde() {
        let v = json!({
            "strict": true, "latency_ms": 3, "planner": ["a", {"json": {"k": 1}, "delay_ms": 2}],
            "steps": {"s1": [{"tool_calls": [{"name": "t", "arguments": {"x": 1}, "id": "c"}],
                              "usage": {"input_tokens": 1}}]},
        });
        let script: Script = serde_json::from_value(v).unwrap();
        let back: Script = serde_json::from_value(serde_json::to_value(&script).unwrap()).unwrap();
        assert_eq!(script, back);
        assert_eq!(Script::default(), serde_json::from_value(json!({})).unwrap());
    }
}
