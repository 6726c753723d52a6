//! The watcher: health-checks the configured source (side A of seed 000) and moves the
//! coordinator's role through the swap cycle (see [`crate::role`]):
//!
//! - forward, A unhealthy for `lost_after_secs` → fenced (the forward pipelines stop at once);
//! - fenced, A healthy again for `back_after_secs` and nothing still draining → recovering
//!   (the reverse pipelines copy B back into A while B keeps serving);
//! - recovering, every reverse pipeline at lag 0 for `caught_up_secs` → switchback when
//!   `auto_switchback` (otherwise an operator runs `ferry-watcher switchback` after moving
//!   the writers back to A);
//! - switchback, the reverse pipelines stopped → forward (a new epoch: A → B starts with a
//!   full copy).
//!
//! "Healthy": every master reachable and answering `PING` (a sentinel-managed side: the
//! master the sentinels name; a cluster: every master of the slot map, and
//! `cluster_state:ok`). Sentinel events about the master (`+sdown`, `+odown`,
//! `+switch-master`, ...) wake the loop at once; otherwise it checks every
//! `check_interval_ms`. The role lives in the coordinator, which persists it: a restarted
//! watcher carries on from whatever role the coordinator reports.

pub mod promote;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_config::{Config, DeploymentType, RedisConfig};
use ferry_proto::coordinator_client::CoordinatorClient;
use ferry_proto::{RoleRequest, RoleState};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use ferry_runtime::Role;

/// Sentinel events that make the watcher check at once.
const HEALTH_EVENTS: [&str; 5] = ["+sdown", "-sdown", "+odown", "-odown", "+switch-master"];

/// The coordinator's role state.
pub async fn get_role(coordinator: &str) -> anyhow::Result<RoleState> {
    let mut c = CoordinatorClient::new(
        ferry_runtime::grpc_channel(coordinator)
            .await
            .with_context(|| format!("cannot reach the coordinator at {coordinator}"))?,
    );
    Ok(c.get_role(RoleRequest::default()).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner())
}

/// Asks the coordinator to move to `role`.
pub async fn set_role(coordinator: &str, role: Role, reason: &str, force: bool) -> anyhow::Result<RoleState> {
    set_role_with(coordinator, role, reason, force, false).await
}

/// [`set_role`], also making side A the source again although it was lost and not
/// recovered (`overwrite_with_stale_source`: its stale data overwrites the target).
pub async fn set_role_with(
    coordinator: &str,
    role: Role,
    reason: &str,
    force: bool,
    overwrite_with_stale_source: bool,
) -> anyhow::Result<RoleState> {
    let mut c = CoordinatorClient::new(
        ferry_runtime::grpc_channel(coordinator)
            .await
            .with_context(|| format!("cannot reach the coordinator at {coordinator}"))?,
    );
    let req = RoleRequest { role: role.as_str().into(), reason: reason.into(), force, overwrite_with_stale_source };
    Ok(c.set_role(req).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner())
}

/// Whether every master of `side` answers (one line saying what is wrong when not).
pub async fn check_side(side: &RedisConfig) -> Result<(), String> {
    let timeout = Duration::from_secs(2);
    let masters = match side.kind {
        DeploymentType::Standalone => vec![side.address.clone()],
        DeploymentType::Sentinel => vec![ferry_redis::resolve(side).await.map_err(|e| format!("{e:#}"))?],
        DeploymentType::Cluster => ferry_redis::cluster_map(side, &[]).await.map_err(|e| format!("{e:#}"))?.masters,
        DeploymentType::File => return Err("a file source has no server to watch".into()),
    };
    for m in masters {
        let mut c = ferry_redis::connect_node(side, &m, timeout).await.map_err(|e| format!("{e:#}"))?;
        let pong = c.call_timeout(&["PING"], timeout).await.map_err(|e| format!("{m}: {e}"))?;
        if let Some(e) = pong.first_error() {
            return Err(format!("{m}: PING: {}", ferry_resp::conn::printable(e)));
        }
        if side.kind == DeploymentType::Cluster {
            let info = c.call_timeout(&["CLUSTER", "INFO"], timeout).await.map_err(|e| format!("{m}: {e}"))?;
            let text = info.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            if !text.contains("cluster_state:ok") {
                return Err(format!("{m}: cluster_state is not ok"));
            }
        }
    }
    Ok(())
}

/// How long a condition has held.
#[derive(Default)]
struct Since(Option<Instant>);

