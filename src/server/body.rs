//! Request extractors with the API's error shape. JSON bodies: not JSON → 400 `invalid_json`,
//! JSON of the wrong shape → 422 `unprocessable` naming the field's path (`policy.max_retries`),
//! over the limit → 413, declared as something else → 415. Path segments and query strings that
//! do not parse → 400 `bad_request` (axum's own rejections are plain text).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::{ServerError, ServerState};

/// A required JSON body.
pub(crate) struct ApiJson<T>(pub T);

/// An optional JSON body: an empty body is `T::default()`.
pub(crate) struct OptionalJson<T>(pub T);

/// Path parameters (a run id: `ApiPath<RunId>`); a segment that does not decode is a 400.
pub(crate) struct ApiPath<T>(pub T);

/// Query parameters; an unknown parameter or a value of the wrong type is a 400.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServerError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ServerError::BadRequest(format!("path: {}", e.body_text())))
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServerError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ServerError::BadRequest(e.body_text()))
    }
}

impl<T: DeserializeOwned> FromRequest<Arc<ServerState>> for ApiJson<T> {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &Arc<ServerState>) -> Result<Self, ServerError> {
        let bytes = read(req, state).await?;
        if is_blank(&bytes) {
            return Err(ServerError::InvalidJson("request body is empty: a JSON object is expected".into()));
        }
        decode(&bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<Arc<ServerState>> for OptionalJson<T> {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &Arc<ServerState>) -> Result<Self, ServerError> {
        let bytes = read(req, state).await?;
        if is_blank(&bytes) {
            return Ok(OptionalJson(T::default()));
        }
        decode(&bytes).map(OptionalJson)
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

async fn read(req: Request, state: &Arc<ServerState>) -> Result<Bytes, ServerError> {
    // No Content-Type is accepted (curl -d sends a form type, many clients none); a declared
    // non-JSON type is a client bug worth naming.
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            return Err(ServerError::UnsupportedMediaType(format!(
                "request body has Content-Type {essence:?}: send application/json"
            )));
        }
    }
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServerError::PayloadTooLarge(state.max_body_bytes)
        } else {
            ServerError::BadRequest(format!("could not read the request body: {}", e.body_text()))
        }
    })
}

/// Parses `bytes` as `T`, telling syntax errors (400) from shape errors (422, with the path).
/// Every body of the API is a JSON object: serde would also read a struct from an array of its
/// fields (`[]` for one whose fields all have defaults), which the document does not allow.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ServerError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return Err(ServerError::Unprocessable("request body: expected a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(shape_error)?;
    de.end().map_err(|e| ServerError::InvalidJson(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// Deserialises an already-parsed value (a merged options object), naming the path on failure.
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ServerError> {
    serde_path_to_error::deserialize(value).map_err(shape_error)
}

fn shape_error(e: serde_path_to_error::Error<serde_json::Error>) -> ServerError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            let at = if path == "." { "request body".to_owned() } else { path };
            ServerError::Unprocessable(format!("{at}: {inner}"))
        }
        _ => ServerError::InvalidJson(format!("request body is not valid JSON: {inner}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::RunOptions;

    #[test]
    fn syntax_and_shape_errors_are_told_apart() {
        let e = decode::<RunOptions>(b"{\"policy\": ").unwrap_err();
        assert_eq!(e.code(), "invalid_json", "{e}");
        let e = decode::<RunOptions>(br#"{"policy": {"max_retries": "x"}}"#).unwrap_err();
        assert_eq!(e.code(), "unprocessable");
        assert!(e.to_string().starts_with("policy.max_retries: invalid type"), "{e}");
        let e = decode::<RunOptions>(br#"{"polcy": {}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `polcy`"), "{e}");
        let e = decode::<RunOptions>(b"{} x").unwrap_err();
        assert_eq!(e.code(), "invalid_json", "{e}");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_even_where_serde_would_read_it() {
        // Every field of RunOptions has a default, so serde alone would take `[]` for `{}`.
        for body in [&b"[]"[..], b" [] ", b"null", b"3", b"\"x\""] {
            let e = decode::<RunOptions>(body).unwrap_err();
            assert_eq!(e.code(), "unprocessable", "{}: {e}", String::from_utf8_lossy(body));
            assert!(e.to_string().contains("expected a JSON object"), "{e}");
        }
        assert_eq!(decode::<RunOptions>(b"[").unwrap_err().code(), "invalid_json");
        assert!(decode::<RunOptions>(b" {} ").is_ok());
    }
}
