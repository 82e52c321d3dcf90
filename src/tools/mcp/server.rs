//! One MCP server: a task that keeps a connection to it (connecting, listing its tools,
//! reconnecting with backoff when it exits or drops the connection) and the calls made through
//! that connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmcp::{Peer, RoleClient};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::McpError;
use super::config::McpServerConfig;
use super::connection::{Core, Live};
use super::tool::{self, McpTool};
use super::transport::{self, Handler};
use crate::tools::{SourceStatus, Tool, ToolSource};

/// First wait before reconnecting; it doubles after each failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before connection attempt `attempt` (1-based).
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16))).min(MAX_BACKOFF)
}

/// Where a server's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Ready,
    Reconnecting,
    Stopped,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Ready => "ready",
            State::Reconnecting => "reconnecting",
            State::Stopped => "stopped",
        }
    }
}

/// One configured MCP server and the tools it offers now.
pub struct McpServer {
    core: Arc<Core>,
    tools: RwLock<Arc<BTreeMap<String, Arc<McpTool>>>>,
    problems: Mutex<Vec<String>>,
    state: Mutex<State>,
    stop: CancellationToken,
}

impl McpServer {
    /// Starts the task that connects to the server and keeps it connected. The receiver gets
    /// the outcome of the first connection attempt.
    pub(crate) fn start(cfg: McpServerConfig) -> (Arc<Self>, oneshot::Receiver<Result<(), McpError>>) {
        let (live, _) = watch::channel(None);
        let core = Arc::new(Core {
            cfg,
            live,
            broken: Notify::new(),
            wake: Notify::new(),
            last_error: Mutex::new(None),
        });
        let server = Arc::new(Self {
            core,
            tools: RwLock::default(),
            problems: Mutex::default(),
            state: Mutex::new(State::Connecting),
            stop: CancellationToken::new(),
        });
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(server.clone().supervise(first_tx));
        (server, first_rx)
    }

    /// The server's settings.
    pub fn config(&self) -> &McpServerConfig {
        &self.core.cfg
    }

