//! The API's one error type and its one JSON shape:
//! `{"error": {"code": "not_found", "message": "…"}}`.

use std::net::SocketAddr;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::{ErrorBody, ErrorDetail};
use crate::RuntimeError;
use crate::actors::messages::{ControlError, Refusal};
use crate::run::RunId;
use crate::store::StoreError;

/// Everything the HTTP API can refuse or fail with; each variant has a status and a stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `check_bind`: a non-loopback address without tokens.
    #[error(
        "refusing to listen on {0} without API tokens: anyone who can reach it could run tasks. \
         Set STEPWISE_API_TOKENS=<token>[,<token>…] or bind a loopback address (127.0.0.1, [::1])"
    )]
    InsecureBind(SocketAddr),
    /// No such run, route or resource (404).
    #[error("{0}")]
    NotFound(String),
    /// The body is not JSON (400).
    #[error("{0}")]
    InvalidJson(String),
    /// A query parameter or header is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed JSON with a wrong type, unknown field or invalid value (422).
    #[error("{0}")]
    Unprocessable(String),
    /// Missing or wrong bearer token (401). Says nothing about which tokens exist.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The body is larger than the limit (413).
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The body is declared as something other than JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many runs in progress (429, with `Retry-After`).
    #[error("{live} runs are in progress, the limit is {limit}: retry later")]
    TooManyRuns {
        /// Runs in progress.
        live: usize,
        /// The queue limit.
        limit: usize,
    },
    /// The request contradicts the run's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The route exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The service cannot answer now: store down, run not active here (503).
    #[error("{0}")]
    Unavailable(String),
    /// A failure on our side (500).
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::InsecureBind(_) | ServerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::InvalidJson(_) | ServerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServerError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServerError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServerError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServerError::TooManyRuns { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServerError::Conflict(_) => StatusCode::CONFLICT,
            ServerError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ServerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ServerError::InsecureBind(_) => "insecure_bind",
            ServerError::NotFound(_) => "not_found",
            ServerError::InvalidJson(_) => "invalid_json",
            ServerError::BadRequest(_) => "bad_request",
            ServerError::Unprocessable(_) => "unprocessable",
            ServerError::Unauthorized => "unauthorized",
            ServerError::PayloadTooLarge(_) => "payload_too_large",
            ServerError::UnsupportedMediaType(_) => "unsupported_media_type",
            ServerError::TooManyRuns { .. } => "too_many_runs",
            ServerError::Conflict(_) => "conflict",
            ServerError::MethodNotAllowed(_) => "method_not_allowed",
            ServerError::Unavailable(_) => "unavailable",
            ServerError::Internal(_) => "internal",
        }
    }

    /// The JSON body: `{"error": {"code", "message"}}`.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string() } }
    }

    pub(crate) fn unknown_run(id: &RunId) -> Self {
        ServerError::NotFound(format!("no run with id {id}"))
    }

    /// Maps a runtime failure about run `id`: an unknown run is a 404, a store failure a 503.
    pub(crate) fn from_runtime(id: &RunId, e: RuntimeError) -> Self {
        match e {
            RuntimeError::UnknownRun(_) | RuntimeError::Store(StoreError::UnknownRun(_)) => {
                Self::unknown_run(id)
            }
            RuntimeError::Store(e) => ServerError::Unavailable(format!("run store: {e}")),
            e => ServerError::Internal(e.to_string()),
        }
    }

    /// Maps a refused control (approve / reject / cancel). `NotActive` is resolved by the caller.
    pub(crate) fn from_control(id: &RunId, e: ControlError) -> Self {
        match e {
            ControlError::Refused(
                Refusal::NotAwaitingApproval(_) | Refusal::AlreadyEnded(_) | Refusal::AlreadyResolved(_),
            ) => ServerError::Conflict(format!("run {id}: {e}")),
            ControlError::Refused(Refusal::UnknownApproval(_)) => {
                ServerError::NotFound(format!("run {id}: {e}"))
            }
            ControlError::Refused(Refusal::InvalidArguments { .. }) => {
                ServerError::Unprocessable(format!("arguments: {e}"))
            }
            ControlError::Refused(Refusal::InvalidPlan(_)) => {
                ServerError::Unprocessable(format!("plan: {e}"))
            }
            ControlError::NotActive => ServerError::Unavailable(format!(
                "run {id} is not active in this process (it may be resuming after a restart): retry later"
            )),
            ControlError::Store(_) => ServerError::Unavailable(format!("run {id}: {e}")),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let mut res = (self.status(), axum::Json(self.body())).into_response();
        match &self {
            ServerError::Unauthorized => {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ServerError::TooManyRuns { .. } => {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}
