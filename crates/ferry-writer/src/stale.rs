//! Keys left behind by a re-copy.
//!
//! A full copy rewrites the keys the snapshot holds but cannot know of the keys that are
//! gone from the source since the target last received its stream: deleted while ferry was
//! down and the source's backlog no longer reached back, or written by a master that died
//! before its replicas had them. When a full copy replaces an earlier copy of the same
//! pipeline (the target holds its checkpoint, or the marker [`RECOPY_MARKER`] a re-copy
//! leaves until it completes), the writer remembers the keys the snapshot writes and, once
//! the snapshot is applied and before the stream that follows it, deletes the target's keys
//! of the pipeline's keyspace that it did not write. The pipeline's keyspace is what it
//! copies: target dbs some copied source db maps to, keys `[filter]` lets through, and for a
//! cluster source the slots its master serves. ferry's own keys are never touched. A first
//! copy deletes nothing: keys a target held before ferry wrote into it are left alone.
//!
//! Each candidate is asked of the source before it goes (`EXISTS` in every source db that
//! maps to its target db; on a cluster, on the master serving its slot, following `ASK` to
//! the importing master during a migration): a key the source holds now is kept, since the
//! stream that follows the snapshot carries what became of it. Only keys neither the
//! snapshot nor the source holds are deleted, so a slot migration or a write racing the
//! check can never cost a key.
//!
//! `writer.remove_stale_keys = false` turns this off.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use ferry_config::Config;
use ferry_resp::cluster::{SLOTS, SlotMap, key_slot};
use ferry_resp::{Connection, Reply};
use tracing::{info, warn};

use ferry_filter::Filter;

/// The checkpoint value a re-copy leaves until it completes, so that a writer restarted in
/// the middle of it still knows the target held an earlier copy.
pub const RECOPY_MARKER: &str = "recopy";

/// Most keys deleted per `DEL`.
const DEL_BATCH: usize = 500;

/// Keys a [`KeySet`] remembers at most (about 32 MiB of hashes). Past that it forgets them,
/// and the clean-up asks the source about every key of the keyspace instead: as correct, and
/// the writer's memory stays bounded whatever the number of keys.
pub const KEYSET_LIMIT: usize = 2_000_000;

/// Hashes of the `(target db, key)` pairs a full copy wrote, up to a limit.
pub struct KeySet {
    set: HashSet<u64>,
    db: i64,
    limit: usize,
    /// More keys than `limit` were written: none is remembered.
    overflowed: bool,
}

impl Default for KeySet {
    fn default() -> Self {
        Self::with_limit(KEYSET_LIMIT)
    }
}

