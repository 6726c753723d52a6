//! The writer: the `Writer` gRPC service.
//!
//! Batches arrive as RESP ready for the target. A sending task writes them to the
//! target connection while a receiving task reads the replies, so up to
//! `pipeline_count_limit` commands are in flight (a semaphore bounds it). After the
//! last reply of a batch, the batch's source offset is acknowledged upstream. Every
//! error reply is counted by kind; `BUSYKEY` under the `skip` policy counts as a skipped
//! key; any other error stops the session with the reply, the command name and the key
//! (never the value) in the log and the status.

pub mod cluster;
pub mod stale;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use ferry_config::Config;
use ferry_proto::writer_server::{Writer, WriterServer};
use ferry_proto::{Ack, Batch, Checkpoint};
use ferry_resp::conn::printable;
use ferry_resp::{Connection, Reply, encode_command_into};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use ferry_runtime::Stats;

/// Runs the writer service until `cancel` fires.
pub async fn run(
    cfg: Config,
    coordinator: String,
    pipeline: Option<String>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listen: std::net::SocketAddr =
        cfg.writer.listen.parse().with_context(|| format!("writer.listen {:?}", cfg.writer.listen))?;
    let listener = ferry_runtime::grpc::listen(&listen.to_string(), "writer.listen").await?;
    // /healthz answers from now on, also while the coordinator is away.
    let tasks = TaskTracker::new();
    tasks.spawn(ferry_runtime::metrics::serve(cfg.writer.metrics_addr.clone(), "writer", cancel.clone()));
    let Some(assignment) = ferry_runtime::assignment(&coordinator, "writer", pipeline.as_deref(), &cancel).await else {
        tasks.close();
        tasks.wait().await;
        return Ok(());
    };
    let svc = WriterSvc {
        cfg: Arc::new(cfg),
        sessions: Arc::new(ferry_runtime::Sessions::new("writer", coordinator, tasks.clone(), cancel.clone())),
        tasks: tasks.clone(),
    };
    info!(%listen, target = %assignment.target, "writer listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    ferry_runtime::grpc_server()?
        .add_service(WriterServer::new(svc).max_decoding_message_size(ferry_runtime::grpc::MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned())
        .await
        .context("writer gRPC server")?;
    tasks.close();
    tasks.wait().await;
    Ok(())
}

struct WriterSvc {
    cfg: Arc<Config>,
    /// One entry per pipeline: statistics and the running session.
    sessions: Arc<ferry_runtime::Sessions>,
    tasks: TaskTracker,
}

#[tonic::async_trait]
impl Writer for WriterSvc {
    type ApplyStream = ferry_runtime::grpc::AckStream;

    async fn apply(&self, req: Request<Streaming<Batch>>) -> Result<Response<ferry_runtime::grpc::AckStream>, Status> {
        ferry_runtime::grpc::authorize(&req, "Writer.Apply", &["decoder"])?;
        let mut batches = req.into_inner();
        let (ack_tx, ack_rx) = mpsc::channel(64);
        let cfg = self.cfg.clone();
        let sessions = self.sessions.clone();
        self.tasks.spawn(async move {
            let hello = match batches.message().await {
                Ok(Some(b)) if b.hello => {
                    if let Err(s) = ferry_runtime::grpc::check_deployment(&b.deployment, "the decoder") {
                        warn!(error = %s.message(), "refusing a decoder of another deployment");
                        let _ = ack_tx.send(Err(s)).await;
                        return;
                    }
                    b
                }
                Ok(None) => return,
                Ok(Some(_)) => {
                    let _ = ack_tx
                        .send(Err(Status::invalid_argument("the first batch of a session must be a hello")))
                        .await;
                    return;
                }
                Err(s) => {
                    warn!(error = %s.message(), "decoder stream failed before its hello");
                    return;
                }
            };
            let id = hello.pipeline_id.clone();
            let pipeline = id.clone();
            let upstream = ack_tx.clone();
            sessions
                .run(&id, "writer", &upstream, |stats, cancel| async move {
                    stats.rdb_applied.store(false, Relaxed);
                    let res = session(&cfg, &stats, hello, batches, ack_tx, &cancel).await;
                    if let Err(e) = &res
                        && let Some(failure) = e.downcast_ref::<Committed>()
                    {
                        // Recorded on the target before anything else can run: no later session of
                        // the pipeline goes on past the command that failed.
                        if let Err(re) = record_stop(&cfg, &pipeline, &failure.0).await {
                            error!(error = %format!("{re:#}"), "cannot record the pipeline's stop on the target");
                        }
                    }
                    res
                })
                .await;
        });
        Ok(ferry_runtime::grpc::ack_stream(ack_rx))
    }
}

/// A command of a batch failed inside the batch's `EXEC`, which also moved the checkpoint
/// past it (Redis does not roll a transaction back): going on from the checkpoint would skip
/// the command without a trace, so the pipeline stops for good ([`record_stop`]).
#[derive(Debug)]
pub(crate) struct Committed(pub String);

impl std::fmt::Display for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the pipeline stopped: {} (the checkpoint already passed it)", self.0)
    }
}

