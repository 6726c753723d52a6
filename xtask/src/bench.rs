//! `cargo xtask bench`: ferry against Redis's own tools, measured in one run on the same
//! machine, reported as ratios where a baseline exists (the machines are shared and noisy:
//! absolute numbers mean little, ratios against a baseline of the same run mean more).
//!
//! Phases, each bounded in time:
//! 1. fill a source `redis-server` with a deterministic data set;
//! 2. baselines for the full copy: a native replica's full sync, and `redis-cli --pipe`
//!    loading the same data set (written as RESP to a file) into an empty server;
//! 3. ferry's full copy into a new target (start to `incremental` with lag 0); ferry and
//!    the target then stay up for the next phases;
//! 4. incremental at a sustained rate: `redis-benchmark` writes on the source while
//!    `/status` is sampled every 100 ms (max lag, catch-up time, applied bytes/s);
//! 5. end-to-end lag at a fixed moderate rate: probe keys holding their write time are
//!    written on the source and polled on the target.
//!
//! Environment: `FERRY_BENCH_RATE` (writes/s of phase 5, default 20000),
//! `FERRY_BENCH_REQUESTS` (`-n` of redis-benchmark per command, default 500000, 50000
//! with --quick), `FERRY_BENCH_LAG_SECS` (length of phase 5, default 5, 2 with --quick).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_resp::{Connection, Reply};
use integration_tests::{Cluster, RedisServer, config_with_ports, http_get, pair_config};
use serde_json::json;

/// Options of a bench run.
pub struct BenchOpts {
    pub keys: u64,
    pub value_size: usize,
    /// Short phases (CI).
    pub quick: bool,
    /// Release builds (the default); debug ones only check that the bench runs.
    pub release: bool,
    /// Profile the full copies with `perf` (see [`Profiler`]).
    pub profile: bool,
}

/// Knobs read from the environment (no CLI flag for them).
struct EnvOpts {
    quick: bool,
    rate: u64,
    requests: u64,
    lag_secs: f64,
    huge: HugeOpts,
}

/// The huge-key data set: one list, one string and one hash, each far bigger than anything
/// ferry may hold in memory at once.
struct HugeOpts {
    list_bytes: u64,
    string_bytes: u64,
    hash_fields: u64,
    /// A bitmap made with one `SETBIT` at its last bit: almost all zeros, so the RDB holds it
    /// LZF-compressed to a few MB (decompressed a chunk at a time, never whole).
    bitmap_bytes: u64,
    /// Profile its full copy (`--profile`).
    profile: bool,
}

impl EnvOpts {
    fn read(opts: &BenchOpts) -> anyhow::Result<EnvOpts> {
        let quick = opts.quick;
        let num = |name: &str, default: f64| -> anyhow::Result<f64> {
            match std::env::var(name) {
                Ok(v) => match v.trim().parse::<f64>() {
                    Ok(n) if n > 0.0 && n.is_finite() => Ok(n),
                    _ => bail!("{name}={v:?}: expected a positive number"),
                },
                Err(_) => Ok(default),
            }
        };
        Ok(EnvOpts {
            quick,
            rate: num("FERRY_BENCH_RATE", 20_000.0)? as u64,
            requests: num("FERRY_BENCH_REQUESTS", if quick { 50_000.0 } else { 500_000.0 })? as u64,
            lag_secs: num("FERRY_BENCH_LAG_SECS", if quick { 2.0 } else { 5.0 })?,
            huge: HugeOpts {
                list_bytes: (num("FERRY_BENCH_HUGE_LIST_MB", if quick { 20.0 } else { 500.0 })? * 1e6) as u64,
                string_bytes: (num("FERRY_BENCH_HUGE_STRING_MB", if quick { 5.0 } else { 50.0 })? * 1e6) as u64,
                hash_fields: num("FERRY_BENCH_HUGE_HASH_FIELDS", if quick { 100_000.0 } else { 10_000_000.0 })? as u64,
                bitmap_bytes: (num("FERRY_BENCH_HUGE_BITMAP_MB", if quick { 32.0 } else { 512.0 })? * 1e6) as u64,
                profile: opts.profile,
            },
        })
    }
}

/// Appends the command that creates key number `i` of the data set to `buf`.
/// 70 % strings of `value.len()` bytes, 10 % hashes, 10 % lists, 5 % sets, 5 % sorted
/// sets (10 small elements each), and a TTL on every 1000th key.
fn encode_key(buf: &mut bytes::BytesMut, i: u64, value: &[u8]) {
    let key = format!("bench:{i:010}");
    let args: Vec<Vec<u8>> = if i.is_multiple_of(1000) {
        vec![b"SET".to_vec(), key.into_bytes(), value.to_vec(), b"EX".to_vec(), b"86400".to_vec()]
    } else {
        match i % 20 {
            0..=13 => vec![b"SET".to_vec(), key.into_bytes(), value.to_vec()],
            14 | 15 => {
                let mut a = vec![b"HSET".to_vec(), key.into_bytes()];
                for f in 0..10 {
                    a.push(format!("field{f}").into_bytes());
                    a.push(value[..value.len().min(32)].to_vec());
                }
                a
            }
            16 | 17 => {
                let mut a = vec![b"RPUSH".to_vec(), key.into_bytes()];
                a.extend((0..10).map(|e| format!("element-{e}-{i}").into_bytes()));
                a
            }
            18 => {
                let mut a = vec![b"SADD".to_vec(), key.into_bytes()];
                a.extend((0..10).map(|e| format!("member-{e}").into_bytes()));
                a
            }
            _ => {
                let mut a = vec![b"ZADD".to_vec(), key.into_bytes()];
                for e in 0..10 {
                    a.push(format!("{}.5", e * 3).into_bytes());
                    a.push(format!("m{e}").into_bytes());
                }
                a
            }
        }
    };
    ferry_resp::encode_command_into(buf, &args);
}

