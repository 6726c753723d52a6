//! `ferry-verify`: compares a source and a target (standalone, cluster or Sentinel-managed)
//! key by key, type-aware, and says whether they hold the same data.
//!
//! - **Enumeration**: every db of the source is SCANned (a cluster: every master; Sentinel:
//!   the master it names), and so is the target, so keys only on the target are found too.
//!   ferry's own keys (`ferry:checkpoint:*`, `ferry:tmp:*`) are skipped.
//! - **Comparison** per key: `TYPE`, then the value — strings byte for byte, lists in order,
//!   sets and hashes as sets, sorted sets with exact scores (f64 bit patterns), streams entry
//!   by entry plus `XINFO STREAM FULL` (groups, consumers, pending entries) without its
//!   wall-clock and radix-tree fields, other types by their `DUMP` — then the expiry
//!   (`PEXPIRETIME`, or `PTTL` before Redis 7) within a tolerance. Big values are read in pages
//!   (`GETRANGE`, `LRANGE`, `ZRANGE`, `SSCAN`, `HSCAN`, `XRANGE`, `XPENDING`), so memory does
//!   not grow with the size of one key. Cluster keys are read from the master serving their slot.
//! - **Passes**: pass 1 compares everything; each later pass (after a delay) re-reads only the
//!   keys that differed in the pass before, so keys that were changing during the check settle.
//!   The differences left after the last pass are the result.
//! - **Rate**: at most `max_rate` keys per second across the whole check (a token bucket).
//!
//! The binary prints a summary line and up to N examples, never a value in full nor a
//! secret. Exit codes: 0 equal, 1 different, 2 the check could not be done (usage,
//! configuration, connection or server error).

mod compare;
mod side;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ferry_config::{DeploymentType, RedisConfig};
use ferry_resp::RespError;

use crate::compare::{compare_key, probe};
use crate::side::{Conns, Endpoint};
use ferry_runtime::RateLimiter;

/// Keys asked for per SCAN step, and keys per compared batch.
const SCAN_COUNT: usize = 1000;

/// ferry's own keys (checkpoints, values being built) are never compared.
pub use ferry_checkpoint::{OWN_KEY_PREFIXES, is_own_key};

/// Exit code: source and target hold the same data.
pub const EXIT_EQUAL: u8 = 0;
/// Exit code: differences remain after the last pass.
pub const EXIT_DIFFERENT: u8 = 1;
/// Exit code: the check could not be done (usage, configuration, connection, server error).
pub const EXIT_ERROR: u8 = 2;

/// Called after every pass with what it found.
pub type PassCallback = Arc<dyn Fn(&PassResult) + Send + Sync>;

/// What the check does.
#[derive(Clone)]
pub struct Options {
    pub source: RedisConfig,
    pub target: RedisConfig,
    /// Largest accepted difference between the expiry times of a key, in ms.
    pub ttl_tolerance_ms: u64,
    /// Passes at most (at least 1); later passes re-check only the keys that differed.
    pub passes: u32,
    /// Wait before each pass after the first.
    pub pass_delay: Duration,
    /// Keys per second across the whole check (keys compared, and keys of the target looked up
    /// on the source); 0 = no limit.
    pub max_rate: u64,
    /// Differences kept in the report as examples.
    pub examples: usize,
    /// The dbs to compare; `None`: every db either side reports in `INFO keyspace`.
    pub dbs: Option<Vec<u32>>,
    /// Time limit to connect to a server.
    pub connect_timeout: Duration,
    /// Called after every pass (progress output, tests).
    pub on_pass: Option<PassCallback>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the passwords: describe() has none.
        f.debug_struct("Options")
            .field("source", &self.source.describe())
            .field("target", &self.target.describe())
            .field("ttl_tolerance_ms", &self.ttl_tolerance_ms)
            .field("passes", &self.passes)
            .field("pass_delay", &self.pass_delay)
            .field("max_rate", &self.max_rate)
            .field("examples", &self.examples)
            .field("dbs", &self.dbs)
            .finish()
    }
}

