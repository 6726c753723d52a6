//! Filling a server with every type and encoding, and comparing two servers type-aware.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use ferry_resp::{Connection, Reply};

/// Runs a command on a connection and returns the reply, failing on an error reply.
pub async fn cmd(c: &mut Connection, args: &[&[u8]]) -> anyhow::Result<Reply> {
    Ok(c.call(args).await?)
}

/// A canonical, comparable rendering of one key's value (type-aware) and its TTL in ms.
pub async fn key_value(c: &mut Connection, key: &[u8]) -> anyhow::Result<(String, i64)> {
    let ty = c.call(&[&b"TYPE"[..], key]).await?;
    let ty = String::from_utf8_lossy(ty.as_bytes().map(|b| &b[..]).unwrap_or(b"?")).to_string();
    let v = match ty.as_str() {
        "string" => format!("{:?}", c.call(&[&b"GET"[..], key]).await?),
        "list" => format!("{:?}", c.call(&[&b"LRANGE"[..], key, b"0", b"-1"]).await?),
        "set" => format!("{:?}", sorted(c.call(&[&b"SMEMBERS"[..], key]).await?)),
        "zset" => format!("{:?}", scores(c.call(&[&b"ZRANGE"[..], key, b"0", b"-1", b"WITHSCORES"]).await?)),
        "hash" => format!("{:?}", sorted_pairs(c.call(&[&b"HGETALL"[..], key]).await?)),
        "stream" => {
            let entries = c.call(&[&b"XRANGE"[..], key, b"-", b"+"]).await?;
            let info = c.call(&[&b"XINFO"[..], b"STREAM", key, b"FULL"]).await?;
            format!("{entries:?} {:?}", strip_volatile(info))
        }
        other => format!("type {other}"),
    };
    let ttl = match c.call(&[&b"PEXPIRETIME"[..], key]).await? {
        Reply::Integer(t) => t,
        _ => -3,
    };
    Ok((format!("{ty} {v}"), ttl))
}

/// A `ZRANGE … WITHSCORES` reply as (member, score) with the scores as numbers: servers
/// write the same double differently (Redis 7.0 `%.17g`: `2.1428571428571428`, Valkey 8
/// the shortest form: `2.142857142857143`).
fn scores(r: Reply) -> Vec<(Bytes, f64)> {
    let flat = match r {
        Reply::Array(Some(items)) => items.into_iter().filter_map(|i| i.as_bytes().cloned()).collect::<Vec<_>>(),
        _ => vec![],
    };
    let score = |b: &Bytes| std::str::from_utf8(b).ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
    flat.chunks(2).map(|c| (c[0].clone(), score(&c[1]))).collect()
}

fn sorted(r: Reply) -> Vec<Bytes> {
    let mut v: Vec<Bytes> = match r {
        Reply::Array(Some(items)) => items.into_iter().filter_map(|i| i.as_bytes().cloned()).collect(),
        _ => vec![],
    };
    v.sort();
    v
}

fn sorted_pairs(r: Reply) -> Vec<(Bytes, Bytes)> {
    let flat = match r {
        Reply::Array(Some(items)) => items.into_iter().filter_map(|i| i.as_bytes().cloned()).collect::<Vec<_>>(),
        _ => vec![],
    };
    let mut pairs: Vec<(Bytes, Bytes)> = flat.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
    pairs.sort();
    pairs
}

/// XINFO STREAM FULL without the fields that depend on when the target created the stream
/// (`active-time`, `seen-time` of consumers are wall clock values that RESTORE keeps but
/// commands cannot always reproduce), and a group's `entries-read` and `lag`, which Redis's
/// own replication does not carry exactly (`XREADGROUP` replicates as `XCLAIM`: a real
/// replica of Redis 7.0 shows another `entries-read` than its master).
fn strip_volatile(r: Reply) -> Reply {
    match r {
        Reply::Array(Some(items)) => {
            let mut out = Vec::with_capacity(items.len());
            let mut skip_next = false;
            for i in items {
                if skip_next {
                    skip_next = false;
                    continue;
                }
                // Wall-clock times, and the radix tree's shape (how entries happen to be split in nodes).
                if let Some(b) = i.as_bytes()
                    && matches!(
                        &b[..],
                        b"seen-time"
                            | b"active-time"
                            | b"radix-tree-keys"
                            | b"radix-tree-nodes"
                            | b"entries-read"
                            | b"lag"
                    )
                {
                    skip_next = true;
                    continue;
                }
                out.push(strip_volatile(i));
            }
            Reply::Array(Some(out))
        }
        other => other,
    }
}

/// Every key of every db (skipping ferry's own keys): db → key → (value, expire time ms).
pub type Snapshot = BTreeMap<u32, BTreeMap<Bytes, (String, i64)>>;

