//! The coordinator: hands out assignments, collects the stages' reports, serves the
//! status API (`GET /status`, `GET /metrics`, `GET /healthz`).

pub mod fence;
pub mod lease;
pub mod role;

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
use ferry_proto::{AssignRequest, Assignment, PlanReply, ReportReply, RoleRequest, RoleState, StatusReport};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info, warn};

use crate::role::{Role, RoleRecord};
use ferry_runtime::Phase;
use ferry_runtime::grpc::authorize;
use ferry_runtime::prom::{Exposition, escape};

/// A report older than this means the stage is gone.
const STALE: Duration = Duration::from_secs(5);

/// How often a cluster source's topology is looked at again.
const TOPOLOGY_POLL: Duration = Duration::from_secs(2);

/// Logs how a new plan differs from the one before.
fn log_plan_changes(old: &[PipelinePlan], new: &[PipelinePlan], role: &str) {
    for p in new {
        match old.iter().find(|o| o.id == p.id) {
            None => {
                info!(pipeline = %p.id, source = %p.source, leader = %p.source_address, target = %p.target, role, "pipeline planned")
            }
            Some(o) if o.source_address != p.source_address => {
                info!(pipeline = %p.id, from = %o.source_address, to = %p.source_address, "pipeline follows its shard to a new master (failover)")
            }
            Some(_) => {}
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|p| p.id == o.id)) {
        info!(pipeline = %o.id, leader = %o.source_address, "pipeline ended: its master no longer serves slots");
    }
}

/// One pipeline: a source leader and where its stages listen.
#[derive(Clone, Debug, PartialEq)]
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
    /// A reverse pipeline of a role swap (configured target → configured source).
    pub reverse: bool,
}

/// Pipelines for the config: one for a standalone or sentinel-managed source, one per
/// master that serves slots for a cluster (named after the shard's first slot, so the name
/// survives a failover of the shard). `reverse`: from the configured target into the
/// configured source (a role swap's recovery); `epoch` goes into the ids (see [`role`]).
/// `old`: the current plan of the same role, whose pipelines keep their ids when the
/// cluster's topology changes (see [`cluster_plans`]).
pub async fn plan(cfg: &Config, epoch: u64, reverse: bool, old: &[PipelinePlan]) -> anyhow::Result<Vec<PipelinePlan>> {
    let reversed;
    let cfg = if reverse {
        reversed = cfg.reversed();
        &reversed
    } else {
        cfg
    };
    if cfg.target.kind == ferry_config::DeploymentType::File {
        anyhow::bail!("the source is a file: there is nothing to recover into");
    }
    let one = |base: String, source: String, source_address: String, slot: i32| PipelinePlan {
        id: role::pipeline_id(&base, epoch, reverse),
        source,
        source_address,
        slot,
        target: cfg.target.describe(),
        decoder: Some(&cfg.decoder.advertise).filter(|a| !a.is_empty()).unwrap_or(&cfg.decoder.listen).clone(),
        writer: Some(&cfg.writer.advertise).filter(|a| !a.is_empty()).unwrap_or(&cfg.writer.listen).clone(),
        reverse,
    };
    Ok(match cfg.source.kind {
        ferry_config::DeploymentType::Sentinel => {
            vec![one(format!("sentinel-{}", cfg.source.master_name), cfg.source.describe(), String::new(), -1)]
        }
        ferry_config::DeploymentType::Standalone => {
            vec![one(cfg.source.address.clone(), cfg.source.address.clone(), cfg.source.address.clone(), -1)]
        }
        ferry_config::DeploymentType::File => vec![one("file".into(), cfg.source.describe(), String::new(), -1)],
        ferry_config::DeploymentType::Cluster => {
            let map = ferry_redis::cluster_map(&cfg.source, &[]).await?;
            let new = |name, slot: u16, addr| one(name, format!("cluster shard of slot {slot}"), addr, slot as i32);
            // A coordinator that starts (or restarts) finds the pipelines it planned before
            // from their checkpoints on the target, so they keep their names.
            let found: Vec<PipelinePlan>;
            let old = if old.is_empty() {
                let names = names_from_checkpoints(cfg, &map, epoch, reverse).await.unwrap_or_else(|e| {
                    warn!(error = %format!("{e:#}"), "cannot read the pipelines' checkpoints on the target: pipelines are named after their masters' first slots");
                    Vec::new()
                });
                found = names
                    .into_iter()
                    .filter_map(|(base, addr)| {
                        let slot = map.a_slot_of(map.master_index(&addr)?)?;
                        info!(pipeline = %role::pipeline_id(&base, epoch, reverse), leader = %addr, "pipeline found from its checkpoint on the target");
                        Some(new(base, slot, addr))
                    })
                    .collect();
                &found[..]
            } else {
                old
            };
            cluster_plans(&map, old, new)
        }
    })
}

/// Reads ([`ferry_checkpoint::COUNTERS_KEY`]'s value, `None` when absent) or, with `write`, sets the counters
/// key on the master of deployment `side` that holds it, through `conn` (connected first when
/// empty; emptied after an error, so a moved master is found again next time).
async fn counters_io(
    side: &ferry_config::RedisConfig,
    conn: &mut Option<ferry_resp::Connection>,
    write: Option<&[u8]>,
) -> anyhow::Result<Option<bytes::Bytes>> {
    if conn.is_none() {
        *conn = Some(counters_conn(side).await?);
    }
    let c = conn.as_mut().expect("connected above");
    let result = match write {
        Some(body) => c.call(&[&b"SET"[..], ferry_checkpoint::COUNTERS_KEY.as_bytes(), body]).await.map(|_| None),
        None => c.call(&["GET", ferry_checkpoint::COUNTERS_KEY]).await.map(|r| r.as_bytes().cloned()),
    };
    if result.is_err() {
        *conn = None;
    }
    Ok(result?)
}

