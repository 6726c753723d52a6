//! The reader: a replica of one source leader.
//!
//! It authenticates, runs the replica handshake, and streams what the master sends
//! to the decoder: the RDB transfer as chunks, then whole commands with their end
//! offsets. It answers `REPLCONF GETACK` and sends `REPLCONF ACK` every second with
//! the offset the target has applied (never more), so `WAIT` on the source means
//! "on the target". Every session failure (source or downstream) is logged, shown in
//! the status, and retried with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, anyhow};
use ferry_config::Config;
use ferry_proto::decoder_client::DecoderClient;
use ferry_proto::{Assignment, Commands, Frame, Hello, RdbEnd, SyncStart, frame};
use ferry_resp::replication::{PsyncReply, ReplEvent, ReplicaOptions, handshake};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::common::{self, Backoff, Stats};
use crate::spool::Spool;

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

/// How often the reader asks the coordinator for the plan: a role swap stops the
/// pipelines of the old role within about this long.
const PLAN_POLL: Duration = Duration::from_millis(500);

/// Runs the reader until `cancel` fires: one replication session loop per pipeline it
/// serves (all of the plan, or the one given with `--pipeline`). The plan is asked for
/// again and again: pipelines that leave it (a role swap) are stopped, new ones started.
/// While the coordinator cannot be reached, the running pipelines go on.
pub async fn run(
    cfg: Config,
    coordinator: String,
    pipeline: Option<String>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let mut running: std::collections::HashMap<String, CancellationToken> = std::collections::HashMap::new();
    let mut warned = false;
    loop {
        match common::plan_once(&coordinator, "reader", pipeline.as_deref()).await {
            Ok(assignments) => {
                warned = false;
                running.retain(|id, token| {
                    let keep = assignments.iter().any(|a| a.pipeline_id == *id);
                    if !keep {
                        info!(pipeline = %id, "pipeline no longer planned (role change): stopping it");
                        token.cancel();
                    }
                    keep
                });
                for a in assignments {
                    if running.contains_key(&a.pipeline_id) {
                        continue;
                    }
                    info!(pipeline = %a.pipeline_id, leader = %a.source_address, downstream = %a.downstream_address, reverse = a.reverse, "assigned");
                    let token = cancel.child_token();
                    running.insert(a.pipeline_id.clone(), token.clone());
                    tasks.spawn(run_pipeline(cfg.clone(), coordinator.clone(), a, token));
                }
            }
            Err(e) if !warned => {
                warn!(coordinator = %coordinator, error = %e, "waiting for the coordinator");
                warned = true;
            }
            Err(_) => {}
        }
        if !common::sleep_or_cancel(PLAN_POLL, &cancel).await {
            break;
        }
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn run_pipeline(cfg: Config, coordinator: String, assignment: Assignment, cancel: CancellationToken) {
    // A reverse pipeline reads the configured target and writes the configured source.
    let cfg = if assignment.reverse { cfg.reversed() } else { cfg };
    let stats = Stats::new("connecting");
    let tasks = TaskTracker::new();
    // Its own token: the last report, sent when it is cancelled, says "stopped".
    let report_cancel = CancellationToken::new();
    tasks.spawn(common::report_loop(
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
    let decoder = common::grpc_url(&assignment.downstream_address);
    let mut backoff = Backoff::new();
    let mut last_leader = assignment.source_address.clone();
    while !cancel.is_cancelled() {
        let session = Session {
            cfg: &cfg,
            source_cfg: &source_cfg,
            pipeline_id: &assignment.pipeline_id,
            reverse: assignment.reverse,
            source: &source,
            decoder: &decoder,
            stats: &stats,
        };
        match session.run(&cancel, &mut backoff, &mut last_leader, &mut slot).await {
            Ok(()) => break,
            Err(e) => {
                let msg = format!("{e:#}");
                error!(source = %source, error = %msg, "replication session failed");
                stats.set_error(&msg);
                stats.set_phase("failed");
                if !common::sleep_or_cancel(backoff.next_delay(), &cancel).await {
                    break;
                }
            }
        }
    }
    stats.set_phase("stopped");
    report_cancel.cancel();
    tasks.close();
    tasks.wait().await;
}

struct Session<'a> {
    cfg: &'a Config,
    source_cfg: &'a ferry_config::RedisConfig,
    pipeline_id: &'a str,
    reverse: bool,
    source: &'a str,
    decoder: &'a str,
    stats: &'a Arc<Stats>,
}

impl Session<'_> {
    /// One replication session; returns Ok only when cancelled.
    async fn run(
        &self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        last_leader: &mut String,
        slot: &mut Option<u16>,
    ) -> anyhow::Result<()> {
        let stats = self.stats;
        stats.set_phase("connecting");
        // A cluster shard is followed by its master's lineage: the same master while it
        // serves slots (the hint moves with its slots), the one serving the hint after a failover.
        let addr = common::resolve_at(self.source_cfg, slot.as_mut(), last_leader).await.context("source")?;
        let conn = common::connect_node(self.source_cfg, &addr, Duration::from_secs(10)).await.context("source")?;
        *last_leader = addr.clone();
        if addr != self.source_cfg.address {
            info!(source = %self.source, master = %addr, "source master resolved");
        }
        let mut client = DecoderClient::connect(self.decoder.to_string())
            .await
            .with_context(|| format!("cannot reach the decoder at {}", self.decoder))?;
        let opts = ReplicaOptions {
            listening_port: self.cfg.reader.listening_port,
            max_bulk: self.cfg.reader.proto_max_bulk_len as usize,
            timeout: Duration::from_secs(60),
        };
        // Hello first: the first ack carries the checkpoint the target holds.
        // The reader never waits for the downstream: frames wait in memory, then on disk.
        let spool_dir = Some(self.cfg.reader.spool_dir.clone()).filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
        let spool = Arc::new(Spool::new(
            spool_dir,
            self.pipeline_id,
            self.cfg.reader.buffer_bytes,
            self.cfg.reader.spool_max_bytes,
        ));
        let _close = CloseOnDrop(spool.clone());
        let tx = spool.clone();
        let rx = futures::stream::unfold((spool.clone(), stats.clone()), next_frame);
        let hello = Frame {
            kind: Some(frame::Kind::Hello(Hello { pipeline_id: self.pipeline_id.to_string(), reverse: self.reverse })),
        };
        tx.push(hello)?;
        let mut acks = client.sync(rx).await.context("decoder refused the stream")?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), acks.message())
            .await
            .map_err(|_| anyhow!("no answer from the decoder/writer within 30s"))?
            .map_err(|s| anyhow!("downstream failed: {}", s.message()))?
            .ok_or_else(|| anyhow!("the decoder closed the stream"))?;
        let checkpoint = first.checkpoint.filter(|c| c.present && !c.replid.is_empty());
        // Resume after the last data command: what followed it changed nothing, and a promoted
        // replica may never have received it.
        let psync = checkpoint.as_ref().map(|c| (c.replid.as_str(), c.resume_offset + 1));
        let (mut repl, mut acker, reply) =
            handshake(conn, psync, &opts).await.context("source replication handshake")?;
        let (replid, start, full) = match &reply {
            PsyncReply::FullResync { replid, offset } => (replid.clone(), *offset, true),
            PsyncReply::Continue { replid } => {
                let id = replid.clone().or_else(|| checkpoint.as_ref().map(|c| c.replid.clone())).unwrap_or_default();
                (id, repl.offset(), false)
            }
        };
        if full {
            stats.full_syncs.fetch_add(1, Relaxed);
            stats.rdb_applied.store(false, Relaxed);
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
        } else {
            stats.partial_resyncs.fetch_add(1, Relaxed);
            stats.applied_offset.store(start, Relaxed);
            stats.rdb_applied.store(true, Relaxed);
            info!(source = %self.source, replid = %replid, offset = start, "partial resynchronization from the target's checkpoint");
        }
        stats.source_offset.store(start, Relaxed);
        stats.rdb_bytes.store(0, Relaxed);
        stats.rdb_size.store(0, Relaxed);
        stats.set_phase(if full { "full_sync" } else { "incremental" });
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
        backoff.reset();

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
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = fast.tick(), if awaiting_stream.load(Relaxed) => {}
                        _ = ack_now.notified() => {}
                        _ = cancel.cancelled() => return Ok::<(), ferry_resp::RespError>(()),
                    }
                    let applied = stats.applied_offset.load(Relaxed);
                    acker.ack(applied.max(0)).await?;
                }
            })
        };
        // A sentinel-managed source: move to the new master after a failover (PSYNC from the
        // checkpoint continues on the old replication id, which the new master keeps as replid2).
        let moved = common::master_moved_at(self.source_cfg, *slot, &addr);
        tokio::pin!(moved);
        let result = async {
            let mut rdb_bytes = 0u64;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    e = &mut moved => return Err(e.context("source")),
                    ack = acks.message() => match ack {
                        Ok(Some(ack)) => {
                            stats.applied_offset.store(ack.applied_offset, Relaxed);
                            if ack.rdb_applied { stats.rdb_applied.store(true, Relaxed); }
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
                                stats.set_phase("incremental");
                                awaiting_stream.store(true, Relaxed);
                                ack_now.notify_one();
                                frame::Kind::RdbEnd(RdbEnd { offset: start, bytes: rdb_bytes })
                            }
                            ReplEvent::Commands { data, lens, end_offset, getack } => {
                                stats.source_offset.store(end_offset, Relaxed);
                                awaiting_stream.store(false, Relaxed);
                                if getack { ack_now.notify_one(); }
                                frame::Kind::Commands(Commands { data, lens, end_offset })
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
