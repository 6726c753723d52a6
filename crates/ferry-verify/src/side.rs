//! One side of the check (the source or the target): where its keys live, and the
//! connections a worker uses to read them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use ferry_config::{DeploymentType, RedisConfig};
use ferry_resp::cluster::{SlotMap, key_slot};
use ferry_resp::{Connection, Reply, RespError, encode_command_into};

/// Longest wait for the replies of one round trip.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the keys of a deployment live.
#[derive(Clone, Debug)]
pub(crate) enum Topology {
    /// A standalone server or a Sentinel-managed master: every db on one address.
    Single(String),
    /// A cluster: db 0 only, each slot on its master.
    Cluster(SlotMap),
}

/// A deployment as the check sees it. Connections go through `ferry_redis`, as the stages'
/// do: the same credentials (ACL user, `password_file`, `${VAR}`), TLS and Sentinel settings.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// "source" or "target", for messages.
    pub name: &'static str,
    pub topology: Topology,
    pub cfg: RedisConfig,
    pub timeout: Duration,
}

impl Endpoint {
    /// Resolves the deployment (Sentinel: the master; cluster: the slot map) and checks that
    /// every node answers.
    pub async fn open(name: &'static str, cfg: &RedisConfig, timeout: Duration) -> anyhow::Result<Endpoint> {
        let topology = match cfg.kind {
            DeploymentType::File => {
                anyhow::bail!(
                    "{name}: a file cannot be compared: load it into a server (or compare with the target only)"
                )
            }
            DeploymentType::Standalone | DeploymentType::Sentinel => Topology::Single(
                ferry_redis::resolve(cfg).await.with_context(|| format!("{name}: finding the master"))?,
            ),
            // `address` may list several nodes (comma-separated): the first that answers.
            DeploymentType::Cluster => Topology::Cluster(
                ferry_redis::cluster_map(cfg, &[])
                    .await
                    .with_context(|| format!("{name}: reading the cluster's slot map"))?,
            ),
        };
        let ep = Endpoint { name, topology, cfg: cfg.clone(), timeout };
        for addr in ep.nodes() {
            let mut c = ep.connect(&addr).await.context(name)?;
            c.call_timeout(&["PING"], timeout).await.context(name)?;
        }
        Ok(ep)
    }

    /// A new connection to the node `addr` of this side.
    pub async fn connect(&self, addr: &str) -> Result<Connection, RespError> {
        ferry_redis::connect_node(&self.cfg, addr, self.timeout).await
    }

    /// Every node holding data (the server, or every master).
    pub fn nodes(&self) -> Vec<String> {
        match &self.topology {
            Topology::Single(a) => vec![a.clone()],
            Topology::Cluster(m) => m.masters.clone(),
        }
    }

    /// The nodes to SCAN for `db` (a cluster has db 0 only).
    pub fn scan_nodes(&self, db: u32) -> Vec<String> {
        match &self.topology {
            Topology::Single(a) => vec![a.clone()],
            Topology::Cluster(m) if db == 0 => m.masters.clone(),
            Topology::Cluster(_) => Vec::new(),
        }
    }

    /// The node serving `key` in `db`; `None` when this deployment cannot hold it (a cluster, db > 0).
    pub fn route(&self, db: u32, key: &[u8]) -> Option<String> {
        match &self.topology {
            Topology::Single(a) => Some(a.clone()),
            Topology::Cluster(m) if db == 0 => m.node_of(key_slot(key)).map(|i| m.masters[i].clone()),
            Topology::Cluster(_) => None,
        }
    }

    /// Re-reads a cluster's slot map (after a `MOVED`/`ASK`).
    pub async fn refresh(&mut self) -> anyhow::Result<()> {
        if let Topology::Cluster(old) = &self.topology {
            let map = ferry_redis::cluster_map(&self.cfg, &old.masters)
                .await
                .with_context(|| format!("{}: refreshing the cluster's slot map", self.name))?;
            self.topology = Topology::Cluster(map);
        }
        Ok(())
    }

    /// The dbs holding keys according to `INFO keyspace` (a cluster: db 0 when any master has keys).
    pub async fn keyspace_dbs(&self) -> anyhow::Result<BTreeSet<u32>> {
        let mut dbs = BTreeSet::new();
        for addr in self.nodes() {
            let mut c = self.connect(&addr).await?;
            let info = c.call_timeout(&["INFO", "keyspace"], OP_TIMEOUT).await?;
            let text = info.as_bytes().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("db").and_then(|r| r.split(':').next()).and_then(|n| n.parse().ok())
                {
                    dbs.insert(n);
                }
            }
        }
        if matches!(self.topology, Topology::Cluster(_)) {
            dbs.retain(|&d| d == 0);
        }
        Ok(dbs)
    }

    /// The lowest major `redis_version` of the nodes.
    pub async fn major_version(&self) -> anyhow::Result<u32> {
        let mut lowest = u32::MAX;
        for addr in self.nodes() {
            let mut c = self.connect(&addr).await?;
            let info = c.call_timeout(&["INFO", "server"], OP_TIMEOUT).await?;
            let v = ferry_resp::replication::info_field(&info, "redis_version")
                .and_then(|v| v.split('.').next())
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            lowest = lowest.min(v);
        }
        Ok(lowest)
    }
}

/// The connections of one worker to one side, opened on first use, each with its selected db.
pub(crate) struct Conns {
    pub ep: Endpoint,
    conns: HashMap<String, (Connection, u32)>,
    /// A `MOVED`/`ASK` was seen: refresh the slot map before the next batch.
    pub stale: bool,
}

