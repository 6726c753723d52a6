//! `[filter]`: which keys, dbs and commands reach the target, and db remapping.
//!
//! The decoder applies one [`Filter`] to both halves of a session:
//!
//! - **Full copy** ([`FullCopy::entry`]): an RDB entry is skipped when its source db or its
//!   key is filtered out. A value big enough to arrive in parts is decided on its first part
//!   and that verdict holds for the rest. Function libraries are not keys: they are kept
//!   unless the command `FUNCTION` is blocked (by `block_command` or by the `scripting`
//!   group); `allow_command` does not apply to them.
//! - **Command stream** ([`Filter::command`]): commands are seen as the source replicates
//!   them (scripts as their effects, `GEOADD` as `ZADD`, relative expirations as
//!   `PEXPIREAT`, ...). A command is dropped when its name or group is blocked (or not
//!   allowed), when it applies to a filtered db, or when its keys are filtered out. `SELECT`,
//!   `MULTI` and `EXEC` are structural and never filtered. Keys are found with a static table
//!   ([`key_indexes`]); unknown commands with at least one argument have their key first,
//!   unknown commands without arguments have none.
//!
//! **Multi-key commands whose keys get mixed verdicts**: `DEL`, `UNLINK`, `EXISTS`, `TOUCH`
//! and `MSET` are rewritten to the passing keys (and dropped when none passes). Any other
//! command whose keys disagree (`RENAME` from a passing key to a blocked one, `SMOVE`,
//! `LMOVE`, `SUNIONSTORE`, `EVAL` effects with `numkeys`, `MSETNX`, ...) cannot be rewritten
//! without changing what it means: it is dropped, counted in
//! [`FilterStats::filtered_mixed`] and logged as a warning naming the command. The same
//! happens to the db commands ferry cannot map faithfully: `SWAPDB` touching a filtered db
//! or two dbs mapped to one, `FLUSHDB` of a db mapped together with another (it would flush
//! the other db's keys too), `MOVE` out of a filtered db into a copied one. A `MOVE` from a
//! copied db into a filtered one becomes a `DEL`.
//!
//! A dropped command still counts in the offsets: its bytes are acknowledged like those of
//! every other command, it is simply not forwarded.
//!
//! **db remapping** (`db_map`): the filters see source dbs; the target gets the mapped db.
//! When several source dbs land in one target db, a key present in more than one of them is
//! a collision: the full copy detects it (a warning naming the key and both source dbs, and
//! [`FilterStats::db_map_collisions`]), remembering at most [`COLLISION_TRACK_LIMIT`] keys
//! (about 40 MB) of the merged dbs by a 64-bit hash; past that, further keys are not checked
//! (one warning says so). Which value wins follows `writer.existing_key`: `rewrite` keeps the
//! last one in RDB order (the highest source db), `skip` the first, `panic` stops. The
//! target is not read, and collisions created by later writes are not detected.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::anyhow;
use bytes::Bytes;
use ferry_config::{ConfigError, FilterConfig};
use ferry_rdb::{Entry, Part};
use ferry_resp::commands::{CommandTable, Keys};
use regex::bytes::Regex;
use tracing::{info, warn};

mod groups;
pub use groups::group_commands;

/// Most (target db, key) hashes remembered during a full copy to detect db_map collisions.
pub const COLLISION_TRACK_LIMIT: usize = 2_000_000;
/// Warnings logged per kind before further events are only counted.
const WARN_LIMIT: u64 = 1000;

/// Counters of the filter (cumulative over the sessions of the process).
#[derive(Debug, Default)]
pub struct FilterStats {
    /// Keys of full copies not copied (filtered db or key).
    pub keys_filtered: AtomicU64,
    /// Commands of the stream not forwarded (any reason, mixed verdicts included).
    pub commands_filtered: AtomicU64,
    /// Multi-key commands forwarded with only their passing keys.
    pub commands_rewritten: AtomicU64,
    /// Multi-key commands dropped because their keys (or dbs) got mixed verdicts.
    pub filtered_mixed: AtomicU64,
    /// Function libraries of full copies not copied.
    pub functions_filtered: AtomicU64,
    /// Keys met in more than one source db mapped to the same target db (full copy).
    pub db_map_collisions: AtomicU64,
}

/// What to do with one command of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward,
    /// Forward this command instead.
    Rewrite(Bytes),
    Drop,
}

#[derive(Default)]
struct KeyRules {
    exact: HashSet<Vec<u8>>,
    prefix: Vec<Vec<u8>>,
    suffix: Vec<Vec<u8>>,
    regex: Vec<Regex>,
}

