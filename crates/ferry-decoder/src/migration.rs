//! Keys that move between the masters of a cluster source while ferry copies it.
//!
//! `MIGRATE` (what `redis-cli --cluster reshard` and `rebalance` run) copies a key to the
//! importing master, which replicates a `RESTORE-ASKING`; the exporting master then
//! replicates a plain `DEL` of the key. Each master has its own pipeline, applied on the
//! target independently of the others, so the `DEL` could land after the `RESTORE` (the key
//! lost) and the `RESTORE` before the exporting master's last writes to the key (those
//! applied twice). Two rules keep them in order:
//!
//! - a `DEL` of a key whose slot this master does not serve stably (it is migrating it away,
//!   or another master serves it now) is dropped when the key exists on the master that
//!   imports or serves it: that master's pipeline carries the key from then on;
//! - a `RESTORE-ASKING` waits until the other pipelines of this decoder have applied what
//!   their masters had replicated when it was seen (at most [`BARRIER_TIMEOUT`], then it
//!   goes on with a warning), and is applied as `RESTORE ... REPLACE`.
//!
//! The same holds for the full copy of a master that joins the cluster: it waits for the
//! other pipelines the same way before its first key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_resp::Connection;
use ferry_resp::cluster::{SlotMap, key_slot, migrating_slots};
use tracing::{debug, info, warn};

use ferry_runtime::{Phase, Stats};

/// The longest a `RESTORE-ASKING` waits for the other pipelines.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a view of the slots is trusted when every key of a `DEL` is served stably.
const VIEW_TTL: Duration = Duration::from_secs(1);

/// What to do with command `i` of a frame instead of forwarding it as it is.
pub type Edits = Vec<(usize, Option<Bytes>)>;

/// The slot view of one master of a cluster source, and connections to its peers.
pub struct MigrationGuard {
    source: ferry_config::RedisConfig,
    /// The master this pipeline replicates.
    own: String,
    view: Option<(Instant, View)>,
    conns: HashMap<String, Connection>,
}

struct View {
    map: SlotMap,
    /// Slots `own` is migrating away, with the importing master.
    migrating: HashMap<u16, String>,
}

impl View {
    /// Where `slot` goes when `own` does not serve it stably; `None` when it does.
    fn elsewhere(&self, own: &str, slot: u16) -> Option<String> {
        if let Some(to) = self.migrating.get(&slot) {
            return Some(to.clone());
        }
        let owner = &self.map.masters[self.map.node_of(slot)?];
        (owner != own).then(|| owner.clone())
    }
}

/// Whether a frame has commands the guard looks at (cheap: names only).
pub fn concerns(data: &Bytes, lens: &[u32]) -> bool {
    let mut pos = 0usize;
    lens.iter().any(|&len| {
        let cmd = data.get(pos..pos + len as usize).unwrap_or_default();
        pos += len as usize;
        ferry_resp::command_name(cmd).is_some_and(|n| n.eq_ignore_ascii_case(b"DEL") || is_restore_asking(n))
    })
}

fn is_restore_asking(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"RESTORE-ASKING")
}

/// `RESTORE-ASKING key ttl payload [options]` as `RESTORE key ttl payload [options] REPLACE`.
pub fn restore_replace(args: &[Bytes]) -> Bytes {
    let mut out: Vec<&[u8]> = vec![b"RESTORE"];
    out.extend(args.iter().skip(1).map(|a| a.as_ref()));
    if !args.iter().skip(4).any(|a| a.eq_ignore_ascii_case(b"REPLACE")) {
        out.push(b"REPLACE");
    }
    ferry_resp::encode_command(&out)
}

impl MigrationGuard {
    pub fn new(source: ferry_config::RedisConfig, own: String) -> Self {
        MigrationGuard { source, own, view: None, conns: HashMap::new() }
    }