impl Options {
    /// The defaults of the command line, for a source and a target.
    pub fn new(source: RedisConfig, target: RedisConfig) -> Options {
        Options {
            source,
            target,
            ttl_tolerance_ms: 2000,
            passes: 3,
            pass_delay: Duration::from_millis(1000),
            max_rate: 50_000,
            examples: 20,
            dbs: None,
            connect_timeout: Duration::from_secs(5),
            on_pass: None,
        }
    }

    /// Two standalone servers without credentials.
    pub fn standalone(source: &str, target: &str) -> Options {
        Options::new(standalone(source), standalone(target))
    }
}

/// A `RedisConfig` of type standalone at `addr`.
pub fn standalone(addr: &str) -> RedisConfig {
    RedisConfig { kind: DeploymentType::Standalone, address: addr.to_string(), ..Default::default() }
}

/// Why a key differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffKind {
    /// On the source, not on the target.
    MissingOnTarget,
    /// On the target, not on the source.
    OnlyOnTarget,
    TypeDiffers {
        source: String,
        target: String,
    },
    /// Same type, different value; `detail` says where (never a value in full).
    ValueDiffers {
        ty: String,
        detail: String,
    },
    /// Expiry times further apart than the tolerance (`by_ms`), or only one side expires.
    TtlDiffers {
        by_ms: Option<u64>,
        source_expires: bool,
    },
    /// The key could not be read as its type said (it changed meanwhile, or moved).
    Unreadable {
        detail: String,
    },
}

impl DiffKind {
    /// A short name: `missing`, `only_on_target`, `type`, `value`, `ttl`, `unreadable`.
    pub fn name(&self) -> &'static str {
        match self {
            DiffKind::MissingOnTarget => "missing",
            DiffKind::OnlyOnTarget => "only_on_target",
            DiffKind::TypeDiffers { .. } => "type",
            DiffKind::ValueDiffers { .. } => "value",
            DiffKind::TtlDiffers { .. } => "ttl",
            DiffKind::Unreadable { .. } => "unreadable",
        }
    }
}

impl fmt::Display for DiffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffKind::MissingOnTarget => write!(f, "missing on the target"),
            DiffKind::OnlyOnTarget => write!(f, "only on the target"),
            DiffKind::TypeDiffers { source, target } => write!(f, "type differs (source {source}, target {target})"),
            DiffKind::ValueDiffers { ty, detail } if detail.is_empty() => write!(f, "{ty} value differs"),
            DiffKind::ValueDiffers { ty, detail } => write!(f, "{ty} value differs ({detail})"),
            DiffKind::TtlDiffers { by_ms: Some(ms), .. } => write!(f, "ttl differs by {ms} ms"),
            DiffKind::TtlDiffers { by_ms: None, source_expires: true } => {
                write!(f, "ttl differs (expires on the source, not on the target)")
            }
            DiffKind::TtlDiffers { by_ms: None, source_expires: false } => {
                write!(f, "ttl differs (expires on the target, not on the source)")
            }
            DiffKind::Unreadable { detail } => write!(f, "could not be compared: {detail}"),
        }
    }
}

/// One key that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub db: u32,
    pub key: Bytes,
    pub kind: DiffKind,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "db {} key {}: {}", self.db, show(&self.key), self.kind)
    }
}

/// What one pass found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassResult {
    /// 1-based.
    pub pass: u32,
    /// Keys compared in this pass.
    pub keys: u64,
    /// Keys that differed in this pass.
    pub differing: u64,
}

