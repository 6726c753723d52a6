//! The writer for a Redis Cluster target.
//!
//! Every command is routed to the master that serves its key's slot (hash tags included).
//! Redis Cluster runs a transaction only within one slot, so an incremental batch is applied
//! slot by slot: the commands of each slot in one `MULTI`/`EXEC` together with that slot's
//! checkpoint key (`ferry:checkpoint:{<tag>}:<pipeline>`, the tag placing it in the slot).
//! Each master also holds a floor (`ferry:checkpoint:floor:{<tag>}:<pipeline>`), written
//! about once a second once every master has applied a batch: everything up to it is applied
//! everywhere. After a restart or a failover the pipeline resumes from the lowest floor, and
//! a command is skipped when its slot's checkpoint (or its master's floor) already covers it. `MOVED` refreshes the slot map and
//! re-routes the commands of the master that refused them (its transaction was aborted, so
//! nothing of it was applied); `ASK`, `TRYAGAIN`, `CLUSTERDOWN` and `LOADING` are retried
//! with backoff. Multi-key commands whose keys live in different slots are split where that
//! keeps their meaning (`DEL`, `UNLINK`, `EXISTS`, `TOUCH`, `MSET`) and otherwise refused
//! with an error naming the command.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use ferry_config::Config;
use ferry_proto::{Ack, Batch, Checkpoint};
use ferry_resp::cluster::{SlotMap, key_slot};
use ferry_resp::commands::{CommandTable, Keys};
use ferry_resp::conn::printable;
use ferry_resp::{Connection, Reply, encode_command, encode_command_into};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{info, warn};

use crate::{ReplyCheck, batch_applied, checkpoint_value, command_key, command_name_at};
use ferry_resp::cluster::slot_tags;
use ferry_runtime::Stats;

/// Where a command's keys say it must go.
enum Route {
    /// No key: every master (FLUSHALL, FUNCTION LOAD, ...).
    All,
    Slot(u16),
}

struct ClusterTarget {
    cfg: ferry_config::RedisConfig,
    pipeline_id: String,
    map: SlotMap,
    conns: HashMap<String, Connection>,
    /// The commands the target knows and where their keys are (its `COMMAND` reply).
    commands: CommandTable,
    /// Source offset each slot has applied (from its checkpoint).
    slot_done: HashMap<u16, i64>,
    /// Floor of each master, by address: everything up to it is applied on every master.
    floor: HashMap<String, i64>,
    last_floor_write: std::time::Instant,
    /// The target holds an earlier copy of the pipeline (a checkpoint or a re-copy's marker).
    earlier_copy: bool,
    stats: Arc<Stats>,
}

impl ClusterTarget {
    async fn connect(cfg: &Config, pipeline_id: &str, stats: &Arc<Stats>) -> anyhow::Result<ClusterTarget> {
        let t = &cfg.target;
        // The configured node first, then any node seen before (the configured one may be
        // the master that just died).
        let (mut seed, map) = first_map(t, ferry_redis::cluster_seeds(t)).await?;
        // Routing needs it: without it no command could be placed.
        let commands = ferry_redis::command_table(&mut seed).await.ok_or_else(|| {
            anyhow!("the target cluster does not describe its commands (COMMAND): ferry routes by it")
        })?;
        let mut ct = ClusterTarget {
            cfg: t.clone(),
            pipeline_id: pipeline_id.to_string(),
            map,
            conns: HashMap::new(),
            commands,
            slot_done: HashMap::new(),
            floor: HashMap::new(),
            last_floor_write: std::time::Instant::now(),
            earlier_copy: false,
            stats: stats.clone(),
        };
        ct.connect_masters().await?;
        Ok(ct)
    }

    async fn connect_masters(&mut self) -> anyhow::Result<()> {
        for m in self.map.masters.clone() {
            if !self.conns.contains_key(&m) {
                let mut c = ferry_redis::connect_node(&self.cfg, &m, Duration::from_secs(10)).await?;
                // Before any checkpoint of this master is read or written by this session. The
                // fence is kept for every slot: any slot the master serves tells it.
                let n = self.map.master_index(&m).ok_or_else(|| anyhow!("{m} is not a master"))?;
                let slot = self.map.a_slot_of(n).unwrap_or(0);
                let fence = ferry_checkpoint::fence_slot_key(&slot_tags()[slot as usize]);
                crate::take_over(&mut c, &self.pipeline_id, &self.stats, &fence).await?;
                self.conns.insert(m, c);
            }
        }
        Ok(())
    }

