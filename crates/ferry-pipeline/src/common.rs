//! Pieces every stage shares: statistics reported to the coordinator, assignments,
//! logging, shutdown, backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;

use ferry_config::{LogConfig, LogFormat};
use ferry_proto::coordinator_client::CoordinatorClient;
use ferry_proto::{AssignRequest, Assignment, StatusReport};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// `host:port` → `http://host:port`, or `https://` when the links are TLS (`[grpc]`).
/// A scheme given with the address follows the config too (`http://` with TLS set cannot work).
pub fn grpc_url(addr: &str) -> String {
    let host = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr);
    if GRPC_TLS.get().is_some_and(Option::is_some) { format!("https://{host}") } else { format!("http://{host}") }
}

/// Mutual TLS between ferry's processes (`[grpc]`): the CA, this process's identity.
pub struct GrpcTls {
    ca: tonic::transport::Certificate,
    identity: tonic::transport::Identity,
    server_name: String,
}

/// Set once per process, from its config, before any gRPC link is made.
static GRPC_TLS: std::sync::OnceLock<Option<GrpcTls>> = std::sync::OnceLock::new();

/// Reads the `[grpc]` TLS files (an unreadable one is a configuration error).
pub fn init_grpc_tls(cfg: &ferry_config::GrpcConfig) -> anyhow::Result<()> {
    let tls = if cfg.tls() {
        let read = |field: &str, path: &str| {
            std::fs::read(path).with_context(|| format!("config: grpc.{field}: cannot read {path}"))
        };
        Some(GrpcTls {
            ca: tonic::transport::Certificate::from_pem(read("tls_ca_file", &cfg.tls_ca_file)?),
            identity: tonic::transport::Identity::from_pem(
                read("tls_cert_file", &cfg.tls_cert_file)?,
                read("tls_key_file", &cfg.tls_key_file)?,
            ),
            server_name: cfg.tls_server_name.clone(),
        })
    } else {
        None
    };
    let _ = GRPC_TLS.set(tls);
    Ok(())
}

/// A channel to another ferry process (`url` from [`grpc_url`]), over mutual TLS when set.
pub async fn grpc_channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad gRPC address {url}"))?
        .connect_timeout(Duration::from_secs(10));
    if let Some(Some(t)) = GRPC_TLS.get() {
        let host = url.rsplit("://").next().unwrap_or(url);
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_matches(['[', ']']);
        let name = if t.server_name.is_empty() { host } else { &t.server_name };
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(t.ca.clone())
            .identity(t.identity.clone())
            .domain_name(name);
        endpoint = endpoint.tls_config(tls).context("gRPC TLS settings")?;
    }
    Ok(endpoint.connect().await?)
}

/// A gRPC server builder, requiring client certificates of the CA when TLS is set.
pub fn grpc_server() -> anyhow::Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    Ok(match GRPC_TLS.get() {
        Some(Some(t)) => builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new().identity(t.identity.clone()).client_ca_root(t.ca.clone()),
            )
            .context("gRPC TLS settings")?,
        _ => builder,
    })
}

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

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            _ = token.cancelled() => return,
        }
        info!("shutdown requested");
        token.cancel();
    });
}

/// Sleeps for `d` unless cancelled first; returns false when cancelled.
pub async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

/// Exponential backoff from 100 ms to 5 s.
pub struct Backoff(u32);

impl Backoff {
    pub fn new() -> Self {
        Backoff(0)
    }
    pub fn reset(&mut self) {
        self.0 = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        let ms = (100u64 << self.0.min(6)).min(5000);
        self.0 += 1;
        Duration::from_millis(ms)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// A name for this process in reports: `host-pid-start`.
/// With the time the process started (ms, base 36): a container started again in the same
/// pod has the same host name and often the same pid (1), and must still count as another
/// instance.
pub fn instance_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let mut stamp = Vec::new();
        while t > 0 {
            stamp.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(t % 36) as usize]);
            t /= 36;
        }
        stamp.reverse();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}-{}", host.trim(), std::process::id(), String::from_utf8_lossy(&stamp))
    })
    .clone()
}

