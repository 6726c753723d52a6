//! The coordinator: hands out assignments, collects the stages' reports, serves the
//! status API (`GET /status`, `GET /metrics`, `GET /healthz`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use ferry_config::Config;
use ferry_proto::coordinator_server::{Coordinator, CoordinatorServer};
use ferry_proto::{AssignRequest, Assignment, PlanReply, ReportReply, StatusReport};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::common;

/// A report older than this means the stage is gone.
const STALE: Duration = Duration::from_secs(5);

/// One pipeline: a source leader and where its stages listen.
#[derive(Clone, Debug)]
pub struct PipelinePlan {
    pub id: String,
    /// Description for the status.
    pub source: String,
    /// The leader's address when the plan was made (the reader re-resolves it).
    pub source_address: String,
    /// Cluster sources: a slot of the shard (-1 otherwise).
    pub slot: i32,
    pub target: String,
    pub decoder: String,
    pub writer: String,
}

/// Pipelines for the config: one for a standalone or sentinel-managed source, one per
/// master that serves slots for a cluster (named after the shard's first slot, so the name
/// survives a failover of the shard).
pub async fn plan(cfg: &Config) -> anyhow::Result<Vec<PipelinePlan>> {
    let one = |id: String, source: String, source_address: String, slot: i32| PipelinePlan {
        id,
        source,
        source_address,
        slot,
        target: cfg.target.describe(),
        decoder: cfg.decoder.listen.clone(),
        writer: cfg.writer.listen.clone(),
    };
    Ok(match cfg.source.kind {
        ferry_config::DeploymentType::Sentinel => {
            vec![one(format!("sentinel-{}", cfg.source.master_name), cfg.source.describe(), String::new(), -1)]
        }
        ferry_config::DeploymentType::Standalone => {
            vec![one(cfg.source.address.clone(), cfg.source.address.clone(), cfg.source.address.clone(), -1)]
        }
        ferry_config::DeploymentType::Cluster => {
            let map = common::cluster_map(&cfg.source, &[]).await?;
            let mut plans: Vec<PipelinePlan> = (0..map.masters.len())
                .filter_map(|n| {
                    let slot = map.a_slot_of(n)?;
                    let addr = map.masters[n].clone();
                    Some(one(format!("shard-{slot}"), format!("cluster shard of slot {slot}"), addr, slot as i32))
                })
                .collect();
            plans.sort_by_key(|p| p.slot);
            plans
        }
    })
}

#[derive(Default)]
struct Reports {
    by_stage: BTreeMap<(String, String), (Instant, StatusReport)>,
    /// Counters of earlier instances of a stage (a restarted process starts from zero).
    base: BTreeMap<(String, String), Counters>,
}

/// Counters that add up across restarts of a stage.
#[derive(Default, Clone, Copy)]
struct Counters {
    full_syncs: u64,
    partial_resyncs: u64,
    keys_applied: u64,
    keys_skipped: u64,
    commands_applied: u64,
    entries_decoded: u64,
    modules_skipped: u64,
}

impl Counters {
    fn of(r: &StatusReport) -> Counters {
        Counters {
            full_syncs: r.full_syncs,
            partial_resyncs: r.partial_resyncs,
            keys_applied: r.keys_applied,
            keys_skipped: r.keys_skipped,
            commands_applied: r.commands_applied,
            entries_decoded: r.entries_decoded,
            modules_skipped: r.modules_skipped,
        }
    }

    fn add(self, o: Counters) -> Counters {
        Counters {
            full_syncs: self.full_syncs + o.full_syncs,
            partial_resyncs: self.partial_resyncs + o.partial_resyncs,
            keys_applied: self.keys_applied + o.keys_applied,
            keys_skipped: self.keys_skipped + o.keys_skipped,
            commands_applied: self.commands_applied + o.commands_applied,
            entries_decoded: self.entries_decoded + o.entries_decoded,
            modules_skipped: self.modules_skipped + o.modules_skipped,
        }
    }
}

/// Shared state of the coordinator.
pub struct CoordinatorState {
    /// Empty until the source topology is known.
    plans: Mutex<Vec<PipelinePlan>>,
    plan_error: Mutex<Option<String>>,
    reports: Mutex<Reports>,
}

/// The `/status` document (field names and meaning are a contract: see DESIGN/README).
#[derive(Serialize, Debug, Clone)]
pub struct StatusDoc {
    pub role: &'static str,
    pub pipelines: Vec<PipelineStatus>,
}

