//! The reader: a replica of one source leader.
//!
//! It authenticates, runs the replica handshake, and streams what the master sends
//! to the decoder: the RDB transfer as chunks, then whole commands with their end
//! offsets. It answers `REPLCONF GETACK` and sends `REPLCONF ACK` every second with
//! the offset the target has applied (never more), so `WAIT` on the source means
//! "on the target". Every session failure (source or downstream) is logged, shown in
//! the status, and retried with backoff.

pub mod files;
pub mod spool;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, anyhow};
use ferry_config::Config;
use ferry_proto::decoder_client::DecoderClient;
use ferry_proto::{Assignment, Commands, Frame, Hello, RdbEnd, SyncStart, frame};
use ferry_resp::replication::{PsyncReply, ReplEvent, ReplicaOptions, handshake};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, warn};

use crate::spool::Spool;
use ferry_runtime::{Backoff, FullCopyNeeded, Phase, Stats};

/// The next frame of the spool for the decoder stream (ends it when the spool is closed).
async fn next_frame((s, stats): (Arc<Spool>, Arc<Stats>)) -> Option<(Frame, (Arc<Spool>, Arc<Stats>))> {
    let next = s.pop().await;
    stats.spool_bytes.store(s.disk_bytes(), Relaxed);
    match next {
        Ok(Some(f)) => Some((f, (s, stats))),
        Ok(None) => None,
        Err(e) => {
            error!(error = %format!("{e:#}"), "the spool failed");
            None
        }
    }
}

