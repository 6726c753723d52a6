//! Harness for tests against real servers: `redis-server` processes on free loopback
//! ports in temp dirs (killed on drop), the ferry processes started as a user would
//! start them, a status poller, and a type-aware comparison of two servers.

pub mod module;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use ferry_resp::{Auth, Connection, Reply};

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768 and up), so
/// that no outgoing connection and no `bind(0)` can take it between this call and the
/// moment a server binds it; a counter keeps the tests of one process apart, and the
/// process id the test binaries (each checked by binding it).
/// A small deterministic generator (xorshift), seeded from `FERRY_TEST_SEED` or the clock;
/// the seed is printed, so a failed run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("FERRY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: FERRY_TEST_SEED={seed}");
        Rng::seeded(seed)
    }

    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` bytes that do not compress (the RDB's LZF and `RESTORE` payloads keep their size).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Ports 12000..22000 only: a cluster node's bus port (its port + 10000) is then never
    // one this function hands out.
    // A start that differs between test processes (nextest runs each test in its own), so
    // two of them rarely probe the same ports at the same moment.
    static BASE: OnceLock<u32> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        (std::process::id().wrapping_mul(2_654_435_761) ^ nanos) % 10_000
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (12_000 + (base + n) % 10_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether `redis-server` is on PATH; tests fail with a clear message if not.
pub fn require_redis() {
    let ok = Command::new("redis-server").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "redis-server is not on PATH: install it (apt-get install -y redis-server redis-sentinel)");
}

/// A `redis-server` on a free loopback port in its own temp dir; killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    pub password: Option<String>,
    /// `redis-server` or `redis-sentinel`, and its arguments (for a restart).
    program: &'static str,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with extra `redis-server` arguments (`["--requirepass", "x"]`).
    pub fn start(extra: &[&str]) -> RedisServer {
        require_redis();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let password = extra.windows(2).find(|w| w[0] == "--requirepass").map(|w| w[1].to_string());
        let child = Self::spawn("redis-server", &args, log);
        let s = RedisServer { port, dir, child, password, program: "redis-server", args };
        s.wait_ready();
        s
    }

    fn spawn(program: &str, args: &[String], log: std::fs::File) -> Child {
        Command::new(program)
            // Own process group: a Ctrl-C meant for the parent does not kill the server first.
            .process_group(0)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
    }

    /// Starts the server again (after [`kill`](Self::kill)) on the same port, in the same
    /// directory: it loads `dump.rdb` if one was saved there (and `nodes.conf` in a cluster).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("redis.log")).unwrap();
        self.child = Self::spawn(self.program, &self.args, log);
        self.wait_ready();
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Plain std I/O: usable from inside or outside a tokio runtime.
            let ok = (|| -> std::io::Result<bool> {
                let mut s = std::net::TcpStream::connect(self.addr())?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf)?;
                // +PONG, or -NOAUTH when a password is set: either way the server is up.
                Ok(n > 0 && !buf[..n].starts_with(b"-LOADING"))
            })()
            .unwrap_or(false);
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not start: {}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// A client connection (authenticated with `--requirepass` when set).
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let auth = Auth { username: None, password: self.password.clone() };
        Ok(Connection::connect(&self.addr(), &auth, Duration::from_secs(5)).await?)
    }

    /// The server's `master_repl_offset`.
    pub async fn repl_offset(&self) -> anyhow::Result<i64> {
        let mut c = self.connect().await?;
        let info = c.call(&["INFO", "replication"]).await?;
        ferry_resp::replication::info_field(&info, "master_repl_offset")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no master_repl_offset in INFO"))
    }

    /// Kills the server (SIGKILL) now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Directory holding the ferry binaries: `FERRY_BIN_DIR`, or the workspace's target dir
/// after a `cargo build --bins` (run once per test process).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("FERRY_BIN_DIR") {
            return PathBuf::from(d);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "-p",
                "ferry-reader",
                "-p",
                "ferry-decoder",
                "-p",
                "ferry-writer",
                "-p",
                "ferry-coordinator",
                "-p",
                "ferry-watcher",
                "-p",
                "ferry-verify",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the ferry binaries failed");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join("debug")
    })
    .clone()
}

/// The four ferry processes, started from a config file in a temp dir; killed on drop.
pub struct Ferry {
    pub dir: tempfile::TempDir,
    pub status_addr: String,
    pub children: Vec<(String, Child)>,
}

/// Config with free ports for the coordinator and the stages, plus the given sections.
pub fn config_with_ports(body: &str) -> (String, String) {
    let status = format!("127.0.0.1:{}", free_port());
    // Each process's own /metrics too (in the body's [reader] when it has one).
    let reader_metrics = format!("metrics_addr = \"127.0.0.1:{}\"\n", free_port());
    let body = if body.contains("[reader]\n") {
        body.replacen("[reader]\n", &format!("[reader]\n{reader_metrics}"), 1)
    } else {
        format!("{body}\n[reader]\n{reader_metrics}")
    };
    let text = format!(
        "{body}\n[coordinator]\nstatus_addr = \"{status}\"\ngrpc_addr = \"127.0.0.1:{}\"\n\
         [decoder]\nlisten = \"127.0.0.1:{}\"\nmetrics_addr = \"127.0.0.1:{}\"\n\
         [writer]\nlisten = \"127.0.0.1:{}\"\nmetrics_addr = \"127.0.0.1:{}\"\n",
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port()
    );
    (text, status)
}

/// The `metrics_addr` of `[section]` in a config made by [`config_with_ports`].
pub fn metrics_addr_of(cfg: &str, section: &str) -> String {
    let from = cfg.find(&format!("[{section}]\n")).expect("section");
    let rest = &cfg[from..];
    let at = rest.find("metrics_addr = \"").expect("metrics_addr") + 16;
    rest[at..at + rest[at..].find('"').unwrap()].to_string()
}

pub const STAGES: [&str; 4] = ["ferry-coordinator", "ferry-writer", "ferry-decoder", "ferry-reader"];

impl Ferry {
    /// Starts coordinator, writer, decoder and reader with `config` (a full ferry.toml).
    pub fn start(config: &str, status_addr: &str) -> Ferry {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, config).unwrap();
        let mut f = Ferry { dir, status_addr: status_addr.to_string(), children: Vec::new() };
        for stage in STAGES {
            f.spawn(stage);
        }
        f
    }

    /// (Re)starts one stage (`ferry-watcher` runs `ferry-watcher run`).
    pub fn spawn(&mut self, stage: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{stage}.log")))
            .unwrap();
        let mut cmd = Command::new(bin_dir().join(stage));
        if stage == "ferry-watcher" {
            cmd.arg("run");
        }
        let child = cmd
            .process_group(0)
            .arg("--config")
            .arg(self.dir.path().join("ferry.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {stage}: {e}"));
        self.children.push((stage.to_string(), child));
    }

    /// SIGKILLs one stage.
    pub fn kill(&mut self, stage: &str) {
        for (name, c) in self.children.iter_mut().filter(|(n, _)| n == stage) {
            let _ = c.kill();
            let _ = c.wait();
            let _ = name;
        }
        self.children.retain(|(n, _)| n != stage);
    }

    /// Every log line of every stage.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for stage in STAGES.iter().chain(&["ferry-watcher"]) {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{stage}.log"))).unwrap_or_default();
            for line in text.lines() {
                out.push_str(stage);
                out.push_str(": ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let body = http_get(&self.status_addr, "/status")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Polls `/status` until `pred` holds for the first pipeline, or fails after `timeout` with the last status and the logs.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(s) = self.status() {
                if let Some(p) = s["pipelines"].get(0)
                    && pred(p)
                {
                    return p.clone();
                }
                last = s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last status: {last:#}\nlogs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `/status` until `n` pipelines exist and `pred` holds for every one of them.
    pub fn wait_all(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(s) = self.status() {
                if let Some(ps) = s["pipelines"].as_array()
                    && ps.len() == n
                    && ps.iter().all(&mut pred)
                {
                    return s;
                }
                last = s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last status: {last:#}\nlogs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the pipeline is incremental and has applied at least `offset`.
    pub fn wait_caught_up(&self, offset: i64, timeout: Duration) -> serde_json::Value {
        self.wait_for(&format!("applied_offset >= {offset}"), timeout, |p| {
            p["phase"] == "incremental" && p["applied_offset"].as_i64().unwrap_or(0) >= offset
        })
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        // SIGTERM first (clean shutdown), then SIGKILL what is left.
        for (_, c) in &mut self.children {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET on loopback (no client library needed for tests).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("bad HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    // Chunked bodies (axum streams JSON without a length sometimes).
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        return Ok(out);
    }
    Ok(body.to_string())
}

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
        "zset" => format!("{:?}", c.call(&[&b"ZRANGE"[..], key, b"0", b"-1", b"WITHSCORES"]).await?),
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
/// commands cannot always reproduce).
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
                    && matches!(&b[..], b"seen-time" | b"active-time" | b"radix-tree-keys" | b"radix-tree-nodes")
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
            if k.starts_with(b"ferry:checkpoint:") || k.starts_with(b"ferry:tmp:") {
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

/// A Sentinel-managed group: one master, `replicas` replicas and `sentinels` sentinels
/// (quorum 2), all on loopback; everything killed on drop.
pub struct SentinelGroup {
    pub name: String,
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    pub fn start(replicas: usize, sentinels: usize) -> SentinelGroup {
        let master = RedisServer::start(&[]);
        let mport = master.port.to_string();
        let mut nodes = vec![master];
        for _ in 0..replicas {
            nodes.push(RedisServer::start(&["--replicaof", "127.0.0.1", &mport]));
        }
        let name = "ferrymaster".to_string();
        let mut sents = Vec::new();
        for _ in 0..sentinels {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 2\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
            let args = vec![conf.display().to_string()];
            let child = RedisServer::spawn("redis-sentinel", &args, log);
            let s = RedisServer { port, dir, child, password: None, program: "redis-sentinel", args };
            s.wait_ready();
            sents.push(s);
        }
        let g = SentinelGroup { name, nodes, sentinels: sents };
        g.wait_replicas_known(replicas);
        g
    }

    /// The logs of every node and sentinel, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.iter().chain(&self.sentinels) {
            for line in n.log().lines() {
                out.push_str(&format!("{}: {line}\n", n.port));
            }
        }
        out
    }

    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| s.addr()).collect()
    }

    /// TOML lines for a `[source]` or `[target]` section of type sentinel.
    pub fn toml(&self) -> String {
        let list: Vec<String> = self.sentinel_addrs().iter().map(|a| format!("\"{a}\"")).collect();
        format!("type = \"sentinel\"\nsentinels = [{}]\nmaster_name = \"{}\"\n", list.join(", "), self.name)
    }

    /// The master's address according to the first sentinel that answers.
    pub fn master_addr(&self) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(ferry_resp::sentinel::resolve_master(
            &self.sentinel_addrs(),
            &self.name,
            &Auth::default(),
            Duration::from_secs(2),
        ))
        .expect("resolve master")
    }

    /// The node that is master now.
    pub fn master(&self) -> &RedisServer {
        let addr = self.master_addr();
        self.nodes.iter().find(|n| n.addr() == addr).expect("master is one of the nodes")
    }

    fn wait_replicas_known(&self, replicas: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        loop {
            let ok = rt.block_on(async {
                for s in &self.sentinels {
                    let mut c = s.connect().await.ok()?;
                    let r = c.call(&["SENTINEL", "REPLICAS", &self.name]).await.ok()?;
                    let n = match r {
                        Reply::Array(Some(items)) => items.len(),
                        _ => 0,
                    };
                    let others = match c.call(&["SENTINEL", "SENTINELS", &self.name]).await.ok()? {
                        Reply::Array(Some(items)) => items.len(),
                        _ => 0,
                    };
                    if n < replicas || others + 1 < self.sentinels.len() {
                        return None;
                    }
                }
                Some(())
            });
            if ok.is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "sentinels did not discover the group");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `SENTINEL FAILOVER` and wait until the sentinels name another master whose role is master.
    pub fn failover(&self) -> String {
        let old = self.master_addr();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = self.sentinels[0].connect().await.unwrap();
            c.call(&["SENTINEL", "FAILOVER", &self.name]).await.expect("SENTINEL FAILOVER");
        });
        self.wait_new_master(&old)
    }

    /// SIGKILLs the master and waits until the sentinels have promoted a replica.
    pub fn kill_master(&mut self) -> String {
        let old = self.master_addr();
        if let Some(n) = self.nodes.iter_mut().find(|n| n.addr() == old) {
            n.kill();
        }
        self.wait_new_master(&old)
    }

    /// Waits until the sentinels report a master other than `old` that accepts writes.
    pub fn wait_new_master(&self, old: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        loop {
            let now = rt.block_on(ferry_resp::sentinel::resolve_master(
                &self.sentinel_addrs(),
                &self.name,
                &Auth::default(),
                Duration::from_secs(2),
            ));
            if let Ok(addr) = now
                && addr != old
            {
                let writable = rt.block_on(async {
                    let mut c = Connection::connect(&addr, &Auth::default(), Duration::from_secs(2)).await.ok()?;
                    c.call(&["SET", "ferry-test:probe", "1"]).await.ok()?;
                    c.call(&["DEL", "ferry-test:probe"]).await.ok()
                });
                if writable.is_some() {
                    return addr;
                }
            }
            assert!(Instant::now() < deadline, "no failover happened");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Writes INCR (db 0) and RPUSH (db `list_db`) witnesses to a standalone source from a
/// thread until `stop` is set; returns how many writes were acknowledged.
pub fn source_witnesses(
    addr: String,
    list_db: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let auth = ferry_resp::Auth::default();
            let mut c = ferry_resp::Connection::connect(&addr, &auth, Duration::from_secs(5)).await.unwrap();
            // Lists in another db: the stream switches dbs all the time, so a resume that lost
            // track of the selected db would put writes in the wrong one.
            let mut c5 = ferry_resp::Connection::connect(&addr, &auth, Duration::from_secs(5)).await.unwrap();
            c5.call(&["SELECT", &list_db.to_string()]).await.unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Runs of 20 writes per db, so most resume points fall inside a run, where the
                // stream has no SELECT.
                if (n / 20).is_multiple_of(2) {
                    c.call(&["INCR", &format!("witness:counter:{}", n % 5)]).await.unwrap();
                } else {
                    c5.call(&["RPUSH", &format!("witness:list:{}", n % 3), &n.to_string()]).await.unwrap();
                }
                n += 1;
                if n.is_multiple_of(50) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            n
        })
    })
}

/// INCR/RPUSH witnesses against whatever the sentinels say the master is; a write that
/// fails during a failover is retried, so every acknowledged write happened once.
pub fn sentinel_witnesses(
    group_sentinels: Vec<String>,
    name: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let mut n = 0u64;
            let mut conn: Option<Connection> = None;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if conn.is_none() {
                    let addr = ferry_resp::sentinel::resolve_master(
                        &group_sentinels,
                        &name,
                        &Auth::default(),
                        Duration::from_secs(1),
                    )
                    .await;
                    if let Ok(addr) = addr {
                        conn = Connection::connect(&addr, &Auth::default(), Duration::from_secs(1)).await.ok();
                    }
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = conn.as_mut().unwrap();
                // One MULTI per witness write so a failure leaves no half of it applied.
                let key = format!("witness:{}", n % 7);
                let ok = async {
                    c.call(&["MULTI"]).await?;
                    c.call(&["INCR", &format!("{key}:count")]).await?;
                    c.call(&["RPUSH", &format!("{key}:list"), &n.to_string()]).await?;
                    match c.call(&["EXEC"]).await? {
                        Reply::Array(Some(r)) if r.iter().all(|x| x.first_error().is_none()) => anyhow::Ok(true),
                        _ => anyhow::Ok(false),
                    }
                }
                .await;
                match ok {
                    Ok(true) => n += 1,
                    _ => {
                        // READONLY or a dropped connection: the write did not happen; find the master again.
                        conn = None;
                    }
                }
                if n.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            n
        })
    })
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each, on loopback.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start_node() -> RedisServer {
        RedisServer::start(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--repl-backlog-size",
            "64mb",
        ])
    }

    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas)).map(|_| Self::start_node()).collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| n.addr()));
        args.extend(["--cluster-replicas".into(), replicas.to_string(), "--cluster-yes".into()]);
        let out = Command::new("redis-cli").args(&args).output().expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let c = Cluster { nodes };
        c.wait_ok(masters);
        c
    }

    pub fn seed(&self) -> String {
        self.nodes[0].addr()
    }

    /// Adds an empty master (`redis-cli --cluster add-node`) and returns its address; give it
    /// slots with [`Cluster::migrate_slot_to`].
    pub fn add_master(&mut self) -> String {
        let node = Self::start_node();
        let addr = node.addr();
        let out = Command::new("redis-cli")
            .args(["--cluster", "add-node", &addr, &self.seed()])
            .output()
            .expect("run redis-cli --cluster add-node");
        assert!(out.status.success(), "redis-cli --cluster add-node failed: {}", String::from_utf8_lossy(&out.stdout));
        self.nodes.push(node);
        // Every node must know the new one before slots can move to it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Self::block_on(async {
            for n in &self.nodes {
                let Ok(mut c) = n.connect().await else { return false };
                match c.call(&["CLUSTER", "NODES"]).await {
                    Ok(Reply::Bulk(Some(b))) if String::from_utf8_lossy(&b).contains(&addr) => {}
                    _ => return false,
                }
                let Ok(info) = c.call(&["CLUSTER", "INFO"]).await else { return false };
                if ferry_resp::replication::info_field(&info, "cluster_state") != Some("ok") {
                    return false;
                }
            }
            true
        }) {
            assert!(Instant::now() < deadline, "the cluster did not learn of {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        addr
    }

    /// The address of the master serving `slot` now.
    pub fn master_of(&self, slot: u16) -> String {
        let map = self.slot_map().expect("slot map");
        map.masters[map.node_of(slot).expect("slot served")].clone()
    }

    /// SIGKILLs every node (the whole deployment is lost).
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// `SAVE` on every node (what persistence would have on disk when it dies).
    pub fn save_all(&self) {
        Self::block_on(async {
            for n in &self.nodes {
                n.connect().await.unwrap().call(&["SAVE"]).await.unwrap();
            }
        });
    }

    /// Restarts every node from its directory (`nodes.conf` keeps the topology; `dump.rdb`,
    /// when saved, the data) and waits for `cluster_state:ok`.
    pub fn restart_all(&mut self, masters: usize) {
        for n in &mut self.nodes {
            n.restart();
        }
        self.wait_ok(masters);
    }

    /// `args` run on the master serving `key` (the key is `args[1]`).
    pub fn call(&self, args: &[&str]) -> Reply {
        let map = self.slot_map().expect("slot map");
        let addr = map.masters[map.node_of(ferry_resp::cluster::key_slot(args[1].as_bytes())).unwrap()].clone();
        Self::block_on(async {
            let mut c = Connection::connect(&addr, &Auth::default(), Duration::from_secs(5)).await.unwrap();
            c.call(args).await.unwrap()
        })
    }

    /// TOML lines for a `[target]` of type cluster: every node, so a process started while
    /// one node is down still finds the cluster.
    pub fn toml(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(|n| n.addr()).collect();
        format!("type = \"cluster\"\naddress = \"{}\"\n", all.join(","))
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// The slot map as the first node that answers sees it.
    pub fn slot_map(&self) -> Option<ferry_resp::cluster::SlotMap> {
        Self::block_on(async {
            for n in &self.nodes {
                if let Ok(mut c) = n.connect().await
                    && let Ok(r) = c.call(&["CLUSTER", "SLOTS"]).await
                {
                    return ferry_resp::cluster::SlotMap::from_cluster_slots(&r);
                }
            }
            None
        })
    }

    fn wait_ok(&self, masters: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Self::block_on(async {
                for n in &self.nodes {
                    let mut c = n.connect().await.ok()?;
                    let info = c.call(&["CLUSTER", "INFO"]).await.ok()?;
                    if ferry_resp::replication::info_field(&info, "cluster_state") != Some("ok") {
                        return None;
                    }
                    let map =
                        ferry_resp::cluster::SlotMap::from_cluster_slots(&c.call(&["CLUSTER", "SLOTS"]).await.ok()?)?;
                    if !map.complete() || map.masters.len() != masters {
                        return None;
                    }
                }
                Some(())
            });
            if ok.is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every key of the cluster (db 0), read from the master that serves it.
    pub fn snapshot(&self) -> Snapshot {
        let map = self.slot_map().expect("slot map");
        Self::block_on(async {
            let mut all: BTreeMap<Bytes, (String, i64)> = BTreeMap::new();
            for m in &map.masters {
                let mut c = Connection::connect(m, &Auth::default(), Duration::from_secs(5)).await.unwrap();
                let s = snapshot_dbs(&mut c, 0..1).await.unwrap();
                if let Some(keys) = s.get(&0) {
                    all.extend(keys.clone());
                }
            }
            let mut out = BTreeMap::new();
            if !all.is_empty() {
                out.insert(0, all);
            }
            out
        })
    }

    /// Writes `SET`/`INCR`/`RPUSH` through the master serving each key, following MOVED and
    /// failovers; a write that fails is retried (it did not happen). Runs until `stop`.
    pub fn witness_writer(&self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.addr()).collect();
        std::thread::spawn(move || {
            Self::block_on(async move {
                let mut conns: std::collections::HashMap<String, Connection> = std::collections::HashMap::new();
                let mut map: Option<ferry_resp::cluster::SlotMap> = None;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if map.is_none() {
                        for s in &seeds {
                            if let Ok(mut c) = Connection::connect(s, &Auth::default(), Duration::from_secs(1)).await
                                && let Ok(r) = c.call(&["CLUSTER", "SLOTS"]).await
                            {
                                map = ferry_resp::cluster::SlotMap::from_cluster_slots(&r).filter(|m| m.complete());
                                if map.is_some() {
                                    break;
                                }
                            }
                        }
                        if map.is_none() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                    let key = format!("witness:{}", n % 13);
                    let m = map.as_ref().unwrap();
                    let addr = m.masters[m.node_of(ferry_resp::cluster::key_slot(key.as_bytes())).unwrap()].clone();
                    if !conns.contains_key(&addr) {
                        match Connection::connect(&addr, &Auth::default(), Duration::from_secs(1)).await {
                            Ok(c) => {
                                conns.insert(addr.clone(), c);
                            }
                            Err(_) => {
                                map = None;
                                continue;
                            }
                        }
                    }
                    let c = conns.get_mut(&addr).unwrap();
                    // One key per write so a redirected write simply did not happen.
                    let ok = c.call(&["INCR", &key]).await.is_ok();
                    if ok {
                        n += 1;
                    } else {
                        conns.remove(&addr);
                        map = None;
                    }
                    if n.is_multiple_of(20) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                n
            })
        })
    }

    /// SIGKILLs the master serving `slot` and waits until a replica serves it instead.
    pub fn kill_master_of(&mut self, slot: u16) -> String {
        let map = self.slot_map().unwrap();
        let old = map.masters[map.node_of(slot).unwrap()].clone();
        if let Some(n) = self.nodes.iter_mut().find(|n| n.addr() == old) {
            n.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(m) = self.slot_map_from_live_nodes()
                && let Some(i) = m.node_of(slot)
                && m.masters[i] != old
            {
                return m.masters[i].clone();
            }
            assert!(Instant::now() < deadline, "no replica took over slot {slot} from {old}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The slot map from a node that is up (some may have been killed).
    fn slot_map_from_live_nodes(&self) -> Option<ferry_resp::cluster::SlotMap> {
        Self::block_on(async {
            for n in &self.nodes {
                if let Ok(mut c) = Connection::connect(&n.addr(), &Auth::default(), Duration::from_millis(300)).await
                    && let Ok(r) = c.call(&["CLUSTER", "SLOTS"]).await
                {
                    return ferry_resp::cluster::SlotMap::from_cluster_slots(&r);
                }
            }
            None
        })
    }

    /// Moves `slot`, keys included, to the master serving `to`, the way `redis-cli --cluster
    /// reshard` does: `SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE` of its keys in batches
    /// (clients get `ASK` for the keys already moved), then `SETSLOT NODE` on both.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        self.migrate_slot_to(slot, &self.master_of(to));
    }

    /// [`Cluster::migrate_slot`] to the master at `dst`.
    pub fn migrate_slot_to(&self, slot: u16, dst: &str) {
        let src = self.master_of(slot);
        let dst = dst.to_string();
        if src == dst {
            return;
        }
        Self::block_on(async {
            let connect = |a: String| async move {
                Connection::connect(&a, &Auth::default(), Duration::from_secs(5)).await.unwrap()
            };
            let (mut s, mut d) = (connect(src.clone()).await, connect(dst.clone()).await);
            let id = |r: Reply| r.as_bytes().map(|b| String::from_utf8_lossy(b).to_string()).unwrap();
            let (src_id, dst_id) =
                (id(s.call(&["CLUSTER", "MYID"]).await.unwrap()), id(d.call(&["CLUSTER", "MYID"]).await.unwrap()));
            let n = slot.to_string();
            d.call(&["CLUSTER", "SETSLOT", &n, "IMPORTING", &src_id]).await.unwrap();
            s.call(&["CLUSTER", "SETSLOT", &n, "MIGRATING", &dst_id]).await.unwrap();
            let (host, port) = dst.rsplit_once(':').unwrap();
            loop {
                let Reply::Array(Some(keys)) = s.call(&["CLUSTER", "GETKEYSINSLOT", &n, "10"]).await.unwrap() else {
                    break;
                };
                if keys.is_empty() {
                    break;
                }
                let keys: Vec<Bytes> = keys.into_iter().filter_map(|k| k.as_bytes().cloned()).collect();
                let mut args: Vec<&[u8]> =
                    vec![b"MIGRATE", host.as_bytes(), port.as_bytes(), b"", b"0", b"5000", b"REPLACE", b"KEYS"];
                args.extend(keys.iter().map(|k| &k[..]));
                let r = s.call(&args).await.unwrap();
                assert!(r.first_error().is_none(), "MIGRATE: {r:?}");
                // Slowly, so the writes in between meet the half-moved slot.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let r = d.call(&["CLUSTER", "SETSLOT", &n, "NODE", &dst_id]).await.unwrap();
            assert!(r.first_error().is_none(), "SETSLOT NODE on the importing node: {r:?}");
            // The source refuses while it still holds keys of the slot (a write may have
            // landed after the last MIGRATE): move those and ask again.
            for _ in 0..50 {
                let r = s.call(&["CLUSTER", "SETSLOT", &n, "NODE", &dst_id]).await.unwrap();
                if r.first_error().is_none() {
                    return;
                }
                if let Reply::Array(Some(keys)) = s.call(&["CLUSTER", "GETKEYSINSLOT", &n, "100"]).await.unwrap() {
                    let keys: Vec<Bytes> = keys.into_iter().filter_map(|k| k.as_bytes().cloned()).collect();
                    if !keys.is_empty() {
                        let mut args: Vec<&[u8]> =
                            vec![b"MIGRATE", host.as_bytes(), port.as_bytes(), b"", b"0", b"5000", b"REPLACE", b"KEYS"];
                        args.extend(keys.iter().map(|k| &k[..]));
                        s.call(&args).await.unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("slot {slot}: the source kept refusing SETSLOT NODE");
        });
    }

    /// `CLUSTER FAILOVER` on a replica of the master serving `slot`; waits until it serves it.
    /// A manual failover gives up after a few seconds when the replica cannot catch up (a
    /// loaded machine): it is asked again until it happens.
    pub fn failover_slot(&self, slot: u16) -> String {
        let map = self.slot_map().unwrap();
        let old = map.masters[map.node_of(slot).unwrap()].clone();
        let ask = || {
            Self::block_on(async {
                for n in &self.nodes {
                    let mut c = n.connect().await.ok()?;
                    let info = c.call(&["INFO", "replication"]).await.ok()?;
                    let port = ferry_resp::replication::info_field(&info, "master_port").map(str::to_string);
                    if ferry_resp::replication::info_field(&info, "role") == Some("slave")
                        && old.ends_with(&format!(":{}", port?))
                    {
                        c.call(&["CLUSTER", "FAILOVER"]).await.ok()?;
                        return Some(n.addr());
                    }
                }
                None
            })
        };
        let replica = ask().expect("a replica of the master");
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut asked = Instant::now();
        loop {
            if let Some(m) = self.slot_map()
                && m.node_of(slot).map(|i| m.masters[i].clone()) == Some(replica.clone())
            {
                return replica;
            }
            assert!(Instant::now() < deadline, "CLUSTER FAILOVER did not complete");
            if asked.elapsed() > Duration::from_secs(6) {
                let _ = ask();
                asked = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
