//! A scripted model that records every request, so a test can look at what the model was shown.

use std::sync::Mutex;

use serde_json::Value;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::llm::{ChatModel, ChatRequest, ChatResponse, LlmError};

/// Replays `inner`'s script and keeps each request in `seen`.
pub struct Spy {
    pub inner: ScriptedModel,
    pub seen: Mutex<Vec<ChatRequest>>,
}

impl Spy {
    /// A spy replaying `script` (the scripted provider's format).
    pub fn new(script: Value) -> Self {
        Self { inner: ScriptedModel::from_json(script).expect("script"), seen: Mutex::new(vec![]) }
    }
}

#[async_trait::async_trait]
impl ChatModel for Spy {
    fn model_name(&self) -> &str {
        "spy"
    }
    fn provider(&self) -> &str {
        "scripted"
    }
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.seen.lock().unwrap().push(request.clone());
        self.inner.chat(request).await
    }
}
