//! The decoder: the `Decoder` gRPC service.
//!
//! One `Sync` call per replication session. RDB chunks feed a streaming parser that
//! runs on a blocking thread (memory stays bounded: chunks and batches travel through
//! bounded channels); its entries become `RESTORE`s or chunked commands. The command
//! stream is forwarded as raw RESP with `SELECT` tracked, `MULTI`/`EXEC` kept in one
//! batch, and `PING`/`REPLCONF` dropped (their bytes still count in the offset, so an
//! idle source is acknowledged up to its last byte). Acknowledgements from the writer
//! flow back to the reader unchanged. The `[filter]` rules ([`ferry_filter`]) apply to
//! both: filtered keys are not copied, filtered commands not forwarded, and db numbers are
//! remapped for the target (the resume bookkeeping keeps the source's).

pub mod convert;
pub mod migration;

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use ferry_config::{Config, ExistingKey};
use ferry_proto::decoder_server::{Decoder, DecoderServer};
use ferry_proto::writer_client::WriterClient;
use ferry_proto::{Ack, Batch, Frame, frame};
use ferry_rdb::{Event, Parser, ParserOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, warn};

use crate::convert::{BatchBuilder, RdbConverter};
use crate::migration::{Edits, MigrationGuard};
use ferry_filter::{Decision, Filter};
use ferry_resp::commands::CommandTable;
use ferry_runtime::{FullCopyNeeded, Stats};

/// Largest batch built by the decoder.
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_COMMANDS: u32 = 1024;