impl Since {
    /// Records whether the condition holds now; returns for how long it has.
    fn update(&mut self, holds: bool) -> Duration {
        if !holds {
            self.0 = None;
            return Duration::ZERO;
        }
        self.0.get_or_insert_with(Instant::now).elapsed()
    }
}

/// Runs the watcher loop until `cancel` fires.
pub async fn run(cfg: Config, coordinator: String, cancel: CancellationToken) -> anyhow::Result<()> {
    if cfg.coordinator.state_file.is_empty() {
        bail!("coordinator.state_file is not set: role swaps must survive a restart of the coordinator");
    }
    if cfg.source.kind == DeploymentType::File {
        bail!("source.type is \"file\": there is no source server to watch or to recover into");
    }
    let w = cfg.watcher.clone();
    info!(source = %cfg.source.describe(), target = %cfg.target.describe(), lost_after_secs = w.lost_after_secs, back_after_secs = w.back_after_secs, auto_switchback = w.auto_switchback, "watcher started");
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<String>(8);
    let mut subscribers = tokio::task::JoinSet::new();
    for side in [&cfg.source, &cfg.target] {
        if side.kind != DeploymentType::Sentinel {
            continue;
        }
        for s in side.sentinels.clone() {
            let (r, wake_tx) = (side.clone(), wake_tx.clone());
            subscribers.spawn(async move { ferry_redis::watch_sentinel(&r, &s, &HEALTH_EVENTS, wake_tx).await });
        }
    }
    let (mut unhealthy, mut healthy, mut caught_up) = (Since::default(), Since::default(), Since::default());
    let mut last_problem = String::new();
    let mut last_role = String::new();
    let interval = Duration::from_millis(w.check_interval_ms.max(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            Some(event) = wake_rx.recv() => info!(event = %event, "sentinel event: checking the source"),
            _ = cancel.cancelled() => break,
        }
        let state = match get_role(&coordinator).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read the role from the coordinator");
                continue;
            }
        };
        if state.role != last_role {
            info!(role = %state.role, epoch = state.epoch, reason = %state.reason, "role");
            last_role = state.role.clone();
        }
        let health = check_side(&cfg.source).await;
        match &health {
            Err(p) if *p != last_problem => {
                warn!(source = %cfg.source.describe(), problem = %p, "the source is unhealthy");
                last_problem = p.clone();
            }
            Ok(()) if !last_problem.is_empty() => {
                info!(source = %cfg.source.describe(), "the source is healthy");
                last_problem.clear();
            }
            _ => {}
        }
        let down_for = unhealthy.update(health.is_err());
        let up_for = healthy.update(health.is_ok());
        let caught_up_for = caught_up.update(state.caught_up);
        let role = Role::parse(&state.role)?;
        let next = match role {
            Role::Forward if down_for >= Duration::from_secs(w.lost_after_secs) => {
                Some((Role::Fenced, format!("source lost for {}s: {}", down_for.as_secs(), last_problem)))
            }
            Role::Fenced if up_for >= Duration::from_secs(w.back_after_secs) && state.draining.is_empty() => {
                Some((Role::Recovering, format!("source healthy again for {}s", up_for.as_secs())))
            }
            Role::Recovering if w.auto_switchback && caught_up_for >= Duration::from_secs(w.caught_up_secs) => {
                Some((Role::Switchback, format!("reverse pipelines caught up for {}s", caught_up_for.as_secs())))
            }
            Role::Switchback if state.draining.is_empty() => {
                Some((Role::Forward, "reverse pipelines stopped".to_string()))
            }
            _ => None,
        };
        if let Some((to, reason)) = next {
            match set_role(&coordinator, to, &reason, false).await {
                Ok(s) => {
                    info!(role = %s.role, epoch = s.epoch, reason = %reason, "role swap");
                    if role == Role::Switchback && to == Role::Forward {
                        after_switchback(&cfg).await;
                    }
                }
                Err(e) => warn!(to = to.as_str(), error = %format!("{e:#}"), "role swap refused"),
            }
            // Conditions are measured afresh in the new role.
            (unhealthy, healthy, caught_up) = (Since::default(), Since::default(), Since::default());
        }
    }
    subscribers.abort_all();
    while subscribers.join_next().await.is_some() {}
    Ok(())
}