    /// The lowest RDB version over the masters (0 when any cannot be told).
    async fn rdb_version(&mut self) -> u32 {
        let mut lowest = u32::MAX;
        for c in self.conns.values_mut() {
            lowest = lowest.min(ferry_redis::server_rdb_version(c).await);
        }
        if lowest == u32::MAX { 0 } else { lowest }
    }

    /// Reads the slot map again (after MOVED, or when a master changed).
    async fn refresh(&mut self) -> anyhow::Result<()> {
        let mut candidates: Vec<String> = self.map.masters.clone();
        candidates.extend(ferry_redis::cluster_seeds(&self.cfg).into_iter().filter(|a| !self.map.masters.contains(a)));
        let (_, map) = first_map(&self.cfg, candidates).await?;
        self.map = map;
        self.conns.retain(|a, _| self.map.masters.contains(a));
        self.connect_masters().await
    }

    fn slot_key(&self, slot: u16) -> String {
        ferry_checkpoint::slot_key(&slot_tags()[slot as usize], &self.pipeline_id)
    }

    fn floor_key(&self, node: usize) -> String {
        let slot = self.map.a_slot_of(node).unwrap_or(0);
        ferry_checkpoint::floor_key(&slot_tags()[slot as usize], &self.pipeline_id)
    }

    /// Every checkpoint key of this pipeline on a master (`SCAN MATCH`).
    async fn checkpoint_keys(&mut self, addr: &str) -> anyhow::Result<Vec<Bytes>> {
        let suffix = format!(":{}", self.pipeline_id);
        let c = self.conns.get_mut(addr).ok_or_else(|| anyhow!("no connection to {addr}"))?;
        let mut keys = ferry_redis::scan_keys(c, ferry_checkpoint::SCAN_PATTERN).await?;
        keys.retain(|k| k.ends_with(suffix.as_bytes()));
        Ok(keys)
    }

    /// The checkpoint of the whole target: present only if every master has a floor of the
    /// same replication id; resume from the lowest floor.
    async fn read_checkpoints(&mut self) -> anyhow::Result<Checkpoint> {
        self.slot_done.clear();
        self.floor.clear();
        let stop_slot = key_slot(ferry_checkpoint::stop_key(&self.pipeline_id).as_bytes());
        let stop_node = self.map.node_of(stop_slot).ok_or_else(|| anyhow!("slot {stop_slot} is not served"))?;
        let addr = self.map.masters[stop_node].clone();
        let c = self.conns.get_mut(&addr).ok_or_else(|| anyhow!("no connection to {addr}"))?;
        crate::check_stop(c, &self.pipeline_id).await?;
        let mut floors: Vec<Checkpoint> = Vec::new();
        for (n, m) in self.map.masters.clone().iter().enumerate() {
            let floor_key = self.floor_key(n);
            for key in self.checkpoint_keys(m).await? {
                let c = self.conns.get_mut(m).ok_or_else(|| anyhow!("no connection to {m}"))?;
                let Some(v) = c.call(&[&b"GET"[..], &key]).await?.as_bytes().cloned() else { continue };
                self.earlier_copy |= ferry_checkpoint::is_recopy_marker(&v);
                let Some(ckpt) = ferry_checkpoint::parse(&v) else { continue };
                self.earlier_copy = true;
                if key[..] == *floor_key.as_bytes() {
                    self.floor.insert(m.clone(), ckpt.offset);
                    floors.push(ckpt);
                } else if !ferry_checkpoint::is_floor_key(&key) {
                    self.slot_done.insert(key_slot(&key), ckpt.offset);
                }
            }
        }
        if floors.len() != self.map.masters.len() || floors.iter().any(|f| f.replid != floors[0].replid) {
            info!("the target cluster holds no complete checkpoint of this pipeline: a full copy is needed");
            return Ok(Checkpoint::default());
        }
        Ok(floors.into_iter().min_by_key(|f| f.resume_offset).expect("not empty"))
    }