impl KeyRules {
    fn new(
        exact: &[String],
        prefix: &[String],
        suffix: &[String],
        regex: &[String],
        regex_field: &str,
    ) -> Result<KeyRules, ConfigError> {
        let regex = regex
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| {
                    // regex errors span several lines (the pattern, a caret, the reason): keep the reason.
                    let text = e.to_string();
                    let reason = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                    invalid(regex_field, format!("invalid regex {p:?}: {}", reason.trim_start_matches("error: ")))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyRules {
            exact: exact.iter().map(|k| k.as_bytes().to_vec()).collect(),
            prefix: prefix.iter().map(|k| k.as_bytes().to_vec()).collect(),
            suffix: suffix.iter().map(|k| k.as_bytes().to_vec()).collect(),
            regex,
        })
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.suffix.is_empty() && self.regex.is_empty()
    }

    fn matches(&self, key: &[u8]) -> bool {
        self.exact.contains(key)
            || self.prefix.iter().any(|p| key.starts_with(p))
            || self.suffix.iter().any(|s| key.ends_with(s))
            || self.regex.iter().any(|r| r.is_match(key))
    }
}

fn invalid(field: &str, message: String) -> ConfigError {
    ConfigError::Invalid { path: "config".into(), field: field.into(), message }
}

/// The compiled `[filter]` section.
#[derive(Default)]
pub struct Filter {
    allow: KeyRules,
    block: KeyRules,
    allow_db: HashSet<u64>,
    block_db: HashSet<u64>,
    /// Upper case.
    allow_command: HashSet<Vec<u8>>,
    /// Upper case; the commands of blocked groups included.
    block_command: HashSet<Vec<u8>>,
    db_map: HashMap<u64, u64>,
    /// Target dbs more than one source db lands in.
    merged_targets: HashSet<u64>,
    key_rules: bool,
    db_rules: bool,
    active: bool,
    pub stats: std::sync::Arc<FilterStats>,
}

impl Filter {
    /// A filter that lets everything through.
    pub fn pass_all() -> Filter {
        Filter::default()
    }