/// Once the reverse pipelines are gone: the sentinels of the side they read (the
/// configured target) forget ferry's reader. Failures are logged, never fatal.
pub async fn after_switchback(cfg: &Config) {
    match forget_ferry_replicas(&cfg.target).await {
        Ok(0) => {}
        Ok(n) => info!(sentinels = n, "the sentinels forgot the reverse pipelines' readers"),
        Err(e) => warn!(error = %format!("{e:#}"), "could not clean the sentinels' replica lists"),
    }
}

/// After `switchback`: forward again once the reverse pipelines have stopped (a running
/// watcher does the same; whichever comes first, the other is a no-op). Gives up after 60 s.
pub async fn finish_switchback(cfg: &Config, coordinator: &str) -> anyhow::Result<RoleState> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = get_role(coordinator).await?;
        if s.role != Role::Switchback.as_str() {
            return Ok(s);
        }
        if s.draining.is_empty() {
            let s = set_role(coordinator, Role::Forward, "reverse pipelines stopped", false).await?;
            after_switchback(cfg).await;
            return Ok(s);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the reverse pipelines did not stop within 60s: {}", s.draining.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line describing a role state (`ferry-watcher status`).
pub fn describe(s: &RoleState) -> String {
    let mut line = format!(
        "role {} (epoch {}, since {}): {}; {} pipeline(s){}",
        s.role,
        s.epoch,
        s.since_ms,
        s.reason,
        s.pipelines,
        if s.caught_up { ", caught up" } else { "" }
    );
    if !s.draining.is_empty() {
        line.push_str(&format!("; stopping: {}", s.draining.join(", ")));
    }
    line
}

/// Sentinel remembers every replica it ever saw in its master's `INFO`, ferry's readers
/// included: a reader announces no port, so it shows as `<ip>:0`, down for good once it
/// disconnects (never a failover candidate, but an `+sdown` alert that never clears). After
/// the reverse pipelines of a swap stopped reading side `r`, each sentinel that lists such a
/// replica gets `SENTINEL RESET` (one at a time, each rediscovering its replicas and peers
/// before the next). Returns how many sentinels were reset.
pub async fn forget_ferry_replicas(r: &RedisConfig) -> anyhow::Result<usize> {
    if r.kind != DeploymentType::Sentinel {
        return Ok(0);
    }
    let (auth, tls) = (ferry_redis::sentinel_auth_of(r), ferry_redis::sentinel_tls_of(r));
    let timeout = Duration::from_secs(3);
    let replicas = |reply: ferry_resp::Reply| -> Vec<(String, String)> {
        let ferry_resp::Reply::Array(Some(items)) = reply else { return Vec::new() };
        items
            .into_iter()
            .filter_map(|i| match i {
                ferry_resp::Reply::Array(Some(kv)) => Some(kv),
                _ => None,
            })
            .map(|kv| (crate::promote::kv_field(&kv, "port"), crate::promote::kv_field(&kv, "flags")))
            .collect()
    };
    // First the master must have let go of the readers, or the sentinels would find them
    // again in its INFO right after the reset.
    if let Ok(master) = ferry_redis::resolve(r).await
        && let Ok(mut m) = ferry_redis::connect_node(r, &master, timeout).await
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let info = m.call(&["INFO", "replication"]).await?;
            let text = info.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with("slave") && l.contains(",port=0,")) {
                break;
            }
            if std::time::Instant::now() > deadline {
                warn!(master = %master, "a replica without a port is still attached to the master");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut reset = 0;
    for s in &r.sentinels {
        let mut c = ferry_resp::Connection::connect_with(s, &auth, tls.as_ref(), timeout).await?;
        let before = replicas(c.call(&["SENTINEL", "REPLICAS", &r.master_name]).await?);
        // Port 0: announced no port, which Redis replicas always do and ferry's readers never.
        let phantoms = before.iter().filter(|(port, _)| port == "0").count();
        if phantoms == 0 {
            continue;
        }
        let real = before.len() - phantoms;
        warn!(sentinel = %s, master = %r.master_name, phantoms, "SENTINEL RESET: forgetting the replicas ferry's readers left behind");
        c.call(&["SENTINEL", "RESET", &r.master_name]).await?;
        reset += 1;
        // Wait until it knows the real replicas again (its INFO refresh runs every 10 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = replicas(c.call(&["SENTINEL", "REPLICAS", &r.master_name]).await?);
            let known = now.iter().filter(|(port, _)| port != "0").count();
            if known >= real {
                break;
            }
            if std::time::Instant::now() > deadline {
                warn!(sentinel = %s, known, real, "the sentinel has not rediscovered every replica yet");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(reset)
}
