//! `telemetry::init` end to end, in its own test binary because it installs the global
//! subscriber: with an OTLP endpoint configured, a run's spans and the process-wide metrics reach
//! an OTLP/HTTP receiver on 127.0.0.1 when the guard drops, although logs stay at `warn`.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::json;
use stepwise::Stepwise;
use stepwise::config::TelemetryConfig;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::RunStatus;
use stepwise::telemetry::{TelemetryError, init_with};

type Bodies = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver on its own thread; returns its base URL.
fn receiver(bodies: Bodies) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        bodies.lock().unwrap().push((uri.path().to_owned(), body.to_vec()));
        async { ([("content-type", "application/x-protobuf")], Vec::<u8>::new()) }
    });
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap();
        })
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exports_spans_and_metrics_and_flushes_on_drop() {
    let bodies = Bodies::default();
    let cfg = TelemetryConfig {
        otlp_endpoint: Some(receiver(bodies.clone())),
        service_name: "init-test".into(),
        ..TelemetryConfig::default()
    };
    // No OTEL_* or RUST_LOG: the config alone decides, whatever the test's environment holds.
    let guard = init_with(&cfg, &|_| None).unwrap();
    assert!(guard.is_exporting());
    assert!(matches!(init_with(&cfg, &|_| None), Err(TelemetryError::AlreadyInstalled)));

    let script = json!({
        "model": "init-model",
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "a", "description": "a", "expected_outcome": "", "tool": null, "depends_on": []}]}}],
        "executor": ["done"],
        "synthesizer": ["merged"]
    });
    let runtime = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .build()
        .await
        .unwrap();
    assert_eq!(runtime.run("init").await.unwrap().status, RunStatus::Completed);
    runtime.shutdown().await;
    assert!(stepwise::telemetry::prometheus_text().contains("stepwise_runs_total{status=\"completed\"} 1"));
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();

    let bodies = bodies.lock().unwrap();
    let mut spans = Vec::new();
    let mut metrics = Vec::new();
    for (path, body) in bodies.iter() {
        match path.as_str() {
            "/v1/traces" => {
                let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                for rs in req.resource_spans {
                    spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans).map(|s| s.name));
                }
            }
            "/v1/metrics" => {
                let req = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
                for rm in req.resource_metrics {
                    metrics.extend(rm.scope_metrics.into_iter().flat_map(|sm| sm.metrics).map(|m| m.name));
                }
            }
            other => panic!("unexpected OTLP path {other}"),
        }
    }
    spans.sort();
    assert_eq!(
        spans,
        [
            "chat init-model",
            "chat init-model",
            "chat init-model",
            "stepwise.plan",
            "stepwise.run",
            "stepwise.step a",
            "stepwise.synthesize"
        ]
    );
    for name in [
        "stepwise.runs",
        "stepwise.steps",
        "stepwise.llm.calls",
        "stepwise.llm.tokens",
        "stepwise.llm.duration",
    ] {
        assert!(metrics.iter().any(|m| m == name), "{name} not exported: {metrics:?}");
    }
}
