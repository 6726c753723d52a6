//! Fencing where the data lands: each side holds which writers may write into it — the
//! role's direction and epoch ([`ferry_checkpoint::Fence`]) — and every writer session checks
//! it on the connection it writes through. Every ferry writer connection the fence does not
//! admit (its name carries its pipeline, whose id carries the epoch and direction) is closed,
//! so a session that checked an older fence cannot write one more batch. Whatever a
//! partitioned reader or writer believes, the side decides.
//!
//! | role (epoch E) | target (B) | source (A) |
//! |---|---|---|
//! | forward | forward E | — |
//! | fenced | none E | none E (when ferry ever wrote into A) |
//! | recovering | none E | reverse E |
//! | switchback | none E | none E |

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use ferry_checkpoint::{Fence, fence_key, fence_slot_key, fence_value, parse_fence};
use ferry_config::{Config, DeploymentType, RedisConfig};
use ferry_resp::{Connection, encode_command_into};
use tracing::{info, warn};

use crate::role::{Role, RoleRecord};

/// A side holds a fence set after this coordinator's role (a later epoch, or the fencing of
/// its epoch): its role state is stale (a `state_file` lost or restored from an old copy), and
/// it must not act.
#[derive(Debug)]
pub struct LaterEpoch {
    pub side: String,
    pub fence: Fence,
    pub ours: Fence,
}

impl std::fmt::Display for LaterEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} holds the fence \"{}\", set after this coordinator's role (\"{}\"): its role state is stale \
             (coordinator.state_file missing or older than the last role change); restore the state file",
            self.side,
            fence_value(self.fence),
            fence_value(self.ours),
        )
    }
}

impl std::error::Error for LaterEpoch {}

/// The fences a role puts on the target and (`Some`) on the source.
pub fn fences_of(rec: &RoleRecord) -> (Fence, Option<Fence>) {
    let none = Fence { writer: None, epoch: rec.epoch };
    match rec.role {
        Role::Forward => (Fence { writer: Some(false), epoch: rec.epoch }, None),
        // Before the first recovery ferry never wrote into A: nothing to fence there.
        Role::Fenced => (none, (rec.epoch > 0).then_some(none)),
        Role::Recovering => (none, Some(Fence { writer: Some(true), epoch: rec.epoch })),
        Role::Switchback => (none, Some(none)),
    }
}