/// Asks the coordinator for this stage's assignment (the first pipeline of its plan: the
/// decoder and writer serve every pipeline and only need where the next stage listens),
/// retrying until it answers or `cancel` fires.
pub async fn assignment(
    coordinator: &str,
    role: &str,
    pipeline: Option<&str>,
    cancel: &CancellationToken,
) -> Option<Assignment> {
    plan(coordinator, role, pipeline, cancel).await.and_then(|p| p.into_iter().next())
}

/// Asks the coordinator for every pipeline this stage should serve (or only `pipeline`),
/// retrying until it answers or `cancel` fires.
pub async fn plan(
    coordinator: &str,
    role: &str,
    pipeline: Option<&str>,
    cancel: &CancellationToken,
) -> Option<Vec<Assignment>> {
    let mut backoff = Backoff::new();
    let mut warned = false;
    loop {
        let req = AssignRequest {
            role: role.into(),
            instance: instance_name(),
            pipeline_id: pipeline.unwrap_or_default().into(),
        };
        let res = async {
            let mut client = CoordinatorClient::new(grpc_channel(coordinator).await.map_err(|e| format!("{e:#}"))?);
            client.plan(req).await.map(|r| r.into_inner().pipelines).map_err(|s| s.message().to_string())
        }
        .await;
        match res {
            Ok(p) if !p.is_empty() => {
                for a in &p {
                    info!(pipeline = %a.pipeline_id, leader = %a.source_address, downstream = %a.downstream_address, "assigned");
                }
                return Some(p);
            }
            Ok(_) => {
                if !warned {
                    warn!(coordinator, pipeline = pipeline.unwrap_or(""), "the coordinator has no such pipeline");
                    warned = true;
                }
            }
            Err(e) => {
                if !warned {
                    warn!(coordinator, error = %e, "waiting for the coordinator");
                    warned = true;
                }
            }
        }
        if !sleep_or_cancel(backoff.next_delay(), cancel).await {
            return None;
        }
    }
}

/// Asks the coordinator once for the pipelines this stage should serve now (or only
/// `pipeline`); empty when the current role runs none (fenced, switching back).
pub async fn plan_once(coordinator: &str, role: &str, pipeline: Option<&str>) -> Result<Vec<Assignment>, String> {
    let req = AssignRequest {
        role: role.into(),
        instance: instance_name(),
        pipeline_id: pipeline.unwrap_or_default().into(),
    };
    let mut client = CoordinatorClient::new(grpc_channel(coordinator).await.map_err(|e| format!("{e:#}"))?);
    client.plan(req).await.map(|r| r.into_inner().pipelines).map_err(|s| s.message().to_string())
}

/// Counters of one stage, updated by the stage and reported to the coordinator.
#[derive(Default)]
pub struct Stats {
    pub phase: Mutex<&'static str>,
    pub source_offset: AtomicI64,
    pub applied_offset: AtomicI64,
    pub rdb_applied: AtomicBool,
    pub rdb_bytes: AtomicU64,
    pub rdb_size: AtomicU64,
    pub keys_applied: AtomicU64,
    pub keys_skipped: AtomicU64,
    pub commands_applied: AtomicU64,
    pub entries_decoded: AtomicU64,
    pub modules_skipped: AtomicU64,
    /// Writer: keys removed after re-copies (see [`crate::stale`]).
    pub stale_keys_removed: AtomicU64,
    pub full_syncs: AtomicU64,
    pub partial_resyncs: AtomicU64,
    /// Bytes of the replication stream waiting in the reader's disk spool.
    pub spool_bytes: AtomicU64,
    /// Reader: when each frame not yet applied arrived (one mark per 10 ms at most), for the
    /// lag in time.
    pub unapplied: Mutex<std::collections::VecDeque<(i64, std::time::Instant)>>,
    /// The replication id of the session (decoder: what the reader continues).
    pub replid: Mutex<String>,
    pub error: Mutex<String>,
    pub errors_by_kind: Mutex<BTreeMap<String, u64>>,
    /// The decoder's filter, whose counters are reported too.
    pub filter: std::sync::OnceLock<Arc<crate::filter::Filter>>,
}

