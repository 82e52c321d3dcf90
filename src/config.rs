//! Typed configuration: `config/stepwise.toml` plus `STEPWISE_*` environment overrides.
//!
//! Resolution order (later wins): built-in defaults, the TOML file, then environment variables
//! named `STEPWISE_<SECTION>__<KEY>[__<SUBKEY>…]` (a double underscore separates levels; the
//! segments after the upper-case `STEPWISE_` prefix are case-insensitive and become lower-case keys), e.g. `STEPWISE_POLICY__MAX_RETRIES=3` or
//! `STEPWISE_TOOLS__RUN_COMMAND__ALLOW='["ls","mkdir"]'`. An override's value is read as a TOML
//! value when it parses as one (numbers, booleans, arrays, inline tables), else as a string.
//! Variables starting `STEPWISE_` without a `__` (`STEPWISE_API_TOKENS`, `STEPWISE_LOG`) are not
//! overrides and are ignored.
//!
//! Every section denies unknown keys, and every error names where it came from: the file and the
//! key (with line and column), or the environment variable. Relative paths are relative to the
//! working directory of the process.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::executors::{
    DEFAULT_MAX_EXECUTORS, DEFAULT_MIN_EXECUTORS, DEFAULT_SHRINK_AFTER, MAX_EXECUTORS_LIMIT,
};
use crate::llm::config::LlmConfig;
use crate::options::{Policy, RunBudget, RunOptions, StepBudget};
use crate::tools::config::ToolsConfig;

/// The file [`Config::load`] reads when no path is given, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/stepwise.toml";

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "STEPWISE_";

/// Keys that no longer exist, with what to set instead: naming one gets this explanation rather
/// than the generic unknown-key error.
const REMOVED_KEYS: &[(&str, &str)] = &[(
    "runtime.executor_pool_size",
    "the executor pool now grows and shrinks with the work; set `executors.min_workers` and \
     `executors.max_workers` instead (both to N for a fixed pool of N)",
)];

/// Why the configuration could not be loaded. Each variant names the file, key or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config or prompt file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A config file is not valid TOML or does not match the schema (unknown key, bad value).
    #[error("invalid config in {origin}: {message}")]
    Parse {
        /// Where the text came from (a file path, or a label).
        origin: String,
        /// The TOML error, with line, column and key.
        message: String,
    },
    /// An environment override names an unknown key or carries a bad value.
    #[error("invalid environment override {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// The values parse but make no sense together (a zero pool size, a zero timeout…).
    #[error("invalid config value `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `executors.max_workers`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A key that was removed from the configuration; the message says what replaced it.
    #[error("`{key}` in {origin} is no longer supported: {replacement}")]
    Removed {
        /// Dotted key, e.g. `runtime.executor_pool_size`.
        key: String,
        /// Where it was set: a file, or an environment variable.
        origin: String,
        /// What to set instead.
        replacement: String,
    },
}

/// The whole configuration (`config/stepwise.toml`); every section and key is optional.
///
/// ```
/// use stepwise::Config;
///
/// let config = Config::from_toml_str("[policy]\nmax_retries = 3\n", "example")?;
/// config.validate()?;
/// assert_eq!(config.policy.max_retries, 3);
/// let typo = Config::from_toml_str("[policy]\nmax_retires = 3\n", "example").unwrap_err();
/// assert!(typo.to_string().contains("max_retires"));
/// # Ok::<(), stepwise::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Model call concurrency and where data lives.
    pub runtime: RuntimeConfig,
    /// Bounds of the executor pool.
    pub executors: ExecutorsConfig,
    /// Default run policy (failure handling, replanning, verification, approval).
    pub policy: Policy,
    /// Default per-step and per-run budgets.
    pub budget: BudgetConfig,
    /// Model provider(s).
    pub llm: LlmConfig,
    /// Built-in tools.
    pub tools: ToolsConfig,
    /// System prompt overrides.
    pub prompts: PromptsConfig,
    /// The HTTP service (`stepwise serve`).
    pub server: ServerConfig,
    /// Traces, metrics and what goes into spans.
    pub telemetry: TelemetryConfig,
    /// Several replicas on one Postgres store: leases and the step queue.
    pub cluster: ClusterConfig,
    /// Reuse of earlier runs' plans for the same task (off by default).
    pub plan_cache: PlanCacheConfig,
}