pub async fn snapshot(c: &mut Connection) -> anyhow::Result<Snapshot> {
    snapshot_dbs(c, 0..16).await
}

/// Like [`snapshot`] for some dbs only (a cluster node has only db 0).
pub async fn snapshot_dbs(c: &mut Connection, dbs: std::ops::Range<u32>) -> anyhow::Result<Snapshot> {
    let mut out = BTreeMap::new();
    for db in dbs {
        let dbs = db.to_string();
        c.call(&[&b"SELECT"[..], dbs.as_bytes()]).await?;
        let mut cursor = b"0".to_vec();
        let mut keys = Vec::new();
        loop {
            let r = c.call(&[&b"SCAN"[..], &cursor, b"COUNT", b"1000"]).await?;
            let Reply::Array(Some(mut parts)) = r else { bail!("bad SCAN reply") };
            let batch = parts.pop().unwrap();
            cursor = parts.pop().unwrap().as_bytes().unwrap().to_vec();
            if let Reply::Array(Some(ks)) = batch {
                keys.extend(ks.into_iter().filter_map(|k| k.as_bytes().cloned()));
            }
            if cursor == b"0" {
                break;
            }
        }
        let mut m = BTreeMap::new();
        for k in keys {
            if ferry_checkpoint::is_own_key(&k) {
                continue;
            }
            let v = key_value(c, &k).await?;
            m.insert(k, v);
        }
        if !m.is_empty() {
            out.insert(db, m);
        }
    }
    c.call(&[&b"SELECT"[..], b"0"]).await?;
    Ok(out)
}

/// The first place where two renderings differ, with some context, and the TTLs.
fn describe_diff(x: &(String, i64), y: &(String, i64)) -> String {
    let at = x.0.bytes().zip(y.0.bytes()).position(|(a, b)| a != b).unwrap_or(x.0.len().min(y.0.len()));
    let from = at.saturating_sub(80);
    let window = |s: &str| s.get(from..(at + 120).min(s.len())).unwrap_or("").to_string();
    format!("source ...{}... ttl {} / target ...{}... ttl {}", window(&x.0), x.1, window(&y.0), y.1)
}

/// Compares two servers key by key (TTL within `ttl_tolerance_ms`); an error lists the first differences.
pub async fn compare(a: &mut Connection, b: &mut Connection, ttl_tolerance_ms: i64) -> anyhow::Result<usize> {
    let sa = snapshot(a).await?;
    let sb = snapshot(b).await?;
    compare_snapshots(&sa, &sb, ttl_tolerance_ms)
}

