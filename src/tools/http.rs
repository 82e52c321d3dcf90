//! `http_get`: fetches a URL over http or https, guarded against server-side request forgery.
//!
//! The model picks the URL, so before connecting the tool resolves the host itself, refuses
//! non-public addresses (loopback, private, link-local, CGNAT, unique-local, multicast,
//! documentation…) unless `allow_private`, and pins the checked addresses into the client so a
//! second DNS answer (rebinding) cannot send the request elsewhere. The client can resolve no
//! other name at all. Redirects are followed by hand, at most [`MAX_REDIRECTS`], and every
//! target goes through the same checks. Proxies from the environment are ignored: a proxy would
//! connect on our behalf to an address we never checked.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Name, Resolve, Resolving};
use schemars::JsonSchema;
use serde::Deserialize;

use super::config::HttpGetConfig;
use super::{Tool, ToolContext, ToolError, parse_args, schema_of};

/// Most redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// Arguments of `http_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpGetArgs {
    /// The absolute `http://` or `https://` URL to fetch.
    pub url: String,
}

/// Resolves a host and port to addresses; replaceable in tests so they need no DNS.
type Lookup = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

/// `http_get`: GETs a public http(s) URL and returns the status, content type and body text.
#[derive(Clone)]
pub struct HttpGetTool {
    cfg: HttpGetConfig,
    /// Socket addresses let through the address check regardless of `allow_private`, so tests
    /// can put a "public" server on loopback. Always empty outside tests.
    exempt: Vec<SocketAddr>,
    /// `None`: the system resolver.
    lookup: Option<Lookup>,
}