    /// The edits of one frame of commands: `RESTORE-ASKING`s rewritten (after the barrier),
    /// `DEL`s of keys that moved to another master trimmed or dropped.
    pub async fn edits(&mut self, data: &Bytes, lens: &[u32], peers: &[Arc<Stats>], me: &Arc<Stats>) -> Edits {
        let mut edits = Edits::new();
        let mut pos = 0usize;
        let mut barrier_done = false;
        for (i, &len) in lens.iter().enumerate() {
            let whole = data.slice(pos..pos + len as usize);
            pos += len as usize;
            let Some(name) = ferry_resp::command_name(&whole) else { continue };
            let (del, restore) = (name.eq_ignore_ascii_case(b"DEL"), is_restore_asking(name));
            if !del && !restore {
                continue;
            }
            let Ok(args) = ferry_resp::parse_command(&whole) else { continue };
            if restore {
                if !barrier_done {
                    self.barrier(peers, me, "a key migrated into this master").await;
                    barrier_done = true;
                }
                edits.push((i, Some(restore_replace(&args))));
                continue;
            }
            let mut keep: Vec<&[u8]> = vec![b"DEL"];
            for key in &args[1..] {
                if self.moved_away(key).await {
                    debug!(master = %self.own, key = %String::from_utf8_lossy(key), "DEL of a migrated key skipped: the importing master's pipeline carries it");
                } else {
                    keep.push(key);
                }
            }
            if keep.len() < args.len() {
                edits.push((i, (keep.len() > 1).then(|| ferry_resp::encode_command(&keep))));
            }
        }
        edits
    }

    /// Whether the `DEL` of `key` is the second half of a migration: its slot is not served
    /// stably by this master and the key exists where the slot goes.
    async fn moved_away(&mut self, key: &[u8]) -> bool {
        let slot = key_slot(key);
        let fresh = self.view.as_ref().is_some_and(|(at, _)| at.elapsed() < VIEW_TTL);
        let stable = |v: &View| v.elsewhere(&self.own, slot).is_none();
        if !fresh || !self.view.as_ref().is_some_and(|(_, v)| stable(v)) {
            // A migration starts and ends at any moment: look again before deciding.
            if let Err(e) = self.refresh().await {
                warn!(master = %self.own, error = %format!("{e:#}"), "cannot read the source's slots; applying DEL as it is");
                return false;
            }
        }
        let Some((_, view)) = &self.view else { return false };
        let Some(to) = view.elsewhere(&self.own, slot) else { return false };
        match self.exists(&to, key).await {
            Ok(exists) => exists,
            Err(e) => {
                warn!(master = %to, error = %format!("{e:#}"), "cannot ask where a key went; applying DEL as it is");
                false
            }
        }
    }

    async fn refresh(&mut self) -> anyhow::Result<()> {
        let map = ferry_redis::cluster_map(&self.source, std::slice::from_ref(&self.own)).await?;
        let nodes = match self.conn(&self.own.clone()).await?.call(&["CLUSTER", "NODES"]).await? {
            ferry_resp::Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => anyhow::bail!("unexpected CLUSTER NODES reply: {other:?}"),
        };
        let migrating = migrating_slots(&nodes).into_iter().collect();
        self.view = Some((Instant::now(), View { map, migrating }));
        Ok(())
    }

    async fn conn(&mut self, addr: &str) -> anyhow::Result<&mut Connection> {
        if !self.conns.contains_key(addr) {
            let c = ferry_redis::connect_node(&self.source, addr, Duration::from_secs(5)).await?;
            self.conns.insert(addr.to_string(), c);
        }
        Ok(self.conns.get_mut(addr).expect("inserted above"))
    }

    /// `EXISTS key` on `addr`, which may be importing the slot (hence `ASKING`).
    async fn exists(&mut self, addr: &str, key: &[u8]) -> anyhow::Result<bool> {
        let res = async {
            let c = self.conn(addr).await?;
            c.call(&["ASKING"]).await?;
            Ok::<_, anyhow::Error>(c.call(&[&b"EXISTS"[..], key]).await? == ferry_resp::Reply::Integer(1))
        }
        .await;
        if res.is_err() {
            self.conns.remove(addr);
        }
        res
    }

