//! Configuration of the built-in tools (the `[tools.*]` sections of `config/stepwise.toml`).

use serde::{Deserialize, Serialize};

/// All built-in tools' settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// `run_command`: off unless enabled, and then only allowlisted programs.
    pub run_command: RunCommandConfig,
    /// `read_file`, `write_file`, `list_dir`.
    pub files: FilesConfig,
    /// `http_get`.
    pub http_get: HttpGetConfig,
    /// MCP servers whose tools are offered (`[[tools.mcp.servers]]`).
    pub mcp: super::mcp::McpConfig,
}

/// `run_command` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunCommandConfig {
    /// Registers the tool at all. Off by default: running programs is opt-in.
    pub enabled: bool,
    /// Program names (no paths) the model may run, e.g. `["python3", "mkdir", "ls"]`.
    pub allow: Vec<String>,
    /// Kill the program after this many seconds.
    pub timeout_secs: u64,
    /// Keep at most this many bytes of stdout and of stderr.
    pub max_output_bytes: usize,
    /// Extra environment variables passed to the program. The environment is otherwise cleared
    /// down to `PATH`, `HOME`, `USER`, `LOGNAME`, `LANG`, `LANGUAGE`, `LC_*`, `TZ`, `TMPDIR` and
    /// `TERM`, so API keys in the runtime's environment do not reach model-chosen programs.
    pub pass_env: Vec<String>,
    /// Programs running at once across all runs (≥ 1); further calls wait for a slot. Unset:
    /// the number of CPUs, since programs burn local CPU while the executor pool may run
    /// hundreds of steps at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
}

impl RunCommandConfig {
    /// `max_concurrent`, or the number of CPUs when unset.
    pub fn concurrency_limit(&self) -> usize {
        self.max_concurrent
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
            .max(1)
    }
}

impl Default for RunCommandConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: Vec::new(),
            timeout_secs: 60,
            max_output_bytes: 64 * 1024,
            pass_env: Vec::new(),
            max_concurrent: None,
        }
    }
}

/// File tool settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Registers `read_file`, `write_file` and `list_dir`.
    pub enabled: bool,
    /// Largest file `read_file` returns or `write_file` writes, in bytes.
    pub max_file_bytes: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self { enabled: true, max_file_bytes: 1024 * 1024 }
    }
}

/// `http_get` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpGetConfig {
    /// Registers the tool.
    pub enabled: bool,
    /// Allow loopback, private, link-local and other non-public addresses (off: SSRF guard).
    pub allow_private: bool,
    /// If non-empty, only these host names may be fetched.
    pub allow_hosts: Vec<String>,
    /// Request timeout in seconds.
    pub timeout_secs: u64,
    /// Largest response body kept, in bytes (the rest is cut off).
    pub max_bytes: usize,
}

impl Default for HttpGetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_private: false,
            allow_hosts: Vec::new(),
            timeout_secs: 20,
            max_bytes: 1024 * 1024,
        }
    }
}