/// The `[plan_cache]` section: a run whose task, tools, planner model and planner prompt match
/// an earlier completed run's reuses its plan instead of calling the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanCacheConfig {
    /// Whether runs look for (and completed runs leave) a cached plan.
    pub enabled: bool,
    /// Most entries kept; writing one more evicts the oldest (≥ 1).
    pub max_entries: usize,
    /// Seconds an entry may be reused after it was written (≥ 1).
    pub ttl_secs: u64,
}

impl Default for PlanCacheConfig {
    fn default() -> Self {
        Self { enabled: false, max_entries: 1000, ttl_secs: 86_400 }
    }
}

impl PlanCacheConfig {
    /// The bounds a runtime keeps the cache in, or `None` when the cache is off.
    pub fn bounds(&self) -> Option<crate::store::plan_cache::PlanCacheBounds> {
        self.enabled.then(|| crate::store::plan_cache::PlanCacheBounds {
            max_entries: self.max_entries,
            ttl: std::time::Duration::from_secs(self.ttl_secs),
        })
    }
}

/// The `[cluster]` section: how replicas sharing a Postgres store (`server.store_url`) divide
/// the work. Ignored with any other store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's name in leases, metrics and logs; default `<hostname>-<pid>`. Must be
    /// unique among live replicas.
    pub replica_id: Option<String>,
    /// Seconds after its last heartbeat that a replica's run and step leases expire and other
    /// replicas take them over (≥ 1; heartbeats come every third of it).
    pub lease_ttl_secs: u64,
    /// How often a replica looks for work even without a notification (≥ 10 ms).
    pub poll_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { replica_id: None, lease_ttl_secs: 5, poll_interval_ms: 500 }
    }
}

/// The `[server]` section: `stepwise serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Without `STEPWISE_API_TOKENS`, only loopback addresses are allowed.
    pub bind: String,
    /// Run store URL: `sqlite://PATH` or `postgres://…` (default: `<data_dir>/stepwise.db`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_url: Option<String>,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Runs in progress at once; a submission beyond it gets 429.
    pub queue_limit: usize,
    /// On SIGTERM, how long running runs may take to finish before the process exits anyway
    /// (what is left resumes from the store on the next start), in seconds.
    pub drain_secs: u64,
    /// The web page's link to a run's trace: `{trace_id}` is replaced by the run's trace id (its
    /// run id's 32 hex digits, e.g. Jaeger's `…/trace/{trace_id}`), `{run_id}` by the run id; no
    /// link when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_url_template: Option<String>,
    /// The most a run submitted over the API may ask for (`[server.limits]`).
    pub limits: crate::options::RunLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            store_url: None,
            max_body_bytes: 1024 * 1024,
            queue_limit: 1000,
            drain_secs: 30,
            trace_url_template: None,
            limits: crate::options::RunLimits::default(),
        }
    }
}

/// The `[telemetry]` section. The standard `OTEL_*` variables take precedence over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP endpoint (as `OTEL_EXPORTER_OTLP_ENDPOINT`); export is off when neither is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` or `grpc` (as `OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub otlp_protocol: String,
    /// `service.name` (as `OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Put prompts, outputs and tool arguments into spans (truncated). Off: they may hold data
    /// that should not leave the machine.
    pub record_content: bool,
    /// Longest content recorded per attribute, in bytes.
    pub max_content_bytes: usize,
    /// How log lines on stderr look: `text` (coloured only on a terminal) or `json` (one object
    /// a line, for a service's log collector).
    pub log_format: LogFormat,
}

/// How log lines on stderr are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            otlp_protocol: "http/protobuf".into(),
            service_name: "stepwise".into(),
            record_content: false,
            max_content_bytes: 2048,
        }
    }
}

/// The `[runtime]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Planner, replanner and synthesizer calls in flight at once across all runs (executors'
    /// model calls are bounded by `executors.max_workers`). Default
    /// [`crate::llm::DEFAULT_LLM_CONCURRENCY`]: a run has at most one such call in flight,
    /// so 2,048 never delays 2,000 concurrent runs.
    pub llm_concurrency: usize,
    /// Where the run store (SQLite) and, by default, workspaces live.
    pub data_dir: PathBuf,
    /// Parent of the per-run workspaces the file tools are confined to (default
    /// `<data_dir>/workspaces`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_root: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            llm_concurrency: crate::llm::DEFAULT_LLM_CONCURRENCY,
            data_dir: PathBuf::from("stepwise-data"),
            workspace_root: None,
        }
    }
}

