//! Shared HTTP transport for the network providers (OpenAI-compatible, Anthropic).
//!
//! One place for the request timeout, retries with exponential backoff and jitter (on 429, 5xx,
//! connection errors and timeouts, honouring `Retry-After`), and the mapping of failures to
//! [`LlmError`] with the provider's own error message pulled out of the JSON body. Other 4xx
//! answers are final: retrying a bad request only burns quota.
//!
//! Secrets: the API key travels only in headers marked sensitive, and every error message is
//! scrubbed of it (some servers echo the key back in their error text), so neither logs nor
//! `LlmError`s can carry it.

use crate::text::clip;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::LlmError;
use super::outage::{Admission, Backoff, CallWait, OutageObserver, ProbeGuard, ProviderGate};

/// Longest backoff between two probes of an unavailable provider: one request per 10 s is no
/// load, and a provider that is back is found within 10 s.
const OUTAGE_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How often a call whose provider's probe is in flight looks at the circuit again, at most
/// (the probe's answer wakes it sooner).
const PROBE_POLL: Duration = Duration::from_secs(1);

/// One call's wait on an unavailable provider: when it started, and the observer told of it.
/// Dropped while waiting (the call was cancelled), it tells the observer the wait ended.
struct OutageWait {
    provider: String,
    limit: Duration,
    call: Option<CallWait>,
    observer: Option<std::sync::Arc<dyn OutageObserver>>,
}

impl OutageWait {
    fn new(provider: String, limit: Duration) -> Self {
        Self { provider, limit, call: None, observer: super::outage::current_observer() }
    }

    /// The call's wait, started at `now` if it had not started yet (the observer is told).
    fn start(&mut self, now: tokio::time::Instant, last_error: &str) -> CallWait {
        if let Some(call) = self.call {
            return call;
        }
        let call = CallWait { since: now, limit: self.limit };
        self.call = Some(call);
        tracing::warn!(provider = %self.provider, error = %last_error, "model provider unavailable; the call waits");
        if let Some(o) = &self.observer {
            o.waiting(&self.provider, last_error);
        }
        call
    }

    /// Ends the wait (if any), `answered` or not: the observer is told how long it lasted.
    fn end(&mut self, answered: bool) -> Duration {
        let Some(call) = self.call.take() else { return Duration::ZERO };
        let waited = call.since.elapsed();
        if let Some(o) = &self.observer {
            o.stopped_waiting(waited, answered);
        }
        waited
    }

    /// The failure of a call that waited as long as it may.
    fn give_up(&mut self, last: Option<HttpFailure>, last_error: String) -> HttpFailure {
        let waited = self.end(false);
        tracing::warn!(provider = %self.provider, waited_ms = waited.as_millis() as u64, "model provider still unavailable; giving up");
        HttpFailure {
            error: LlmError::Unavailable {
                provider: self.provider.clone(),
                waited,
                limit: self.limit,
                last_error,
            },
            body: last.and_then(|f| f.body),
        }
    }
}

impl Drop for OutageWait {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// How a transport times out and retries. Providers build it from [`super::config::LlmConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Whole-request timeout (connect, send, and reading the answer).
    pub timeout: Duration,
    /// Retries after the first attempt (0: try once).
    pub max_retries: u32,
    /// First backoff delay; doubles on every retry (tests use a millisecond).
    pub backoff_base: Duration,
    /// Cap on one backoff delay.
    pub max_backoff: Duration,
    /// Cap on a server-requested `Retry-After` wait (only without an outage wait).
    pub max_retry_after: Duration,
    /// How long a call waits for an unavailable provider to come back ([`super::outage`]):
    /// while it waits, `max_retries` and `max_retry_after` do not apply. Zero: no outage wait,
    /// the call fails once `max_retries` retries have failed.
    pub outage_max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            max_retries: 3,
            backoff_base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            outage_max_wait: Duration::ZERO,
        }
    }
}

/// A failed request: the final [`LlmError`], and the raw response body when there was one (so a
/// provider can look for hints in it, e.g. a server rejecting `response_format`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFailure {
    /// The error to report.
    pub error: LlmError,
    /// The raw (secret-scrubbed) body of an error status, if any.
    pub body: Option<String>,
}

