//! Tools the executor's ReAct loop can call, and the registry that holds them.
//!
//! A tool is untrusted-input code: the model chooses its arguments. Every built-in confines itself
//! to the run's workspace and to what the config allows. Embedders add their own
//! with [`ToolRegistry::register`] or, for typed arguments, [`typed_tool`].

pub mod check;
pub mod command;
pub mod config;
pub mod fs;
pub mod http;
pub mod mcp;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::llm::ToolSpec;

/// What a tool call knows about where it runs.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The run's id.
    pub run_id: String,
    /// The step making the call.
    pub step_id: String,
    /// The step's attempt (1-based).
    pub attempt: u32,
    /// Index of this call within the attempt (0-based).
    pub call_index: u32,
    /// The run's workspace directory; file and command tools never leave it.
    pub workspace: PathBuf,
    /// Cancelled when the run is cancelled or the step's budget runs out: stop promptly.
    pub cancel: CancellationToken,
}

impl ToolContext {
    /// A context for calling a tool outside any run (tests, scripts, an embedder's own code):
    /// run `standalone`, step `standalone`, attempt 1, a fresh cancellation token.
    pub fn standalone(workspace: impl Into<PathBuf>) -> Self {
        Self {
            run_id: "standalone".into(),
            step_id: "standalone".into(),
            attempt: 1,
            call_index: 0,
            workspace: workspace.into(),
            cancel: CancellationToken::new(),
        }
    }

    /// A key unique to this call (run, step, attempt, call index) that a tool with side effects
    /// can use to deduplicate: steps interrupted by a crash run again (at-least-once).
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}/{}", self.run_id, self.step_id, self.attempt, self.call_index)
    }
}

/// Why a tool call failed. The message goes back to the model as the observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    /// The arguments did not match the tool's schema.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The call would leave the workspace, run a program not allowed, reach a forbidden address…
    #[error("denied: {0}")]
    Denied(String),
    /// The tool ran and failed.
    #[error("failed: {0}")]
    Failed(String),
    /// The tool did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The run was cancelled or the step's budget ran out.
    #[error("cancelled")]
    Cancelled,
    /// No tool by that name.
    #[error("unknown tool {name:?} (available: {available})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The registered tools, comma-separated.
        available: String,
    },
    /// The tool panicked; the panic was contained.
    #[error("tool panicked: {0}")]
    Panicked(String),
}

/// A tool: a name, a description and an argument schema for the model, and an async call.
#[async_trait::async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The name the model calls it by (`[a-zA-Z0-9_-]`, as providers require).
    fn name(&self) -> &str;
    /// What it does, for the model.
    fn description(&self) -> &str;
    /// JSON Schema of the arguments object.
    fn parameters(&self) -> serde_json::Value;
    /// True when running the same call twice is harmless (crash recovery re-runs steps).
    fn idempotent(&self) -> bool {
        false
    }
    /// What the tool says about its side effects (MCP tool annotations); all unknown by default.
    fn hints(&self) -> ToolHints {
        ToolHints::default()
    }
    /// Runs the tool. The returned text is the model's observation.
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> Result<String, ToolError>;
}

/// Hints a tool gives about its side effects, as MCP tool annotations carry them. They are
/// hints from the tool's author, shown to people (the API's tool listing), never trusted for
/// security decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, JsonSchema)]
pub struct ToolHints {
    /// The tool does not change its environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// The tool may destroy or overwrite things (meaningful when not read-only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destructive: Option<bool>,
    /// Calling it again with the same arguments has no further effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// The tool reaches an open world (the web, other systems) rather than a closed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_world: Option<bool>,
}

/// A named set of tools that may change while the runtime runs: one MCP server's tools, which
/// come and go with the server's `notifications/tools/list_changed`. Runs may be narrowed to some
/// sources by name ([`crate::options::RunOptions::mcp_servers`]).
pub trait ToolSource: Send + Sync + 'static {
    /// The source's name (an MCP server's configured name).
    fn name(&self) -> &str;
    /// The tools it offers now.
    fn tools(&self) -> Vec<Arc<dyn Tool>>;
    /// The tool called `name`, if it offers it now.
    fn tool(&self, name: &str) -> Option<Arc<dyn Tool>>;
    /// Its state, for readiness checks and the API.
    fn status(&self) -> SourceStatus;
}