/// One fencing at a time in this process: a caller returns only once the fence is in place
/// and the writers it does not admit are gone, even when another caller wrote it first.
static FENCING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Puts the fences of `rec` on both sides: the target's must hold (an error otherwise), the
/// source's is best effort unless the role writes into it (recovering).
pub async fn ensure(cfg: &Config, rec: &RoleRecord) -> anyhow::Result<()> {
    let _one_at_a_time = FENCING.lock().await;
    let (target, source) = fences_of(rec);
    ensure_side(&cfg.target, target).await.with_context(|| format!("fencing {}", cfg.target.describe()))?;
    if let Some(f) = source {
        let res = ensure_side(&cfg.source, f).await.with_context(|| format!("fencing {}", cfg.source.describe()));
        match res {
            Err(e) if rec.role == Role::Recovering || e.downcast_ref::<LaterEpoch>().is_some() => return Err(e),
            // A is lost (fenced): it is fenced again as soon as it is back, when the role moves.
            Err(e) => warn!(error = %format!("{e:#}"), "cannot fence the source now"),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// Reads the fence of `side` (the latest over a cluster's masters), `None` when it has none.
pub async fn read(side: &RedisConfig) -> anyhow::Result<Option<Fence>> {
    let mut latest: Option<Fence> = None;
    for (mut c, key) in fence_nodes(side).await? {
        let v = c.call(&["GET", &key]).await?;
        if let Some(f) = v.as_bytes().and_then(|v| parse_fence(v))
            && latest.is_none_or(|l| f.supersedes(l))
        {
            latest = Some(f);
        }
    }
    Ok(latest)
}

/// Each data node of `side` with the fence key it checks (a cluster: one slot of each
/// master; the keys of its other slots are written alongside).
async fn fence_nodes(side: &RedisConfig) -> anyhow::Result<Vec<(Connection, String)>> {
    match side.kind {
        DeploymentType::File => bail!("a file has no fence"),
        DeploymentType::Cluster => {
            let map = ferry_redis::cluster_map(side, &[]).await?;
            let mut out = Vec::new();
            for (n, m) in map.masters.iter().enumerate() {
                let c = ferry_redis::connect_node(side, m, Duration::from_secs(5)).await?;
                let slot = map.a_slot_of(n).ok_or_else(|| anyhow!("{m} serves no slot"))?;
                out.push((c, fence_slot_key(&ferry_resp::cluster::slot_tags()[slot as usize])));
            }
            Ok(out)
        }
        _ => {
            let (_, c) = ferry_redis::connect(side).await?;
            Ok(vec![(c, fence_key())])
        }
    }
}

/// Writes `fence` into `side` unless it holds it already ([`LaterEpoch`] when it holds a
/// later one), then closes every ferry writer connection there the fence does not admit.
async fn ensure_side(side: &RedisConfig, fence: Fence) -> anyhow::Result<()> {
    if let Some(held) = read(side).await?
        && held.supersedes(fence)
    {
        return Err(LaterEpoch { side: side.describe(), fence: held, ours: fence }.into());
    }
    let value = fence_value(fence);
    info!(side = %side.describe(), fence = %value, "fencing");
    match side.kind {
        DeploymentType::Cluster => {
            let map = ferry_redis::cluster_map(side, &[]).await?;
            let tags = ferry_resp::cluster::slot_tags();
            for (n, m) in map.masters.iter().enumerate() {
                let mut c = ferry_redis::connect_node(side, m, Duration::from_secs(5)).await?;
                let slots: Vec<u16> = (0..tags.len() as u16).filter(|s| map.node_of(*s) == Some(n)).collect();
                let first = fence_slot_key(&tags[slots.first().copied().unwrap_or(0) as usize]);
                if c.call(&["GET", &first]).await?.as_bytes().is_none_or(|v| v[..] != *value.as_bytes()) {
                    // Every slot's key, pipelined.
                    let mut blob = BytesMut::new();
                    for s in &slots {
                        let key = fence_slot_key(&tags[*s as usize]);
                        encode_command_into(&mut blob, &[b"SET", key.as_bytes(), value.as_bytes()]);
                    }
                    c.send_raw(&blob).await?;
                    for _ in &slots {
                        if let Some(e) = c.read_reply().await?.first_error() {
                            bail!("{m} refused the fence: {}", String::from_utf8_lossy(e));
                        }
                    }
                }
                close_writers(&mut c, m, fence).await?;
            }
        }
        _ => {
            let (addr, mut c) = ferry_redis::connect(side).await?;
            if c.call(&["GET", &fence_key()]).await?.as_bytes().is_none_or(|v| v[..] != *value.as_bytes()) {
                c.call(&["SET", &fence_key(), &value]).await?;
            }
            close_writers(&mut c, &addr, fence).await?;
        }
    }
    Ok(())
}

/// Closes the writer connections of `c`'s node that `fence` does not admit (their names
/// carry their pipeline ids, the ids their epoch and direction).
async fn close_writers(c: &mut Connection, node: &str, fence: Fence) -> anyhow::Result<()> {
    let n = ferry_redis::kill_clients(c, |name| {
        name.strip_prefix(ferry_redis::WRITER_CLIENT_PREFIX).is_some_and(|id| {
            let (epoch, reverse) = ferry_runtime::model::epoch_of(id);
            !fence.admits(epoch, reverse)
        })
    })
    .await
    .with_context(|| format!("{node}: closing ferry's writer connections (CLIENT LIST/KILL)"))?;
    if n > 0 {
        info!(node = %node, fence = %fence_value(fence), writer_connections_closed = n, "writers the fence does not admit closed");
    }
    Ok(())
}
