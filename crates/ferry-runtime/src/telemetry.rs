//! OpenTelemetry traces: every process exports its spans over OTLP/gRPC when an endpoint
//! is set (`[telemetry] otlp_endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise
//! nothing is set up and nothing is said. `service.name` names the process.
//!
//! A batch is one trace across the processes: the reader's `read` span (one frame of the
//! source's stream), the decoder's `decode` span (the batch built from it) and the writer's
//! `apply` span (until the target's replies are in), each the child of the one before. The
//! W3C `traceparent` travels in the frame and in the batch, since the gRPC streams are long
//! and carry many batches.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static METERS: OnceLock<opentelemetry_sdk::metrics::SdkMeterProvider> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The endpoint to export to: the config's, else the standard environment variable.
pub fn endpoint(cfg: &ferry_config::TelemetryConfig) -> Option<String> {
    Some(cfg.otlp_endpoint.clone())
        .filter(|e| !e.is_empty())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()))
}

/// The layer that turns `tracing` spans into OpenTelemetry spans, when an endpoint is set.
/// Must run inside a tokio runtime (the exporter's gRPC channel lives on it).
pub fn layer<S>(
    cfg: &ferry_config::TelemetryConfig,
    service: &str,
) -> anyhow::Result<Option<Box<dyn Layer<S> + Send + Sync>>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let Some(endpoint) = endpoint(cfg) else { return Ok(None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| ferry_config::ConfigError::field("telemetry.otlp_endpoint", format!("{endpoint:?}: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer(service.to_string());
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Relaxed);
    Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer).boxed()))
}

/// Whether spans are exported (callers skip the per-batch work otherwise).
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// The W3C `traceparent` of `span` ("" when not exporting).
pub fn traceparent(span: &tracing::Span) -> String {
    if !enabled() {
        return String::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` the child of the span `traceparent` names (nothing when empty).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() || traceparent.is_empty() {
        return;
    }
    let carrier: HashMap<String, String> = [("traceparent".to_string(), traceparent.to_string())].into();
    let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
}

/// Pushes this process's metrics (those of its own `/metrics`, see [`crate::metrics`]) to
/// the OTLP endpoint every `metrics_interval_ms`, when one is set.
pub fn init_metrics(cfg: &ferry_config::TelemetryConfig, service: &str) -> anyhow::Result<()> {
    let Some(endpoint) = endpoint(cfg) else { return Ok(()) };
    let exporter =
        opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| ferry_config::ConfigError::field("telemetry.otlp_endpoint", format!("{endpoint:?}: {e}")))?;
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
        .with_interval(std::time::Duration::from_millis(cfg.metrics_interval_ms.max(100)))
        .build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
    let provider =
        opentelemetry_sdk::metrics::SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    use opentelemetry::metrics::MeterProvider as _;
    crate::metrics::observe(&provider.meter("ferry"), service.trim_start_matches("ferry-"));
    let _ = METERS.set(provider);
    Ok(())
}

/// Exports what is left; call before the process exits (inside the runtime).
pub async fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let p = p.clone();
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
    if let Some(m) = METERS.get() {
        let m = m.clone();
        let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
    }
}

/// The writer's span for one batch: from its arrival to the target's last reply, the child
/// of the decoder's span (none when not exporting).
pub fn apply_span(b: &ferry_proto::Batch, pipeline: &str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "apply",
        pipeline = %pipeline,
        offset = b.offset,
        commands = b.count,
        keys = b.keys,
        bytes = b.resp.len()
    );
    set_parent(&span, &b.traceparent);
    span
}
