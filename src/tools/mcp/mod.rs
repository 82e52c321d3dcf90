//! Tools from MCP servers (Model Context Protocol, on the official Rust SDK `rmcp`).
//!
//! Each configured server (`[[tools.mcp.servers]]`) is a child process spoken to over stdio or a
//! streamable HTTP endpoint. Every tool it lists becomes a stepwise tool named
//! `<server>__<tool>`, with the server's description, JSON Schema and annotations; a list that
//! changes at run time (`notifications/tools/list_changed`) is listed again. A task per server
//! keeps it connected and reconnects with backoff when it exits or drops the connection; calls
//! made while it is down wait a little for it, then fail saying so. Calls honour the step's
//! cancellation (sending `notifications/cancelled`) and the server's call timeout.
//!
//! Each server is a [`crate::tools::ToolSource`]: register them with [`McpServers::register`],
//! and a run may be narrowed to some of them (`RunOptions::mcp_servers`).

pub mod config;
mod connection;
pub mod content;
pub mod expose;
pub mod server;
pub mod tool;
mod transport;

use std::sync::Arc;
use std::time::Duration;

pub use config::{McpConfig, McpServerConfig};
pub use server::McpServer;
pub use tool::McpTool;

use super::ToolRegistry;

/// What can go wrong with an MCP server, each naming the server.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// A setting is invalid.
    #[error("tools.mcp.servers[name = {server:?}].{key}: {message}")]
    Config {
        /// The server.
        server: String,
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The server's program could not be started.
    #[error("MCP server {server:?}: cannot start {command:?}: {source}")]
    Spawn {
        /// The server.
        server: String,
        /// The program.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bearer token's environment variable is not set.
    #[error("MCP server {server:?}: the environment variable {var} (bearer_token_env) is not set")]
    MissingToken {
        /// The server.
        server: String,
        /// The variable.
        var: String,
    },
    /// Starting or initialising the connection failed.
    #[error("MCP server {server:?}: cannot connect: {message}")]
    Connect {
        /// The server.
        server: String,
        /// rmcp's explanation.
        message: String,
    },
    /// The server did not finish initialising in time.
    #[error("MCP server {server:?}: did not come up within {after:?} (connect_timeout_secs)")]
    ConnectTimeout {
        /// The server.
        server: String,
        /// The connect timeout.
        after: Duration,
    },
    /// `tools/list` failed.
    #[error("MCP server {server:?}: tools/list failed: {source}")]
    ListTools {
        /// The server.
        server: String,
        /// Why.
        source: rmcp::ServiceError,
    },
    /// `tools/list` did not answer in time.
    #[error("MCP server {server:?}: tools/list did not answer within {after:?}")]
    ListToolsTimeout {
        /// The server.
        server: String,
        /// The call timeout.
        after: Duration,
    },
    /// The server is down and did not come back while the call waited.
    #[error("MCP server {server:?} is unavailable: {reason}")]
    Unavailable {
        /// The server.
        server: String,
        /// Its last error.
        reason: String,
    },
    /// The tool call failed at the protocol level (not a tool's own error result).
    #[error("MCP server {server:?}: calling {tool:?} failed: {source}")]
    Call {
        /// The server.
        server: String,
        /// The server's name for the tool.
        tool: String,
        /// Why.
        source: rmcp::ServiceError,
    },
    /// The call took longer than the server's call timeout; it was cancelled.
    #[error("MCP server {server:?}: {tool:?} did not answer within {after:?} (call_timeout_secs); cancelled")]
    CallTimeout {
        /// The server.
        server: String,
        /// The server's name for the tool.
        tool: String,
        /// The call timeout.
        after: Duration,
    },
    /// The arguments are not a JSON object.
    #[error("MCP server {server:?}: {tool:?}: invalid arguments: {message}")]
    InvalidArguments {
        /// The server.
        server: String,
        /// The server's name for the tool.
        tool: String,
        /// What is wrong.
        message: String,
    },
    /// The step was cancelled during the call; the server was told.
    #[error("cancelled")]
    Cancelled,
}

impl McpError {
    /// A short name of the kind of error, for spans' `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            McpError::Config { .. } => "config",
            McpError::Spawn { .. } => "spawn",
            McpError::MissingToken { .. } => "missing_token",
            McpError::Connect { .. } => "connect",
            McpError::ConnectTimeout { .. } => "connect_timeout",
            McpError::ListTools { .. } | McpError::ListToolsTimeout { .. } => "list_tools",
            McpError::Unavailable { .. } => "unavailable",
            McpError::Call { .. } => "call",
            McpError::CallTimeout { .. } => "timeout",
            McpError::InvalidArguments { .. } => "invalid_arguments",
            McpError::Cancelled => "cancelled",
        }
    }
}

/// The configured MCP servers, connected.
#[derive(Clone, Default)]
pub struct McpServers {
    servers: Vec<Arc<McpServer>>,
}

impl std::fmt::Debug for McpServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.servers.iter().map(|s| &s.config().name)).finish()
    }
}

impl McpServers {
    /// Connects to every server at once and lists their tools. A required server that does not
    /// come up (within its connect timeout) is an error naming it, and every server is stopped;
    /// an optional one is left trying to connect in the background.
    pub async fn start(config: &McpConfig) -> Result<Self, McpError> {
        config.validate()?;
        let started: Vec<_> = config.servers.iter().map(|cfg| McpServer::start(cfg.clone())).collect();
        let servers = Self { servers: started.iter().map(|(s, _)| s.clone()).collect() };
        let firsts = futures::future::join_all(started.into_iter().map(|(server, first)| async move {
            // A dropped sender means the task was stopped before its first attempt ended.
            let outcome = first.await.unwrap_or_else(|_| {
                Err(McpError::Unavailable { server: server.config().name.clone(), reason: "stopped".into() })
            });
            (server, outcome)
        }))
        .await;
        for (server, outcome) in firsts {
            if let Err(e) = outcome {
                if !server.config().optional {
                    servers.stop();
                    return Err(e);
                }
                tracing::warn!("{e}; the server is optional: going on without it, and retrying");
            }
        }
        Ok(servers)
    }

    /// The servers.
    pub fn servers(&self) -> &[Arc<McpServer>] {
        &self.servers
    }

    /// Adds each server as a tool source.
    pub fn register(&self, registry: &mut ToolRegistry) {
        for server in &self.servers {
            registry.add_source(server.clone());
        }
    }

    /// Closes every connection and stops reconnecting.
    pub fn stop(&self) {
        for server in &self.servers {
            server.stop();
        }
    }
}