/// A connection to the master of `side` that holds [`ferry_checkpoint::COUNTERS_KEY`] (db 0).
async fn counters_conn(side: &ferry_config::RedisConfig) -> anyhow::Result<ferry_resp::Connection> {
    key_conn(side, ferry_checkpoint::COUNTERS_KEY).await
}

/// A connection to the node of `side` that serves `key` (db 0).
pub(crate) async fn key_conn(side: &ferry_config::RedisConfig, key: &str) -> anyhow::Result<ferry_resp::Connection> {
    let addr = match side.kind {
        ferry_config::DeploymentType::Cluster => {
            let map = ferry_redis::cluster_map(side, &[]).await?;
            let n = map
                .node_of(ferry_resp::cluster::key_slot(key.as_bytes()))
                .ok_or_else(|| anyhow::anyhow!("no master serves the slot of {key}"))?;
            map.masters[n].clone()
        }
        ferry_config::DeploymentType::File => anyhow::bail!("a file holds none of ferry's keys"),
        _ => ferry_redis::resolve(side).await?,
    };
    let mut c = ferry_redis::connect_node(side, &addr, Duration::from_secs(5)).await?;
    if side.kind != ferry_config::DeploymentType::Cluster {
        c.call(&["SELECT", "0"]).await?;
    }
    Ok(c)
}

/// The pipelines of a cluster source planned before, found from their checkpoints on the
/// target: `(base name, master)` for each master whose replication id (current, or previous
/// after a failover) a checkpoint of this epoch and direction holds, the most advanced
/// checkpoint winning. Without it, a restarted coordinator would name the pipelines after
/// the masters' first slots now, and a master whose first slot migrated away would start
/// over under a new name with a full copy.
async fn names_from_checkpoints(
    cfg: &Config,
    map: &ferry_resp::cluster::SlotMap,
    epoch: u64,
    reverse: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    // (base name, replication id, offset) of every checkpoint of this epoch and direction.
    let mut checkpoints: Vec<(String, String, i64)> = Vec::new();
    let nodes = match cfg.target.kind {
        ferry_config::DeploymentType::Cluster => ferry_redis::cluster_map(&cfg.target, &[]).await?.masters,
        _ => vec![ferry_redis::resolve(&cfg.target).await?],
    };
    for node in &nodes {
        let mut c = ferry_redis::connect_node(&cfg.target, node, TIMEOUT).await.with_context(|| node.clone())?;
        for key in ferry_redis::scan_keys(&mut c, ferry_checkpoint::SCAN_PATTERN).await? {
            let id = ferry_checkpoint::pipeline_of_key(&key);
            let Some(base) = id.and_then(|id| role::base_in_epoch(id, epoch, reverse)) else { continue };
            if !base.starts_with("shard-") {
                continue;
            }
            let Some(v) = c.call(&[&b"GET"[..], &key]).await?.as_bytes().cloned() else { continue };
            // A master without a previous history shows an all-zero `master_replid2`.
            if let Some(ckpt) = ferry_checkpoint::parse(&v).filter(|c| c.replid.bytes().any(|b| b != b'0')) {
                checkpoints.push((base.to_string(), ckpt.replid, ckpt.offset));
            }
        }
    }
    if checkpoints.is_empty() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(String, String)> = Vec::new();
    for master in &map.masters {
        let mut c = ferry_redis::connect_node(&cfg.source, master, TIMEOUT).await.with_context(|| master.clone())?;
        let info = c.call(&["INFO", "replication"]).await?;
        let field = |k: &str| ferry_resp::replication::info_field(&info, k).unwrap_or_default().to_string();
        let ids = [field("master_replid"), field("master_replid2")];
        let best = checkpoints
            .iter()
            .filter(|(base, replid, _)| ids.contains(replid) && !found.iter().any(|(f, _)| f == base))
            .max_by_key(|(_, _, offset)| *offset);
        if let Some((base, _, _)) = best {
            found.push((base.clone(), master.clone()));
        }
    }
    Ok(found)
}

/// One pipeline per master that serves slots. The pipelines of `old` keep their ids: each
/// follows its master while it serves slots (a slot migration), or whoever serves its slot
/// now (a failover); one whose master no longer serves any slot (all migrated away, or
/// removed) ends, and a master no pipeline follows (a new one) gets a new pipeline, named
/// after its first slot, which starts with a full copy.
pub fn cluster_plans(
    map: &ferry_resp::cluster::SlotMap,
    old: &[PipelinePlan],
    new: impl Fn(String, u16, String) -> PipelinePlan,
) -> Vec<PipelinePlan> {
    let mut taken = vec![false; map.masters.len()];
    let mut kept: Vec<(usize, PipelinePlan)> = Vec::new();
    // Pipelines whose master still serves slots first: a failed-over one must not take them.
    let mut order: Vec<(usize, &PipelinePlan)> = old.iter().enumerate().filter(|(_, p)| p.slot >= 0).collect();
    order.sort_by_key(|(_, p)| map.master_index(&p.source_address).is_none());
    for (i, p) in order {
        let Some((addr, slot)) = ferry_redis::shard_master(map, &p.source_address, p.slot as u16) else { continue };
        let Some(n) = map.master_index(&addr) else { continue };
        if !std::mem::replace(&mut taken[n], true) {
            kept.push((i, PipelinePlan { source_address: addr, slot: slot as i32, ..p.clone() }));
        }
    }
    kept.sort_by_key(|(i, _)| *i);
    let mut out: Vec<PipelinePlan> = kept.into_iter().map(|(_, p)| p).collect();
    let mut fresh: Vec<PipelinePlan> = Vec::new();
    for n in (0..taken.len()).filter(|&n| !taken[n]) {
        let Some(slot) = map.a_slot_of(n) else { continue };
        let mut p = new(format!("shard-{slot}"), slot, map.masters[n].clone());
        let mut k = 1;
        while out.iter().chain(&fresh).any(|o| o.id == p.id) {
            p = new(format!("shard-{slot}-{k}"), slot, map.masters[n].clone());
            k += 1;
        }
        fresh.push(p);
    }
    fresh.sort_by_key(|p| p.slot);
    out.extend(fresh);
    out
}