fn key_hash(db: i64, key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

impl KeySet {
    pub fn with_limit(limit: usize) -> Self {
        KeySet { set: HashSet::new(), db: 0, limit, overflowed: false }
    }

    /// Notes the keys of the commands in `resp` (RESP commands, `SELECT` changing the db).
    pub fn note(&mut self, resp: &Bytes) -> anyhow::Result<()> {
        let mut pos = 0;
        while pos < resp.len() {
            let n = ferry_resp::scan_command(&resp[pos..], usize::MAX)?.ok_or_else(|| anyhow!("truncated batch"))?;
            let args = ferry_resp::parse_command(&resp.slice(pos..pos + n))?;
            pos += n;
            let Some(name) = args.first() else { continue };
            let upper = name.to_ascii_uppercase();
            if upper == b"SELECT" {
                self.db = args.get(1).and_then(|a| std::str::from_utf8(a).ok()?.parse().ok()).unwrap_or(0);
                continue;
            }
            if self.overflowed {
                continue;
            }
            for i in ferry_filter::key_indexes(&upper, &args) {
                self.set.insert(key_hash(self.db, &args[i]));
            }
            if self.set.len() > self.limit {
                warn!(
                    limit = self.limit,
                    "the re-copy wrote more keys than the clean-up remembers: it will ask the source about every key of the target instead"
                );
                self.overflowed = true;
                self.set = HashSet::new();
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether the copy wrote `key` in `db`; always false once overflowed (the source is asked).
    fn contains(&self, db: i64, key: &[u8]) -> bool {
        !self.overflowed && self.set.contains(&key_hash(db, key))
    }
}

/// Which of the target's keys belong to the pipeline, and the source to ask about them.
pub struct Keyspace {
    filter: Filter,
    /// For a cluster source: the slots of the pipeline's master.
    slots: Option<Vec<bool>>,
    source: Option<Source>,
}

/// Connections to the source (its master, or every master of a cluster).
struct Source {
    cfg: ferry_config::RedisConfig,
    map: Option<SlotMap>,
    conns: HashMap<String, Connection>,
    /// The master of a standalone or sentinel-managed source.
    master: String,
}

impl Keyspace {
    /// The keyspace of the pipeline reading `source_master`. `Ok(None)` when it cannot be told
    /// (a cluster source whose master serves no slot now): nothing is deleted then.
    pub async fn of(cfg: &Config, source_master: &str) -> anyhow::Result<Option<Keyspace>> {
        let filter = Filter::new(&cfg.filter).map_err(|e| anyhow!("{e}"))?;
        let (slots, map) = if cfg.source.kind == ferry_config::DeploymentType::Cluster {
            let map = ferry_redis::cluster_map(&cfg.source, &[source_master.to_string()]).await.context("source")?;
            let Some(n) = map.master_index(source_master) else { return Ok(None) };
            (Some((0..SLOTS as u16).map(|s| map.node_of(s) == Some(n)).collect()), Some(map))
        } else {
            (None, None)
        };
        // A file is the whole truth: nothing to ask.
        let source = (cfg.source.kind != ferry_config::DeploymentType::File).then(|| Source {
            cfg: cfg.source.clone(),
            map,
            conns: HashMap::new(),
            master: source_master.to_string(),
        });
        Ok(Some(Keyspace { filter, slots, source }))
    }

    /// The copied source dbs whose keys land in target db `db` (none: not the pipeline's).
    fn source_dbs(&self, db: i64) -> Vec<u64> {
        (0..256u64).filter(|&s| db >= 0 && self.filter.db_passes(s) && self.filter.map_db(s) == db as u64).collect()
    }

    fn holds(&self, key: &[u8]) -> bool {
        !ferry_checkpoint::is_own_key(key)
            && self.filter.key_passes(key)
            && self.slots.as_ref().is_none_or(|s| s[key_slot(key) as usize])
    }

    /// The `keys` of target db `db` the source holds none of now (in any source db mapped
    /// to `db`). A key whose check fails is kept.
    async fn absent_from_source(&mut self, db: i64, keys: Vec<Bytes>) -> anyhow::Result<Vec<Bytes>> {
        let dbs = self.source_dbs(db);
        let Some(source) = self.source.as_mut() else { return Ok(keys) };
        let mut absent = keys;
        for s in dbs {
            if absent.is_empty() {
                break;
            }
            let exists = source.exists(s, &absent).await?;
            absent = absent.into_iter().zip(exists).filter(|(_, e)| !e).map(|(k, _)| k).collect();
        }
        Ok(absent)
    }
}

impl Source {
    async fn conn(&mut self, addr: &str) -> anyhow::Result<&mut Connection> {
        if !self.conns.contains_key(addr) {
            let c = ferry_redis::connect_node(&self.cfg, addr, Duration::from_secs(10)).await.context("source")?;
            self.conns.insert(addr.to_string(), c);
        }
        Ok(self.conns.get_mut(addr).expect("just inserted"))
    }

    /// Whether the source holds each of `keys` in db `db` (true when it cannot be told).
    async fn exists(&mut self, db: u64, keys: &[Bytes]) -> anyhow::Result<Vec<bool>> {
        let Some(map) = self.map.clone() else {
            let master = self.master.clone();
            let c = self.conn(&master).await?;
            let replies = exists_replies(c, Some(db), keys).await?;
            return Ok(replies.into_iter().map(|r| !matches!(r, Reply::Integer(0))).collect());
        };
        // A cluster: each key on the master serving its slot, `ASK` followed to the importing one.
        let mut out = vec![true; keys.len()];
        let mut by_master: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(n) = map.node_of(key_slot(k)) {
                by_master.entry(map.masters[n].clone()).or_default().push(i);
            }
        }
        for (addr, idx) in by_master {
            let group: Vec<Bytes> = idx.iter().map(|&i| keys[i].clone()).collect();
            let c = self.conn(&addr).await?;
            let replies = exists_replies(c, None, &group).await?;
            for (&i, r) in idx.iter().zip(replies) {
                out[i] = match r {
                    Reply::Integer(n) => n > 0,
                    Reply::Error(e) if e.starts_with(b"ASK ") => {
                        let to = String::from_utf8_lossy(&e).split(' ').nth(2).unwrap_or_default().to_string();
                        let c = self.conn(&to).await?;
                        c.send(&["ASKING"]).await?;
                        c.send(&[&b"EXISTS"[..], &keys[i]]).await?;
                        let _ = c.read_reply().await?;
                        !matches!(c.read_reply().await?, Reply::Integer(0))
                    }
                    _ => true,
                };
            }
        }
        Ok(out)
    }
}

/// The replies to `EXISTS` of each key, pipelined (after a `SELECT db` when given).
async fn exists_replies(c: &mut Connection, db: Option<u64>, keys: &[Bytes]) -> anyhow::Result<Vec<Reply>> {
    let mut blob = bytes::BytesMut::new();
    if let Some(db) = db {
        ferry_resp::encode_command_into(&mut blob, &[&b"SELECT"[..], db.to_string().as_bytes()]);
    }
    for k in keys {
        ferry_resp::encode_command_into(&mut blob, &[&b"EXISTS"[..], k]);
    }
    c.send_raw(&blob).await?;
    if db.is_some()
        && let Some(e) = c.read_reply().await?.first_error()
    {
        bail!("the source refused SELECT: {}", ferry_resp::conn::printable(e));
    }
    let mut out = Vec::with_capacity(keys.len());
    for _ in keys {
        out.push(c.read_reply().await?);
    }
    Ok(out)
}

/// The dbs of a server that hold keys (`INFO keyspace`).
async fn dbs_with_keys(c: &mut Connection) -> anyhow::Result<Vec<i64>> {
    let info = c.call(&["INFO", "keyspace"]).await?;
    let Some(text) = info.as_bytes() else { bail!("bad reply to INFO keyspace") };
    Ok(String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect())
}

/// Deletes, on one target server (a standalone or sentinel-managed master, or a master of a
/// cluster target, which has db 0 only), the keys of `keyspace` the full copy did not write.
/// Returns how many it deleted.
pub async fn remove(c: &mut Connection, written: &KeySet, keyspace: &mut Keyspace) -> anyhow::Result<u64> {
    let mut removed = 0u64;
    for db in dbs_with_keys(c).await? {
        if keyspace.source_dbs(db).is_empty() {
            continue;
        }
        c.call(&["SELECT", &db.to_string()]).await?;
        let mut stale: Vec<Bytes> = Vec::new();
        let mut cursor = b"0".to_vec();
        loop {
            let (next, keys) = ferry_redis::scan_step(c, &cursor, "*").await?;
            cursor = next;
            stale.extend(keys.into_iter().filter(|key| keyspace.holds(key) && !written.contains(db, key)));
            // Deleting while scanning is safe: SCAN returns every key present from start to end.
            if stale.len() >= DEL_BATCH || (cursor == b"0" && !stale.is_empty()) {
                let gone = keyspace.absent_from_source(db, std::mem::take(&mut stale)).await?;
                if !gone.is_empty() {
                    removed += delete(c, &gone, removed).await?;
                }
            }
            if cursor == b"0" {
                break;
            }
        }
    }
    c.call(&["SELECT", "0"]).await?;
    Ok(removed)
}

/// Unlinks `keys`; the first few of a clean-up (`so_far` removed before) are logged.
async fn delete(c: &mut Connection, keys: &[Bytes], so_far: u64) -> anyhow::Result<u64> {
    for k in keys.iter().take(5usize.saturating_sub(so_far as usize)) {
        info!(key = %ferry_resp::conn::printable(k), "removing a key the source no longer holds");
    }
    // One key per command (a cluster node refuses keys of several slots in one), pipelined.
    let mut blob = bytes::BytesMut::new();
    for k in keys {
        ferry_resp::encode_command_into(&mut blob, &[&b"UNLINK"[..], k]);
    }
    c.send_raw(&blob).await?;
    let mut removed = 0;
    for k in keys {
        match c.read_reply().await? {
            Reply::Integer(n) => removed += n as u64,
            other => bail!("unexpected reply to UNLINK {}: {other:?}", ferry_resp::conn::printable(k)),
        }
    }
    Ok(removed)
}

/// The keyspace of the pipeline reading `source_master`, or `None` when it cannot be told:
/// then nothing is removed, with a warning and an error counted (`STALE_KEYS_NOT_CHECKED`).
pub async fn keyspace_or_warn(cfg: &Config, source_master: &str, stats: &ferry_runtime::Stats) -> Option<Keyspace> {
    let why = match Keyspace::of(cfg, source_master).await {
        Ok(Some(k)) => return Some(k),
        Ok(None) => "the source master serves no slot now".to_string(),
        Err(e) => format!("{e:#}"),
    };
    stats.count_error("STALE_KEYS_NOT_CHECKED");
    warn!(source = %source_master, error = %why, "cannot tell the pipeline's keyspace: keys the source no longer holds are not removed after this re-copy");
    None
}

/// Counts and logs the outcome of a removal on the target.
pub fn removed(removed: u64, written: &KeySet, stats: &ferry_runtime::Stats) {
    stats.stale_keys_removed.fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
    if removed > 0 {
        warn!(removed, copied = written.len(), "removed the target's keys the source no longer holds (a re-copy)");
    } else {
        info!(copied = written.len(), "a re-copy found no key on the target the source no longer holds");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_set_follows_selects_and_every_key_of_a_command() {
        let mut resp = bytes::BytesMut::new();
        ferry_resp::encode_command_into(&mut resp, &[&b"SELECT"[..], b"3"]);
        ferry_resp::encode_command_into(&mut resp, &[&b"RESTORE"[..], b"a", b"0", b"payload"]);
        ferry_resp::encode_command_into(&mut resp, &[&b"RENAME"[..], b"ferry:tmp:1", b"b"]);
        ferry_resp::encode_command_into(&mut resp, &[&b"SELECT"[..], b"0"]);
        ferry_resp::encode_command_into(&mut resp, &[&b"RPUSH"[..], b"c", b"x"]);
        let mut set = KeySet::default();
        set.note(&resp.freeze()).unwrap();
        assert!(set.contains(3, b"a") && set.contains(3, b"b") && set.contains(0, b"c"));
        assert!(!set.contains(0, b"a") && !set.contains(3, b"c") && !set.contains(3, b"x"));
        assert!(set.note(&Bytes::from_static(b"*2\r\n$3\r\nDEL")).is_err());
    }

    #[test]
    fn past_its_limit_the_key_set_forgets_every_key_so_the_source_is_asked() {
        let mut set = KeySet::with_limit(3);
        let mut resp = bytes::BytesMut::new();
        for k in ["a", "b", "c"] {
            ferry_resp::encode_command_into(&mut resp, &[&b"SET"[..], k.as_bytes(), b"1"]);
        }
        set.note(&resp.split().freeze()).unwrap();
        assert!(set.contains(0, b"a") && !set.overflowed);
        ferry_resp::encode_command_into(&mut resp, &[&b"SET"[..], b"d", b"1"]);
        set.note(&resp.freeze()).unwrap();
        assert!(set.overflowed && set.set.capacity() == 0);
        assert!(!set.contains(0, b"a") && !set.contains(0, b"d"));
    }

    #[test]
    fn the_keyspace_follows_filters_db_maps_and_slots() {
        let mut cfg = Config::default();
        cfg.filter.block_key_prefix = vec!["cache:".into()];
        cfg.filter.block_db = vec![2];
        cfg.filter.db_map = [("5".to_string(), 0u64)].into_iter().collect();
        let filter = Filter::new(&cfg.filter).unwrap();
        let ks = Keyspace { filter, slots: None, source: None };
        assert!(ks.holds(b"user:1") && !ks.holds(b"cache:1") && !ks.holds(ferry_checkpoint::key("x").as_bytes()));
        assert_eq!((ks.source_dbs(0), ks.source_dbs(1)), (vec![0, 5], vec![1]));
        assert!(ks.source_dbs(2).is_empty() && ks.source_dbs(5).is_empty());
        let slot = ferry_resp::cluster::key_slot(b"user:1") as usize;
        let mut slots = vec![false; ferry_resp::cluster::SLOTS];
        slots[slot] = true;
        let ks = Keyspace { filter: Filter::pass_all(), slots: Some(slots), source: None };
        assert!(ks.holds(b"user:1") && !ks.holds(b"user:2"));
    }
}