impl std::error::Error for Committed {}

/// A failed check of a reply inside a committed `EXEC`, as a [`Committed`] failure.
pub(crate) fn committed(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Committed(format!("{e:#}")))
}

/// Records on the target that `pipeline_id` must not go on, and why
/// ([`ferry_checkpoint::stop_key`]): every later session refuses to start ([`check_stop`]).
async fn record_stop(cfg: &Config, pipeline_id: &str, why: &str) -> anyhow::Result<()> {
    let key = ferry_checkpoint::stop_key(pipeline_id);
    let mut c = match cfg.target.kind {
        ferry_config::DeploymentType::Cluster => {
            let map = ferry_redis::cluster_map(&cfg.target, &[]).await?;
            let slot = ferry_resp::cluster::key_slot(key.as_bytes());
            let node = map.node_of(slot).ok_or_else(|| anyhow!("slot {slot} is not served"))?;
            ferry_redis::connect_node(&cfg.target, &map.masters[node], std::time::Duration::from_secs(10)).await?
        }
        _ => ferry_redis::connect(&cfg.target).await?.1,
    };
    c.call(&[&b"SET"[..], key.as_bytes(), why.as_bytes()]).await?;
    error!(pipeline = %pipeline_id, key = %key, reason = %why, "pipeline stopped for good: fix the cause on the target, then delete the key to go on");
    Ok(())
}

/// The name of the connections a pipeline's batches go through (`CLIENT SETNAME`): one
/// session at a time writes a pipeline, and a new one finds the older ones' by it.
fn client_name(pipeline_id: &str) -> String {
    let safe: String = pipeline_id.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
    format!("{}{safe}", ferry_redis::WRITER_CLIENT_PREFIX)
}

/// Makes `c` the only connection of `pipeline_id` on its node: names it, and kills any other
/// connection of that name (`CLIENT KILL ID`) — an older session of the pipeline, in this
/// process or another, whose pipelined `MULTI`/`EXEC`s may still wait in the node's buffers.
/// Once killed, none of them can run, so the checkpoint read after this is final: a batch
/// applied after it was read would be applied a second time by this session.
///
/// Then checks the side's fence (`fence_key` on this node, see [`check_fence`]) on the same
/// connection.
///
/// A node that refuses `CLIENT LIST`/`CLIENT KILL` (an ACL without `@admin`, a managed
/// service that disables them) is logged and counted (`CLIENT_KILL_REFUSED`): the session
/// goes on without that protection.
pub(crate) async fn take_over(
    c: &mut Connection,
    pipeline_id: &str,
    stats: &Stats,
    fence_key: &str,
) -> anyhow::Result<()> {
    let name = client_name(pipeline_id);
    c.call(&["CLIENT", "SETNAME", &name]).await.context("target")?;
    match ferry_redis::kill_clients(c, |n| n == name).await {
        Ok(0) => {}
        Ok(n) => {
            info!(pipeline = %pipeline_id, connections = n, "closed an older session's connections to the target before reading the checkpoint")
        }
        Err(e) => {
            stats.count_error("CLIENT_KILL_REFUSED");
            warn!(pipeline = %pipeline_id, error = %format!("{e:#}"), "cannot close older sessions' connections (CLIENT LIST/KILL refused): a batch an older session still had queued could be applied twice");
        }
    }
    check_fence(c, pipeline_id, fence_key).await
}

