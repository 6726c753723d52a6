//! ferry's processes, started as a user would start them, and their HTTP endpoints.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::*;
use anyhow::{Context, anyhow, bail};

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `cargo` running us, for a nested build or test run in the workspace root, without the
/// variables Cargo set for this process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): build
/// scripts track some of them (ring's tracks `CARGO_MANIFEST_DIR`), so with them each nested
/// build compiled the dependencies, and ferry, again after the user's own `cargo build`.
pub fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("CARGO_PKG_")
                || matches!(
                    k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                ))
        {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(workspace_root());
    cmd
}

/// Directory holding the ferry binaries: `FERRY_BIN_DIR`, or the workspace's target dir
/// after a `cargo build --bins` (run once per test process).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("FERRY_BIN_DIR") {
            return PathBuf::from(d);
        }
        let root = workspace_root();
        let status = cargo_command()
            // The whole workspace's binaries, as `cargo build --workspace` and `cargo xtask up`
            // build them: the same feature set, so no build compiles ferry again after another.
            .args(["build", "--quiet", "--workspace", "--bins"])
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

/// [`config_with_ports`] for a standalone source and a standalone target.
pub fn pair_config(source: &str, target: &str) -> (String, String) {
    config_with_ports(&format!("[source]\naddress = \"{source}\"\n[target]\naddress = \"{target}\"\n"))
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
        Self::start_without(config, status_addr, "")
    }

    /// Starts every stage but `skip` (the test starts that one its own way, [`Ferry::spawn_with`]).
    pub fn start_without(config: &str, status_addr: &str, skip: &str) -> Ferry {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ferry.toml"), config).unwrap();
        let mut f = Ferry { dir, status_addr: status_addr.to_string(), children: Vec::new() };
        for stage in STAGES.iter().filter(|s| **s != skip) {
            f.spawn(stage);
        }
        f
    }

    /// (Re)starts one stage (`ferry-watcher` runs `ferry-watcher run`).
    pub fn spawn(&mut self, stage: &str) {
        self.spawn_with(stage, &[]);
    }

    /// (Re)starts one stage with extra arguments (`--coordinator ADDR`, ...).
    pub fn spawn_with(&mut self, stage: &str, args: &[&str]) {
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
            .args(args)
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

    /// Waits until `n` pipelines exist whose applied offsets add up to `offset` or more: with
    /// a cluster source (one pipeline per master) and [`Cluster::masters_offset`], every write
    /// made before that call is then applied.
    pub fn wait_applied_total(&self, n: usize, offset: i64, timeout: Duration) {
        let applied = || -> Option<i64> {
            let s = self.status().ok()?;
            let ps = s["pipelines"].as_array().filter(|ps| ps.len() == n)?;
            Some(ps.iter().map(|p| p["applied_offset"].as_i64().unwrap_or(0)).sum())
        };
        assert!(
            poll_until(timeout, || applied().is_some_and(|a| a >= offset)),
            "{n} pipelines never applied {offset} bytes in all; last status: {:#}\nlogs:\n{}",
            self.status().unwrap_or_default(),
            self.logs()
        );
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