/// The result of a check.
#[derive(Clone, Debug)]
pub struct Report {
    /// Keys compared in pass 1 (every key of the source, plus the keys only on the target).
    pub keys_compared: u64,
    /// Keys differing after the last pass.
    pub differing: u64,
    /// Passes run (fewer than asked when a pass found no difference).
    pub passes: u32,
    pub per_pass: Vec<PassResult>,
    /// Up to `examples` of the differences left, by db and key.
    pub examples: Vec<Difference>,
    /// The dbs compared.
    pub dbs: Vec<u32>,
}

impl Report {
    pub fn equal(&self) -> bool {
        self.differing == 0
    }

    /// [`EXIT_EQUAL`] or [`EXIT_DIFFERENT`].
    pub fn exit_code(&self) -> u8 {
        if self.equal() { EXIT_EQUAL } else { EXIT_DIFFERENT }
    }

    /// `ferry-verify: 1000003 keys compared, 0 differ (3 passes)`.
    pub fn summary_line(&self) -> String {
        format!(
            "ferry-verify: {} keys compared, {} differ ({} pass{})",
            self.keys_compared,
            self.differing,
            self.passes,
            if self.passes == 1 { "" } else { "es" }
        )
    }

    /// The summary line, then one line per example.
    pub fn render_text(&self) -> String {
        let mut out = self.summary_line();
        out.push('\n');
        for d in &self.examples {
            out.push_str(&d.to_string());
            out.push('\n');
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "equal": self.equal(),
            "keys_compared": self.keys_compared,
            "differing": self.differing,
            "passes": self.passes,
            "dbs": self.dbs,
            "per_pass": self.per_pass.iter().map(|p| serde_json::json!({
                "pass": p.pass, "keys": p.keys, "differing": p.differing,
            })).collect::<Vec<_>>(),
            "examples": self.examples.iter().map(|d| serde_json::json!({
                "db": d.db,
                "key": show(&d.key),
                "kind": d.kind.name(),
                "message": d.kind.to_string(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Longest key or value shown, in bytes.
pub const SHOW_MAX: usize = 64;

/// A key, field or member for a message: quoted, escaped, at most [`SHOW_MAX`] bytes
/// (then `...` and the full length).
pub fn show(b: &[u8]) -> String {
    let mut out = String::from("\"");
    for &c in &b[..b.len().min(SHOW_MAX)] {
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(c as char),
            _ => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push('"');
    if b.len() > SHOW_MAX {
        out.push_str(&format!("... ({} bytes)", b.len()));
    }
    out
}

/// Parses a db list: `0-15`, `0,3,5-7`.
pub fn parse_dbs(s: &str) -> Result<Vec<u32>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| x.trim().parse::<u32>().map_err(|_| format!("{x:?} is not a db number"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("empty db range {part:?}"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(part)?);
            }
        }
    }
    if out.is_empty() {
        return Err("no db given".into());
    }
    Ok(out.into_iter().collect())
}

/// Everything a worker shares with the others.
struct Shared {
    rate: RateLimiter,
    ttl_tolerance_ms: u64,
    ttl_cmd: &'static [u8],
}

/// Differences found so far: (db, key) → why.
type Diffs = BTreeMap<(u32, Bytes), DiffKind>;

/// Runs the check. An `Err` means it could not be done (connection, server or configuration
/// error); differences are in the [`Report`].
pub async fn verify(opts: &Options) -> anyhow::Result<Report> {
    let timeout = opts.connect_timeout;
    let src = Endpoint::open("source", &opts.source, timeout).await?;
    let tgt = Endpoint::open("target", &opts.target, timeout).await?;
    let dbs: Vec<u32> = match &opts.dbs {
        Some(d) => d.clone(),
        None => {
            let mut d = src.keyspace_dbs().await.context("source")?;
            d.extend(tgt.keyspace_dbs().await.context("target")?);
            d.into_iter().collect()
        }
    };
    // PEXPIRETIME (absolute, Redis 7+) when both sides have it; PTTL otherwise.
    let ttl_cmd: &'static [u8] =
        if src.major_version().await? >= 7 && tgt.major_version().await? >= 7 { b"PEXPIRETIME" } else { b"PTTL" };
    let shared =
        Arc::new(Shared { rate: RateLimiter::new(opts.max_rate), ttl_tolerance_ms: opts.ttl_tolerance_ms, ttl_cmd });

    let passes = opts.passes.max(1);
    let mut per_pass = Vec::new();
    let (keys_compared, mut diffs) = first_pass(&src, &tgt, &dbs, &shared).await?;
    per_pass.push(PassResult { pass: 1, keys: keys_compared, differing: diffs.len() as u64 });
    if let Some(cb) = &opts.on_pass {
        cb(per_pass.last().expect("one pass"));
    }
    let mut pass = 1;
    while pass < passes && !diffs.is_empty() {
        pass += 1;
        tokio::time::sleep(opts.pass_delay).await;
        let keys = diffs.len() as u64;
        diffs = recheck(&src, &tgt, diffs.into_keys().collect(), &shared).await?;
        per_pass.push(PassResult { pass, keys, differing: diffs.len() as u64 });
        if let Some(cb) = &opts.on_pass {
            cb(per_pass.last().expect("a pass"));
        }
    }
    Ok(Report {
        keys_compared,
        differing: diffs.len() as u64,
        passes: pass,
        per_pass,
        examples: diffs.into_iter().take(opts.examples).map(|((db, key), kind)| Difference { db, key, kind }).collect(),
        dbs,
    })
}

/// Pass 1: every key of the source (each scan node in its own task), then every key of the
/// target that the source does not have.
async fn first_pass(src: &Endpoint, tgt: &Endpoint, dbs: &[u32], shared: &Arc<Shared>) -> anyhow::Result<(u64, Diffs)> {
    let mut total = 0;
    let mut diffs = Diffs::new();
    for &db in dbs {
        for from_source in [true, false] {
            let scanned = if from_source { src } else { tgt };
            let mut tasks = tokio::task::JoinSet::new();
            for node in scanned.scan_nodes(db) {
                let (src, tgt, shared) = (src.clone(), tgt.clone(), shared.clone());
                tasks.spawn(async move { scan_node(src, tgt, db, node, from_source, &shared).await });
            }
            while let Some(r) = tasks.join_next().await {
                let (n, d) = r.context("a worker failed")??;
                total += n;
                diffs.extend(d);
            }
        }
    }
    Ok((total, diffs))
}

/// SCANs one node of one side in `db` and compares what it finds. From the source: every key.
/// From the target: the keys the source does not have (the others were compared already).
async fn scan_node(
    src: Endpoint,
    tgt: Endpoint,
    db: u32,
    node: String,
    from_source: bool,
    shared: &Shared,
) -> anyhow::Result<(u64, Diffs)> {
    let (mut s, mut t) = (Conns::new(src), Conns::new(tgt));
    let mut diffs = Diffs::new();
    let mut total = 0;
    let mut cursor = Bytes::from_static(b"0");
    loop {
        let scanning = if from_source { &mut s } else { &mut t };
        let (next, mut keys) =
            scanning.scan(&node, db, &cursor, SCAN_COUNT).await.with_context(|| scanning.ep.name.to_string())?;
        keys.retain(|k| !is_own_key(k));
        if !from_source && !keys.is_empty() {
            // Only the keys the source lacks.
            shared.rate.acquire(keys.len() as u64).await;
            s.refresh_if_stale().await?;
            let exists = s.per_key(db, &keys, |k| vec![vec![&b"EXISTS"[..], k]]).await.context("source")?;
            keys = keys
                .into_iter()
                .zip(exists)
                .filter(|(_, e)| !matches!(e.as_deref(), Some([ferry_resp::Reply::Integer(1)])))
                .map(|(k, _)| k)
                .collect();
        }
        total += keys.len() as u64;
        compare_batch(&mut s, &mut t, db, keys, shared, &mut diffs).await?;
        if &next[..] == b"0" {
            return Ok((total, diffs));
        }
        cursor = next;
    }
}

/// A later pass: re-reads the keys that differed.
async fn recheck(src: &Endpoint, tgt: &Endpoint, keys: Vec<(u32, Bytes)>, shared: &Shared) -> anyhow::Result<Diffs> {
    let (mut s, mut t) = (Conns::new(src.clone()), Conns::new(tgt.clone()));
    let mut diffs = Diffs::new();
    let mut by_db: BTreeMap<u32, Vec<Bytes>> = BTreeMap::new();
    for (db, k) in keys {
        by_db.entry(db).or_default().push(k);
    }
    for (db, keys) in by_db {
        for chunk in keys.chunks(SCAN_COUNT) {
            compare_batch(&mut s, &mut t, db, chunk.to_vec(), shared, &mut diffs).await?;
        }
    }
    Ok(diffs)
}

/// Compares a batch of keys: one pipelined probe per side, then key by key.
async fn compare_batch(
    s: &mut Conns,
    t: &mut Conns,
    db: u32,
    keys: Vec<Bytes>,
    shared: &Shared,
    diffs: &mut Diffs,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    shared.rate.acquire(keys.len() as u64).await;
    s.refresh_if_stale().await?;
    t.refresh_if_stale().await?;
    let (ps, pt) = tokio::join!(probe(s, db, &keys, shared.ttl_cmd), probe(t, db, &keys, shared.ttl_cmd));
    let (ps, pt) = (ps.context("source")?, pt.context("target")?);
    for ((key, a), b) in keys.into_iter().zip(&ps).zip(&pt) {
        let kind = match compare_key(s, t, db, &key, a, b, shared.ttl_tolerance_ms).await {
            Ok(k) => k,
            // An error reply about this key (it changed type, moved...): re-checked next pass.
            Err(RespError::Server { reply, .. }) => {
                Some(DiffKind::Unreadable { detail: reply.chars().take(SHOW_MAX * 2).collect() })
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(kind) = kind {
            diffs.insert((db, key), kind);
        }
    }
    Ok(())
}

/// The command line of `ferry-verify`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "ferry-verify",
    version,
    about = "Compares a Redis source and target key by key (type-aware, TTLs within a tolerance).",
    long_about = "Compares a Redis source and target key by key (type-aware, TTLs within a tolerance), \
in passes that re-check only the keys that differed, so keys changing during the check settle. \
ferry's own keys (its checkpoints and the values it is building) are skipped.\n\n\
Exit codes: 0 the source and the target hold the same data; 1 they differ; 2 the check could \
not be done (bad arguments or configuration, a server that cannot be reached, an error reply).\n\n\
With --source/--target the passwords come from FERRY_SOURCE_PASSWORD / FERRY_TARGET_PASSWORD."
)]
pub struct Args {
    /// ferry's configuration file: its [source] and [target] are compared.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["source", "target"], required_unless_present_all = ["source", "target"])]
    pub config: Option<PathBuf>,
    /// A standalone source, host:port (instead of --config).
    #[arg(long, value_name = "ADDR", requires = "target")]
    pub source: Option<String>,
    /// A standalone target, host:port (instead of --config).
    #[arg(long, value_name = "ADDR", requires = "source")]
    pub target: Option<String>,
    /// Largest accepted difference between the expiry times of a key.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub ttl_tolerance_ms: u64,
    /// Passes at most; each pass after the first re-checks only the keys that differed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
    /// Wait before each pass after the first.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub pass_delay_ms: u64,
    /// Keys per second across the whole check (0: no limit). Both the keys compared and the
    /// target's keys looked up on the source (to find keys only on the target) count.
    #[arg(long, value_name = "KEYS", default_value_t = 50_000)]
    pub max_rate: u64,
    /// Differences printed at most.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub examples: usize,
    /// Dbs to compare, e.g. 0-15 or 0,3,5-7 (default: every db either side reports in INFO keyspace).
    #[arg(long, value_name = "LIST", value_parser = parse_db_list)]
    pub dbs: Option<DbList>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A parsed `--dbs`.
#[derive(Clone, Debug)]
pub struct DbList(pub Vec<u32>);

fn parse_db_list(s: &str) -> Result<DbList, String> {
    parse_dbs(s).map(DbList)
}

impl Args {
    /// The options these arguments ask for (reads the configuration file).
    pub fn options(&self) -> anyhow::Result<Options> {
        let (source, target) = match (&self.config, &self.source, &self.target) {
            (Some(path), _, _) => {
                let cfg = ferry_config::Config::load(path)?;
                (cfg.source, cfg.target)
            }
            (None, Some(s), Some(t)) => {
                let mut source = standalone(s);
                let mut target = standalone(t);
                source.password = std::env::var("FERRY_SOURCE_PASSWORD").unwrap_or_default();
                target.password = std::env::var("FERRY_TARGET_PASSWORD").unwrap_or_default();
                (source, target)
            }
            _ => anyhow::bail!("give --config FILE, or --source ADDR and --target ADDR"),
        };
        let mut o = Options::new(source, target);
        o.ttl_tolerance_ms = self.ttl_tolerance_ms;
        o.passes = self.passes;
        o.pass_delay = Duration::from_millis(self.pass_delay_ms);
        o.max_rate = self.max_rate;
        o.examples = self.examples;
        o.dbs = self.dbs.as_ref().map(|d| d.0.clone());
        if !self.quiet {
            o.on_pass = Some(Arc::new(|p: &PassResult| {
                eprintln!("ferry-verify: pass {}: {} keys compared, {} differ", p.pass, p.keys, p.differing);
            }));
        }
        Ok(o)
    }
}

/// The whole program after argument parsing: runs the check, prints, and returns the exit code.
pub async fn run(args: Args) -> u8 {
    let res = async {
        let opts = args.options()?;
        verify(&opts).await
    }
    .await;
    match res {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render_text());
            }
            report.exit_code()
        }
        Err(e) => {
            let msg = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("ferry-verify: error: {msg}");
            EXIT_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_lists() {
        assert_eq!(parse_dbs("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_dbs("5,0-1, 3").unwrap(), vec![0, 1, 3, 5]);
        assert!(parse_dbs("3-1").is_err());
        assert!(parse_dbs("x").is_err());
        assert!(parse_dbs("").is_err());
    }

    #[test]
    fn shown_keys_are_escaped_and_bounded() {
        assert_eq!(show(b"foo"), "\"foo\"");
        assert_eq!(show(b"a\"b\x00\n"), "\"a\\\"b\\x00\\n\"");
        let long = vec![b'x'; 100];
        let s = show(&long);
        assert!(s.ends_with("... (100 bytes)") && s.len() < 90, "{s}");
    }

    #[test]
    fn messages() {
        let d = Difference { db: 0, key: Bytes::from_static(b"foo"), kind: DiffKind::MissingOnTarget };
        assert_eq!(d.to_string(), "db 0 key \"foo\": missing on the target");
        let k = DiffKind::ValueDiffers { ty: "string".into(), detail: String::new() };
        assert_eq!(k.to_string(), "string value differs");
        assert_eq!(
            DiffKind::TtlDiffers { by_ms: Some(5321), source_expires: true }.to_string(),
            "ttl differs by 5321 ms"
        );
        let r =
            Report { keys_compared: 1000003, differing: 0, passes: 3, per_pass: vec![], examples: vec![], dbs: vec![] };
        assert_eq!(r.summary_line(), "ferry-verify: 1000003 keys compared, 0 differ (3 passes)");
    }

    #[test]
    fn options_debug_hides_passwords() {
        let mut o = Options::standalone("a:1", "b:2");
        o.source.password = "s3cret".into();
        assert!(!format!("{o:?}").contains("s3cret"));
    }
}