/// Refuses to write into a side whose fence does not admit this pipeline's epoch and
/// direction ([`ferry_checkpoint::Fence`]): the coordinator fenced it (a role swap), so
/// whatever this process believes, its role is over. Checked on the connection the batches
/// then go through, after it is named: a fence set later comes with the connection's kill.
async fn check_fence(c: &mut Connection, pipeline_id: &str, fence_key: &str) -> anyhow::Result<()> {
    let (epoch, reverse) = ferry_runtime::model::epoch_of(pipeline_id);
    let v = c.call(&["GET", fence_key]).await.context("target")?;
    if let Some(f) = v.as_bytes().and_then(|v| ferry_checkpoint::parse_fence(v))
        && !f.admits(epoch, reverse)
    {
        bail!(
            "the target is fenced ({}): pipeline {pipeline_id} (epoch {epoch}, {}) may not write into it; the role \
             changed (see /status of the coordinator)",
            ferry_checkpoint::fence_value(f),
            if reverse { "reverse" } else { "forward" }
        );
    }
    Ok(())
}

/// Refuses a session of a pipeline the target holds a stop of ([`record_stop`]). `c` is a
/// connection to the node serving the stop key.
pub(crate) async fn check_stop(c: &mut Connection, pipeline_id: &str) -> anyhow::Result<()> {
    let key = ferry_checkpoint::stop_key(pipeline_id);
    if let Some(why) = c.call(&["GET", &key]).await.context("target")?.as_bytes() {
        bail!(
            "the pipeline stopped: {} (the command was not applied and the checkpoint passed it; apply it or repair \
             the key by hand, or delete the pipeline's checkpoint for a full copy; then delete {key} on the target \
             to go on)",
            String::from_utf8_lossy(why)
        );
    }
    Ok(())
}

/// What the receiving task needs to know about a batch that was sent.
struct InFlight {
    batch: Batch,
    /// Sent inside MULTI ... SELECT 0, SET checkpoint ... EXEC.
    wrapped: bool,
    /// Commands and KiB in flight; released when the replies are in.
    permits: (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit),
    /// The batch's `apply` span, closed when its replies are in.
    span: tracing::Span,
}

/// The value of a checkpoint key after batch `b` (see [`ferry_checkpoint::value`]).
pub(crate) fn checkpoint_value(replid: &str, b: &Batch) -> String {
    ferry_checkpoint::value(replid, b.offset, b.resume_offset, b.resume_db)
}

/// Bookkeeping once every reply of a batch is in: counters, and the acknowledgement of its
/// source offset. False when the decoder is gone.
pub(crate) async fn batch_applied(b: &Batch, stats: &Stats, ack_tx: &mpsc::Sender<Result<Ack, Status>>) -> bool {
    stats.keys_applied.fetch_add(b.keys as u64, Relaxed);
    stats.commands_applied.fetch_add(b.commands as u64, Relaxed);
    if b.rdb_end {
        stats.set_rdb_applied();
        info!(offset = b.offset, "full copy applied");
    }
    if b.offset >= 0 {
        stats.applied_offset.store(b.offset, Relaxed);
        let ack = Ack { applied_offset: b.offset, rdb_applied: stats.rdb_applied.load(Relaxed), ..Default::default() };
        return ack_tx.send(Ok(ack)).await.is_ok();
    }
    true
}

/// Answers a session's hello (both writers): the checkpoint the target holds and the RDB
/// version it loads. The session starts from the checkpoint's offset.
pub(crate) async fn hello_ack(
    ack_tx: &mpsc::Sender<Result<Ack, Status>>,
    stats: &Stats,
    checkpoint: Checkpoint,
    target_rdb_version: u32,
    earlier_copy: bool,
    commands: Option<&ferry_resp::commands::CommandTable>,
) {
    if checkpoint.present {
        stats.applied_offset.store(checkpoint.offset, Relaxed);
    }
    let ack = Ack {
        applied_offset: checkpoint.offset,
        rdb_applied: false,
        checkpoint: Some(checkpoint),
        target_rdb_version,
        earlier_copy,
        full_copy_needed: String::new(),
        command_table: commands.map(|t| t.encode()).unwrap_or_default(),
    };
    let _ = ack_tx.send(Ok(ack)).await;
    stats.clear_error();
}

