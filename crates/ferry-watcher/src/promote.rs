//! Promotion cut-over through Sentinel (seed 001, `ferry-watcher promote`): make a node
//! the master of a Sentinel-managed group without losing an acknowledged write.
//!
//! 1. Check the sentinels have a quorum (`SENTINEL CKQUORUM`).
//! 2. Attach the node as a replica of the current master (unless it is one already) and
//!    wait until it is caught up (`master_link_status:up`, offsets equal).
//! 3. Wait until the sentinels list it as a healthy replica.
//! 4. Make it the replica Sentinel will pick: every other replica gets
//!    `replica-priority 0` (restored afterwards, whatever happens), and wait until the
//!    sentinels have seen the new priorities.
//! 5. Pause writes on the old master (`CLIENT PAUSE WRITE`), wait until the node has
//!    every byte, then `SENTINEL FAILOVER`: Sentinel's own failover does not wait for the
//!    replica, so without the pause writes acknowledged by the old master after the
//!    promotion would be lost.
//! 6. Wait until the sentinels name the node as master and it says so itself; make the old
//!    master a replica of the new one (Sentinel would, seconds later) and unpause it.
//! 7. Wait until every sentinel has finished the failover (`SENTINEL MASTER` shows the node,
//!    without `failover_in_progress`): Sentinel-aware clients such as redis-py read
//!    `SENTINEL MASTERS`, which names the old master until then.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use ferry_resp::replication::info_field;
use ferry_resp::{Auth, Connection, Reply};
use tracing::{info, warn};

/// What to promote, where.
#[derive(Clone, Debug)]
pub struct PromoteOptions {
    pub sentinels: Vec<String>,
    pub master_name: String,
    pub sentinel_auth: Auth,
    /// Credentials of the data nodes.
    pub auth: Auth,
    /// The node to make master, `host:port` as the sentinels will see it.
    pub node: String,
    /// How long each step may take.
    pub timeout: Duration,
}

/// What happened.
#[derive(Clone, Debug)]
pub struct PromoteReport {
    pub old_master: String,
    pub new_master: String,
    pub offset: i64,
    pub took: Duration,
    /// Every sentinel finished the failover within the timeout (clients that read
    /// `SENTINEL MASTERS` find the new master).
    pub settled: bool,
}

async fn conn(addr: &str, auth: &Auth) -> anyhow::Result<Connection> {
    Connection::connect(addr, auth, Duration::from_secs(5)).await.with_context(|| addr.to_string())
}

async fn info(c: &mut Connection) -> anyhow::Result<Reply> {
    Ok(c.call(&["INFO", "replication"]).await?)
}

fn field(r: &Reply, f: &str) -> String {
    info_field(r, f).unwrap_or("").to_string()
}

fn offset(r: &Reply, f: &str) -> i64 {
    info_field(r, f).and_then(|v| v.parse().ok()).unwrap_or(-1)
}

/// A time limit for one step of the procedure.
struct Step {
    what: &'static str,
    until: Instant,
}

impl Step {
    fn new(what: &'static str, timeout: Duration) -> Step {
        Step { what, until: Instant::now() + timeout }
    }

