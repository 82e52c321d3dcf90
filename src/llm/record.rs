//! Recording a run's model exchanges as a script the `scripted` provider can replay.
//!
//! [`RecordingModel`] wraps any model and writes every answer into a JSON file in the scripted
//! provider's format:
//!
//! ```json
//! {"strict": true, "model": "<model>",
//!  "planner": [R…], "replanner": [R…], "verifier": [R…], "synthesizer": [R…],
//!  "steps": {"<step id>": [R…]}}
//! ```
//!
//! where `R` is `{"content": "…", "tool_calls": [{"id","name","arguments"}],
//! "usage": {"input_tokens","output_tokens"}}`, or `{"error": "<message>"}` for a failed call.
//! Executor calls go under `steps[<step id>]`, every other role under its name. Within a list,
//! answers are kept in the order the calls were *made* (a slot is reserved when a call starts),
//! which is the order a replay hands them out.
//!
//! One file holds one run: the first run id seen is recorded and calls from any other run pass
//! through unrecorded. The file is rewritten (write to a temporary file, then rename) after every
//! call, so it is complete up to the last finished call even if the process dies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{
    AgentRole, CallContext, ChatRequest, ChatResponse, LlmError, Models, SharedModel, SinkModel, TextSink,
};

/// A model that passes every call to `inner` and records the exchange (see the module docs).
pub struct RecordingModel {
    inner: SharedModel,
    log: Arc<Recording>,
}

impl std::fmt::Debug for RecordingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingModel")
            .field("inner", &format!("{}/{}", self.inner.provider(), self.inner.model_name()))
            .field("path", &self.log.path)
            .finish()
    }
}

/// The shared file state: one per recording file, however many models write into it.
struct Recording {
    path: PathBuf,
    model: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    run_id: Option<String>,
    roles: BTreeMap<&'static str, Vec<Option<Value>>>,
    steps: BTreeMap<String, Vec<Option<Value>>>,
}

/// Where a call's answer goes: a role list or a step list, and its index there.
enum Slot {
    Role(&'static str, usize),
    Step(String, usize),
}

impl RecordingModel {
    /// Wraps `inner`, recording into `path` (created, or truncated, now: an unwritable path fails
    /// here rather than after the first call).
    pub fn new(inner: SharedModel, path: impl AsRef<Path>) -> Result<Self, LlmError> {
        let log = Recording::create(path.as_ref(), inner.model_name())?;
        Ok(Self { inner, log })
    }

    /// Wraps every role's model of `models` so that they all record into the one file at `path`
    /// (the file's `model` is the planner's). Roles sharing a model keep sharing its wrapper.
    pub fn wrap_models(models: &Models, path: impl AsRef<Path>) -> Result<Models, LlmError> {
        let log = Recording::create(path.as_ref(), models.get(AgentRole::Planner).model_name())?;
        let mut wrapped: Vec<(SharedModel, SharedModel)> = Vec::new();
        let mut wrap = |inner: &SharedModel| -> SharedModel {
            if let Some((_, w)) = wrapped.iter().find(|(orig, _)| Arc::ptr_eq(orig, inner)) {
                return w.clone();
            }
            let w: SharedModel = Arc::new(RecordingModel { inner: inner.clone(), log: log.clone() });
            wrapped.push((inner.clone(), w.clone()));
            w
        };
        Ok(models.map(|_, model| wrap(model)))
    }

    /// The recording file.
    pub fn path(&self) -> &Path {
        &self.log.path
    }
}

impl Recording {
    fn create(path: &Path, model: &str) -> Result<Arc<Self>, LlmError> {
        let log =
            Self { path: path.to_owned(), model: model.to_owned(), state: Mutex::new(State::default()) };
        let text = log.render(&State::default());
        std::fs::write(path, text).map_err(|e| {
            LlmError::Config(format!("cannot write the recording file {}: {e}", path.display()))
        })?;
        Ok(Arc::new(log))
    }

    fn render(&self, state: &State) -> String {
        let filled = |list: &Vec<Option<Value>>| Value::Array(list.iter().flatten().cloned().collect());
        let role = |name: &str| state.roles.get(name).map_or_else(|| json!([]), filled);
        let steps: serde_json::Map<String, Value> =
            state.steps.iter().map(|(id, list)| (id.clone(), filled(list))).collect();
        let doc = json!({
            "strict": true,
            "model": self.model,
            "planner": role("planner"),
            "replanner": role("replanner"),
            "verifier": role("verifier"),
            "synthesizer": role("synthesizer"),
            "steps": steps,
        });
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    }

    async fn reserve(&self, ctx: &CallContext) -> Option<Slot> {
        let mut st = self.state.lock().await;
        match &st.run_id {
            None => st.run_id = Some(ctx.run_id.clone()),
            Some(id) if *id == ctx.run_id => {}
            Some(_) => return None, // one file, one run
        }
        if ctx.role == AgentRole::Executor {
            let Some(step) = &ctx.step else {
                tracing::warn!(run_id = %ctx.run_id, "executor call without a step id is not recorded");
                return None;
            };
            let list = st.steps.entry(step.to_string()).or_default();
            list.push(None);
            Some(Slot::Step(step.to_string(), list.len() - 1))
        } else {
            let list = st.roles.entry(ctx.role.as_str()).or_default();
            list.push(None);
            Some(Slot::Role(ctx.role.as_str(), list.len() - 1))
        }
    }

