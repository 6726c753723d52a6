//! OpenTelemetry across the processes: an OTLP/gRPC receiver built on the official protobuf
//! definitions (`opentelemetry-proto`'s tonic server) collects the spans of a real sync; a
//! batch must be one trace from the reader through the decoder to the writer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Every span received, with the `service.name` of its process; every metric point as
/// (service, name, value).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    points: Arc<Mutex<Vec<(String, String, f64)>>>,
}

fn service_name(r: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    r.iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
        let mut points = self.points.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            let service = service_name(rm.resource.as_ref());
            for m in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let dps = match m.data {
                    Some(Data::Gauge(g)) => g.data_points,
                    Some(Data::Sum(s)) => s.data_points,
                    _ => continue,
                };
                for dp in dps {
                    let v = match dp.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => continue,
                    };
                    points.push((service.clone(), m.name.clone(), v));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = service_name(rs.resource.as_ref());
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Starts the receiver on a free loopback port (it runs until the test process ends).
fn start_collector() -> (Collector, String) {
    let collector = Collector::default();
    let addr = format!("127.0.0.1:{}", free_port());
    let (c, a) = (collector.clone(), addr.clone());
    std::thread::spawn(move || {
        rt().block_on(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(c.clone()))
                .add_service(MetricsServiceServer::new(c))
                .serve(a.parse().unwrap())
                .await
                .unwrap();
        })
    });
    (collector, addr)
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(v) => Some(v.clone()),
        Value::IntValue(v) => Some(v.to_string()),
        _ => None,
    })
}

#[test]
fn one_batch_is_one_trace_from_the_reader_to_the_writer() {
    let (collector, otlp) = start_collector();
    let src = RedisServer::start(&["--requirepass", "telemetry-secret-pw"]);
    let tgt = RedisServer::start(&[]);
    rt().block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\npassword = \"telemetry-secret-pw\"\n[target]\naddress = \"{}\"\n[telemetry]\notlp_endpoint = \"http://{otlp}\"\nmetrics_interval_ms = 500\n",
        src.addr(),
        tgt.addr()
    ));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        for i in 0..50 {
            c.call(&["SET", &format!("traced:{i}"), "v"]).await.unwrap();
        }
    });
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    // Spans leave in batches (every few seconds): wait for a whole chain.
    let deadline = Instant::now() + Duration::from_secs(60);
    let chain = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let find = |service: &str, name: &str, parent: Option<&Span>| -> Vec<Span> {
            spans
                .iter()
                .filter(|(svc, s)| svc == service && s.name == name)
                .filter(|(_, s)| parent.is_none_or(|p| s.trace_id == p.trace_id && s.parent_span_id == p.span_id))
                .map(|(_, s)| s.clone())
                .collect()
        };
        let chain = find("ferry-reader", "read", None).into_iter().find_map(|read| {
            let decode = find("ferry-decoder", "decode", Some(&read)).into_iter().next()?;
            let apply = find("ferry-writer", "apply", Some(&decode)).into_iter().next()?;
            Some((read, decode, apply))
        });
        if let Some(chain) = chain {
            break chain;
        }
        let names: Vec<String> = spans.iter().map(|(svc, s)| format!("{svc}/{}", s.name)).collect();
        assert!(Instant::now() < deadline, "no read→decode→apply chain among {names:?}\n{}", ferry.logs());
        std::thread::sleep(Duration::from_millis(500));
    };
    let (read, decode, apply) = chain;
    assert_eq!(read.trace_id, apply.trace_id);
    assert!(attr(&read, "offset").is_some() && attr(&apply, "offset").is_some(), "{read:?}\n{apply:?}");
    assert_eq!(attr(&decode, "pipeline"), attr(&apply, "pipeline"));
    // The handshake and the full copy are spans too; no attribute carries the password.
    let spans = collector.spans.lock().unwrap().clone();
    for name in ["psync", "full_copy"] {
        assert!(spans.iter().any(|(svc, s)| svc == "ferry-reader" && s.name == name), "no {name} span");
    }
    let text = format!("{spans:?}");
    assert!(!text.contains("telemetry-secret-pw"), "a span carries the password");
    // Each stage pushes its metrics to the same endpoint; the counters moved.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let points = collector.points.lock().unwrap().clone();
        let max = |svc: &str, name: &str| {
            points.iter().filter(|(s, n, _)| s == svc && n == name).map(|(_, _, v)| *v).fold(-1.0, f64::max)
        };
        if max("ferry-writer", "ferry_stage_commands_applied") >= 50.0
            && max("ferry-reader", "ferry_stage_source_offset_bytes") > 0.0
            && max("ferry-decoder", "ferry_stage_entries_decoded") > 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "metrics not pushed: {:?}", &points[points.len().saturating_sub(20)..]);
        std::thread::sleep(Duration::from_millis(300));
    }
}