/// Ends the spool's stream when a session ends, however it ends.
struct CloseOnDrop(Arc<Spool>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the reader acknowledges to the source, and when (`REPLCONF ACK`).
///
/// - One byte less than the target holds: `FAILOVER` without `TO` hands the master role to
///   the first replica whose acknowledged offset equals the master's, and a reader cannot
///   take it (it has no port to connect to: the failover would fail). `WAIT` still counts
///   the reader once the target holds a write: the source's stream moves past it (the next
///   write, the `REPLCONF GETACK` that `WAIT` itself sends, or the source's periodic `PING`).
/// - Never more than the target holds, so `WAIT` means "on the target".
/// - Only while the target makes progress (or the pipeline is caught up, or the source asks):
///   `min-replicas-to-write` counts a replica as good while it acknowledged within
///   `min-replicas-max-lag` seconds, and a reader whose target is stuck is not a good
///   replica. An acknowledgement still goes out every [`ACK_KEEPALIVE`], under the source's
///   `repl-timeout` (60 s by default), so a stuck target does not get the reader dropped.
struct AckPolicy {
    last_applied: i64,
    last_sent: Option<std::time::Instant>,
}

/// The longest the reader goes without acknowledging.
const ACK_KEEPALIVE: Duration = Duration::from_secs(30);

impl AckPolicy {
    fn new() -> Self {
        AckPolicy { last_applied: -1, last_sent: None }
    }

    /// The offset to acknowledge now, if any: `applied` is what the target holds,
    /// `received` what the source sent, `asked` when the source asked (`GETACK`).
    fn next(&mut self, applied: i64, received: i64, asked: bool, now: std::time::Instant) -> Option<i64> {
        let progressed = applied != self.last_applied;
        let caught_up = applied >= received;
        let keepalive = self.last_sent.is_none_or(|t| now.duration_since(t) >= ACK_KEEPALIVE);
        if !(progressed || caught_up || asked || keepalive) {
            return None;
        }
        self.last_applied = applied;
        self.last_sent = Some(now);
        // Never past what the source sent in this session's history, whatever `applied`
        // says (it may still be another history's, from before a full resynchronization).
        Some((applied.min(received) - 1).max(0))
    }
}

/// A session that ran this long before it failed (or made the target apply something) is
/// retried at once; sessions that fail sooner back off (up to 5 s).
const HEALTHY_SESSION: Duration = Duration::from_secs(2);

/// The largest argument of a source command the reader takes: `reader.proto_max_bulk_len`,
/// at most what one message between ferry's processes holds. A bigger one stops the session
/// with an error naming the command, the key and the limit.
fn max_command_bytes(cfg: &Config) -> usize {
    (cfg.reader.proto_max_bulk_len as usize).min(ferry_runtime::grpc::MAX_COMMAND_BYTES)
}

/// How often the reader asks the coordinator for the plan: a role swap stops the
/// pipelines of the old role within about this long.
const PLAN_POLL: Duration = Duration::from_millis(500);

/// How long the running pipelines go on while the coordinator does not answer: then they
/// stop, since a reader cut off from its coordinator cannot know whether its role still
/// holds, and start again once the coordinator confirms the plan. (The sides' fences stop
/// its writes sooner; this stops it from reading and retrying against them.)
const PLAN_CONFIRM: Duration = Duration::from_secs(10);

/// Runs the reader until `cancel` fires: one replication session loop per pipeline it
/// serves (all of the plan, or the one given with `--pipeline`). The plan is asked for
/// again and again: pipelines that leave it (a role swap) are stopped, new ones started.
/// While the coordinator cannot be reached, the running pipelines go on for
/// [`PLAN_CONFIRM`], then stop until it answers again.
pub async fn run(
    cfg: Config,
    coordinator: String,
    pipeline: Option<String>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    tasks.spawn(ferry_runtime::metrics::serve(cfg.reader.metrics_addr.clone(), "reader", cancel.clone()));
    // Each running pipeline, and the leader the coordinator plans it on (it follows that
    // leader when the two disagree for long: see `plan_moved`).
    type Running = (CancellationToken, tokio::sync::watch::Sender<String>);
    let mut running: std::collections::HashMap<String, Running> = std::collections::HashMap::new();
    let mut warned = false;
    let mut confirmed = std::time::Instant::now();
    let started = std::time::Instant::now();
    loop {
        let mut poll = PLAN_POLL;
        // The coordinator may hold the request while it discovers the source.
        let answer = tokio::select! {
            a = ferry_runtime::plan_once(&coordinator, "reader", pipeline.as_deref()) => a,
            _ = cancel.cancelled() => break,
        };
        match answer {
            Ok(assignments) => {
                warned = false;
                confirmed = std::time::Instant::now();
                running.retain(|id, (token, _)| {
                    let keep = assignments.iter().any(|a| a.pipeline_id == *id);
                    if !keep {
                        info!(pipeline = %id, "pipeline no longer planned (role change): stopping it");
                        token.cancel();
                    }
                    keep
                });
                for a in assignments {
                    if let Some((_, planned)) = running.get(&a.pipeline_id) {
                        planned
                            .send_if_modified(|p| std::mem::replace(p, a.source_address.clone()) != a.source_address);
                        continue;
                    }
                    info!(pipeline = %a.pipeline_id, leader = %a.source_address, downstream = %a.downstream_address, reverse = a.reverse, "assigned");
                    let token = cancel.child_token();
                    let (planned_tx, planned_rx) = tokio::sync::watch::channel(a.source_address.clone());
                    running.insert(a.pipeline_id.clone(), (token.clone(), planned_tx));
                    tasks.spawn(run_pipeline(cfg.clone(), coordinator.clone(), a, planned_rx, token));
                }
            }
            Err(e) => {
                if !warned {
                    warn!(coordinator = %coordinator, error = %e, "waiting for the coordinator");
                    warned = true;
                }
                if running.is_empty()
                    && let Some(soon) = e.retry_soon(started)
                {
                    poll = soon;
                }
                if !running.is_empty() && confirmed.elapsed() >= PLAN_CONFIRM {
                    warn!(
                        coordinator = %coordinator,
                        seconds = PLAN_CONFIRM.as_secs(),
                        "the coordinator has not confirmed the plan: stopping the pipelines until it answers"
                    );
                    for (_, (token, _)) in running.drain() {
                        token.cancel();
                    }
                }
            }
        }
        if !ferry_runtime::sleep_or_cancel(poll, &cancel).await {
            break;
        }
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn run_pipeline(
    cfg: Config,
    coordinator: String,
    assignment: Assignment,
    planned: tokio::sync::watch::Receiver<String>,
    cancel: CancellationToken,
) {
    // A reverse pipeline reads the configured target and writes the configured source.
    let cfg = if assignment.reverse { cfg.reversed() } else { cfg };
    let stats = Stats::new(Phase::Connecting);
    let tasks = TaskTracker::new();
    // Its own token: the last report, sent when it is cancelled, says "stopped".
    let report_cancel = CancellationToken::new();
    tasks.spawn(ferry_runtime::report_loop(
        coordinator.clone(),
        assignment.pipeline_id.clone(),
        "reader",
        stats.clone(),
        report_cancel.clone(),
    ));
    // A standalone source is where the coordinator says (a sidecar may be given its own
    // leader); a sentinel-managed one is resolved at every session, and a cluster shard is
    // whichever node serves its slot now: failovers are followed.
    let mut source_cfg = cfg.source.clone();
    if source_cfg.kind == ferry_config::DeploymentType::Standalone && !assignment.source_address.is_empty() {
        source_cfg.address = assignment.source_address.clone();
    }
    let mut slot = u16::try_from(assignment.slot).ok();
    let source = match slot {
        Some(s) => format!("{} (slot {s})", source_cfg.describe()),
        None => source_cfg.describe(),
    };
    let decoder = ferry_runtime::grpc_url(&assignment.downstream_address);
    let mut backoff = Backoff::new();
    let mut last_leader = assignment.source_address.clone();
    let mut force_full = false;
    while !cancel.is_cancelled() {
        let started = std::time::Instant::now();
        let applied_before = stats.applied_offset.load(std::sync::atomic::Ordering::Relaxed);
        let session = Session {
            cfg: &cfg,
            source_cfg: &source_cfg,
            pipeline_id: &assignment.pipeline_id,
            reverse: assignment.reverse,
            source: &source,
            decoder: &decoder,
            stats: &stats,
            planned: &planned,
            force_full: std::mem::take(&mut force_full),
        };
        match session.run(&cancel, &mut last_leader, &mut slot).await {
            Ok(()) => break,
            // Shutting down: what failed is the shutdown's doing, not the session's.
            Err(_) if cancel.is_cancelled() => break,
            Err(e) => {
                let msg = format!("{e:#}");
                error!(source = %source, error = %msg, "replication session failed");
                if e.downcast_ref::<FullCopyNeeded>().is_some() {
                    force_full = true;
                } else if is_command_too_large(&e) {
                    // The stream cannot carry it; a full copy carries the value in chunks.
                    warn!(source = %source, "the next session makes a full copy, which carries big values in bounded chunks");
                    stats.count_error("COMMAND_TOO_LARGE");
                    force_full = true;
                }
                stats.set_error(&msg);
                stats.set_phase(Phase::Failed);
                // Sessions that keep failing soon after they start without the target
                // applying anything (a downstream error after each full copy, say) back off;
                // one that ran a while or made progress retries at once.
                let progressed = stats.applied_offset.load(std::sync::atomic::Ordering::Relaxed) > applied_before;
                if progressed || started.elapsed() >= HEALTHY_SESSION {
                    backoff.reset();
                }
                if !ferry_runtime::sleep_or_cancel(backoff.next_delay(), &cancel).await {
                    break;
                }
            }
        }
    }
    stats.set_phase(Phase::Stopped);
    report_cancel.cancel();
    tasks.close();
    tasks.wait().await;
}

/// The stream to the decoder: frames go through the spool, acks come back; the first ack
/// carried the checkpoint the target holds.
struct Downstream {
    tx: Arc<Spool>,
    acks: tonic::Streaming<ferry_proto::Ack>,
    checkpoint: Option<ferry_proto::Checkpoint>,
    _close: CloseOnDrop,
}

struct Session<'a> {
    cfg: &'a Config,
    source_cfg: &'a ferry_config::RedisConfig,
    pipeline_id: &'a str,
    reverse: bool,
    source: &'a str,
    decoder: &'a str,
    stats: &'a Arc<Stats>,
    /// The leader the coordinator plans this pipeline on.
    planned: &'a tokio::sync::watch::Receiver<String>,
    /// Ask for a full copy whatever the target's checkpoint (the stream held a command too
    /// big to carry: the copy carries its value in bounded chunks instead).
    force_full: bool,
}

/// Whether `e` is a source command bigger than the reader takes ([`max_command_bytes`]).
fn is_command_too_large(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ferry_resp::RespError>(),
            Some(ferry_resp::RespError::Frame { source: ferry_resp::FrameError::CommandTooLarge { .. }, .. })
        )
    })
}

