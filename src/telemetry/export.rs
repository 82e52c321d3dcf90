//! Installing the global subscriber and the OTLP exporters.
//!
//! Logs (fmt layer, stderr) follow `RUST_LOG`, `warn` by default; the OpenTelemetry layer has its
//! own filter ([`otel_filter`]: `stepwise` at `info`), so quiet logs never thin out the traces.
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (first) or `[telemetry] otlp_endpoint` names
//! an endpoint: traces through a batch span processor, metrics through a periodic reader, over
//! `http/protobuf` (blocking reqwest client: the async one panics on the batch processor's own
//! thread) or `grpc` (tonic; the pipeline must be built inside a tokio runtime that
//! outlives the [`TelemetryGuard`]).

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::metrics::{self, Metrics};
use crate::config::{LogFormat, TelemetryConfig};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable or `[telemetry]` key has a value stepwise cannot use.
    #[error("telemetry configuration: {0}")]
    Config(String),
    /// The OTLP exporter could not be built (bad endpoint, no tokio runtime for gRPC…).
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber is already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`: POST to `{endpoint}/v1/traces` and `/v1/metrics` (default port 4318).
    HttpProtobuf,
    /// `grpc`: the collector's gRPC services at `endpoint` (default port 4317).
    Grpc,
}

impl OtlpProtocol {
    fn parse(s: &str) -> Result<Self, TelemetryError> {
        match s.trim() {
            "" | "http/protobuf" => Ok(Self::HttpProtobuf),
            "grpc" => Ok(Self::Grpc),
            other => Err(TelemetryError::Config(format!(
                "unsupported OTLP protocol {other:?}: use \"http/protobuf\" or \"grpc\""
            ))),
        }
    }
}

/// Export settings after the environment has been applied over `[telemetry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// Base OTLP endpoint (`http://host:4318` for HTTP, `http://host:4317` for gRPC); None: off.
    pub endpoint: Option<String>,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// `service.name`.
    pub service_name: String,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Spans buffered for export before new ones are dropped (SDK default 2048).
    pub max_queue_size: usize,
}

impl ExportSettings {
    /// `cfg` with the standard variables read through `env` taking precedence:
    /// `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn resolve(
        cfg: &TelemetryConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = if disabled {
            None
        } else {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .or_else(|| cfg.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()))
                .map(|e| e.trim_end_matches('/').to_owned())
        };
        let protocol =
            OtlpProtocol::parse(&var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or(cfg.otlp_protocol.clone()))?;
        let mut resource_attributes =
            var("OTEL_RESOURCE_ATTRIBUTES").map(|v| parse_resource_attributes(&v)).unwrap_or_default();
        let from_attributes = resource_attributes.iter().position(|(k, _)| k == "service.name");
        let service_name = match (var("OTEL_SERVICE_NAME"), from_attributes) {
            (Some(name), _) => name,
            (None, Some(i)) => resource_attributes[i].1.clone(),
            (None, None) => cfg.service_name.clone(),
        };
        resource_attributes.retain(|(k, _)| k != "service.name");
        Ok(Self { endpoint, protocol, service_name, resource_attributes, max_queue_size: 2048 })
    }

    /// The resource every span and metric is reported with.
    pub fn resource(&self) -> Resource {
        Resource::builder_empty()
            .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
            .with_attributes(
                self.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_service_name(self.service_name.clone())
            .build()
    }
}

/// `key1=value1,key2=value2` (values percent-decoded), as the OTel spec defines it.
fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) =
                std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The OpenTelemetry layer's filter: stepwise's spans at `info` and above, whatever `RUST_LOG`
/// says about logs.
pub fn otel_filter() -> Targets {
    Targets::new().with_target("stepwise", tracing::Level::INFO)
}

/// A built OTLP pipeline: the tracer provider (batch processor) and the metrics pushed alongside.
pub struct OtlpPipeline {
    tracer_provider: SdkTracerProvider,
    metrics: Metrics,
}

/// Builds the OTLP exporters for `settings`; None when export is off (no endpoint).
///
/// For `grpc`, call it inside a tokio runtime (tonic's channel runs on it).
pub fn build_pipeline(settings: &ExportSettings) -> Result<Option<OtlpPipeline>, TelemetryError> {
    let Some(endpoint) = &settings.endpoint else { return Ok(None) };
    let exporter_err = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter(e.to_string());
    let resource = settings.resource();
    let (spans, metric_exporter) = match settings.protocol {
        OtlpProtocol::HttpProtobuf => (
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(exporter_err)?,
            opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{endpoint}/v1/metrics"))
                .build()
                .map_err(exporter_err)?,
        ),
        OtlpProtocol::Grpc => {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(TelemetryError::Exporter(
                    "gRPC export needs a tokio runtime; none is running".into(),
                ));
            }
            (
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(exporter_err)?,
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .map_err(exporter_err)?,
            )
        }
    };
    let batch = BatchConfigBuilder::default().with_max_queue_size(settings.max_queue_size).build();
    let processor = BatchSpanProcessor::builder(spans).with_batch_config(batch).build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_span_processor(processor)
        .with_id_generator(super::RunTraceIds::default())
        .build();
    Ok(Some(OtlpPipeline { tracer_provider, metrics: Metrics::new(resource, Some(metric_exporter)) }))
}