impl Conns {
    pub fn new(ep: Endpoint) -> Conns {
        Conns { ep, conns: HashMap::new(), stale: false }
    }

    /// Refreshes the slot map if a redirection was seen.
    pub async fn refresh_if_stale(&mut self) -> anyhow::Result<()> {
        if self.stale {
            self.ep.refresh().await?;
            self.stale = false;
        }
        Ok(())
    }

    /// The connection to `addr` with `db` selected.
    async fn conn(&mut self, addr: &str, db: u32) -> Result<&mut Connection, RespError> {
        if !self.conns.contains_key(addr) {
            let c = self.ep.connect(addr).await?;
            self.conns.insert(addr.to_string(), (c, 0));
        }
        let (c, cur) = self.conns.get_mut(addr).expect("just inserted");
        if *cur != db {
            c.call_timeout(&[b"SELECT".to_vec(), db.to_string().into_bytes()], OP_TIMEOUT).await?;
            *cur = db;
        }
        Ok(c)
    }

    /// One command to `addr`; an error reply is [`RespError::Server`].
    pub async fn call_at<A: AsRef<[u8]>>(&mut self, addr: &str, db: u32, args: &[A]) -> Result<Reply, RespError> {
        let c = self.conn(addr, db).await?;
        let res = c.call_timeout(args, OP_TIMEOUT).await;
        if res.is_err() && !matches!(res, Err(RespError::Server { .. })) {
            // The connection is in an unknown state: open a new one next time.
            self.conns.remove(addr);
        }
        if let Err(RespError::Server { reply, .. }) = &res
            && (reply.starts_with("MOVED") || reply.starts_with("ASK"))
        {
            self.stale = true;
        }
        res
    }

    /// One command about `key`, sent to the node serving it.
    pub async fn call<A: AsRef<[u8]>>(&mut self, db: u32, key: &[u8], args: &[A]) -> Result<Reply, RespError> {
        match self.ep.route(db, key) {
            Some(addr) => self.call_at(&addr, db, args).await,
            None => Err(RespError::Server {
                addr: self.ep.name.to_string(),
                command: "route".into(),
                reply: format!("no node of the {} serves this key in db {db}", self.ep.name),
            }),
        }
    }

    /// Sends `commands` to `addr` in one write and returns their replies in order (error
    /// replies included, as [`Reply::Error`]).
    pub async fn pipeline(&mut self, addr: &str, db: u32, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, RespError> {
        let mut buf = BytesMut::new();
        for c in commands {
            encode_command_into(&mut buf, c);
        }
        let conn = self.conn(addr, db).await?;
        let res = tokio::time::timeout(OP_TIMEOUT, async {
            conn.send_raw(&buf).await?;
            let mut out = Vec::with_capacity(commands.len());
            for _ in commands {
                out.push(conn.read_reply().await?);
            }
            Ok::<_, RespError>(out)
        })
        .await
        .unwrap_or_else(|_| Err(RespError::Timeout { addr: addr.to_string(), command: "pipeline".into() }));
        match res {
            Ok(replies) => {
                if replies
                    .iter()
                    .any(|r| r.as_error().is_some_and(|e| e.starts_with(b"MOVED") || e.starts_with(b"ASK")))
                {
                    self.stale = true;
                }
                Ok(replies)
            }
            Err(e) => {
                self.conns.remove(addr);
                Err(e)
            }
        }
    }

    /// Runs one command per key (built by `build`) on the nodes serving the keys, pipelined per
    /// node. A key no node can hold gets `None`.
    pub async fn per_key<'k>(
        &mut self,
        db: u32,
        keys: &'k [Bytes],
        build: impl Fn(&'k [u8]) -> Vec<Vec<&'k [u8]>>,
    ) -> Result<Vec<Option<Vec<Reply>>>, RespError> {
        let mut out: Vec<Option<Vec<Reply>>> = vec![None; keys.len()];
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(addr) = self.ep.route(db, k) {
                groups.entry(addr).or_default().push(i);
            }
        }
        for (addr, idxs) in groups {
            let mut commands = Vec::new();
            let mut per = 0;
            for &i in &idxs {
                let cmds = build(&keys[i]);
                per = cmds.len();
                commands.extend(cmds);
            }
            let mut replies = self.pipeline(&addr, db, &commands).await?.into_iter();
            for &i in &idxs {
                out[i] = Some(replies.by_ref().take(per).collect());
            }
        }
        Ok(out)
    }

    /// One `SCAN` step on `addr`: the next cursor and the keys.
    pub async fn scan(
        &mut self,
        addr: &str,
        db: u32,
        cursor: &[u8],
        count: usize,
    ) -> anyhow::Result<(Bytes, Vec<Bytes>)> {
        let count = count.to_string();
        let r = self.call_at(addr, db, &[b"SCAN", cursor, b"COUNT", count.as_bytes()]).await?;
        let Reply::Array(Some(mut parts)) = r else { bail!("{addr}: unexpected reply to SCAN") };
        if parts.len() != 2 {
            bail!("{addr}: unexpected reply to SCAN");
        }
        let keys = parts.pop().expect("two parts");
        let Some(next) = parts.pop().expect("two parts").as_bytes().cloned() else {
            bail!("{addr}: unexpected cursor in a reply to SCAN")
        };
        let keys = match keys {
            Reply::Array(Some(ks)) => ks.into_iter().filter_map(|k| k.as_bytes().cloned()).collect(),
            _ => bail!("{addr}: unexpected keys in a reply to SCAN"),
        };
        Ok((next, keys))
    }
}
