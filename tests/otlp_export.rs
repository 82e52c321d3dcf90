//! The real OTLP exporters, built by `telemetry::build_pipeline` as `telemetry::init` builds them,
//! deliver a run's spans (batch processor) and metrics (periodic reader) to receivers on
//! 127.0.0.1: an axum server for OTLP/HTTP protobuf and a tonic TraceService for gRPC. Receivers
//! decode the protobuf bodies and the tests assert span names and the resource's service name.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde_json::json;
use stepwise::Stepwise;
use stepwise::config::TelemetryConfig;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::RunStatus;
use stepwise::telemetry::{ExportSettings, build_pipeline};
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Default, Clone)]
struct Received {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Received {
    fn span_names(&self) -> Vec<String> {
        let traces = self.traces.lock().unwrap();
        traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    fn trace_service_names(&self) -> Vec<String> {
        let traces = self.traces.lock().unwrap();
        traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|rs| service_name(rs.resource.as_ref()?))
            .collect()
    }

    fn metric_names(&self) -> Vec<String> {
        let metrics = self.metrics.lock().unwrap();
        metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| m.name.clone())
            .collect()
    }
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    })
}

fn service_name(resource: &Resource) -> Option<String> {
    string_attr(&resource.attributes, "service.name")
}

/// Runs `serve` on its own thread and runtime, so a test thread blocked in a flush cannot stall it.
fn on_own_runtime<F: std::future::Future<Output = ()> + Send + 'static>(serve: F) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(serve);
    });
}

/// An OTLP/HTTP receiver (`/v1/traces`, `/v1/metrics`); returns its base URL.
fn http_receiver(received: Received) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (r1, r2) = (received.clone(), received);
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                r1.content_types.lock().unwrap().push(ct);
                r1.traces
                    .lock()
                    .unwrap()
                    .push(ExportTraceServiceRequest::decode(body).expect("protobuf traces"));
                async { ([("content-type", "application/x-protobuf")], Vec::<u8>::new()) }
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |body: axum::body::Bytes| {
                r2.metrics
                    .lock()
                    .unwrap()
                    .push(ExportMetricsServiceRequest::decode(body).expect("protobuf metrics"));
                async { ([("content-type", "application/x-protobuf")], Vec::<u8>::new()) }
            }),
        );
    on_own_runtime(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app).await.unwrap();
    });
    url
}

struct GrpcSink(Received);

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC trace receiver (tonic); returns its URL.
fn grpc_receiver(received: Received) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    on_own_runtime(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcSink(received)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    url
}

fn settings(
    endpoint: String,
    protocol: &str,
    env: &'static [(&'static str, &'static str)],
) -> ExportSettings {
    let cfg = TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        otlp_protocol: protocol.into(),
        service_name: "from-config".into(),
        ..TelemetryConfig::default()
    };
    let env = move |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
    ExportSettings::resolve(&cfg, &env).unwrap()
}

/// A small real run (plan, two steps, synthesis) under the pipeline's layer.
async fn traced_run(layer: impl tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync) {
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let script = json!({
        "model": "export-model",
        "planner": [{"json": {"goal": "g", "steps": [
            {"id": "a", "description": "a", "expected_outcome": "", "tool": null, "depends_on": []},
            {"id": "b", "description": "b", "expected_outcome": "", "tool": null, "depends_on": ["a"]}]}}],
        "executor": ["done"],
        "synthesizer": ["merged"]
    });
    let runtime = Stepwise::builder()
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .workspace_root(tempfile::tempdir().unwrap().keep())
        .build()
        .await
        .unwrap();
    assert_eq!(runtime.run("export me").await.unwrap().status, RunStatus::Completed);
    runtime.shutdown().await;
}

/// The run's spans: one chat each for the plan, both steps and the synthesis.
const EXPECTED_SPANS: [&str; 9] = [
    "chat export-model",
    "chat export-model",
    "chat export-model",
    "chat export-model",
    "stepwise.plan",
    "stepwise.run",
    "stepwise.step a",
    "stepwise.step b",
    "stepwise.synthesize",
];

fn assert_spans(received: &Received) {
    let mut names = received.span_names();
    names.sort();
    assert_eq!(names, EXPECTED_SPANS);
}

#[tokio::test(flavor = "current_thread")]
async fn http_protobuf_export_delivers_spans_and_metrics() {
    let received = Received::default();
    let url = http_receiver(received.clone());
    let env =
        &[("OTEL_SERVICE_NAME", "svc-from-env"), ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")];
    let pipeline = build_pipeline(&settings(url, "http/protobuf", env)).unwrap().expect("export is on");
    traced_run(pipeline.layer()).await;
    pipeline.metrics().run_ended("completed");
    // Nothing has been sent yet (batching); dropping the guard flushes: what a CLI run relies on.
    let guard = pipeline.into_guard();
    assert!(guard.is_exporting());
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();

    assert_spans(&received);
    assert!(received.content_types.lock().unwrap().iter().all(|ct| ct == "application/x-protobuf"));
    let services = received.trace_service_names();
    assert!(!services.is_empty() && services.iter().all(|s| s == "svc-from-env"), "{services:?}");
    let traces = received.traces.lock().unwrap();
    let resource = traces[0].resource_spans[0].resource.as_ref().unwrap();
    assert_eq!(string_attr(&resource.attributes, "deployment.environment").as_deref(), Some("test"));
    drop(traces);
    assert!(received.metric_names().contains(&"stepwise.runs".to_owned()), "{:?}", received.metric_names());
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_export_delivers_spans_from_the_batch_processor() {
    let received = Received::default();
    let url = grpc_receiver(received.clone());
    // Built inside the runtime: tonic's channel runs on it.
    let pipeline = build_pipeline(&settings(url, "grpc", &[])).unwrap().expect("export is on");
    traced_run(pipeline.layer()).await;
    // The flush blocks; off this thread, so the current-thread runtime keeps driving tonic.
    let guard = pipeline.into_guard();
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();

    assert_spans(&received);
    let services = received.trace_service_names();
    assert!(!services.is_empty() && services.iter().all(|s| s == "from-config"), "{services:?}");
}
