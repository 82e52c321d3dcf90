//! The web page served by `stepwise serve` at `/`: a runs list and a live view of one run (its
//! plan as a DAG, revisions, a timeline of step attempts, step details, the final output) with
//! the controls of the API (submit, approve / edit / reject, cancel).
//!
//! Everything the page loads is compiled into the binary from `assets/` (hand-written HTML, CSS
//! and ES modules, no build step and no third-party code), so it works offline and needs nothing
//! but cargo. The page itself holds no run data: it reads the API like any client, with the bearer
//! token a person types in, so `/` and its assets are open while `/v1` stays protected.
//!
//! Every response here carries a strict Content-Security-Policy: scripts only from this origin
//! (no inline script, no `eval`), and no connection, image, font or frame from anywhere else. The
//! page never turns model text into HTML (it builds DOM nodes with `textContent`), and the policy
//! is the second line of defence should it ever do so by mistake.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ServerError, ServerState};

/// The policy of the page and its assets: same-origin only, no inline script or style element,
/// no plugins, no framing (clickjacking of the approve button), no `<base>` rewriting.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One file of the page, compiled in.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the page loads, by its name under `/ui/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/style.css"),
    },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_str!("assets/favicon.svg") },
    Asset { name: "app.js", content_type: JS, body: include_str!("assets/app.js") },
    Asset { name: "api.js", content_type: JS, body: include_str!("assets/api.js") },
    Asset { name: "dom.js", content_type: JS, body: include_str!("assets/dom.js") },
    Asset { name: "format.js", content_type: JS, body: include_str!("assets/format.js") },
    Asset { name: "model.js", content_type: JS, body: include_str!("assets/model.js") },
    Asset { name: "markdown.js", content_type: JS, body: include_str!("assets/markdown.js") },
    Asset { name: "dag.js", content_type: JS, body: include_str!("assets/dag.js") },
    Asset { name: "gantt.js", content_type: JS, body: include_str!("assets/gantt.js") },
    Asset { name: "editor.js", content_type: JS, body: include_str!("assets/editor.js") },
    Asset { name: "runs.js", content_type: JS, body: include_str!("assets/runs.js") },
    Asset { name: "run.js", content_type: JS, body: include_str!("assets/run.js") },
];

const INDEX_HTML: &str = include_str!("assets/index.html");

/// The headers every page response carries. `no-cache` makes the browser revalidate, so a new
/// binary's page is never mixed with a cached module of the previous one.
fn page_headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

/// `GET /`: the page's HTML shell (the modules fill it in).
pub(crate) async fn index() -> Response {
    (page_headers("text/html; charset=utf-8"), INDEX_HTML).into_response()
}

/// `GET /ui/{file}`: one compiled-in asset.
pub(crate) async fn asset(Path(name): Path<String>) -> Result<Response, ServerError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ServerError::NotFound(format!("no page asset {name:?}")))?;
    Ok((page_headers(asset.content_type), asset.body).into_response())
}

/// `GET /ui/config.json` (behind the token, like `/v1`): what the page needs to know about this
/// service's configuration. Only the trace link template for now; `null` hides the link.
pub(crate) async fn config(State(state): State<Arc<ServerState>>) -> Json<Value> {
    Json(json!({"trace_url_template": state.trace_url_template.as_deref()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module the page imports (`from './x.js'`) and every file `index.html` names is served.
    #[test]
    fn every_referenced_asset_is_compiled_in() {
        let served = |name: &str| ASSETS.iter().any(|a| a.name == name);
        let mut referenced = Vec::new();
        for text in ASSETS.iter().map(|a| a.body).chain([INDEX_HTML]) {
            for part in text.split(['\'', '"']).filter(|p| p.ends_with(".js") || p.ends_with(".css")) {
                let name = part.trim_start_matches("./").trim_start_matches("/ui/");
                if !name.contains(['/', ' ']) {
                    referenced.push(name.to_owned());
                }
            }
        }
        assert!(referenced.iter().any(|r| r == "app.js"), "{referenced:?}");
        for name in &referenced {
            assert!(served(name), "{name} is referenced but not in ASSETS");
        }
    }

    /// No asset may rely on what the policy forbids: inline handlers, `eval`, `innerHTML`.
    #[test]
    fn assets_use_nothing_the_policy_or_the_safety_rules_forbid() {
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains(" style="));
        for a in ASSETS {
            for banned in
                ["innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "document.write"]
            {
                assert!(!a.body.contains(banned), "{} uses {banned}", a.name);
            }
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