#[derive(Default)]
struct Reports {
    by_stage: BTreeMap<(String, String), (Instant, StatusReport)>,
    /// Counters of earlier instances of a stage (a restarted process starts from zero).
    base: BTreeMap<(String, String), Counters>,
    /// From the counters an earlier coordinator saved: the instance of each stage it last
    /// heard from and its counters then, for stages not heard from since (one that reports
    /// as another instance restarted meanwhile: those counters go into `base`).
    last_known: BTreeMap<(String, String), (String, Counters)>,
    /// The counters were read from the target (or there were none): saving may begin.
    restored: bool,
}

/// The key in the target (db 0) where the coordinator keeps the counters of its pipelines,
/// so that a restarted coordinator carries on counting: a JSON object
/// `{pipeline: {role: {"base": {..}, "instance": "..", "last": {..}}}}`.
/// How often the counters are saved (when they changed).
const COUNTERS_SAVE: Duration = Duration::from_secs(2);

/// The counters of one stage of one pipeline, as saved.
#[derive(Serialize, serde::Deserialize, Default, Clone, PartialEq, Debug)]
struct SavedStage {
    base: Counters,
    instance: String,
    last: Counters,
}

type SavedCounters = BTreeMap<String, BTreeMap<String, SavedStage>>;

/// Counters that add up across restarts of a stage.
#[derive(Default, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Debug)]
#[serde(default)]
struct Counters {
    full_syncs: u64,
    partial_resyncs: u64,
    keys_applied: u64,
    keys_skipped: u64,
    commands_applied: u64,
    entries_decoded: u64,
    modules_skipped: u64,
    stale_keys_removed: u64,
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
            stale_keys_removed: r.stale_keys_removed,
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
            stale_keys_removed: self.stale_keys_removed + o.stale_keys_removed,
        }
    }
}

/// Shared state of the coordinator.
pub struct CoordinatorState {
    /// The pipelines of the current role (none while fenced or switching back).
    plans: Mutex<Vec<PipelinePlan>>,
    /// The plans are those of the current role (false while the source is being discovered);
    /// a stage asking meanwhile waits on it.
    planned: tokio::sync::watch::Sender<bool>,
    plan_error: Mutex<Option<String>>,
    reports: Mutex<Reports>,
    role: Mutex<RoleRecord>,
    state_file: Option<std::path::PathBuf>,
    /// Wakes the planner after a role change.
    replan: tokio::sync::Notify,
    /// Wakes the counter saver (a stage restarted: its base changed).
    counters_changed: tokio::sync::Notify,
    /// Side A, for messages.
    source_desc: String,
    /// This coordinator holds the pair's lease (see [`lease`]): it plans and changes roles.
    active: std::sync::atomic::AtomicBool,
    /// Why it does not (another coordinator holds the lease, the target cannot be reached).
    standby: Mutex<Option<String>>,
    insecure_links: bool,
}

/// The `/status` document (field names and meaning are a contract: see DESIGN/README).
#[derive(Serialize, Debug, Clone)]
pub struct StatusDoc {
    pub role: &'static str,
    // Additions beyond the contract.
    /// Role swaps so far (pipeline ids carry it from the first swap on).
    pub epoch: u64,
    pub role_reason: String,
    pub role_since_ms: i64,
    /// Pipelines of an earlier role whose readers still report (they are stopping).
    pub draining: Vec<String>,
    /// Null when this coordinator acts on the pair; otherwise why it stands by (another
    /// coordinator holds the lease).
    pub standby: Option<String>,
    /// The links between ferry's processes are plaintext off loopback (`[grpc] insecure`).
    pub insecure_links: bool,
    pub pipelines: Vec<PipelineStatus>,
}

#[derive(Serialize, Debug, Clone)]
pub struct PipelineStatus {
    pub id: String,
    pub source: String,
    pub target: String,
    pub phase: Phase,
    pub source_offset: i64,
    pub applied_offset: i64,
    pub lag_bytes: i64,
    /// How long the oldest write the reader received but the target does not hold yet has
    /// waited (0 when caught up).
    pub lag_seconds: f64,
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
    /// Keys removed from the target after re-copies because the source no longer held them.
    pub stale_keys_removed: u64,
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
    /// The state, with the role read from `coordinator.state_file` (forward without one).
    pub fn new(cfg: &Config) -> anyhow::Result<Arc<Self>> {
        let state_file =
            Some(std::path::PathBuf::from(&cfg.coordinator.state_file)).filter(|p| !p.as_os_str().is_empty());
        let record = match &state_file {
            Some(p) => RoleRecord::load(p)?,
            None => RoleRecord::default(),
        };
        if record.role != Role::Forward || record.epoch > 0 {
            info!(role = record.role.as_str(), epoch = record.epoch, reason = %record.reason, "role restored from the state file");
        }
        Ok(Arc::new(CoordinatorState {
            plans: Mutex::new(Vec::new()),
            planned: tokio::sync::watch::Sender::new(false),
            plan_error: Mutex::new(None),
            reports: Mutex::new(Reports::default()),
            role: Mutex::new(record),
            state_file,
            replan: tokio::sync::Notify::new(),
            counters_changed: tokio::sync::Notify::new(),
            source_desc: cfg.source.describe(),
            active: std::sync::atomic::AtomicBool::new(false),
            standby: Mutex::new(Some("taking the lease".into())),
            insecure_links: cfg.grpc.insecure && !cfg.grpc.tls(),
        }))
    }