/// Reads the checkpoint of `pipeline_id` from the target, and whether the target holds an
/// earlier copy of the pipeline (a checkpoint, or the marker of an unfinished re-copy).
async fn read_checkpoint(conn: &mut Connection, pipeline_id: &str) -> anyhow::Result<(Checkpoint, bool)> {
    conn.call(&["SELECT", "0"]).await.context("target")?;
    check_stop(conn, pipeline_id).await?;
    let reply = conn.call(&["GET", &ferry_checkpoint::key(pipeline_id)]).await.context("target")?;
    let Some(v) = reply.as_bytes() else { return Ok((Checkpoint::default(), false)) };
    if ferry_checkpoint::is_recopy_marker(v) {
        return Ok((Checkpoint::default(), true));
    }
    match ferry_checkpoint::parse(v) {
        Some(c) => Ok((c, true)),
        None => {
            warn!(key = %ferry_checkpoint::key(pipeline_id), "ignoring a malformed checkpoint on the target");
            Ok((Checkpoint::default(), false))
        }
    }
}

async fn session(
    cfg: &Config,
    stats: &Arc<Stats>,
    hello: Batch,
    mut batches: Streaming<Batch>,
    ack_tx: mpsc::Sender<Result<Ack, Status>>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // A reverse pipeline of a role swap writes into the configured source.
    let reversed;
    let cfg = if hello.reverse {
        reversed = cfg.reversed();
        &reversed
    } else {
        cfg
    };
    if cfg.target.kind == ferry_config::DeploymentType::Cluster {
        return crate::cluster::session(cfg, stats, hello, batches, ack_tx, cancel).await;
    }
    let (target_addr, mut conn) = ferry_redis::connect(&cfg.target).await.context("target")?;
    info!(target = %cfg.target.describe(), master = %target_addr, "connected to the target");
    // The session opens with a hello: answer with the checkpoint the target holds.
    let pipeline_id = hello.pipeline_id.clone();
    let ckpt_key = Bytes::from(ferry_checkpoint::key(&pipeline_id));
    take_over(&mut conn, &pipeline_id, stats, &ferry_checkpoint::fence_key()).await?;
    let (checkpoint, mut earlier_copy) = read_checkpoint(&mut conn, &pipeline_id).await?;
    if checkpoint.present {
        info!(pipeline = %pipeline_id, replid = %checkpoint.replid, offset = checkpoint.offset, "checkpoint found on the target");
    }
    let target_rdb_version = ferry_redis::server_rdb_version(&mut conn).await;
    let commands = ferry_redis::command_table(&mut conn).await;
    hello_ack(&ack_tx, stats, checkpoint, target_rdb_version, earlier_copy, commands.as_ref()).await;
    let (mut rd, mut wr) = conn.into_split();
    let limit = cfg.writer.pipeline_count_limit;
    let sem = Arc::new(Semaphore::new(limit));
    // Bytes in flight, counted in KiB.
    let kib_limit = (cfg.writer.max_inflight_bytes / 1024).clamp(1, u32::MAX as u64 >> 4) as usize;
    let bytes_sem = Arc::new(Semaphore::new(kib_limit));
    let (inflight_tx, mut inflight_rx) = mpsc::channel::<InFlight>(limit.max(1));
    // Batches whose replies are all in (the sender waits on it before removing stale keys).
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0u64);

    let sender = async {
        // Owned by this future: dropped when it ends, which lets the receiver finish.
        let inflight_tx = inflight_tx;
        let limiter = ferry_runtime::RateLimiter::new(cfg.writer.max_ops_per_sec);
        let byte_limiter = ferry_runtime::RateLimiter::new(cfg.writer.max_bytes_per_sec);
        let mut replid = String::new();
        let mut sent = 0u64;
        // During a re-copy: the keys it writes and the source master it copies.
        let mut recopy: Option<(crate::stale::KeySet, String)> = None;
        loop {
            let msg = tokio::select! {
                m = batches.message() => m.map_err(|s| anyhow!("decoder stream: {}", s.message()))?,
                _ = cancel.cancelled() => return Ok(()),
            };
            let Some(mut b) = msg else { return Ok::<(), anyhow::Error>(()) };
            if let Some(begin) = b.begin.take() {
                replid = begin.replid.clone();
                recopy = None;
                if begin.full {
                    // The target is about to hold a partial copy: no checkpoint may describe it.
                    // A re-copy leaves a marker instead, so that it is known as one until done.
                    let mut blob = BytesMut::new();
                    encode_command_into(&mut blob, &[&b"SELECT"[..], b"0"]);
                    if earlier_copy && cfg.writer.remove_stale_keys {
                        info!(pipeline = %pipeline_id, "a re-copy: keys the source no longer holds will be removed from the target once the snapshot is applied");
                        encode_command_into(
                            &mut blob,
                            &[&b"SET"[..], &ckpt_key, ferry_checkpoint::RECOPY_MARKER.as_bytes()],
                        );
                        recopy = Some((crate::stale::KeySet::default(), begin.source_address.clone()));
                    } else {
                        encode_command_into(&mut blob, &[&b"DEL"[..], &ckpt_key]);
                    }
                    b.count = 2;
                    if cfg.writer.empty_target_before_full_copy {
                        warn!(target = %cfg.target.describe(), "emptying the target before the full copy (writer.empty_target_before_full_copy = true): FLUSHALL");
                        encode_command_into(&mut blob, &[&b"FLUSHALL"[..]]);
                        b.count += 1;
                    }
                    b.resp = blob.freeze();
                } else {
                    stats.set_rdb_applied();
                }
            }
            if let Some((written, source_master)) = &mut recopy {
                written.note(&b.resp).context("a batch of the full copy")?;
                if b.rdb_end {
                    // Before the checkpoint that ends the copy: once every batch so far is in.
                    done_rx.wait_for(|n| *n >= sent).await?;
                    remove_stale(cfg, &target_addr, source_master, written, stats).await?;
                    recopy = None;
                }
            }
            if b.rdb_end {
                earlier_copy = true;
            }
            // Batches that move the source offset are applied atomically with their checkpoint.
            let wrapped = b.offset >= 0;
            let total = b.count + if wrapped { 4 } else { 0 };
            limiter.acquire(b.count as u64).await;
            byte_limiter.acquire(b.resp.len() as u64).await;
            let permits = sem.clone().acquire_many_owned((total as usize).clamp(1, limit) as u32).await?;
            let kib = (b.resp.len().div_ceil(1024)).clamp(1, kib_limit) as u32;
            let byte_permits = bytes_sem.clone().acquire_many_owned(kib).await?;
            if wrapped {
                let mut head = BytesMut::new();
                encode_command_into(&mut head, &[&b"MULTI"[..]]);
                let mut tail = BytesMut::new();
                let value = checkpoint_value(&replid, &b);
                encode_command_into(&mut tail, &[&b"SELECT"[..], b"0"]);
                encode_command_into(&mut tail, &[&b"SET"[..], &ckpt_key, value.as_bytes()]);
                encode_command_into(&mut tail, &[&b"EXEC"[..]]);
                wr.write_all(&head).await.context("target")?;
                wr.write_all(&b.resp).await.context("target")?;
                wr.write_all(&tail).await.context("target")?;
            } else if !b.resp.is_empty() {
                wr.write_all(&b.resp).await.context("target")?;
            }
            let span = ferry_runtime::telemetry::apply_span(&b, &pipeline_id);
            if inflight_tx.send(InFlight { batch: b, wrapped, permits: (permits, byte_permits), span }).await.is_err() {
                return Ok(());
            }
            sent += 1;
        }
    };
    let receiver = async {
        while let Some(InFlight { batch: b, wrapped, permits, span }) = inflight_rx.recv().await {
            let check = ReplyCheck { batch: &b, stats };
            if wrapped {
                let ok = rd.read_reply().await.context("target")?;
                if let Some(e) = ok.first_error() {
                    bail!("target refused MULTI: {}", printable(e));
                }
                let mut queued_error = None;
                for i in 0..b.count + 2 {
                    let r = rd.read_reply().await.context("target")?;
                    if let (Some(e), None) = (r.first_error(), &queued_error) {
                        queued_error = Some((i, printable(e)));
                    }
                }
                match rd.read_reply().await.context("target")? {
                    Reply::Array(Some(items)) => {
                        for (i, item) in items.iter().enumerate() {
                            if (i as u32) < b.count {
                                check.reply(i as u32, item).map_err(committed)?;
                            } else if let Some(e) = item.first_error() {
                                bail!("target refused the checkpoint write: {}", printable(e));
                            }
                        }
                    }
                    other => {
                        let (i, e) = queued_error.unwrap_or((0, format!("{other:?}")));
                        if e.starts_with("NOREPLICAS") {
                            stats.count_error("NOREPLICAS");
                            return Err(no_replicas(&e));
                        }
                        let (name, key) = (command_name_at(&b.resp, i as usize), command_key(&b.resp, i as usize));
                        stats.count_error("EXECABORT");
                        bail!("target rejected {name} on key {key}: {e}");
                    }
                }
            } else {
                for i in 0..b.count {
                    let reply = rd.read_reply().await.context("target")?;
                    check.reply(i, &reply)?;
                }
            }
            if !batch_applied(&b, stats, &ack_tx).await {
                return Ok(());
            }
            drop(permits);
            drop(span);
            done_tx.send_modify(|n| *n += 1);
        }
        Ok::<(), anyhow::Error>(())
    };
    // A sentinel-managed target: end the session when the master moved, so the next one
    // resumes from the new master's checkpoint.
    let moved = ferry_redis::master_moved(&cfg.target, &target_addr);
    tokio::pin!(sender, receiver, moved);
    // The receiver ends when the sender ends (channel closed) and every reply is in.
    let mut sender_done = false;
    loop {
        tokio::select! {
            r = &mut sender, if !sender_done => {
                r?;
                sender_done = true;
            }
            r = &mut receiver => return r,
            e = &mut moved => return Err(e.context("target")),
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// Removes the keys of a re-copy's keyspace the snapshot did not write, on a separate
/// connection to the target's master `target_addr` (see [`crate::stale`]).
async fn remove_stale(
    cfg: &Config,
    target_addr: &str,
    source_master: &str,
    written: &crate::stale::KeySet,
    stats: &Stats,
) -> anyhow::Result<()> {
    let Some(mut keyspace) = crate::stale::keyspace_or_warn(cfg, source_master, stats).await else { return Ok(()) };
    let mut c = ferry_redis::connect_node(&cfg.target, target_addr, std::time::Duration::from_secs(10))
        .await
        .context("target")?;
    let removed =
        crate::stale::remove(&mut c, written, &mut keyspace).await.context("removing stale keys on the target")?;
    crate::stale::removed(removed, written, stats);
    Ok(())
}

/// Checks the reply to command `i` of a batch against the existing-key policy.
pub(crate) struct ReplyCheck<'a> {
    pub batch: &'a Batch,
    pub stats: &'a Stats,
}

impl ReplyCheck<'_> {
    pub fn reply(&self, i: u32, reply: &Reply) -> anyhow::Result<()> {
        let b = self.batch;
        // Only the target's "cannot load this" counts as a module skip (Redis answers a module
        // type it does not know with "Bad data format"); OOM, READONLY, NOREPLICAS... are
        // errors like any other.
        if let Some(err) = reply.first_error()
            && b.module_restores.binary_search(&i).is_ok()
            && (err.starts_with(b"ERR Bad data format")
                || String::from_utf8_lossy(err).to_lowercase().contains("module"))
        {
            // The target has no module that can load this type: skip the key, loudly.
            self.stats.modules_skipped.fetch_add(1, Relaxed);
            let module = nth_command(&b.resp, i as usize)
                .and_then(|args| module_of_payload(args.get(3)?))
                .unwrap_or_else(|| "?".into());
            warn!(key = %command_key(&b.resp, i as usize), module = %module, reply = %printable(err), "skipping a module value: the target cannot load it");
            return Ok(());
        }
        if b.renamenx.binary_search(&i).is_ok() {
            if reply.first_error().is_some_and(|e| e.starts_with(b"ERR no such key")) {
                // The value's TTL passed while it was being built: like RESTORE of an expired key.
                return Ok(());
            }
            if *reply == Reply::Integer(0) {
                if b.existing_is_fatal {
                    self.stats.count_error("BUSYKEY");
                    bail!("target key {} already exists (existing_key = \"panic\")", command_key(&b.resp, i as usize));
                }
                self.stats.keys_skipped.fetch_add(1, Relaxed);
                return Ok(());
            }
        }
        let Some(err) = reply.first_error() else { return Ok(()) };
        // A library a cluster source's other masters deleted first (each master that ran the
        // DELETE replicates it): already what the source holds.
        if err.starts_with(b"ERR Library not found")
            && nth_command(&b.resp, i as usize).is_some_and(|a| {
                a.len() > 1 && a[0].eq_ignore_ascii_case(b"FUNCTION") && a[1].eq_ignore_ascii_case(b"DELETE")
            })
        {
            return Ok(());
        }
        let kind = printable(err.split(|c| *c == b' ').next().unwrap_or(b"ERR"));
        self.stats.count_error(&kind);
        if kind == "NOREPLICAS" {
            return Err(no_replicas(&printable(err)));
        }
        if kind == "BUSYKEY" && b.busykey_is_skip {
            self.stats.keys_skipped.fetch_add(1, Relaxed);
            return Ok(());
        }
        let (name, key) = (command_name_at(&b.resp, i as usize), command_key(&b.resp, i as usize));
        if kind == "BUSYKEY" && b.existing_is_fatal {
            bail!("target key {key} already exists (existing_key = \"panic\")");
        }
        warn!(command = %name, key = %key, reply = %printable(err), "target rejected a command");
        bail!("target rejected {name} on key {key}: {}", printable(err))
    }
}

