//! `[tools.mcp]`: the MCP servers whose tools stepwise offers, each a child process spoken to
//! over stdio or a URL spoken to over streamable HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::McpError;

/// Every MCP server's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// The servers, by unique name (`[[tools.mcp.servers]]`).
    pub servers: Vec<McpServerConfig>,
}

/// One MCP server: `command` (stdio, the server is a child process) or `url` (streamable HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpServerConfig {
    /// Letters, digits and `-`: the server's tools are named `<name>__<tool>`, and provider tool
    /// names allow only `[a-zA-Z0-9_-]` (no `_` here, so `__` separates server from tool).
    pub name: String,
    /// The program to start (stdio transport), found on `PATH` unless it is a path.
    pub command: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it. Its environment is otherwise cleared down to `PATH`,
    /// `HOME`, `USER`, `LOGNAME`, `LANG`, `LANGUAGE`, `LC_*`, `TZ`, `TMPDIR` and `TERM`, so the
    /// runtime's secrets (API keys) do not reach a server unless passed on purpose.
    pub env: BTreeMap<String, String>,
    /// Names of variables of the runtime's environment passed on as they are.
    pub pass_env: Vec<String>,
    /// Its working directory (default: the runtime's).
    pub cwd: Option<String>,
    /// The streamable HTTP endpoint (e.g. `http://127.0.0.1:8000/mcp`).
    pub url: Option<String>,
    /// Name of the environment variable that holds the bearer token sent to `url`; the token
    /// itself is never written in the config file.
    pub bearer_token_env: Option<String>,
    /// Only these tools (the server's own names) are offered; empty: all of them.
    pub allow: Vec<String>,
    /// These tools are never offered.
    pub deny: Vec<String>,
    /// Longest one tool call may take, in seconds; then it is cancelled and fails.
    pub call_timeout_secs: u64,
    /// Longest starting and initialising the server may take, in seconds.
    pub connect_timeout_secs: u64,
    /// A server that is optional may be down: stepwise starts without it and keeps trying to
    /// connect. A required server that does not come up at start is an error.
    pub optional: bool,
    /// Largest message accepted from the server, in bytes (default 128 MiB). Over HTTP a longer
    /// one fails the call at once; over stdio it is dropped and the call fails at its timeout.
    /// Servers often send a result twice (as text and as structured content): a 50 MB text
    /// result is a message of over 100 MB. The model only ever sees the first 16 KiB.
    pub max_response_bytes: usize,
}

impl Default for McpServerConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            cwd: None,
            url: None,
            bearer_token_env: None,
            allow: Vec::new(),
            deny: Vec::new(),
            call_timeout_secs: 60,
            connect_timeout_secs: 30,
            optional: false,
            max_response_bytes: 128 * 1024 * 1024,
        }
    }
}

/// How to reach a server, resolved from its config.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// A child process spoken to over its stdin and stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// Streamable HTTP.
    Http {
        /// The endpoint.
        url: String,
    },
}

impl McpServerConfig {
    /// A stdio server running `command args…`.
    pub fn stdio(name: &str, command: &str, args: &[&str]) -> Self {
        Self {
            name: name.into(),
            command: Some(command.into()),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// A streamable HTTP server at `url`.
    pub fn http(name: &str, url: &str) -> Self {
        Self { name: name.into(), url: Some(url.into()), ..Self::default() }
    }

    /// The call timeout.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Where the server is; the config must be valid.
    pub fn endpoint(&self) -> Result<Endpoint, McpError> {
        match (&self.command, &self.url) {
            (Some(command), None) => {
                Ok(Endpoint::Stdio { command: command.clone(), args: self.args.clone() })
            }
            (None, Some(url)) => Ok(Endpoint::Http { url: url.clone() }),
            _ => Err(self.invalid("command", "set exactly one of `command` (stdio) and `url` (HTTP)")),
        }
    }

    /// Whether the server's tool `tool` may be offered (allow and deny lists).
    pub fn offers(&self, tool: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|t| t == tool))
            && !self.deny.iter().any(|t| t == tool)
    }

    fn invalid(&self, key: &'static str, message: impl Into<String>) -> McpError {
        McpError::Config { server: self.name.clone(), key, message: message.into() }
    }