/// Compares two snapshots key by key; an error lists the first differences.
pub fn compare_snapshots(sa: &Snapshot, sb: &Snapshot, ttl_tolerance_ms: i64) -> anyhow::Result<usize> {
    let mut diffs = Vec::new();
    let mut total = 0;
    let dbs: std::collections::BTreeSet<u32> = sa.keys().chain(sb.keys()).copied().collect();
    let empty = BTreeMap::new();
    for db in dbs {
        let (ka, kb) = (sa.get(&db).unwrap_or(&empty), sb.get(&db).unwrap_or(&empty));
        let keys: std::collections::BTreeSet<&Bytes> = ka.keys().chain(kb.keys()).collect();
        for k in keys {
            total += 1;
            match (ka.get(k), kb.get(k)) {
                (Some(x), Some(y)) => {
                    let ttl_ok = (x.1 < 0 && y.1 < 0 && x.1 == y.1)
                        || (x.1 >= 0 && y.1 >= 0 && (x.1 - y.1).abs() <= ttl_tolerance_ms);
                    if x.0 != y.0 || !ttl_ok {
                        diffs.push(format!("db {db} key {k:?}: {}", describe_diff(x, y)));
                    }
                }
                (Some(_), None) => diffs.push(format!("db {db} key {k:?}: missing on the target")),
                (None, Some(_)) => diffs.push(format!("db {db} key {k:?}: only on the target")),
                (None, None) => {}
            }
        }
    }
    if !diffs.is_empty() {
        bail!(
            "{} of {total} keys differ:\n{}",
            diffs.len(),
            diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(total)
}

/// Fills a server with every type in small and large encodings, TTLs, several dbs and a
/// function library. Returns the number of keys written.
pub async fn populate(c: &mut Connection) -> anyhow::Result<usize> {
    populate_with(c, true).await
}

/// [`populate`], with keys in dbs 1, 7 and 15 or not (a cluster target has only db 0).
pub async fn populate_with(c: &mut Connection, other_dbs: bool) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut run = async |args: Vec<Vec<u8>>| -> anyhow::Result<()> {
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        c.call(&refs).await?;
        Ok(())
    };
    let s = |x: &str| x.as_bytes().to_vec();
    let big_text = "ferry ".repeat(20_000);
    let random: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let binary_key: Vec<u8> = vec![0, 255, 10, 13, b'k'];
    for (k, v) in [
        (s("str:empty"), s("")),
        (s("str:int"), s("12345")),
        (s("str:negint"), s("-9223372036854775808")),
        (s("str:notint"), s("007")),
        (s("str:utf8"), s("héllo wörld ✓")),
        (s("str:lzf"), s(&big_text)),
        (s("str:random"), random.clone()),
        (binary_key.clone(), vec![0u8, 1, 2, 255]),
        (s(""), s("empty key name")),
    ] {
        run(vec![s("SET"), k, v]).await?;
        n += 1;
    }
    // Lists: small listpack, big quicklist with compressible nodes.
    run(vec![s("RPUSH"), s("list:small"), s("a"), s("1"), s("-70000"), s("4294967296"), s("")]).await?;
    let mut args = vec![s("RPUSH"), s("list:big")];
    args.extend((0..3000).map(|i| format!("element-{i}-{}", "x".repeat(i % 50)).into_bytes()));
    run(args).await?;
    run(vec![s("RPUSH"), s("list:hugeelem"), random.clone(), s("tail")]).await?;
    // Sets: intset, listpack (7.2+) or hashtable, big hashtable.
    run(vec![s("SADD"), s("set:ints"), s("1"), s("-5"), s("70000"), s("9223372036854775807")]).await?;
    run(vec![s("SADD"), s("set:small"), s("a"), s("b"), s("c")]).await?;
    let mut args = vec![s("SADD"), s("set:big")];
    args.extend((0..1000).map(|i| format!("member-{i}").into_bytes()));
    run(args).await?;
    // Sorted sets: listpack with special scores, skiplist.
    run(vec![
        s("ZADD"),
        s("zset:small"),
        s("inf"),
        s("pinf"),
        s("-inf"),
        s("ninf"),
        s("0.1"),
        s("tenth"),
        s("-2.5e-05"),
        s("tiny"),
        s("1e-300"),
        s("subnormalish"),
        s("1.7976931348623157e308"),
        s("max"),
    ])
    .await?;
    let mut args = vec![s("ZADD"), s("zset:big")];
    for i in 0..500 {
        args.push(format!("{}", (i as f64) / 7.0).into_bytes());
        args.push(format!("m{i}").into_bytes());
    }
    args.push(s("-0"));
    args.push(s("negzero"));
    run(args).await?;
    // Hashes: listpack and hashtable.
    run(vec![s("HSET"), s("hash:small"), s("f1"), s("v1"), s(""), s("empty field"), s("n"), s("42")]).await?;
    let mut args = vec![s("HSET"), s("hash:big")];
    for i in 0..600 {
        args.push(format!("field-{i}").into_bytes());
        args.push(format!("value-{i}").into_bytes());
    }
    run(args).await?;
    n += 10;
    // Streams with a consumer group and pending entries.
    for i in 1..=20 {
        run(vec![
            s("XADD"),
            s("stream:1"),
            format!("{i}-1").into_bytes(),
            s("f"),
            format!("v{i}").into_bytes(),
            s("g"),
            s("x"),
        ])
        .await?;
    }
    run(vec![s("XDEL"), s("stream:1"), s("5-1")]).await?;
    run(vec![s("XGROUP"), s("CREATE"), s("stream:1"), s("grp"), s("0")]).await?;
    run(vec![
        s("XREADGROUP"),
        s("GROUP"),
        s("grp"),
        s("alice"),
        s("COUNT"),
        s("3"),
        s("STREAMS"),
        s("stream:1"),
        s(">"),
    ])
    .await?;
    run(vec![s("XGROUP"), s("CREATECONSUMER"), s("stream:1"), s("grp"), s("bob")]).await?;
    run(vec![s("XGROUP"), s("CREATE"), s("stream:empty"), s("g2"), s("$"), s("MKSTREAM")]).await?;
    n += 2;
    // TTLs in ms and s, and keys in other dbs.
    run(vec![s("SET"), s("ttl:ms"), s("v"), s("PX"), s("3600000")]).await?;
    run(vec![s("SET"), s("ttl:s"), s("v"), s("EX"), s("7200")]).await?;
    run(vec![s("RPUSH"), s("ttl:list"), s("a"), s("b")]).await?;
    run(vec![s("PEXPIRE"), s("ttl:list"), s("5000000")]).await?;
    n += 3;
    for db in if other_dbs { &["1", "7", "15"][..] } else { &[][..] } {
        run(vec![s("SELECT"), s(db)]).await?;
        run(vec![s("SET"), s("str:ascii"), format!("db {db}").into_bytes()]).await?;
        run(vec![s("HSET"), format!("h{db}").into_bytes(), s("a"), s("b")]).await?;
        n += 2;
    }
    run(vec![s("SELECT"), s("0")]).await?;
    run(vec![
        s("FUNCTION"),
        s("LOAD"),
        s("REPLACE"),
        s("#!lua name=ferrylib\nredis.register_function('ferry_echo', function(keys, args) return args[1] end)"),
    ])
    .await?;
    Ok(n)
}

/// The function libraries of a server (`FUNCTION LIST WITHCODE`), for comparison.
pub async fn functions(c: &mut Connection) -> anyhow::Result<String> {
    // Libraries, and the functions of a library, come in the server's hash order: sort them.
    let sort_functions = |lib: &Reply| -> String {
        let Reply::Array(Some(fields)) = lib else { return format!("{lib:?}") };
        let mut out = Vec::new();
        for pair in fields.chunks(2) {
            let value = match (&pair[0], pair.get(1)) {
                (k, Some(Reply::Array(Some(fns)))) if k.as_bytes().is_some_and(|k| &k[..] == b"functions") => {
                    let mut f: Vec<String> = fns.iter().map(|f| format!("{f:?}")).collect();
                    f.sort();
                    f.join(",")
                }
                (_, v) => format!("{v:?}"),
            };
            out.push(format!("{:?}={value}", pair[0]));
        }
        out.join(" ")
    };
    let mut libs: Vec<String> = match c.call(&["FUNCTION", "LIST", "WITHCODE"]).await? {
        Reply::Array(Some(items)) => items.iter().map(sort_functions).collect(),
        other => vec![format!("{other:?}")],
    };
    libs.sort();
    Ok(libs.join("\n"))
}

/// Writes during the incremental phase: MULTI/EXEC, Lua, expirations, deletes, other dbs.
pub async fn incremental_writes(c: &mut Connection) -> anyhow::Result<()> {
    c.call(&["SET", "inc:a", "1"]).await?;
    for _ in 0..50 {
        c.call(&["INCR", "inc:counter"]).await?;
        c.call(&["RPUSH", "inc:list", "x"]).await?;
    }
    c.call(&["MULTI"]).await?;
    c.call(&["INCRBY", "inc:counter", "100"]).await?;
    c.call(&["HSET", "inc:hash", "f", "v"]).await?;
    c.call(&["SELECT", "3"]).await?;
    c.call(&["SET", "inc:in-db3", "inside multi"]).await?;
    let exec = c.call(&["EXEC"]).await?;
    assert!(exec.first_error().is_none(), "{exec:?}");
    // The connection's db after EXEC with a SELECT inside is 3.
    c.call(&["SELECT", "0"]).await?;
    c.call(&[
        "EVAL",
        "redis.call('SET', KEYS[1], ARGV[1]); redis.call('ZADD', KEYS[2], 1.5, 'm'); return 1",
        "2",
        "inc:lua",
        "inc:zset",
        "from lua",
    ])
    .await?;
    c.call(&["EXPIRE", "str:int", "1000"]).await?;
    c.call(&["PERSIST", "ttl:s"]).await?;
    c.call(&["DEL", "list:big", "set:big"]).await?;
    c.call(&["SET", "inc:short-lived", "v", "PX", "1"]).await?;
    c.call(&["SELECT", "7"]).await?;
    c.call(&["SET", "inc:db7", "seven"]).await?;
    c.call(&["DEL", "str:ascii"]).await?;
    c.call(&["SELECT", "0"]).await?;
    c.call(&["XADD", "stream:1", "*", "new", "entry"]).await?;
    c.call(&["XACK", "stream:1", "grp", "1-1"]).await?;
    c.call(&["FCALL", "ferry_echo", "0", "hi"]).await?;
    // Deliberate: time passes, so inc:short-lived (PX 1) has run out before anything reads the
    // source again; asking the source about the key would itself expire it (a lazy expiry).
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// The `master_repl_offset` of the server at `addr` (from any thread, outside a runtime).
pub fn master_offset(addr: &str) -> i64 {
    block_on(async {
        let mut c = Connection::connect(addr, &ferry_resp::Auth::default(), Duration::from_secs(2)).await.unwrap();
        let info = c.call(&["INFO", "replication"]).await.unwrap();
        ferry_resp::replication::info_field(&info, "master_repl_offset").unwrap().parse().unwrap()
    })
}

/// [`compare`] of the servers at `a` and `b` (from any thread, outside a runtime).
pub fn compare_at(a: &str, b: &str) -> anyhow::Result<usize> {
    block_on(async {
        let mut x = Connection::connect(a, &ferry_resp::Auth::default(), Duration::from_secs(2)).await?;
        let mut y = Connection::connect(b, &ferry_resp::Auth::default(), Duration::from_secs(2)).await?;
        compare(&mut x, &mut y, 2000).await
    })
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}