impl OtlpPipeline {
    /// The OpenTelemetry layer exporting through this pipeline, filtered by [`otel_filter`].
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let scope = opentelemetry::InstrumentationScope::builder("stepwise")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = self.tracer_provider.tracer_with_scope(scope);
        // What a span costs is most of what export costs (bench `tracing`), so the layer records
        // only what the documented span tree (docs/telemetry.md) needs: no source location or thread attributes
        // (a run's spans hop threads and their names say where they come from), no busy/idle
        // timings (a clock read on every poll), and no context activation on enter: every span
        // here is parented explicitly through `TraceContext`, never through the current context.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(otel_filter())
    }

    /// The metrics pushed by this pipeline ([`init`] makes them the process-wide ones).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A guard that flushes and shuts the pipeline down when dropped.
    pub fn into_guard(self) -> TelemetryGuard {
        TelemetryGuard { tracer: Some(self.tracer_provider), metrics: Some(self.metrics) }
    }
}

/// Flushes and shuts down the exporters when dropped, so a short CLI run loses no span. Keep it
/// alive for the life of the program; with gRPC, drop it while the tokio runtime still runs (and
/// not on a current-thread runtime's only thread).
#[must_use = "telemetry is flushed and shut down when the guard is dropped"]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    metrics: Option<Metrics>,
}

impl TelemetryGuard {
    /// A guard with nothing to flush (export off).
    pub fn none() -> Self {
        Self { tracer: None, metrics: None }
    }

    /// True when spans and metrics are exported.
    pub fn is_exporting(&self) -> bool {
        self.tracer.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            // Errors here mean the collector is unreachable; there is no one left to tell but stderr.
            if let Err(e) = tracer.force_flush() {
                eprintln!("telemetry: flushing spans failed: {e}");
            }
            let _ = tracer.shutdown();
        }
        if let Some(metrics) = self.metrics.take() {
            let _ = metrics.provider().force_flush();
            let _ = metrics.provider().shutdown();
        }
    }
}

/// Installs the global subscriber: logs to stderr (`RUST_LOG`, default `warn`) plus, when an
/// OTLP endpoint is configured, the OpenTelemetry layer and OTLP metrics. Reads the process
/// environment; see [`init_with`].
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    init_with(cfg, &|name| std::env::var(name).ok())
}

/// [`init`] with the environment read through `env` (tests).
pub fn init_with(
    cfg: &TelemetryConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TelemetryGuard, TelemetryError> {
    let settings = ExportSettings::resolve(cfg, env)?;
    let log_filter = env("RUST_LOG")
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes belong on a terminal, never in a log file or a collector's pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match cfg.log_format {
        LogFormat::Text => text.boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    }
    .with_filter(log_filter);
    let pipeline = build_pipeline(&settings)?;
    let otel = pipeline.as_ref().map(|p| p.layer());
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    let Some(pipeline) = pipeline else { return Ok(TelemetryGuard::none()) };
    if !metrics::install(pipeline.metrics().clone()) {
        tracing::warn!("metrics were recorded before telemetry::init; they are not exported over OTLP");
    }
    Ok(pipeline.into_guard())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn environment_overrides_the_config() {
        let cfg = TelemetryConfig {
            otlp_endpoint: Some("http://collector:4318/".into()),
            ..TelemetryConfig::default()
        };
        let s = ExportSettings::resolve(&cfg, &env_of(&[])).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://collector:4318"));
        assert_eq!((s.protocol, s.service_name.as_str()), (OtlpProtocol::HttpProtobuf, "stepwise"));

        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment.environment=prod%2Ceu"),
        ]);
        let s = ExportSettings::resolve(&cfg, &env).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(s.service_name, "from-attrs");
        assert_eq!(s.resource_attributes, vec![("deployment.environment".into(), "prod,eu".into())]);

        let env = env_of(&[("OTEL_SERVICE_NAME", "svc"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x")]);
        assert_eq!(ExportSettings::resolve(&cfg, &env).unwrap().service_name, "svc");
        let env = env_of(&[("OTEL_SDK_DISABLED", "true")]);
        assert_eq!(ExportSettings::resolve(&cfg, &env).unwrap().endpoint, None);
    }

    #[test]
    fn unknown_protocols_are_refused_by_name() {
        let cfg = TelemetryConfig { otlp_protocol: "http/json".into(), ..TelemetryConfig::default() };
        let e = ExportSettings::resolve(&cfg, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("http/json"), "{e}");
    }

    #[test]
    fn no_endpoint_means_no_pipeline() {
        let s = ExportSettings::resolve(&TelemetryConfig::default(), &env_of(&[])).unwrap();
        assert!(build_pipeline(&s).unwrap().is_none());
    }

    #[test]
    fn the_resource_names_the_service() {
        let s =
            ExportSettings::resolve(&TelemetryConfig::default(), &env_of(&[("OTEL_SERVICE_NAME", "svc")]))
                .unwrap();
        let r = s.resource();
        assert_eq!(
            r.get(&opentelemetry::Key::new("service.name")).map(|v| v.to_string()),
            Some("svc".into())
        );
    }
}
