//! A tool of an MCP server as a stepwise [`Tool`]: named `<server>__<tool>`, with the server's
//! description, input schema and annotations.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tracing::Instrument;

use super::McpError;
use super::connection::Core;
use super::content;
use crate::tools::{Tool, ToolContext, ToolError, ToolHints};

/// Longest tool name providers accept.
const MAX_TOOL_NAME: usize = 64;

/// A tool offered by an MCP server.
pub struct McpTool {
    core: Arc<Core>,
    /// `<server>__<tool>`.
    name: String,
    /// The server's own name for it.
    remote: String,
    description: String,
    schema: Value,
    hints: ToolHints,
}

impl McpTool {
    /// The server's name for the tool.
    pub fn remote_name(&self) -> &str {
        &self.remote
    }

    /// The server it belongs to.
    pub fn server(&self) -> &str {
        self.core.name()
    }
}

/// `name` with every character that provider tool names do not allow replaced by `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Checks that `schema` describes an arguments object as providers need it, adding
/// `"type": "object"` where the server left it out.
fn check_schema(schema: &serde_json::Map<String, Value>) -> Result<Value, String> {
    let mut schema = schema.clone();
    match schema.get("type") {
        None => {
            schema.insert("type".into(), Value::from("object"));
        }
        Some(Value::String(t)) if t == "object" => {}
        Some(other) => return Err(format!("\"type\" must be \"object\", not {other}")),
    }
    match schema.get("properties") {
        None => {}
        Some(Value::Object(props)) => {
            if let Some((name, _)) = props.iter().find(|(_, v)| !v.is_object() && !v.is_boolean()) {
                return Err(format!("property {name:?} is not a schema"));
            }
        }
        Some(other) => return Err(format!("\"properties\" must be an object, not {other}")),
    }
    match schema.get("required") {
        None => {}
        Some(Value::Array(names)) if names.iter().all(Value::is_string) => {}
        Some(other) => return Err(format!("\"required\" must be a list of names, not {other}")),
    }
    Ok(Value::Object(schema))
}

/// The stepwise tools for what a server listed, and a description of every listed tool that
/// is not offered (filtered out by allow / deny is not a problem; a bad schema or name is).
pub(crate) fn build(
    core: &Arc<Core>,
    listed: Vec<rmcp::model::Tool>,
) -> (BTreeMap<String, Arc<McpTool>>, Vec<String>) {
    let server = core.name();
    let mut tools: BTreeMap<String, Arc<McpTool>> = BTreeMap::new();
    let mut problems = Vec::new();
    for t in listed {
        let remote = t.name.to_string();
        if !core.cfg.offers(&remote) {
            continue;
        }
        let name = format!("{server}__{}", sanitize(&remote));
        if name.len() > MAX_TOOL_NAME {
            problems.push(format!(
                "MCP server {server:?}: tool {remote:?} not offered: {name:?} is longer than the {MAX_TOOL_NAME} characters tool names may have"
            ));
            continue;
        }
        if let Some(first) = tools.get(&name) {
            problems.push(format!(
                "MCP server {server:?}: tool {remote:?} not offered: its name {name:?} clashes with tool {:?}",
                first.remote
            ));
            continue;
        }
        let schema = match check_schema(&t.input_schema) {
            Ok(schema) => schema,
            Err(why) => {
                problems.push(format!(
                    "MCP server {server:?}: tool {remote:?} not offered: invalid input schema: {why}"
                ));
                continue;
            }
        };
        let hints = t
            .annotations
            .as_ref()
            .map(|a| ToolHints {
                read_only: a.read_only_hint,
                destructive: a.destructive_hint,
                idempotent: a.idempotent_hint,
                open_world: a.open_world_hint,
            })
            .unwrap_or_default();
        let description = match t.description.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() => d.to_owned(),
            _ => format!("Tool {remote:?} of MCP server {server:?}."),
        };
        tools.insert(
            name.clone(),
            Arc::new(McpTool { core: core.clone(), name, remote, description, schema, hints }),
        );
    }
    (tools, problems)
}

impl From<McpError> for ToolError {
    fn from(e: McpError) -> Self {
        match e {
            McpError::Cancelled => ToolError::Cancelled,
            McpError::CallTimeout { after, .. } => ToolError::Timeout(after),
            McpError::InvalidArguments { .. } => ToolError::InvalidArguments(e.to_string()),
            other => ToolError::Failed(other.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        self.schema.clone()
    }

    /// Idempotent when the server hints so, or hints that the tool only reads.
    fn idempotent(&self) -> bool {
        self.hints.idempotent == Some(true) || self.hints.read_only == Some(true)
    }

    fn hints(&self) -> ToolHints {
        self.hints.clone()
    }

    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<String, ToolError> {
        let arguments = match args {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(McpError::InvalidArguments {
                    server: self.core.name().to_owned(),
                    tool: self.remote.clone(),
                    message: format!("expected an object, got {other}"),
                }
                .into());
            }
        };
        // A client span under the step's `execute_tool` span (OpenTelemetry MCP conventions).
        let span = tracing::info_span!(
            "mcp.client",
            otel.name = %format_args!("tools/call {}", self.remote),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            mcp.method.name = "tools/call",
            mcp.session.id = tracing::field::Empty,
            mcp.server.name = self.core.name(),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %self.remote,
            jsonrpc.request.id = tracing::field::Empty,
            network.transport = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result = self.core.call(&self.remote, arguments, &ctx.cancel).instrument(span.clone()).await;
        let failed = |kind: &str| {
            span.record("error.type", kind);
            span.record("otel.status_code", "ERROR");
        };
        match result {
            Ok(result) if result.is_error == Some(true) => {
                failed("tool_error");
                // The model sees the server's message and can act on it.
                Err(ToolError::Failed(content::observation(&result)))
            }
            Ok(result) => Ok(content::observation(&result)),
            Err(e) => {
                failed(e.kind());
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names_keep_only_what_providers_allow() {
        assert_eq!(sanitize("read_file"), "read_file");
        assert_eq!(sanitize("get.weather/v2"), "get_weather_v2");
        assert_eq!(sanitize("naïve"), "na_ve");
    }

    #[test]
    fn schemas_must_describe_an_object() {
        assert_eq!(check_schema(&obj(json!({}))).unwrap(), json!({"type": "object"}));
        let ok =
            json!({"type": "object", "properties": {"a": {"type": "string"}, "b": true}, "required": ["a"]});
        assert_eq!(check_schema(&obj(ok.clone())).unwrap(), ok);
        for (bad, why) in [
            (json!({"type": "string"}), "\"type\""),
            (json!({"type": "object", "properties": 5}), "\"properties\""),
            (json!({"type": "object", "properties": {"a": 1}}), "property \"a\""),
            (json!({"type": "object", "required": "a"}), "\"required\""),
        ] {
            let err = check_schema(&obj(bad)).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
