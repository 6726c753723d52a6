//! Logging: `tracing` to stderr (text or JSON), spans to OTLP when configured.

use ferry_config::{LogConfig, LogFormat};
use tracing::debug;

/// Sets up `tracing`: text on a terminal, JSON when configured; `RUST_LOG` overrides the level.
/// With an OTLP endpoint (`[telemetry]`), spans are exported too (see [`crate::telemetry`]).
pub fn init_logging(cfg: &LogConfig, telemetry: &ferry_config::TelemetryConfig, service: &str) -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    // Colours only on a terminal: a log file or a collector gets plain text.
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt: Boxed = match cfg.format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.with_target(false).boxed(),
    };
    let mut layers: Vec<Boxed> = vec![fmt];
    if let Some(otel) = crate::telemetry::layer(telemetry, service)? {
        layers.push(otel);
    }
    if tracing_subscriber::registry().with(layers).with(filter).try_init().is_ok() {
        debug!(service, otlp = crate::telemetry::enabled(), "logging initialised");
    }
    Ok(())
}