/// The `[executors]` section: the executor pool keeps `min_workers`, grows with the steps ready
/// to run up to `max_workers`, and shrinks back once it has had more workers than steps for
/// `shrink_after_idle_secs`. Steps mostly wait on remote models, so the defaults (4 to 512) let
/// hundreds of steps be in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorsConfig {
    /// Workers kept even when nothing runs (≥ 1).
    pub min_workers: usize,
    /// Most workers, i.e. most step attempts running at once across all runs (≥ min_workers).
    pub max_workers: usize,
    /// Seconds the pool must have had more workers than steps before it shrinks (≥ 1).
    pub shrink_after_idle_secs: u64,
}

impl Default for ExecutorsConfig {
    fn default() -> Self {
        Self {
            min_workers: DEFAULT_MIN_EXECUTORS,
            max_workers: DEFAULT_MAX_EXECUTORS,
            shrink_after_idle_secs: DEFAULT_SHRINK_AFTER.as_secs(),
        }
    }
}

/// The `[budget]` section: defaults for every run, overridable per run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// What one step attempt may spend.
    pub step: StepBudget,
    /// What a whole run may spend.
    pub run: RunBudget,
}

/// The `[prompts]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptsConfig {
    /// Directory whose `planner.md`, `executor.md`, … replace the built-in system prompts, and
    /// whose `planner.user.md`, `executor.user.md`, … replace the built-in user-message templates
    /// (files that are absent keep the built-in text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Config {
    /// Loads the configuration: `path` (which must exist), else [`DEFAULT_CONFIG_PATH`] if it
    /// exists, else the defaults; then applies `STEPWISE_*` overrides from the process
    /// environment and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = Path::new(DEFAULT_CONFIG_PATH);
        let file = match path {
            Some(p) => Some(p),
            None if default_path.is_file() => Some(default_path),
            None => None,
        };
        let mut config = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
                Config::from_toml_str(&text, &p.display().to_string())?
            }
            None => Config::default(),
        };
        // `vars()` panics on non-Unicode variables; such a variable cannot be an override anyway.
        let vars =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        config.apply_env(vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; `origin` (a file path or a label) is named in errors. Not validated.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        // Deserialising straight from the text keeps spans, so errors carry line and column.
        toml::from_str(text).map_err(|e| {
            removed_key_in(text, origin).unwrap_or_else(|| ConfigError::Parse {
                origin: origin.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })
        })
    }

    /// Applies `STEPWISE_<SECTION>__<KEY>…` overrides from `vars`, ignoring every other variable.
    /// Overrides are applied one at a time, in name order, so an error names its variable.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        let mut overrides: Vec<(String, Vec<String>, String)> = Vec::new();
        for (var, value) in vars {
            if let Some(path) = override_path(&var)? {
                overrides.push((var, path, value));
            }
        }
        if overrides.is_empty() {
            return Ok(());
        }
        overrides.sort_by(|a, b| a.0.cmp(&b.0));

        let mut table = toml::Table::try_from(&*self)
            .map_err(|e| ConfigError::Invalid { key: "<config>".into(), message: e.to_string() })?;
        for (var, path, raw) in overrides {
            let env_err = |message: String| ConfigError::Env { var: var.clone(), message };
            let key = path.join(".");
            if let Some(replacement) = replacement_of(&key) {
                let origin = format!("environment variable {var}");
                return Err(ConfigError::Removed { key, origin, replacement: replacement.to_owned() });
            }
            let parsed = raw.parse::<toml::Value>().ok();
            let mut candidates = Vec::with_capacity(2);
            if let Some(v) = parsed.clone() {
                candidates.push(v);
            }
            // A value that parses as TOML but not as the key's type (a model named `4`, a date-like
            // string) is retried as the plain string it also is.
            if !matches!(parsed, Some(toml::Value::String(_))) {
                candidates.push(toml::Value::String(raw.clone()));
            }
            let mut first_error = None;
            let mut applied = None;
            for candidate in candidates {
                let mut attempt = table.clone();
                set_path(&mut attempt, &path, candidate).map_err(env_err)?;
                match attempt.clone().try_into::<Config>() {
                    Ok(config) => {
                        applied = Some((attempt, config));
                        break;
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.to_string().trim_end().replace('\n', " "));
                    }
                }
            }
            match applied {
                Some((t, config)) => {
                    table = t;
                    *self = config;
                }
                None => {
                    let e = first_error.unwrap_or_default();
                    return Err(env_err(format!("cannot set `{key}` to {raw:?}: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Checks values that parse but cannot work; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key: key.to_owned(), message: message.into() })
        }
        let at_least_one: [(&str, u64); 18] = [
            ("plan_cache.max_entries", self.plan_cache.max_entries as u64),
            ("plan_cache.ttl_secs", self.plan_cache.ttl_secs),
            ("executors.min_workers", self.executors.min_workers as u64),
            ("executors.max_workers", self.executors.max_workers as u64),
            ("executors.shrink_after_idle_secs", self.executors.shrink_after_idle_secs),
            (
                "tools.run_command.max_concurrent",
                self.tools.run_command.max_concurrent.map_or(1, |n| n as u64),
            ),
            ("runtime.llm_concurrency", self.runtime.llm_concurrency as u64),
            ("budget.step.max_iterations", self.budget.step.max_iterations.into()),
            ("budget.step.timeout_ms", self.budget.step.timeout_ms),
            ("llm.request_timeout_secs", self.llm.request_timeout_secs),
            ("tools.run_command.timeout_secs", self.tools.run_command.timeout_secs),
            ("tools.run_command.max_output_bytes", self.tools.run_command.max_output_bytes as u64),
            ("tools.files.max_file_bytes", self.tools.files.max_file_bytes as u64),
            ("tools.http_get.timeout_secs", self.tools.http_get.timeout_secs),
            ("tools.http_get.max_bytes", self.tools.http_get.max_bytes as u64),
            ("llm.max_tokens", self.llm.max_tokens.map_or(1, u64::from)),
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            ("server.queue_limit", self.server.queue_limit as u64),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        self.validate_executors()?;
        self.validate_cluster()?;
        // The defaults every run starts from must be within what a run may ask for.
        if let Err(e) = self.server.limits.check(&self.run_options()) {
            let key = format!("server.limits.{}", e.limit_key);
            return invalid(
                &key,
                format!("{} is below the configured default {} ({})", e.limit, e.value, e.field),
            );
        }
        if let Some(t) = &self.server.trace_url_template {
            let names_run = t.contains("{trace_id}") || t.contains("{run_id}");
            if !(t.starts_with("http://") || t.starts_with("https://")) || !names_run {
                return invalid(
                    "server.trace_url_template",
                    "must be an http(s) URL containing {trace_id} or {run_id}",
                );
            }
        }
        if self.runtime.data_dir.as_os_str().is_empty() {
            return invalid("runtime.data_dir", "must not be empty");
        }
        if let Some(t) = self.llm.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return invalid("llm.temperature", format!("must be a number ≥ 0, got {t}"));
        }
        if let Err(e) = crate::llm::price::validate(&self.llm.price_currency, &self.llm.prices) {
            return invalid(&e.key, e.message);
        }
        for (key, cap) in [
            ("budget.step.max_cost", self.budget.step.max_cost),
            ("budget.run.max_cost", self.budget.run.max_cost),
        ] {
            if !(cap.is_finite() && cap >= 0.0) {
                return invalid(key, format!("must be a number ≥ 0 (0: no limit), got {cap}"));
            }
        }
        if !matches!(self.telemetry.otlp_protocol.as_str(), "http/protobuf" | "grpc") {
            return invalid(
                "telemetry.otlp_protocol",
                format!(
                    "{:?} is not supported: use \"http/protobuf\" or \"grpc\"",
                    self.telemetry.otlp_protocol
                ),
            );
        }
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "server.bind",
                format!("{:?} is not an address like 127.0.0.1:8080", self.server.bind),
            );
        }
        for program in &self.tools.run_command.allow {
            if program.is_empty() || program.contains(['/', '\\']) || program.trim() != program {
                return invalid(
                    "tools.run_command.allow",
                    format!("{program:?} is not a program name: give bare names like \"ls\", no paths"),
                );
            }
        }
        if let Err(crate::tools::mcp::McpError::Config { server, key, message }) = self.tools.mcp.validate() {
            return invalid(&format!("tools.mcp.servers[{server:?}].{key}"), message);
        }
        Ok(())
    }

    /// Lease and polling times a replica can keep.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid { key: key.to_owned(), message: message.to_owned() })
        };
        if self.cluster.lease_ttl_secs == 0 {
            return invalid("cluster.lease_ttl_secs", "must be at least 1");
        }
        if self.cluster.poll_interval_ms < 10 {
            return invalid("cluster.poll_interval_ms", "must be at least 10");
        }
        if self.cluster.replica_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return invalid("cluster.replica_id", "must not be blank (leave it out for <hostname>-<pid>)");
        }
        Ok(())
    }

    /// `executors.max_workers` between `executors.min_workers` and what ractor's factory allows.
    fn validate_executors(&self) -> Result<(), ConfigError> {
        let (min, max) = (self.executors.min_workers, self.executors.max_workers);
        let message = if max < min {
            format!("{max} is below executors.min_workers ({min}); set both to N for a fixed pool")
        } else if max > MAX_EXECUTORS_LIMIT {
            format!("{max} is above the most workers a pool can have ({MAX_EXECUTORS_LIMIT})")
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid { key: "executors.max_workers".into(), message })
    }

    /// The default options of a run (policy and budgets), before per-run overrides.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            policy: self.policy.clone(),
            step_budget: self.budget.step.clone(),
            run_budget: self.budget.run.clone(),
            mcp_servers: None,
        }
    }

    /// Where per-run workspaces are created: `runtime.workspace_root`, else `<data_dir>/workspaces`.
    pub fn workspace_root(&self) -> PathBuf {
        self.runtime.workspace_root.clone().unwrap_or_else(|| self.runtime.data_dir.join("workspaces"))
    }
}