/// Resolves with the planned leader of a cluster pipeline when it has differed from
/// `current` for [`PLAN_DISAGREEMENT`] and is a master that serves slots: the coordinator
/// gave this pipeline's shard to another master (it restarted and named the pipelines
/// after their masters' first slots again, say), and another pipeline may be reading
/// `current`. During a failover the two agree again within seconds.
async fn plan_moved(
    r: &ferry_config::RedisConfig,
    mut planned: tokio::sync::watch::Receiver<String>,
    current: &str,
) -> String {
    if r.kind != ferry_config::DeploymentType::Cluster {
        return std::future::pending().await;
    }
    loop {
        let target = planned.borrow_and_update().clone();
        if !target.is_empty() && target != current {
            tokio::time::sleep(PLAN_DISAGREEMENT).await;
            if *planned.borrow() == target
                && let Ok(map) = ferry_redis::cluster_map(r, std::slice::from_ref(&target)).await
                && map.master_index(&target).is_some()
                && map.master_index(current).is_some()
            {
                return target;
            }
            continue;
        }
        if planned.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// How long a reader and the coordinator's plan may disagree on a cluster pipeline's leader.
const PLAN_DISAGREEMENT: Duration = Duration::from_secs(5);

impl Session<'_> {
    /// One replication session; returns Ok only when cancelled.
    async fn run(
        &self,
        cancel: &CancellationToken,
        last_leader: &mut String,
        slot: &mut Option<u16>,
    ) -> anyhow::Result<()> {
        let stats = self.stats;
        stats.set_phase(Phase::Connecting);
        if self.source_cfg.kind == ferry_config::DeploymentType::File {
            return self.run_file(cancel).await;
        }
        // A cluster shard is followed by its master's lineage: the same master while it
        // serves slots (the hint moves with its slots), the one serving the hint after a failover.
        let addr = ferry_redis::resolve_at(self.source_cfg, slot.as_mut(), last_leader).await.context("source")?;
        let conn =
            ferry_redis::connect_node(self.source_cfg, &addr, Duration::from_secs(10)).await.context("source")?;
        *last_leader = addr.clone();
        if addr != self.source_cfg.address {
            info!(source = %self.source, master = %addr, "source master resolved");
        }
        if self.cfg.reader.method == ferry_config::ReadMethod::Scan {
            return self.run_scan(cancel, conn, &addr).await;
        }
        let mut conn = conn;
        let opts = ReplicaOptions {
            listening_port: self.cfg.reader.listening_port,
            max_bulk: max_command_bytes(self.cfg),
            timeout: Duration::from_secs(60),
            version: ferry_redis::announced_replica_version(&mut conn).await.map(str::to_string),
        };
        let Downstream { tx, mut acks, checkpoint, _close } = self.open_downstream(cancel).await?;
        // Resume after the last data command: what followed it changed nothing, and a promoted
        // replica may never have received it.
        let psync = checkpoint.as_ref().filter(|_| !self.force_full).map(|c| (c.replid.as_str(), c.resume_offset + 1));
        let requested = psync.map(|(_, o)| o).unwrap_or(-1);
        let (mut repl, mut acker, reply) = handshake(conn, psync, &opts)
            .instrument(tracing::info_span!("psync", pipeline = %self.pipeline_id, source = %self.source, master = %addr, requested_offset = requested))
            .await
            .context("source replication handshake")?;
        let (replid, start, full) = match &reply {
            PsyncReply::FullResync { replid, offset } => (replid.clone(), *offset, true),
            PsyncReply::Continue { replid } => {
                let id = replid.clone().or_else(|| checkpoint.as_ref().map(|c| c.replid.clone())).unwrap_or_default();
                (id, repl.offset(), false)
            }
        };
        // The transfer of a full copy is a span (from the handshake to the end of the RDB).
        let mut full_copy: Option<tracing::Span> = None;
        if full {
            stats.full_syncs.fetch_add(1, Relaxed);
            stats.rdb_applied.store(false, Relaxed);
            // A new replication history: the target holds nothing of it until the copy is
            // applied, whatever it held of the previous one (acknowledging that would make
            // `WAIT` and `min-replicas-to-write` count writes the target does not have).
            stats.applied(0);
            match &checkpoint {
                Some(c) => warn!(
                    source = %self.source, checkpoint_replid = %c.replid, checkpoint_offset = c.offset,
                    "full copy needed: the source cannot continue from the target's checkpoint (its backlog no longer holds that offset, or its replication history changed)"
                ),
                None => {
                    info!(source = %self.source, "full copy needed: the target holds no checkpoint of this pipeline")
                }
            }
            info!(source = %self.source, replid = %replid, offset = start, "full resynchronization");
            full_copy = Some(
                tracing::info_span!("full_copy", pipeline = %self.pipeline_id, source = %self.source, replid = %replid, offset = start, rdb_bytes = tracing::field::Empty),
            );
        } else {
            stats.partial_resyncs.fetch_add(1, Relaxed);
            stats.applied_offset.store(start, Relaxed);
            stats.set_rdb_applied();
            info!(source = %self.source, replid = %replid, offset = start, "partial resynchronization from the target's checkpoint");
        }
        stats.source_offset.store(start, Relaxed);
        stats.rdb_bytes.store(0, Relaxed);
        stats.rdb_size.store(0, Relaxed);
        stats.set_phase(if full { Phase::FullSync } else { Phase::Incremental });
        let db = if full { 0 } else { checkpoint.as_ref().map(|c| c.resume_db).unwrap_or(0) };
        let start_frame = SyncStart {
            pipeline_id: self.pipeline_id.to_string(),
            replid: replid.clone(),
            offset: start,
            full,
            db,
            source_address: addr.clone(),
        };
        tx.push(Frame { kind: Some(frame::Kind::Start(start_frame)) })?;
        stats.clear_error();

        // ACKs to the source: every second, and at once when asked (GETACK) or after a diskless RDB.
        let ack_now = Arc::new(Notify::new());
        let session_cancel = cancel.child_token();
        // After a diskless transfer the master streams commands only once an ACK reaches it
        // after it put us online, which can be later than the end of the transfer as we see it:
        // ACK every 50 ms until the stream starts (meanwhile the master buffers every write).
        let awaiting_stream = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ack_task = {
            let ack_now = ack_now.clone();
            let stats = stats.clone();
            let cancel = session_cancel.clone();
            let awaiting_stream = awaiting_stream.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut fast = tokio::time::interval(Duration::from_millis(50));
                let mut policy = AckPolicy::new();
                loop {
                    let asked = tokio::select! {
                        _ = tick.tick() => false,
                        _ = fast.tick(), if awaiting_stream.load(Relaxed) => true,
                        _ = ack_now.notified() => true,
                        _ = cancel.cancelled() => return Ok::<(), ferry_resp::RespError>(()),
                    };
                    let (applied, received) = (stats.applied_offset.load(Relaxed), stats.source_offset.load(Relaxed));
                    if let Some(offset) = policy.next(applied, received, asked, std::time::Instant::now()) {
                        acker.ack(offset).await?;
                    }
                }
            })
        };
        // A sentinel-managed source: move to the new master after a failover (PSYNC from the
        // checkpoint continues on the old replication id, which the new master keeps as replid2).
        let moved = ferry_redis::master_moved_at(self.source_cfg, *slot, &addr);
        tokio::pin!(moved);
        let replanned = plan_moved(self.source_cfg, self.planned.clone(), &addr);
        tokio::pin!(replanned);
        let result = async {
            let mut rdb_bytes = 0u64;
            // The source asked for an ACK (`WAIT` does) at this offset: answer again as soon
            // as the target holds it, so `WAIT` returns without waiting for the next tick.
            let mut getack_at: Option<i64> = None;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    e = &mut moved => return Err(e.context("source")),
                    to = &mut replanned => {
                        warn!(pipeline = %self.pipeline_id, from = %addr, to = %to, "the coordinator plans this pipeline on another master: moving there");
                        *last_leader = to.clone();
                        return Err(anyhow!("the coordinator plans this pipeline on {to}, not {addr}"));
                    }
                    ack = acks.message() => match ack {
                        Ok(Some(ack)) if !ack.full_copy_needed.is_empty() => {
                            return Err(anyhow::Error::new(FullCopyNeeded(ack.full_copy_needed)));
                        }
                        Ok(Some(ack)) => {
                            stats.applied(ack.applied_offset);
                            if ack.rdb_applied { stats.set_rdb_applied(); }
                            if getack_at.is_some_and(|at| ack.applied_offset >= at) {
                                getack_at = None;
                                ack_now.notify_one();
                            }
                        }
                        Ok(None) => return Err(anyhow!("the decoder closed the stream")),
                        Err(s) => return Err(anyhow!("downstream failed: {}", s.message())),
                    },
                    ev = repl.next_event() => {
                        let ev = ev.context("source")?;
                        let frame = match ev {
                            ReplEvent::RdbStart { size } => {
                                stats.rdb_size.store(size.unwrap_or(0), Relaxed);
                                info!(size = ?size, diskless = size.is_none(), "rdb transfer started");
                                continue;
                            }
                            ReplEvent::RdbChunk(b) => {
                                rdb_bytes += b.len() as u64;
                                stats.rdb_bytes.store(rdb_bytes, Relaxed);
                                frame::Kind::Rdb(b)
                            }
                            ReplEvent::RdbEnd => {
                                info!(bytes = rdb_bytes, "rdb transfer complete");
                                if let Some(span) = full_copy.take() {
                                    span.record("rdb_bytes", rdb_bytes);
                                }
                                stats.set_phase(Phase::Incremental);
                                awaiting_stream.store(true, Relaxed);
                                ack_now.notify_one();
                                frame::Kind::RdbEnd(RdbEnd { offset: start, bytes: rdb_bytes })
                            }
                            ReplEvent::Commands { data, lens, end_offset, getack } => {
                                stats.source_offset.store(end_offset, Relaxed);
                                stats.received(end_offset);
                                awaiting_stream.store(false, Relaxed);
                                if getack {
                                    ack_now.notify_one();
                                    getack_at = Some(end_offset);
                                }
                                // One trace per frame, continued by the decoder and the writer.
                                let traceparent = if ferry_runtime::telemetry::enabled() {
                                    let span = tracing::info_span!("read", pipeline = %self.pipeline_id, source = %self.source, offset = end_offset, bytes = data.len(), commands = lens.len());
                                    ferry_runtime::telemetry::traceparent(&span)
                                } else {
                                    String::new()
                                };
                                frame::Kind::Commands(Commands { data, lens, end_offset, traceparent })
                            }
                        };
                        tx.push(Frame { kind: Some(frame) })?;
                        stats.spool_bytes.store(tx.disk_bytes(), Relaxed);
                    }
                }
            }
        }
        .await;
        session_cancel.cancel();
        match ack_task.await {
            Ok(Err(e)) if result.is_ok() => warn!(error = %e, "ack sender failed at shutdown"),
            _ => {}
        }
        result
    }
}