    async fn fill(&self, slot: Slot, entry: Value) {
        let mut st = self.state.lock().await;
        let cell = match &slot {
            Slot::Role(name, i) => st.roles.get_mut(name).and_then(|l| l.get_mut(*i)),
            Slot::Step(id, i) => st.steps.get_mut(id).and_then(|l| l.get_mut(*i)),
        };
        if let Some(cell) = cell {
            *cell = Some(entry);
        }
        let text = self.render(&st);
        // Written while holding the lock, so a later snapshot never lands before an earlier one.
        if let Err(e) = write_atomically(&self.path, &text).await {
            tracing::warn!(path = %self.path.display(), error = %e, "could not update the recording file");
        }
    }
}

async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

/// One script entry for a call's outcome.
fn entry(result: &Result<ChatResponse, LlmError>) -> Value {
    match result {
        Ok(r) => json!({
            "content": r.content,
            "tool_calls": r.tool_calls.iter()
                .map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments}))
                .collect::<Vec<_>>(),
            "usage": {"input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens},
        }),
        Err(e) => json!({"error": e.to_string()}),
    }
}

#[async_trait::async_trait]
impl SinkModel for RecordingModel {
    fn model_id(&self) -> &str {
        self.inner.model_name()
    }

    fn provider_id(&self) -> &str {
        self.inner.provider()
    }

    fn on_run_finished(&self, run_id: &str) {
        self.inner.run_finished(run_id);
    }

    /// One call to the wrapped model (streamed when there is a sink), written to the recording.
    async fn call(
        &self,
        request: ChatRequest,
        sink: Option<&TextSink<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let slot = self.log.reserve(&request.context).await;
        let result = super::chat_maybe_streaming(self.inner.as_ref(), request, sink).await;
        if let Some(slot) = slot {
            self.log.fill(slot, entry(&result)).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatModel, Message, ToolCall, Usage};
    use crate::plan::StepId;

    /// Answers with the last user message; fails when it is "fail".
    struct Echo;

    #[async_trait::async_trait]
    impl ChatModel for Echo {
        fn model_name(&self) -> &str {
            "echo-1"
        }
        fn provider(&self) -> &str {
            "test"
        }
        async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
            let text = request.messages.last().map(|m| m.content.clone()).unwrap_or_default();
            if text == "fail" {
                return Err(LlmError::Status { status: 503, message: "overloaded".into() });
            }
            let tool_calls = if text == "tool" {
                vec![ToolCall { id: "c1".into(), name: "read_file".into(), arguments: json!({"path": "a"}) }]
            } else {
                vec![]
            };
            Ok(ChatResponse {
                content: text,
                tool_calls,
                usage: Usage::of_tokens(3, 2),
                model: "echo-1".into(),
            })
        }
    }

    fn req(run: &str, role: AgentRole, step: Option<&str>, text: &str) -> ChatRequest {
        ChatRequest {
            context: CallContext {
                run_id: run.into(),
                role,
                step: step.map(StepId::from),
                attempt: 1,
                trace: Default::default(),
            },
            messages: vec![Message::user(text)],
            tools: vec![],
            structured: None,
            max_tokens: None,
        }
    }

    fn read(path: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn records_by_role_and_step_for_the_first_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.json");
        let m = RecordingModel::new(Arc::new(Echo), &path).unwrap();
        assert_eq!(read(&path)["planner"], json!([]));

        m.chat(req("r1", AgentRole::Planner, None, "{\"goal\":\"g\"}")).await.unwrap();
        m.chat(req("r1", AgentRole::Executor, Some("s1"), "tool")).await.unwrap();
        m.chat(req("r1", AgentRole::Executor, Some("s1"), "done")).await.unwrap();
        m.chat(req("r2", AgentRole::Planner, None, "other run")).await.unwrap();
        let err = m.chat(req("r1", AgentRole::Verifier, Some("s1"), "fail")).await.unwrap_err();
        m.chat(req("r1", AgentRole::Synthesizer, None, "final")).await.unwrap();

        let usage = json!({"input_tokens": 3, "output_tokens": 2});
        assert_eq!(
            read(&path),
            json!({
                "strict": true,
                "model": "echo-1",
                "planner": [{"content": "{\"goal\":\"g\"}", "tool_calls": [], "usage": usage}],
                "replanner": [],
                "verifier": [{"error": err.to_string()}],
                "synthesizer": [{"content": "final", "tool_calls": [], "usage": usage}],
                "steps": {"s1": [
                    {"content": "tool", "tool_calls": [{"id": "c1", "name": "read_file",
                                                        "arguments": {"path": "a"}}], "usage": usage},
                    {"content": "done", "tool_calls": [], "usage": usage},
                ]},
            })
        );
        assert!(!dir.path().join("rec.json.tmp").exists());
    }

    #[tokio::test]
    async fn wrapped_models_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.json");
        let models = RecordingModel::wrap_models(&Models::uniform(Arc::new(Echo)), &path).unwrap();
        assert!(Arc::ptr_eq(models.get(AgentRole::Planner), models.get(AgentRole::Executor)));
        models.get(AgentRole::Planner).chat(req("r", AgentRole::Planner, None, "p")).await.unwrap();
        models.get(AgentRole::Replanner).chat(req("r", AgentRole::Replanner, None, "q")).await.unwrap();
        let doc = read(&path);
        assert_eq!(doc["planner"][0]["content"], "p");
        assert_eq!(doc["replanner"][0]["content"], "q");
    }

    #[test]
    fn unwritable_path_fails_early() {
        let err = RecordingModel::new(Arc::new(Echo), "/nonexistent-dir/x/rec.json").unwrap_err();
        assert!(matches!(err, LlmError::Config(_)));
    }
}
