//! Bearer-token auth: every configured token is compared in constant time, without early exit,
//! so the response time says nothing about how close a guess was or which token it matched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ServerError, ServerState};

/// Rejects the request with 401 unless it carries one of the configured tokens (auth is off
/// when none are configured).
pub(crate) async fn require_token(
    State(state): State<Arc<ServerState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.tokens.is_empty() {
        return next.run(req).await;
    }
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match presented {
        Some(t) if token_matches(t.as_bytes(), &state.tokens) => next.run(req).await,
        _ => ServerError::Unauthorized.into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// True when `presented` equals one of `tokens`. Every token is compared, whatever the outcome
/// of the others.
pub(crate) fn token_matches(presented: &[u8], tokens: &[String]) -> bool {
    let mut found = false;
    for t in tokens {
        found |= ct_eq(presented, t.as_bytes());
    }
    found
}

/// Constant-time equality: the time depends on the lengths only, never on where bytes differ.
fn ct_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = (presented.len() ^ expected.len()) as u64;
    for (i, &e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(0);
        diff |= u64::from(std::hint::black_box(p ^ e));
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_is_exact() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secreT", b"secret"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"secret2", b"secret"));
        assert!(!ct_eq(b"", b"secret"));
        assert!(!ct_eq(b"secret\0", b"secret"));
    }

    #[test]
    fn any_configured_token_matches() {
        let tokens = vec!["one".to_owned(), "two".to_owned()];
        assert!(token_matches(b"two", &tokens));
        assert!(token_matches(b"one", &tokens));
        assert!(!token_matches(b"three", &tokens));
    }

    #[test]
    fn bearer_scheme_is_parsed() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer  "), None);
    }
}