/// Reads the acks of a one-shot session (file, scan) into the statistics while frames are
/// sent; ends with the downstream's error, or when cancelled.
async fn track_acks(
    mut acks: tonic::Streaming<ferry_proto::Ack>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    stats.applied_offset.store(ack.applied_offset, Relaxed);
                    if ack.rdb_applied {
                        stats.set_rdb_applied();
                    }
                }
                Ok(None) => return Err(anyhow!("the decoder closed the stream")),
                Err(s) => return Err(anyhow!("downstream failed: {}", s.message())),
            },
        }
    }
}

/// How a one-shot session hands its frames to the spool: paced (a file or a scan can be
/// read much faster than the target applies it; the spool stays in memory), and watching
/// the downstream.
struct OneShot<'a> {
    tx: Arc<Spool>,
    acks: tokio::task::JoinHandle<anyhow::Result<()>>,
    acks_cancel: CancellationToken,
    cancel: &'a CancellationToken,
}

impl OneShot<'_> {
    /// Sends one frame; `Ok(false)` when cancelled.
    async fn send(&mut self, kind: frame::Kind) -> anyhow::Result<bool> {
        while self.tx.disk_bytes() > 0 {
            self.check().await?;
            if !ferry_runtime::sleep_or_cancel(Duration::from_millis(20), self.cancel).await {
                return Ok(false);
            }
        }
        self.check().await?;
        self.tx.push(Frame { kind: Some(kind) })?;
        Ok(true)
    }

    /// Fails when the downstream did.
    async fn check(&mut self) -> anyhow::Result<()> {
        if !self.acks.is_finished() {
            return Ok(());
        }
        match (&mut self.acks).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow!("the downstream stream ended")),
            Err(e) => Err(anyhow!("ack task: {e}")),
        }
    }

    /// Waits until `done` holds, then until cancelled (the copy is over: the session stays
    /// open so the status shows it); an error when the downstream fails.
    async fn finish(mut self, stats: &Stats, done: impl Fn(&Stats) -> bool, what: &str) -> anyhow::Result<()> {
        let mut reported = false;
        let acks = &mut self.acks;
        loop {
            if !reported && done(stats) {
                stats.set_phase(Phase::Done);
                info!("{what}");
                reported = true;
            }
            tokio::select! {
                r = &mut *acks => {
                    return match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(anyhow!("ack task: {e}")),
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = self.cancel.cancelled() => {
                    self.acks_cancel.cancel();
                    let _ = acks.await;
                    return Ok(());
                }
            }
        }
    }
}

