//! Run, step and model metrics (OpenTelemetry instruments), exported over OTLP when export is on
//! and rendered as Prometheus text for `GET /metrics` by [`prometheus_text`].
//!
//! | OTel instrument          | Prometheus name                    | labels                     |
//! |--------------------------|------------------------------------|----------------------------|
//! | `stepwise.runs`          | `stepwise_runs_total`              | `status`                   |
//! | `stepwise.steps`         | `stepwise_steps_total`             | `status`                   |
//! | `stepwise.replans`       | `stepwise_replans_total`           | `decision`                 |
//! | `stepwise.plan_cache.lookups` | `stepwise_plan_cache_lookups_total` | `outcome`             |
//! | `stepwise.llm.calls`     | `stepwise_llm_calls_total`         | `role`, `model`, `outcome` |
//! | `stepwise.llm.tokens`    | `stepwise_llm_tokens_total`        | `role`, `model`, `type`    |
//! | `stepwise.llm.cost`      | `stepwise_llm_cost_total`          | `role`, `model`            |
//! | `stepwise.llm.unpriced_calls` | `stepwise_llm_unpriced_calls_total` | `role`, `model`      |
//! | `stepwise.step.duration` | `stepwise_step_duration_seconds`   | `status` (histogram)       |
//! | `stepwise.llm.duration`  | `stepwise_llm_duration_seconds`    | `role`, `model` (histogram)|
//! | `stepwise.executors.busy`   | `stepwise_executors_busy`       | (gauge)                    |
//! | `stepwise.executors.idle`   | `stepwise_executors_idle`       | (gauge)                    |
//! | `stepwise.executors.queued` | `stepwise_executors_queued`     | (gauge)                    |
//! | `stepwise.provider.waiting` | `stepwise_provider_waiting`     | `role` (gauge)             |
//!
//! The instruments live in one process-wide [`Metrics`] ([`global`]): the tracker and the model
//! wrapper record into it wherever they run, and the HTTP server reads it. The executor gauges
//! are read from the executor pools' counters at each collection (summed over the runtimes of
//! the process, usually one). Prometheus text comes
//! from the SDK's `ManualReader` (cumulative), rendered here, so no extra crate is needed.

use std::fmt::{Display, Write as _};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality, exporter::PushMetricExporter,
};

use crate::executors::{ExecutorLoad, PoolGauges};
use crate::llm::Usage;

/// Bucket bounds of the latency histograms, in seconds: from a fast tool to a slow model.
const LATENCY_BOUNDS: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics. Without [`super::init`] (a library embedding, tests) they are only
/// readable through [`prometheus_text`]; after it they are also pushed over OTLP.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(|| Metrics::new(Resource::builder().build(), None::<NoExport>))
}

/// Makes `metrics` the process-wide instance; false when one was already in use (then the
/// existing one stays, without OTLP export).
pub(crate) fn install(metrics: Metrics) -> bool {
    GLOBAL.set(metrics).is_ok()
}

/// The process-wide metrics in the Prometheus text exposition format (version 0.0.4), for the
/// HTTP server's `GET /metrics`.
pub fn prometheus_text() -> String {
    global().prometheus_text()
}

/// Stand-in exporter type for "no OTLP export"; never constructed.
#[derive(Debug)]
enum NoExport {}

impl PushMetricExporter for NoExport {
    async fn export(&self, _: &ResourceMetrics) -> OTelSdkResult {
        match *self {}
    }
    fn force_flush(&self) -> OTelSdkResult {
        match *self {}
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        match *self {}
    }
    fn temporality(&self) -> Temporality {
        match *self {}
    }
}

/// A `ManualReader` the provider and [`Metrics`] share (the SDK takes readers by value).
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The executor pools the `stepwise.executors.*` gauges read, held weakly so that a dropped
/// runtime stops counting.
type ExecutorPools = Arc<Mutex<Vec<Weak<PoolGauges>>>>;

