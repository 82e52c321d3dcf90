//! Placeholder for the scripted provider (a colleague's branch brings the real one; the merge
//! takes their file). Only the entry point `providers::build_models` needs exists here.

use std::path::Path;

use super::{ChatModel, ChatRequest, ChatResponse, LlmError};

/// Replays a script of responses (placeholder: loads the file, answers with an error).
#[derive(Debug)]
pub struct ScriptedModel {
    model: String,
}

impl ScriptedModel {
    /// Loads a script file.
    pub fn from_file(path: &Path) -> Result<Self, LlmError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LlmError::Config(format!("cannot read script {}: {e}", path.display())))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::Config(format!("invalid script {}: {e}", path.display())))?;
        Ok(Self { model: v["model"].as_str().unwrap_or("scripted").to_owned() })
    }
}

#[async_trait::async_trait]
impl ChatModel for ScriptedModel {
    fn model_name(&self) -> &str {
        &self.model
    }

    fn provider(&self) -> &str {
        "scripted"
    }

    async fn chat(&self, _request: ChatRequest) -> Result<ChatResponse, LlmError> {
        Err(LlmError::Script("the scripted provider is not part of this build".into()))
    }
}