/// The state of a [`ToolSource`], as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, JsonSchema)]
pub struct SourceStatus {
    /// The source's name.
    pub name: String,
    /// `connecting`, `ready`, `reconnecting` or `stopped`.
    pub state: String,
    /// Whether its tools can be called now.
    pub ready: bool,
    /// An optional source being down does not make the service unready.
    pub optional: bool,
    /// How many tools it offers now.
    pub tools: usize,
    /// Why it is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tools it listed but that are not offered (invalid schema, clashing name…), each with why.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub problems: Vec<String>,
}

/// The tools available to a runtime, by name: fixed tools, plus the tools of each
/// [`ToolSource`] as they are at the moment of asking.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    sources: Vec<Arc<dyn ToolSource>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .field("sources", &self.sources.iter().map(|s| s.name()).collect::<Vec<_>>())
            .finish()
    }
}

/// Which tool sources a run may use: `None` for all of them, or the names of those it may use.
pub type SourceScope<'a> = Option<&'a [String]>;

fn in_scope(scope: SourceScope<'_>, source: &str) -> bool {
    scope.is_none_or(|names| names.iter().any(|n| n == source))
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a tool.
    pub fn register(&mut self, tool: impl Tool) -> &mut Self {
        self.tools.insert(tool.name().to_owned(), Arc::new(tool));
        self
    }

    /// Adds (or replaces) a shared tool.
    pub fn register_arc(&mut self, tool: Arc<dyn Tool>) -> &mut Self {
        self.tools.insert(tool.name().to_owned(), tool);
        self
    }

    /// Adds a source of tools that may change at run time (an MCP server).
    pub fn add_source(&mut self, source: Arc<dyn ToolSource>) -> &mut Self {
        self.sources.push(source);
        self
    }

    /// The sources, in the order they were added.
    pub fn sources(&self) -> &[Arc<dyn ToolSource>] {
        &self.sources
    }

    /// The tool called `name`, fixed or from any source.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.get_in(name, None).ok()
    }

    /// Every tool name, sorted (the sources' tools as they are now).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tools.keys().cloned().collect();
        names.extend(self.sources.iter().flat_map(|s| s.tools()).map(|t| t.name().to_owned()));
        names.sort();
        names
    }

    /// The schemas the model sees: every tool.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = self.fixed_specs();
        specs.extend(self.source_specs(None));
        specs
    }

    /// The schemas of the fixed tools (those not from a source), which never change.
    pub fn fixed_specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| spec_of(t.as_ref())).collect()
    }

    /// The schemas of the sources' tools that `scope` lets a run use, as they are now.
    pub fn source_specs(&self, scope: SourceScope<'_>) -> Vec<ToolSpec> {
        self.sources
            .iter()
            .filter(|s| in_scope(scope, s.name()))
            .flat_map(|s| s.tools())
            .map(|t| spec_of(t.as_ref()))
            .collect()
    }

    /// Looks `name` up, or says which tools exist.
    pub fn lookup(&self, name: &str) -> Result<Arc<dyn Tool>, ToolError> {
        self.get_in(name, None)
    }

    /// Looks `name` up among the tools a run with `scope` may use. A tool of a source the run may
    /// not use is refused as denied, naming the source, rather than reported unknown.
    pub fn get_in(&self, name: &str, scope: SourceScope<'_>) -> Result<Arc<dyn Tool>, ToolError> {
        if let Some(tool) = self.tools.get(name) {
            return Ok(tool.clone());
        }
        for source in &self.sources {
            if let Some(tool) = source.tool(name) {
                if !in_scope(scope, source.name()) {
                    return Err(ToolError::Denied(format!(
                        "tool {name:?} belongs to MCP server {:?}, which this run may not use",
                        source.name()
                    )));
                }
                return Ok(tool);
            }
        }
        Err(ToolError::Unknown { name: name.to_owned(), available: self.names().join(", ") })
    }
}

fn spec_of(t: &dyn Tool) -> ToolSpec {
    ToolSpec {
        name: t.name().to_owned(),
        description: t.description().to_owned(),
        parameters: Arc::new(t.parameters()),
    }
}

/// The JSON Schema of `T`, as tool parameters.
pub fn schema_of<T: JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_else(|_| serde_json::json!({"type": "object"}))
}

/// Parses tool arguments into `T`, with an error the model can act on.
pub fn parse_args<T: DeserializeOwned>(args: serde_json::Value) -> Result<T, ToolError> {
    serde_json::from_value(args).map_err(|e| ToolError::InvalidArguments(e.to_string()))
}