    async fn delete_checkpoints(&mut self) -> anyhow::Result<()> {
        for m in self.map.masters.clone() {
            for key in self.checkpoint_keys(&m).await? {
                let c = self.conns.get_mut(&m).ok_or_else(|| anyhow!("no connection to {m}"))?;
                c.call(&[&b"DEL"[..], &key]).await?;
            }
        }
        self.slot_done.clear();
        self.floor.clear();
        Ok(())
    }

    /// Writes every master's floor: all of batch `b` (and what came before) is applied everywhere.
    /// A floor lives in a slot its master serves; when that slot has just moved (`MOVED`/`ASK`
    /// after a migration or a failover), the slot map is read again and the floors written
    /// where they now belong.
    async fn write_floors(&mut self, value: &str, offset: i64) -> anyhow::Result<()> {
        let mut attempt = 0;
        'again: loop {
            for (n, m) in self.map.masters.clone().iter().enumerate() {
                let key = self.floor_key(n);
                let c = self.conns.get_mut(m).ok_or_else(|| anyhow!("no connection to {m}"))?;
                match c.call(&["SET", &key, value]).await {
                    Ok(_) => {
                        self.floor.insert(m.clone(), offset);
                    }
                    Err(e) if attempt < 10 && is_redirect(&e) => {
                        attempt += 1;
                        warn!(master = %m, error = %e, attempt, "a floor's slot moved: reading the slot map again");
                        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                        self.refresh().await?;
                        continue 'again;
                    }
                    Err(e) => return Err(anyhow::Error::from(e).context(format!("target {m}"))),
                }
            }
            break;
        }
        self.last_floor_write = std::time::Instant::now();
        Ok(())
    }

    /// Keys of a command, by the target's key specs (`COMMAND GETKEYS` when they cannot say).
    async fn keys(&mut self, args: &[Bytes]) -> anyhow::Result<Vec<Bytes>> {
        match self.commands.keys(args) {
            Keys::At(at) => Ok(at.into_iter().map(|i| args[i].clone()).collect()),
            Keys::UnknownCommand => {
                bail!("the target does not know the command {}", printable(&args[0]).to_uppercase())
            }
            Keys::Unknowable => {
                let m = self.map.masters.first().cloned().ok_or_else(|| anyhow!("empty cluster"))?;
                let c = self.conns.get_mut(&m).ok_or_else(|| anyhow!("no connection to {m}"))?;
                let mut q: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
                q.extend(args.iter().map(|a| &a[..]));
                match c.call(&q).await {
                    Ok(Reply::Array(Some(keys))) => {
                        Ok(keys.into_iter().filter_map(|k| k.as_bytes().cloned()).collect())
                    }
                    // "Invalid arguments" for commands without keys in this form.
                    _ => Ok(vec![]),
                }
            }
        }
    }

    /// Splits command `cmd` into routed pieces (usually one: itself).
    async fn route(&mut self, cmd: Bytes) -> anyhow::Result<Vec<(Route, Bytes)>> {
        // The usual case (every RESTORE of a full copy): one key at a fixed place, read
        // without parsing the command into values.
        if let Some(key) = ferry_resp::command_name(&cmd)
            .and_then(|name| self.commands.single_key(name))
            .and_then(|i| ferry_resp::command_arg(&cmd, i))
        {
            return Ok(vec![(Route::Slot(key_slot(key)), cmd)]);
        }
        let args = ferry_resp::parse_command(&cmd)?;
        let name = args[0].to_ascii_uppercase();
        if name == b"SELECT" {
            if args.get(1).map(|a| &a[..]) != Some(b"0") {
                bail!(
                    "the source writes to db {}, but a cluster target has only db 0 (map or filter the source's dbs)",
                    printable(args.get(1).map(|a| &a[..]).unwrap_or(b"?"))
                );
            }
            return Ok(vec![]);
        }
        let keys = self.keys(&args).await?;
        if keys.is_empty() {
            return Ok(vec![(Route::All, cmd)]);
        }
        let slot = key_slot(&keys[0]);
        if keys.iter().all(|k| key_slot(k) == slot) {
            return Ok(vec![(Route::Slot(slot), cmd)]);
        }
        match &name[..] {
            b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => Ok(args[1..]
                .iter()
                .map(|k| (Route::Slot(key_slot(k)), encode_command(&[&args[0][..], &k[..]])))
                .collect()),
            b"MSET" => Ok(args[1..]
                .chunks(2)
                .map(|kv| {
                    (
                        Route::Slot(key_slot(&kv[0])),
                        encode_command(&[&b"SET"[..], &kv[0], kv.get(1).map(|v| &v[..]).unwrap_or(b"")]),
                    )
                })
                .collect()),
            _ => bail!(
                "{} has keys in different cluster slots: the target cluster cannot apply it atomically",
                printable(&args[0]).to_uppercase()
            ),
        }
    }
}