    /// The role, and what the watcher needs to decide the next one.
    pub fn role_state(&self) -> RoleState {
        let rec = self.role.lock().unwrap().clone();
        let doc = self.status();
        let caught_up = *self.planned.borrow()
            && !doc.pipelines.is_empty()
            && doc.pipelines.iter().all(|p| p.phase == Phase::Incremental && p.lag_bytes == 0);
        RoleState {
            role: rec.role.as_str().into(),
            epoch: rec.epoch,
            reason: rec.reason,
            since_ms: rec.since_ms,
            draining: doc.draining,
            caught_up,
            pipelines: doc.pipelines.len() as u32,
        }
    }

    /// Moves to role `to` (persisted first: a transition that cannot be persisted is refused).
    /// Moves the pair to `to`. `force` allows steps off the cycle and a switch back before
    /// the reverse copy caught up; neither lets side A be the source again while it was lost
    /// and not recovered in this epoch — only `overwrite_with_stale_source` does, loudly.
    pub fn set_role(
        &self,
        to: Role,
        reason: &str,
        force: bool,
        overwrite_with_stale_source: bool,
    ) -> anyhow::Result<RoleState> {
        let now = self.role_state();
        if now.role == to.as_str() {
            return Ok(now);
        }
        if !force {
            // Never two directions at once, and no switch back before the recovery is done.
            if matches!(to, Role::Recovering | Role::Forward) && !now.draining.is_empty() {
                anyhow::bail!("pipelines of the previous role are still stopping: {}", now.draining.join(", "));
            }
            if to == Role::Switchback && now.role == "recovering" && !now.caught_up {
                anyhow::bail!("the reverse pipelines have not caught up yet (see /status)");
            }
        }
        {
            let mut rec = self.role.lock().unwrap();
            if !force && !rec.role.allows(to) {
                anyhow::bail!(
                    "cannot go from {} to {}: the cycle is forward → fenced → recovering → switchback → forward (force overrides)",
                    rec.role.as_str(),
                    to.as_str()
                );
            }
            // The reverse copy caught up: A holds B's data, it may be the source again.
            if rec.role == Role::Recovering && now.caught_up {
                rec.recovered = true;
            }
            if rec.would_overwrite_with_stale_source(to) {
                if !overwrite_with_stale_source {
                    anyhow::bail!(
                        "refused: {} to {} would make side A ({}) the source again, but A was lost and has not been \
                         recovered in this epoch (no reverse pipeline caught up with B): its stale data would overwrite \
                         B. Recover first (ferry-watcher recover, then switchback once caught up); to accept losing B's \
                         writes, pass --overwrite-with-stale-source with a --reason",
                        rec.role.as_str(),
                        to.as_str(),
                        self.source_desc
                    );
                }
                error!(from = rec.role.as_str(), to = to.as_str(), reason = %reason, "the operator accepted overwriting the target with the stale source's data (--overwrite-with-stale-source)");
                rec.recovered = true;
            }
            let next = rec.next(to, reason);
            if let Some(p) = &self.state_file {
                next.save(p)?;
            }
            tracing::info_span!("role_change", from = rec.role.as_str(), to = to.as_str(), epoch = next.epoch, reason = %reason, force).in_scope(|| {
                warn!(from = rec.role.as_str(), to = to.as_str(), epoch = next.epoch, reason = %reason, force, "role changed");
            });
            *rec = next;
            // The pipelines of the old role stop as soon as their readers ask for the plan. A
            // role that runs none is planned at once (fencing waits for nothing); the others
            // once the planner has discovered their source.
            self.plans.lock().unwrap().clear();
            self.planned.send_replace(to.direction().is_none());
        }
        self.replan.notify_one();
        Ok(self.role_state())
    }

    fn find(&self, id: &str) -> Option<PipelinePlan> {
        let plans = self.plans.lock().unwrap();
        if id.is_empty() { plans.first().cloned() } else { plans.iter().find(|p| p.id == id).cloned() }
    }

    fn not_ready(&self) -> Status {
        let why = self.plan_error.lock().unwrap().clone().unwrap_or_else(|| "discovering the source".into());
        Status::unavailable(format!("no pipeline planned yet: {why}"))
    }