#[derive(Serialize, Debug, Clone)]
pub struct PipelineStatus {
    pub id: String,
    pub source: String,
    pub target: String,
    pub phase: &'static str,
    pub source_offset: i64,
    pub applied_offset: i64,
    pub lag_bytes: i64,
    pub keys_applied: u64,
    pub commands_applied: u64,
    pub full_syncs: u64,
    pub partial_resyncs: u64,
    pub error: Option<String>,
    // Additions beyond the contract.
    pub rdb_bytes_received: u64,
    pub rdb_size: u64,
    pub keys_skipped: u64,
    pub entries_decoded: u64,
    pub modules_skipped: u64,
    /// Bytes of the source's stream waiting in the reader's disk spool (the target is slower).
    pub spool_bytes: u64,
    /// `[filter]`: full-copy keys not copied, stream commands not forwarded, multi-key
    /// commands dropped for mixed verdicts, keys met in two source dbs mapped to one.
    pub keys_filtered: u64,
    pub commands_filtered: u64,
    pub filtered_mixed: u64,
    pub db_map_collisions: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub stages: BTreeMap<String, StageStatus>,
}

#[derive(Serialize, Debug, Clone)]
pub struct StageStatus {
    pub instance: String,
    pub phase: String,
    pub seconds_since_report: f64,
    pub error: Option<String>,
}

impl CoordinatorState {
    pub fn new(cfg: &Config) -> Arc<Self> {
        let _ = cfg;
        Arc::new(CoordinatorState {
            plans: Mutex::new(Vec::new()),
            plan_error: Mutex::new(None),
            reports: Mutex::new(Reports::default()),
        })
    }

    fn find(&self, id: &str) -> Option<PipelinePlan> {
        let plans = self.plans.lock().unwrap();
        if id.is_empty() { plans.first().cloned() } else { plans.iter().find(|p| p.id == id).cloned() }
    }

    fn not_ready(&self) -> Status {
        let why = self.plan_error.lock().unwrap().clone().unwrap_or_else(|| "discovering the source".into());
        Status::unavailable(format!("no pipeline planned yet: {why}"))
    }

    /// Discovers the source topology until it succeeds (or `cancel` fires).
    async fn plan_loop(self: Arc<Self>, cfg: Config, cancel: CancellationToken) {
        let mut backoff = common::Backoff::new();
        loop {
            match plan(&cfg).await {
                Ok(plans) => {
                    for p in &plans {
                        info!(pipeline = %p.id, source = %p.source, leader = %p.source_address, target = %p.target, "pipeline planned");
                    }
                    *self.plans.lock().unwrap() = plans;
                    *self.plan_error.lock().unwrap() = None;
                    return;
                }
                Err(e) => {
                    let msg = format!("cannot discover the source {}: {e:#}", cfg.source.describe());
                    warn!(error = %msg, "planning failed, retrying");
                    *self.plan_error.lock().unwrap() = Some(msg);
                }
            }
            if !common::sleep_or_cancel(backoff.next_delay(), &cancel).await {
                return;
            }
        }
    }

