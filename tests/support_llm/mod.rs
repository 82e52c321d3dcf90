//! A fake model server for provider tests: a real axum server on 127.0.0.1:0 that answers with
//! scripted replies and records every request it received (path, headers, JSON body, arrival time).

#![allow(dead_code)] // each test file uses a different subset

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    pub content_type: &'static str,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn ok(body: Value) -> Self {
        Self::status(200, body)
    }
    /// `status` with a JSON body.
    pub fn status(status: u16, body: Value) -> Self {
        Self {
            status,
            body: body.to_string(),
            headers: vec![],
            delay: Duration::ZERO,
            content_type: "application/json",
        }
    }
    /// 200 with a server-sent-events body: one `data:` event per item, then `data: [DONE]`.
    pub fn sse(events: &[Value]) -> Self {
        let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        body.push_str("data: [DONE]\n\n");
        Self { body, content_type: "text/event-stream", ..Self::ok(Value::Null) }
    }
    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Answers only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

type Responder = dyn Fn(usize, &Value) -> Reply + Send + Sync;

#[derive(Clone)]
struct Shared {
    responder: Arc<Responder>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A running fake server.
pub struct FakeServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeServer {
    /// Answers the n-th request with `replies[n]` (500 once they run out).
    pub async fn with_replies(replies: Vec<Reply>) -> Self {
        let queue = Mutex::new(VecDeque::from(replies));
        Self::start(move |_, _| {
            queue.lock().unwrap().pop_front().unwrap_or_else(|| {
                Reply::status(500, serde_json::json!({"error": {"message": "fake server: no reply left"}}))
            })
        })
        .await
    }

    /// Answers each request with `f(index, body)`.
    pub async fn start(f: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared { responder: Arc::new(f), received: received.clone() };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, received }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The JSON bodies received so far.
    pub fn bodies(&self) -> Vec<Value> {
        self.received().into_iter().map(|r| r.body).collect()
    }
}

async fn handle(State(shared): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let index = {
        let mut received = shared.received.lock().unwrap();
        received.push(Received {
            path: uri.path().to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                .collect(),
            body: body.clone(),
            at: Instant::now(),
        });
        received.len() - 1
    };
    let reply = (shared.responder)(index, &body);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    response.headers_mut().insert("content-type", reply.content_type.parse().unwrap());
    for (k, v) in reply.headers {
        response
            .headers_mut()
            .insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    response
}

/// A closed port on 127.0.0.1 (bound, then released).
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Counts WARN events whose target starts with a prefix, for "warned once" assertions.
#[derive(Clone, Default)]
pub struct WarnCounter {
    prefix: &'static str,
    count: Arc<Mutex<usize>>,
}

impl WarnCounter {
    /// A counter for targets starting with `prefix`; install it with [`WarnCounter::install`].
    pub fn new(prefix: &'static str) -> Self {
        Self { prefix, count: Arc::default() }
    }
    /// Makes it this thread's subscriber until the guard drops (tests run on a current-thread runtime).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }
    /// Events counted so far.
    pub fn count(&self) -> usize {
        *self.count.lock().unwrap()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN && meta.target().starts_with(self.prefix) {
            *self.count.lock().unwrap() += 1;
        }
    }
}
