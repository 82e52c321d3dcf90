//! The HTTP API of `stepwise serve`: submit runs, list and read them, follow their
//! events over SSE, approve / reject / cancel, plus health, readiness, metrics and OpenAPI.
//!
//! Build a [`ServerState`] around a [`Runtime`], then either mount [`router`] in your own axum
//! app or call [`serve`] with a bound listener and a shutdown signal.
//!
//! Choices made here (the design is silent on them):
//! - **Auth.** Every `/v1` route and `/metrics` need `Authorization: Bearer <token>` when tokens
//!   are configured (`STEPWISE_API_TOKENS`). `/metrics` is protected too: it reveals the load and
//!   activity of the service, and Prometheus sends a bearer token just as easily
//!   (`authorization: {credentials: …}`). `/healthz`, `/readyz` and `/openapi.json` are open:
//!   probes and API clients need them before they hold a token, and they reveal nothing about
//!   runs. With no tokens configured auth is off, which [`check_bind`] only allows on loopback.
//! - **Per-run options** in `POST /v1/runs` are merged key by key onto the runtime's defaults
//!   (`{"policy": {"max_retries": 3}}` changes that key only); a top-level `require_approval`
//!   wins over `policy.require_approval`.
//! - **Queue limit.** `queue_limit` bounds the runs in progress in this process (runs awaiting
//!   approval included). It is checked before each submission, so concurrent submissions may
//!   overshoot it by the number of requests racing; it is a load-shedding limit, not a quota.
//! - **Control responses.** approve / reject / cancel answer `200 {"id","status"}` (`RunAck`)
//!   with the status right after the change was committed.
//! - **Run ids** in paths are taken as they are: one that names no run is a 404, one that does not
//!   decode (invalid percent-encoding or UTF-8) a 400.
//! - **SSE.** `Last-Event-ID` wins over `?after=`, since a reconnecting `EventSource` keeps its
//!   original URL. On shutdown, open streams end (the client reconnects elsewhere with
//!   `Last-Event-ID`), so a graceful shutdown never waits on a run awaiting approval.
//!
//! # Adding a route
//!
//! Every body is a type, so `/openapi.json` describes every field and schemathesis
//! (`tests/openapi_schemathesis.rs`) can check the server against it:
//! 1. Declare the request and response bodies in `api.rs` with `#[derive(Deserialize, ToSchema)]`
//!    / `#[derive(Serialize, ToSchema)]` and a doc comment on each field (it becomes the field's
//!    description). Request bodies take `#[serde(deny_unknown_fields)]`; a query string is a
//!    struct deriving `IntoParams`. A library type inside a body (a run, a plan, an event…) is
//!    described by its `schemars::JsonSchema`: list it once in `schemars_components!`
//!    (`openapi.rs`) and use it as a field like any other.
//! 2. The handler takes `ApiPath<RunId>` for the run id, `ApiQuery<P>`, and `ApiJson<T>` (or
//!    `OptionalJson<T>` for a body that may be empty) from `body.rs`, so every malformed request
//!    is a JSON error of the one shape, and returns `Result<Json<Resp>, ServerError>` — never a
//!    `json!` value.
//! 3. Annotate it with `#[utoipa::path]`: `request_body(content = T)` (`Option<T>` when it may be
//!    omitted), `body = Resp` for the success status and `body = ErrorBody` for each error
//!    status the handler (and `ApiJson`: 400/413/415/422, auth: 401) can answer; a stream names
//!    its `content_type` and the schema of one frame. Add it to `paths(…)` in `openapi.rs`.
//! 4. Run `cargo test --lib server::openapi` (no untyped body, every error documented as `Error`)
//!    and `cargo test --test openapi_schemathesis`.

mod api;
mod approvals;
mod auth;
mod body;
mod error;
mod openapi;
mod routes;
pub(crate) mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::Runtime;
use crate::config::ServerConfig;

pub use error::ServerError;
pub use openapi::openapi_json;

/// Renders the Prometheus text exposition served at `/metrics`.
pub type MetricsHook = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything the handlers share: the runtime, the auth tokens and the limits.
///
/// A builder: `ServerState::new(runtime).tokens(t).max_body_bytes(n)…`; unset limits take the
/// defaults of [`ServerConfig`].
#[derive(Clone)]
pub struct ServerState {
    runtime: Arc<Runtime>,
    tokens: Arc<[String]>,
    max_body_bytes: usize,
    queue_limit: usize,
    metrics: Option<MetricsHook>,
    keep_alive: Duration,
    shutdown: CancellationToken,
    trace_url_template: Option<Arc<str>>,
    limits: crate::options::RunLimits,
}

impl ServerState {
    /// A state with no tokens (auth off) and the default limits of [`ServerConfig`].
    pub fn new(runtime: Arc<Runtime>) -> Self {
        let d = ServerConfig::default();
        Self {
            runtime,
            tokens: Arc::from(Vec::new()),
            max_body_bytes: d.max_body_bytes,
            queue_limit: d.queue_limit,
            metrics: None,
            keep_alive: Duration::from_secs(15),
            shutdown: CancellationToken::new(),
            trace_url_template: None,
            limits: d.limits,
        }
    }

    /// A state with the limits of `config` and the bearer `tokens`.
    pub fn from_config(runtime: Arc<Runtime>, config: &ServerConfig, tokens: Vec<String>) -> Self {
        Self::new(runtime)
            .tokens(tokens)
            .max_body_bytes(config.max_body_bytes)
            .queue_limit(config.queue_limit)
            .trace_url_template(config.trace_url_template.clone())
            .limits(config.limits.clone())
    }

