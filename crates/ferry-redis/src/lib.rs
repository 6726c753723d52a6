//! How ferry reaches a Redis deployment (standalone, Sentinel-managed or cluster): its
//! credentials and TLS, connecting to its nodes, finding its master (Sentinel resolution
//! and failover events, cluster slot maps), and `SCAN` helpers. Used by every stage and by
//! `ferry-verify`; it knows nothing of gRPC.

use std::sync::Mutex;
use std::time::Duration;

use tracing::info;

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

/// The version to announce to the primary on `conn` as its replica (see
/// [`ferry_rdb::announced_replica_version`]); `None` when INFO cannot be read.
pub async fn announced_replica_version(conn: &mut ferry_resp::Connection) -> Option<&'static str> {
    match conn.call(&["INFO", "server"]).await {
        Ok(ferry_resp::Reply::Bulk(Some(b))) => ferry_rdb::announced_replica_version(&String::from_utf8_lossy(&b)),
        _ => None,
    }
}

/// The commands the server on `conn` knows and where their keys are (its `COMMAND` reply);
/// `None` when it will not say (an ACL user without `COMMAND`), logged.
pub async fn command_table(conn: &mut ferry_resp::Connection) -> Option<ferry_resp::commands::CommandTable> {
    match conn.call(&["COMMAND"]).await {
        Ok(r) => Some(ferry_resp::commands::CommandTable::from_reply(&r)).filter(|t| !t.is_empty()),
        Err(e) => {
            tracing::warn!(error = %e, "the target does not describe its commands (COMMAND): keys are found by ferry's own table, and commands it does not know fail when applied");
            None
        }
    }
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

/// Closes every client connection of the node `c` is connected to whose name `matches`
/// (`CLIENT LIST TYPE normal`, then `CLIENT KILL ID`), except `c` itself. Returns how many.
/// Once it returns, none of those connections can run another command: whatever they still
/// had on its way is discarded.
pub async fn kill_clients(c: &mut ferry_resp::Connection, matches: impl Fn(&str) -> bool) -> anyhow::Result<usize> {
    let me = match c.call(&["CLIENT", "ID"]).await? {
        ferry_resp::Reply::Integer(id) => id,
        other => anyhow::bail!("unexpected reply to CLIENT ID: {other:?}"),
    };
    let list = c.call(&["CLIENT", "LIST", "TYPE", "normal"]).await?;
    let text = String::from_utf8_lossy(list.as_bytes().map(|b| &b[..]).unwrap_or_default()).into_owned();
    let mut killed = 0;
    for line in text.lines() {
        let field = |k: &str| line.split(' ').find_map(|f| f.strip_prefix(k)).unwrap_or_default();
        let id: i64 = field("id=").parse().unwrap_or(-1);
        if id >= 0 && id != me && matches(field("name=")) {
            // Gone already (it ended by itself meanwhile) is as good as killed.
            let _ = c.call(&["CLIENT", "KILL", "ID", &id.to_string()]).await?;
            killed += 1;
        }
    }
    Ok(killed)
}

/// The name prefix of the connections ferry's writers write through (`CLIENT SETNAME`).
pub const WRITER_CLIENT_PREFIX: &str = "ferry-writer:";