/// Runs the decoder service until `cancel` fires.
pub async fn run(
    cfg: Config,
    coordinator: String,
    pipeline: Option<String>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listen: std::net::SocketAddr =
        cfg.decoder.listen.parse().with_context(|| format!("decoder.listen {:?}", cfg.decoder.listen))?;
    // A bad regex or group is a configuration error (exit code 2), found before serving.
    let filter = Arc::new(Filter::new(&cfg.filter)?);
    let listener = ferry_runtime::grpc::listen(&listen.to_string(), "decoder.listen").await?;
    // /healthz answers from now on, also while the coordinator is away.
    let tasks = TaskTracker::new();
    tasks.spawn(ferry_runtime::metrics::serve(cfg.decoder.metrics_addr.clone(), "decoder", cancel.clone()));
    let Some(assignment) = ferry_runtime::assignment(&coordinator, "decoder", pipeline.as_deref(), &cancel).await
    else {
        tasks.close();
        tasks.wait().await;
        return Ok(());
    };
    let svc = DecoderSvc {
        cfg: Arc::new(cfg),
        writer: ferry_runtime::grpc_url(&assignment.downstream_address),
        filter,
        sessions: Arc::new(ferry_runtime::Sessions::new("decoder", coordinator, tasks.clone(), cancel.clone())),
        tasks: tasks.clone(),
    };
    info!(%listen, "decoder listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    ferry_runtime::grpc_server()?
        .add_service(DecoderServer::new(svc).max_decoding_message_size(ferry_runtime::grpc::MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned())
        .await
        .context("decoder gRPC server")?;
    tasks.close();
    tasks.wait().await;
    Ok(())
}

struct DecoderSvc {
    cfg: Arc<Config>,
    writer: String,
    filter: Arc<Filter>,
    /// One entry per pipeline: statistics and the running session.
    sessions: Arc<ferry_runtime::Sessions>,
    tasks: TaskTracker,
}

#[tonic::async_trait]
impl Decoder for DecoderSvc {
    type SyncStream = ferry_runtime::grpc::AckStream;

    async fn sync(&self, req: Request<Streaming<Frame>>) -> Result<Response<ferry_runtime::grpc::AckStream>, Status> {
        ferry_runtime::grpc::authorize(&req, "Decoder.Sync", &["reader"])?;
        let mut frames = req.into_inner();
        let (ack_tx, ack_rx) = mpsc::channel(64);
        let cfg = self.cfg.clone();
        let writer = self.writer.clone();
        let sessions = self.sessions.clone();
        let filter = self.filter.clone();
        self.tasks.spawn(async move {
            let hello = match frames.message().await {
                Ok(Some(Frame { kind: Some(frame::Kind::Hello(h)) })) => {
                    if let Err(s) = ferry_runtime::grpc::check_deployment(&h.deployment, "the reader") {
                        warn!(error = %s.message(), "refusing a reader of another deployment");
                        let _ = ack_tx.send(Err(s)).await;
                        return;
                    }
                    h
                }
                Ok(None) => return,
                Ok(Some(_)) => {
                    let _ =
                        ack_tx.send(Err(Status::invalid_argument("the first frame of a session must be Hello"))).await;
                    return;
                }
                Err(s) => {
                    warn!(error = %s.message(), "reader stream failed before its hello");
                    return;
                }
            };
            let id = hello.pipeline_id.clone();
            let upstream = ack_tx.clone();
            let all = sessions.clone();
            sessions
                .run(&id, "decoder", &upstream, |stats, cancel| async move {
                    let _ = stats.filter_stats.set(filter.stats.clone());
                    session(&cfg, &writer, &stats, &filter, &all, hello, frames, ack_tx, &cancel).await
                })
                .await;
        });
        Ok(ferry_runtime::grpc::ack_stream(ack_rx))
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &Config,
    writer_url: &str,
    stats: &Arc<Stats>,
    filter: &Arc<Filter>,
    sessions: &ferry_runtime::Sessions,
    hello: ferry_proto::Hello,
    mut frames: Streaming<Frame>,
    ack_tx: mpsc::Sender<Result<Ack, Status>>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // A reverse pipeline of a role swap: the sides swapped, policy rewrite, no filter.
    let (reversed, pass_all);
    let (cfg, filter) = if hello.reverse {
        reversed = cfg.reversed();
        pass_all = Arc::new(Filter::pass_all());
        (&reversed, &pass_all)
    } else {
        (cfg, filter)
    };
    stats.clear_error();
    let channel = ferry_runtime::grpc::downstream_channel(writer_url, cancel)
        .await
        .with_context(|| format!("cannot reach the writer at {writer_url}"))?;
    let mut client = WriterClient::new(channel)
        .max_decoding_message_size(ferry_runtime::grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(ferry_runtime::grpc::MAX_MESSAGE_BYTES);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(8);
    batch_tx
        .send(Batch {
            hello: true,
            pipeline_id: hello.pipeline_id.clone(),
            offset: -1,
            reverse: hello.reverse,
            deployment: ferry_runtime::grpc::deployment(),
            ..Default::default()
        })
        .await
        .map_err(|_| anyhow!("the writer stream is closed"))?;
    let mut acks =
        client.apply(ReceiverStream::new(batch_rx)).await.map_err(|s| anyhow!("writer: {}", s.message()))?.into_inner();

    // Writer acks → reader. The first one also says which RDB version the target loads (it
    // arrives before the reader starts PSYNC, so before any RDB byte).
    let target_rdb = Arc::new(AtomicU32::new(0));
    // The target holds an earlier copy of this pipeline: a full copy replaces it.
    let earlier_copy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The commands the target knows (also in the first ack, before the reader starts).
    let target_commands: Arc<std::sync::OnceLock<Arc<CommandTable>>> = Arc::default();
    // Told to the reader when the stream cannot go on as it is (a full copy instead).
    let full_copy_tx = ack_tx.clone();
    let forward = {
        let cancel = cancel.clone();
        let target_rdb = target_rdb.clone();
        let earlier_copy = earlier_copy.clone();
        let target_commands = target_commands.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = acks.message() => m,
                    _ = cancel.cancelled() => return,
                };
                match msg {
                    Ok(Some(ack)) => {
                        if ack.target_rdb_version != 0 {
                            target_rdb.store(ack.target_rdb_version, Relaxed);
                        }
                        if ack.checkpoint.is_some() {
                            earlier_copy.store(ack.earlier_copy, Relaxed);
                        }
                        if !ack.command_table.is_empty()
                            && let Some(t) = CommandTable::decode(&ack.command_table)
                        {
                            let _ = target_commands.set(Arc::new(t));
                        }
                        // What the other pipelines' migration barriers wait for.
                        stats.applied_offset.store(ack.applied_offset, Relaxed);
                        if ack.rdb_applied {
                            stats.set_rdb_applied();
                        }
                        if ack_tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {
                        let _ = ack_tx.send(Err(Status::unavailable("the writer closed the stream"))).await;
                        break;
                    }
                    Err(s) => {
                        let _ = ack_tx.send(Err(Status::internal(format!("writer: {}", s.message())))).await;
                        break;
                    }
                }
            }
            cancel.cancel();
        })
    };

    let policy = cfg.writer.existing_key;
    let mut rdb: Option<(mpsc::Sender<Bytes>, tokio::task::JoinHandle<anyhow::Result<()>>)> = None;
    let mut cmds = CommandState::new();
    cmds.filter = filter.clone();
    cmds.cluster_source = cfg.source.kind == ferry_config::DeploymentType::Cluster;
    // A cluster source: keys migrating between its masters (see `migration`).
    let mut guard: Option<MigrationGuard> = None;
    let result: anyhow::Result<()> = async {
        loop {
            let msg = tokio::select! {
                m = frames.message() => m.map_err(|s| anyhow!("reader stream: {}", s.message()))?,
                _ = cancel.cancelled() => return Ok(()),
            };
            let Some(Frame { kind: Some(kind) }) = msg else { return Ok(()) };
            match kind {
                frame::Kind::Hello(_) => bail!("protocol error: Hello in the middle of a session"),
                frame::Kind::Start(start) => {
                    info!(pipeline = %hello.pipeline_id, replid = %start.replid, offset = start.offset, full = start.full, "replication session started");
                    cmds.db = start.db as u64;
                    cmds.data_offset = start.offset;
                    cmds.target_commands = target_commands.get().cloned();
                    cmds.data_db = start.db as u64;
                    *stats.replid.lock().unwrap() = start.replid.clone();
                    stats.rdb_applied.store(!start.full, Relaxed);
                    if cfg.source.kind == ferry_config::DeploymentType::Cluster && !start.source_address.is_empty() {
                        let mut g = MigrationGuard::new(cfg.source.clone(), start.source_address.clone());
                        if start.full {
                            g.barrier(&sessions.all(), stats, "the full copy of this master").await;
                        }
                        guard = Some(g);
                    }
                    let begin = Batch { begin: Some(start), offset: -1, ..Default::default() };
                    batch_tx.send(begin).await.map_err(|_| anyhow!("the writer stream is closed"))?;
                }
                frame::Kind::Rdb(chunk) => {
                    if rdb.is_none() {
                        let (tx, rx) = mpsc::channel::<Bytes>(16);
                        let opts = ParserOptions {
                            raw_limit: cfg.decoder.restore_max_bytes as usize,
                            chunk_bytes: cfg.decoder.chunk_bytes as usize,
                            verify_checksum: true,
                            allow_newer_version: cfg.decoder.allow_newer_rdb,
                        };
                        let (btx, stats, filter) = (batch_tx.clone(), stats.clone(), filter.clone());
                        // `existing_key` is about keys the target held before ferry: ferry's own
                        // earlier copy of the pipeline (keys that may have changed since) is
                        // always replaced.
                        let policy = if earlier_copy.load(Relaxed) && policy != ExistingKey::Rewrite {
                            info!(pipeline = %hello.pipeline_id, policy = ?policy, "a re-copy: the target's keys from ferry's earlier copy are replaced (existing_key applies to a first copy)");
                            ExistingKey::Rewrite
                        } else {
                            policy
                        };
                        let mut conv = RdbConverter::new(policy, 0);
                        conv.target_rdb_version = target_rdb.load(Relaxed);
                        let handle = tokio::task::spawn_blocking(move || parse_rdb(rx, btx, opts, conv, &stats, &filter));
                        rdb = Some((tx, handle));
                    }
                    let (tx, _) = rdb.as_ref().expect("set above");
                    if tx.send(chunk).await.is_err() {
                        // The parser stopped early: its error is the one to report.
                        let (_, handle) = rdb.take().expect("set above");
                        handle.await.context("rdb parser thread")??;
                        bail!("the rdb parser stopped before the end of the transfer");
                    }
                }
                frame::Kind::RdbEnd(end) => {
                    if let Some((tx, handle)) = rdb.take() {
                        drop(tx);
                        handle.await.context("rdb parser thread")??;
                    }
                    info!(offset = end.offset, bytes = end.bytes, "rdb decoded");
                    let mut b = BatchBuilder::new(64, 1);
                    let mut batch = b.take(end.offset, true);
                    batch.resume_offset = end.offset;
                    cmds.data_offset = end.offset;
                    batch_tx.send(batch).await.map_err(|_| anyhow!("the writer stream is closed"))?;
                }
                frame::Kind::Commands(c) => {
                    let edits = match &mut guard {
                        Some(g) if migration::concerns(&c.data, &c.lens) => {
                            g.edits(&c.data, &c.lens, &sessions.all(), stats).await
                        }
                        _ => Edits::new(),
                    };
                    // The reader's trace goes on: this batch's span is the child of its frame's.
                    let span = if ferry_runtime::telemetry::enabled() {
                        let span = tracing::info_span!("decode", pipeline = %hello.pipeline_id, offset = c.end_offset, commands = c.lens.len());
                        ferry_runtime::telemetry::set_parent(&span, &c.traceparent);
                        span
                    } else {
                        tracing::Span::none()
                    };
                    let splits = cmds.splits;
                    let batches = match span.in_scope(|| cmds.frame(&c.data, &c.lens, c.end_offset, &edits)) {
                        Ok(b) => b,
                        Err(e) if e.downcast_ref::<FullCopyNeeded>().is_some() => {
                            warn!(pipeline = %hello.pipeline_id, reason = %e, "the stream cannot go on as it is: a full copy replaces it");
                            let why = e.downcast_ref::<FullCopyNeeded>().map(|f| f.0.clone()).unwrap_or_default();
                            let ack = Ack { full_copy_needed: why, ..Default::default() };
                            let _ = full_copy_tx.send(Ok(ack)).await;
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    };
                    if cmds.splits > splits {
                        stats.count_error("TRANSACTION_SPLIT");
                    }
                    for mut batch in batches {
                        batch.traceparent = ferry_runtime::telemetry::traceparent(&span);
                        batch_tx
                            .send(batch)
                            .instrument(span.clone())
                            .await
                            .map_err(|_| anyhow!("the writer stream is closed"))?;
                    }
                }
            }
        }
    }
    .await;
    drop(rdb);
    drop(batch_tx);
    cancel.cancel();
    let _ = forward.await;
    result
}

/// The most of one source transaction (`MULTI` … `EXEC`) the decoder holds to apply it in
/// one batch, atomically. A bigger one is applied in parts of about this size, each with its
/// checkpoint (so a restart resumes inside it without applying anything twice): memory stays
/// bounded, and the target sees such a transaction's parts one after the other.
const MAX_TRANSACTION_BYTES: usize = 64 * 1024 * 1024;

/// `FUNCTION LOAD` and `FUNCTION RESTORE` made idempotent (`REPLACE`): the source ran them, so
/// the library is the source's now whatever the target held; on a cluster source every master
/// that ran one replicates it, and each pipeline applies it.
fn idempotent_function(cmd: &Bytes) -> Option<Bytes> {
    let args = ferry_resp::parse_command(cmd).ok()?;
    let sub = args.get(1)?.to_ascii_uppercase();
    let has = |w: &[u8]| args.iter().skip(2).any(|a| a.eq_ignore_ascii_case(w));
    let rewritten: Vec<&[u8]> = match &sub[..] {
        b"LOAD" if !has(b"REPLACE") => {
            let mut v: Vec<&[u8]> = vec![&args[0], &args[1], b"REPLACE"];
            v.extend(args[2..].iter().map(|a| &a[..]));
            v
        }
        b"RESTORE" if args.len() >= 3 && !has(b"REPLACE") && !has(b"FLUSH") => {
            vec![&args[0], &args[1], &args[2], b"REPLACE"]
        }
        _ => return None,
    };
    Some(ferry_resp::encode_command(&rewritten))
}

/// State of the command stream: the selected db, an open `MULTI`, and where the last data
/// command ended (the resume point stored with checkpoints).
struct CommandState {
    /// The source is a cluster: one master's `FLUSHALL` empties only that master.
    cluster_source: bool,
    db: u64,
    in_multi: bool,
    /// The open transaction was split already (warned once).
    split: bool,
    /// Parts flushed out of transactions so far.
    splits: u64,
    max_transaction: usize,
    builder: BatchBuilder,
    data_offset: i64,
    /// The SOURCE db of the last data command (resume bookkeeping; never remapped).
    data_db: u64,
    /// Filters and db remapping; dropped commands are not data (like `PING`).
    filter: Arc<Filter>,
    /// The commands the target knows and where their keys are (from the writer).
    target_commands: Option<Arc<CommandTable>>,
}

/// Commands of the replication stream that change no data. Pub/Sub messages are not
/// data: they are not forwarded to the target. Nor is `CLUSTER` (`SETSLOT`, which a Valkey
/// 8+ primary replicates to replicas that announce a version): the source's slot layout is
/// not the target's.
fn is_non_data(name: &[u8]) -> bool {
    [&b"PING"[..], b"REPLCONF", b"PUBLISH", b"SPUBLISH", b"CLUSTER"].iter().any(|n| name.eq_ignore_ascii_case(n))
}

impl CommandState {
    fn new() -> Self {
        CommandState {
            cluster_source: false,
            db: 0,
            in_multi: false,
            split: false,
            splits: 0,
            max_transaction: MAX_TRANSACTION_BYTES,
            builder: BatchBuilder::new(BATCH_BYTES, u32::MAX),
            data_offset: 0,
            data_db: 0,
            filter: Arc::new(Filter::pass_all()),
            target_commands: None,
        }
    }

    /// Adds one frame of commands; returns its batches: one, or none while a `MULTI` is
    /// still open (more than one when an open transaction passes [`MAX_TRANSACTION_BYTES`]).
    /// `edits` replace (or drop, `None`) commands by their index in the frame; offsets stay
    /// the source's.
    fn frame(
        &mut self,
        data: &Bytes,
        lens: &[u32],
        end_offset: i64,
        edits: &[(usize, Option<Bytes>)],
    ) -> anyhow::Result<Vec<Batch>> {
        let mut out = Vec::new();
        let frame_start = end_offset - data.len() as i64;
        self.builder.set_base_offset(frame_start);
        let mut pos = 0usize;
        for (i, &len) in lens.iter().enumerate() {
            let end = pos + len as usize;
            if end > data.len() {
                bail!("protocol error: command lengths exceed the frame");
            }
            pos = end;
            let whole = match edits.iter().find(|(at, _)| *at == i) {
                Some((_, None)) => continue,
                Some((_, Some(e))) => e.clone(),
                None => data.slice(pos - len as usize..pos),
            };
            let cmd = &whole[..];
            let name =
                ferry_resp::command_name(cmd).ok_or_else(|| anyhow!("malformed command in the replication stream"))?;
            if is_non_data(name) {
                continue;
            } else if name.eq_ignore_ascii_case(b"SELECT") {
                let args = ferry_resp::parse_command(&whole)?;
                let db = args
                    .get(1)
                    .and_then(|a| std::str::from_utf8(a).ok())
                    .and_then(|a| a.parse::<u64>().ok())
                    .ok_or_else(|| anyhow!("malformed SELECT in the replication stream"))?;
                // The target gets the mapped db; a filtered db's commands are all dropped, so
                // its SELECT is too (the builder selects again before the next command).
                if self.filter.db_passes(db) {
                    let target = self.filter.map_db(db);
                    let select;
                    let cmd = if target == db {
                        cmd
                    } else {
                        select = ferry_resp::encode_command(&[&b"SELECT"[..], target.to_string().as_bytes()]);
                        &select[..]
                    };
                    self.builder.push_raw(self.filter.map_db(self.db), cmd, false, frame_start + pos as i64);
                    self.builder.set_db(target);
                }
                self.db = db;
            } else if name.eq_ignore_ascii_case(b"MULTI") {
                // The writer applies every batch in its own MULTI/EXEC (with the checkpoint),
                // so a source transaction stays atomic as long as it is not split.
                self.in_multi = true;
                self.split = false;
            } else if name.eq_ignore_ascii_case(b"EXEC") {
                self.in_multi = false;
            } else {
                let target = self.filter.map_db(self.db);
                let table = self.target_commands.as_deref();
                if ferry_filter::writes_own_key(&whole, table) {
                    // Another pipeline's checkpoint on this source: not data to copy.
                    continue;
                }
                let whole = match self.filter.command_with(self.db, &whole, table)? {
                    Decision::Forward => whole.clone(),
                    Decision::Rewrite(c) => c,
                    Decision::Drop => continue,
                };
                if let Some(t) = table
                    && !t.knows(name)
                {
                    bail!(
                        "the target does not know the command {} of the source's stream (at offset {}): copy into \
                         a server that has it, or leave it out ([filter] block_command)",
                        String::from_utf8_lossy(name).to_uppercase(),
                        frame_start + pos as i64
                    );
                }
                if self.cluster_source
                    && (name.eq_ignore_ascii_case(b"FLUSHALL") || name.eq_ignore_ascii_case(b"FLUSHDB"))
                {
                    let name = String::from_utf8_lossy(name).to_uppercase();
                    return Err(anyhow::Error::new(FullCopyNeeded(format!(
                        "the source master ran {name}, which on a cluster empties only that master: the target gets \
                         a re-copy of this master instead (its clean-up removes what the master no longer holds)"
                    ))));
                }
                let whole = if name.eq_ignore_ascii_case(b"FUNCTION") {
                    idempotent_function(&whole).unwrap_or(whole)
                } else {
                    whole
                };
                self.builder.push_raw(target, &whole, true, frame_start + pos as i64);
                self.data_offset = frame_start + pos as i64;
                self.data_db = self.db;
                if self.in_multi && self.builder.len() >= self.max_transaction {
                    if !self.split {
                        warn!(
                            limit_bytes = self.max_transaction,
                            "a source transaction is bigger than the decoder holds: it is applied in parts, each with its checkpoint (not atomically on the target)"
                        );
                        self.split = true;
                    }
                    // Up to the last command added: a checkpoint there resumes inside the
                    // transaction, after it.
                    self.splits += 1;
                    let mut part = self.builder.take(self.data_offset, false);
                    part.resume_offset = self.data_offset;
                    part.resume_db = self.data_db as i64;
                    out.push(part);
                }
            }
        }
        if self.in_multi {
            return Ok(out);
        }
        let mut batch = self.builder.take(end_offset, false);
        batch.resume_offset = self.data_offset;
        batch.resume_db = self.data_db as i64;
        out.push(batch);
        Ok(out)
    }
}

/// `Read` over chunks arriving on a channel (runs on a blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// Parses the RDB arriving on `rx` and sends batches of commands for the target.
fn parse_rdb(
    rx: mpsc::Receiver<Bytes>,
    batch_tx: mpsc::Sender<Batch>,
    opts: ParserOptions,
    mut conv: RdbConverter,
    stats: &Stats,
    filter: &Filter,
) -> anyhow::Result<()> {
    // The parser buffers: the chunks are read from the channel with no buffer in between.
    let mut parser = Parser::new(ChannelReader { rx, cur: Bytes::new() }, opts);
    let policy = conv.policy;
    let mut b = BatchBuilder::new(BATCH_BYTES, BATCH_COMMANDS);
    let mut fc = filter.full_copy();
    let send = |b: &mut BatchBuilder| -> anyhow::Result<()> {
        let mut batch = b.take(-1, false);
        b.reserve_batch();
        // Keys of the full copy are counted as keys, not as commands.
        batch.commands = 0;
        batch.busykey_is_skip = policy == ExistingKey::Skip;
        batch.existing_is_fatal = policy == ExistingKey::Panic;
        batch_tx.blocking_send(batch).map_err(|_| anyhow!("the writer stream is closed"))
    };
    while let Some(ev) = parser.next_event()? {
        match ev {
            Event::Header { version, flavor } => {
                conv.header(version, flavor);
                // Values that go out as their RDB encoding are not decoded, only delimited.
                parser.set_opaque_types(|t| conv.sends_raw(t));
            }
            Event::Entry(mut e) => {
                stats.entries_decoded.fetch_add(1, Relaxed);
                if let Some(target) = fc.entry(&e) {
                    if let Some(why) = conv.refusal(&e) {
                        bail!("the full copy cannot go on: {why}");
                    }
                    e.db = target;
                    conv.entry(&e, &mut b);
                }
            }
            Event::Function { code, name, engine, .. } if fc.function() => {
                conv.function(&code, name.as_ref(), engine.as_ref(), &mut b)
            }
            _ => {}
        }
        if b.is_full() {
            send(&mut b)?;
        }
        stats.modules_skipped.store(conv.modules_skipped, Relaxed);
    }
    if !b.is_empty() {
        send(&mut b)?;
    }
    filter.log_summary("the full copy");
    Ok(())
}

/// `ferry-decoder inspect FILE`: the keys of an RDB file as JSON lines on stdout.
pub fn inspect(file: &std::path::Path, allow_newer_rdb: bool) -> anyhow::Result<()> {
    let opts = ferry_rdb::ParserOptions { allow_newer_version: allow_newer_rdb, ..Default::default() };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let res = if file.as_os_str() == "-" {
        ferry_rdb::inspect(std::io::BufReader::new(std::io::stdin().lock()), &mut out, opts)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        ferry_rdb::inspect(std::io::BufReader::with_capacity(1 << 20, f), &mut out, opts)
    };
    std::io::Write::flush(&mut out).ok();
    res.map(|_| ()).with_context(|| format!("{}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Bytes {
        ferry_resp::encode_command(args)
    }

    #[test]
    fn a_transaction_bigger_than_the_limit_goes_in_parts_each_with_its_checkpoint() {
        let mut st = CommandState::new();
        st.max_transaction = 100;
        let mut parts = vec![cmd(&["MULTI"])];
        parts.extend((0..10).map(|i| cmd(&["INCR", &format!("counter:{i}")])));
        parts.push(cmd(&["EXEC"]));
        let data: Bytes = parts.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>().into();
        let lens: Vec<u32> = parts.iter().map(|p| p.len() as u32).collect();
        let end = 1000 + data.len() as i64;
        let batches = st.frame(&data, &lens, end, &[]).unwrap();
        assert!(batches.len() > 2, "{}", batches.len());
        assert_eq!(batches.iter().map(|b| b.commands).sum::<u32>(), 10);
        // Each part ends at its last command: a checkpoint there resumes right after it.
        let mut cmd_end = 1000 + parts[0].len() as i64;
        let ends: Vec<i64> = parts[1..11]
            .iter()
            .map(|p| {
                cmd_end += p.len() as i64;
                cmd_end
            })
            .collect();
        for b in &batches[..batches.len() - 1] {
            assert!(ends.contains(&b.offset) && b.resume_offset == b.offset, "{} {}", b.offset, b.resume_offset);
            assert!(b.resp.len() <= 100 + 40, "{}", b.resp.len());
        }
        assert_eq!(batches.last().unwrap().offset, end);
        assert_eq!(st.splits as usize, batches.len() - 1);
    }

    #[test]
    fn multi_exec_stays_in_one_batch_and_ping_is_dropped() {
        let mut st = CommandState::new();
        let parts = [cmd(&["PING"]), cmd(&["MULTI"]), cmd(&["INCR", "a"])];
        let data: Bytes = parts.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>().into();
        let lens: Vec<u32> = parts.iter().map(|p| p.len() as u32).collect();
        assert!(st.frame(&data, &lens, 100, &[]).unwrap().is_empty());
        let parts = [cmd(&["EXEC"]), cmd(&["SELECT", "2"]), cmd(&["SET", "k", "v"])];
        let data: Bytes = parts.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>().into();
        let lens: Vec<u32> = parts.iter().map(|p| p.len() as u32).collect();
        let batch = st.frame(&data, &lens, 200, &[]).unwrap().pop().unwrap();
        // SELECT 0, INCR, SELECT 2, SET: MULTI/EXEC dropped, the batch is applied atomically.
        assert_eq!(batch.count, 4);
        assert_eq!(batch.commands, 2);
        assert_eq!(batch.offset, 200);
        // The SET ends the frame: the resume point is the frame's end, in db 2.
        assert_eq!((batch.resume_offset, batch.resume_db), (200, 2));
        assert_eq!(st.db, 2);
        let next = st.frame(&cmd(&["DEL", "k"]), &[cmd(&["DEL", "k"]).len() as u32], 300, &[]).unwrap().pop().unwrap();
        assert!(next.resp.starts_with(&cmd(&["SELECT", "2"])));
    }

    #[test]
    fn filters_drop_and_remap_but_resume_in_source_terms() {
        let toml = "[filter]\ndb_map = { 2 = 0 }\nblock_db = [3]\nblock_key_prefix = [\"no:\"]\n";
        let cfg = ferry_config::Config::parse(toml, "t").unwrap();
        let mut st = CommandState::new();
        st.filter = Arc::new(Filter::new(&cfg.filter).unwrap());
        let parts = [
            cmd(&["SELECT", "2"]),
            cmd(&["SET", "a", "1"]),
            cmd(&["DEL", "no:x", "b"]),
            cmd(&["SET", "no:y", "1"]),
            cmd(&["SELECT", "3"]),
            cmd(&["SET", "c", "1"]),
        ];
        let data: Bytes = parts.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>().into();
        let lens: Vec<u32> = parts.iter().map(|p| p.len() as u32).collect();
        let batch = st.frame(&data, &lens, 1000, &[]).unwrap().pop().unwrap();
        let expect: Vec<u8> = [cmd(&["SELECT", "0"]), cmd(&["SET", "a", "1"]), cmd(&["DEL", "b"])]
            .iter()
            .flat_map(|b| b.to_vec())
            .collect();
        // The batch opens with SELECT 0 (the start db); the stream's SELECT 2 becomes SELECT 0,
        // the blocked key and db 3 (its SELECT included) are gone.
        assert!(batch.resp.ends_with(&expect), "{:?}", String::from_utf8_lossy(&batch.resp));
        assert_eq!(batch.commands, 2);
        // The last forwarded command was the DEL, in SOURCE db 2.
        let del_end = 1000 - data.len() as i64 + parts[..3].iter().map(|p| p.len() as i64).sum::<i64>();
        assert_eq!((batch.resume_offset, batch.resume_db), (del_end, 2));
        assert_eq!(batch.offset, 1000);
        assert_eq!(st.db, 3);
    }

    #[test]
    fn a_resumed_stream_starts_in_the_checkpoint_db_and_tracks_the_last_data_command() {
        let mut st = CommandState::new();
        // As the Start frame of a partial resync sets it.
        st.db = 5;
        st.data_offset = 1000;
        st.data_db = 5;
        let parts = [
            cmd(&["RPUSH", "l", "x"]),
            cmd(&["PUBLISH", "ch", "m"]),
            cmd(&["PING"]),
            cmd(&["CLUSTER", "SETSLOT", "5", "NODE", "0123456789abcdef"]),
        ];
        let data: Bytes = parts.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>().into();
        let lens: Vec<u32> = parts.iter().map(|p| p.len() as u32).collect();
        let end = 1000 + data.len() as i64;
        let batch = st.frame(&data, &lens, end, &[]).unwrap().pop().unwrap();
        assert!(batch.resp.starts_with(&cmd(&["SELECT", "5"])));
        assert_eq!(batch.commands, 1, "PUBLISH, PING and the source's CLUSTER SETSLOT are not forwarded");
        assert_eq!(batch.cmd_offsets, vec![1000, 1000 + parts[0].len() as i64]);
        assert_eq!(batch.offset, end);
        assert_eq!((batch.resume_offset, batch.resume_db), (1000 + parts[0].len() as i64, 5));
    }
}