impl Drop for OneShot<'_> {
    fn drop(&mut self) {
        self.acks_cancel.cancel();
    }
}

/// Keys per `DUMP`/`PTTL` round trip of a scan are those of one `SCAN` reply; the RDB
/// stream they make is sent in chunks of about this size.
const SCAN_CHUNK: usize = 1 << 20;

impl Session<'_> {
    /// Opens the stream to the decoder: `Hello`, then the first ack (the target's checkpoint).
    async fn open_downstream(&self, cancel: &CancellationToken) -> anyhow::Result<Downstream> {
        let channel = ferry_runtime::grpc::downstream_channel(self.decoder, cancel)
            .await
            .with_context(|| format!("cannot reach the decoder at {}", self.decoder))?;
        let mut client = DecoderClient::new(channel)
            .max_encoding_message_size(ferry_runtime::grpc::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(ferry_runtime::grpc::MAX_MESSAGE_BYTES);
        // The reader never waits for the downstream: frames wait in memory, then on disk.
        let spool_dir = Some(self.cfg.reader.spool_dir.clone()).filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
        let spool = Arc::new(Spool::new(
            spool_dir,
            self.pipeline_id,
            self.cfg.reader.buffer_bytes,
            self.cfg.reader.spool_max_bytes,
        ));
        let close = CloseOnDrop(spool.clone());
        let rx = futures::stream::unfold((spool.clone(), self.stats.clone()), next_frame);
        let hello = Frame {
            kind: Some(frame::Kind::Hello(Hello {
                pipeline_id: self.pipeline_id.to_string(),
                reverse: self.reverse,
                deployment: ferry_runtime::grpc::deployment(),
            })),
        };
        spool.push(hello)?;
        let mut acks = client.sync(rx).await.context("decoder refused the stream")?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), acks.message())
            .await
            .map_err(|_| anyhow!("no answer from the decoder/writer within 30s"))?
            .map_err(|s| anyhow!("downstream failed: {}", s.message()))?
            .ok_or_else(|| anyhow!("the decoder closed the stream"))?;
        let checkpoint = first.checkpoint.filter(|c| c.present && !c.replid.is_empty());
        Ok(Downstream { tx: spool, acks, checkpoint, _close: close })
    }

    fn one_shot<'c>(&self, down: Downstream, cancel: &'c CancellationToken) -> (OneShot<'c>, CloseOnDrop) {
        let acks_cancel = CancellationToken::new();
        let acks = tokio::spawn(track_acks(down.acks, self.stats.clone(), acks_cancel.clone()));
        (OneShot { tx: down.tx, acks, acks_cancel, cancel }, down._close)
    }

    /// Starts a one-shot copy: counts it, and sends `SyncStart`.
    fn start_copy(&self, tx: &Spool, replid: &str, offset: i64, full: bool, db: i64) -> anyhow::Result<()> {
        let stats = self.stats;
        if full {
            stats.full_syncs.fetch_add(1, Relaxed);
            stats.rdb_applied.store(false, Relaxed);
        } else {
            stats.partial_resyncs.fetch_add(1, Relaxed);
            stats.set_rdb_applied();
            stats.applied_offset.store(offset, Relaxed);
        }
        stats.rdb_bytes.store(0, Relaxed);
        stats.set_phase(if full { Phase::FullSync } else { Phase::Incremental });
        let start = SyncStart {
            pipeline_id: self.pipeline_id.to_string(),
            replid: replid.to_string(),
            offset,
            full,
            db,
            source_address: self.source_cfg.describe(),
        };
        tx.push(Frame { kind: Some(frame::Kind::Start(start)) })?;
        stats.clear_error();
        Ok(())
    }

    /// A file source (see [`crate::files`]): the RDB part as the full copy, then the commands
    /// as the stream; resumes after the last command the target holds, and does nothing when
    /// the target already holds all of it.
    async fn run_file(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let stats = self.stats;
        let path = std::path::PathBuf::from(&self.source_cfg.path);
        let src = tokio::task::spawn_blocking(move || crate::files::open(&path)).await.context("file reader")??;
        let end = src.command_bytes()? as i64;
        stats.source_offset.store(end, Relaxed);
        stats.rdb_size.store(src.rdb_bytes(), Relaxed);
        let down = self.open_downstream(cancel).await?;
        let resume = down
            .checkpoint
            .as_ref()
            .filter(|c| c.replid == src.identity)
            .map(|c| (c.offset, c.resume_offset, c.resume_db));
        if let Some(c) = down.checkpoint.as_ref().filter(|c| c.replid != src.identity) {
            warn!(file = %self.source_cfg.path, checkpoint = %c.replid, "the target's checkpoint is of another file (or the file was rewritten): copying it all again");
        }
        let tx = down.tx.clone();
        let (mut out, _close) = self.one_shot(down, cancel);
        let (full, from, db) = match resume {
            Some((applied, resume, db)) => {
                info!(file = %self.source_cfg.path, applied, of = end, "resuming from the target's checkpoint");
                (false, resume.max(0), db)
            }
            None => {
                info!(file = %self.source_cfg.path, rdb_bytes = src.rdb_bytes(), command_bytes = end, "copying the file");
                (true, 0, 0)
            }
        };
        self.start_copy(&tx, &src.identity, from, full, db)?;
        // The files are read on a blocking thread, a few frames ahead.
        let (ftx, mut frx) = mpsc::channel::<anyhow::Result<frame::Kind>>(4);
        let max_bulk = max_command_bytes(self.cfg);
        let producer = {
            let src = src.clone();
            tokio::task::spawn_blocking(move || {
                let run = || -> anyhow::Result<()> {
                    if full {
                        let mut bytes = 0u64;
                        if let Some((p, len)) = &src.rdb {
                            let mut chunks = crate::files::RdbChunks::open(p, *len)?;
                            while let Some(c) = chunks.next_chunk(SCAN_CHUNK)? {
                                bytes += c.len() as u64;
                                if ftx.blocking_send(Ok(frame::Kind::Rdb(c))).is_err() {
                                    return Ok(());
                                }
                            }
                        }
                        if ftx.blocking_send(Ok(frame::Kind::RdbEnd(RdbEnd { offset: 0, bytes }))).is_err() {
                            return Ok(());
                        }
                    }
                    let mut cmds = crate::files::Commands::open(&src, from as u64, max_bulk)?;
                    while let Some((data, lens, end_offset)) = cmds.next_frame(SCAN_CHUNK)? {
                        let c = Commands { data, lens, end_offset, traceparent: String::new() };
                        if ftx.blocking_send(Ok(frame::Kind::Commands(c))).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    let _ = ftx.blocking_send(Err(e));
                }
            })
        };
        let mut rdb_bytes = 0u64;
        let mut end = end;
        let result = async {
            while let Some(kind) = frx.recv().await {
                let kind = kind?;
                match &kind {
                    frame::Kind::Rdb(b) => {
                        rdb_bytes += b.len() as u64;
                        stats.rdb_bytes.store(rdb_bytes, Relaxed);
                    }
                    frame::Kind::RdbEnd(_) => stats.set_phase(Phase::Incremental),
                    frame::Kind::Commands(c) => end = end.max(c.end_offset),
                    _ => {}
                }
                if !out.send(kind).await? {
                    return Ok(());
                }
            }
            stats.source_offset.store(end, Relaxed);
            let what = format!("file copied: {} applied on the target", self.source_cfg.path);
            out.finish(stats, |s| s.rdb_applied.load(Relaxed) && s.applied_offset.load(Relaxed) >= end, &what).await
        }
        .await;
        drop(frx);
        let _ = producer.await;
        result
    }

    /// A scan of a live server (`SCAN`, `DUMP`, `PTTL` per key, every db), sent as an RDB
    /// stream built from the `DUMP` payloads: a point-in-time view, key by key. Done once:
    /// a target that holds this pipeline's scan checkpoint is not scanned for again.
    async fn run_scan(
        &self,
        cancel: &CancellationToken,
        mut conn: ferry_resp::Connection,
        addr: &str,
    ) -> anyhow::Result<()> {
        let stats = self.stats;
        let identity = format!("scan-{}", self.pipeline_id);
        let down = self.open_downstream(cancel).await?;
        let tx = down.tx.clone();
        let done_before = down.checkpoint.as_ref().is_some_and(|c| c.replid == identity);
        let (mut out, _close) = self.one_shot(down, cancel);
        if done_before {
            stats.set_rdb_applied();
            let what = format!(
                "the target already holds a finished scan copy of {addr}: nothing to do (delete its key {} on the target to copy again)",
                ferry_checkpoint::key(self.pipeline_id)
            );
            return out.finish(stats, |_| true, &what).await;
        }
        let version = match ferry_redis::server_rdb_version(&mut conn).await {
            0 => ferry_rdb::MAX_REDIS_RDB_VERSION,
            v => v,
        };
        let dbs = scan_dbs(&mut conn, self.source_cfg.kind == ferry_config::DeploymentType::Cluster).await?;
        info!(source = %addr, dbs = ?dbs, rdb_version = version, "scan copy: a point-in-time view, key by key (writes after a key is read are not copied)");
        self.start_copy(&tx, &identity, 0, true, 0)?;
        let (mut w, header) = ferry_rdb::RdbWriter::new(version);
        let mut buf = header;
        let mut rdb_bytes = 0u64;
        let mut keys = 0u64;
        let count = self.cfg.reader.scan_count.to_string();
        for db in dbs {
            conn.call(&["SELECT", &db.to_string()]).await.context("source")?;
            w.select_db(&mut buf, db);
            // SCAN may return a key twice (the table grew while it ran): sent once.
            let mut seen: std::collections::HashSet<bytes::Bytes> = std::collections::HashSet::new();
            let mut cursor = "0".to_string();
            loop {
                let reply = conn.call(&["SCAN", &cursor, "COUNT", &count]).await.context("source SCAN")?;
                let (next, batch) = scan_reply(&reply).ok_or_else(|| anyhow!("unexpected SCAN reply: {reply:?}"))?;
                let batch: Vec<bytes::Bytes> = batch.into_iter().filter(|k| seen.insert(k.clone())).collect();
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let mut pipeline = bytes::BytesMut::new();
                for k in &batch {
                    ferry_resp::encode_command_into(&mut pipeline, &[&b"DUMP"[..], k]);
                    ferry_resp::encode_command_into(&mut pipeline, &[&b"PTTL"[..], k]);
                }
                conn.send_raw(&pipeline).await.context("source")?;
                for k in &batch {
                    let dump = conn.read_reply().await.context("source DUMP")?;
                    let pttl = conn.read_reply().await.context("source PTTL")?;
                    let expire = match pttl {
                        ferry_resp::Reply::Integer(-2) => continue,
                        ferry_resp::Reply::Integer(t) if t >= 0 => Some(now_ms + t as u64),
                        _ => None,
                    };
                    let ferry_resp::Reply::Bulk(Some(payload)) = dump else { continue };
                    w.entry(&mut buf, k, &payload, expire)
                        .map_err(|e| anyhow!("source key {}: {e}", String::from_utf8_lossy(k)))?;
                    keys += 1;
                    stats.entries_decoded.store(keys, Relaxed);
                    if buf.len() >= SCAN_CHUNK {
                        rdb_bytes += buf.len() as u64;
                        stats.rdb_bytes.store(rdb_bytes, Relaxed);
                        if !out.send(frame::Kind::Rdb(std::mem::take(&mut buf).into())).await? {
                            return Ok(());
                        }
                    }
                }
                cursor = next;
                if cursor == "0" {
                    break;
                }
            }
        }
        w.finish(&mut buf);
        rdb_bytes += buf.len() as u64;
        stats.rdb_bytes.store(rdb_bytes, Relaxed);
        stats.rdb_size.store(rdb_bytes, Relaxed);
        if !out.send(frame::Kind::Rdb(buf.into())).await? {
            return Ok(());
        }
        if !out.send(frame::Kind::RdbEnd(RdbEnd { offset: 0, bytes: rdb_bytes })).await? {
            return Ok(());
        }
        stats.set_phase(Phase::Incremental);
        let what = format!("scan copy of {addr} complete: {keys} keys applied on the target");
        out.finish(stats, |s| s.rdb_applied.load(Relaxed), &what).await
    }
}