/// The first of `candidates` that answers with a complete slot map, and its connection.
async fn first_map(t: &ferry_config::RedisConfig, candidates: Vec<String>) -> anyhow::Result<(Connection, SlotMap)> {
    let mut last = None;
    for addr in candidates {
        let res = async {
            let mut c = ferry_redis::connect_node(t, &addr, Duration::from_secs(5)).await?;
            let map = load_map(t, &mut c).await?;
            anyhow::Ok((c, map))
        }
        .await;
        match res {
            Ok(found) => return Ok(found),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no cluster node to ask")))
}

/// An error reply that means "this key lives elsewhere now, or soon": ask the slot map again.
fn is_redirect(e: &ferry_resp::RespError) -> bool {
    let ferry_resp::RespError::Server { reply, .. } = e else { return false };
    ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"].iter().any(|k| reply.starts_with(k))
}

async fn load_map(t: &ferry_config::RedisConfig, c: &mut Connection) -> anyhow::Result<SlotMap> {
    let r = c.call(&["CLUSTER", "SLOTS"]).await.context("CLUSTER SLOTS (is the target a cluster?)")?;
    ferry_redis::remember_cluster_nodes(t, &r);
    let map = SlotMap::from_cluster_slots(&r).ok_or_else(|| anyhow!("cannot read the reply to CLUSTER SLOTS"))?;
    if !map.complete() {
        bail!("the target cluster does not serve every slot (cluster_state not ok)");
    }
    Ok(map)
}

fn split_commands(resp: &Bytes) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < resp.len() {
        let n = ferry_resp::scan_command(&resp[pos..], usize::MAX)?.ok_or_else(|| anyhow!("truncated batch"))?;
        out.push(resp.slice(pos..pos + n));
        pos += n;
    }
    Ok(out)
}

/// The error that makes a command worth retrying elsewhere or later.
fn redirect(err: &[u8]) -> Option<&'static str> {
    ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING"].into_iter().find(|kind| err.starts_with(kind.as_bytes()))
}

pub(crate) async fn session(
    cfg: &Config,
    stats: &Arc<Stats>,
    hello: Batch,
    mut batches: Streaming<Batch>,
    ack_tx: mpsc::Sender<Result<Ack, Status>>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut ct = ClusterTarget::connect(cfg, &hello.pipeline_id, stats).await.context("target cluster")?;
    info!(target = %cfg.target.describe(), masters = ct.map.masters.len(), "connected to the target cluster");
    let checkpoint = ct.read_checkpoints().await.context("target cluster")?;
    let target_rdb_version = ct.rdb_version().await;
    crate::hello_ack(&ack_tx, stats, checkpoint, target_rdb_version, ct.earlier_copy, Some(&ct.commands)).await;
    let mut replid = String::new();
    // During a re-copy: the keys it writes and the source master it copies.
    let mut recopy: Option<(crate::stale::KeySet, String)> = None;
    let limiter = ferry_runtime::RateLimiter::new(cfg.writer.max_ops_per_sec);
    let byte_limiter = ferry_runtime::RateLimiter::new(cfg.writer.max_bytes_per_sec);
    loop {
        let msg = tokio::select! {
            m = batches.message() => m.map_err(|s| anyhow!("decoder stream: {}", s.message()))?,
            _ = cancel.cancelled() => return Ok(()),
        };
        let Some(mut b) = msg else { return Ok(()) };
        if let Some(begin) = b.begin.take() {
            replid = begin.replid.clone();
            recopy = None;
            if begin.full {
                ct.delete_checkpoints().await.context("target cluster")?;
                if ct.earlier_copy && cfg.writer.remove_stale_keys {
                    // Known as a re-copy until done, even by a writer restarted in the middle.
                    info!(pipeline = %hello.pipeline_id, "a re-copy: keys the source no longer holds will be removed from the target once the snapshot is applied");
                    ct.write_floors(ferry_checkpoint::RECOPY_MARKER, i64::MIN).await.context("target cluster")?;
                    ct.floor.clear();
                    recopy = Some((crate::stale::KeySet::default(), begin.source_address.clone()));
                }
                if cfg.writer.empty_target_before_full_copy {
                    warn!(target = %cfg.target.describe(), "emptying every master of the target before the full copy (writer.empty_target_before_full_copy = true): FLUSHALL");
                    for m in ct.map.masters.clone() {
                        let c = ct.conns.get_mut(&m).ok_or_else(|| anyhow!("no connection to {m}"))?;
                        c.call(&["FLUSHALL"]).await.with_context(|| format!("target {m}"))?;
                    }
                }
            } else {
                stats.set_rdb_applied();
            }
            continue;
        }
        if let Some((written, source_master)) = &mut recopy {
            written.note(&b.resp).context("a batch of the full copy")?;
            if b.rdb_end {
                // Before the floors that end the copy.
                remove_stale(cfg, &mut ct, source_master, written, stats).await?;
                recopy = None;
            }
        }
        if b.rdb_end {
            ct.earlier_copy = true;
        }
        limiter.acquire(b.count as u64).await;
        byte_limiter.acquire(b.resp.len() as u64).await;
        let span = ferry_runtime::telemetry::apply_span(&b, &hello.pipeline_id);
        tracing::Instrument::instrument(apply(&mut ct, &b, &replid, stats), span).await?;
        if b.offset >= 0 && (b.rdb_end || ct.last_floor_write.elapsed() >= Duration::from_secs(1)) {
            ct.write_floors(&checkpoint_value(&replid, &b), b.offset).await?;
        }
        if !batch_applied(&b, stats, &ack_tx).await {
            return Ok(());
        }
    }
}