    /// Takes and renews the pair's lease until `cancel` ([`lease`]); without it (another
    /// coordinator holds it, or the target has not answered for a lease's time) this
    /// coordinator stands by: it plans nothing and refuses role changes.
    async fn lease_loop(self: Arc<Self>, cfg: Config, cancel: CancellationToken) {
        let me = ferry_runtime::instance_name();
        let mut held_at: Option<Instant> = None;
        let mut conn = None;
        loop {
            let standby = match lease::hold(&cfg.target, &me, &mut conn).await {
                Ok(None) => {
                    held_at = Some(Instant::now());
                    None
                }
                Ok(Some(holder)) => {
                    held_at = None;
                    Some(format!("another coordinator ({holder}) acts on this pair: standing by until its lease ends"))
                }
                // The target does not answer: the lease stays ours until it would have expired.
                Err(e) if held_at.is_some_and(|t| t.elapsed() < lease::TTL) => {
                    debug!(error = %format!("{e:#}"), "cannot renew the lease now");
                    None
                }
                Err(e) => Some(format!("cannot take the lease on {}: {e:#}", cfg.target.describe())),
            };
            let was = self.active.swap(standby.is_none(), std::sync::atomic::Ordering::SeqCst);
            match (&standby, was) {
                (None, false) => {
                    info!(instance = %me, "this coordinator holds the lease: acting on the pair");
                    self.replan.notify_one();
                }
                (Some(why), true) => {
                    warn!(reason = %why, "this coordinator lost the lease: standing by");
                    self.plans.lock().unwrap().clear();
                }
                (Some(why), false) if self.standby.lock().unwrap().as_deref() != Some(why) => {
                    info!(reason = %why, "standing by")
                }
                _ => {}
            }
            *self.standby.lock().unwrap() = standby;
            if !ferry_runtime::sleep_or_cancel(lease::RENEW, &cancel).await {
                if held_at.is_some() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), lease::release(&cfg.target, &me)).await;
                }
                return;
            }
        }
    }

    /// Plans the pipelines of the current role: discovers the topology of the side that is
    /// the source in that role (retrying until it succeeds), then waits for a role change;
    /// a cluster source's topology is looked at again every [`TOPOLOGY_POLL`], and the plan
    /// follows it (new masters, masters left without slots, failovers).
    async fn plan_loop(self: Arc<Self>, cfg: Config, cancel: CancellationToken) {
        let mut backoff = ferry_runtime::Backoff::new();
        let mut planned_for: Option<RoleRecord> = None;
        let mut fenced_for: Option<RoleRecord> = None;
        let mut fence_warned = false;
        loop {
            // A coordinator standing by plans nothing (another one acts on the pair).
            if !self.active.load(std::sync::atomic::Ordering::SeqCst) {
                self.plans.lock().unwrap().clear();
                planned_for = None;
                fenced_for = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.replan.notified() => {}
                    _ = cancel.cancelled() => return,
                }
                continue;
            }
            let rec = self.role.lock().unwrap().clone();
            // The sides hold the role's fences before any pipeline of it is planned. A side that
            // holds a later fence stops this coordinator; one that cannot be written now (down,
            // refusing writes) is fenced again and again until it can: the fence it holds
            // still keeps out every writer older than this role, and it refuses the writers'
            // writes just as well.
            if fenced_for.as_ref() != Some(&rec) {
                match fence::ensure(&cfg, &rec).await {
                    Ok(()) => {
                        fenced_for = Some(rec.clone());
                        fence_warned = false;
                    }
                    Err(e) if e.downcast_ref::<fence::LaterEpoch>().is_some() => {
                        let msg = format!("{e:#}");
                        warn!(error = %msg, "this coordinator's role is stale: planning nothing");
                        *self.plan_error.lock().unwrap() = Some(msg);
                        self.plans.lock().unwrap().clear();
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                            _ = self.replan.notified() => {}
                            _ = cancel.cancelled() => return,
                        }
                        continue;
                    }
                    Err(e) if !fence_warned => {
                        warn!(error = %format!("{e:#}"), "cannot put the role's fences on the sides yet, retrying");
                        fence_warned = true;
                    }
                    Err(e) => debug!(error = %format!("{e:#}"), "fencing failed again"),
                }
            }
            let same_role = planned_for.as_ref() == Some(&rec);
            let old = if same_role { self.plans.lock().unwrap().clone() } else { Vec::new() };
            let result = match rec.role.direction() {
                None => Ok(Vec::new()),
                Some(reverse) => plan(&cfg, rec.epoch, reverse, &old).await,
            };
            let source_kind = match rec.role.direction() {
                Some(true) => Some(cfg.target.kind),
                Some(false) => Some(cfg.source.kind),
                None => None,
            };
            let retry = match result {
                // Planned for a role that is still the current one: stored under the role's
                // lock (as `set_role` clears the plans under it), so a role change in between
                // can never be followed by the old role's plans.
                Ok(plans) => {
                    let role = self.role.lock().unwrap();
                    if *role != rec {
                        continue;
                    }
                    if !same_role || plans != old {
                        log_plan_changes(&old, &plans, rec.role.as_str());
                        *self.plans.lock().unwrap() = plans;
                    }
                    *self.plan_error.lock().unwrap() = None;
                    self.planned.send_replace(true);
                    drop(role);
                    planned_for = Some(rec.clone());
                    backoff = ferry_runtime::Backoff::new();
                    false
                }
                // A topology check failed (a node is down, a failover is under way): the
                // pipelines planned go on, the readers follow failovers by themselves.
                Err(e) if same_role => {
                    debug!(error = %format!("{e:#}"), "topology check failed; keeping the plan");
                    false
                }
                Err(e) => {
                    let side = if rec.role == Role::Recovering { &cfg.target } else { &cfg.source };
                    let msg = format!("cannot discover the source {}: {e:#}", side.describe());
                    warn!(error = %msg, "planning failed, retrying");
                    *self.plan_error.lock().unwrap() = Some(msg);
                    true
                }
            };
            let delay = if retry || fenced_for.as_ref() != Some(&rec) {
                backoff.next_delay()
            } else if source_kind == Some(ferry_config::DeploymentType::Cluster) {
                TOPOLOGY_POLL
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.replan.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// What to save of the counters of `plans`.
    fn saved_counters(&self, plans: &[PipelinePlan]) -> SavedCounters {
        let reports = self.reports.lock().unwrap();
        let mut out = SavedCounters::new();
        for p in plans {
            for role in ["reader", "decoder", "writer"] {
                let key = (p.id.clone(), role.to_string());
                let base = reports.base.get(&key).copied().unwrap_or_default();
                let (instance, last) = match (reports.by_stage.get(&key), reports.last_known.get(&key)) {
                    (Some((_, r)), _) => (r.instance.clone(), Counters::of(r)),
                    (None, Some((i, c))) => (i.clone(), *c),
                    (None, None) => (String::new(), Counters::default()),
                };
                out.entry(p.id.clone()).or_default().insert(role.to_string(), SavedStage { base, instance, last });
            }
        }
        out
    }

    /// Takes in the counters an earlier coordinator saved.
    fn restore_counters(&self, saved: SavedCounters) {
        let mut reports = self.reports.lock().unwrap();
        for (pipeline, roles) in saved {
            for (role, s) in roles {
                let key = (pipeline.clone(), role);
                let mut base = s.base;
                match reports.by_stage.get(&key) {
                    // Heard from already: the same instance's counters are in its reports; another
                    // instance means the one saved died meanwhile.
                    Some((_, r)) if r.instance != s.instance && !s.instance.is_empty() => base = base.add(s.last),
                    Some(_) => {}
                    None => {
                        reports.last_known.insert(key.clone(), (s.instance, s.last));
                    }
                }
                let b = reports.base.entry(key).or_default();
                *b = b.add(base);
            }
        }
        reports.restored = true;
    }

    /// The side the current role's pipelines write into (`None` when none runs).
    fn counters_side<'a>(&self, cfg: &'a Config) -> Option<&'a ferry_config::RedisConfig> {
        let reverse = self.role.lock().unwrap().role.direction()?;
        Some(if reverse { &cfg.source } else { &cfg.target })
    }

    /// Reads the counters an earlier coordinator saved in the target, once. False when the
    /// target could not be asked (try again later).
    async fn restore_counters_from(&self, cfg: &Config, conn: &mut Option<ferry_resp::Connection>) -> bool {
        let Some(side) = self.counters_side(cfg) else { return false };
        match counters_io(side, conn, None).await {
            Ok(Some(v)) => match serde_json::from_slice::<SavedCounters>(&v) {
                Ok(c) => {
                    info!(pipelines = c.len(), "counters restored from the target");
                    self.restore_counters(c);
                }
                Err(e) => {
                    warn!(key = ferry_checkpoint::COUNTERS_KEY, error = %e, "ignoring unreadable counters on the target");
                    self.restore_counters(SavedCounters::new());
                }
            },
            Ok(None) => self.restore_counters(SavedCounters::new()),
            Err(e) => {
                debug!(error = %format!("{e:#}"), "cannot read the counters on the target yet");
                return false;
            }
        }
        true
    }

    /// Keeps the pipelines' counters in the target ([`ferry_checkpoint::COUNTERS_KEY`]): reads them (if that
    /// was not done at start), then saves them every [`COUNTERS_SAVE`] when they changed, and
    /// at once when a stage restarted. A target that cannot be reached is tried again later
    /// (the counters are not data).
    async fn counters_loop(self: Arc<Self>, cfg: Config, cancel: CancellationToken) {
        let mut saved: Option<(bool, SavedCounters)> = None;
        // Kept between saves; a role change moves the counters to the other side.
        let mut conn: Option<ferry_resp::Connection> = None;
        let mut conn_reverse = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(COUNTERS_SAVE) => {}
                _ = self.counters_changed.notified() => {}
                _ = cancel.cancelled() => return,
            }
            let Some(reverse) = self.role.lock().unwrap().role.direction() else { continue };
            if conn_reverse != Some(reverse) {
                (conn, conn_reverse) = (None, Some(reverse));
            }
            if !self.reports.lock().unwrap().restored && !self.restore_counters_from(&cfg, &mut conn).await {
                continue;
            }
            if !*self.planned.borrow() {
                continue;
            }
            let plans = self.plans.lock().unwrap().clone();
            let now = self.saved_counters(&plans);
            if saved.as_ref().is_some_and(|(r, s)| *r == reverse && *s == now) {
                continue;
            }
            let Some(side) = self.counters_side(&cfg) else { continue };
            let body = serde_json::to_vec(&now).unwrap_or_default();
            match counters_io(side, &mut conn, Some(&body)).await {
                Ok(_) => saved = Some((reverse, now)),
                Err(e) => debug!(error = %format!("{e:#}"), "cannot save the counters on the target"),
            }
        }
    }

    /// The current status of every pipeline.
    pub fn status(&self) -> StatusDoc {
        let reports = self.reports.lock().unwrap();
        let now = Instant::now();
        // The role and its plans read together (`set_role` changes both under the role's
        // lock): a document never shows one role with the pipelines of another.
        let (rec, plans) = {
            let role = self.role.lock().unwrap();
            (role.clone(), self.plans.lock().unwrap().clone())
        };
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
                let reader_phase = reader.and_then(|r| Phase::parse(&r.phase)).unwrap_or(Phase::Connecting);
                let rdb_applied = writer.is_some_and(|w| w.rdb_applied);
                let phase = match reader_phase {
                    Phase::Failed => Phase::Failed,
                    Phase::Stopped => Phase::Stopped,
                    Phase::Connecting => Phase::Connecting,
                    // A one-shot copy (a file, a scan) that the target holds all of.
                    Phase::Done => Phase::Done,
                    _ if reader.is_some_and(|r| r.full_syncs + r.partial_resyncs > 0) && !rdb_applied => {
                        Phase::FullSync
                    }
                    Phase::FullSync => Phase::FullSync,
                    _ if decoder.is_none() || writer.is_none() => Phase::Connecting,
                    _ => Phase::Incremental,
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
                    lag_seconds: reader.map(|r| r.lag_ms as f64 / 1000.0).unwrap_or(0.0),
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
                    stale_keys_removed: wc.stale_keys_removed,
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
        let planned: std::collections::BTreeSet<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        let draining = reports
            .by_stage
            .iter()
            .filter(|((id, role), (t, r))| {
                role == "reader"
                    && !planned.contains(id.as_str())
                    && now.duration_since(*t) < STALE
                    && r.phase != Phase::Stopped.as_str()
            })
            .map(|((id, _), _)| id.clone())
            .collect();
        StatusDoc {
            role: rec.role.as_str(),
            epoch: rec.epoch,
            role_reason: rec.reason,
            role_since_ms: rec.since_ms,
            draining,
            standby: self.standby.lock().unwrap().clone(),
            insecure_links: self.insecure_links,
            pipelines,
        }
    }
}

