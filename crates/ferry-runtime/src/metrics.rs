//! Each stage process's own Prometheus endpoint (`GET /metrics`, `GET /healthz` on
//! `[reader|decoder|writer] metrics_addr`): the counters of the pipelines it serves, as it
//! counts them, labelled `process` and `pipeline`. The coordinator's `/metrics` is the
//! merged view; these answer when the coordinator cannot, and show each process's share.

use std::sync::{Arc, Mutex};

use axum::http::header;
use axum::routing::get;
use ferry_proto::StatusReport;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::Phase;
use crate::prom::{Exposition, escape};
use crate::stats::Stats;

/// The statistics of every pipeline this process serves (registered by `report_loop`).
static PIPELINES: Mutex<Vec<(String, Arc<Stats>)>> = Mutex::new(Vec::new());

pub(crate) fn register(pipeline: &str, stats: &Arc<Stats>) {
    PIPELINES.lock().unwrap().push((pipeline.to_string(), stats.clone()));
}

pub(crate) fn unregister(stats: &Arc<Stats>) {
    PIPELINES.lock().unwrap().retain(|(_, s)| !Arc::ptr_eq(s, stats));
}

type Series = (&'static str, &'static str, &'static str, fn(&StatusReport) -> f64);

const SERIES: [Series; 15] = [
    ("ferry_stage_lag_seconds", "gauge", "Reader: how long the oldest write not yet on the target has waited.", |r| {
        r.lag_ms as f64 / 1000.0
    }),
    ("ferry_stage_source_offset_bytes", "gauge", "Source replication offset this process has seen.", |r| {
        r.source_offset as f64
    }),
    (
        "ferry_stage_applied_offset_bytes",
        "gauge",
        "Source offset applied on the target, as this process knows it.",
        |r| r.applied_offset as f64,
    ),
    ("ferry_stage_lag_bytes", "gauge", "Bytes seen from the source but not yet applied (reader: received).", |r| {
        (r.source_offset - r.applied_offset).max(0) as f64
    }),
    ("ferry_stage_rdb_bytes_received", "gauge", "RDB bytes of the current full copy.", |r| r.rdb_bytes as f64),
    ("ferry_stage_spool_bytes", "gauge", "Stream bytes waiting in the reader's disk spool.", |r| r.spool_bytes as f64),
    ("ferry_stage_keys_applied_total", "counter", "Keys of full copies applied.", |r| r.keys_applied as f64),
    ("ferry_stage_keys_skipped_total", "counter", "Existing target keys skipped (policy skip).", |r| {
        r.keys_skipped as f64
    }),
    ("ferry_stage_commands_applied_total", "counter", "Data commands of the stream applied.", |r| {
        r.commands_applied as f64
    }),
    ("ferry_stage_entries_decoded_total", "counter", "RDB entries decoded.", |r| r.entries_decoded as f64),
    ("ferry_stage_modules_skipped_total", "counter", "Module values not copied.", |r| r.modules_skipped as f64),
    ("ferry_stage_stale_keys_removed_total", "counter", "Target keys removed after re-copies.", |r| {
        r.stale_keys_removed as f64
    }),
    ("ferry_stage_full_syncs_total", "counter", "Full copies started.", |r| r.full_syncs as f64),
    ("ferry_stage_partial_resyncs_total", "counter", "Partial resynchronizations.", |r| r.partial_resyncs as f64),
    ("ferry_stage_commands_filtered_total", "counter", "Stream commands not forwarded by [filter].", |r| {
        r.commands_filtered as f64
    }),
];

/// The Prometheus text of this process (`process`: reader, decoder, writer).
pub fn render(process: &str) -> String {
    let reports: Vec<StatusReport> =
        PIPELINES.lock().unwrap().iter().map(|(id, s)| s.report(id, process, "")).collect();
    let mut out = Exposition::new();
    let labels = |r: &StatusReport| format!("process=\"{process}\",pipeline=\"{}\"", escape(&r.pipeline_id));
    out.family("ferry_stage_up", "gauge", "The process answers.");
    out.sample("ferry_stage_up", &format!("process=\"{process}\""), 1);
    for (name, kind, help, f) in SERIES {
        out.family(name, kind, help);
        for r in &reports {
            out.sample(name, &labels(r), f(r));
        }
    }
    out.family("ferry_stage_phase", "gauge", "The phase of each pipeline here (1: current).");
    for r in &reports {
        for ph in Phase::ALL {
            out.sample("ferry_stage_phase", &format!("{},phase=\"{ph}\"", labels(r)), u8::from(r.phase == ph.as_str()));
        }
    }
    crate::prom::denied_calls(&mut out);
    out.family("ferry_stage_errors_total", "counter", "Error replies and failures by kind.");
    for r in &reports {
        for (k, v) in &r.errors_by_kind {
            out.sample("ferry_stage_errors_total", &format!("{},kind=\"{}\"", labels(r), escape(k)), v);
        }
    }
    out.finish()
}

/// The same series as OTLP instruments, observed at each push (counters without `_total`).
pub(crate) fn observe(meter: &opentelemetry::metrics::Meter, process: &str) {
    use opentelemetry::KeyValue;
    for (name, kind, help, f) in SERIES {
        let process = process.to_string();
        let callback = move |obs: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
            for (id, s) in PIPELINES.lock().unwrap().iter() {
                let r = s.report(id, &process, "");
                obs.observe(f(&r), &[KeyValue::new("process", process.clone()), KeyValue::new("pipeline", id.clone())]);
            }
        };
        if kind == "counter" {
            let _ = meter
                .f64_observable_counter(name.trim_end_matches("_total"))
                .with_description(help)
                .with_callback(callback)
                .build();
        } else {
            let _ = meter.f64_observable_gauge(name).with_description(help).with_callback(callback).build();
        }
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `cancel` ("" serves nothing). An address
/// already in use is a warning, not a failure: the pipeline matters more than its metrics.
pub async fn serve(addr: String, process: &'static str, cancel: CancellationToken) {
    if addr.is_empty() {
        return;
    }
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(addr = %addr, error = %e, "cannot serve /metrics");
            return;
        }
    };
    info!(addr = %addr, "metrics on /metrics, health on /healthz");
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(process)) }),
        )
        .route("/healthz", get(|| async { "ok" }));
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        warn!(error = %e, "the metrics server stopped");
    }
}