impl fmt::Debug for HttpGetTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpGetTool").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl HttpGetTool {
    /// An `http_get` tool with `cfg`'s address policy, host allowlist, timeout and size cap.
    pub fn new(cfg: HttpGetConfig) -> Self {
        Self { cfg, exempt: Vec::new(), lookup: None }
    }

    /// Checks `url`'s scheme, host and addresses; returns the addresses to pin.
    async fn check_target(&self, url: &Url) -> Result<Target, ToolError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::Denied(format!(
                "http_get: {url} uses scheme {:?}; only http and https are allowed",
                url.scheme()
            )));
        }
        let Some(raw_host) = url.host_str() else {
            return Err(ToolError::InvalidArguments(format!("http_get: {url} has no host")));
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let bare = raw_host.trim_start_matches('[').trim_end_matches(']');
        let literal: Option<IpAddr> = bare.parse().ok();
        let host_key = bare.trim_end_matches('.').to_ascii_lowercase();
        if !self.cfg.allow_hosts.is_empty()
            && !self.cfg.allow_hosts.iter().any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(&host_key))
        {
            return Err(ToolError::Denied(format!(
                "http_get: host {host_key:?} is not in tools.http_get.allow_hosts ({})",
                self.cfg.allow_hosts.join(", ")
            )));
        }
        let addrs = match literal {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => self.resolve(raw_host, port).await?,
        };
        if addrs.is_empty() {
            return Err(ToolError::Failed(format!("http_get: {raw_host:?} resolved to no address")));
        }
        if !self.cfg.allow_private {
            for addr in &addrs {
                if self.exempt.contains(addr) {
                    continue;
                }
                if let Some(kind) = non_public_reason(addr.ip()) {
                    let which = match literal {
                        Some(_) => format!("{} is a {kind} address", addr.ip()),
                        None => format!("{raw_host:?} resolves to {}, a {kind} address", addr.ip()),
                    };
                    return Err(ToolError::Denied(format!(
                        "http_get: {which}; non-public addresses are refused \
                         (tools.http_get.allow_private is off)"
                    )));
                }
            }
        }
        Ok(Target { domain: literal.is_none().then(|| raw_host.to_owned()), addrs })
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ToolError> {
        let found = match &self.lookup {
            Some(lookup) => lookup(host, port),
            None => tokio::net::lookup_host((host, port)).await.map(Iterator::collect),
        };
        found.map_err(|e| ToolError::Failed(format!("http_get: cannot resolve {host:?}: {e}")))
    }

    async fn fetch(&self, raw_url: &str) -> Result<String, ToolError> {
        let mut url = Url::parse(raw_url.trim()).map_err(|e| {
            ToolError::InvalidArguments(format!("http_get: {raw_url:?} is not a valid URL: {e}"))
        })?;
        let mut redirects = 0;
        loop {
            let target = self.check_target(&url).await?;
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("stepwise-http_get/", env!("CARGO_PKG_VERSION")))
                .dns_resolver(PinnedOnly);
            if let Some(domain) = &target.domain {
                builder = builder.resolve_to_addrs(domain, &target.addrs);
            }
            let client = builder
                .build()
                .map_err(|e| ToolError::Failed(format!("http_get: cannot build the HTTP client: {e}")))?;
            let response = client.get(url.clone()).send().await.map_err(|e| {
                ToolError::Failed(format!("http_get: request to {url} failed: {}", error_chain(&e)))
            })?;
            let status = response.status();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|_| matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308));
            if let Some(location) = location {
                if redirects == MAX_REDIRECTS {
                    return Err(ToolError::Failed(format!(
                        "http_get: too many redirects (more than {MAX_REDIRECTS}); last one from {url} to {location}"
                    )));
                }
                url = url.join(location).map_err(|e| {
                    ToolError::Failed(format!(
                        "http_get: {url} redirects to an invalid location {location:?}: {e}"
                    ))
                })?;
                redirects += 1;
                continue;
            }
            return self.render(response, (redirects > 0).then_some(&url)).await;
        }
    }

    /// Status line, content type and the body (streamed, cut at `max_bytes`).
    async fn render(
        &self,
        mut response: reqwest::Response,
        final_url: Option<&Url>,
    ) -> Result<String, ToolError> {
        let mut out = format!("{:?} {}\n", response.version(), response.status());
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)");
        out.push_str(&format!("content-type: {content_type}\n"));
        if let Some(url) = final_url {
            out.push_str(&format!("final url (after redirects): {url}\n"));
        }
        out.push('\n');
        let cap = self.cfg.max_bytes;
        let declared = response.content_length();
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            ToolError::Failed(format!("http_get: reading the body failed: {}", error_chain(&e)))
        })? {
            let room = cap - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        out.push_str(&String::from_utf8_lossy(&body));
        if truncated {
            let total = declared.map(|n| format!(" of {n}")).unwrap_or_default();
            out.push_str(&format!(
                "\n[truncated: showing the first {cap}{total} bytes (tools.http_get.max_bytes)]"
            ));
        }
        Ok(out)
    }
}

/// A checked host: the name to pin (none for an IP literal) and its checked addresses.
struct Target {
    domain: Option<String>,
    addrs: Vec<SocketAddr>,
}

/// The client's fallback resolver: refuses every name. Only the pinned, checked name resolves
/// (reqwest applies `resolve_to_addrs` overrides before asking this), so nothing unchecked can.
struct PinnedOnly;

impl Resolve for PinnedOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let msg = format!("http_get: refusing to resolve unchecked host {:?}", name.as_str());
        Box::pin(async move { Err(msg.into()) })
    }
}