/// The module type name of a module value's `RESTORE` payload (type 7, then the module id).
fn module_of_payload(payload: &[u8]) -> Option<String> {
    let (&t, rest) = payload.split_first()?;
    if t != 7 && t != 6 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let id = match first >> 6 {
        0 => u64::from(first & 0x3f),
        1 => (u64::from(first & 0x3f) << 8) | u64::from(*rest.first()?),
        _ if first == 0x80 => u64::from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
        _ if first == 0x81 => u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
        _ => return None,
    };
    Some(ferry_rdb::module_name_from_id(id).0)
}

/// A master with `min-replicas-to-write` refuses writes until its replicas are back (a newly
/// promoted one, typically). Nothing of the batch was applied: the session ends, and the next
/// one resumes from the checkpoint once the target accepts writes again.
fn no_replicas(reply: &str) -> anyhow::Error {
    anyhow!(
        "the target refuses writes until enough of its replicas are connected (min-replicas-to-write); retrying: {reply}"
    )
}

/// The i-th command of a RESP blob, parsed (rare path: only for error messages).
pub(crate) fn nth_command(resp: &Bytes, i: usize) -> Option<Vec<Bytes>> {
    let mut pos = 0;
    for _ in 0..i {
        pos += ferry_resp::scan_command(&resp[pos..], usize::MAX).ok()??;
    }
    let len = ferry_resp::scan_command(&resp[pos..], usize::MAX).ok()??;
    ferry_resp::parse_command(&resp.slice(pos..pos + len)).ok()
}

pub(crate) fn command_name_at(resp: &Bytes, i: usize) -> String {
    nth_command(resp, i).and_then(|a| a.first().map(|n| printable(n).to_uppercase())).unwrap_or_else(|| "?".into())
}

/// The key a command names, quoted for a log line (never the value).
pub(crate) fn command_key(resp: &Bytes, i: usize) -> String {
    match nth_command(resp, i) {
        Some(args) if args.len() > 1 => format!("{:?}", printable(&args[1])),
        _ => "(none)".into(),
    }
}