/// Removes the keys of a re-copy's keyspace the snapshot did not write, master by master
/// (see [`crate::stale`]).
async fn remove_stale(
    cfg: &Config,
    ct: &mut ClusterTarget,
    source_master: &str,
    written: &crate::stale::KeySet,
    stats: &Stats,
) -> anyhow::Result<()> {
    let Some(mut keyspace) = crate::stale::keyspace_or_warn(cfg, source_master, stats).await else { return Ok(()) };
    let mut removed = 0;
    for m in ct.map.masters.clone() {
        let c = ct.conns.get_mut(&m).ok_or_else(|| anyhow!("no connection to {m}"))?;
        removed += crate::stale::remove(c, written, &mut keyspace)
            .await
            .with_context(|| format!("removing stale keys on the target master {m}"))?;
    }
    crate::stale::removed(removed, written, stats);
    Ok(())
}

/// Applies one batch: routes its commands, sends each master its part (for incremental
/// batches, one transaction per slot with the slot's checkpoint), and retries what was
/// redirected. A keyless command (FLUSHALL, FUNCTION LOAD...) goes to every master, in order.
async fn apply(ct: &mut ClusterTarget, b: &Batch, replid: &str, stats: &Stats) -> anyhow::Result<()> {
    let cmds = split_commands(&b.resp)?;
    // Segments end at keyless commands, so their order relative to the rest is kept.
    let mut segment: Vec<(u32, u16, Bytes)> = Vec::new();
    for (i, cmd) in cmds.into_iter().enumerate() {
        let routes = ct.route(cmd).await.with_context(|| format!("command {i} of a batch"))?;
        for (route, piece) in routes {
            match route {
                Route::Slot(slot) => segment.push((i as u32, slot, piece)),
                Route::All => {
                    apply_segment(ct, b, replid, stats, std::mem::take(&mut segment)).await?;
                    apply_everywhere(ct, b, replid, stats, i as u32, piece).await?;
                }
            }
        }
    }
    apply_segment(ct, b, replid, stats, segment).await
}