/// A tool made from a typed async function: the schema comes from `A` (schemars), the arguments
/// are parsed into `A` before `f` runs.
///
/// ```
/// # use stepwise::tools::{typed_tool, ToolRegistry};
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Greet { name: String }
/// let mut tools = ToolRegistry::new();
/// tools.register(typed_tool("greet", "Greets someone", |a: Greet, _ctx| async move {
///     Ok(format!("hello {}", a.name))
/// }));
/// ```
pub fn typed_tool<A, F, Fut>(name: &str, description: &str, f: F) -> impl Tool
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A, ToolContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, ToolError>> + Send + 'static,
{
    FnTool {
        name: name.to_owned(),
        description: description.to_owned(),
        schema: schema_of::<A>(),
        f,
        _a: std::marker::PhantomData,
    }
}

struct FnTool<A, F> {
    name: String,
    description: String,
    schema: serde_json::Value,
    f: F,
    _a: std::marker::PhantomData<fn(A)>,
}

#[async_trait::async_trait]
impl<A, F, Fut> Tool for FnTool<A, F>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A, ToolContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, ToolError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> serde_json::Value {
        self.schema.clone()
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> Result<String, ToolError> {
        let a: A = parse_args(args)?;
        (self.f)(a, ctx.clone()).await
    }
}