/// The roles that run pipelines: they ask for their assignments and report.
const STAGES: &[&str] = &["reader", "decoder", "writer"];

/// How long a stage's request for its plan waits for a coordinator discovering the source
/// before it is answered "not ready" (and asks again).
const PLAN_WAIT: Duration = Duration::from_secs(1);
/// The roles that read and change the pair's role: the watcher and an operator's tools.
const OPERATORS: &[&str] = &["watcher", "admin"];

struct CoordinatorSvc {
    state: Arc<CoordinatorState>,
    cfg: Config,
}

#[tonic::async_trait]
impl Coordinator for CoordinatorSvc {
    async fn assign(&self, req: Request<AssignRequest>) -> Result<Response<Assignment>, Status> {
        authorize(&req, "Coordinator.Assign", STAGES)?;
        let req = req.into_inner();
        ferry_runtime::grpc::check_deployment(&req.deployment, &format!("{} {}", req.role, req.instance))?;
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
        authorize(&req, "Coordinator.Plan", STAGES)?;
        let req = req.into_inner();
        ferry_runtime::grpc::check_deployment(&req.deployment, &format!("{} {}", req.role, req.instance))?;
        // A coordinator that just started is discovering the source: the stages started with
        // it get their plan the moment it is made, rather than asking again and again.
        let mut planned = self.state.planned.subscribe();
        if tokio::time::timeout(PLAN_WAIT, planned.wait_for(|p| *p)).await.is_err() {
            return Err(self.state.not_ready());
        }
        let plans = self.state.plans.lock().unwrap().clone();
        let want = req.pipeline_id.as_str();
        let pipelines = plans
            .iter()
            .filter(|p| want.is_empty() || p.id == want || role::base_of(&p.id) == want)
            .map(|p| assignment(p, if req.role == "reader" { p.decoder.clone() } else { p.writer.clone() }))
            .collect();
        debug!(role = %req.role, instance = %req.instance, "plan requested");
        Ok(Response::new(PlanReply { pipelines }))
    }