fn string_value(value_size: usize) -> Vec<u8> {
    (0..value_size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Fills `c` with `keys` keys, deterministically (see [`encode_key`]).
pub async fn fill(c: &mut Connection, keys: u64, value_size: usize) -> anyhow::Result<()> {
    let mut buf = bytes::BytesMut::with_capacity(4 << 20);
    let mut pending = 0u64;
    let value = string_value(value_size);
    for i in 0..keys {
        encode_key(&mut buf, i, &value);
        pending += 1;
        if pending == 2000 {
            flush(c, &mut buf, pending).await?;
            pending = 0;
        }
    }
    flush(c, &mut buf, pending).await
}

/// Writes the same data set as [`fill`] as RESP to `path`; returns its size in bytes.
fn write_resp_file(path: &Path, keys: u64, value_size: usize) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = bytes::BytesMut::with_capacity(8 << 20);
    let value = string_value(value_size);
    let mut total = 0u64;
    for i in 0..keys {
        encode_key(&mut buf, i, &value);
        if buf.len() >= 4 << 20 {
            f.write_all(&buf)?;
            total += buf.len() as u64;
            buf.clear();
        }
    }
    f.write_all(&buf)?;
    total += buf.len() as u64;
    f.flush()?;
    Ok(total)
}

async fn flush(c: &mut Connection, buf: &mut bytes::BytesMut, n: u64) -> anyhow::Result<()> {
    c.send_raw(buf).await?;
    buf.clear();
    for _ in 0..n {
        if let Reply::Error(e) = c.read_reply().await? {
            bail!("fill: {}", String::from_utf8_lossy(&e));
        }
    }
    Ok(())
}

/// Fills `c` with the huge-key data set: `huge:list` (elements of 1 KiB), `huge:string` and
/// `huge:hash` (small fields).
async fn fill_huge(c: &mut Connection, h: &HugeOpts) -> anyhow::Result<()> {
    let mut buf = bytes::BytesMut::with_capacity(8 << 20);
    let mut pending = 0u64;
    let element = string_value(1024);
    let mut left = h.list_bytes.div_ceil(1024);
    while left > 0 {
        let n = left.min(256);
        let mut args: Vec<&[u8]> = vec![b"RPUSH", b"huge:list"];
        args.extend(std::iter::repeat_n(&element[..], n as usize));
        ferry_resp::encode_command_into(&mut buf, &args);
        (left, pending) = (left - n, pending + 1);
        if pending == 16 {
            flush(c, &mut buf, pending).await?;
            pending = 0;
        }
    }
    let chunk = string_value(1 << 20);
    let mut written = 0u64;
    while written < h.string_bytes {
        let n = (h.string_bytes - written).min(chunk.len() as u64) as usize;
        let cmd: &[u8] = if written == 0 { b"SET" } else { b"APPEND" };
        ferry_resp::encode_command_into(&mut buf, &[cmd, b"huge:string", &chunk[..n]]);
        (written, pending) = (written + n as u64, pending + 1);
        if pending == 16 {
            flush(c, &mut buf, pending).await?;
            pending = 0;
        }
    }
    let mut field = 0u64;
    while field < h.hash_fields {
        let end = (field + 1000).min(h.hash_fields);
        let kv: Vec<Vec<u8>> =
            (field..end).flat_map(|f| [format!("f{f}").into_bytes(), format!("v{f}").into_bytes()]).collect();
        let mut args: Vec<&[u8]> = vec![b"HSET", b"huge:hash"];
        args.extend(kv.iter().map(|a| &a[..]));
        ferry_resp::encode_command_into(&mut buf, &args);
        (field, pending) = (end, pending + 1);
        if pending == 64 {
            flush(c, &mut buf, pending).await?;
            pending = 0;
        }
    }
    let last_bit = (h.bitmap_bytes * 8).saturating_sub(1).to_string();
    ferry_resp::encode_command_into(&mut buf, &[&b"SETBIT"[..], b"huge:bitmap", last_bit.as_bytes(), b"1"]);
    flush(c, &mut buf, pending + 1).await
}

/// The huge-key phase: a native replica and ferry copy a source holding only the huge keys;
/// what matters is ferry's peak RSS (values are streamed in chunks, never held whole).
fn huge_keys(rt: &tokio::runtime::Runtime, bins: &Path, dir: &Path, h: &HugeOpts) -> anyhow::Result<serde_json::Value> {
    let src = RedisServer::start(&["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]);
    rt.block_on(async { fill_huge(&mut src.connect().await?, h).await }).context("fill")?;
    let used = rt.block_on(async { info(&mut src.connect().await?, "used_memory_human").await })?;
    eprintln!("huge keys: source holds {used}; native replica...");
    let native = rt.block_on(native_replica(&src))?;
    eprintln!("huge keys: native replica {native:.2}s; ferry...");
    let run_dir = dir.join("huge-keys");
    std::fs::create_dir_all(&run_dir)?;
    let (ferry, secs, details) = ferry_full_copy(bins, &src, &run_dir, h.profile)?;
    let sizes = [("LLEN", "huge:list"), ("STRLEN", "huge:string"), ("HLEN", "huge:hash"), ("STRLEN", "huge:bitmap")];
    let equal = rt.block_on(async {
        let (mut a, mut b) = (src.connect().await?, ferry.tgt.connect().await?);
        let mut out = serde_json::Map::new();
        for (cmd, key) in sizes {
            let (x, y) = (a.call(&[cmd, key]).await?, b.call(&[cmd, key]).await?);
            if x != y {
                bail!("{key}: {cmd} is {x:?} on the source, {y:?} on the target");
            }
            out.insert(key.into(), json!(format!("{x:?}")));
        }
        anyhow::Ok(out)
    })?;
    drop(ferry);
    Ok(json!({
        "list_mb": h.list_bytes as f64 / 1e6,
        "string_mb": h.string_bytes as f64 / 1e6,
        "hash_fields": h.hash_fields,
        "bitmap_mb": h.bitmap_bytes as f64 / 1e6,
        "source_used_memory": used,
        "native_replica_full_sync_s": native,
        "ferry_full_copy_s": secs,
        "ratio_ferry_over_native": secs / native,
        "peak_rss_mib": details["peak_rss_mib"],
        "profile": details["profile"],
        "sizes_on_both_sides": equal,
    }))
}

/// Micro-benchmarks, in release builds of the libraries' own examples: the RDB parser on the
/// source's dump (against `redis-check-rdb`, Redis's own loader, on the same file) and RESP
/// framing on the data set's RESP file.
fn micro(bins: &Path, rdb: &Path, resp: &Path, release: bool) -> anyhow::Result<serde_json::Value> {
    let st = integration_tests::cargo_command()
        .args(["build", "--quiet", "-p", "ferry-rdb", "-p", "ferry-resp", "--examples"])
        .args(release.then_some("--release"))
        .status()
        .context("cannot run cargo build")?;
    if !st.success() {
        bail!("building the micro-benchmarks failed");
    }
    let example = |name: &str, file: &Path| -> anyhow::Result<serde_json::Value> {
        let out = Command::new(bins.join("examples").join(name)).arg(file).output()?;
        if !out.status.success() {
            bail!("{name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let parse = example("parse_throughput", rdb)?;
    let mut check_best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let out = Command::new("redis-check-rdb").arg(rdb).output().context("cannot run redis-check-rdb")?;
        if !out.status.success() {
            bail!("redis-check-rdb {}: {}", rdb.display(), String::from_utf8_lossy(&out.stdout).trim());
        }
        check_best = check_best.min(t0.elapsed().as_secs_f64());
    }
    let bytes = std::fs::metadata(rdb)?.len() as f64;
    let check_mb_per_s = bytes / check_best / 1e6;
    let frame = example("frame_throughput", resp)?;
    Ok(json!({
        "rdb_parser": parse,
        "redis_check_rdb": {"seconds": check_best, "mb_per_s": check_mb_per_s},
        "ratio_parser_over_redis_check_rdb": parse["mb_per_s"].as_f64().unwrap_or(0.0) / check_mb_per_s,
        "resp_framing": frame,
    }))
}

async fn info(c: &mut Connection, field: &str) -> anyhow::Result<String> {
    let r = c.call(&["INFO", "all"]).await?;
    Ok(ferry_resp::replication::info_field(&r, field).unwrap_or("").to_string())
}

/// ferry's own keys on a node (checkpoints, floors, fences).
async fn own_keys(c: &mut Connection) -> anyhow::Result<i64> {
    let keys = ferry_redis::scan_keys(c, "ferry:*").await?;
    Ok(keys.iter().filter(|k| ferry_checkpoint::is_own_key(k)).count() as i64)
}

async fn dbsize(c: &mut Connection) -> anyhow::Result<i64> {
    match c.call(&["DBSIZE"]).await? {
        Reply::Integer(n) => Ok(n),
        r => bail!("DBSIZE answered {r:?}"),
    }
}

/// A native replica's full sync of `src`: seconds until it is online and caught up.
async fn native_replica(src: &RedisServer) -> anyhow::Result<f64> {
    Ok(native_replicas(&[src]).await?.0)
}

/// One native replica per source, started together: seconds until every one has synced,
/// and the CPU seconds the replicas used.
async fn native_replicas(sources: &[&RedisServer]) -> anyhow::Result<(f64, f64)> {
    let replicas: Vec<RedisServer> =
        sources.iter().map(|_| RedisServer::start(&["--repl-diskless-load", "disabled"])).collect();
    let mut pairs = Vec::new();
    for (r, s) in replicas.iter().zip(sources) {
        pairs.push((r.connect().await?, s.connect().await?, s.port));
    }
    let t0 = Instant::now();
    for (c, _, port) in &mut pairs {
        c.call(&["REPLICAOF", "127.0.0.1", &port.to_string()]).await?;
    }
    let mut done = vec![false; pairs.len()];
    while done.iter().any(|d| !d) {
        for ((c, s, _), done) in pairs.iter_mut().zip(&mut done) {
            if !*done
                && info(c, "master_link_status").await? == "up"
                && info(c, "master_sync_in_progress").await? == "0"
            {
                let want = info(s, "master_repl_offset").await?;
                *done = info(c, "slave_repl_offset").await? == want;
            }
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("native replica did not finish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = replicas.iter().map(|r| cpu_seconds(r.pid(), false)).sum();
    // Detach them: the sources then have ferry as their only replica.
    for (c, _, _) in &mut pairs {
        c.call(&["REPLICAOF", "NO", "ONE"]).await?;
    }
    Ok((secs, cpu))
}

/// The cluster phase: the data set in a 3-master cluster, copied by one native replica per
/// master (started together) and by ferry into another 3-master cluster.
fn cluster_phase(
    rt: &tokio::runtime::Runtime,
    bins: &Path,
    dir: &Path,
    opts: &BenchOpts,
) -> anyhow::Result<serde_json::Value> {
    let src = Cluster::start(3, 0);
    let map = src.slot_map().context("the source cluster's slot map")?;
    rt.block_on(async {
        let mut conns = Vec::new();
        for m in &map.masters {
            conns.push(Connection::connect(m, &ferry_resp::Auth::default(), Duration::from_secs(5)).await?);
        }
        let mut bufs: Vec<(bytes::BytesMut, u64)> = map.masters.iter().map(|_| (bytes::BytesMut::new(), 0)).collect();
        let value = string_value(opts.value_size);
        for i in 0..opts.keys {
            let slot = ferry_resp::cluster::key_slot(format!("bench:{i:010}").as_bytes());
            let n = map.node_of(slot).context("a slot without a master")?;
            encode_key(&mut bufs[n].0, i, &value);
            bufs[n].1 += 1;
            if bufs[n].1 == 2000 {
                let (buf, pending) = &mut bufs[n];
                flush(&mut conns[n], buf, *pending).await?;
                *pending = 0;
            }
        }
        for (n, (buf, pending)) in bufs.iter_mut().enumerate() {
            flush(&mut conns[n], buf, *pending).await?;
        }
        anyhow::Ok(())
    })
    .context("fill the source cluster")?;
    let masters: Vec<&RedisServer> = src.nodes.iter().filter(|n| map.masters.contains(&n.addr())).collect();
    // The sources' CPU with their RDB children's, before and after each copy.
    let sources_cpu = || masters.iter().map(|m| cpu_seconds(m.pid(), true)).sum::<f64>();
    eprintln!("cluster: native replicas of the {} masters...", masters.len());
    let before = sources_cpu();
    let (native, replicas_cpu) = rt.block_on(native_replicas(&masters))?;
    let native_sources_cpu = sources_cpu() - before;
    eprintln!("cluster: native replicas {native:.2}s; ferry...");
    let run_dir = dir.join("cluster");
    std::fs::create_dir_all(&run_dir)?;
    let tgt = Cluster::start(3, 0);
    let (text, status) = config_with_ports(&format!("[source]\n{}\n[target]\n{}\n", src.toml(), tgt.toml()));
    let servers = tgt.nodes.iter().enumerate().map(|(i, n)| (format!("target-redis-{i}"), n.pid())).collect();
    let want = map.masters.len();
    let before = sources_cpu();
    let (procs, secs, _, profile) = copy_until_synced(bins, &run_dir, text, &status, want, servers, opts.profile)?;
    let ferry_sources_cpu = sources_cpu() - before;
    let ferry_cpu: f64 = procs.procs.iter().filter_map(|p| Some(cpu_seconds(p.child.as_ref()?.id(), false))).sum();
    let targets_cpu: f64 = tgt.nodes.iter().map(|n| cpu_seconds(n.pid(), false)).sum();
    let keys = |c: &Cluster| -> anyhow::Result<i64> {
        let map = c.slot_map().context("slot map")?;
        rt.block_on(async {
            let mut n = 0;
            for m in &map.masters {
                let mut c = Connection::connect(m, &ferry_resp::Auth::default(), Duration::from_secs(5)).await?;
                n += dbsize(&mut c).await? - own_keys(&mut c).await?;
            }
            anyhow::Ok(n)
        })
    };
    let (a, b) = (keys(&src)?, keys(&tgt)?);
    drop(procs);
    if a != b {
        bail!("the cluster copy is incomplete: {a} keys on the source, {b} on the target");
    }
    Ok(json!({
        "masters": want,
        "keys": a,
        "native_replicas_full_sync_s": native,
        "ferry_full_copy_s": secs,
        "ratio_ferry_over_native": secs / native,
        "cpu_s": {
            "native": {"sources with their RDB children": native_sources_cpu, "replicas": replicas_cpu},
            "ferry": {"sources with their RDB children": ferry_sources_cpu, "targets": targets_cpu, "ferry's processes": ferry_cpu},
        },
        "profile": profile,
    }))
}

/// `redis-cli --pipe < file` into an empty server: seconds until every reply is back.
fn redis_cli_pipe(rt: &tokio::runtime::Runtime, file: &Path, keys: u64) -> anyhow::Result<(f64, serde_json::Value)> {
    let srv = RedisServer::start(&[]);
    let input = std::fs::File::open(file)?;
    let t0 = Instant::now();
    let out = Command::new("redis-cli")
        .args(["-p", &srv.port.to_string(), "--pipe"])
        .stdin(input)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run redis-cli (it comes with redis-server: apt-get install -y redis-server)")?;
    let secs = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("redis-cli --pipe failed ({}): {}", out.status, text.trim());
    }
    // "errors: 0, replies: 1000000"
    let field = |name: &str| -> Option<u64> {
        let rest = &text[text.find(name)? + name.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let (errors, replies) = (field("errors:"), field("replies:"));
    let loaded = rt.block_on(async { dbsize(&mut srv.connect().await?).await })?;
    if errors != Some(0) || loaded != keys as i64 {
        eprintln!("warning: redis-cli --pipe: errors {errors:?}, {loaded} keys loaded of {keys}");
    }
    Ok((secs, json!({"errors": errors, "replies": replies, "keys_loaded": loaded})))
}

/// Peak RSS (VmHWM) of a process, in KiB.
/// CPU seconds (user + system) `pid` has used so far, its threads included, and with
/// `children` its children that exited and were waited for (a Redis server's RDB children).
fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's name in parentheses: state is field 3, utime 14, stime 15,
    // cutime 16, cstime 17.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let own: &[usize] = if children { &[11, 12, 13, 14] } else { &[11, 12] };
    let ticks: u64 = own.iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The four ferry processes and their target, kept up across the phases.
struct Ferry {
    // Declared first: dropped (stopped) before the target is killed.
    procs: crate::Processes,
    tgt: RedisServer,
    status: String,
}

impl Ferry {
    /// Pipeline 0 of `/status`, or None when the coordinator does not answer (yet); an
    /// error when a process exited or the pipeline failed.
    fn pipeline(&mut self) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(pipelines(&mut self.procs, &self.status)?.map(|ps| ps.into_iter().next().unwrap_or_default()))
    }

    fn peak_rss_mib(&self) -> serde_json::Value {
        self.procs
            .procs
            .iter()
            .filter_map(|p| p.child.as_ref().map(|c| (p.name.clone(), json!(peak_rss_kib(c.id()) / 1024))))
            .collect()
    }
}

/// Every pipeline of `/status`, or None when the coordinator does not answer (yet); an error
/// when a process exited or a pipeline failed.
fn pipelines(procs: &mut crate::Processes, status: &str) -> anyhow::Result<Option<Vec<serde_json::Value>>> {
    if let Some((name, st)) = procs.exited() {
        bail!("{name} exited ({st}) during the bench; see its log in the run directory");
    }
    let Ok(body) = http_get(status, "/status") else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let ps = v["pipelines"].as_array().cloned().unwrap_or_default();
    if let Some(p) = ps.iter().find(|p| p["phase"] == "failed") {
        bail!("ferry failed: {}", p["error"]);
    }
    Ok(Some(ps))
}

/// Starts ferry's processes with `config` (ferry.toml's text; `/status` on `status`) in
/// `dir`, and waits until `want` pipelines are incremental with lag 0 and keys applied:
/// the processes (still running), the seconds it took, the last pipelines seen and, with
/// `profile`, [`Profiler`]'s findings over ferry's processes and `servers` (name, pid).
fn copy_until_synced(
    bins: &Path,
    dir: &Path,
    config: String,
    status: &str,
    want: usize,
    servers: Vec<(String, u32)>,
    profile: bool,
) -> anyhow::Result<(crate::Processes, f64, Vec<serde_json::Value>, serde_json::Value)> {
    let path = dir.join("bench-ferry.toml");
    std::fs::write(&path, config)?;
    let started = std::time::SystemTime::now();
    let t0 = Instant::now();
    let mut procs = crate::Processes::start(bins, &path, dir)?;
    let profiler = if profile {
        let mut pids: Vec<(String, u32)> =
            procs.procs.iter().filter_map(|p| Some((p.name.clone(), p.child.as_ref()?.id()))).collect();
        pids.extend(servers);
        Some(Profiler::start(dir, pids)?)
    } else {
        None
    };
    let done = |p: &serde_json::Value| {
        p["phase"] == "incremental" && p["lag_bytes"] == 0 && p["keys_applied"].as_u64().unwrap_or(0) > 0
    };
    let mut last = Vec::new();
    loop {
        if let Some(ps) = pipelines(&mut procs, status)? {
            let synced = ps.len() == want && ps.iter().all(done);
            last = ps;
            if synced {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("ferry did not finish: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    // Where the time went: the milestones in the logs always, with `profile` the CPU too.
    let mut profile = profiler.map(Profiler::finish).unwrap_or_else(|| json!({}));
    if let serde_json::Value::Object(m) = &mut profile {
        m.insert("timeline".into(), json!(timeline(dir, started)));
    }
    Ok((procs, secs, last, profile))
}

/// Seconds from `started` (when the processes were started) to the first log line of each
/// ferry process and to the full copy's milestones in the logs of `dir` (the first of each).
fn timeline(dir: &Path, started: std::time::SystemTime) -> serde_json::Map<String, serde_json::Value> {
    let day_secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() % 86400.0).unwrap_or(0.0)
    };
    // A log line starts with `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
    let line_secs = |l: &str| -> Option<f64> {
        let t = l.get(11..l.find('Z')?)?;
        let mut it = t.split(':');
        let (h, m, s): (f64, f64, f64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let t0 = day_secs(started);
    let milestones = ["rdb transfer started", "rdb transfer complete", "rdb decoded", "full copy applied"];
    let mut out = serde_json::Map::new();
    for name in crate::BINS {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        if let Some(t) = log.lines().find_map(line_secs) {
            out.insert(format!("{name} first log"), json!(((t - t0) * 1000.0).round() / 1000.0));
        }
        for m in milestones {
            if let Some(t) = log.lines().find(|l| l.contains(m)).and_then(line_secs) {
                out.insert(m.to_string(), json!(((t - t0) * 1000.0).round() / 1000.0));
            }
        }
    }
    out
}

/// `perf record` of the whole machine (499 Hz) while a full copy runs: each process's share of
/// the CPU, and for ferry's processes and the servers their hottest symbols (self time).
/// System-wide, so threads started later (the decoder's parser) and forked children (the
/// source's RDB child) are in it too.
struct Profiler {
    perf: std::process::Child,
    data: std::path::PathBuf,
    /// (name, pid) of the processes to detail.
    pids: Vec<(String, u32)>,
}

impl Profiler {
    fn start(dir: &Path, pids: Vec<(String, u32)>) -> anyhow::Result<Profiler> {
        let data = dir.join("perf.data");
        let perf = std::process::Command::new("perf")
            .args(["record", "-a", "-F", "499", "-g", "-q", "-o"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("perf (apt-get install linux-perf) for --profile")?;
        Ok(Profiler { perf, data, pids })
    }

    fn report(&self, args: &[&str]) -> Vec<String> {
        let out = std::process::Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none", "--percent-limit", "1.5", "-i"])
            .arg(&self.data)
            .args(args)
            .output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(14)
            .map(|l| l.split_whitespace().filter(|w| *w != "-").collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// Stops the recording: the CPU share of each process (pid:comm), then the top symbols
    /// of each process named at the start.
    fn finish(mut self) -> serde_json::Value {
        let _ = std::process::Command::new("kill").args(["-INT", &self.perf.id().to_string()]).status();
        let _ = self.perf.wait();
        let mut out = serde_json::Map::new();
        out.insert("processes".into(), json!(self.report(&["--sort", "pid"])));
        for (name, pid) in &self.pids {
            out.insert(name.clone(), json!(self.report(&["--pid", &pid.to_string(), "--sort", "dso,symbol"])));
        }
        out.insert("data".into(), json!(self.data));
        serde_json::Value::Object(out)
    }
}

/// ferry's full copy of `src` into a new target: seconds until incremental with lag 0.
/// Ferry keeps running afterwards. With `profile`, [`Profiler`]'s findings are in the details.
fn ferry_full_copy(
    bins: &Path,
    src: &RedisServer,
    dir: &Path,
    profile: bool,
) -> anyhow::Result<(Ferry, f64, serde_json::Value)> {
    let tgt = RedisServer::start(&[]);
    let (text, status) = pair_config(&src.addr(), &tgt.addr());
    let servers = vec![("target-redis".into(), tgt.pid()), ("source-redis".into(), src.pid())];
    let (procs, secs, last, profile) = copy_until_synced(bins, dir, text, &status, 1, servers, profile)?;
    let ferry = Ferry { procs, tgt, status };
    let last = last.into_iter().next().unwrap_or_default();
    let mut cpu: serde_json::Map<String, serde_json::Value> = ferry
        .procs
        .procs
        .iter()
        .filter_map(|p| Some((p.name.clone(), json!(cpu_seconds(p.child.as_ref()?.id(), false)))))
        .collect();
    cpu.insert("target-redis".into(), json!(cpu_seconds(ferry.tgt.pid(), false)));
    let details = json!({"status": last, "peak_rss_mib": ferry.peak_rss_mib(), "cpu_s": cpu, "profile": profile});
    Ok((ferry, secs, details))
}

fn as_i64(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// "SET: 123456.79 requests per second, p50=0.151 msec" lines of `redis-benchmark -q`
/// (progress lines, separated by `\r`, say "rps=" instead).
fn parse_benchmark(out: &str) -> serde_json::Map<String, serde_json::Value> {
    out.split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let rps: f64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_string(), json!(rps)))
        })
        .collect()
}

/// Phase 4: redis-benchmark writes on the source at full speed while ferry follows.
fn incremental(
    rt: &tokio::runtime::Runtime,
    src: &RedisServer,
    ferry: &mut Ferry,
    env: &EnvOpts,
) -> anyhow::Result<serde_json::Value> {
    const TESTS: &str = "set,incr,lpush,hset";
    const SUSTAINED_PROBE_RATE: u64 = 1000;
    let bench_limit = Duration::from_secs(if env.quick { 60 } else { 300 });
    let catch_up_limit = Duration::from_secs(if env.quick { 30 } else { 120 });
    let sample_every = Duration::from_millis(100);

    let off0 = rt.block_on(src.repl_offset())?;
    let st0 = ferry.pipeline()?.context("no /status before the incremental phase")?;
    let args = [
        "-p".to_string(),
        src.port.to_string(),
        "-t".into(),
        TESTS.into(),
        "-n".into(),
        env.requests.to_string(),
        "-P".into(),
        "16".into(),
        "-c".into(),
        "4".into(),
        "-r".into(),
        "100000".into(),
        "-q".into(),
    ];
    let command_line = format!("redis-benchmark {}", args.join(" "));
    let t0 = Instant::now();
    let mut child = Command::new("redis-benchmark")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run redis-benchmark (it comes with redis-server: apt-get install -y redis-server)")?;
    // Probes at a low rate while it runs: the real lag in time, which /status cannot
    // show finely (each stage reports its offsets every 500 ms).
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes = rt.spawn(probe_lag(
        src.addr(),
        ferry.tgt.addr(),
        "bench:sustained:probe:",
        SUSTAINED_PROBE_RATE,
        bench_limit.as_secs_f64(),
        stop_probes.clone(),
        catch_up_limit,
    ));
    // Read its output on threads so a full pipe never blocks it.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });

    // (seconds since t0, source_offset, applied_offset, lag_bytes) of each /status sample.
    let mut samples: Vec<(f64, i64, i64, i64)> = Vec::new();
    let sample = |ferry: &mut Ferry, samples: &mut Vec<(f64, i64, i64, i64)>| -> anyhow::Result<()> {
        if let Some(p) = ferry.pipeline()? {
            samples.push((
                t0.elapsed().as_secs_f64(),
                as_i64(&p["source_offset"]),
                as_i64(&p["applied_offset"]),
                as_i64(&p["lag_bytes"]),
            ));
        }
        Ok(())
    };
    let mut next = t0;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > bench_limit {
            eprintln!("redis-benchmark still running after {bench_limit:?}: stopping it");
            let _ = child.kill();
            break child.wait()?;
        }
        if let Err(e) = sample(ferry, &mut samples) {
            stop_probes.store(true, Ordering::Release);
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        next += sample_every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    };
    let bench_secs = t0.elapsed().as_secs_f64();
    let bench_end = Instant::now();
    stop_probes.store(true, Ordering::Release);
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    if !status.success() {
        bail!("{command_line} failed ({status}): {}", err.trim());
    }
    let rps = parse_benchmark(&out);
    let off1 = rt.block_on(src.repl_offset())?;

    // Catch-up, measured two ways: a marker key written on the source after the benchmark
    // is polled on the target (exact: ferry applies in source order), and /status sampled
    // until applied_offset reaches the source's offset at the end of the benchmark
    // (as coarse as the stages' reports to the coordinator: every 500 ms).
    let token = format!("{}", std::process::id() as u128 * 1_000_000 + t0.elapsed().as_micros());
    let (mut s, mut t) = rt.block_on(async { anyhow::Ok((src.connect().await?, ferry.tgt.connect().await?)) })?;
    rt.block_on(s.call(&["SET", "bench:catchup:marker", &token]))?;
    let mut marker_s: Option<f64> = None;
    let mut status_s: Option<f64> = None;
    let mut applied_at_catch_up: Option<(f64, i64)> = None;
    let mut last_sample = Instant::now() - sample_every;
    while (marker_s.is_none() || status_s.is_none()) && bench_end.elapsed() < catch_up_limit {
        if marker_s.is_none() {
            let r = rt.block_on(t.call(&["GET", "bench:catchup:marker"]))?;
            if r.as_bytes().is_some_and(|b| b == token.as_bytes()) {
                marker_s = Some(bench_end.elapsed().as_secs_f64());
            }
        }
        if status_s.is_none() && last_sample.elapsed() >= sample_every {
            last_sample = Instant::now();
            sample(ferry, &mut samples)?;
            if let Some(&(at, _, applied, _)) = samples.last()
                && applied >= off1
            {
                status_s = Some(bench_end.elapsed().as_secs_f64());
                applied_at_catch_up = Some((at, applied));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if marker_s.is_none() {
        eprintln!("warning: ferry did not catch up within {catch_up_limit:?} after the benchmark");
    }
    let st1 = ferry.pipeline()?.unwrap_or_default();
    let probes = rt.block_on(probes)??;

    let bytes = off1 - off0;
    let total_requests = rps.len() as u64 * env.requests;
    let max_lag = samples.iter().map(|s| s.3).max().unwrap_or(0);
    // Applied bytes/s: every byte of the benchmark's stream was applied once the marker
    // was seen, so offset delta / (benchmark + catch-up); and the same from /status.
    let applied_bps = marker_s.map(|c| bytes as f64 / (bench_secs + c));
    let status_applied_bps =
        applied_at_catch_up.map(|(at, applied)| (applied - as_i64(&st0["applied_offset"])) as f64 / at);
    Ok(json!({
        "command": command_line,
        "requests": total_requests,
        "benchmark_s": bench_secs,
        "requests_per_s_by_command": rps,
        "requests_per_s": total_requests as f64 / bench_secs,
        "source_offset_delta_bytes": bytes,
        "source_bytes_per_s": bytes as f64 / bench_secs,
        "max_lag_bytes": max_lag,
        "probes": probes,
        "catch_up_s": marker_s,
        "catch_up_status_s": status_s,
        "ferry_applied_bytes_per_s": applied_bps,
        "ferry_applied_bytes_per_s_status": status_applied_bps,
        "commands_applied_delta": as_i64(&st1["commands_applied"]) - as_i64(&st0["commands_applied"]),
        "source_offset_at_end": off1,
        "status_at_end": st1,
        "status_samples": samples.iter().map(|s| json!([(s.0 * 1000.0).round() / 1000.0, s.1, s.2, s.3])).collect::<Vec<_>>(),
        "status_samples_columns": ["s_since_benchmark_start", "source_offset", "applied_offset", "lag_bytes"],
    }))
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// End-to-end lag: probe keys `{prefix}N` = write time in µs, written on the source at
/// `rate`/s (a pipelined batch every 1 ms) for `secs` or until `stop` is set, polled on
/// the target in order (MGET of the next unseen ones); lag = time first seen on the
/// target − time written. The poller waits up to `drain` for the last probes.
async fn probe_lag(
    src: String,
    tgt: String,
    prefix: &'static str,
    rate: u64,
    secs: f64,
    stop: Arc<AtomicBool>,
    drain: Duration,
) -> anyhow::Result<serde_json::Value> {
    let auth = ferry_resp::Auth { username: None, password: None };
    let mut w = Connection::connect(&src, &auth, Duration::from_secs(5)).await?;
    let mut r = Connection::connect(&tgt, &auth, Duration::from_secs(5)).await?;
    let total = ((rate as f64 * secs) as u64).max(1);
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let writer = {
        let (sent, done) = (sent.clone(), done.clone());
        tokio::spawn(async move {
            let res = async {
                let mut buf = bytes::BytesMut::with_capacity(1 << 16);
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let t0 = Instant::now();
                let mut n = 0u64;
                // Bounded: the schedule ends after `secs` whatever was sent.
                while n < total && !stop.load(Ordering::Acquire) && t0.elapsed().as_secs_f64() < secs * 2.0 + 5.0 {
                    tick.tick().await;
                    let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                    if due <= n {
                        continue;
                    }
                    buf.clear();
                    let now = unix_us().to_string();
                    for k in n..due {
                        ferry_resp::encode_command_into(
                            &mut buf,
                            &[b"SET".as_slice(), format!("{prefix}{k}").as_bytes(), now.as_bytes()],
                        );
                    }
                    w.send_raw(&buf).await?;
                    for _ in n..due {
                        if let Reply::Error(e) = w.read_reply().await? {
                            bail!("probe SET: {}", String::from_utf8_lossy(&e));
                        }
                    }
                    n = due;
                    sent.store(n, Ordering::Release);
                }
                anyhow::Ok((n, t0.elapsed().as_secs_f64()))
            }
            .await;
            done.store(true, Ordering::Release);
            res
        })
    };

    let poller = tokio::spawn(async move {
        let mut lags_us: Vec<u64> = Vec::with_capacity(total as usize);
        let mut next = 0u64;
        let mut deadline: Option<Instant> = None;
        loop {
            let avail = sent.load(Ordering::Acquire);
            if done.load(Ordering::Acquire) {
                if next >= avail {
                    break;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + drain);
                if Instant::now() > d {
                    break;
                }
            }
            if next >= avail {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let end = avail.min(next + 256);
            let mut args: Vec<Vec<u8>> = vec![b"MGET".to_vec()];
            args.extend((next..end).map(|k| format!("{prefix}{k}").into_bytes()));
            let reply = r.call(&args).await?;
            let now = unix_us();
            let Reply::Array(Some(values)) = reply else { bail!("MGET answered {reply:?}") };
            // ferry applies in source order: the probes seen are a prefix; a probe
            // missing below the highest one seen is not waited for (counted missing).
            let mut highest = None;
            for (j, v) in values.iter().enumerate() {
                if let Some(b) = v.as_bytes() {
                    let written: u64 = std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).unwrap_or(now);
                    lags_us.push(now.saturating_sub(written));
                    highest = Some(j as u64);
                }
            }
            match highest {
                Some(j) => next += j + 1,
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        anyhow::Ok(lags_us)
    });

    let (written, write_secs) = writer.await??;
    let mut lags_us = poller.await??;
    let seen = lags_us.len() as u64;
    lags_us.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if lags_us.is_empty() {
            return None;
        }
        let i = ((lags_us.len() - 1) as f64 * p).round() as usize;
        Some(lags_us[i] as f64 / 1000.0)
    };
    Ok(json!({
        "rate_target_per_s": rate,
        "rate_achieved_per_s": written as f64 / write_secs,
        "duration_s": write_secs,
        "probes_written": written,
        "probes_seen": seen,
        "probes_missing": written - seen.min(written),
        "lag_ms_p50": pct(0.50),
        "lag_ms_p99": pct(0.99),
        "lag_ms_max": pct(1.0),
    }))
}

/// The rows of a full-copy table under its title: the native baseline with ferry / it,
/// then ferry.
fn print_copy_rows(native: (&str, &serde_json::Value), ferry: (&str, &serde_json::Value), ratio: &serde_json::Value) {
    println!("|---|---|---|");
    println!("| {} | {} | {} |", native.0, fmt_opt(native.1, " s", 2), fmt_opt(ratio, "", 2));
    println!("| {} | {} | 1.00 |", ferry.0, fmt_opt(ferry.1, " s", 2));
    println!();
}

fn fmt_opt(v: &serde_json::Value, unit: &str, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}{unit}"),
        None => "n/a".into(),
    }
}

fn mb(bytes_per_s: &serde_json::Value) -> String {
    match bytes_per_s.as_f64() {
        Some(x) => format!("{:.1} MB/s", x / 1e6),
        None => "n/a".into(),
    }
}

pub fn run(bins: &Path, dir: &Path, opts: &BenchOpts) -> anyhow::Result<()> {
    let env = EnvOpts::read(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // One phase alone, while working on it (its numbers only; nothing else runs).
    let only = std::env::var("FERRY_BENCH_ONLY").ok();
    if only.as_deref() == Some("cluster") {
        let c = cluster_phase(&rt, bins, dir, opts).context("cluster phase")?;
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    let src = RedisServer::start(&["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]);
    eprintln!("filling the source with {} keys...", opts.keys);
    rt.block_on(async {
        let mut c = src.connect().await?;
        fill(&mut c, opts.keys, opts.value_size).await
    })
    .context("fill")?;
    let used = rt.block_on(async {
        let mut c = src.connect().await?;
        info(&mut c, "used_memory_human").await
    })?;

    eprintln!("source holds {used}; native replica...");
    let before = cpu_seconds(src.pid(), true);
    let (native, replica_cpu) = rt.block_on(native_replicas(&[&src]))?;
    let native_cpu =
        json!({"source with its RDB child": cpu_seconds(src.pid(), true) - before, "replica": replica_cpu});
    if only.as_deref() == Some("copy") {
        let before = cpu_seconds(src.pid(), true);
        let (_ferry, full, details) = ferry_full_copy(bins, &src, dir, opts.profile)?;
        let source_cpu = cpu_seconds(src.pid(), true) - before;
        let c = json!({"native_replica_full_sync_s": native, "ferry_full_copy_s": full,
            "ratio_ferry_over_native": full / native, "native_cpu_s": native_cpu,
            "source_cpu_s_during_ferry": source_cpu, "ferry": details});
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }

    eprintln!("native replica: {native:.2}s; redis-cli --pipe...");
    let resp_dir = tempfile::tempdir()?;
    let resp_file = resp_dir.path().join("dataset.resp");
    let resp_bytes = write_resp_file(&resp_file, opts.keys, opts.value_size)?;
    let (pipe, pipe_details) = redis_cli_pipe(&rt, &resp_file, opts.keys)?;

    eprintln!("redis-cli --pipe: {pipe:.2}s; micro-benchmarks (RDB parser, RESP framing)...");
    rt.block_on(async { src.connect().await?.call(&["SAVE"]).await.map_err(anyhow::Error::from) })?;
    let micro = micro(bins, &src.dir.path().join("dump.rdb"), &resp_file, opts.release).context("micro-benchmarks")?;
    drop(resp_dir);

    eprintln!("ferry full copy...");
    let (mut ferry, full, details) = ferry_full_copy(bins, &src, dir, opts.profile)?;

    eprintln!("ferry: {full:.2}s; incremental: redis-benchmark -n {} per command...", env.requests);
    let incr = incremental(&rt, &src, &mut ferry, &env).context("incremental phase")?;

    eprintln!(
        "incremental: {} req/s, catch-up {}; end-to-end lag at {} writes/s for {} s...",
        fmt_opt(&incr["requests_per_s"], "", 0),
        fmt_opt(&incr["catch_up_s"], " s", 2),
        env.rate,
        env.lag_secs
    );
    let drain = Duration::from_secs(if env.quick { 5 } else { 10 });
    let never = Arc::new(AtomicBool::new(false));
    let lag = rt
        .block_on(probe_lag(src.addr(), ferry.tgt.addr(), "bench:probe:", env.rate, env.lag_secs, never, drain))
        .context("end-to-end lag phase")?;
    let rss_end = ferry.peak_rss_mib();
    drop(ferry);
    drop(src);

    let huge = huge_keys(&rt, bins, dir, &env.huge).context("huge-key phase")?;
    eprintln!("cluster phase: {} keys in a 3-master cluster...", opts.keys);
    let cluster = cluster_phase(&rt, bins, dir, opts).context("cluster phase")?;

    let result = json!({
        "keys": opts.keys,
        "value_size": opts.value_size,
        "source_used_memory": used,
        "native_replica_full_sync_s": native,
        "native_replica_cpu_s": native_cpu,
        "redis_cli_pipe_s": pipe,
        "redis_cli_pipe": {"resp_file_bytes": resp_bytes, "details": pipe_details},
        "ferry_full_copy_s": full,
        "ratio_ferry_over_native": full / native,
        "ratio_ferry_over_redis_cli_pipe": full / pipe,
        "ferry": details,
        "ferry_peak_rss_mib_at_end": rss_end,
        "incremental": incr,
        "end_to_end_lag": lag,
        "huge_keys": huge,
        "cluster": cluster,
        "micro": micro,
    });

    let i = &result["incremental"];
    let l = &result["end_to_end_lag"];
    println!("| full copy of {} keys ({used}) | time | ferry / this |", opts.keys);
    println!("|---|---|---|");
    println!("| native replica (full sync) | {native:.2} s | {:.2} |", full / native);
    println!("| redis-cli --pipe (RESP file) | {pipe:.2} s | {:.2} |", full / pipe);
    println!("| ferry (start to incremental, lag 0) | {full:.2} s | 1.00 |");
    println!();
    println!("| incremental | value |");
    println!("|---|---|");
    let by_cmd = i["requests_per_s_by_command"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {:.0}", v.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    println!(
        "| source writes (`{}`) | {} req/s ({by_cmd}); {} of replication stream |",
        i["command"].as_str().unwrap_or(""),
        fmt_opt(&i["requests_per_s"], "", 0),
        mb(&i["source_bytes_per_s"])
    );
    println!("| ferry applied (offset delta / time to catch up) | {} |", mb(&i["ferry_applied_bytes_per_s"]));
    println!("| max lag_bytes during the run (/status every 100 ms) | {} |", i["max_lag_bytes"]);
    println!(
        "| end-to-end lag during the run (probes at 1000/s) | p50 {} / p99 {} / max {} |",
        fmt_opt(&i["probes"]["lag_ms_p50"], " ms", 1),
        fmt_opt(&i["probes"]["lag_ms_p99"], " ms", 1),
        fmt_opt(&i["probes"]["lag_ms_max"], " ms", 1)
    );
    println!(
        "| catch-up after the benchmark | {} (marker key), {} (/status) |",
        fmt_opt(&i["catch_up_s"], " s", 2),
        fmt_opt(&i["catch_up_status_s"], " s", 2)
    );
    println!(
        "| end-to-end lag at {} writes/s ({} probes, {} missing) | p50 {} / p99 {} / max {} |",
        fmt_opt(&l["rate_achieved_per_s"], "", 0),
        l["probes_written"],
        l["probes_missing"],
        fmt_opt(&l["lag_ms_p50"], " ms", 1),
        fmt_opt(&l["lag_ms_p99"], " ms", 1),
        fmt_opt(&l["lag_ms_max"], " ms", 1)
    );
    println!();
    let h = &result["huge_keys"];
    println!(
        "| huge keys: a {:.0} MB list, a {:.0} MB string, a hash of {} fields, a {:.0} MB SETBIT bitmap ({}) | time | ferry / this |",
        h["list_mb"].as_f64().unwrap_or(0.0),
        h["string_mb"].as_f64().unwrap_or(0.0),
        h["hash_fields"],
        h["bitmap_mb"].as_f64().unwrap_or(0.0),
        h["source_used_memory"].as_str().unwrap_or("")
    );
    print_copy_rows(
        ("native replica (full sync)", &h["native_replica_full_sync_s"]),
        ("ferry (start to incremental, lag 0)", &h["ferry_full_copy_s"]),
        &h["ratio_ferry_over_native"],
    );
    let c = &result["cluster"];
    println!("| cluster → cluster, 3 masters each, {} keys | time | ferry / this |", c["keys"]);
    print_copy_rows(
        ("native replicas, one per master, started together", &c["native_replicas_full_sync_s"]),
        ("ferry (start to every pipeline incremental, lag 0)", &c["ferry_full_copy_s"]),
        &c["ratio_ferry_over_native"],
    );
    let m = &result["micro"];
    println!("| micro-benchmark | ferry | baseline |");
    println!("|---|---|---|");
    println!(
        "| RDB parser in the decoder's mode, source dump ({} bytes, {} keys) | {} MB/s, {} keys/s (every value decoded: {} MB/s) | redis-check-rdb {} MB/s (ferry / it: {}) |",
        m["rdb_parser"]["bytes"],
        m["rdb_parser"]["entries"],
        fmt_opt(&m["rdb_parser"]["mb_per_s"], "", 0),
        fmt_opt(&m["rdb_parser"]["entries_per_s"], "", 0),
        fmt_opt(&m["rdb_parser"]["decoded_mb_per_s"], "", 0),
        fmt_opt(&m["redis_check_rdb"]["mb_per_s"], "", 0),
        fmt_opt(&m["ratio_parser_over_redis_check_rdb"], "", 2)
    );
    println!(
        "| RESP framing, data set as commands ({} commands) | scan {} commands/s ({} MB/s), parse {} commands/s | - |",
        m["resp_framing"]["commands"],
        fmt_opt(&m["resp_framing"]["scan_commands_per_s"], "", 0),
        fmt_opt(&m["resp_framing"]["scan_mb_per_s"], "", 0),
        fmt_opt(&m["resp_framing"]["parse_commands_per_s"], "", 0)
    );
    println!();
    println!("peak RSS (MiB) after the full copy: {}", result["ferry"]["peak_rss_mib"]);
    println!("peak RSS (MiB) at the end: {}", result["ferry_peak_rss_mib_at_end"]);
    println!("peak RSS (MiB) after the huge-key full copy: {}", h["peak_rss_mib"]);
    println!("CPU seconds during the full copy: {}", result["ferry"]["cpu_s"]);
    for (phase, profile) in [
        ("full copy", &result["ferry"]["profile"]),
        ("huge-key full copy", &h["profile"]),
        ("cluster full copy", &result["cluster"]["profile"]),
    ] {
        let Some(parts) = profile.as_object() else { continue };
        println!();
        println!("timeline of the {phase} (s from starting the processes): {}", profile["timeline"]);
        if !parts.contains_key("processes") {
            continue;
        }
        println!("profile of the {phase} (perf -a, share of all samples, self time, above 1.5 %):");
        for (name, lines) in parts.iter().filter(|(k, _)| !matches!(k.as_str(), "data" | "timeline")) {
            println!("  {name}:");
            for line in lines.as_array().into_iter().flatten() {
                println!("    {}", line.as_str().unwrap_or_default());
            }
        }
    }
    let out = dir.join("bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    eprintln!("results written to {}", out.display());
    Ok(())
}