/// The dbs that hold keys (`INFO keyspace`); a cluster node has db 0 only.
async fn scan_dbs(conn: &mut ferry_resp::Connection, cluster: bool) -> anyhow::Result<Vec<u64>> {
    if cluster {
        return Ok(vec![0]);
    }
    let info = conn.call(&["INFO", "keyspace"]).await.context("source INFO keyspace")?;
    let text = info.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    Ok(text.lines().filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok()).collect())
}

/// `SCAN`'s reply: the next cursor and the keys.
fn scan_reply(reply: &ferry_resp::Reply) -> Option<(String, Vec<bytes::Bytes>)> {
    let ferry_resp::Reply::Array(Some(parts)) = reply else { return None };
    let cursor = String::from_utf8_lossy(parts.first()?.as_bytes()?).into_owned();
    let ferry_resp::Reply::Array(Some(keys)) = parts.get(1)? else { return None };
    Some((cursor, keys.iter().filter_map(|k| k.as_bytes().cloned()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_trail_the_target_by_a_byte_and_pause_while_it_is_stuck() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = AckPolicy::new();
        // Caught up: one byte less than the target holds (never equal to the master's offset).
        assert_eq!(p.next(100, 100, false, at(0)), Some(99));
        assert_eq!(p.next(100, 100, false, at(1)), Some(99));
        // Behind and progressing: acknowledged.
        assert_eq!(p.next(150, 400, false, at(2)), Some(149));
        // Behind and stuck: silent, unless the source asks, until the keepalive.
        assert_eq!(p.next(150, 500, false, at(3)), None);
        assert_eq!(p.next(150, 500, true, at(4)), Some(149));
        assert_eq!(p.next(150, 600, false, at(20)), None);
        assert_eq!(p.next(150, 600, false, at(34)), Some(149));
        assert_eq!(p.next(0, 10, false, at(35)), Some(0));
    }
}