/// What replaced `key` (dotted), if it is a removed key.
fn replacement_of(key: &str) -> Option<&'static str> {
    REMOVED_KEYS.iter().find(|(k, _)| *k == key).map(|(_, replacement)| *replacement)
}

/// The [`ConfigError::Removed`] for the first removed key `text` sets, if it parses as TOML.
/// Only called on a parse error, which a removed key causes (every section denies unknown keys).
fn removed_key_in(text: &str, origin: &str) -> Option<ConfigError> {
    let table: toml::Table = text.parse().ok()?;
    let (key, replacement) = REMOVED_KEYS.iter().find(|(key, _)| has_key(&table, key))?;
    Some(ConfigError::Removed {
        key: (*key).to_owned(),
        origin: origin.to_owned(),
        replacement: (*replacement).to_owned(),
    })
}

/// Whether `table` sets the dotted `key`.
fn has_key(table: &toml::Table, key: &str) -> bool {
    let mut segments = key.split('.');
    let first = segments.next().and_then(|s| table.get(s));
    segments.fold(first, |value, segment| value.and_then(|v| v.get(segment))).is_some()
}

/// `STEPWISE_POLICY__MAX_RETRIES` → `Some(["policy", "max_retries"])`; other variables → `None`.
fn override_path(var: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(rest) = var.strip_prefix(ENV_PREFIX) else { return Ok(None) };
    if !rest.contains("__") {
        return Ok(None);
    }
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: "empty key segment: levels are separated by exactly two underscores".into(),
        });
    }
    Ok(Some(path))
}