    /// Waits 100 ms before the next check, or fails once the step took too long.
    async fn next(&self, last: Option<anyhow::Error>) -> anyhow::Result<()> {
        if Instant::now() > self.until {
            return Err(match last {
                Some(e) => e.context(format!("timed out waiting until {}", self.what)),
                None => anyhow!("timed out waiting until {}", self.what),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }
}

/// The replicas the sentinels know: (address, flags, priority).
async fn sentinel_replicas(o: &PromoteOptions) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut c = conn(&o.sentinels[0], &o.sentinel_auth).await?;
    let Reply::Array(Some(items)) = c.call(&["SENTINEL", "REPLICAS", &o.master_name]).await? else {
        bail!("bad reply to SENTINEL REPLICAS");
    };
    let mut out = Vec::new();
    for r in items {
        let Reply::Array(Some(kv)) = r else { continue };
        let get = |k: &str| kv_field(&kv, k);
        out.push((format!("{}:{}", get("ip"), get("port")), get("flags"), get("slave-priority")));
    }
    Ok(out)
}

/// A field of a `SENTINEL MASTER`/`REPLICAS` entry (a flat field, value, ... array).
pub(crate) fn kv_field(kv: &[Reply], k: &str) -> String {
    kv.chunks(2)
        .find(|p| p[0].as_bytes().is_some_and(|b| &b[..] == k.as_bytes()))
        .and_then(|p| p.get(1).and_then(|v| v.as_bytes()).map(|b| String::from_utf8_lossy(b).to_string()))
        .unwrap_or_default()
}

/// Whether every sentinel describes `node` as the master of `o.master_name`, with no
/// failover in progress.
async fn sentinels_settled(o: &PromoteOptions) -> bool {
    for s in &o.sentinels {
        let Ok(mut c) = conn(s, &o.sentinel_auth).await else { return false };
        let Ok(Reply::Array(Some(kv))) = c.call(&["SENTINEL", "MASTER", &o.master_name]).await else { return false };
        let addr = format!("{}:{}", kv_field(&kv, "ip"), kv_field(&kv, "port"));
        if addr != o.node || kv_field(&kv, "flags").contains("failover_in_progress") {
            return false;
        }
    }
    true
}

/// Promotes `o.node`; see the module documentation for the steps.
pub async fn promote(o: &PromoteOptions) -> anyhow::Result<PromoteReport> {
    let started = Instant::now();
    if o.sentinels.is_empty() {
        bail!("no sentinels given");
    }
    let old =
        ferry_resp::sentinel::resolve_master(&o.sentinels, &o.master_name, &o.sentinel_auth, Duration::from_secs(3))
            .await?;
    if old == o.node {
        bail!("{} is already the master of {}", o.node, o.master_name);
    }
    // 1. Quorum.
    let mut s = conn(&o.sentinels[0], &o.sentinel_auth).await?;
    match s.call(&["SENTINEL", "CKQUORUM", &o.master_name]).await {
        Ok(_) => {}
        Err(e) => bail!("refusing to promote: the sentinels cannot fail over {}: {e}", o.master_name),
    }
    // 2. Attach and catch up.
    let (mhost, mport) = old.rsplit_once(':').ok_or_else(|| anyhow!("bad master address {old}"))?;
    let mut node = conn(&o.node, &o.auth).await?;
    let ni = info(&mut node).await?;
    if !(field(&ni, "role") == "slave" && field(&ni, "master_host") == mhost && field(&ni, "master_port") == mport) {
        info!(node = %o.node, master = %old, "attaching the node as a replica");
        node.call(&["REPLICAOF", mhost, mport]).await?;
    }
    let mut master = conn(&old, &o.auth).await?;
    let step = Step::new("the node is caught up with the master", o.timeout);
    loop {
        let want = offset(&info(&mut master).await?, "master_repl_offset");
        let ni = info(&mut node).await?;
        if field(&ni, "master_link_status") == "up"
            && field(&ni, "master_sync_in_progress") == "0"
            && offset(&ni, "slave_repl_offset") >= want
        {
            break;
        }
        step.next(None).await.map_err(|e| anyhow!("refusing to promote: {e:#}"))?;
    }
    // 3. Known to the sentinels as a healthy replica.
    let step = Step::new("the sentinels list the node as a healthy replica", o.timeout);
    loop {
        match sentinel_replicas(o).await {
            Ok(reps)
                if reps.iter().any(|(a, f, _)| *a == o.node && !f.contains("down") && !f.contains("disconnected")) =>
            {
                break;
            }
            Ok(_) => step.next(None).await?,
            Err(e) => step.next(Some(e)).await?,
        }
    }
    // 4. Priorities: only the node can be picked. Restored whatever happens next.
    let others: Vec<String> = sentinel_replicas(o)
        .await?
        .into_iter()
        .filter(|(a, flags, _)| *a != o.node && !a.ends_with(":0") && !flags.contains("down"))
        .map(|(a, _, _)| a)
        .collect();
    let mut saved: Vec<(String, String)> = Vec::new();
    let result = async {
        for a in &others {
            let mut c = conn(a, &o.auth).await?;
            let Reply::Array(Some(kv)) = c.call(&["CONFIG", "GET", "replica-priority"]).await? else {
                bail!("{a}: bad reply to CONFIG GET");
            };
            let prio = kv
                .get(1)
                .and_then(|v| v.as_bytes())
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or("100".into());
            saved.push((a.clone(), prio));
            c.call(&["CONFIG", "SET", "replica-priority", "0"]).await?;
        }
        let Reply::Array(Some(kv)) = node.call(&["CONFIG", "GET", "replica-priority"]).await? else {
            bail!("{}: bad reply to CONFIG GET", o.node);
        };
        if kv.get(1).and_then(|v| v.as_bytes()).is_some_and(|b| &b[..] == b"0") {
            saved.push((o.node.clone(), "0".into()));
            node.call(&["CONFIG", "SET", "replica-priority", "100"]).await?;
        }
        // Sentinel reads priorities from INFO every 10 s: wait until it has the new ones.
        let step = Step::new("the sentinels see the new replica priorities", o.timeout.max(Duration::from_secs(15)));
        loop {
            let reps = sentinel_replicas(o).await?;
            if reps.iter().all(|(a, _, p)| !others.contains(a) || p == "0")
                && reps.iter().any(|(a, _, p)| *a == o.node && p != "0")
            {
                break;
            }
            step.next(None).await?;
        }
        // 5. Pause writes on the old master, let the node take every byte, fail over.
        master.call(&["CLIENT", "PAUSE", &(o.timeout.as_millis().max(1000)).to_string(), "WRITE"]).await?;
        let step = Step::new("the node has every write of the paused master", o.timeout);
        let final_offset = loop {
            let want = offset(&info(&mut master).await?, "master_repl_offset");
            if offset(&info(&mut node).await?, "slave_repl_offset") >= want {
                break want;
            }
            step.next(None).await?;
        };
        info!(node = %o.node, offset = final_offset, "node caught up; asking Sentinel to fail over");
        s.call(&["SENTINEL", "FAILOVER", &o.master_name]).await.context("SENTINEL FAILOVER")?;
        // 6. The sentinels and the node agree.
        let step = Step::new("the sentinels name the node as master", o.timeout);
        loop {
            let now = ferry_resp::sentinel::resolve_master(
                &o.sentinels,
                &o.master_name,
                &o.sentinel_auth,
                Duration::from_secs(2),
            )
            .await;
            // Sentinel kills the clients of the nodes it reconfigures: ask on a new connection.
            let role = match conn(&o.node, &o.auth).await {
                Ok(mut c) => info(&mut c).await.map(|i| field(&i, "role")).unwrap_or_default(),
                Err(_) => String::new(),
            };
            if now.as_deref().ok() == Some(o.node.as_str()) && role == "master" {
                break;
            }
            step.next(now.err().map(anyhow::Error::from)).await?;
        }
        anyhow::Ok(final_offset)
    }
    .await;
    // Unpause and restore priorities, whatever happened. After a promotion the old master
    // first becomes a replica of the new one (what Sentinel will do anyway, only later):
    // writes it held paused then fail with READONLY instead of being acknowledged and lost.
    if let Ok(mut m) = conn(&old, &o.auth).await {
        if result.is_ok()
            && let Some((host, port)) = o.node.rsplit_once(':')
            && let Err(e) = m.call(&["REPLICAOF", host, port]).await
        {
            warn!(node = %old, error = %e, "could not make the old master a replica of the new one");
        }
        let _ = m.call(&["CLIENT", "UNPAUSE"]).await;
    }
    for (a, prio) in &saved {
        match conn(a, &o.auth).await {
            Ok(mut c) => {
                if let Err(e) = c.call(&["CONFIG", "SET", "replica-priority", prio]).await {
                    warn!(node = %a, error = %e, "could not restore replica-priority");
                }
            }
            Err(e) => warn!(node = %a, error = %e, "could not restore replica-priority"),
        }
    }
    let offset = result?;
    // 7. Every sentinel done with the failover.
    let deadline = Instant::now() + o.timeout;
    let settled = loop {
        if sentinels_settled(o).await {
            break true;
        }
        if Instant::now() > deadline {
            warn!(master = %o.master_name, "some sentinels are still finishing the failover: clients that read SENTINEL MASTERS may still find the old master");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(PromoteReport { old_master: old, new_master: o.node.clone(), offset, took: started.elapsed(), settled })
}