/// A keyless command on every master, each time in one transaction with that master's floor
/// at the command's offset: a retry (after an error on another master, a writer restart)
/// skips the masters whose floor covers it, so the command never runs twice on a master.
async fn apply_everywhere(
    ct: &mut ClusterTarget,
    b: &Batch,
    replid: &str,
    stats: &Stats,
    i: u32,
    cmd: Bytes,
) -> anyhow::Result<()> {
    let check = ReplyCheck { batch: b, stats };
    let offset = b.cmd_offsets.get(i as usize).copied().filter(|_| b.offset >= 0);
    for (n, m) in ct.map.masters.clone().iter().enumerate() {
        let Some(o) = offset else {
            // The full copy (a function library): applied again with the whole copy.
            let c = ct.conns.get_mut(m).ok_or_else(|| anyhow!("no connection to {m}"))?;
            c.send_raw(&cmd).await.with_context(|| format!("target {m}"))?;
            let r = c.read_reply().await.with_context(|| format!("target {m}"))?;
            check.reply(i, &r)?;
            continue;
        };
        if o <= ct.floor.get(m).copied().unwrap_or(i64::MIN) {
            continue;
        }
        let floor_key = ct.floor_key(n);
        let mut blob = BytesMut::new();
        encode_command_into(&mut blob, &[&b"MULTI"[..]]);
        blob.extend_from_slice(&cmd);
        let value = ferry_checkpoint::value(replid, o, o, 0);
        encode_command_into(&mut blob, &[&b"SET"[..], floor_key.as_bytes(), value.as_bytes()]);
        encode_command_into(&mut blob, &[&b"EXEC"[..]]);
        let c = ct.conns.get_mut(m).ok_or_else(|| anyhow!("no connection to {m}"))?;
        c.send_raw(&blob).await.with_context(|| format!("target {m}"))?;
        let mut queued = Vec::with_capacity(3);
        for _ in 0..3 {
            queued.push(c.read_reply().await.with_context(|| format!("target {m}"))?);
        }
        match c.read_reply().await.with_context(|| format!("target {m}"))? {
            Reply::Array(Some(items)) => {
                if let Some(r) = items.first() {
                    check.reply(i, r).map_err(crate::committed)?;
                }
                if let Some(e) = items.get(1).and_then(|r| r.first_error()) {
                    bail!("target {m} refused the floor write: {}", printable(e));
                }
                ct.floor.insert(m.clone(), o);
            }
            // Nothing ran: the error is in the queued replies.
            exec => {
                let e = queued.iter().chain(std::iter::once(&exec)).find_map(|r| r.first_error());
                let e = printable(e.unwrap_or(b"EXECABORT"));
                stats.count_error(e.split(' ').next().unwrap_or("ERR"));
                bail!("target {m} rejected {}: {e}", command_name_at(&b.resp, i as usize));
            }
        }
    }
    Ok(())
}

/// A slot and its commands (with their index in the batch), in order.
type SlotPart = (u16, Vec<(u32, Bytes)>);