    async fn get_role(&self, req: Request<RoleRequest>) -> Result<Response<RoleState>, Status> {
        authorize(&req, "Coordinator.GetRole", OPERATORS)?;
        Ok(Response::new(self.state.role_state()))
    }

    async fn set_role(&self, req: Request<RoleRequest>) -> Result<Response<RoleState>, Status> {
        authorize(&req, "Coordinator.SetRole", OPERATORS)?;
        let req = req.into_inner();
        let to = Role::parse(&req.role).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reason = if req.reason.is_empty() { "requested" } else { req.reason.as_str() };
        if let Some(why) = self.state.standby.lock().unwrap().clone() {
            return Err(Status::failed_precondition(format!("this coordinator does not act on the pair: {why}")));
        }
        let state = self
            .state
            .set_role(to, reason, req.force, req.overwrite_with_stale_source)
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        // The fences in place before the caller hears back (the planner retries them too).
        let rec = self.state.role.lock().unwrap().clone();
        match tokio::time::timeout(Duration::from_secs(10), fence::ensure(&self.cfg, &rec)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "the role changed, but its fences are not in place yet: retrying")
            }
            Err(_) => warn!("the role changed, but its fences are not in place after 10 s: retrying"),
        }
        Ok(Response::new(state))
    }

    async fn report(&self, req: Request<StatusReport>) -> Result<Response<ReportReply>, Status> {
        authorize(&req, "Coordinator.Report", STAGES)?;
        let r = req.into_inner();
        ferry_runtime::grpc::check_deployment(&r.deployment, &format!("{} {}", r.role, r.instance))?;
        let key = (r.pipeline_id.clone(), r.role.clone());
        let mut reports = self.state.reports.lock().unwrap();
        let restarted = match reports.by_stage.get(&key) {
            Some((_, old)) => (old.instance != r.instance).then(|| Counters::of(old)),
            // Known only from the counters an earlier coordinator saved.
            None => reports.last_known.remove(&key).filter(|(i, _)| *i != r.instance).map(|(_, c)| c),
        };
        if let Some(old) = restarted {
            info!(pipeline = %r.pipeline_id, role = %r.role, instance = %r.instance, "stage restarted");
            let base = reports.base.entry(key.clone()).or_default();
            *base = base.add(old);
            self.state.counters_changed.notify_one();
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
        reverse: p.reverse,
    }
}

