//! A connection to one MCP server as its tools use it: the live session (replaced when the
//! server reconnects) and the calls made through it. The task that keeps the connection up is
//! in `server`; the transports that open one are in `transport`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest, ServerResult};
use rmcp::service::PeerRequestOptions;
use rmcp::{Peer, RoleClient};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::McpError;
use super::config::McpServerConfig;
use super::transport::SessionId;

/// Longest a call waits for a server that is down to come back (less if its call timeout is
/// shorter) before it fails saying the server is unavailable: long enough to ride out a restart,
/// short enough that a step is not stalled by a server that stays down.
const RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// A live connection, shared by the calls made while it lasts.
pub(crate) struct Live {
    pub peer: Peer<RoleClient>,
    pub session: SessionId,
    pub network: &'static str,
}

/// What a server's tools need to make calls: its settings and its current connection.
pub(crate) struct Core {
    pub cfg: McpServerConfig,
    pub(super) live: watch::Sender<Option<Arc<Live>>>,
    /// A call saw the connection fail: reconnect now rather than wait for the transport to notice.
    pub(super) broken: Notify,
    /// A call is waiting for the server: cut the backoff short.
    pub(super) wake: Notify,
    /// Why the server is not connected (for errors and `/readyz`).
    pub(super) last_error: Mutex<Option<String>>,
}

/// How a call went, once the select over its outcomes is done.
enum Outcome {
    Answered(Box<Result<Result<ServerResult, rmcp::ServiceError>, oneshot::error::RecvError>>),
    Cancelled,
    TimedOut,
}

impl Core {
    /// The server's name.
    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    fn unavailable(&self) -> McpError {
        let reason = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "not connected yet".into());
        McpError::Unavailable { server: self.cfg.name.clone(), reason }
    }

    /// A call found `live` broken: later calls must wait for a new connection rather than use
    /// it, and the supervising task must make one now.
    fn mark_broken(&self, live: &Arc<Live>) {
        self.live.send_if_modified(|current| match current {
            Some(c) if Arc::ptr_eq(c, live) => {
                *current = None;
                true
            }
            _ => false,
        });
        self.broken.notify_one();
    }

    /// The live connection, waiting up to `wait` for one.
    async fn live(&self, wait: Duration) -> Result<Arc<Live>, McpError> {
        let mut rx = self.live.subscribe();
        let current = rx.borrow_and_update().clone();
        match current {
            Some(live) if !live.peer.is_transport_closed() => return Ok(live),
            // The transport died (the server exited, or a response broke it) before the
            // supervising task noticed: have it reconnect now, and wait for the new connection.
            Some(_) => self.broken.notify_one(),
            None => self.wake.notify_one(),
        }
        let usable = |l: &Option<Arc<Live>>| l.as_ref().is_some_and(|l| !l.peer.is_transport_closed());
        match tokio::time::timeout(wait, rx.wait_for(usable)).await {
            Ok(Ok(live)) => live.clone().ok_or_else(|| self.unavailable()),
            _ => Err(self.unavailable()),
        }
    }

    /// Calls the server's tool `tool`, within the call timeout, cancelled (with the protocol's
    /// `notifications/cancelled`) when `cancel` fires. Records the session and request ids on
    /// the current span.
    pub(crate) async fn call(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResult, McpError> {
        let timeout = self.cfg.call_timeout();
        let deadline = Instant::now() + timeout;
        let live = tokio::select! {
            live = self.live(timeout.min(RECONNECT_WAIT)) => live?,
            _ = cancel.cancelled() => return Err(McpError::Cancelled),
        };
        let span = tracing::Span::current();
        span.record("network.transport", live.network);
        if let Some(session) = live.session.get() {
            span.record("mcp.session.id", &*session);
        }
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(
            CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments),
        ));
        let mut handle = match live
            .peer
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(handle) => handle,
            Err(source) => {
                self.mark_broken(&live);
                return Err(McpError::Call { server: self.cfg.name.clone(), tool: tool.to_owned(), source });
            }
        };
        span.record("jsonrpc.request.id", handle.id.to_string());
        // A session id assigned during initialisation is known by now.
        if let Some(session) = live.session.get() {
            span.record("mcp.session.id", &*session);
        }
        let outcome = tokio::select! {
            r = &mut handle.rx => Outcome::Answered(Box::new(r)),
            _ = cancel.cancelled() => Outcome::Cancelled,
            _ = tokio::time::sleep_until(deadline.into()) => Outcome::TimedOut,
        };
        let error = |source| McpError::Call { server: self.cfg.name.clone(), tool: tool.to_owned(), source };
        let answer = match outcome {
            Outcome::Answered(answer) => *answer,
            Outcome::Cancelled => {
                // Tell the server to stop; the step does not wait for it to agree.
                let _ = handle.cancel(Some("cancelled by the client (the step was cancelled)".into())).await;
                return Err(McpError::Cancelled);
            }
            Outcome::TimedOut => {
                let _ = handle.cancel(Some(format!("timed out after {timeout:?}"))).await;
                return Err(McpError::CallTimeout {
                    server: self.cfg.name.clone(),
                    tool: tool.to_owned(),
                    after: timeout,
                });
            }
        };
        match answer {
            Ok(Ok(ServerResult::CallToolResult(result))) => Ok(result),
            Ok(Ok(_)) => Err(error(rmcp::ServiceError::UnexpectedResponse)),
            Ok(Err(source)) => {
                if matches!(
                    source,
                    rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_)
                ) {
                    self.mark_broken(&live);
                }
                Err(error(source))
            }
            Err(_) => {
                self.mark_broken(&live);
                Err(error(rmcp::ServiceError::TransportClosed))
            }
        }
    }
}