async fn apply_segment(
    ct: &mut ClusterTarget,
    b: &Batch,
    replid: &str,
    stats: &Stats,
    segment: Vec<(u32, u16, Bytes)>,
) -> anyhow::Result<()> {
    let check = ReplyCheck { batch: b, stats };
    let incremental = b.offset >= 0;
    let mut pending = segment;
    let mut attempt = 0u32;
    let mut first_pass = true;
    while !pending.is_empty() {
        // Group by master, then by slot (order kept within a slot).
        let mut per_node: Vec<Vec<SlotPart>> = vec![Vec::new(); ct.map.masters.len()];
        // Where each slot's part is in its master's list (a batch of a full copy touches
        // hundreds of slots per master: no search through them for every command).
        let mut part_of: HashMap<u16, usize> = HashMap::new();
        for (i, slot, cmd) in pending.drain(..) {
            let n = ct.map.node_of(slot).ok_or_else(|| anyhow!("slot {slot} is not served"))?;
            match part_of.get(&slot) {
                Some(&k) => per_node[n][k].1.push((i, cmd)),
                None => {
                    part_of.insert(slot, per_node[n].len());
                    per_node[n].push((slot, vec![(i, cmd)]));
                }
            }
        }
        let masters = ct.map.masters.clone();
        // Send every master its part, then read the replies (the masters work in parallel).
        let mut sent: Vec<(usize, Vec<SlotPart>)> = Vec::new();
        for (n, mut groups) in per_node.into_iter().enumerate() {
            let addr = &masters[n];
            if incremental && first_pass {
                let floor = ct.floor.get(addr).copied().unwrap_or(i64::MIN);
                for (slot, part) in groups.iter_mut() {
                    let done = ct.slot_done.get(slot).copied().unwrap_or(i64::MIN).max(floor);
                    part.retain(|(i, _)| b.cmd_offsets.get(*i as usize).is_none_or(|o| *o > done));
                }
                groups.retain(|(_, part)| !part.is_empty());
            }
            if groups.is_empty() {
                continue;
            }
            let mut blob = BytesMut::new();
            for (slot, part) in &groups {
                if incremental {
                    encode_command_into(&mut blob, &[&b"MULTI"[..]]);
                }
                for (_, c) in part {
                    blob.extend_from_slice(c);
                }
                if incremental {
                    let value = checkpoint_value(replid, b);
                    encode_command_into(&mut blob, &[&b"SET"[..], ct.slot_key(*slot).as_bytes(), value.as_bytes()]);
                    encode_command_into(&mut blob, &[&b"EXEC"[..]]);
                }
            }
            let c = ct.conns.get_mut(addr).ok_or_else(|| anyhow!("no connection to {addr}"))?;
            c.send_raw(&blob).await.with_context(|| format!("target {addr}"))?;
            sent.push((n, groups));
        }
        let mut retry: Vec<(u32, u16, Bytes)> = Vec::new();
        let mut why = None;
        for (n, groups) in sent {
            let addr = masters[n].clone();
            for (slot, part) in groups {
                let c = ct.conns.get_mut(&addr).ok_or_else(|| anyhow!("no connection to {addr}"))?;
                if !incremental {
                    for (i, cmd) in part {
                        let r = c.read_reply().await.with_context(|| format!("target {addr}"))?;
                        if let Some(kind) = r.first_error().and_then(redirect) {
                            why = Some(kind);
                            retry.push((i, slot, cmd));
                            continue;
                        }
                        check.reply(i, &r)?;
                    }
                    continue;
                }
                let ok = c.read_reply().await.with_context(|| format!("target {addr}"))?;
                if let Some(e) = ok.first_error() {
                    bail!("target {addr} refused MULTI: {}", printable(e));
                }
                let mut queued = Vec::with_capacity(part.len() + 1);
                for _ in 0..part.len() + 1 {
                    queued.push(c.read_reply().await.with_context(|| format!("target {addr}"))?);
                }
                let exec = c.read_reply().await.with_context(|| format!("target {addr}"))?;
                if let Reply::Array(Some(items)) = &exec {
                    for (j, item) in items.iter().enumerate() {
                        match part.get(j) {
                            Some((i, _)) => check.reply(*i, item).map_err(crate::committed)?,
                            None => {
                                if let Some(e) = item.first_error() {
                                    bail!("target {addr} refused the checkpoint write: {}", printable(e));
                                }
                            }
                        }
                    }
                    ct.slot_done.insert(slot, b.offset);
                    continue;
                }
                // EXECABORT: nothing of this slot's part was applied.
                if let Some(kind) = queued.iter().find_map(|q| q.first_error().and_then(redirect)) {
                    why = Some(kind);
                    retry.extend(part.into_iter().map(|(i, c)| (i, slot, c)));
                    continue;
                }
                let (j, e) = queued
                    .iter()
                    .enumerate()
                    .find_map(|(j, q)| q.first_error().map(|e| (j, printable(e))))
                    .unwrap_or((0, printable(exec.first_error().unwrap_or(b"EXECABORT"))));
                let i = part.get(j).map(|p| p.0).unwrap_or(0);
                stats.count_error(e.split(' ').next().unwrap_or("ERR"));
                bail!(
                    "target rejected {} on key {}: {e}",
                    command_name_at(&b.resp, i as usize),
                    command_key(&b.resp, i as usize)
                );
            }
        }
        if retry.is_empty() {
            return Ok(());
        }
        attempt += 1;
        stats.count_error(why.unwrap_or("MOVED"));
        if attempt > 60 {
            bail!("the target cluster kept redirecting commands ({}) for a minute", why.unwrap_or("MOVED"));
        }
        warn!(commands = retry.len(), reason = why.unwrap_or(""), attempt, "re-routing commands after a redirection");
        if why != Some("MOVED") {
            tokio::time::sleep(Duration::from_millis(100 * attempt.min(10) as u64)).await;
        }
        ct.refresh().await.context("refreshing the target cluster's slot map")?;
        retry.sort_by_key(|r| r.0);
        pending = retry;
        first_pass = false;
    }
    Ok(())
}