/// Sets `path` in `table` to `value`, creating sections on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("an empty key".into());
    };
    let mut current = table;
    for (i, segment) in parents.iter().enumerate() {
        let entry = current.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{}` is a value, not a section", path[..=i].join("."))),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::AgentRole;
    use crate::llm::config::{ProviderKind, RoleModelConfig};
    use crate::options::FailurePolicy;

    const SHIPPED: &str = include_str!("../config/stepwise.toml");

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => leaf_keys(t, &key, out),
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn shipped_file_equals_defaults_and_lists_every_key() {
        let parsed = Config::from_toml_str(SHIPPED, "config/stepwise.toml").unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();

        // Every key the defaults serialise (all non-optional ones) is spelled out in the file.
        let mut expected = vec![];
        leaf_keys(&toml::Table::try_from(Config::default()).unwrap(), "", &mut expected);
        let mut present = vec![];
        leaf_keys(&SHIPPED.parse::<toml::Table>().unwrap(), "", &mut present);
        let missing: Vec<_> = expected.iter().filter(|k| !present.contains(k)).collect();
        assert!(missing.is_empty(), "keys missing from config/stepwise.toml: {missing:?}");
        assert!(expected.len() > 30, "suspiciously few keys: {expected:?}");
    }

    #[test]
    fn shipped_price_example_parses_when_uncommented() {
        let block: String = SHIPPED
            .lines()
            .skip_while(|l| !l.starts_with("# [[llm.prices]]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
            .collect();
        let config = Config::from_toml_str(&block, "example").unwrap();
        config.validate().unwrap();
        let table = config.llm.price_table().unwrap();
        let price = table.get("openai", "gpt-4.1-mini").expect("the example's entry");
        assert_eq!((price.input_per_mtok, price.cached_input_per_mtok), (0.4, Some(0.1)));
    }

    #[test]
    fn bad_prices_and_money_caps_are_refused_naming_the_key() {
        let entry =
            "[[llm.prices]]\nprovider = \"openai\"\nmodel = \"m\"\ninput_per_mtok = 1\noutput_per_mtok = 2\n";
        let twice = Config::from_toml_str(&format!("{entry}{entry}"), "t").unwrap().validate().unwrap_err();
        assert!(twice.to_string().contains("llm.prices[1].model"), "{twice}");
        let negative = entry.replace("output_per_mtok = 2", "output_per_mtok = -2");
        let e = Config::from_toml_str(&negative, "t").unwrap().validate().unwrap_err();
        assert!(
            e.to_string().contains("llm.prices[0].output_per_mtok") && e.to_string().contains("-2"),
            "{e}"
        );
        let unknown = entry.replace("model = ", "modle = \"x\"\nmodel = ");
        let e = Config::from_toml_str(&unknown, "t").unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
        let mut config = Config::default();
        config.budget.run.max_cost = -1.0;
        let e = config.validate().unwrap_err();
        assert!(e.to_string().contains("budget.run.max_cost"), "{e}");
    }

    #[test]
    fn the_plan_cache_is_off_by_default_and_its_bounds_follow_the_section() {
        assert_eq!(Config::default().plan_cache.bounds(), None);
        let mut c = Config::default();
        c.apply_env(env(&[
            ("STEPWISE_PLAN_CACHE__ENABLED", "true"),
            ("STEPWISE_PLAN_CACHE__TTL_SECS", "60"),
        ]))
        .unwrap();
        let bounds = c.plan_cache.bounds().unwrap();
        assert_eq!((bounds.max_entries, bounds.ttl.as_secs()), (1000, 60));
        c.plan_cache.max_entries = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("plan_cache.max_entries"), "{e}");
    }

    #[test]
    fn shipped_role_example_parses_when_uncommented() {
        // The commented `[llm.roles.planner]` example must stay valid.
        let block: String = SHIPPED
            .lines()
            .skip_while(|l| !l.starts_with("# [llm.roles.planner]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
            .collect();
        assert!(!block.is_empty(), "example block not found");
        let config = Config::from_toml_str(&block, "example").unwrap();
        let planner = config.llm.roles.get(AgentRole::Planner).clone().expect("planner override");
        assert!(planner.model.is_some(), "{planner:?}");
    }

    #[test]
    fn file_values_are_read() {
        let config = Config::from_toml_str(
            "[executors]\nmax_workers = 8\n[policy]\non_step_failure = \"skip\"\n\
             [llm]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\n[llm.roles.planner]\nmodel = \"o3\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.executors.max_workers, 8);
        assert_eq!(config.executors.min_workers, DEFAULT_MIN_EXECUTORS);
        assert_eq!(config.policy.on_step_failure, FailurePolicy::Skip);
        assert_eq!(config.llm.provider, ProviderKind::Openai);
        assert_eq!(
            config.llm.roles.get(AgentRole::Planner).clone(),
            Some(RoleModelConfig { model: Some("o3".into()), ..Default::default() })
        );
        assert_eq!(
            config.runtime.llm_concurrency,
            crate::llm::DEFAULT_LLM_CONCURRENCY,
            "unset keys keep their defaults"
        );
    }

    #[test]
    fn unknown_key_in_file_names_file_key_and_line() {
        let err =
            Config::from_toml_str("[policy]\nmax_retries = 2\nmax_retires = 3\n", "my.toml").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(msg.contains("my.toml") && msg.contains("max_retires") && msg.contains("line 3"), "{msg}");
        let err = Config::from_toml_str("[polcy]\n", "my.toml").unwrap_err().to_string();
        assert!(err.contains("polcy"), "{err}");
    }

    #[test]
    fn bad_value_in_file_is_named() {
        let err = Config::from_toml_str("[policy]\non_step_failure = \"explode\"\n", "x.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.toml") && msg.contains("explode") && msg.contains("line 2"), "{msg}");
        let err = Config::from_toml_str("[executors]\nmax_workers = \"four\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("max_workers"), "{err}");
    }

    #[test]
    fn env_overrides_top_level_and_nested_keys() {
        let mut config = Config::default();
        config
            .apply_env(env(&[
                ("STEPWISE_POLICY__MAX_RETRIES", "3"),
                ("STEPWISE_TOOLS__RUN_COMMAND__ALLOW", r#"["ls","mkdir"]"#),
                ("STEPWISE_TOOLS__RUN_COMMAND__ENABLED", "true"),
                ("STEPWISE_LLM__MODEL", "gpt-4o-mini"),
                ("stepwise_llm__provider", "openai"),
                ("STEPWISE_LLM__ROLES__PLANNER__MODEL", "o3"),
                ("STEPWISE_BUDGET__STEP__TIMEOUT_MS", "1000"),
                ("STEPWISE_RUNTIME__DATA_DIR", "/var/lib/stepwise"),
            ]))
            .unwrap();
        assert_eq!(config.policy.max_retries, 3);
        assert_eq!(config.tools.run_command.allow, ["ls", "mkdir"]);
        assert!(config.tools.run_command.enabled);
        assert_eq!(config.llm.model, "gpt-4o-mini");
        // The prefix is case-sensitive (conventional upper case); this lower-case one is ignored.
        assert_eq!(config.llm.provider, ProviderKind::Scripted);
        assert_eq!(config.llm.roles.get(AgentRole::Planner).as_ref().unwrap().model.as_deref(), Some("o3"));
        assert_eq!(config.budget.step.timeout_ms, 1000);
        assert_eq!(config.workspace_root(), PathBuf::from("/var/lib/stepwise/workspaces"));
    }

    #[test]
    fn env_keys_are_case_insensitive_and_strings_fall_back() {
        let mut config = Config::default();
        config
            .apply_env(env(&[
                ("STEPWISE_Llm__Model", "4"),
                ("STEPWISE_LLM__BASE_URL", "http://127.0.0.1:8080/v1"),
                ("STEPWISE_LLM__TEMPERATURE", "0.5"),
            ]))
            .unwrap();
        assert_eq!(config.llm.model, "4", "a number is kept as text for a string key");
        assert_eq!(config.llm.base_url.as_deref(), Some("http://127.0.0.1:8080/v1"));
        assert_eq!(config.llm.temperature, Some(0.5));
    }

    #[test]
    fn env_overrides_apply_on_top_of_the_file() {
        let mut config = Config::from_toml_str("[policy]\nmax_retries = 5\nmax_replans = 7\n", "f").unwrap();
        config.apply_env(env(&[("STEPWISE_POLICY__MAX_RETRIES", "0")])).unwrap();
        assert_eq!((config.policy.max_retries, config.policy.max_replans), (0, 7));
    }

    #[test]
    fn non_override_variables_are_ignored() {
        let mut config = Config::default();
        config
            .apply_env(env(&[
                ("STEPWISE_API_TOKENS", "a,b"),
                ("STEPWISE_LOG", "debug"),
                ("STEPWISE_", "x"),
                ("PATH", "/usr/bin"),
                ("OPENAI_API_KEY", "sk-nope"),
            ]))
            .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_env_key_names_the_variable() {
        for var in ["STEPWISE_POLICY__MAX_RETIRES", "STEPWISE_NOPE__X", "STEPWISE_LLM__ROLES__CRITIC__MODEL"]
        {
            let err = Config::default().apply_env(env(&[(var, "3")])).unwrap_err();
            assert!(matches!(&err, ConfigError::Env { var: v, .. } if v == var), "{err:?}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn bad_env_value_names_the_variable_and_key() {
        let err = Config::default().apply_env(env(&[("STEPWISE_POLICY__MAX_RETRIES", "lots")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("STEPWISE_POLICY__MAX_RETRIES") && msg.contains("policy.max_retries"), "{msg}");
        assert!(msg.contains("lots"), "{msg}");
        let err = Config::default().apply_env(env(&[("STEPWISE_POLICY__REPLAN", "sometimes")])).unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
        // A value where a section is expected, and an empty segment.
        let err = Config::default().apply_env(env(&[("STEPWISE_POLICY__MAX_RETRIES__X", "1")])).unwrap_err();
        assert!(err.to_string().contains("policy.max_retries` is a value"), "{err}");
        let err = Config::default().apply_env(env(&[("STEPWISE_POLICY____X", "1")])).unwrap_err();
        assert!(err.to_string().contains("STEPWISE_POLICY____X"), "{err}");
    }

    #[test]
    fn mcp_servers_parse_and_a_bad_one_is_named() {
        let text = "[[tools.mcp.servers]]\nname = \"fs\"\ncommand = \"npx\"\nargs = [\"-y\", \"pkg\"]\n\n[[tools.mcp.servers]]\nname = \"web\"\nurl = \"ftp://x/\"\n";
        let config = Config::from_toml_str(text, "test").unwrap();
        assert_eq!(config.tools.mcp.servers[0].args, ["-y", "pkg"]);
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "tools.mcp.servers[\"web\"].url"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validate_names_the_key() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("executors.min_workers", Box::new(|c| c.executors.min_workers = 0)),
            ("executors.max_workers", Box::new(|c| c.executors.max_workers = 2)),
            ("executors.max_workers", Box::new(|c| c.executors.max_workers = MAX_EXECUTORS_LIMIT + 1)),
            ("executors.shrink_after_idle_secs", Box::new(|c| c.executors.shrink_after_idle_secs = 0)),
            ("tools.run_command.max_concurrent", Box::new(|c| c.tools.run_command.max_concurrent = Some(0))),
            ("runtime.llm_concurrency", Box::new(|c| c.runtime.llm_concurrency = 0)),
            ("budget.step.max_iterations", Box::new(|c| c.budget.step.max_iterations = 0)),
            ("budget.step.timeout_ms", Box::new(|c| c.budget.step.timeout_ms = 0)),
            ("llm.request_timeout_secs", Box::new(|c| c.llm.request_timeout_secs = 0)),
            ("llm.max_tokens", Box::new(|c| c.llm.max_tokens = Some(0))),
            ("llm.temperature", Box::new(|c| c.llm.temperature = Some(-1.0))),
            ("runtime.data_dir", Box::new(|c| c.runtime.data_dir = PathBuf::new())),
            ("tools.run_command.allow", Box::new(|c| c.tools.run_command.allow = vec!["/bin/sh".into()])),
            ("tools.http_get.timeout_secs", Box::new(|c| c.tools.http_get.timeout_secs = 0)),
            ("server.limits.max_retries", Box::new(|c| c.policy.max_retries = 11)),
            ("server.limits.step_timeout_ms", Box::new(|c| c.server.limits.step_timeout_ms = 1000)),
        ];
        for (key, mutate) in cases {
            let mut config = Config::default();
            mutate(&mut config);
            match config.validate() {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected Invalid, got {other:?}"),
            }
        }
        Config::default().validate().unwrap();
    }

    #[test]
    fn load_reads_explicit_file_and_requires_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custom.toml");
        std::fs::write(&path, "[executors]\nmin_workers = 2\nmax_workers = 2\n").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().executors.max_workers, 2);

        let missing = dir.path().join("missing.toml");
        let err = Config::load(Some(&missing)).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }) && err.to_string().contains("missing.toml"), "{err}");

        std::fs::write(&path, "[executors]\nmin_workers = 0\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "executors.min_workers"));
    }

    #[test]
    fn the_removed_pool_size_key_names_its_replacements() {
        let text = "[runtime]\ndata_dir = \"d\"\nexecutor_pool_size = 8\n";
        let err = Config::from_toml_str(text, "old.toml").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Removed { key, .. } if key == "runtime.executor_pool_size"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("old.toml") && msg.contains("runtime.executor_pool_size"), "{msg}");
        assert!(msg.contains("executors.min_workers") && msg.contains("executors.max_workers"), "{msg}");

        let var = "STEPWISE_RUNTIME__EXECUTOR_POOL_SIZE";
        let err = Config::default().apply_env(env(&[(var, "8")])).unwrap_err();
        assert!(matches!(&err, ConfigError::Removed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(var) && msg.contains("executors.max_workers"), "{msg}");

        // Other unknown keys keep the generic error.
        let err = Config::from_toml_str("[runtime]\nexecutor_pool = 8\n", "x.toml").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    }

    #[test]
    fn executor_bounds_come_from_file_and_env() {
        let mut config =
            Config::from_toml_str("[executors]\nmin_workers = 2\nshrink_after_idle_secs = 5\n", "f").unwrap();
        config
            .apply_env(env(&[
                ("STEPWISE_EXECUTORS__MAX_WORKERS", "64"),
                ("STEPWISE_TOOLS__RUN_COMMAND__MAX_CONCURRENT", "3"),
            ]))
            .unwrap();
        assert_eq!(
            config.executors,
            ExecutorsConfig { min_workers: 2, max_workers: 64, shrink_after_idle_secs: 5 }
        );
        assert_eq!(config.tools.run_command.max_concurrent, Some(3));
        config.validate().unwrap();
        config.executors.max_workers = 1;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("executors.max_workers") && err.contains("executors.min_workers (2)"), "{err}");
    }

    #[test]
    fn run_options_and_workspace_root() {
        let mut config = Config::default();
        config.policy.max_replans = 9;
        config.budget.step.max_tool_calls = 3;
        config.budget.run.max_tokens = 1000;
        let options = config.run_options();
        assert_eq!(options.policy.max_replans, 9);
        assert_eq!(options.step_budget.max_tool_calls, 3);
        assert_eq!(options.run_budget.max_tokens, 1000);
        assert_eq!(config.workspace_root(), PathBuf::from("stepwise-data/workspaces"));
        config.runtime.workspace_root = Some("/tmp/ws".into());
        assert_eq!(config.workspace_root(), PathBuf::from("/tmp/ws"));
    }
}