/// The error with its causes ("error sending request" alone tells the model nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait::async_trait]
impl Tool for HttpGetTool {
    fn name(&self) -> &str {
        "http_get"
    }
    fn description(&self) -> &str {
        "Fetches a public http(s) URL with GET and returns the status, content type and body text \
         (long bodies are cut off). Redirects are followed."
    }
    fn parameters(&self) -> serde_json::Value {
        schema_of::<HttpGetArgs>()
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> Result<String, ToolError> {
        let args: HttpGetArgs = parse_args(args)?;
        let timeout = Duration::from_secs(self.cfg.timeout_secs);
        tokio::select! {
            r = tokio::time::timeout(timeout, self.fetch(&args.url)) => r.unwrap_or(Err(ToolError::Timeout(timeout))),
            _ = ctx.cancel.cancelled() => Err(ToolError::Cancelled),
        }
    }
}

/// Why `ip` is not a public unicast address (e.g. `"loopback"`), or `None` when it is public.
/// IPv6 addresses that embed an IPv4 one (mapped, NAT64, 6to4) are judged by that address.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_broadcast() => "broadcast",
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "carrier-grade NAT",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    };
    Some(reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let reason = match s {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (deprecated)",
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return v4_reason(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => "NAT64 local-use",
        [0x100, 0, 0, 0, ..] => "discard-only",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x2001, 0, ..] => "Teredo",
        [0x2001, 2, 0, ..] => "benchmarking",
        [0x2002, hi, lo, ..] => return v4_reason(embedded(hi, lo)),
        [0x3fff, b, ..] if b < 0x1000 => "documentation",
        [a, ..] if a & 0xfe00 == 0xfc00 => "unique-local",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local",
        [a, ..] if a & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    };
    Some(reason)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    use serde_json::json;

    use super::*;

    fn ctx() -> ToolContext {
        ToolContext::standalone(std::env::temp_dir())
    }

    fn config(allow_private: bool) -> HttpGetConfig {
        HttpGetConfig {
            enabled: true,
            allow_private,
            allow_hosts: Vec::new(),
            timeout_secs: 5,
            max_bytes: 1000,
        }
    }

    /// A test server on 127.0.0.1 and a counter of the requests it answered.
    struct Server {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// Serves `/hello`, `/big` (5000 bytes), `/slow` (30 s), `/missing` (404), `/loop` (redirects
    /// to itself) and `/redirect` (302 to `redirect_to`).
    async fn serve(redirect_to: &str) -> Server {
        let hits = Arc::new(AtomicUsize::new(0));
        let target = redirect_to.to_owned();
        let router = Router::new()
            .route(
                "/hello",
                get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "hello from the test server") }),
            )
            .route("/big", get(|| async { "x".repeat(5000) }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/missing", get(|| async { (StatusCode::NOT_FOUND, "no such page") }))
            .route("/loop", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }))
            .route(
                "/redirect",
                get(move || {
                    let to = target.clone();
                    async move { (StatusCode::FOUND, [(header::LOCATION, to)]) }
                }),
            );
        let counter = hits.clone();
        let router = router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Server { addr, hits }
    }

    async fn get_url(tool: &HttpGetTool, url: &str) -> Result<String, ToolError> {
        tool.call(json!({ "url": url }), &ctx()).await
    }

    fn denied(r: Result<String, ToolError>, needles: &[&str]) {
        match r {
            Err(ToolError::Denied(msg)) => {
                for n in needles {
                    assert!(msg.contains(n), "{msg:?} should mention {n:?}");
                }
            }
            other => panic!("expected Denied, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn default_config_refuses_loopback_without_connecting() {
        let server = serve("/hello").await;
        let tool = HttpGetTool::new(HttpGetConfig::default());
        denied(get_url(&tool, &server.url("/hello")).await, &["127.0.0.1", "loopback", "allow_private"]);
        denied(
            get_url(&tool, &format!("http://localhost:{}/hello", server.addr.port())).await,
            &["\"localhost\" resolves to", "loopback"],
        );
        denied(get_url(&tool, &format!("http://[::1]:{}/", server.addr.port())).await, &["::1", "loopback"]);
        denied(
            get_url(&tool, &format!("http://[::ffff:127.0.0.1]:{}/", server.addr.port())).await,
            &["loopback"],
        );
        // The URL parser normalises these spellings of 127.0.0.1, so they are caught too.
        denied(get_url(&tool, &format!("http://2130706433:{}/", server.addr.port())).await, &["127.0.0.1"]);
        denied(get_url(&tool, &format!("http://0x7f.1:{}/", server.addr.port())).await, &["127.0.0.1"]);
        denied(get_url(&tool, "http://10.1.2.3/").await, &["10.1.2.3", "private"]);
        denied(get_url(&tool, "http://169.254.169.254/latest/meta-data/").await, &["link-local"]);
        assert_eq!(server.hits(), 0, "no request may reach a refused address");
    }

    #[tokio::test]
    async fn allow_private_fetches_from_loopback() {
        let server = serve("/hello").await;
        let tool = HttpGetTool::new(config(true));
        let out = get_url(&tool, &server.url("/hello")).await.unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\ncontent-type: text/plain\n\nhello from the test server");
        let by_name =
            get_url(&tool, &format!("http://localhost:{}/hello", server.addr.port())).await.unwrap();
        assert!(by_name.ends_with("\n\nhello from the test server"), "{by_name}");
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn error_statuses_are_results() {
        let server = serve("/hello").await;
        let out = get_url(&HttpGetTool::new(config(true)), &server.url("/missing")).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404 Not Found\n"), "{out}");
        assert!(out.ends_with("no such page"), "{out}");
    }

    #[tokio::test]
    async fn the_checked_address_is_pinned_into_the_client() {
        let server = serve("/hello").await;
        let mut tool = HttpGetTool::new(config(false));
        let addr = server.addr;
        // A name no real resolver answers: the request only succeeds if the client connects to
        // the address the check saw instead of resolving the name again.
        tool.lookup = Some(Arc::new(move |host, _port| {
            assert_eq!(host, "pinned.invalid");
            Ok(vec![addr])
        }));
        tool.exempt = vec![addr];
        let out = get_url(&tool, &format!("http://pinned.invalid:{}/hello", addr.port())).await.unwrap();
        assert!(out.ends_with("hello from the test server"), "{out}");
        // Without the exemption the same answer is refused, naming the address.
        tool.exempt.clear();
        denied(
            get_url(&tool, &format!("http://pinned.invalid:{}/hello", addr.port())).await,
            &["\"pinned.invalid\" resolves to 127.0.0.1"],
        );
    }

    #[tokio::test]
    async fn body_is_cut_at_max_bytes() {
        let server = serve("/hello").await;
        let out = get_url(&HttpGetTool::new(config(true)), &server.url("/big")).await.unwrap();
        let (head, body) = out.split_once("\n\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"));
        let expected = format!(
            "{}\n[truncated: showing the first 1000 of 5000 bytes (tools.http_get.max_bytes)]",
            "x".repeat(1000)
        );
        assert_eq!(body, expected);
    }

    #[tokio::test]
    async fn redirects_are_followed_and_reported() {
        let server = serve("/hello").await;
        let out = get_url(&HttpGetTool::new(config(true)), &server.url("/redirect")).await.unwrap();
        assert!(out.contains(&format!("final url (after redirects): {}\n", server.url("/hello"))), "{out}");
        assert!(out.ends_with("hello from the test server"), "{out}");
    }

    #[tokio::test]
    async fn redirect_to_a_loopback_address_is_refused() {
        let inner = serve("/hello").await;
        let outer = serve(&inner.url("/hello")).await;
        let mut tool = HttpGetTool::new(config(false));
        // The outer server stands in for a public site.
        tool.exempt = vec![outer.addr];
        denied(get_url(&tool, &outer.url("/redirect")).await, &["127.0.0.1", "loopback"]);
        assert_eq!(outer.hits(), 1);
        assert_eq!(inner.hits(), 0, "the redirect target must not be contacted");
    }

    #[tokio::test]
    async fn redirect_to_another_scheme_is_refused() {
        let server = serve("file:///etc/passwd").await;
        denied(get_url(&HttpGetTool::new(config(true)), &server.url("/redirect")).await, &["\"file\""]);
    }

    #[tokio::test]
    async fn redirect_loops_stop_after_the_limit() {
        let server = serve("/hello").await;
        let r = get_url(&HttpGetTool::new(config(true)), &server.url("/loop")).await;
        assert!(matches!(&r, Err(ToolError::Failed(m)) if m.contains("too many redirects")), "{r:?}");
        assert_eq!(server.hits(), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn allow_hosts_is_enforced_on_every_hop() {
        let server = serve("/hello").await;
        let port = server.addr.port();
        let redirector = serve(&format!("http://127.0.0.1:{port}/hello")).await;
        let mut cfg = config(true);
        cfg.allow_hosts = vec!["LOCALHOST".into()];
        let tool = HttpGetTool::new(cfg);
        let ok = get_url(&tool, &format!("http://localhost:{port}/hello")).await.unwrap();
        assert!(ok.ends_with("hello from the test server"));
        denied(get_url(&tool, &server.url("/hello")).await, &["\"127.0.0.1\"", "allow_hosts"]);
        let hop = format!("http://localhost:{}/redirect", redirector.addr.port());
        denied(get_url(&tool, &hop).await, &["\"127.0.0.1\"", "allow_hosts"]);
        assert_eq!(redirector.hits(), 1);
        assert_eq!(server.hits(), 1, "only the allowed direct fetch reached the server");
    }

    #[tokio::test]
    async fn slow_servers_time_out() {
        let server = serve("/hello").await;
        let mut cfg = config(true);
        cfg.timeout_secs = 1;
        let started = Instant::now();
        let r = get_url(&HttpGetTool::new(cfg), &server.url("/slow")).await;
        assert_eq!(r, Err(ToolError::Timeout(Duration::from_secs(1))));
        assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn cancellation_stops_the_request() {
        let server = serve("/hello").await;
        let c = ctx();
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let r = HttpGetTool::new(config(true)).call(json!({"url": server.url("/slow")}), &c).await;
        assert_eq!(r, Err(ToolError::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn bad_urls_and_schemes() {
        let tool = HttpGetTool::new(config(true));
        assert!(matches!(get_url(&tool, "not a url").await, Err(ToolError::InvalidArguments(_))));
        denied(get_url(&tool, "file:///etc/passwd").await, &["\"file\"", "only http and https"]);
        denied(get_url(&tool, "ftp://127.0.0.1/").await, &["\"ftp\""]);
        let r = tool.call(json!({"url": "http://127.0.0.1/", "method": "POST"}), &ctx()).await;
        assert!(matches!(&r, Err(ToolError::InvalidArguments(m)) if m.contains("method")), "{r:?}");
    }

    #[test]
    fn address_classification() {
        let cases: &[(&str, Option<&str>)] = &[
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("\"this network\" (0.0.0.0/8)")),
            ("10.0.0.1", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("carrier-grade NAT")),
            ("100.128.0.1", None),
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("192.0.2.7", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.7", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("240.0.0.1", Some("reserved")),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("IPv4-compatible (deprecated)")),
            ("64:ff9b::10.0.0.1", Some("private")),
            ("64:ff9b::8.8.8.8", None),
            ("2002:7f00:1::", Some("loopback")),
            ("2001:db8::1", Some("documentation")),
            ("3fff::1", Some("documentation")),
            ("2001::1", Some("Teredo")),
            ("fc00::1", Some("unique-local")),
            ("fd12:3456::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("fec0::1", Some("site-local (deprecated)")),
            ("ff02::1", Some("multicast")),
            ("100::1", Some("discard-only")),
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
        ];
        for (ip, expected) in cases {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(non_public_reason(parsed), *expected, "{ip}");
        }
    }

    #[test]
    fn metadata() {
        let tool = HttpGetTool::new(HttpGetConfig::default());
        assert_eq!(tool.name(), "http_get");
        assert!(tool.idempotent());
        assert_eq!(tool.parameters()["required"], json!(["url"]));
        assert_eq!(tool.parameters()["additionalProperties"], json!(false));
    }
}