impl Stats {
    pub fn new(phase: &'static str) -> Arc<Self> {
        let s = Stats::default();
        *s.phase.lock().unwrap() = phase;
        Arc::new(s)
    }

    /// A frame up to `end_offset` arrived from the source now.
    pub fn received(&self, end_offset: i64) {
        let mut q = self.unapplied.lock().unwrap();
        let now = std::time::Instant::now();
        let full = q.len() >= 100_000;
        match q.back_mut() {
            // Within 10 ms of the last mark (or too many marks): move it forward.
            Some((off, at)) if full || now.duration_since(*at) < Duration::from_millis(10) => *off = end_offset,
            _ => q.push_back((end_offset, now)),
        }
    }

    /// The target now holds everything up to `offset`.
    pub fn applied(&self, offset: i64) {
        self.applied_offset.store(offset, Relaxed);
        let mut q = self.unapplied.lock().unwrap();
        while q.front().is_some_and(|(off, _)| *off <= offset) {
            q.pop_front();
        }
    }

    /// How long the oldest write not yet on the target has waited (0 when caught up).
    pub fn lag(&self) -> Duration {
        self.unapplied.lock().unwrap().front().map(|(_, at)| at.elapsed()).unwrap_or_default()
    }

    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap() = phase;
    }

    /// Records an error (one line) for the status API.
    pub fn set_error(&self, e: impl std::fmt::Display) {
        *self.error.lock().unwrap() = e.to_string().replace('\n', " ");
    }

    pub fn clear_error(&self) {
        self.error.lock().unwrap().clear();
    }

    pub fn count_error(&self, kind: &str) {
        *self.errors_by_kind.lock().unwrap().entry(kind.to_string()).or_default() += 1;
    }

    pub(crate) fn report(&self, pipeline_id: &str, role: &str, instance: &str) -> StatusReport {
        StatusReport {
            pipeline_id: pipeline_id.into(),
            role: role.into(),
            instance: instance.into(),
            phase: (*self.phase.lock().unwrap()).into(),
            source_offset: self.source_offset.load(Relaxed),
            applied_offset: self.applied_offset.load(Relaxed),
            rdb_applied: self.rdb_applied.load(Relaxed),
            rdb_bytes: self.rdb_bytes.load(Relaxed),
            rdb_size: self.rdb_size.load(Relaxed),
            keys_applied: self.keys_applied.load(Relaxed),
            commands_applied: self.commands_applied.load(Relaxed),
            full_syncs: self.full_syncs.load(Relaxed),
            partial_resyncs: self.partial_resyncs.load(Relaxed),
            error: self.error.lock().unwrap().clone(),
            keys_skipped: self.keys_skipped.load(Relaxed),
            errors_by_kind: self.errors_by_kind.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect(),
            entries_decoded: self.entries_decoded.load(Relaxed),
            modules_skipped: self.modules_skipped.load(Relaxed),
            spool_bytes: self.spool_bytes.load(Relaxed),
            keys_filtered: self.filter.get().map(|f| f.stats.keys_filtered.load(Relaxed)).unwrap_or(0),
            commands_filtered: self.filter.get().map(|f| f.stats.commands_filtered.load(Relaxed)).unwrap_or(0),
            filtered_mixed: self.filter.get().map(|f| f.stats.filtered_mixed.load(Relaxed)).unwrap_or(0),
            db_map_collisions: self.filter.get().map(|f| f.stats.db_map_collisions.load(Relaxed)).unwrap_or(0),
            lag_ms: self.lag().as_millis() as u64,
            stale_keys_removed: self.stale_keys_removed.load(Relaxed),
        }
    }
}