/// The summed load of the live pools in `pools`, forgetting the dropped ones.
fn executor_load(pools: &ExecutorPools) -> ExecutorLoad {
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    pools.retain(|p| p.strong_count() > 0);
    pools.iter().filter_map(Weak::upgrade).map(|p| p.load()).fold(ExecutorLoad::default(), |a, b| {
        ExecutorLoad { workers: a.workers + b.workers, busy: a.busy + b.busy, queued: a.queued + b.queued }
    })
}

/// Registers an observable gauge `name` reporting `read` of the pools' summed load.
fn executor_gauge(
    meter: &Meter,
    pools: &ExecutorPools,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    read: fn(&ExecutorLoad) -> usize,
) {
    let pools = pools.clone();
    meter
        .u64_observable_gauge(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |gauge| gauge.observe(read(&executor_load(&pools)) as u64, &[]))
        .build();
}

/// The instruments of one meter provider, and the reader that renders them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    provider: SdkMeterProvider,
    reader: SharedReader,
    runs: Counter<u64>,
    steps: Counter<u64>,
    replans: Counter<u64>,
    plan_cache_lookups: Counter<u64>,
    llm_calls: Counter<u64>,
    llm_tokens: Counter<u64>,
    llm_cost: Counter<f64>,
    llm_unpriced: Counter<u64>,
    step_duration: Histogram<f64>,
    llm_duration: Histogram<f64>,
    provider_waiting: UpDownCounter<i64>,
    executor_pools: ExecutorPools,
}