/// A registry of the built-in tools that `config` enables: `read_file`, `write_file` and
/// `list_dir` with `files.enabled`, `run_command` with `run_command.enabled` (off by default),
/// `http_get` with `http_get.enabled`.
pub fn builtin_registry(config: &config::ToolsConfig) -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    if config.files.enabled {
        tools
            .register(fs::ReadFileTool::new(&config.files))
            .register(fs::WriteFileTool::new(&config.files))
            .register(fs::ListDirTool::new());
    }
    if config.run_command.enabled {
        tools.register(command::RunCommandTool::new(config.run_command.clone()));
    }
    if config.http_get.enabled {
        tools.register(http::HttpGetTool::new(config.http_get.clone()));
    }
    tools
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::config::ToolsConfig;
    use super::*;

    fn ctx(workspace: PathBuf) -> ToolContext {
        ToolContext {
            run_id: "r1".into(),
            step_id: "s2".into(),
            attempt: 3,
            call_index: 4,
            workspace,
            cancel: CancellationToken::new(),
        }
    }

    #[test]
    fn default_registry_has_files_and_http_but_not_run_command() {
        let tools = builtin_registry(&ToolsConfig::default());
        assert_eq!(tools.names(), ["http_get", "list_dir", "read_file", "write_file"]);
    }

    #[test]
    fn registry_follows_the_enabled_flags() {
        let mut cfg = ToolsConfig::default();
        cfg.run_command.enabled = true;
        cfg.run_command.allow = vec!["python3".into()];
        assert_eq!(
            builtin_registry(&cfg).names(),
            ["http_get", "list_dir", "read_file", "run_command", "write_file"]
        );
        cfg.files.enabled = false;
        cfg.http_get.enabled = false;
        assert_eq!(builtin_registry(&cfg).names(), ["run_command"]);
        cfg.run_command.enabled = false;
        assert!(builtin_registry(&cfg).names().is_empty());
    }

    #[test]
    fn registry_specs_carry_descriptions_and_object_schemas() {
        let mut cfg = ToolsConfig::default();
        cfg.run_command.enabled = true;
        let specs = builtin_registry(&cfg).specs();
        assert_eq!(specs.len(), 5);
        for spec in specs {
            assert!(!spec.description.is_empty(), "{}", spec.name);
            assert_eq!(spec.parameters["type"], json!("object"), "{}", spec.name);
            assert_eq!(spec.parameters["additionalProperties"], json!(false), "{}", spec.name);
        }
    }

    #[tokio::test]
    async fn registry_tools_use_the_configured_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ToolsConfig::default();
        cfg.files.max_file_bytes = 4;
        let tools = builtin_registry(&cfg);
        let write = tools.lookup("write_file").unwrap();
        let c = ctx(dir.path().to_path_buf());
        assert!(write.call(json!({"path": "a", "content": "1234"}), &c).await.is_ok());
        let r = write.call(json!({"path": "a", "content": "12345"}), &c).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments(_))), "{r:?}");
    }

    #[test]
    fn lookup_of_an_unknown_tool_lists_the_available_ones() {
        let tools = builtin_registry(&ToolsConfig::default());
        let Err(err) = tools.lookup("rm_rf") else { panic!("rm_rf must not exist") };
        assert_eq!(
            err,
            ToolError::Unknown {
                name: "rm_rf".into(),
                available: "http_get, list_dir, read_file, write_file".into()
            }
        );
        assert!(err.to_string().contains("\"rm_rf\""));
        assert!(tools.lookup("read_file").is_ok());
    }

    /// A source whose tools are whatever the test puts in it.
    struct FakeSource(String, std::sync::Mutex<Vec<Arc<dyn Tool>>>);

    impl ToolSource for FakeSource {
        fn name(&self) -> &str {
            &self.0
        }
        fn tools(&self) -> Vec<Arc<dyn Tool>> {
            self.1.lock().unwrap().clone()
        }
        fn tool(&self, name: &str) -> Option<Arc<dyn Tool>> {
            self.tools().into_iter().find(|t| t.name() == name)
        }
        fn status(&self) -> SourceStatus {
            SourceStatus {
                name: self.0.clone(),
                state: "ready".into(),
                ready: true,
                optional: false,
                tools: self.tools().len(),
                error: None,
                problems: vec![],
            }
        }
    }

    #[tokio::test]
    async fn sources_tools_follow_their_current_list_and_the_runs_scope() {
        let mut tools = builtin_registry(&ToolsConfig::default());
        let source = Arc::new(FakeSource("srv".into(), Default::default()));
        tools.add_source(source.clone());
        assert!(tools.get("srv__a").is_none());
        let a: Arc<dyn Tool> =
            Arc::new(typed_tool("srv__a", "A", |_: Add, _ctx| async { Ok("a".to_owned()) }));
        source.1.lock().unwrap().push(a);
        // Added after the registry was built, and seen at once.
        assert!(tools.names().contains(&"srv__a".to_owned()));
        assert_eq!(tools.fixed_specs().len(), 4);
        assert_eq!(tools.specs().len(), 5);
        assert_eq!(tools.source_specs(Some(&["other".to_owned()])).len(), 0);
        assert_eq!(tools.source_specs(Some(&["srv".to_owned()])).len(), 1);
        assert!(tools.get_in("srv__a", None).is_ok());
        assert!(tools.get_in("read_file", Some(&[])).is_ok(), "fixed tools are not scoped");
        let Err(denied) = tools.get_in("srv__a", Some(&[])) else { panic!("out of scope") };
        assert!(matches!(&denied, ToolError::Denied(m) if m.contains("\"srv\"")), "{denied:?}");
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Add {
        /// First addend.
        a: i64,
        /// Second addend.
        b: i64,
    }

    #[tokio::test]
    async fn typed_tool_parses_arguments_and_passes_the_context() {
        let tool = typed_tool("add", "Adds two numbers", |args: Add, ctx: ToolContext| async move {
            Ok(format!("{} ({})", args.a + args.b, ctx.idempotency_key()))
        });
        assert_eq!(tool.name(), "add");
        assert_eq!(tool.description(), "Adds two numbers");
        assert!(!tool.idempotent());
        let schema = tool.parameters();
        assert_eq!(schema["properties"]["a"]["type"], json!("integer"));
        assert_eq!(schema["required"], json!(["a", "b"]));
        let c = ctx(PathBuf::from("/nonexistent"));
        assert_eq!(tool.call(json!({"a": 2, "b": 3}), &c).await, Ok("5 (r1/s2/3/4)".to_owned()));
        let r = tool.call(json!({"a": 2}), &c).await;
        assert!(matches!(&r, Err(ToolError::InvalidArguments(m)) if m.contains("`b`")), "{r:?}");
        let r = tool.call(json!({"a": 2, "b": 3, "c": 4}), &c).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments(_))));
    }

    #[tokio::test]
    async fn registered_typed_tools_are_found_by_name() {
        let mut tools = ToolRegistry::new();
        tools.register(typed_tool(
            "echo_a",
            "Echoes a",
            |args: Add, _ctx| async move { Ok(args.a.to_string()) },
        ));
        let tool = tools.lookup("echo_a").unwrap();
        assert_eq!(tool.call(json!({"a": 7, "b": 0}), &ctx(PathBuf::new())).await, Ok("7".to_owned()));
        assert_eq!(tools.specs()[0].name, "echo_a");
    }
}