    /// Waits until every other pipeline of this decoder that is past its full copy has
    /// applied what its master had replicated by now (matched by replication id, the
    /// current or the previous one after a failover).
    pub async fn barrier(&mut self, peers: &[Arc<Stats>], me: &Arc<Stats>, why: &str) {
        let started = Instant::now();
        let mut goals: Vec<(Arc<Stats>, i64)> = Vec::new();
        if self.refresh().await.is_err() {
            warn!(master = %self.own, "cannot read the source's slots: {why} is applied without waiting for the other shards");
            return;
        }
        let masters = self.view.as_ref().map(|(_, v)| v.map.masters.clone()).unwrap_or_default();
        let own = self.own.clone();
        for m in masters.into_iter().filter(|m| *m != own) {
            let info = match self.conn(&m).await {
                Ok(c) => c.call(&["INFO", "replication"]).await.ok(),
                Err(_) => None,
            };
            let Some(info) = info else {
                self.conns.remove(&m);
                continue;
            };
            let field = |k: &str| ferry_resp::replication::info_field(&info, k).unwrap_or_default().to_string();
            let (id1, id2) = (field("master_replid"), field("master_replid2"));
            let offset: i64 = field("master_repl_offset").parse().unwrap_or(0);
            // Live sessions past their full copy (a pipeline that stopped keeps its statistics).
            let live = |p: &Arc<Stats>| *p.phase.lock().unwrap() == Phase::Running && p.rdb_applied.load(Relaxed);
            for p in peers.iter().filter(|p| !Arc::ptr_eq(p, me) && live(p)) {
                let replid = p.replid.lock().unwrap().clone();
                if !replid.is_empty() && (replid == id1 || replid == id2) {
                    goals.push((p.clone(), offset));
                }
            }
        }
        while let Some((_, goal)) = goals.iter().find(|(p, goal)| p.applied_offset.load(Relaxed) < *goal) {
            if started.elapsed() > BARRIER_TIMEOUT {
                me.count_error("MIGRATION_BARRIER_TIMEOUT");
                warn!(master = %self.own, goal, "other shards did not catch up within {BARRIER_TIMEOUT:?}: {why} is applied now (a write to it replicated late by its old master could apply twice)");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !goals.is_empty() {
            info!(master = %self.own, waited_ms = started.elapsed().as_millis() as u64, shards = goals.len(), "{why}: the other shards caught up first");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Bytes {
        ferry_resp::encode_command(args)
    }

    #[test]
    fn restore_asking_becomes_restore_replace() {
        let args = ferry_resp::parse_command(&cmd(&["RESTORE-ASKING", "k", "0", "payload"])).unwrap();
        assert_eq!(restore_replace(&args), cmd(&["RESTORE", "k", "0", "payload", "REPLACE"]));
        let args = ferry_resp::parse_command(&cmd(&["restore-asking", "k", "0", "p", "replace", "ABSTTL"])).unwrap();
        assert_eq!(restore_replace(&args), cmd(&["RESTORE", "k", "0", "p", "replace", "ABSTTL"]));
    }

    #[test]
    fn only_del_and_restore_asking_concern_the_guard() {
        let frame = |cmds: &[Bytes]| {
            let data: Vec<u8> = cmds.iter().flat_map(|c| c.to_vec()).collect();
            (Bytes::from(data), cmds.iter().map(|c| c.len() as u32).collect::<Vec<_>>())
        };
        let (d, l) = frame(&[cmd(&["SET", "a", "1"]), cmd(&["INCR", "b"])]);
        assert!(!concerns(&d, &l));
        let (d, l) = frame(&[cmd(&["SET", "a", "1"]), cmd(&["del", "b"])]);
        assert!(concerns(&d, &l));
        let (d, l) = frame(&[cmd(&["RESTORE-ASKING", "b", "0", "x"])]);
        assert!(concerns(&d, &l));
    }
}