impl From<HttpFailure> for LlmError {
    fn from(f: HttpFailure) -> Self {
        f.error
    }
}

/// A JSON-over-HTTP client with the retry policy applied; cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    headers: HeaderMap,
    policy: RetryPolicy,
    secret: Option<String>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// What one attempt produced, before the retry decision.
enum Attempt<T> {
    Done(T),
    Final(HttpFailure),
    Retry { failure: HttpFailure, retry_after: Option<Duration> },
}

impl HttpTransport {
    /// A transport sending `headers` with every request. `secret` (the API key) is scrubbed from
    /// every error message; mark its header value sensitive too (see [`secret_header`]).
    pub fn new(policy: RetryPolicy, headers: HeaderMap, secret: Option<String>) -> Result<Self, LlmError> {
        if policy.timeout.is_zero() {
            return Err(LlmError::Config("the request timeout must be greater than zero".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client, headers, policy, secret: secret.filter(|s| !s.is_empty()) })
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// POSTs `body` (JSON bytes, written straight from a provider's typed request) and reads the
    /// answer as `T` (the provider's typed response), retrying per the policy; `give_up(status,
    /// body)` can declare an otherwise retryable error status final (e.g. a 500 that says the
    /// request itself is unsupported).
    pub async fn post_bytes_with<T: DeserializeOwned>(
        &self,
        url: &str,
        body: Vec<u8>,
        give_up: &(dyn Fn(u16, &str) -> bool + Send + Sync),
    ) -> Result<T, HttpFailure> {
        self.retrying(url, || async {
            match self.open(url, &body, give_up).await {
                Attempt::Done(response) => self.read_json(response, url).await,
                Attempt::Final(f) => Attempt::Final(f),
                Attempt::Retry { failure, retry_after } => Attempt::Retry { failure, retry_after },
            }
        })
        .await
    }

    /// POSTs `body` (JSON bytes) and reads a server-sent-events answer, handing each event's
    /// `data` to `on_data` as it arrives; `on_data` returns `false` to stop reading (e.g. at
    /// `[DONE]`). Connecting and error statuses are retried per the policy, as for
    /// [`Self::post_bytes_with`]; once events flow, a broken stream is final (what was handed on
    /// cannot be taken back).
    pub async fn post_sse(
        &self,
        url: &str,
        body: Vec<u8>,
        give_up: &(dyn Fn(u16, &str) -> bool + Send + Sync),
        on_data: &mut (dyn FnMut(&str) -> bool + Send),
    ) -> Result<(), HttpFailure> {
        use futures::StreamExt;
        let response = self.retrying(url, || self.open(url, &body, give_up)).await?;
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            // A server that does not stream answers whole: one event carrying the whole answer.
            let text = response.text().await.map_err(|e| self.stream_failure(url, e))?;
            on_data(&text);
            return Ok(());
        }
        let mut stream = response.bytes_stream();
        let mut events = SseDecoder::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_failure(url, e))?;
            let datas = events.push(&chunk).map_err(|error| HttpFailure {
                error: LlmError::InvalidResponse(format!("stream from {}: {error}", display_url(url))),
                body: None,
            })?;
            for data in datas {
                if !on_data(&data) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Runs `attempt` until it succeeds or fails for good: with an outage wait, until the
    /// provider has been unavailable for longer than it ([`Self::waiting_out`]); without, until
    /// the retries are used up.
    async fn retrying<T, F>(&self, url: &str, attempt: impl Fn() -> F) -> Result<T, HttpFailure>
    where
        F: std::future::Future<Output = Attempt<T>>,
    {
        if self.policy.outage_max_wait.is_zero() {
            self.retrying_counted(url, attempt).await
        } else {
            self.waiting_out(url, attempt).await
        }
    }

    /// Runs `attempt` through the provider's shared circuit, waiting while the provider is
    /// unavailable, up to `outage_max_wait` (see [`super::outage`]).
    async fn waiting_out<T, F>(&self, url: &str, attempt: impl Fn() -> F) -> Result<T, HttpFailure>
    where
        F: std::future::Future<Output = Attempt<T>>,
    {
        let (provider, gate) = ProviderGate::of(url);
        let max = self.policy.max_backoff.min(OUTAGE_MAX_BACKOFF);
        let backoff = Backoff { base: self.policy.backoff_base, max };
        let mut wait = OutageWait::new(provider, self.policy.outage_max_wait);
        loop {
            let probe = loop {
                match gate.admit() {
                    Admission::Send { probe } => break probe,
                    Admission::Wait { until } => {
                        let now = tokio::time::Instant::now();
                        let last = gate.last_error().unwrap_or_else(|| "unavailable".into());
                        let call = wait.start(now, &last);
                        if call.expired(now) {
                            return Err(wait.give_up(None, last));
                        }
                        gate.wait(call.sleep_until(now, until, PROBE_POLL)).await;
                    }
                }
            };
            let mut guard = ProbeGuard::new(&gate, probe);
            let outcome = attempt().await;
            guard.disarm();
            let (failure, retry_after) = match outcome {
                Attempt::Done(v) => {
                    gate.answered(probe);
                    wait.end(true);
                    return Ok(v);
                }
                Attempt::Final(f) => {
                    gate.answered(probe);
                    wait.end(true);
                    return Err(f);
                }
                Attempt::Retry { failure, retry_after } => (failure, retry_after),
            };
            let error = failure.error.to_string();
            gate.unavailable(probe, retry_after, error.clone(), &backoff);
            let now = tokio::time::Instant::now();
            if wait.start(now, &error).expired(now) {
                return Err(wait.give_up(Some(failure), error));
            }
            tracing::warn!(
                url = %display_url(url),
                error = %error,
                probe,
                retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
                "model provider unavailable; waiting for it"
            );
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are used up.
    async fn retrying_counted<T, F>(&self, url: &str, attempt: impl Fn() -> F) -> Result<T, HttpFailure>
    where
        F: std::future::Future<Output = Attempt<T>>,
    {
        let mut retries = 0u32;
        loop {
            let (failure, retry_after) = match attempt().await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Final(f) => return Err(f),
                Attempt::Retry { failure, retry_after } => (failure, retry_after),
            };
            if retries >= self.policy.max_retries {
                return Err(failure);
            }
            let delay = match retry_after {
                Some(d) => d.min(self.policy.max_retry_after),
                None => backoff_delay(&self.policy, retries),
            };
            retries += 1;
            tracing::warn!(
                url = %display_url(url),
                error = %failure.error,
                retry = retries,
                max_retries = self.policy.max_retries,
                delay_ms = delay.as_millis() as u64,
                "model request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends the request; a success status hands back the response with its body unread.
    async fn open(
        &self,
        url: &str,
        body: &[u8],
        give_up: &(dyn Fn(u16, &str) -> bool + Send + Sync),
    ) -> Attempt<reqwest::Response> {
        // A copy per attempt (a few KiB) keeps the body for a retry.
        let sent = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body.to_vec())
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return self.send_error(url, e),
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Done(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return self.send_error(url, e),
        };
        let text = self.redact(text);
        let code = status.as_u16();
        let failure = HttpFailure {
            error: LlmError::Status { status: code, message: error_message(&text) },
            body: Some(text),
        };
        let retryable = code == 408 || code == 429 || status.is_server_error();
        if retryable && !give_up(code, failure.body.as_deref().unwrap_or("")) {
            Attempt::Retry { failure, retry_after }
        } else {
            Attempt::Final(failure)
        }
    }

    /// Reads a successful answer as JSON of type `T` (bytes parsed as they are: JSON is UTF-8,
    /// so no text decoding pass first).
    async fn read_json<T: DeserializeOwned>(&self, response: reqwest::Response, url: &str) -> Attempt<T> {
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return self.send_error(url, e),
        };
        // A successful body is the model's answer: never rewrite it (a short placeholder key
        // such as "x" would otherwise corrupt every answer that contains that letter).
        match serde_json::from_slice(&bytes) {
            Ok(v) => Attempt::Done(v),
            Err(e) => {
                let text = String::from_utf8_lossy(&bytes);
                let shown = display_url(url);
                let what = if e.is_data() { "not an answer of the expected shape" } else { "not JSON" };
                Attempt::Final(HttpFailure {
                    error: LlmError::InvalidResponse(
                        self.redact(format!("response from {shown} is {what} ({e}): {}", clip(&text, 300))),
                    ),
                    body: Some(self.redact(text.into_owned())),
                })
            }
        }
    }

    /// A read error once the answer is flowing: final, whatever its kind.
    fn stream_failure(&self, url: &str, e: reqwest::Error) -> HttpFailure {
        self.transport_failure(url, e).0
    }

    fn send_error<T>(&self, url: &str, e: reqwest::Error) -> Attempt<T> {
        match self.transport_failure(url, e) {
            (failure, true) => Attempt::Retry { failure, retry_after: None },
            (failure, false) => Attempt::Final(failure),
        }
    }

    /// A transport error as a failure, and whether trying again may help.
    fn transport_failure(&self, url: &str, e: reqwest::Error) -> (HttpFailure, bool) {
        let timeout = e.is_timeout();
        let retryable = timeout || e.is_connect() || e.is_request() || e.is_body();
        let error = if timeout {
            LlmError::Timeout(self.policy.timeout)
        } else {
            LlmError::Transport(self.redact(format!(
                "POST {}: {}",
                display_url(url),
                error_chain(e.without_url())
            )))
        };
        (HttpFailure { error, body: None }, retryable)
    }

    fn redact(&self, text: String) -> String {
        match &self.secret {
            Some(secret) if secret.len() >= MIN_SECRET_LEN && text.contains(secret.as_str()) => {
                text.replace(secret.as_str(), "[redacted]")
            }
            _ => text,
        }
    }
}

/// Keys shorter than this are placeholders for local servers (`OPENAI_API_KEY=x`), not secrets;
/// scrubbing them would mangle every message containing those characters.
const MIN_SECRET_LEN: usize = 8;

/// `body` as the JSON bytes sent. A plan or executor request is a few KiB: the buffer starts
/// there rather than grow from 128 bytes.
pub fn json_bytes<T: Serialize>(body: &T) -> Result<Vec<u8>, HttpFailure> {
    let mut out = Vec::with_capacity(4096);
    serde_json::to_writer(&mut out, body).map(|()| out).map_err(|e| HttpFailure {
        error: LlmError::InvalidResponse(format!("cannot encode the request as JSON: {e}")),
        body: None,
    })
}

/// A header value holding a secret, marked sensitive so it never shows in `Debug` output.
pub fn secret_header(value: &str) -> Result<reqwest::header::HeaderValue, LlmError> {
    let mut v = reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| LlmError::Config("the API key contains characters not allowed in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The delay before retry number `attempt + 1`: `backoff_base * 2^attempt`, capped at
/// `max_backoff`, with "equal jitter" (a random point in the upper half) so clients that failed
/// together do not retry together.
pub fn backoff_delay(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy.backoff_base.saturating_mul(2u32.saturating_pow(attempt)).min(policy.max_backoff);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Parses a `Retry-After` value: delay-seconds (integer, or fractional as some servers send) or
/// an HTTP-date (IMF-fixdate, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`); a date in the past is zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at: SystemTime = date.with_timezone(&chrono::Utc).into();
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The provider's error message from an error body: `error.message` (OpenAI, Anthropic, most
/// compatible servers), `error` as a string, `message` or `detail`; else the body itself, cut short.
pub fn error_message(body: &str) -> String {
    if let Some(message) = serde_json::from_str::<Value>(body).ok().as_ref().and_then(message_of) {
        return message;
    }
    let body = body.trim();
    if body.is_empty() { "(empty body)".into() } else { clip(body, 500) }
}

/// The message of an `error` object a provider put in an answer or a stream event (a string, or
/// an object with `message`); else the object itself, cut short.
pub fn error_detail(error: &Value) -> String {
    let candidates = [&error["message"], error];
    let message = candidates.iter().find_map(|c| c.as_str().filter(|s| !s.trim().is_empty()));
    message.map_or_else(|| clip(&error.to_string(), 500), |s| clip(s, 1000))
}

/// `error.message`, `error` as a string, `message` or `detail` of an error body.
fn message_of(v: &Value) -> Option<String> {
    let candidates = [&v["error"]["message"], &v["error"], &v["message"], &v["detail"]];
    candidates.iter().find_map(|c| c.as_str().filter(|s| !s.trim().is_empty())).map(|s| clip(s, 1000))
}

/// Cap on one server-sent event (a whole plan is a few KiB): a server that never ends an event
/// must not grow the buffer without bound.
const MAX_EVENT_BYTES: usize = 16 << 20;

/// Splits a server-sent-events body, arriving in arbitrary chunks, into each event's `data`
/// (its `data:` lines joined by newlines; comments and other fields dropped).
#[derive(Debug, Default)]
struct SseDecoder {
    buf: Vec<u8>,
    /// How far `buf` is known to hold no event end, so each byte is scanned about once.
    scanned: usize,
}

impl SseDecoder {
    /// Takes the next chunk and returns the data of the events it completed.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((end, skip)) = self.event_end() {
            let event: Vec<u8> = self.buf.drain(..end + skip).take(end).collect();
            self.scanned = 0;
            let event = String::from_utf8_lossy(&event);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(format!("an event larger than {} MiB", MAX_EVENT_BYTES >> 20));
        }
        self.scanned = self.buf.len();
        Ok(out)
    }

    /// Where the first complete event ends: its length and the blank line's length. A blank
    /// line may straddle two chunks, so the search backs up over what could be its start.
    fn event_end(&self) -> Option<(usize, usize)> {
        let buf = &self.buf;
        (self.scanned.saturating_sub(3)..buf.len()).find_map(|i| {
            if buf[i..].starts_with(b"\r\n\r\n") {
                Some((i, 4))
            } else if buf[i..].starts_with(b"\n\n") {
                Some((i, 2))
            } else {
                None
            }
        })
    }
}

/// `url` without user info or query string, for messages and logs.
fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(invalid url)".into(),
    }
}

fn error_chain(e: reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0.5 ", now), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            backoff_base: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let d0 = backoff_delay(&p, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
            let d2 = backoff_delay(&p, 2);
            assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400), "{d2:?}");
            let d9 = backoff_delay(&p, 40);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_millis(1000), "{d9:?}");
        }
    }

    #[test]
    fn error_messages_are_extracted() {
        assert_eq!(error_message(r#"{"error":{"message":"bad model","type":"x"}}"#), "bad model");
        assert_eq!(error_message(r#"{"error":"rate limited"}"#), "rate limited");
        assert_eq!(error_message(r#"{"detail":"nope"}"#), "nope");
        assert_eq!(error_message("plain failure\n"), "plain failure");
        assert_eq!(error_message(""), "(empty body)");
        assert!(error_message(&"x".repeat(2000)).chars().count() < 600);
    }

    #[test]
    fn sse_events_are_found_whatever_the_chunking() {
        let body = b"\r\n: keep-alive\r\n\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nevent: x\ndata: two\n\ndata: [DONE]\n\n";
        let want = ["{\"a\":\n1}", "two", "[DONE]"];
        let whole = SseDecoder::default().push(body).unwrap();
        assert_eq!(whole, want);
        for size in 1..8 {
            let mut d = SseDecoder::default();
            let got: Vec<String> = body.chunks(size).flat_map(|c| d.push(c).unwrap()).collect();
            assert_eq!(got, want, "chunks of {size}");
        }
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: partial").unwrap().is_empty());
        assert!(d.push(&vec![b'x'; MAX_EVENT_BYTES]).unwrap_err().contains("larger than 16 MiB"));
    }

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(display_url("http://u:p@127.0.0.1:8/v1/chat?key=k"), "http://127.0.0.1:8/v1/chat");
    }

    #[test]
    fn secret_is_redacted() {
        let t =
            HttpTransport::new(RetryPolicy::default(), HeaderMap::new(), Some("sk-abcdef12".into())).unwrap();
        assert_eq!(t.redact("bad key sk-abcdef12!".into()), "bad key [redacted]!");
        assert!(!format!("{t:?}").contains("sk-abcdef12"));
    }

    #[test]
    fn a_placeholder_key_is_not_scrubbed_from_text() {
        let t = HttpTransport::new(RetryPolicy::default(), HeaderMap::new(), Some("x".into())).unwrap();
        assert_eq!(t.redact("expected_outcome".into()), "expected_outcome");
    }
}
