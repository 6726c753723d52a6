//! `cargo xtask`: the project's automation.
//!
//! - `up`: with no argument, a local demo (a source and a target `redis-server`, sample
//!   data of every type, the four ferry processes, live progress, writes kept flowing
//!   until Ctrl-C). With `--config FILE`, the four processes for a real config, in the
//!   foreground until SIGINT/SIGTERM. A process that dies is started again ([`procs`]).
//! - `status`: pretty-prints the coordinator's `/status`.
//! - `test`: the test suite (`cargo test --workspace`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod bench;
mod procs;
mod progress;
#[cfg(test)]
mod tidy;

pub(crate) use procs::Processes;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ferry's project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run ferry: a local demo by default, or the processes for --config FILE.
    Up {
        /// A ferry.toml to run for real (foreground until Ctrl-C / SIGTERM).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Build and run the debug binaries instead of release ones.
        #[arg(long)]
        debug: bool,
    },
    /// Pretty-print /status of a running coordinator.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Benchmarks: ferry's full copy against a native replica's, in one run (release build).
    Bench {
        /// Small data set (for CI: it keeps the bench from rotting).
        #[arg(long)]
        quick: bool,
        /// Number of keys (default 1,000,000; 20,000 with --quick).
        #[arg(long)]
        keys: Option<u64>,
        /// Bytes per string value.
        #[arg(long, default_value_t = 350)]
        value_size: usize,
        /// Use the debug builds (CI, after the tests built them: the bench runs end to end,
        /// its numbers mean nothing).
        #[arg(long)]
        debug: bool,
        /// `perf record` each ferry process and the target during the full copies, and print
        /// where their time went (needs `perf`: apt-get install linux-perf).
        #[arg(long)]
        profile: bool,
    },
    /// Fault injection for longer than the tests: many rounds of network cuts, stalls,
    /// process and target kills during writes (each checked with ferry-verify), then the
    /// target-failover scenarios with a new seed each time.
    Soak {
        /// Fault rounds.
        #[arg(long, default_value_t = 200)]
        rounds: u32,
        /// Runs of the target-failover scenarios.
        #[arg(long, default_value_t = 5)]
        repeats: u32,
        /// Replay a run (its seed is printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Stop the processes of the latest `cargo xtask up` (from another terminal).
    Down,
    /// Show the logs of the latest `cargo xtask up` (every process, or one).
    Logs {
        /// A process, e.g. reader or ferry-writer (default: all).
        stage: Option<String>,
        /// Keep printing what is appended.
        #[arg(long, short)]
        follow: bool,
    },
    /// Run the test suite (cargo test --workspace).
    Test {
        /// Extra arguments for cargo test.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Up { config, debug } => up(config.as_deref(), !debug),
        Cmd::Status { config } => status(config.as_deref()),
        Cmd::Test { args } => test(&args),
        Cmd::Down => down(),
        Cmd::Logs { stage, follow } => logs(stage.as_deref(), follow),
        Cmd::Soak { rounds, repeats, seed } => soak(rounds, repeats, seed),
        Cmd::Bench { quick, keys, value_size, debug, profile } => (|| {
            require_redis()?;
            let bins = build(!debug)?;
            let keys = keys.unwrap_or(if quick { 20_000 } else { 1_000_000 });
            let opts = bench::BenchOpts { keys, value_size, quick, release: !debug, profile };
            bench::run(&bins, &run_dir()?, &opts)
        })(),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

const BINS: [&str; 4] = ["ferry-coordinator", "ferry-writer", "ferry-decoder", "ferry-reader"];

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = integration_tests::cargo_command();
    // The whole workspace, as `cargo build --workspace` does: building only the four packages
    // (`-p ...`) unifies the dependencies' features differently, so each kind of build would
    // compile ferry's crates again after the other.
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("building ferry ({})...", if release { "release" } else { "debug" });
    let st = cmd.status().context("cannot run cargo build")?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root().join("target"));
    Ok(target.join(if release { "release" } else { "debug" }))
}

fn require_redis() -> anyhow::Result<()> {
    let ok = Command::new("redis-server").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        bail!("redis-server is not on PATH; install it with: sudo apt-get install -y redis-server redis-sentinel");
    }
    Ok(())
}

