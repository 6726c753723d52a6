//! `redis-server` processes on free loopback ports in temp dirs, killed on drop.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use ferry_resp::{Auth, Connection};

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768 and up), so
/// that no outgoing connection and no `bind(0)` can take it between this call and the
/// moment a server binds it; a counter keeps the tests of one process apart, and the
/// process id the test binaries (each checked by binding it).
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

/// A server build the tests run: the `redis-server` on PATH, or one named by an environment
/// variable (`FERRY_TEST_VALKEY_SERVER`, `FERRY_TEST_REDIS_SERVER`), with the `-cli` beside it.
#[derive(Clone, Debug)]
pub struct Flavor {
    /// The server binary (also run as a Sentinel with `--sentinel`).
    pub server: String,
    /// Its command-line client, for `--cluster create`.
    pub cli: String,
}

impl Flavor {
    /// The distribution's `redis-server` on PATH (7.0 on Debian 12).
    pub fn system() -> Flavor {
        Flavor { server: "redis-server".into(), cli: "redis-cli".into() }
    }

    /// The server named by the environment variable `var`, or `None` when it is not set.
    /// A set variable that names no runnable server is a failure, not a skip.
    pub fn from_env(var: &str) -> Option<Flavor> {
        let server = std::env::var(var).ok().filter(|v| !v.is_empty())?;
        let path = std::path::Path::new(&server);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let cli = path.with_file_name(name.replace("-server", "-cli"));
        let cli = if cli.exists() { cli.display().to_string() } else { "redis-cli".into() };
        let ok = Command::new(&server).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        assert!(ok, "{var}={server} does not run (`{server} --version` failed)");
        Some(Flavor { server, cli })
    }

    /// `server --version`, e.g. "Valkey server v=8.0.1 ...".
    pub fn version(&self) -> String {
        Command::new(&self.server)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
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
    pub(crate) child: Child,
    pub password: Option<String>,
    /// The server binary, and its arguments (for a restart).
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with extra `redis-server` arguments (`["--requirepass", "x"]`).
    pub fn start(extra: &[&str]) -> RedisServer {
        require_redis();
        Self::start_on(&Flavor::system(), extra)
    }

    /// [`RedisServer::start`] with the server of `flavor`.
    pub fn start_on(flavor: &Flavor, extra: &[&str]) -> RedisServer {
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
        let child = Self::spawn(&flavor.server, &args, log);
        let s = RedisServer { port, dir, child, password, program: flavor.server.clone(), args };
        s.wait_ready();
        s
    }

    pub(crate) fn spawn(program: &str, args: &[String], log: std::fs::File) -> Child {
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
        self.child = Self::spawn(&self.program, &self.args, log);
        self.wait_ready();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn wait_ready(&self) {
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