    /// Checks one server's settings.
    pub fn validate(&self) -> Result<(), McpError> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(self.invalid("name", "must be non-empty letters, digits and `-`"));
        }
        if self.name.len() > 24 {
            return Err(self.invalid("name", "at most 24 characters (tool names are limited to 64)"));
        }
        match self.endpoint()? {
            Endpoint::Stdio { command, .. } if command.trim().is_empty() => {
                return Err(self.invalid("command", "must not be empty"));
            }
            Endpoint::Http { url } => {
                let parsed =
                    reqwest::Url::parse(&url).map_err(|e| self.invalid("url", format!("{url:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(self.invalid("url", format!("{url:?}: only http and https")));
                }
            }
            Endpoint::Stdio { .. } => {
                if self.bearer_token_env.is_some() {
                    return Err(self.invalid("bearer_token_env", "only for `url` servers"));
                }
            }
        }
        if let Some(var) = &self.bearer_token_env
            && (var.is_empty() || var.contains('='))
        {
            return Err(self.invalid("bearer_token_env", "must be an environment variable's name"));
        }
        if self.call_timeout_secs == 0 {
            return Err(self.invalid("call_timeout_secs", "must be at least 1"));
        }
        if self.connect_timeout_secs == 0 {
            return Err(self.invalid("connect_timeout_secs", "must be at least 1"));
        }
        if self.max_response_bytes < 1024 {
            return Err(self.invalid("max_response_bytes", "must be at least 1024"));
        }
        Ok(())
    }
}

impl McpConfig {
    /// Checks every server, and that names are unique.
    pub fn validate(&self) -> Result<(), McpError> {
        let mut seen = std::collections::BTreeSet::new();
        for server in &self.servers {
            server.validate()?;
            if !seen.insert(server.name.as_str()) {
                return Err(server.invalid("name", "two servers have this name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(err: McpError) -> &'static str {
        match err {
            McpError::Config { key, .. } => key,
            other => panic!("not a config error: {other:?}"),
        }
    }

    #[test]
    fn a_valid_server_of_each_kind_passes() {
        assert!(McpServerConfig::stdio("fs", "npx", &["server"]).validate().is_ok());
        assert!(McpServerConfig::http("remote-1", "http://127.0.0.1:9/mcp").validate().is_ok());
    }

    #[test]
    fn bad_settings_name_the_server_and_the_key() {
        let cases: Vec<(&str, McpServerConfig)> = vec![
            ("name", McpServerConfig::stdio("my_fs", "x", &[])),
            ("name", McpServerConfig::stdio("", "x", &[])),
            (
                "command",
                McpServerConfig { url: Some("http://h/".into()), ..McpServerConfig::stdio("a", "x", &[]) },
            ),
            ("command", McpServerConfig { name: "a".into(), ..McpServerConfig::default() }),
            ("url", McpServerConfig::http("a", "ftp://h/")),
            ("url", McpServerConfig::http("a", "not a url")),
            (
                "bearer_token_env",
                McpServerConfig {
                    bearer_token_env: Some("T".into()),
                    ..McpServerConfig::stdio("a", "x", &[])
                },
            ),
            (
                "call_timeout_secs",
                McpServerConfig { call_timeout_secs: 0, ..McpServerConfig::stdio("a", "x", &[]) },
            ),
        ];
        for (key, cfg) in cases {
            let err = cfg.validate().unwrap_err();
            assert!(err.to_string().contains(&format!("{:?}", cfg.name)), "{err}");
            assert_eq!(key_of(err), key, "{cfg:?}");
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let cfg = McpConfig {
            servers: vec![McpServerConfig::stdio("a", "x", &[]), McpServerConfig::http("a", "http://h/")],
        };
        assert_eq!(key_of(cfg.validate().unwrap_err()), "name");
    }

    #[test]
    fn allow_and_deny_lists_pick_the_offered_tools() {
        let mut cfg = McpServerConfig::stdio("a", "x", &[]);
        assert!(cfg.offers("anything"));
        cfg.allow = vec!["read".into(), "write".into()];
        cfg.deny = vec!["write".into()];
        assert!(cfg.offers("read"));
        assert!(!cfg.offers("write"));
        assert!(!cfg.offers("other"));
    }

    #[test]
    fn parses_from_toml() {
        let cfg: McpConfig = toml::from_str(
            r#"
            [[servers]]
            name = "fs"
            command = "npx"
            args = ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]
            allow = ["read_file"]
            [[servers]]
            name = "remote"
            url = "http://127.0.0.1:8000/mcp"
            bearer_token_env = "REMOTE_MCP_TOKEN"
            optional = true
            call_timeout_secs = 5
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.servers[1].call_timeout(), Duration::from_secs(5));
        assert!(cfg.servers[1].optional);
        assert!(toml::from_str::<McpConfig>("[[servers]]\nname = \"a\"\ntoken = \"x\"").is_err());
    }
}
