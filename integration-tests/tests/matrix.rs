//! The server matrix: ferry between the families and versions users run, each row against
//! real servers. The distribution's `redis-server` (7.0 on Debian 12) is always there; the
//! others come from the environment:
//!
//! - `FERRY_TEST_VALKEY_SERVER`: a `valkey-server` (8.0+), with `valkey-cli` beside it;
//! - `FERRY_TEST_REDIS_SERVER`: a newer `redis-server` (7.4+), with `redis-cli` beside it.
//!
//! A row whose server is not set is reported as ignored, and the run says, once, which
//! variable to set: never a silent pass. A custom harness (libtest-mimic) makes that
//! decision at run time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_resp::{Connection, Reply};
use integration_tests::*;
use libtest_mimic::{Arguments, Failed, Trial};

/// The server families of the matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    /// The `redis-server` on PATH (Redis 7.0 on Debian 12).
    System,
    /// `FERRY_TEST_VALKEY_SERVER`.
    Valkey,
    /// `FERRY_TEST_REDIS_SERVER`.
    Redis,
}

impl Family {
    fn var(self) -> Option<&'static str> {
        match self {
            Family::System => None,
            Family::Valkey => Some("FERRY_TEST_VALKEY_SERVER"),
            Family::Redis => Some("FERRY_TEST_REDIS_SERVER"),
        }
    }

    /// The name in the README's compatibility table.
    fn label(self) -> &'static str {
        match self {
            Family::System => "Redis 7.0",
            Family::Valkey => "Valkey 8.0",
            Family::Redis => "Redis 7.4",
        }
    }

    fn flavor(self) -> Option<Flavor> {
        match self.var() {
            None => Some(Flavor::system()),
            Some(var) => Flavor::from_env(var),
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

type Row = fn(&Flavor, &Flavor) -> Result<(), Failed>;

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let rows: Vec<(&str, Family, Family, Row)> = vec![
        ("redis70::command_table_matches_getkeys", Family::System, Family::System, command_keys),
        ("valkey8::command_table_matches_getkeys", Family::Valkey, Family::Valkey, command_keys),
        ("redis74::command_table_matches_getkeys", Family::Redis, Family::Redis, command_keys),
        ("valkey8_to_valkey8::standalone_full_incremental_resume", Family::Valkey, Family::Valkey, standalone),
        ("valkey8_to_valkey8::cluster_to_cluster", Family::Valkey, Family::Valkey, cluster),
        ("valkey8_to_valkey8::cluster_source_slot_migrations", Family::Valkey, Family::Valkey, slot_migrations),
        ("valkey8_to_valkey8::sentinel_failover_to_sentinel", Family::Valkey, Family::Valkey, sentinel),
        ("valkey8_to_valkey8::dual_channel_primary", Family::Valkey, Family::Valkey, dual_channel),
        ("redis70_to_valkey8::standalone_full_incremental_resume", Family::System, Family::Valkey, standalone),
        ("redis70_to_valkey8::cluster_to_cluster", Family::System, Family::Valkey, cluster),
        ("redis70_to_valkey8::sentinel_failover_to_sentinel", Family::System, Family::Valkey, sentinel),
        ("valkey8_to_redis70::standalone_full_incremental_resume", Family::Valkey, Family::System, standalone),
        ("valkey8_to_redis70::cluster_to_cluster", Family::Valkey, Family::System, cluster),
        ("redis70_to_redis74::standalone_full_incremental_resume", Family::System, Family::Redis, standalone),
        ("valkey8_to_redis74::standalone_full_incremental_resume", Family::Valkey, Family::Redis, standalone),
        ("redis74_to_redis74::standalone_full_incremental_resume", Family::Redis, Family::Redis, standalone),
        ("redis74_to_redis74::cluster_to_cluster", Family::Redis, Family::Redis, cluster),
        ("redis74_to_redis74::sentinel_failover_to_sentinel", Family::Redis, Family::Redis, sentinel),
        ("redis74_to_redis74::hash_field_ttls", Family::Redis, Family::Redis, hash_field_ttls),
        ("redis74_to_redis70::hash_field_ttls_stop", Family::Redis, Family::System, hash_field_ttls_into_older),
        ("redis74_to_valkey8::hash_field_ttls_stop", Family::Redis, Family::Valkey, hash_field_ttls_into_older),
    ];
    let table = compatibility_table(&rows);
    let mut missing = std::collections::BTreeSet::new();
    let trials = rows
        .into_iter()
        .map(|(name, from, to, row)| {
            let unset: Vec<&str> =
                [from, to].iter().filter_map(|f| f.var()).filter(|v| std::env::var(v).is_err()).collect();
            missing.extend(unset.iter().copied());
            let ignored = !unset.is_empty();
            let trial = Trial::test(name, move || {
                let (Some(a), Some(b)) = (from.flavor(), to.flavor()) else {
                    return Err(format!("set {} to run this row", unset.join(" and ")).into());
                };
                row(&a, &b)
            });
            trial.with_ignored_flag(ignored)
        })
        .chain(std::iter::once(Trial::test("readme_compatibility_table_is_the_matrix", move || {
            readme_table_is(&table)
        })))
        .collect();
    for var in missing {
        let what = if var.contains("VALKEY") { "a valkey-server 8.0+" } else { "a redis-server 7.4+" };
        println!("matrix: rows skipped (ignored): set {var} to {what} to run them");
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// The README's compatibility table, rendered from the rows: what each pair of servers is
/// tested with.
fn compatibility_table(rows: &[(&str, Family, Family, Row)]) -> String {
    let families = [Family::System, Family::Redis, Family::Valkey];
    let mut out = String::from("| source ↓ · target → |");
    for to in families {
        out.push_str(&format!(" {} |", to.label()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(families.len()));
    for from in families {
        out.push_str(&format!("\n| **{}** |", from.label()));
        for to in families {
            let mut what: Vec<String> = rows
                .iter()
                .filter(|(_, f, t, _)| *f == from && *t == to)
                .filter_map(|(name, ..)| name.split("::").nth(1))
                .map(|s| s.replace('_', " "))
                .collect();
            if from == Family::System && to == Family::System {
                what.insert(0, "the whole test suite".into());
            }
            out.push_str(&format!(" {} |", if what.is_empty() { "not tested".to_string() } else { what.join("; ") }));
        }
    }
    out.push('\n');
    out
}

/// The README holds `table` between its `matrix` markers.
fn readme_table_is(table: &str) -> Result<(), Failed> {
    let path = workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (begin, end) =
        ("<!-- matrix:begin (generated by integration-tests/tests/matrix.rs) -->\n", "<!-- matrix:end -->");
    let inside = readme.split_once(begin).and_then(|(_, rest)| rest.split_once(end)).map(|(t, _)| t);
    if inside != Some(table) {
        return Err(
            format!("README.md's compatibility table is not the matrix's; between the markers put:\n{table}").into()
        );
    }
    Ok(())
}

/// Fails the row with `what` and the run's logs.
fn fail(what: impl std::fmt::Display, ferry: &Ferry) -> Failed {
    format!("{what}\n{}", ferry.logs()).into()
}

/// Compares two standalone servers key by key, and their function libraries.
fn compare_servers(a: &RedisServer, b: &RedisServer, ferry: &Ferry) -> Result<usize, Failed> {
    rt().block_on(async {
        let (mut x, mut y) = (a.connect().await.unwrap(), b.connect().await.unwrap());
        let n = compare(&mut x, &mut y, 2000).await.map_err(|e| fail(e, ferry))?;
        let (fa, fb) = (functions(&mut x).await.unwrap(), functions(&mut y).await.unwrap());
        if fa != fb {
            return Err(fail(format!("functions differ: {fa} / {fb}"), ferry));
        }
        Ok(n)
    })
}

/// Standalone → standalone: every type and encoding copied in full, then the stream
/// (transactions, Lua, expirations, other dbs) with INCR/RPUSH witnesses while each stage is
/// killed and restarted: one full copy, partial resyncs, every witness exact.
fn standalone(from: &Flavor, to: &Flavor) -> Result<(), Failed> {
    let src = RedisServer::start_on(from, &["--repl-backlog-size", "64mb"]);
    let tgt = RedisServer::start_on(to, &[]);
    let keys = rt().block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) = pair_config(&src.addr(), &tgt.addr());
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let n = compare_servers(&src, &tgt, &ferry)?;
    if n < keys {
        return Err(fail(format!("{n} keys compared, {keys} written"), &ferry));
    }
    rt().block_on(async { incremental_writes(&mut src.connect().await.unwrap()).await.unwrap() });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = source_witnesses(src.addr(), 5, stop.clone());
    for stage in ["ferry-reader", "ferry-decoder", "ferry-writer"] {
        // Deliberate: writes flow for a while before the kill and while the stage is down.
        std::thread::sleep(Duration::from_millis(300));
        ferry.kill(stage);
        std::thread::sleep(Duration::from_millis(200));
        ferry.spawn(stage);
        ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    if writes < 100 || p["full_syncs"] != 1 || p["partial_resyncs"].as_u64().unwrap_or(0) < 1 {
        return Err(fail(
            format!("{writes} witness writes; one full copy, then partial resyncs expected: {p:#}"),
            &ferry,
        ));
    }
    compare_servers(&src, &tgt, &ferry)?;
    Ok(())
}

/// Cluster (3 masters) → cluster (3 masters): a pipeline per master, witnesses over every
/// slot while a writer is killed and restarted; every key and witness exact.
fn cluster(from: &Flavor, to: &Flavor) -> Result<(), Failed> {
    let src = Cluster::start_on(from, 3, 0);
    let tgt = Cluster::start_on(to, 3, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = src.witness_writer(stop.clone());
    let (cfg, status) = config_with_ports(&format!("[source]\n{}\n[target]\n{}\n", src.toml(), tgt.toml()));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_all("every pipeline incremental", 3, Duration::from_secs(60), |p| p["phase"] == "incremental");
    // Deliberate: writes flow before and after the writer's restart.
    std::thread::sleep(Duration::from_millis(500));
    ferry.kill("ferry-writer");
    ferry.spawn("ferry-writer");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    ferry.wait_applied_total(3, src.masters_offset(), Duration::from_secs(60));
    let (a, b) = (src.snapshot(), tgt.snapshot());
    let n = compare_snapshots(&a, &b, 2000).map_err(|e| fail(e, &ferry))?;
    if writes < 100 || n == 0 {
        return Err(fail(format!("{writes} witness writes, {n} keys"), &ferry));
    }
    Ok(())
}

/// [`source_slot_migrations`]: slots of a cluster source moving under witness writes.
fn slot_migrations(from: &Flavor, to: &Flavor) -> Result<(), Failed> {
    source_slot_migrations(from, to);
    Ok(())
}

/// A Sentinel-managed source (master and 2 replicas) failing over under witness writes,
/// into a Sentinel-managed target: ferry follows the new master and ends equal to it.
fn sentinel(from: &Flavor, to: &Flavor) -> Result<(), Failed> {
    let src = SentinelGroup::start_on(from, 2, 3);
    let tgt = SentinelGroup::start_on(to, 1, 3);
    let master = src.master();
    rt().block_on(async { populate(&mut master.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) = config_with_ports(&format!("[source]\n{}\n[target]\n{}\n", src.toml(), tgt.toml()));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(master_offset(&src.master_addr()), Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = sentinel_witnesses(src.sentinel_addrs(), src.name.clone(), stop.clone());
    // Deliberate: writes before the failover, and after it on the new master.
    std::thread::sleep(Duration::from_millis(500));
    let master = src.master();
    rt().block_on(async { master.connect().await.unwrap().call(&["WAIT", "2", "5000"]).await.unwrap() });
    let new_master = src.failover();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    let p = ferry.wait_caught_up(master_offset(&new_master), Duration::from_secs(60));
    if writes < 50 || !p["error"].is_null() {
        return Err(fail(format!("{writes} witness writes: {p:#}"), &ferry));
    }
    compare_at(&new_master, &tgt.master_addr()).map(drop).map_err(|e| fail(e, &ferry))
}

/// A Valkey primary with dual-channel replication on: ferry's full copy and stream work
/// (and resume) as with any primary.
fn dual_channel(from: &Flavor, to: &Flavor) -> Result<(), Failed> {
    let src =
        RedisServer::start_on(from, &["--dual-channel-replication-enabled", "yes", "--repl-backlog-size", "64mb"]);
    let tgt = RedisServer::start_on(to, &[]);
    rt().block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) = pair_config(&src.addr(), &tgt.addr());
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = source_witnesses(src.addr(), 5, stop.clone());
    // Deliberate: writes flow while the reader is down, for the partial resync to carry.
    std::thread::sleep(Duration::from_millis(300));
    ferry.kill("ferry-reader");
    std::thread::sleep(Duration::from_millis(200));
    ferry.spawn("ferry-reader");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    if p["full_syncs"] != 1 {
        return Err(fail(format!("one full copy expected: {p:#}"), &ferry));
    }
    compare_servers(&src, &tgt, &ferry)?;
    Ok(())
}

/// The keys ferry finds from a server's `COMMAND` reply (its key specs) are those the
/// server itself finds (`COMMAND GETKEYS`), for commands of every shape the server knows.
fn command_keys(server: &Flavor, _: &Flavor) -> Result<(), Failed> {
    use ferry_resp::commands::{CommandTable, Keys};
    let s = RedisServer::start_on(server, &[]);
    rt().block_on(async {
        let mut c = s.connect().await.unwrap();
        let table = CommandTable::from_reply(&c.call(&["COMMAND"]).await.unwrap());
        let samples: &[&[&str]] = &[
            &["SET", "k", "v", "EX", "10"],
            &["MSET", "a", "1", "b", "2"],
            &["DEL", "a", "b", "c"],
            &["EVAL", "return 1", "2", "x", "y", "z"],
            &["EVALSHA", "0123456789012345678901234567890123456789", "1", "x"],
            &["FCALL", "f", "1", "k", "a"],
            &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
            &["ZDIFFSTORE", "d", "2", "a", "b"],
            &["XADD", "s", "*", "f", "v"],
            &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"],
            &["XGROUP", "SETID", "s", "g", "0"],
            &["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "s1", "s2", ">", ">"],
            &["XAUTOCLAIM", "s", "g", "c", "0", "0"],
            &["LMOVE", "a", "b", "LEFT", "RIGHT"],
            &["BLMPOP", "0", "2", "a", "b", "LEFT"],
            &["LMPOP", "2", "a", "b", "LEFT"],
            &["SINTERCARD", "2", "a", "b"],
            &["RENAME", "a", "b"],
            &["BITOP", "AND", "d", "a", "b"],
            &["PFMERGE", "d", "a", "b"],
            &["COPY", "a", "b", "DB", "1"],
            &["GEOSEARCHSTORE", "d", "s", "FROMMEMBER", "m", "BYRADIUS", "1", "m"],
            &["HSET", "h", "f", "v"],
            &["HEXPIRE", "h", "10", "FIELDS", "1", "f"],
            &["HPEXPIREAT", "h", "10", "FIELDS", "1", "f"],
            &["SET", "k", "v", "IFEQ", "old"],
            &["DELIFEQ", "k", "v"],
            &["OBJECT", "ENCODING", "k"],
            &["PUBLISH", "ch", "msg"],
            &["FLUSHALL"],
            &["FUNCTION", "DELETE", "lib"],
        ];
        let mut checked = 0;
        for args in samples {
            let found = match table.keys(args) {
                Keys::At(at) => at.iter().map(|&i| args[i].to_string()).collect::<Vec<_>>(),
                Keys::Unknowable => continue,
                Keys::UnknownCommand => {
                    let known = c.call(&["COMMAND", "INFO", args[0]]).await.unwrap();
                    if matches!(&known, Reply::Array(Some(v)) if v.iter().any(|e| matches!(e, Reply::Array(Some(_))))) {
                        return Err(format!("{} is known to the server, not to the table", args[0]).into());
                    }
                    continue;
                }
            };
            let mut q = vec!["COMMAND", "GETKEYS"];
            q.extend_from_slice(args);
            let server: Vec<String> = match c.call(&q).await {
                Ok(Reply::Array(Some(keys))) => {
                    keys.iter().map(|k| String::from_utf8_lossy(k.as_bytes().unwrap()).to_string()).collect()
                }
                // "The command has no key arguments".
                _ => vec![],
            };
            if found != server {
                return Err(format!("{args:?}: the table finds {found:?}, the server {server:?}").into());
            }
            checked += 1;
        }
        if checked < 20 {
            return Err(format!("only {checked} commands checked").into());
        }
        Ok(())
    })
}

/// Hash fields with their own TTLs (Redis 7.4): in the full copy and live in the stream
/// (`HEXPIRE`, `HPEXPIREAT`, `HPERSIST`, a field that expires), exact on a 7.4 target.
fn hash_field_ttls(from: &Flavor, to: &Flavor) -> Result<(), Failed> {
    let src = RedisServer::start_on(from, &[]);
    let tgt = RedisServer::start_on(to, &[]);
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        hash_ttl_data(&mut c, "copied").await;
    });
    let (cfg, status) = pair_config(&src.addr(), &tgt.addr());
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        hash_ttl_data(&mut c, "live").await;
        c.call(&["HPERSIST", "copied:big", "FIELDS", "1", "f1"]).await.unwrap();
    });
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    for key in ["copied:small", "copied:big", "live:small", "live:big"] {
        let (a, b) = rt().block_on(async {
            let (mut x, mut y) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
            (field_ttls(&mut x, key).await, field_ttls(&mut y, key).await)
        });
        let close = a.len() == b.len()
            && a.iter().zip(&b).all(|((fa, va, ta), (fb, vb, tb))| fa == fb && va == vb && (ta - tb).abs() <= 2000);
        if !close {
            return Err(fail(format!("{key}: source {a:?}\ntarget {b:?}"), &ferry));
        }
    }
    compare_servers(&src, &tgt, &ferry)?;
    Ok(())
}

/// Hash fields with TTLs into a server without them (Redis 7.0): the pipeline stops with
/// the documented error naming the command, and nothing is half-applied silently.
fn hash_field_ttls_into_older(from: &Flavor, to: &Flavor) -> Result<(), Failed> {
    let src = RedisServer::start_on(from, &[]);
    let tgt = RedisServer::start_on(to, &[]);
    let (cfg, status) = pair_config(&src.addr(), &tgt.addr());
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("incremental", Duration::from_secs(60), |p| p["phase"] == "incremental");
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        c.call(&["HSET", "h", "a", "1", "b", "2"]).await.unwrap();
        c.call(&["HEXPIRE", "h", "1000", "FIELDS", "1", "a"]).await.unwrap();
    });
    // A session that fails for a passing reason says so too: wait for the stop that names
    // the command (the wait shows the last status and the logs if it never comes).
    ferry.wait_for("the pipeline to stop naming the command", Duration::from_secs(60), |p| {
        error_says(p, &["does not know the command HPEXPIREAT"])
    });
    drop(ferry);
    // In a full copy: the hash's type cannot be written to the older target without losing
    // its field TTLs, so the copy stops naming the key and the type.
    let src = RedisServer::start_on(from, &[]);
    let tgt = RedisServer::start_on(to, &[]);
    rt().block_on(async { hash_ttl_data(&mut src.connect().await.unwrap(), "copied").await });
    let (cfg, status) = pair_config(&src.addr(), &tgt.addr());
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("the full copy to stop naming the key and its field TTLs", Duration::from_secs(60), |p| {
        error_says(p, &["copied:", "field TTLs"])
    });
    Ok(())
}

/// Whether the pipeline's error says every one of `words`.
fn error_says(p: &serde_json::Value, words: &[&str]) -> bool {
    p["error"].as_str().is_some_and(|e| words.iter().all(|w| e.contains(w)))
}

/// Hashes with field TTLs: a small (listpack) and a big (hashtable) one, `prefix:small`
/// and `prefix:big`, some fields with TTLs in s and in ms, one that expires at once.
async fn hash_ttl_data(c: &mut Connection, prefix: &str) {
    let small = format!("{prefix}:small");
    let big = format!("{prefix}:big");
    c.call(&["HSET", &small, "a", "1", "b", "2", "c", "3"]).await.unwrap();
    c.call(&["HEXPIRE", &small, "3600", "FIELDS", "1", "a"]).await.unwrap();
    c.call(&["HPEXPIRE", &small, "7200000", "FIELDS", "1", "b"]).await.unwrap();
    let mut args = vec!["HSET".to_string(), big.clone()];
    for i in 0..600 {
        args.push(format!("f{i}"));
        args.push(format!("v{i}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.call(&refs).await.unwrap();
    let at = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 5_000_000)
        .to_string();
    c.call(&["HPEXPIREAT", &big, &at, "FIELDS", "3", "f1", "f2", "f3"]).await.unwrap();
    c.call(&["HPEXPIRE", &big, "1", "FIELDS", "1", "f4"]).await.unwrap();
    // Deliberate: f4's TTL (1 ms) runs out before anything reads the source again.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Every field of a hash with its value and its TTL in ms (-1: none), sorted.
async fn field_ttls(c: &mut Connection, key: &str) -> Vec<(String, String, i64)> {
    let Reply::Array(Some(all)) = c.call(&["HGETALL", key]).await.unwrap() else { return vec![] };
    let text = |r: &Reply| String::from_utf8_lossy(r.as_bytes().map(|b| &b[..]).unwrap_or_default()).to_string();
    let mut out = Vec::new();
    for pair in all.chunks(2) {
        let field = text(&pair[0]);
        let ttl = match c.call(&["HPTTL", key, "FIELDS", "1", &field]).await.unwrap() {
            Reply::Array(Some(v)) => match v.first() {
                Some(Reply::Integer(t)) => *t,
                _ => -3,
            },
            _ => -3,
        };
        out.push((field, text(&pair[1]), ttl));
    }
    out.sort();
    out
}