impl Metrics {
    /// Instruments on a new meter provider with `resource`, pushed to `export` periodically
    /// (interval from `OTEL_METRIC_EXPORT_INTERVAL`, default 60 s) when given.
    pub fn new<E: PushMetricExporter>(resource: Resource, export: Option<E>) -> Self {
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let mut builder = SdkMeterProvider::builder().with_resource(resource).with_reader(reader.clone());
        if let Some(exporter) = export {
            builder = builder.with_periodic_exporter(exporter);
        }
        let provider = builder.build();
        let meter = provider.meter("stepwise");
        let latency = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build()
        };
        let executor_pools = ExecutorPools::default();
        executor_gauge(
            &meter,
            &executor_pools,
            "stepwise.executors.busy",
            "{worker}",
            "Executor workers running a step attempt",
            |l| l.busy,
        );
        executor_gauge(
            &meter,
            &executor_pools,
            "stepwise.executors.idle",
            "{worker}",
            "Executor workers waiting for a step (pool size minus busy)",
            ExecutorLoad::idle,
        );
        executor_gauge(
            &meter,
            &executor_pools,
            "stepwise.executors.queued",
            "{step}",
            "Step attempts handed to the executor pool that no worker has started yet",
            |l| l.queued,
        );
        Self {
            executor_pools,
            runs: meter.u64_counter("stepwise.runs").with_description("Runs ended, by final status").build(),
            steps: meter
                .u64_counter("stepwise.steps")
                .with_description("Step attempts ended, by status (completed, failed, skipped, cancelled)")
                .build(),
            replans: meter
                .u64_counter("stepwise.replans")
                .with_description("Replanner decisions, by decision")
                .build(),
            plan_cache_lookups: meter
                .u64_counter("stepwise.plan_cache.lookups")
                .with_description("Plan cache lookups, by outcome (hit, miss, expired, error)")
                .build(),
            llm_calls: meter
                .u64_counter("stepwise.llm.calls")
                .with_description("Model calls, by role, model and outcome")
                .build(),
            llm_tokens: meter
                .u64_counter("stepwise.llm.tokens")
                .with_description("Model tokens, by role, model and type (input, output, cached_input)")
                .build(),
            llm_cost: meter
                .f64_counter("stepwise.llm.cost")
                .with_description(
                    "What model calls cost, in [llm] price_currency, by role and model (priced models only)",
                )
                .build(),
            llm_unpriced: meter
                .u64_counter("stepwise.llm.unpriced_calls")
                .with_description(
                    "Model calls whose model has no [[llm.prices]] entry (cost unknown), by role and model",
                )
                .build(),
            step_duration: latency("stepwise.step.duration", "Wall time of step attempts"),
            llm_duration: latency("stepwise.llm.duration", "Wall time of model calls"),
            provider_waiting: meter
                .i64_up_down_counter("stepwise.provider.waiting")
                .with_unit("{call}")
                .with_description("Model calls of runs waiting for an unavailable provider, by role")
                .build(),
            provider,
            reader,
        }
    }

    /// The meter provider (to flush and shut down with the telemetry guard).
    pub(crate) fn provider(&self) -> &SdkMeterProvider {
        &self.provider
    }

    /// Reports `pool`'s load in the executor gauges for as long as the pool lives.
    pub(crate) fn watch_executors(&self, pool: &Arc<PoolGauges>) {
        let mut pools = self.executor_pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// A run ended with `status` (`completed`, `failed`, `cancelled`).
    pub fn run_ended(&self, status: &str) {
        self.runs.add(1, &[KeyValue::new("status", status.to_owned())]);
    }

    /// A step attempt ended with `status` after `elapsed` (None: it never ran, e.g. skipped).
    pub fn step_ended(&self, status: &str, elapsed: Option<Duration>) {
        let attrs = [KeyValue::new("status", status.to_owned())];
        self.steps.add(1, &attrs);
        if let Some(elapsed) = elapsed {
            self.step_duration.record(elapsed.as_secs_f64(), &attrs);
        }
    }

    /// A run looked for a cached plan: `hit`, `miss`, `expired` (found, too old) or `error`
    /// (the store did not answer; the planner was asked).
    pub fn plan_cache_lookup(&self, outcome: &str) {
        self.plan_cache_lookups.add(1, &[KeyValue::new("outcome", outcome.to_owned())]);
    }

    /// The replanner decided `decision` (`continue`, `replan`, `finish`, `abort`).
    pub fn replanned(&self, decision: &str) {
        self.replans.add(1, &[KeyValue::new("decision", decision.to_owned())]);
    }

    /// A model call by `role` started (`1`) or stopped (`-1`) waiting for its provider.
    pub fn provider_waiting(&self, role: &str, change: i64) {
        self.provider_waiting.add(change, &[KeyValue::new("role", role.to_owned())]);
    }

    /// A model call by `role` to `model` ended (`ok` or not) after `elapsed`, using `usage`.
    pub fn llm_call(&self, role: &str, model: &str, ok: bool, usage: Option<Usage>, elapsed: Duration) {
        let role = KeyValue::new("role", role.to_owned());
        let model = KeyValue::new("model", model.to_owned());
        let outcome = KeyValue::new("outcome", if ok { "ok" } else { "error" });
        self.llm_calls.add(1, &[role.clone(), model.clone(), outcome]);
        self.llm_duration.record(elapsed.as_secs_f64(), &[role.clone(), model.clone()]);
        if let Some(u) = usage {
            let kinds = [
                ("input", u.input_tokens),
                ("output", u.output_tokens),
                ("cached_input", u.cached_input_tokens),
            ];
            for (kind, n) in kinds {
                self.llm_tokens.add(n, &[role.clone(), model.clone(), KeyValue::new("type", kind)]);
            }
            match u.cost.amount() {
                Some(cost) => self.llm_cost.add(cost, &[role, model]),
                None => self.llm_unpriced.add(1, &[role, model]),
            }
        }
    }

    /// Everything recorded so far, in the Prometheus text format (empty after shutdown).
    pub fn prometheus_text(&self) -> String {
        let mut rm = ResourceMetrics::default();
        if self.reader.collect(&mut rm).is_err() {
            return String::new();
        }
        let mut out = String::new();
        for scope in rm.scope_metrics() {
            for metric in scope.metrics() {
                render(&mut out, metric);
            }
        }
        out
    }
}