    /// Compiles `cfg`. Errors name the field (`filter.allow_key_regex`) and the bad value.
    pub fn new(cfg: &FilterConfig) -> Result<Filter, ConfigError> {
        let allow = KeyRules::new(
            &cfg.allow_keys,
            &cfg.allow_key_prefix,
            &cfg.allow_key_suffix,
            &cfg.allow_key_regex,
            "filter.allow_key_regex",
        )?;
        let block = KeyRules::new(
            &cfg.block_keys,
            &cfg.block_key_prefix,
            &cfg.block_key_suffix,
            &cfg.block_key_regex,
            "filter.block_key_regex",
        )?;
        let upper = |v: &[String]| v.iter().map(|c| c.trim().to_ascii_uppercase().into_bytes()).collect::<HashSet<_>>();
        let mut block_command = upper(&cfg.block_command);
        for g in &cfg.block_command_group {
            let names = group_commands(g).ok_or_else(|| {
                invalid(
                    "filter.block_command_group",
                    format!(
                        "unknown command group {g:?} (known: {})",
                        groups::GROUPS.iter().map(|g| g.0).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            block_command.extend(names.iter().map(|n| n.as_bytes().to_vec()));
        }
        let mut db_map = HashMap::new();
        for (k, v) in &cfg.db_map {
            let src: u64 =
                k.trim().parse().map_err(|_| invalid("filter.db_map", format!("key {k:?} is not a db number")))?;
            db_map.insert(src, *v);
        }
        // A target db is merged when two source dbs land in it: two mapped there, or one mapped
        // there while the db of the same number is not mapped away.
        let mut sources: HashMap<u64, usize> = HashMap::new();
        for &t in db_map.values() {
            *sources.entry(t).or_default() += 1;
        }
        let merged_targets = sources
            .into_iter()
            .filter(|&(t, n)| n + usize::from(!db_map.contains_key(&t)) >= 2)
            .map(|(t, _)| t)
            .collect();
        let mut f = Filter {
            key_rules: !allow.is_empty() || !block.is_empty(),
            allow,
            block,
            allow_db: cfg.allow_db.iter().copied().collect(),
            block_db: cfg.block_db.iter().copied().collect(),
            allow_command: upper(&cfg.allow_command),
            block_command,
            db_map,
            merged_targets,
            db_rules: false,
            active: false,
            stats: Default::default(),
        };
        f.db_rules = !f.allow_db.is_empty() || !f.block_db.is_empty() || !f.db_map.is_empty();
        f.active = f.key_rules || f.db_rules || !f.allow_command.is_empty() || !f.block_command.is_empty();
        Ok(f)
    }

    /// Whether any rule or mapping is set.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Not blocked, and allowed when allow rules are set.
    pub fn key_passes(&self, key: &[u8]) -> bool {
        !self.block.matches(key) && (self.allow.is_empty() || self.allow.matches(key))
    }

    /// For a source db.
    pub fn db_passes(&self, db: u64) -> bool {
        !self.block_db.contains(&db) && (self.allow_db.is_empty() || self.allow_db.contains(&db))
    }

    /// For a command name (any case).
    pub fn command_passes(&self, name: &[u8]) -> bool {
        let upper = name.to_ascii_uppercase();
        self.command_passes_upper(&upper)
    }

    fn command_passes_upper(&self, upper: &[u8]) -> bool {
        !self.block_command.contains(upper) && (self.allow_command.is_empty() || self.allow_command.contains(upper))
    }

    /// Whether function libraries of a full copy are copied (`FUNCTION` not blocked).
    pub fn function_passes(&self) -> bool {
        !self.block_command.contains(&b"FUNCTION"[..])
    }

    /// The target db of source db `db`.
    pub fn map_db(&self, db: u64) -> u64 {
        self.db_map.get(&db).copied().unwrap_or(db)
    }

    /// State for one full copy.
    pub fn full_copy(&self) -> FullCopy<'_> {
        FullCopy { filter: self, keep: true, target: 0, seen: HashMap::new(), full_warned: false }
    }

    /// Logs the counters (when a filter is configured).
    pub fn log_summary(&self, when: &str) {
        if !self.active {
            return;
        }
        let s = &self.stats;
        info!(
            keys_filtered = s.keys_filtered.load(Relaxed),
            functions_filtered = s.functions_filtered.load(Relaxed),
            commands_filtered = s.commands_filtered.load(Relaxed),
            commands_rewritten = s.commands_rewritten.load(Relaxed),
            filtered_mixed = s.filtered_mixed.load(Relaxed),
            db_map_collisions = s.db_map_collisions.load(Relaxed),
            "filter summary after {when}"
        );
    }

    /// Decides what happens to one command of the stream applied to source db `db`.
    pub fn command(&self, db: u64, cmd: &Bytes) -> anyhow::Result<Decision> {
        self.command_with(db, cmd, None)
    }

    /// [`Filter::command`], finding the keys with `table`, the target's own description of
    /// its commands (its key specs) when known.
    pub fn command_with(&self, db: u64, cmd: &Bytes, table: Option<&CommandTable>) -> anyhow::Result<Decision> {
        if !self.active {
            return Ok(Decision::Forward);
        }
        let name =
            ferry_resp::command_name(cmd).ok_or_else(|| anyhow!("malformed command in the replication stream"))?;
        let upper = name.to_ascii_uppercase();
        let d = self.decide(db, &upper, cmd, table)?;
        match d {
            Decision::Forward => {}
            Decision::Rewrite(_) => {
                self.stats.commands_rewritten.fetch_add(1, Relaxed);
            }
            Decision::Drop => {
                self.stats.commands_filtered.fetch_add(1, Relaxed);
            }
        }
        Ok(d)
    }

    fn mixed(&self, name: &[u8], db: u64, args: &[Bytes], why: &str) -> Decision {
        let n = self.stats.filtered_mixed.fetch_add(1, Relaxed) + 1;
        if n <= WARN_LIMIT {
            let key = args.get(1).map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            warn!(
                command = %String::from_utf8_lossy(name), db, first_arg = %key,
                "filter: dropping a command with mixed verdicts ({why}); the target may now differ from the source"
            );
            if n == WARN_LIMIT {
                warn!("filter: further mixed-verdict commands are only counted (filtered_mixed)");
            }
        }
        Decision::Drop
    }

    fn decide(&self, db: u64, upper: &[u8], cmd: &Bytes, table: Option<&CommandTable>) -> anyhow::Result<Decision> {
        if !self.command_passes_upper(upper) {
            return Ok(Decision::Drop);
        }
        // Commands that do not act on the selected db.
        let global = matches!(upper, b"FLUSHALL" | b"SWAPDB" | b"FUNCTION" | b"SCRIPT");
        if !global && !self.db_passes(db) {
            if self.db_rules && matches!(upper, b"MOVE") {
                let args = ferry_resp::parse_command(cmd)?;
                // Out of a filtered db into a copied one: the key appears where ferry cannot copy it.
                if let Some(dest) = args.get(2).and_then(|a| parse_u64(a))
                    && self.db_passes(dest)
                    && self.key_passes(&args[1])
                {
                    return Ok(self.mixed(upper, db, &args, "MOVE out of a filtered db"));
                }
            }
            return Ok(Decision::Drop);
        }
        if !self.key_rules && !self.db_rules {
            return Ok(Decision::Forward);
        }
        let mut args = ferry_resp::parse_command(cmd)?;
        let mut rewritten = false;
        if self.db_rules {
            match upper {
                b"SWAPDB" => {
                    let (Some(a), Some(b)) =
                        (args.get(1).and_then(|a| parse_u64(a)), args.get(2).and_then(|a| parse_u64(a)))
                    else {
                        return Ok(Decision::Forward);
                    };
                    if !self.db_passes(a) || !self.db_passes(b) {
                        return Ok(self.mixed(upper, db, &args, "SWAPDB of a filtered db"));
                    }
                    let (ma, mb) = (self.map_db(a), self.map_db(b));
                    if a != b && ma == mb {
                        return Ok(self.mixed(upper, db, &args, "SWAPDB of two dbs mapped to one"));
                    }
                    if (ma, mb) == (a, b) {
                        return Ok(Decision::Forward);
                    }
                    args[1] = Bytes::from(ma.to_string());
                    args[2] = Bytes::from(mb.to_string());
                    return Ok(Decision::Rewrite(ferry_resp::encode_command(&args)));
                }
                b"FLUSHDB" if self.merged_targets.contains(&self.map_db(db)) => {
                    return Ok(self.mixed(upper, db, &args, "FLUSHDB of a db mapped together with another"));
                }
                b"MOVE" if args.len() >= 3 => {
                    if let Some(dest) = parse_u64(&args[2]) {
                        if !self.key_passes(&args[1]) {
                            return Ok(Decision::Drop);
                        }
                        if !self.db_passes(dest) {
                            // The key leaves the copied data.
                            return Ok(Decision::Rewrite(ferry_resp::encode_command(&[&b"DEL"[..], &args[1]])));
                        }
                        let md = self.map_db(dest);
                        if md == self.map_db(db) && dest != db {
                            return Ok(self.mixed(upper, db, &args, "MOVE between two dbs mapped to one"));
                        }
                        if md != dest {
                            args[2] = Bytes::from(md.to_string());
                            rewritten = true;
                        }
                    }
                }
                b"COPY" => {
                    if let Some(i) = (3..args.len().saturating_sub(1)).find(|&i| args[i].eq_ignore_ascii_case(b"DB"))
                        && let Some(dest) = parse_u64(&args[i + 1])
                    {
                        if !self.db_passes(dest) {
                            return Ok(Decision::Drop);
                        }
                        let md = self.map_db(dest);
                        if md != dest {
                            args[i + 1] = Bytes::from(md.to_string());
                            rewritten = true;
                        }
                    }
                }
                _ => {}
            }
        }
        let done = |args: &[Bytes], rewritten: bool| {
            if rewritten { Decision::Rewrite(ferry_resp::encode_command(args)) } else { Decision::Forward }
        };
        if !self.key_rules {
            return Ok(done(&args, rewritten));
        }
        let keys = key_positions(upper, &args, table);
        if keys.is_empty() {
            return Ok(done(&args, rewritten));
        }
        let pass: Vec<bool> = keys.iter().map(|&i| self.key_passes(&args[i])).collect();
        if pass.iter().all(|&p| p) {
            return Ok(done(&args, rewritten));
        }
        if !pass.iter().any(|&p| p) {
            return Ok(Decision::Drop);
        }
        match upper {
            b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => {
                let mut out = vec![args[0].clone()];
                out.extend(keys.iter().zip(&pass).filter(|(_, p)| **p).map(|(&i, _)| args[i].clone()));
                Ok(Decision::Rewrite(ferry_resp::encode_command(&out)))
            }
            b"MSET" if args.len() % 2 == 1 => {
                let mut out = vec![args[0].clone()];
                for (&i, _) in keys.iter().zip(&pass).filter(|(_, p)| **p) {
                    out.push(args[i].clone());
                    out.push(args[i + 1].clone());
                }
                Ok(Decision::Rewrite(ferry_resp::encode_command(&out)))
            }
            _ => Ok(self.mixed(upper, db, &args, "some of its keys are filtered")),
        }
    }
}

fn parse_u64(a: &[u8]) -> Option<u64> {
    std::str::from_utf8(a).ok()?.parse().ok()
}

/// The positions of the keys in `args` (`args[0]` is the command, `upper` its name in upper
/// case): from `table` (the server's key specs) when it can say, else [`key_indexes`].
pub fn key_positions(upper: &[u8], args: &[Bytes], table: Option<&CommandTable>) -> Vec<usize> {
    match table.map(|t| t.keys(args)) {
        Some(Keys::At(at)) => at,
        _ => key_indexes(upper, args),
    }
}

/// The positions of the keys in `args` without a server's description of its commands (a
/// server older than key specs, or a command whose keys its specs cannot tell, like `SORT …
/// STORE`): the commands of Redis 7.0 that have keys elsewhere than first.
pub fn key_indexes(upper: &[u8], args: &[Bytes]) -> Vec<usize> {
    let argc = args.len();
    // `numkeys` at `at`, keys right after it.
    let numkeys = |at: usize| -> Vec<usize> {
        let n = args.get(at).and_then(|a| parse_u64(a)).unwrap_or(0) as usize;
        (at + 1..(at + 1).saturating_add(n).min(argc)).collect()
    };
    match upper {
        b"FLUSHALL" | b"FLUSHDB" | b"SWAPDB" | b"FUNCTION" | b"SCRIPT" | b"PUBLISH" | b"SPUBLISH" | b"PING"
        | b"MULTI" | b"EXEC" | b"DISCARD" | b"SELECT" | b"REPLCONF" | b"UNWATCH" => vec![],
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" | b"WATCH" | b"MGET" | b"PFMERGE" | b"PFCOUNT" | b"SUNIONSTORE"
        | b"SINTERSTORE" | b"SDIFFSTORE" | b"SUNION" | b"SINTER" | b"SDIFF" => (1..argc).collect(),
        b"MSET" | b"MSETNX" => (1..argc).step_by(2).collect(),
        b"BITOP" => (2..argc).collect(),
        b"RENAME" | b"RENAMENX" | b"SMOVE" | b"LMOVE" | b"BLMOVE" | b"RPOPLPUSH" | b"BRPOPLPUSH" | b"COPY"
        | b"ZRANGESTORE" | b"GEOSEARCHSTORE" => (1..argc.min(3)).collect(),
        b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" => {
            let mut k: Vec<usize> = (1..argc.min(2)).collect();
            k.extend(numkeys(2));
            k
        }
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" | b"BLMPOP" | b"BZMPOP" => {
            numkeys(2)
        }
        b"LMPOP" | b"ZMPOP" | b"SINTERCARD" | b"ZINTERCARD" | b"ZUNION" | b"ZINTER" | b"ZDIFF" => numkeys(1),
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" => (1..argc.saturating_sub(1)).collect(),
        b"XGROUP" | b"XINFO" | b"OBJECT" => (2..argc.min(3)).collect(),
        _ if argc >= 2 => vec![1],
        _ => vec![],
    }
}

/// The filter's state during one full copy.
pub struct FullCopy<'a> {
    filter: &'a Filter,
    /// Verdict of the current key (for the later parts of a big value).
    keep: bool,
    target: u64,
    /// Hash of (target db, key) → source db, for keys of merged target dbs.
    seen: HashMap<u64, u64>,
    full_warned: bool,
}