/// A new run's directory (logs, pids), also named by `target/xtask/latest`.
fn run_dir() -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let base = root().join("target").join("xtask");
    let dir = base.join(format!("run-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(base.join("latest"), dir.display().to_string())?;
    std::fs::write(dir.join("xtask.pid"), std::process::id().to_string())?;
    Ok(dir)
}

/// The directory of the latest `cargo xtask up`.
fn latest_run() -> anyhow::Result<PathBuf> {
    let file = root().join("target").join("xtask").join("latest");
    let dir = std::fs::read_to_string(&file).context("no run yet: `cargo xtask up` first")?;
    Ok(PathBuf::from(dir.trim()))
}

fn alive(pid: &str) -> bool {
    Command::new("kill").args(["-0", pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `cargo xtask down`: stops the latest `up` (its xtask, which stops its processes and
/// servers in order), then anything of it still running.
fn down() -> anyhow::Result<()> {
    let dir = latest_run()?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let xtask = read("xtask.pid").trim().to_string();
    let children: Vec<(String, String)> = read("children.pid")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(n, p)| (n.to_string(), p.trim().to_string())))
        .collect();
    if !xtask.is_empty() && alive(&xtask) {
        eprintln!("stopping cargo xtask up (pid {xtask})");
        let _ = Command::new("kill").args(["-TERM", &xtask]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(&xtask) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut killed = 0;
    for (name, pid) in children.iter().chain(std::iter::once(&("xtask".to_string(), xtask.clone()))) {
        if !pid.is_empty() && alive(pid) {
            eprintln!("{name} (pid {pid}) still runs: killing it");
            let _ = Command::new("kill").args(["-KILL", pid]).status();
            killed += 1;
        }
    }
    eprintln!("stopped ({}; {killed} killed)", dir.display());
    Ok(())
}

/// `cargo xtask logs [STAGE] [--follow]`: the logs of the latest run.
fn logs(stage: Option<&str>, follow: bool) -> anyhow::Result<()> {
    let dir = latest_run()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| stage.is_none_or(|s| p.file_stem().is_some_and(|n| n.to_string_lossy().contains(s))))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no log in {} matches {:?}", dir.display(), stage.unwrap_or("*"));
    }
    let mut cmd = Command::new("tail");
    cmd.arg(if follow { "-F" } else { "-n+1" }).args(&files);
    if !cmd.status().context("run tail")?.success() {
        bail!("tail failed");
    }
    Ok(())
}

/// A flag set by SIGINT/SIGTERM.
fn stop_flag(rt: &tokio::runtime::Runtime) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    rt.spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        f.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    flag
}

fn up(config: Option<&Path>, release: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let stop = stop_flag(&rt);
    let dir = run_dir()?;
    match config {
        Some(path) => {
            let cfg = ferry_config::Config::load(path)?;
            let bins = build(release)?;
            let path = std::fs::canonicalize(path)?;
            let mut procs = Processes::start(&bins, &path, &dir)?;
            eprintln!(
                "ferry is running; logs in {}; status on http://{}/status; Ctrl-C stops it",
                dir.display(),
                cfg.coordinator.status_addr
            );
            watch(&cfg.coordinator.status_addr, &mut procs, &stop, || Ok(()))?;
            procs.stop();
            eprintln!("stopped");
            Ok(())
        }
        None => demo(&rt, &dir, release, &stop),
    }
}

fn demo(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    release: bool,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    use integration_tests::{RedisServer, config_with_ports, populate};
    require_redis()?;
    let bins = build(release)?;
    eprintln!("starting a source and a target redis-server...");
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let keys = rt.block_on(async {
        let mut c = src.connect().await?;
        let n = populate(&mut c).await?;
        // Some bulk so the full copy has something to show.
        for i in 0..200 {
            let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
            for j in 0..500 {
                args.push(format!("demo:key:{}", i * 500 + j).into_bytes());
                args.push(format!("value {} {}", i * 500 + j, "x".repeat(64)).into_bytes());
            }
            let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
            c.call(&refs).await?;
        }
        anyhow::Ok(n + 100_000)
    })?;
    let (text, status_addr) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n", src.addr(), tgt.addr()));
    let config = dir.join("ferry.toml");
    std::fs::write(&config, &text)?;
    eprintln!("source {} ({keys} keys of every type), target {}", src.addr(), tgt.addr());
    eprintln!("config {}; logs in {}", config.display(), dir.display());
    let mut procs = Processes::start(&bins, &config, dir)?;
    eprintln!("ferry is running: http://{status_addr}/status — Ctrl-C stops everything");
    // Keep writing to the source so the incremental sync has something to follow.
    let mut writer = rt.block_on(src.connect())?;
    let mut n = 0u64;
    let mut last_write = Instant::now();
    watch(&status_addr, &mut procs, stop, || {
        if last_write.elapsed() >= Duration::from_millis(200) {
            last_write = Instant::now();
            n += 1;
            rt.block_on(async {
                writer.call(&["INCR", "demo:counter"]).await?;
                writer.call(&["LPUSH", "demo:events", &format!("event {n}")]).await?;
                writer.call(&["LTRIM", "demo:events", "0", "99"]).await?;
                anyhow::Ok(())
            })?;
        }
        Ok(())
    })?;
    procs.stop();
    let (a, b) = rt.block_on(async {
        let mut a = src.connect().await?;
        let mut b = tgt.connect().await?;
        let a = a.call(&["GET", "demo:counter"]).await?;
        let b = b.call(&["GET", "demo:counter"]).await?;
        anyhow::Ok((a, b))
    })?;
    let show =
        |r: &ferry_resp::Reply| r.as_bytes().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or("(nil)".into());
    eprintln!("stopped: demo:counter is {} on the source and {} on the target", show(&a), show(&b));
    Ok(())
}

/// Shows live progress from /status until stopped or a process exits.
fn watch(
    status_addr: &str,
    procs: &mut Processes,
    stop: &std::sync::atomic::AtomicBool,
    mut each_tick: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut progress = progress::Progress::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // A process that dies is started again (one with a bad configuration stops the run).
        let events = match procs.supervise() {
            Ok(events) => events,
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        };
        for e in events {
            progress.note(&match e {
                procs::Event::Died { name, status, restart_in } => {
                    format!("{name} died ({status}); starting it again in {} ms", restart_in.as_millis())
                }
                procs::Event::Restarted { name, pid } => format!("{name} started again (pid {pid})"),
            });
        }
        each_tick()?;
        let status = integration_tests::http_get(status_addr, "/status")
            .ok()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
        progress.update(status.as_ref());
        std::thread::sleep(Duration::from_millis(100));
    }
    progress.finish();
    Ok(())
}

fn status(config: Option<&Path>) -> anyhow::Result<()> {
    let addr = match config {
        Some(p) => ferry_config::Config::load(p)?.coordinator.status_addr,
        None => ferry_config::Config::default().coordinator.status_addr,
    };
    let body =
        integration_tests::http_get(&addr, "/status").with_context(|| format!("no coordinator answering on {addr}"))?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn soak(rounds: u32, repeats: u32, seed: Option<u64>) -> anyhow::Result<()> {
    let run = |test: &str, filter: &str, rounds: u32, seed: Option<u64>| -> anyhow::Result<()> {
        let mut cmd = integration_tests::cargo_command();
        cmd.args(["test", "-p", "integration-tests", "--test", test, filter, "--", "--nocapture"])
            .env("FERRY_FAULT_ROUNDS", rounds.to_string());
        if let Some(s) = seed {
            cmd.env("FERRY_TEST_SEED", s.to_string());
        }
        eprintln!("soak: {test} {filter} ({rounds} rounds)");
        if !cmd.status()?.success() {
            bail!("soak failed in {test} {filter}: its output above has the seed to replay it (--seed)");
        }
        Ok(())
    };
    run("faults", "rounds_of_network_process_and_target_faults_lose_nothing", rounds, seed)?;
    for _ in 0..repeats {
        run("target_failures", "", 1, seed)?;
    }
    eprintln!("soak: {rounds} fault rounds and {repeats} runs of the target failovers, all equal");
    Ok(())
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let st = integration_tests::cargo_command().args(["test", "--workspace"]).args(args).status()?;
    if !st.success() {
        bail!("tests failed");
    }
    Ok(())
}