    /// The current status of every pipeline.
    pub fn status(&self) -> StatusDoc {
        let reports = self.reports.lock().unwrap();
        let now = Instant::now();
        let plans = self.plans.lock().unwrap().clone();
        let pipelines = plans
            .iter()
            .map(|p| {
                let get = |role: &str| {
                    reports.by_stage.get(&(p.id.clone(), role.to_string())).map(|(t, r)| (now.duration_since(*t), r))
                };
                let fresh = |role: &str| get(role).filter(|(age, _)| *age < STALE).map(|(_, r)| r);
                let total = |role: &str| {
                    let key = (p.id.clone(), role.to_string());
                    let base = reports.base.get(&key).copied().unwrap_or_default();
                    reports.by_stage.get(&key).map(|(_, r)| base.add(Counters::of(r))).unwrap_or(base)
                };
                let (rc, dc, wc) = (total("reader"), total("decoder"), total("writer"));
                let (reader, decoder, writer) = (fresh("reader"), fresh("decoder"), fresh("writer"));
                let error = [("reader", reader), ("decoder", decoder), ("writer", writer)]
                    .iter()
                    .find_map(|(_, r)| r.filter(|r| !r.error.is_empty()).map(|r| r.error.clone()))
                    .or_else(|| {
                        let missing: Vec<&str> = [("reader", reader), ("decoder", decoder), ("writer", writer)]
                            .iter()
                            .filter(|(_, r)| r.is_none())
                            .map(|(n, _)| *n)
                            .collect();
                        (!missing.is_empty()).then(|| format!("not reporting: {}", missing.join(", ")))
                    });
                let reader_phase = reader.map(|r| r.phase.as_str()).unwrap_or("connecting");
                let rdb_applied = writer.is_some_and(|w| w.rdb_applied);
                let phase = match reader_phase {
                    "failed" => "failed",
                    "stopped" => "stopped",
                    "connecting" => "connecting",
                    _ if reader.is_some_and(|r| r.full_syncs + r.partial_resyncs > 0) && !rdb_applied => "full_sync",
                    "full_sync" => "full_sync",
                    _ if decoder.is_none() || writer.is_none() => "connecting",
                    _ => "incremental",
                };
                let source_offset = reader.map(|r| r.source_offset).unwrap_or(0);
                // Both offsets from the reader's report (it learns the applied offset from the
                // acknowledgements at once), so the lag is never computed from two reports taken
                // at different moments (a newer writer report would hide a lag).
                let applied_offset = match reader {
                    Some(r) => r.applied_offset,
                    None => writer.map(|w| w.applied_offset).unwrap_or(0),
                };
                let mut errors_by_kind = BTreeMap::new();
                for r in [reader, decoder, writer].into_iter().flatten() {
                    for (k, v) in &r.errors_by_kind {
                        *errors_by_kind.entry(k.clone()).or_default() += v;
                    }
                }
                let stages = ["reader", "decoder", "writer"]
                    .iter()
                    .filter_map(|role| {
                        get(role).map(|(age, r)| {
                            (
                                role.to_string(),
                                StageStatus {
                                    instance: r.instance.clone(),
                                    phase: if age < STALE { r.phase.clone() } else { "gone".into() },
                                    seconds_since_report: age.as_secs_f64(),
                                    error: (!r.error.is_empty()).then(|| r.error.clone()),
                                },
                            )
                        })
                    })
                    .collect();
                PipelineStatus {
                    id: p.id.clone(),
                    source: p.source.clone(),
                    target: p.target.clone(),
                    phase,
                    source_offset,
                    applied_offset,
                    lag_bytes: (source_offset - applied_offset).max(0),
                    keys_applied: wc.keys_applied,
                    commands_applied: wc.commands_applied,
                    full_syncs: rc.full_syncs,
                    partial_resyncs: rc.partial_resyncs,
                    error,
                    rdb_bytes_received: reader.map(|r| r.rdb_bytes).unwrap_or(0),
                    rdb_size: reader.map(|r| r.rdb_size).unwrap_or(0),
                    keys_skipped: wc.keys_skipped,
                    entries_decoded: dc.entries_decoded,
                    modules_skipped: dc.modules_skipped + wc.modules_skipped,
                    spool_bytes: reader.map(|r| r.spool_bytes).unwrap_or(0),
                    keys_filtered: decoder.map(|d| d.keys_filtered).unwrap_or(0),
                    commands_filtered: decoder.map(|d| d.commands_filtered).unwrap_or(0),
                    filtered_mixed: decoder.map(|d| d.filtered_mixed).unwrap_or(0),
                    db_map_collisions: decoder.map(|d| d.db_map_collisions).unwrap_or(0),
                    errors_by_kind,
                    stages,
                }
            })
            .collect();
        StatusDoc { role: "forward", pipelines }
    }
}

struct CoordinatorSvc {
    state: Arc<CoordinatorState>,
}

#[tonic::async_trait]
impl Coordinator for CoordinatorSvc {
    async fn assign(&self, req: Request<AssignRequest>) -> Result<Response<Assignment>, Status> {
        let req = req.into_inner();
        if self.state.plans.lock().unwrap().is_empty() {
            return Err(self.state.not_ready());
        }
        let Some(p) = self.state.find(&req.pipeline_id) else {
            return Err(Status::not_found(format!("no pipeline {:?}", req.pipeline_id)));
        };
        let downstream = match req.role.as_str() {
            "reader" => p.decoder.clone(),
            "decoder" => p.writer.clone(),
            "writer" => String::new(),
            other => return Err(Status::invalid_argument(format!("unknown role {other:?}"))),
        };
        info!(role = %req.role, instance = %req.instance, pipeline = %p.id, "stage assigned");
        Ok(Response::new(assignment(&p, downstream)))
    }

    async fn plan(&self, req: Request<AssignRequest>) -> Result<Response<PlanReply>, Status> {
        let req = req.into_inner();
        let plans = self.state.plans.lock().unwrap().clone();
        if plans.is_empty() {
            return Err(self.state.not_ready());
        }
        let pipelines = plans
            .iter()
            .filter(|p| req.pipeline_id.is_empty() || p.id == req.pipeline_id)
            .map(|p| assignment(p, if req.role == "reader" { p.decoder.clone() } else { p.writer.clone() }))
            .collect();
        info!(role = %req.role, instance = %req.instance, "plan requested");
        Ok(Response::new(PlanReply { pipelines }))
    }

