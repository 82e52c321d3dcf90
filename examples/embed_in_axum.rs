//! Embedding stepwise in your own axum service: your routes, a tool backed by your own state, and
//! stepwise's HTTP API nested under `/agent` — one process, one tokio runtime.
//!
//! ```sh
//! cargo run --example embed_in_axum            # serves on 127.0.0.1:3000 until Ctrl-C
//! curl -s -X POST localhost:3000/agent/v1/runs -H 'Content-Type: application/json' -d '{"task": "count the orders"}'
//! curl -s localhost:3000/orders                # your own route, beside the agent
//! ```
//!
//! The scripted model keeps it offline; swap in `stepwise::llm::providers::build_models` for a
//! real one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::json;
use stepwise::Stepwise;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::server::{self, ServerState};
use stepwise::tools::typed_tool;

/// Your application's own state.
#[derive(Default)]
struct Shop {
    orders: AtomicU64,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct CountOrders {}

fn script() -> serde_json::Value {
    json!({
        "planner": [{"json": {"goal": "Report the order count", "steps": [
            {"id": "count", "description": "Count the orders", "expected_outcome": "a number", "tool": "count_orders", "depends_on": []}
        ]}}],
        "steps": {"count": [{"tool_calls": [{"name": "count_orders", "arguments": {}}]}, "There are 3 orders."]},
        "synthesizer": ["The shop has 3 orders."]
    })
}

/// Your app with stepwise inside: returns the router to serve.
async fn app(shop: Arc<Shop>) -> Result<Router, Box<dyn std::error::Error>> {
    let tool_shop = shop.clone();
    let runtime = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script())?))
        .tool(typed_tool("count_orders", "How many orders the shop has", move |_: CountOrders, _ctx| {
            let shop = tool_shop.clone();
            async move { Ok(shop.orders.load(Ordering::SeqCst).to_string()) }
        }))
        .build()
        .await?;
    let agent = server::router(ServerState::new(Arc::new(runtime)));
    let own = Router::new()
        .route(
            "/orders",
            get(
                |State(shop): State<Arc<Shop>>| async move { shop.orders.load(Ordering::SeqCst).to_string() },
            ),
        )
        .with_state(shop);
    Ok(own.nest("/agent", agent))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shop = Arc::new(Shop::default());
    shop.orders.store(3, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}  (agent API under /agent/v1)", listener.local_addr()?);
    axum::serve(listener, app(shop).await?)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_agent_runs_inside_the_app_and_uses_its_state() {
        let shop = Arc::new(Shop::default());
        shop.orders.store(42, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = app(shop).await.unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = reqwest::Client::new();
        assert_eq!(client.get(format!("{base}/orders")).send().await.unwrap().text().await.unwrap(), "42");
        let submitted: serde_json::Value = client
            .post(format!("{base}/agent/v1/runs"))
            .json(&json!({"task": "count the orders"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = submitted["id"].as_str().unwrap();
        let mut run = serde_json::Value::Null;
        for _ in 0..200 {
            run =
                client.get(format!("{base}/agent/v1/runs/{id}")).send().await.unwrap().json().await.unwrap();
            if run["status"] == "completed" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(run["status"], "completed", "{run:#}");
        assert_eq!(run["final_output"], "The shop has 3 orders.");
        assert_eq!(run["usage"]["tool_calls"], 1);
        // The tool read the app's own state: its observation is in the run's event stream.
        let events = client
            .get(format!("{base}/agent/v1/runs/{id}/events"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            events.contains(r#""type":"ToolReturned""#) && events.contains(r#""output":"42""#),
            "{events}"
        );
    }
}
