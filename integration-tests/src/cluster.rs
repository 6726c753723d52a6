//! A Redis Cluster on loopback.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::*;
use bytes::Bytes;
use ferry_resp::{Auth, Connection, Reply};

/// A Redis Cluster of `masters` masters with `replicas` replicas each, on loopback.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
    /// The servers' build.
    pub flavor: Flavor,
}

impl Cluster {
    fn start_node(flavor: &Flavor) -> RedisServer {
        RedisServer::start_on(
            flavor,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--repl-backlog-size",
                "64mb",
            ],
        )
    }

    pub fn start(masters: usize, replicas: usize) -> Cluster {
        require_redis();
        Self::start_on(&Flavor::system(), masters, replicas)
    }

    /// [`Cluster::start`] with the servers of `flavor`.
    pub fn start_on(flavor: &Flavor, masters: usize, replicas: usize) -> Cluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas)).map(|_| Self::start_node(flavor)).collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| n.addr()));
        args.extend(["--cluster-replicas".into(), replicas.to_string(), "--cluster-yes".into()]);
        let out = Command::new(&flavor.cli).args(&args).output().expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let c = Cluster { nodes, flavor: flavor.clone() };
        c.wait_ok(masters);
        c
    }

    pub fn seed(&self) -> String {
        self.nodes[0].addr()
    }

    /// Adds an empty master (`redis-cli --cluster add-node`) and returns its address; give it
    /// slots with [`Cluster::migrate_slot_to`].
    pub fn add_master(&mut self) -> String {
        let node = Self::start_node(&self.flavor);
        let addr = node.addr();
        let out = Command::new(&self.flavor.cli)
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
                    // Deliberate: a short pause every 20 writes paces the load, so it runs at
                    // a steady rate beside ferry instead of taking the whole machine.
                    if n.is_multiple_of(20) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                n
            })
        })
    }

    /// The sum of the `master_repl_offset` of the masters serving slots now. No pipeline
    /// applies past its master's offset, so once the applied offsets of one pipeline per
    /// master add up to this, every write made before this call is applied.
    pub fn masters_offset(&self) -> i64 {
        let map = self.slot_map().expect("slot map");
        Self::block_on(async {
            let mut sum = 0;
            for m in &map.masters {
                let mut c = Connection::connect(m, &Auth::default(), Duration::from_secs(5)).await.unwrap();
                let info = c.call(&["INFO", "replication"]).await.unwrap();
                sum += ferry_resp::replication::info_field(&info, "master_repl_offset")
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or_else(|| panic!("no master_repl_offset in the INFO of {m}"));
            }
            sum
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