    async fn report(&self, req: Request<StatusReport>) -> Result<Response<ReportReply>, Status> {
        let r = req.into_inner();
        let key = (r.pipeline_id.clone(), r.role.clone());
        let mut reports = self.state.reports.lock().unwrap();
        let restarted =
            reports.by_stage.get(&key).filter(|(_, old)| old.instance != r.instance).map(|(_, old)| Counters::of(old));
        if let Some(old) = restarted {
            info!(pipeline = %r.pipeline_id, role = %r.role, instance = %r.instance, "stage restarted");
            let base = reports.base.entry(key.clone()).or_default();
            *base = base.add(old);
        }
        reports.by_stage.insert(key, (Instant::now(), r));
        Ok(Response::new(ReportReply {}))
    }
}

fn assignment(p: &PipelinePlan, downstream: String) -> Assignment {
    Assignment {
        pipeline_id: p.id.clone(),
        source_address: p.source_address.clone(),
        downstream_address: downstream,
        target: p.target.clone(),
        slot: p.slot,
    }
}

/// Runs the coordinator until `cancel` fires.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = CoordinatorState::new(&cfg);
    let grpc_addr: std::net::SocketAddr = cfg
        .coordinator
        .grpc_addr
        .parse()
        .with_context(|| format!("coordinator.grpc_addr {:?}", cfg.coordinator.grpc_addr))?;
    let grpc_listener =
        tokio::net::TcpListener::bind(&grpc_addr).await.with_context(|| format!("cannot listen on {grpc_addr}"))?;
    let http_listener = tokio::net::TcpListener::bind(&cfg.coordinator.status_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.coordinator.status_addr))?;
    info!(status = %cfg.coordinator.status_addr, grpc = %grpc_addr, "coordinator listening");
    let planner = tokio::spawn(state.clone().plan_loop(cfg.clone(), cancel.clone()));
    let app = axum::Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state.clone());
    let http = axum::serve(http_listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let grpc = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::new(CoordinatorSvc { state }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            cancel.clone().cancelled_owned(),
        );
    let (h, g) = tokio::join!(http, grpc);
    let _ = planner.await;
    if let Err(e) = &h {
        warn!(error = %e, "status server stopped with an error");
    }
    h.context("status server")?;
    g.context("coordinator gRPC server")?;
    Ok(())
}

async fn status(State(state): State<Arc<CoordinatorState>>) -> impl IntoResponse {
    axum::Json(state.status())
}

async fn metrics(State(state): State<Arc<CoordinatorState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_metrics(&state.status()))
}

/// Prometheus text exposition of the status.
pub fn render_metrics(doc: &StatusDoc) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let phases = ["connecting", "full_sync", "incremental", "stopped", "failed"];
    type Series = (&'static str, &'static str, &'static str, fn(&PipelineStatus) -> f64);
    let series: [Series; 10] = [
        ("ferry_spool_bytes", "gauge", "Bytes waiting in the reader's disk spool.", |p| p.spool_bytes as f64),
        ("ferry_source_offset_bytes", "gauge", "Replication offset received from the source.", |p| {
            p.source_offset as f64
        }),
        ("ferry_applied_offset_bytes", "gauge", "Source offset applied on the target.", |p| p.applied_offset as f64),
        ("ferry_lag_bytes", "gauge", "Bytes received from the source but not yet applied.", |p| p.lag_bytes as f64),
        ("ferry_keys_applied_total", "counter", "Keys of full copies applied.", |p| p.keys_applied as f64),
        ("ferry_keys_skipped_total", "counter", "Existing target keys skipped (policy skip).", |p| {
            p.keys_skipped as f64
        }),
        ("ferry_commands_applied_total", "counter", "Data commands applied.", |p| p.commands_applied as f64),
        ("ferry_full_syncs_total", "counter", "Full copies started.", |p| p.full_syncs as f64),
        ("ferry_partial_resyncs_total", "counter", "Partial resynchronizations.", |p| p.partial_resyncs as f64),
        ("ferry_rdb_bytes_received", "gauge", "RDB bytes received in the current full copy.", |p| {
            p.rdb_bytes_received as f64
        }),
    ];
    for (name, kind, help, f) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in &doc.pipelines {
            let _ = writeln!(out, "{name}{{pipeline=\"{}\"}} {}", escape(&p.id), f(p));
        }
    }
    let _ = writeln!(
        out,
        "# HELP ferry_pipeline_phase Current phase of each pipeline (1 for the current one).\n# TYPE ferry_pipeline_phase gauge"
    );
    for p in &doc.pipelines {
        for ph in phases {
            let _ = writeln!(
                out,
                "ferry_pipeline_phase{{pipeline=\"{}\",phase=\"{ph}\"}} {}",
                escape(&p.id),
                u8::from(p.phase == ph)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP ferry_errors_total Error replies and failures by kind.\n# TYPE ferry_errors_total counter"
    );
    for p in &doc.pipelines {
        for (k, v) in &p.errors_by_kind {
            let _ = writeln!(out, "ferry_errors_total{{pipeline=\"{}\",kind=\"{}\"}} {v}", escape(&p.id), escape(k));
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