/// Reports `stats` to the coordinator every 200 ms until cancelled (and once more at the end).
pub async fn report_loop(
    coordinator: String,
    pipeline_id: String,
    role: &'static str,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let instance = instance_name();
    crate::metrics::register(&pipeline_id, &stats);
    let mut client: Option<CoordinatorClient<tonic::transport::Channel>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = cancel.cancelled() => true,
        };
        if client.is_none() {
            client = grpc_channel(&coordinator).await.ok().map(CoordinatorClient::new);
        }
        if let Some(c) = client.as_mut() {
            let report = stats.report(&pipeline_id, role, &instance);
            let sent = tokio::time::timeout(Duration::from_secs(2), c.report(report)).await;
            if !matches!(sent, Ok(Ok(_))) {
                debug!("status report to the coordinator failed");
                client = None;
            }
        }
        if stop {
            crate::metrics::unregister(&stats);
            return;
        }
    }
}

/// Maps any error to a gRPC status (one place, so messages stay consistent).
pub fn to_status(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}

/// The credentials of a deployment's data nodes.
pub fn auth_of(r: &ferry_config::RedisConfig) -> ferry_resp::Auth {
    ferry_resp::Auth {
        username: Some(r.username.clone()).filter(|u| !u.is_empty()),
        password: Some(r.password.clone()).filter(|p| !p.is_empty()),
    }
}

/// The TLS settings of a deployment's data nodes (`None`: plaintext).
pub fn tls_of(r: &ferry_config::RedisConfig) -> Option<ferry_resp::TlsSettings> {
    r.tls.then(|| tls_settings(r))
}

/// The credentials of a deployment's sentinels.
pub fn sentinel_auth_of(r: &ferry_config::RedisConfig) -> ferry_resp::Auth {
    ferry_resp::Auth {
        username: Some(r.sentinel_username.clone()).filter(|u| !u.is_empty()),
        password: Some(r.sentinel_password.clone()).filter(|p| !p.is_empty()),
    }
}

/// The TLS settings of a deployment's sentinels (`sentinel_tls`, default `tls`).
pub fn sentinel_tls_of(r: &ferry_config::RedisConfig) -> Option<ferry_resp::TlsSettings> {
    r.sentinels_use_tls().then(|| tls_settings(r))
}

fn tls_settings(r: &ferry_config::RedisConfig) -> ferry_resp::TlsSettings {
    let path = |p: &String| Some(std::path::PathBuf::from(p)).filter(|_| !p.is_empty());
    ferry_resp::TlsSettings {
        ca_file: path(&r.tls_ca_file),
        cert_file: path(&r.tls_cert_file),
        key_file: path(&r.tls_key_file),
        server_name: Some(r.tls_server_name.clone()).filter(|n| !n.is_empty()),
        insecure_skip_verify: r.tls_insecure_skip_verify,
    }
}

/// Connects to the data node `addr` of a deployment with its credentials and TLS settings.
pub async fn connect_node(
    r: &ferry_config::RedisConfig,
    addr: &str,
    timeout: Duration,
) -> Result<ferry_resp::Connection, ferry_resp::RespError> {
    ferry_resp::Connection::connect_with(addr, &auth_of(r), tls_of(r).as_ref(), timeout).await
}