    /// The most a submitted run's options may ask for (more: 422).
    pub fn limits(mut self, limits: crate::options::RunLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Bearer tokens accepted by the API; none turns auth off (loopback only, see [`check_bind`]).
    pub fn tokens(mut self, tokens: Vec<String>) -> Self {
        self.tokens = Arc::from(tokens);
        self
    }

    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// Runs in progress at once; a submission at or beyond it gets 429.
    pub fn queue_limit(mut self, n: usize) -> Self {
        self.queue_limit = n;
        self
    }

    /// The Prometheus text served at `/metrics` (404 without one).
    pub fn metrics(mut self, hook: MetricsHook) -> Self {
        self.metrics = Some(hook);
        self
    }

    /// Interval of the SSE keep-alive comments (default 15 s), which stop proxies from closing
    /// quiet streams.
    pub fn sse_keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// The link from the web page to a run's trace, `{run_id}` replaced by the run's id (see
    /// `[server] trace_url_template`); none hides the link.
    pub fn trace_url_template(mut self, template: Option<String>) -> Self {
        self.trace_url_template = template.map(Arc::from);
        self
    }

    /// The runtime served.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }
}

/// The API's routes over `state`, ready to serve or to nest in a larger app.
pub fn router(state: ServerState) -> Router {
    let state = Arc::new(state);
    let protected = Router::new()
        .route("/v1/runs", post(routes::submit).get(routes::list))
        .route("/v1/runs/{id}", get(routes::get_run))
        .route("/v1/runs/{id}/events", get(routes::events))
        .route("/v1/runs/{id}/approve", post(routes::approve))
        .route("/v1/runs/{id}/reject", post(routes::reject))
        .route("/v1/runs/{id}/cancel", post(routes::cancel))
        .route("/v1/runs/{id}/approvals", get(approvals::list_approvals))
        .route("/v1/runs/{id}/approvals/{approval_id}", post(approvals::resolve_approval))
        .route("/v1/tools", get(routes::tools))
        .route("/metrics", get(routes::metrics))
        .route("/ui/config.json", get(ui::config))
        .nest_service("/mcp", mcp_service(&state))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    let open = Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/openapi.json", get(routes::openapi))
        // The web page and its assets hold no run data, so they are served without a token.
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset));
    protected
        .merge(open)
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

/// stepwise as an MCP server over streamable HTTP (`/mcp`), behind the API's bearer tokens.
fn mcp_service(
    state: &ServerState,
) -> rmcp::transport::StreamableHttpService<
    crate::tools::mcp::expose::StepwiseMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    // Open sessions (and their SSE streams) end when the server shuts down.
    let mut config = rmcp::transport::StreamableHttpServerConfig::default()
        .with_cancellation_token(state.shutdown.child_token());
    // The Host check guards a token-less loopback server against DNS rebinding; with tokens a
    // request needs one anyway, and the service may be reached by any name.
    if !state.tokens.is_empty() {
        config = config.disable_allowed_hosts();
    }
    let runtime = state.runtime.clone();
    let limits = state.limits.clone();
    rmcp::transport::StreamableHttpService::new(
        move || Ok(crate::tools::mcp::expose::StepwiseMcp::new(runtime.clone()).limits(limits.clone())),
        Default::default(),
        config,
    )
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, ends open
/// SSE streams and waits for in-flight requests to finish. To mount the API inside an axum
/// application of your own, use [`router`] (`examples/embed_in_axum.rs`).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use stepwise::Stepwise;
/// use stepwise::server::{ServerState, serve};
/// # let model = Arc::new(stepwise::llm::scripted::ScriptedModel::from_json(serde_json::json!({}))?);
///
/// let runtime = Arc::new(Stepwise::builder().model(model).build().await?);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(serve(listener, ServerState::new(runtime), async {
///     let _ = stopped.await;
/// }));
/// // … the API answers on the listener's address until:
/// let _ = stop.send(());
/// server.await??;
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = state.shutdown.clone();
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
}

/// The bearer tokens in `STEPWISE_API_TOKENS`: comma-separated, trimmed, empty entries dropped.
pub fn tokens_from_env(value: Option<&str>) -> Vec<String> {
    value.unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// Refuses to listen on a non-loopback address without tokens: the API runs tasks with tools,
/// so an open port reachable from the network must not accept anonymous requests.
pub fn check_bind(addr: SocketAddr, tokens: &[String]) -> Result<(), ServerError> {
    if tokens.is_empty() && !addr.ip().to_canonical().is_loopback() {
        return Err(ServerError::InsecureBind(addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_split_trimmed_and_empties_dropped() {
        assert_eq!(tokens_from_env(Some(" a, b ,,c ,")), vec!["a", "b", "c"]);
        assert!(tokens_from_env(Some(" , ")).is_empty());
        assert!(tokens_from_env(None).is_empty());
    }

    #[test]
    fn only_loopback_binds_without_tokens() {
        let t = vec!["secret".to_owned()];
        assert!(check_bind("127.0.0.1:80".parse().unwrap(), &[]).is_ok());
        assert!(check_bind("[::1]:80".parse().unwrap(), &[]).is_ok());
        assert!(check_bind("[::ffff:127.0.0.1]:80".parse().unwrap(), &[]).is_ok());
        assert!(check_bind("0.0.0.0:80".parse().unwrap(), &t).is_ok());
        let err = check_bind("0.0.0.0:8080".parse().unwrap(), &[]).unwrap_err().to_string();
        assert!(err.contains("0.0.0.0:8080") && err.contains("STEPWISE_API_TOKENS"), "{err}");
        assert!(check_bind("[::]:80".parse().unwrap(), &[]).is_err());
        assert!(check_bind("192.168.1.2:80".parse().unwrap(), &[]).is_err());
    }
}
