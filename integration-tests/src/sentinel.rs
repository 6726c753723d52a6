//! A Sentinel-managed group on loopback: a master, replicas and sentinels.

use std::time::{Duration, Instant};

use crate::*;
use ferry_resp::{Auth, Connection, Reply};

/// A Sentinel-managed group: one master, `replicas` replicas and `sentinels` sentinels
/// (quorum 2), all on loopback; everything killed on drop.
pub struct SentinelGroup {
    pub name: String,
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    pub fn start(replicas: usize, sentinels: usize) -> SentinelGroup {
        require_redis();
        Self::start_on(&Flavor::system(), replicas, sentinels)
    }

    /// [`SentinelGroup::start`] with the servers (and sentinels) of `flavor`.
    pub fn start_on(flavor: &Flavor, replicas: usize, sentinels: usize) -> SentinelGroup {
        let master = RedisServer::start_on(flavor, &[]);
        let mport = master.port.to_string();
        let mut nodes = vec![master];
        for _ in 0..replicas {
            nodes.push(RedisServer::start_on(flavor, &["--replicaof", "127.0.0.1", &mport]));
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
            let args = vec![conf.display().to_string(), "--sentinel".into()];
            let child = RedisServer::spawn(&flavor.server, &args, log);
            let s = RedisServer { port, dir, child, password: None, program: flavor.server.clone(), args };
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
            // Right after an earlier failover the sentinel may not yet count the replicas as
            // reconfigured (`NOGOODSLAVE`): asked again until it has one, for a while.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.call(&["SENTINEL", "FAILOVER", &self.name]).await {
                    Ok(_) => break,
                    Err(e) if e.to_string().contains("NOGOODSLAVE") && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Err(e) => panic!("SENTINEL FAILOVER: {e:?}"),
                }
            }
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