/// The slot map of a cluster, asked of the `seeds` first, then of the configured address.
pub async fn cluster_map(
    r: &ferry_config::RedisConfig,
    seeds: &[String],
) -> anyhow::Result<ferry_resp::cluster::SlotMap> {
    let mut last = None;
    for addr in seeds.iter().cloned().chain(cluster_seeds(r)) {
        let addr = &addr;
        let res = async {
            let mut c = connect_node(r, addr, Duration::from_secs(5)).await?;
            let reply = c.call(&["CLUSTER", "SLOTS"]).await?;
            remember_cluster_nodes(r, &reply);
            ferry_resp::cluster::SlotMap::from_cluster_slots(&reply)
                .ok_or_else(|| anyhow::anyhow!("cannot read CLUSTER SLOTS"))
        }
        .await;
        match res {
            Ok(map) if !map.masters.is_empty() => return Ok(map),
            Ok(_) => last = Some(anyhow::anyhow!("{addr}: the cluster serves no slot")),
            Err(e) => last = Some(e.context(addr.clone())),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster node to ask")))
}

/// One `SCAN` step of the connection's db from `cursor` (`"0"` to start), keys matching
/// `pattern`: the next cursor (`"0"` at the end) and the keys of this step.
pub async fn scan_step(
    c: &mut ferry_resp::Connection,
    cursor: &[u8],
    pattern: &str,
) -> anyhow::Result<(Vec<u8>, Vec<bytes::Bytes>)> {
    let r = c.call(&[&b"SCAN"[..], cursor, b"MATCH", pattern.as_bytes(), b"COUNT", b"1000"]).await?;
    let ferry_resp::Reply::Array(Some(mut parts)) = r else { anyhow::bail!("bad reply to SCAN") };
    let batch = parts.pop();
    let next = parts.pop().and_then(|c| c.as_bytes().map(|b| b.to_vec())).unwrap_or_else(|| b"0".to_vec());
    let keys = match batch {
        Some(ferry_resp::Reply::Array(Some(ks))) => ks.into_iter().filter_map(|k| k.as_bytes().cloned()).collect(),
        _ => Vec::new(),
    };
    Ok((next, keys))
}

/// Every key of the connection's db that matches `pattern` (`SCAN MATCH`, to the end).
pub async fn scan_keys(c: &mut ferry_resp::Connection, pattern: &str) -> anyhow::Result<Vec<bytes::Bytes>> {
    let mut keys = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let (next, batch) = scan_step(c, &cursor, pattern).await?;
        keys.extend(batch);
        if next == b"0" {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Nodes of each cluster deployment (by its configured address) seen in `CLUSTER SLOTS`
/// replies, masters and replicas: asked when the configured node is gone.
static KNOWN_CLUSTER_NODES: Mutex<Vec<(String, Vec<String>)>> = Mutex::new(Vec::new());

/// Records the nodes a `CLUSTER SLOTS` reply of deployment `r` names.
pub fn remember_cluster_nodes(r: &ferry_config::RedisConfig, reply: &ferry_resp::Reply) {
    let nodes = ferry_resp::cluster::SlotMap::nodes_of_cluster_slots(reply);
    if nodes.is_empty() {
        return;
    }
    let mut known = KNOWN_CLUSTER_NODES.lock().unwrap();
    match known.iter_mut().find(|(a, _)| *a == r.address) {
        Some((_, n)) => *n = nodes,
        None => known.push((r.address.clone(), nodes)),
    }
}

/// Where to ask a cluster deployment for its slot map: the configured address (several,
/// comma-separated, are allowed), then every node seen in its slot maps so far.
pub fn cluster_seeds(r: &ferry_config::RedisConfig) -> Vec<String> {
    let mut out: Vec<String> = r.address.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
    if let Some((_, nodes)) = KNOWN_CLUSTER_NODES.lock().unwrap().iter().find(|(a, _)| *a == r.address) {
        for n in nodes {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
    }
    out
}

/// Where the master of a deployment is now: its address (standalone), what the sentinels
/// say (sentinel), or the master of a cluster shard (see [`shard_master`]; `current` is
/// asked for the slot map first). For a cluster, `slot` is the shard's hint and is moved
/// to a slot the master serves now.
pub async fn resolve_at(
    r: &ferry_config::RedisConfig,
    slot: Option<&mut u16>,
    current: &str,
) -> anyhow::Result<String> {
    if r.kind == ferry_config::DeploymentType::Cluster {
        let hint = slot.ok_or_else(|| anyhow::anyhow!("a cluster pipeline needs a slot"))?;
        let seeds: Vec<String> = std::iter::once(current.to_string()).filter(|s| !s.is_empty()).collect();
        let map = cluster_map(r, &seeds).await?;
        let (addr, slot) =
            shard_master(&map, current, *hint).ok_or_else(|| anyhow::anyhow!("no master serves slot {hint}"))?;
        *hint = slot;
        return Ok(addr);
    }
    resolve(r).await
}

/// The master of a cluster shard: `current` for as long as it serves slots (a slot
/// migration does not move a pipeline to another master: that master has a pipeline of
/// its own), otherwise whoever serves `hint` now (a failover: the new master continues the
/// old one's replication history). Also returns a slot the master serves, the next hint.
pub fn shard_master(map: &ferry_resp::cluster::SlotMap, current: &str, hint: u16) -> Option<(String, u16)> {
    if let Some(n) = map.master_index(current) {
        let slot = if map.node_of(hint) == Some(n) { hint } else { map.a_slot_of(n)? };
        return Some((current.to_string(), slot));
    }
    let n = map.node_of(hint)?;
    Some((map.masters[n].clone(), hint))
}

/// Where the master of a deployment is now: its address (standalone), or what the
/// sentinels say (sentinel).
pub async fn resolve(r: &ferry_config::RedisConfig) -> anyhow::Result<String> {
    match r.kind {
        ferry_config::DeploymentType::Sentinel => {
            let auth = sentinel_auth_of(r);
            let tls = sentinel_tls_of(r);
            Ok(ferry_resp::sentinel::resolve_master_with(
                &r.sentinels,
                &r.master_name,
                &auth,
                tls.as_ref(),
                Duration::from_secs(3),
            )
            .await?)
        }
        _ => Ok(r.address.clone()),
    }
}

/// Resolves and connects to the master of a deployment.
pub async fn connect(r: &ferry_config::RedisConfig) -> anyhow::Result<(String, ferry_resp::Connection)> {
    let addr = resolve(r).await?;
    let conn = connect_node(r, &addr, Duration::from_secs(10)).await?;
    Ok((addr, conn))
}

/// The RDB version a target server loads (from `INFO server`); 0 when it cannot be told, in
/// which case values are sent as they come.
pub async fn server_rdb_version(conn: &mut ferry_resp::Connection) -> u32 {
    let info = match conn.call(&["INFO", "server"]).await {
        Ok(ferry_resp::Reply::Bulk(Some(b))) => String::from_utf8_lossy(&b).into_owned(),
        _ => return 0,
    };
    ferry_rdb::server_rdb_version(&info).unwrap_or_else(|| {
        tracing::warn!(
            "cannot tell the target's RDB version from INFO server: values are sent as the source wrote them"
        );
        0
    })
}

/// Resolves when a sentinel-managed deployment's master is no longer `current`: polled every
/// 500 ms (Sentinel answers with the new master as soon as it is promoted, while
/// `+switch-master` can come much later), and at once when a sentinel publishes a failover
/// event about the master. Never resolves for other deployments.
pub async fn master_moved(r: &ferry_config::RedisConfig, current: &str) -> anyhow::Error {
    master_moved_at(r, None, current).await
}

/// Sentinel events after which the master is looked up at once.
const FAILOVER_EVENTS: [&str; 4] = ["+switch-master", "+failover-state-reconf-slaves", "+failover-end", "+odown"];

/// [`master_moved`], for the master of a cluster shard as well (hint `slot`): resolves when
/// `current` no longer serves slots and another master serves the hint.
pub async fn master_moved_at(r: &ferry_config::RedisConfig, slot: Option<u16>, current: &str) -> anyhow::Error {
    if r.kind == ferry_config::DeploymentType::Standalone {
        return std::future::pending().await;
    }
    let mut hint = slot;
    // One subscriber per sentinel; they only wake the loop below, which asks again. Owned
    // here: dropping this future aborts them.
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<String>(8);
    let mut subscribers = tokio::task::JoinSet::new();
    if r.kind == ferry_config::DeploymentType::Sentinel {
        for s in r.sentinels.clone() {
            let (r, wake_tx) = (r.clone(), wake_tx.clone());
            subscribers.spawn(async move { watch_sentinel(&r, &s, &FAILOVER_EVENTS, wake_tx).await });
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            Some(event) = wake_rx.recv() => tracing::info!(event = %event, "sentinel event: looking up the master"),
        }
        if let Ok(now) = resolve_at(r, hint.as_mut(), current).await
            && now != current
        {
            subscribers.abort_all();
            tracing::info_span!("failover", deployment = %r.describe(), from = %current, to = %now)
                .in_scope(|| info!(from = %current, to = %now, "the master moved"));
            return anyhow::anyhow!("the master moved from {current} to {now} (failover)");
        }
    }
}

/// Subscribes to one sentinel's `channels` and sends each event about `r`'s master on
/// `wake` (reconnecting after a second when the sentinel goes away). Runs until dropped.
pub async fn watch_sentinel(
    r: &ferry_config::RedisConfig,
    sentinel: &str,
    channels: &[&str],
    wake: tokio::sync::mpsc::Sender<String>,
) {
    let (auth, tls) = (sentinel_auth_of(r), sentinel_tls_of(r));
    loop {
        match ferry_resp::sentinel::Events::subscribe(sentinel, channels, &auth, tls.as_ref(), Duration::from_secs(5))
            .await
        {
            Ok(mut events) => {
                while let Ok((channel, message)) = events.next().await {
                    if ferry_resp::sentinel::event_names_master(&message, &r.master_name) {
                        // A full channel already holds a wake-up: nothing is lost by dropping this one.
                        let _ = wake.try_send(format!("{channel} {message}"));
                    }
                }
            }
            Err(e) => tracing::debug!(sentinel = %sentinel, error = %e, "cannot subscribe to sentinel events"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The pipelines a stage (decoder or writer) serves at once: each has its own statistics,
/// reported to the coordinator, and at most one running session — a new session of the
/// same pipeline (its reader reconnected) cancels the old one.
pub struct Sessions {
    role: &'static str,
    coordinator: String,
    tasks: tokio_util::task::TaskTracker,
    cancel: CancellationToken,
    inner: Mutex<std::collections::HashMap<String, (Arc<Stats>, CancellationToken)>>,
}

impl Sessions {
    pub fn new(
        role: &'static str,
        coordinator: String,
        tasks: tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Sessions { role, coordinator, tasks, cancel, inner: Mutex::new(std::collections::HashMap::new()) }
    }

    /// The statistics of every pipeline seen.
    pub fn all(&self) -> Vec<Arc<Stats>> {
        self.inner.lock().unwrap().values().map(|(s, _)| s.clone()).collect()
    }

    /// Starts a session of `pipeline_id`: its statistics and a cancellation token.
    pub fn begin(&self, pipeline_id: &str) -> (Arc<Stats>, CancellationToken) {
        let token = self.cancel.child_token();
        let mut inner = self.inner.lock().unwrap();
        match inner.get_mut(pipeline_id) {
            Some((stats, old)) => {
                old.cancel();
                *old = token.clone();
                (stats.clone(), token)
            }
            None => {
                let stats = Stats::new("idle");
                self.tasks.spawn(report_loop(
                    self.coordinator.clone(),
                    pipeline_id.to_string(),
                    self.role,
                    stats.clone(),
                    self.cancel.clone(),
                ));
                inner.insert(pipeline_id.to_string(), (stats.clone(), token.clone()));
                (stats, token)
            }
        }
    }
}

/// Paces work to at most `rate` units per second (0: no limit), smoothly.
pub struct RateLimiter {
    rate: u64,
    start: std::time::Instant,
    done: u64,
}

impl RateLimiter {
    pub fn new(rate: u64) -> Self {
        RateLimiter { rate, start: std::time::Instant::now(), done: 0 }
    }

    /// Waits until `n` more units fit in the rate.
    pub async fn acquire(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        self.done += n;
        let due = Duration::from_secs_f64(self.done as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
        // Forget history after a long pause, so an idle period does not allow a burst.
        if self.start.elapsed() > Duration::from_secs(10) && due + Duration::from_secs(1) < self.start.elapsed() {
            self.start = std::time::Instant::now();
            self.done = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_in_time_is_the_age_of_the_oldest_write_not_applied() {
        let s = Stats::new("incremental");
        assert_eq!(s.lag(), Duration::ZERO);
        s.received(100);
        std::thread::sleep(Duration::from_millis(30));
        s.received(200);
        s.applied(50);
        assert!(s.lag() >= Duration::from_millis(30), "{:?}", s.lag());
        s.applied(150);
        assert!(s.lag() < Duration::from_millis(30), "{:?}", s.lag());
        s.applied(200);
        assert_eq!(s.lag(), Duration::ZERO);
        assert_eq!(s.applied_offset.load(Relaxed), 200);
    }
}