pub use ferry_checkpoint::is_own_key;

/// Whether a command of the stream writes one of ferry's own keys (ferry's writer puts
/// them in the source's stream when the source is itself the target of another pipeline).
/// Cheap for every other command: only those containing `ferry:` are parsed.
pub fn writes_own_key(cmd: &Bytes, table: Option<&CommandTable>) -> bool {
    if memchr::memmem::find(cmd, b"ferry:").is_none() {
        return false;
    }
    let Ok(args) = ferry_resp::parse_command(cmd) else { return false };
    let upper = args.first().map(|n| n.to_ascii_uppercase()).unwrap_or_default();
    let keys = key_positions(&upper, &args, table);
    !keys.is_empty() && keys.iter().all(|&i| args.get(i).is_some_and(|k| is_own_key(k)))
}

impl FullCopy<'_> {
    /// The target db of `e`, or None when it is filtered out.
    pub fn entry(&mut self, e: &Entry) -> Option<u64> {
        let f = self.filter;
        if matches!(e.part, Part::Middle | Part::Last) {
            return self.keep.then_some(self.target);
        }
        if is_own_key(&e.key) {
            self.keep = false;
            return None;
        }
        self.keep = f.db_passes(e.db) && f.key_passes(&e.key);
        self.target = f.map_db(e.db);
        if !self.keep {
            f.stats.keys_filtered.fetch_add(1, Relaxed);
            return None;
        }
        if f.merged_targets.contains(&self.target) {
            self.check_collision(e.db, &e.key);
        }
        Some(self.target)
    }

    /// Whether a function library is copied (counted when not).
    pub fn function(&mut self) -> bool {
        let pass = self.filter.function_passes();
        if !pass {
            self.filter.stats.functions_filtered.fetch_add(1, Relaxed);
        }
        pass
    }

    fn check_collision(&mut self, source_db: u64, key: &[u8]) {
        let mut h = DefaultHasher::new();
        self.target.hash(&mut h);
        key.hash(&mut h);
        let h = h.finish();
        match self.seen.get(&h) {
            Some(&other) if other != source_db => {
                let n = self.filter.stats.db_map_collisions.fetch_add(1, Relaxed) + 1;
                if n <= WARN_LIMIT {
                    warn!(
                        key = %String::from_utf8_lossy(key), source_db, other_source_db = other, target_db = self.target,
                        "db_map collision: the key exists in two source dbs mapped to the same target db"
                    );
                    if n == WARN_LIMIT {
                        warn!("further db_map collisions are only counted (db_map_collisions)");
                    }
                }
            }
            Some(_) => {}
            None if self.seen.len() < COLLISION_TRACK_LIMIT => {
                self.seen.insert(h, source_db);
            }
            None => {
                if !self.full_warned {
                    self.full_warned = true;
                    warn!(
                        limit = COLLISION_TRACK_LIMIT,
                        "db_map collision detection: key limit reached, later keys are not checked"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filter's keys come from the target's description of its commands when there is
    /// one: `MSETEX` (Valkey 9) has its keys after `numkeys`, which no hand-kept table knew.
    #[test]
    fn keys_from_the_targets_command_table() {
        use ferry_resp::Reply;
        let b = |s: &str| Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())));
        let i = Reply::Integer;
        let arr = |v: Vec<Reply>| Reply::Array(Some(v));
        let spec = arr(vec![
            b("begin_search"),
            arr(vec![b("type"), b("index"), b("spec"), arr(vec![b("index"), i(1)])]),
            b("find_keys"),
            arr(vec![
                b("type"),
                b("keynum"),
                b("spec"),
                arr(vec![b("keynumidx"), i(0), b("firstkey"), i(1), b("keystep"), i(2)]),
            ]),
        ]);
        let msetex = arr(vec![
            b("msetex"),
            i(-4),
            arr(vec![b("write"), b("movablekeys")]),
            i(0),
            i(0),
            i(0),
            arr(vec![]),
            arr(vec![]),
            arr(vec![spec]),
            arr(vec![]),
        ]);
        let table = CommandTable::from_reply(&arr(vec![msetex]));
        let f = Filter::new(&FilterConfig { block_key_prefix: vec!["no:".into()], ..Default::default() }).unwrap();
        let c = cmd(&["MSETEX", "2", "no:a", "1", "no:b", "2", "PX", "10"]);
        assert_eq!(f.command_with(0, &c, Some(&table)).unwrap(), Decision::Drop);
        let c = cmd(&["MSETEX", "2", "a", "1", "b", "2", "PX", "10"]);
        assert_eq!(f.command_with(0, &c, Some(&table)).unwrap(), Decision::Forward);
    }
    use ferry_config::Config;

    fn filter(toml: &str) -> Filter {
        let cfg = Config::parse(toml, "t").unwrap();
        Filter::new(&cfg.filter).unwrap()
    }

    fn cmd(args: &[&str]) -> Bytes {
        ferry_resp::encode_command(args)
    }

    fn entry(db: u64, key: &str, part: Part) -> Entry {
        Entry {
            db,
            key: Bytes::copy_from_slice(key.as_bytes()),
            expire_ms: None,
            rdb_type: 0,
            lru_idle: None,
            lfu_freq: None,
            part,
            value: ferry_rdb::Value::String(Bytes::new()),
            raw: None,
        }
    }

    #[test]
    fn ferrys_own_keys_never_travel() {
        assert!(writes_own_key(&cmd(&["SET", &ferry_checkpoint::key("shard-0"), "abc 12 12 0"]), None));
        assert!(writes_own_key(&cmd(&["DEL", "ferry:tmp:{1}:k"]), None));
        assert!(!writes_own_key(&cmd(&["SET", "user:1", &ferry_checkpoint::key("x")]), None));
        assert!(!writes_own_key(&cmd(&["DEL", &ferry_checkpoint::key("a"), "user:1"]), None));
        assert!(!writes_own_key(&cmd(&["SET", "ferry:other", "v"]), None));
        let f = Filter::pass_all();
        let mut fc = f.full_copy();
        assert_eq!(fc.entry(&entry(0, &ferry_checkpoint::floor_key("1", "p"), Part::Whole)), None);
        assert_eq!(fc.entry(&entry(0, "user:1", Part::Whole)), Some(0));
    }

    #[test]
    fn defaults_pass_everything() {
        let f = filter("");
        assert!(!f.is_active());
        assert!(f.key_passes(b"anything") && f.db_passes(7) && f.command_passes(b"flushall"));
        assert_eq!(f.command(3, &cmd(&["FLUSHALL"])).unwrap(), Decision::Forward);
        assert_eq!(f.map_db(4), 4);
    }

    #[test]
    fn allow_and_block_rules() {
        let f = filter(
            "[filter]\nallow_key_prefix = [\"user:\", \"cart:\"]\nallow_keys = [\"exact\"]\nallow_key_regex = [\"^order:[0-9]+$\"]\n\
             block_key_suffix = [\":tmp\"]\nblock_key_regex = [\"secret\"]\nblock_keys = [\"user:0\"]\n",
        );
        assert!(
            f.key_passes(b"user:1") && f.key_passes(b"cart:x") && f.key_passes(b"exact") && f.key_passes(b"order:12")
        );
        assert!(!f.key_passes(b"other") && !f.key_passes(b"order:x") && !f.key_passes(b"exactly"));
        assert!(!f.key_passes(b"user:1:tmp") && !f.key_passes(b"user:secret") && !f.key_passes(b"user:0"));
        // Block only: everything else passes.
        let f = filter("[filter]\nblock_key_prefix = [\"tmp:\"]\n");
        assert!(f.key_passes(b"a") && !f.key_passes(b"tmp:a"));
    }

    #[test]
    fn db_and_command_rules() {
        let f = filter(
            "[filter]\nallow_db = [0, 1]\nblock_db = [1]\nblock_command = [\"flushall\"]\nblock_command_group = [\"Scripting\", \"pubsub\"]\n",
        );
        assert!(f.db_passes(0) && !f.db_passes(1) && !f.db_passes(2));
        assert!(!f.command_passes(b"FlushAll") && !f.command_passes(b"EVAL") && !f.command_passes(b"function"));
        assert!(!f.command_passes(b"PUBLISH") && f.command_passes(b"SET"));
        assert!(!f.function_passes());
        assert_eq!(f.command(0, &cmd(&["FLUSHALL"])).unwrap(), Decision::Drop);
        assert_eq!(f.command(0, &cmd(&["SET", "k", "v"])).unwrap(), Decision::Forward);
        assert_eq!(f.command(1, &cmd(&["SET", "k", "v"])).unwrap(), Decision::Drop);
        let f = filter("[filter]\nallow_command = [\"SET\", \"DEL\"]\n");
        assert!(f.command_passes(b"set") && !f.command_passes(b"INCR"));
        assert!(f.function_passes());
        assert_eq!(f.stats.commands_filtered.load(Relaxed), 0);
    }

    #[test]
    fn bad_config_is_one_line_naming_field_and_pattern() {
        let cfg = Config::parse("[filter]\nblock_key_regex = [\"ok\", \"(unclosed\"]\n", "t").unwrap();
        let e = Filter::new(&cfg.filter).err().unwrap().to_string();
        assert!(e.contains("filter.block_key_regex") && e.contains("(unclosed") && !e.contains('\n'), "{e}");
        let cfg = Config::parse("[filter]\nblock_command_group = [\"nope\"]\n", "t").unwrap();
        let e = Filter::new(&cfg.filter).err().unwrap().to_string();
        assert!(e.contains("filter.block_command_group") && e.contains("nope"), "{e}");
        let cfg = Config::parse("[filter]\ndb_map = { x = 0 }\n", "t").unwrap();
        let e = Filter::new(&cfg.filter).err().unwrap().to_string();
        assert!(e.contains("filter.db_map"), "{e}");
        let e = Config::parse("[filter]\nallow_prefix = [\"a\"]\n", "t").unwrap_err().to_string();
        assert!(e.contains("allow_prefix") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn key_positions() {
        let idx = |a: &[&str]| {
            let args: Vec<Bytes> = a.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect();
            key_indexes(a[0].to_ascii_uppercase().as_bytes(), &args)
        };
        assert_eq!(idx(&["SET", "k", "v"]), vec![1]);
        assert_eq!(idx(&["MSET", "a", "1", "b", "2"]), vec![1, 3]);
        assert_eq!(idx(&["del", "a", "b", "c"]), vec![1, 2, 3]);
        assert_eq!(idx(&["RENAME", "a", "b"]), vec![1, 2]);
        assert_eq!(idx(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]), vec![1, 3, 4]);
        assert_eq!(idx(&["BITOP", "AND", "d", "a", "b"]), vec![2, 3, 4]);
        assert_eq!(idx(&["EVAL", "s", "2", "a", "b", "arg"]), vec![3, 4]);
        assert_eq!(idx(&["FCALL", "f", "0", "arg"]), Vec::<usize>::new());
        assert_eq!(idx(&["EVAL", "s", "9", "a"]), vec![3]);
        assert_eq!(idx(&["XGROUP", "CREATE", "s", "g", "$"]), vec![2]);
        assert_eq!(idx(&["UNKNOWNCMD", "k", "x"]), vec![1]);
        assert_eq!(idx(&["UNKNOWNCMD"]), Vec::<usize>::new());
        assert_eq!(idx(&["FLUSHALL", "ASYNC"]), Vec::<usize>::new());
    }

    #[test]
    fn mixed_verdicts() {
        let f = filter("[filter]\nblock_key_prefix = [\"no:\"]\n");
        assert_eq!(f.command(0, &cmd(&["DEL", "a", "no:b", "c"])).unwrap(), Decision::Rewrite(cmd(&["DEL", "a", "c"])));
        assert_eq!(f.command(0, &cmd(&["UNLINK", "no:a", "no:b"])).unwrap(), Decision::Drop);
        assert_eq!(
            f.command(0, &cmd(&["MSET", "no:a", "1", "b", "2"])).unwrap(),
            Decision::Rewrite(cmd(&["MSET", "b", "2"]))
        );
        assert_eq!(f.command(0, &cmd(&["RENAME", "a", "no:b"])).unwrap(), Decision::Drop);
        assert_eq!(f.stats.filtered_mixed.load(Relaxed), 1);
        assert_eq!(f.command(0, &cmd(&["RENAME", "a", "b"])).unwrap(), Decision::Forward);
        assert_eq!(f.command(0, &cmd(&["RENAME", "no:a", "no:b"])).unwrap(), Decision::Drop);
        assert_eq!(f.stats.filtered_mixed.load(Relaxed), 1);
        assert_eq!(f.stats.commands_rewritten.load(Relaxed), 2);
        assert_eq!(f.stats.commands_filtered.load(Relaxed), 3);
        assert_eq!(f.command(0, &cmd(&["FLUSHDB"])).unwrap(), Decision::Forward);
    }

    #[test]
    fn db_map_and_db_commands() {
        let f = filter("[filter]\ndb_map = { 1 = 0, \"2\" = 0, 5 = 6 }\nblock_db = [9]\n");
        assert_eq!((f.map_db(1), f.map_db(2), f.map_db(0), f.map_db(5), f.map_db(6)), (0, 0, 0, 6, 6));
        assert!(f.merged_targets.contains(&0) && f.merged_targets.contains(&6) && f.merged_targets.len() == 2);
        assert_eq!(f.command(3, &cmd(&["SWAPDB", "3", "4"])).unwrap(), Decision::Forward);
        assert_eq!(f.command(3, &cmd(&["SWAPDB", "5", "4"])).unwrap(), Decision::Rewrite(cmd(&["SWAPDB", "6", "4"])));
        assert_eq!(f.command(3, &cmd(&["SWAPDB", "1", "2"])).unwrap(), Decision::Drop);
        assert_eq!(f.command(3, &cmd(&["SWAPDB", "9", "2"])).unwrap(), Decision::Drop);
        assert_eq!(f.command(1, &cmd(&["FLUSHDB"])).unwrap(), Decision::Drop);
        assert_eq!(f.command(3, &cmd(&["FLUSHDB"])).unwrap(), Decision::Forward);
        assert_eq!(f.command(3, &cmd(&["MOVE", "k", "9"])).unwrap(), Decision::Rewrite(cmd(&["DEL", "k"])));
        assert_eq!(f.command(3, &cmd(&["MOVE", "k", "1"])).unwrap(), Decision::Rewrite(cmd(&["MOVE", "k", "0"])));
        assert_eq!(f.command(1, &cmd(&["MOVE", "k", "2"])).unwrap(), Decision::Drop);
        assert_eq!(f.command(9, &cmd(&["MOVE", "k", "3"])).unwrap(), Decision::Drop);
        assert_eq!(f.command(9, &cmd(&["SET", "k", "v"])).unwrap(), Decision::Drop);
        assert_eq!(
            f.command(3, &cmd(&["COPY", "a", "b", "DB", "5"])).unwrap(),
            Decision::Rewrite(cmd(&["COPY", "a", "b", "DB", "6"]))
        );
        assert_eq!(f.command(3, &cmd(&["COPY", "a", "b", "db", "9"])).unwrap(), Decision::Drop);
        assert_eq!(f.stats.filtered_mixed.load(Relaxed), 5);
    }

    #[test]
    fn full_copy_verdicts_parts_and_collisions() {
        let f = filter("[filter]\ndb_map = { 1 = 0, 2 = 0 }\nblock_key_prefix = [\"no:\"]\nblock_db = [3]\n");
        let mut fc = f.full_copy();
        assert_eq!(fc.entry(&entry(1, "a", Part::Whole)), Some(0));
        assert_eq!(fc.entry(&entry(1, "no:big", Part::First)), None);
        assert_eq!(fc.entry(&entry(1, "no:big", Part::Middle)), None);
        assert_eq!(fc.entry(&entry(1, "no:big", Part::Last)), None);
        assert_eq!(fc.entry(&entry(1, "big", Part::First)), Some(0));
        assert_eq!(fc.entry(&entry(1, "big", Part::Last)), Some(0));
        assert_eq!(fc.entry(&entry(2, "a", Part::Whole)), Some(0));
        assert_eq!(fc.entry(&entry(2, "b", Part::Whole)), Some(0));
        assert_eq!(fc.entry(&entry(3, "c", Part::Whole)), None);
        assert_eq!(fc.entry(&entry(4, "a", Part::Whole)), Some(4));
        assert_eq!(f.stats.db_map_collisions.load(Relaxed), 1);
        assert_eq!(f.stats.keys_filtered.load(Relaxed), 2);
        assert!(fc.function());
        let f = filter("[filter]\nblock_command = [\"FUNCTION\"]\n");
        assert!(!f.full_copy().function());
        assert_eq!(f.stats.functions_filtered.load(Relaxed), 1);
    }
}