/// `stepwise.step.duration` + unit `s` → `stepwise_step_duration_seconds`.
fn prometheus_name(metric: &Metric) -> String {
    let mut name: String =
        metric.name().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let unit = match metric.unit() {
        "" | "1" => "",
        u if u.starts_with('{') => "", // annotations such as `{run}` are not units
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        u => u,
    };
    if !unit.is_empty() {
        name.push('_');
        name.push_str(unit);
    }
    name
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `{a="x",b="y"}` from OTel attributes plus `extra` (e.g. `le`), sorted by key.
fn labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>, extra: Option<(&str, String)>) -> String {
    let mut pairs: Vec<(String, String)> = attrs
        .map(|kv| {
            let key =
                kv.key.as_str().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
            (key, escape(&kv.value.as_str()))
        })
        .collect();
    pairs.sort();
    if let Some((k, v)) = extra {
        pairs.push((k.to_owned(), v));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", body.join(","))
}

fn render(out: &mut String, metric: &Metric) {
    match metric.data() {
        AggregatedMetrics::F64(d) => render_data(out, metric, d),
        AggregatedMetrics::U64(d) => render_data(out, metric, d),
        AggregatedMetrics::I64(d) => render_data(out, metric, d),
    }
}

fn render_data<T: Display + Copy>(out: &mut String, metric: &Metric, data: &MetricData<T>) {
    let base = prometheus_name(metric);
    let help = escape(metric.description());
    match data {
        MetricData::Sum(sum) => {
            let (name, kind) =
                if sum.is_monotonic() { (format!("{base}_total"), "counter") } else { (base, "gauge") };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in sum.data_points() {
                let _ = writeln!(out, "{name}{} {}", labels(p.attributes(), None), p.value());
            }
        }
        MetricData::Gauge(gauge) => {
            let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} gauge");
            for p in gauge.data_points() {
                let _ = writeln!(out, "{base}{} {}", labels(p.attributes(), None), p.value());
            }
        }
        MetricData::Histogram(h) => {
            let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} histogram");
            for p in h.data_points() {
                // OTel buckets are per-bucket counts; Prometheus buckets are cumulative.
                let mut cumulative = 0;
                let bounds: Vec<f64> = p.bounds().collect();
                for (i, count) in p.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                    let l = labels(p.attributes(), Some(("le", le)));
                    let _ = writeln!(out, "{base}_bucket{l} {cumulative}");
                }
                let l = labels(p.attributes(), None);
                let _ = writeln!(out, "{base}_sum{l} {}\n{base}_count{l} {}", p.sum(), p.count());
            }
        }
        // Not produced by these instruments (no exponential aggregation is configured).
        MetricData::ExponentialHistogram(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn renders_counters_and_histograms_as_prometheus_text() {
        let m = Metrics::new(Resource::builder_empty().build(), None::<NoExport>);
        m.run_ended("completed");
        m.run_ended("completed");
        m.run_ended("failed");
        m.step_ended("completed", Some(Duration::from_millis(20)));
        m.step_ended("completed", Some(Duration::from_millis(700)));
        m.step_ended("skipped", None);
        m.replanned("replan");
        m.plan_cache_lookup("hit");
        let usage = Usage::of_tokens(10, 3);
        m.llm_call("executor", "gpt \"x\"", true, Some(usage), Duration::from_millis(3));
        let priced = Usage { cost: crate::llm::Cost::from_amount(0.25), ..Usage::of_tokens(1, 1) };
        m.llm_call("planner", "m", true, Some(priced), Duration::from_millis(3));
        m.llm_call("planner", "m", true, Some(priced), Duration::from_millis(3));
        let text = m.prometheus_text();
        assert!(text.contains("# TYPE stepwise_runs_total counter"), "{text}");
        assert_eq!(line_value(&text, "stepwise_runs_total{status=\"completed\"}"), Some(2.0), "{text}");
        assert_eq!(line_value(&text, "stepwise_runs_total{status=\"failed\"}"), Some(1.0));
        assert_eq!(line_value(&text, "stepwise_steps_total{status=\"skipped\"}"), Some(1.0));
        assert_eq!(line_value(&text, "stepwise_replans_total{decision=\"replan\"}"), Some(1.0));
        assert_eq!(line_value(&text, "stepwise_plan_cache_lookups_total{outcome=\"hit\"}"), Some(1.0));
        assert_eq!(
            line_value(
                &text,
                "stepwise_llm_tokens_total{model=\"gpt \\\"x\\\"\",role=\"executor\",type=\"input\"}"
            ),
            Some(10.0),
            "{text}"
        );
        assert!(text.contains("# TYPE stepwise_llm_cost_total counter"), "{text}");
        assert_eq!(line_value(&text, "stepwise_llm_cost_total{model=\"m\",role=\"planner\"}"), Some(0.5));
        assert_eq!(
            line_value(&text, "stepwise_llm_unpriced_calls_total{model=\"gpt \\\"x\\\"\",role=\"executor\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(text.contains("# TYPE stepwise_step_duration_seconds histogram"));
        // Cumulative buckets: 20 ms falls in le=0.025, 700 ms in le=1; skipped steps have no duration.
        assert_eq!(
            line_value(&text, "stepwise_step_duration_seconds_bucket{status=\"completed\",le=\"0.025\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "stepwise_step_duration_seconds_bucket{status=\"completed\",le=\"1\"}"),
            Some(2.0)
        );
        assert_eq!(
            line_value(&text, "stepwise_step_duration_seconds_bucket{status=\"completed\",le=\"+Inf\"}"),
            Some(2.0)
        );
        assert_eq!(
            line_value(&text, "stepwise_step_duration_seconds_count{status=\"completed\"}"),
            Some(2.0)
        );
        assert!(
            text.contains("stepwise_llm_duration_seconds_count{model=\"gpt \\\"x\\\"\",role=\"executor\"} 1")
        );
    }

    #[test]
    fn shut_down_metrics_render_nothing() {
        let m = Metrics::new(Resource::builder_empty().build(), None::<NoExport>);
        m.run_ended("completed");
        m.provider().shutdown().unwrap();
        assert_eq!(m.prometheus_text(), "");
    }

    #[test]
    fn executor_gauges_report_the_live_pools() {
        let m = Metrics::new(Resource::builder_empty().build(), None::<NoExport>);
        let pool = PoolGauges::new(4);
        m.watch_executors(&pool);
        for _ in 0..5 {
            pool.queue_one();
        }
        let busy: Vec<_> = (0..3).map(|_| pool.start_step()).collect();
        let text = m.prometheus_text();
        for name in ["busy", "idle", "queued"] {
            assert!(text.contains(&format!("# TYPE stepwise_executors_{name} gauge")), "{text}");
        }
        assert_eq!(line_value(&text, "stepwise_executors_busy "), Some(3.0), "{text}");
        assert_eq!(line_value(&text, "stepwise_executors_idle "), Some(1.0), "{text}");
        assert_eq!(line_value(&text, "stepwise_executors_queued "), Some(2.0), "{text}");

        // Another runtime's pool adds up; a dropped one stops counting.
        let other = PoolGauges::new(2);
        m.watch_executors(&other);
        drop(busy);
        let text = m.prometheus_text();
        assert_eq!(line_value(&text, "stepwise_executors_busy "), Some(0.0), "{text}");
        assert_eq!(line_value(&text, "stepwise_executors_idle "), Some(6.0), "{text}");
        drop(other);
        let text = m.prometheus_text();
        assert_eq!(line_value(&text, "stepwise_executors_idle "), Some(4.0), "{text}");
        assert_eq!(line_value(&text, "stepwise_executors_queued "), Some(2.0), "{text}");
    }
}