/// Runs the coordinator until `cancel` fires.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = CoordinatorState::new(&cfg)?;
    let grpc_addr: std::net::SocketAddr = cfg
        .coordinator
        .grpc_addr
        .parse()
        .with_context(|| format!("coordinator.grpc_addr {:?}", cfg.coordinator.grpc_addr))?;
    let grpc_listener = ferry_runtime::grpc::listen(&grpc_addr.to_string(), "coordinator.grpc_addr").await?;
    let http_listener = ferry_runtime::grpc::listen(&cfg.coordinator.status_addr, "coordinator.status_addr").await?;
    // A target fenced at a later epoch than the state file says: this coordinator's role is
    // stale and it must not act (bounded: a target down now is checked again by the planner).
    let rec = state.role.lock().unwrap().clone();
    let ours = fence::fences_of(&rec).0;
    if let Ok(Ok(Some(f))) = tokio::time::timeout(Duration::from_secs(5), fence::read(&cfg.target)).await
        && f.supersedes(ours)
    {
        let later = fence::LaterEpoch { side: cfg.target.describe(), fence: f, ours };
        return Err(ferry_config::ConfigError::field("coordinator.state_file", later).into());
    }
    info!(status = %cfg.coordinator.status_addr, grpc = %grpc_addr, "coordinator listening");
    // The counters an earlier coordinator saved, before any status is served (bounded: a
    // target that does not answer now is asked again by the saver).
    let _ = tokio::time::timeout(Duration::from_secs(3), state.restore_counters_from(&cfg, &mut None)).await;
    let lease = tokio::spawn(state.clone().lease_loop(cfg.clone(), cancel.clone()));
    let planner = tokio::spawn(state.clone().plan_loop(cfg.clone(), cancel.clone()));
    let counters = tokio::spawn(state.clone().counters_loop(cfg.clone(), cancel.clone()));
    let app = axum::Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state.clone());
    let http = axum::serve(http_listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let grpc = ferry_runtime::grpc_server()?
        .add_service(CoordinatorServer::new(CoordinatorSvc { state, cfg: cfg.clone() }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            cancel.clone().cancelled_owned(),
        );
    let (h, g) = tokio::join!(http, grpc);
    let _ = lease.await;
    let _ = planner.await;
    let _ = counters.await;
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
    type Series = (&'static str, &'static str, &'static str, fn(&PipelineStatus) -> f64);
    let series: [Series; 12] = [
        ("ferry_lag_seconds", "gauge", "How long the oldest write not yet on the target has waited.", |p| {
            p.lag_seconds
        }),
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
        ("ferry_stale_keys_removed_total", "counter", "Target keys removed after re-copies.", |p| {
            p.stale_keys_removed as f64
        }),
        ("ferry_partial_resyncs_total", "counter", "Partial resynchronizations.", |p| p.partial_resyncs as f64),
        ("ferry_rdb_bytes_received", "gauge", "RDB bytes received in the current full copy.", |p| {
            p.rdb_bytes_received as f64
        }),
    ];
    let mut out = Exposition::new();
    let label = |p: &PipelineStatus| format!("pipeline=\"{}\"", escape(&p.id));
    for (name, kind, help, f) in series {
        out.family(name, kind, help);
        for p in &doc.pipelines {
            out.sample(name, &label(p), f(p));
        }
    }
    let name = "ferry_pipeline_phase";
    out.family(name, "gauge", "Current phase of each pipeline (1 for the current one).");
    for p in &doc.pipelines {
        for ph in Phase::PIPELINE {
            out.sample(name, &format!("{},phase=\"{ph}\"", label(p)), u8::from(p.phase == ph));
        }
    }
    out.family("ferry_role", "gauge", "The role of the pair (1 for the current one).");
    for role in [Role::Forward, Role::Fenced, Role::Recovering, Role::Switchback] {
        out.sample("ferry_role", &format!("role=\"{}\"", role.as_str()), u8::from(doc.role == role.as_str()));
    }
    ferry_runtime::prom::denied_calls(&mut out);
    out.family("ferry_errors_total", "counter", "Error replies and failures by kind.");
    for p in &doc.pipelines {
        for (k, v) in &p.errors_by_kind {
            out.sample("ferry_errors_total", &format!("{},kind=\"{}\"", label(p), escape(k)), v);
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_resp::Reply;

    /// A slot map from `(start, end, master)` ranges.
    fn map(ranges: &[(i64, i64, &str)]) -> ferry_resp::cluster::SlotMap {
        let r = ranges
            .iter()
            .map(|(s, e, m)| {
                let (h, p) = m.split_once(':').unwrap();
                Reply::Array(Some(vec![
                    Reply::Integer(*s),
                    Reply::Integer(*e),
                    Reply::Array(Some(vec![
                        Reply::Bulk(Some(h.as_bytes().to_vec().into())),
                        Reply::Integer(p.parse().unwrap()),
                    ])),
                ]))
            })
            .collect();
        ferry_resp::cluster::SlotMap::from_cluster_slots(&Reply::Array(Some(r))).unwrap()
    }

    fn new(name: String, slot: u16, addr: String) -> PipelinePlan {
        PipelinePlan {
            id: name,
            source: String::new(),
            source_address: addr,
            slot: slot as i32,
            target: String::new(),
            decoder: String::new(),
            writer: String::new(),
            reverse: false,
        }
    }

    fn ids(plans: &[PipelinePlan]) -> Vec<(String, String, i32)> {
        plans.iter().map(|p| (p.id.clone(), p.source_address.clone(), p.slot)).collect()
    }

    fn v(id: &str, addr: &str, slot: i32) -> (String, String, i32) {
        (id.to_string(), addr.to_string(), slot)
    }

    #[test]
    fn pipelines_follow_masters_through_migrations_failovers_and_new_masters() {
        let first = cluster_plans(&map(&[(0, 99, "h:1"), (100, 16383, "h:2")]), &[], new);
        assert_eq!(ids(&first), vec![v("shard-0", "h:1", 0), v("shard-100", "h:2", 100)]);
        // Slots 0-49 migrate to h:2, and a new master h:3 takes 16000-16383: shard-0 stays on
        // h:1 (its hint moves to a slot h:1 still serves), h:3 gets a pipeline of its own.
        let m = map(&[(0, 49, "h:2"), (50, 99, "h:1"), (100, 15999, "h:2"), (16000, 16383, "h:3")]);
        let second = cluster_plans(&m, &first, new);
        assert_eq!(
            ids(&second),
            vec![v("shard-0", "h:1", 50), v("shard-100", "h:2", 100), v("shard-16000", "h:3", 16000)]
        );
        // h:1 fails over to h:4 (h:1 is gone from the map): shard-0 follows the hint.
        let m = map(&[(0, 49, "h:2"), (50, 99, "h:4"), (100, 15999, "h:2"), (16000, 16383, "h:3")]);
        let third = cluster_plans(&m, &second, new);
        assert_eq!(
            ids(&third),
            vec![v("shard-0", "h:4", 50), v("shard-100", "h:2", 100), v("shard-16000", "h:3", 16000)]
        );
        // h:4 gives all its slots to h:2: its pipeline ends, h:2 keeps exactly one.
        let m = map(&[(0, 15999, "h:2"), (16000, 16383, "h:3")]);
        let fourth = cluster_plans(&m, &third, new);
        assert_eq!(ids(&fourth), vec![v("shard-100", "h:2", 100), v("shard-16000", "h:3", 16000)]);
        // A new master whose first slot names a pipeline that exists gets another name.
        let m = map(&[(0, 99, "h:5"), (100, 15999, "h:2"), (16000, 16383, "h:3")]);
        let old = vec![new("shard-0".into(), 100, "h:2".into()), new("shard-16000".into(), 16000, "h:3".into())];
        let fifth = cluster_plans(&m, &old, new);
        assert_eq!(
            ids(&fifth),
            vec![v("shard-0", "h:2", 100), v("shard-16000", "h:3", 16000), v("shard-0-1", "h:5", 0)]
        );
    }
}