    /// Closes the connection and stops reconnecting.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    fn set_state(&self, state: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    fn set_error(&self, error: Option<String>) {
        *self.core.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Lists the server's tools and replaces the offered ones.
    async fn refresh_tools(&self, peer: &Peer<RoleClient>) -> Result<(), McpError> {
        let timeout = self.core.cfg.call_timeout();
        let listed = match tokio::time::timeout(timeout, peer.list_all_tools()).await {
            Ok(Ok(listed)) => listed,
            Ok(Err(source)) => {
                return Err(McpError::ListTools { server: self.core.cfg.name.clone(), source });
            }
            Err(_) => {
                return Err(McpError::ListToolsTimeout {
                    server: self.core.cfg.name.clone(),
                    after: timeout,
                });
            }
        };
        let (tools, problems) = tool::build(&self.core, listed);
        for problem in &problems {
            tracing::warn!(mcp.server.name = %self.core.cfg.name, "{problem}");
        }
        tracing::debug!(mcp.server.name = %self.core.cfg.name, tools = tools.len(), "MCP tools listed");
        *self.tools.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tools);
        *self.problems.lock().unwrap_or_else(|p| p.into_inner()) = problems;
        Ok(())
    }

    /// Connects, serves the connection until it ends, and reconnects with backoff, until stopped.
    async fn supervise(self: Arc<Self>, first: oneshot::Sender<Result<(), McpError>>) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        while !self.stop.is_cancelled() {
            let outcome = self.connect_and_serve(&mut first).await;
            if self.stop.is_cancelled() {
                break;
            }
            match outcome {
                // The connection was up and ended: start the backoff over.
                Ok(()) => attempt = 0,
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(mcp.server.name = %self.core.cfg.name, attempt, "MCP server: {error}");
                    self.set_error(Some(error.to_string()));
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(error));
                    }
                }
            }
            self.set_state(State::Reconnecting);
            // Even after a connection that worked, pause a little: a server that accepts and
            // then dies at once must not be restarted in a tight loop. A waiting call cuts the
            // pause short.
            let pause = if attempt == 0 { FIRST_BACKOFF } else { backoff(attempt) };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.core.wake.notified() => {}
                _ = self.stop.cancelled() => {}
            }
        }
        self.core.live.send_replace(None);
        self.set_state(State::Stopped);
    }

    /// One connection: `Err` if it could not be made, `Ok` once a working connection ended.
    async fn connect_and_serve(
        &self,
        first: &mut Option<oneshot::Sender<Result<(), McpError>>>,
    ) -> Result<(), McpError> {
        let tools_changed = Arc::new(Notify::new());
        let handler = Handler { tools_changed: tools_changed.clone() };
        let opened = tokio::select! {
            opened = transport::open(&self.core.cfg, handler) => opened?,
            _ = self.stop.cancelled() => return Ok(()),
        };
        let transport::Opened { service, session, child, network } = opened;
        let peer = service.peer().clone();
        if let Err(e) = self.refresh_tools(&peer).await {
            let _ = service.cancel().await;
            return Err(e);
        }
        let live = Arc::new(Live { peer: peer.clone(), session, network });
        self.core.live.send_replace(Some(live.clone()));
        self.set_state(State::Ready);
        self.set_error(None);
        tracing::info!(mcp.server.name = %self.core.cfg.name, "MCP server connected");
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        let closer = service.cancellation_token();
        let mut waiting = Box::pin(service.waiting());
        let reason = loop {
            tokio::select! {
                quit = &mut waiting => break format!("the connection ended ({quit:?})"),
                _ = tools_changed.notified() => {
                    if let Err(e) = self.refresh_tools(&peer).await {
                        tracing::warn!(mcp.server.name = %self.core.cfg.name, "{e}");
                    }
                }
                _ = self.core.broken.notified() => {
                    // A signal left over from an earlier connection is not about this one.
                    let still_published = self.core.live.borrow().as_ref().is_some_and(|l| Arc::ptr_eq(l, &live));
                    if still_published && !peer.is_transport_closed() {
                        continue;
                    }
                    closer.cancel();
                    let _ = waiting.await;
                    break "a call found the connection broken".to_owned();
                }
                _ = self.stop.cancelled() => {
                    closer.cancel();
                    let _ = waiting.await;
                    break "stopped".to_owned();
                }
            }
        };
        self.core.live.send_replace(None);
        // Dropping the child kills it, if it has not exited already.
        drop(child);
        tracing::warn!(mcp.server.name = %self.core.cfg.name, "MCP server disconnected: {reason}");
        self.set_error(Some(format!("disconnected: {reason}; reconnecting")));
        Ok(())
    }
}

impl ToolSource for McpServer {
    fn name(&self) -> &str {
        &self.core.cfg.name
    }

    fn tools(&self) -> Vec<Arc<dyn Tool>> {
        let tools = self.tools.read().unwrap_or_else(|p| p.into_inner()).clone();
        tools.values().map(|t| t.clone() as Arc<dyn Tool>).collect()
    }

    fn tool(&self, name: &str) -> Option<Arc<dyn Tool>> {
        let tools = self.tools.read().unwrap_or_else(|p| p.into_inner());
        tools.get(name).map(|t| t.clone() as Arc<dyn Tool>)
    }

    fn status(&self) -> SourceStatus {
        let state = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        SourceStatus {
            name: self.core.cfg.name.clone(),
            state: state.as_str().to_owned(),
            ready: state == State::Ready,
            optional: self.core.cfg.optional,
            tools: self.tools.read().unwrap_or_else(|p| p.into_inner()).len(),
            error: if state == State::Ready {
                None
            } else {
                self.core.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
            },
            problems: self.problems.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
