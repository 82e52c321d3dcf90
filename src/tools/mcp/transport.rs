//! Opening a connection to a server: a child process over stdio, or streamable HTTP.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::service::NotificationContext;
use rmcp::service::{RunningService, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::{ClientHandler, RoleClient};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use super::McpError;
use super::config::{Endpoint, McpServerConfig};

/// The client side of a connection: hears `notifications/tools/list_changed`.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(super) tools_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }
}

/// The MCP session id of a connection, as far as the transport knows it: streamable HTTP
/// servers assign one at initialisation; stdio has none.
#[derive(Clone, Default)]
pub(crate) struct SessionId(Arc<Mutex<Option<Arc<str>>>>);

impl SessionId {
    /// The id, once the server has assigned one.
    pub(crate) fn get(&self) -> Option<Arc<str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn observe(&self, id: &Option<Arc<str>>) {
        if let Some(id) = id {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_deref() != Some(id) {
                *slot = Some(id.clone());
            }
        }
    }
}

/// An initialised connection and what must live as long as it.
pub(crate) struct Opened {
    pub service: RunningService<RoleClient, Handler>,
    pub session: SessionId,
    /// The stdio server's process, killed when dropped.
    pub child: Option<Child>,
    /// `pipe` (stdio) or `tcp` (HTTP), for the spans' `network.transport`.
    pub network: &'static str,
}

/// Starts or reaches the server and runs the MCP initialisation, within the connect timeout.
pub(crate) async fn open(cfg: &McpServerConfig, handler: Handler) -> Result<Opened, McpError> {
    let timeout = cfg.connect_timeout();
    match tokio::time::timeout(timeout, open_unbounded(cfg, handler)).await {
        Ok(r) => r,
        Err(_) => Err(McpError::ConnectTimeout { server: cfg.name.clone(), after: timeout }),
    }
}

async fn open_unbounded(cfg: &McpServerConfig, handler: Handler) -> Result<Opened, McpError> {
    let server = cfg.name.clone();
    match cfg.endpoint()? {
        Endpoint::Stdio { command, args } => {
            let mut cmd = Command::new(&command);
            cmd.args(&args)
                .env_clear()
                .envs(inherited_env(&cfg.pass_env))
                .envs(&cfg.env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // A server left behind by a dropped connection must not outlive it.
                .kill_on_drop(true);
            if let Some(dir) = &cfg.cwd {
                cmd.current_dir(dir);
            }
            let mut child =
                cmd.spawn().map_err(|source| McpError::Spawn { server: server.clone(), command, source })?;
            let (Some(stdout), Some(stdin), Some(stderr)) =
                (child.stdout.take(), child.stdin.take(), child.stderr.take())
            else {
                return Err(McpError::Connect {
                    server,
                    message: "the child's stdio pipes are missing".into(),
                });
            };
            forward_stderr(server.clone(), stderr);
            let transport =
                AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(cfg.max_response_bytes);
            let service = handler
                .serve(transport)
                .await
                .map_err(|e| McpError::Connect { server, message: e.to_string() })?;
            Ok(Opened { service, session: SessionId::default(), child: Some(child), network: "pipe" })
        }
        Endpoint::Http { url } => {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            config.max_json_response_size = cfg.max_response_bytes;
            config.max_sse_event_size = cfg.max_response_bytes;
            if let Some(var) = &cfg.bearer_token_env {
                // The token is read here, at each (re)connect, and is never logged.
                let token = std::env::var(var)
                    .map_err(|_| McpError::MissingToken { server: server.clone(), var: var.clone() })?;
                config = config.auth_header(token);
            }
            let http =
                reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().map_err(
                    |e| McpError::Connect { server: server.clone(), message: format!("HTTP client: {e}") },
                )?;
            let session = SessionId::default();
            let client = SessionRecordingClient { inner: http, session: session.clone() };
            let transport = StreamableHttpClientTransport::with_client(client, config);
            let service = handler
                .serve(transport)
                .await
                .map_err(|e| McpError::Connect { server, message: e.to_string() })?;
            Ok(Opened { service, session, child: None, network: "tcp" })
        }
    }
}

/// Variables of the runtime's environment a stdio server gets: what programs need to run
/// (the same set `run_command` keeps), plus those named in `pass_env`.
fn inherited_env(pass_env: &[String]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const BASE_ENV: &[&str] =
        &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"];
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            BASE_ENV.contains(&k.as_ref()) || k.starts_with("LC_") || pass_env.iter().any(|p| *p == k)
        })
        .collect()
}

/// A stdio server's stderr goes to the log, a line at a time, so its complaints are not lost
/// and its pipe never fills up.
fn forward_stderr(server: String, stderr: tokio::process::ChildStderr) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(mcp.server.name = %server, "stderr: {line}");
        }
    });
}

/// reqwest's streamable HTTP client, noting the session id the transport sends with each
/// request: rmcp keeps it to itself, and the spans want it (`mcp.session.id`).
#[derive(Clone)]
struct SessionRecordingClient {
    inner: reqwest::Client,
    session: SessionId,
}

type HttpError = StreamableHttpError<reqwest::Error>;

impl StreamableHttpClient for SessionRecordingClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.session.observe(&session_id);
        self.inner.post_message(uri, message, session_id, auth_header, custom_headers).await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.session.observe(&session_id);
        self.inner
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.session.observe(&session_id);
        self.inner
            .post_message_with_response_limits(uri, message, session_id, auth_header, custom_headers, limits)
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), HttpError> {
        self.inner.delete_session(uri, session_id, auth_header, custom_headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<sse_stream::Sse, SseError>>, HttpError> {
        self.session.observe(&session_id);
        self.inner.get_stream(uri, session_id, last_event_id, auth_header, custom_headers).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<sse_stream::Sse, SseError>>, HttpError> {
        self.session.observe(&session_id);
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
