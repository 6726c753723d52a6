//! The counters of each pipeline a stage serves ([`Stats`]), reported to the coordinator
//! every 200 ms and at each milestone, and the sessions of the pipelines a decoder or
//! writer serves at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ferry_proto::StatusReport;
use ferry_proto::coordinator_client::CoordinatorClient;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::grpc::grpc_channel;
use crate::lifecycle::instance_name;
use crate::model::Phase;

/// Counters of one stage, updated by the stage and reported to the coordinator.
#[derive(Default)]
pub struct Stats {
    pub phase: Mutex<Phase>,
    pub source_offset: AtomicI64,
    pub applied_offset: AtomicI64,
    pub rdb_applied: AtomicBool,
    pub rdb_bytes: AtomicU64,
    pub rdb_size: AtomicU64,
    pub keys_applied: AtomicU64,
    pub keys_skipped: AtomicU64,
    pub commands_applied: AtomicU64,
    pub entries_decoded: AtomicU64,
    pub modules_skipped: AtomicU64,
    /// Writer: keys removed after re-copies (see `ferry_writer::stale`).
    pub stale_keys_removed: AtomicU64,
    pub full_syncs: AtomicU64,
    pub partial_resyncs: AtomicU64,
    /// Bytes of the replication stream waiting in the reader's disk spool.
    pub spool_bytes: AtomicU64,
    /// Reader: when each frame not yet applied arrived (one mark per 10 ms at most), for the
    /// lag in time.
    pub unapplied: Mutex<std::collections::VecDeque<(i64, std::time::Instant)>>,
    /// The replication id of the session (decoder: what the reader continues).
    pub replid: Mutex<String>,
    pub error: Mutex<String>,
    pub errors_by_kind: Mutex<BTreeMap<String, u64>>,
    /// The decoder's `[filter]` counters, reported too.
    pub filter_stats: std::sync::OnceLock<Arc<ferry_filter::FilterStats>>,
    /// A milestone (a new phase, the full copy applied): reported at once, not at the next
    /// tick, so that `/status` shows it within milliseconds.
    milestone: tokio::sync::Notify,
}

impl Stats {
    pub fn new(phase: Phase) -> Arc<Self> {
        let s = Stats::default();
        *s.phase.lock().unwrap() = phase;
        Arc::new(s)
    }

    /// A frame up to `end_offset` arrived from the source now.
    pub fn received(&self, end_offset: i64) {
        let mut q = self.unapplied.lock().unwrap();
        let now = std::time::Instant::now();
        let full = q.len() >= 100_000;
        match q.back_mut() {
            // Within 10 ms of the last mark (or too many marks): move it forward.
            Some((off, at)) if full || now.duration_since(*at) < Duration::from_millis(10) => *off = end_offset,
            _ => q.push_back((end_offset, now)),
        }
    }

    /// The target now holds everything up to `offset`.
    pub fn applied(&self, offset: i64) {
        self.applied_offset.store(offset, Relaxed);
        let mut q = self.unapplied.lock().unwrap();
        while q.front().is_some_and(|(off, _)| *off <= offset) {
            q.pop_front();
        }
    }

    /// How long the oldest write not yet on the target has waited (0 when caught up).
    pub fn lag(&self) -> Duration {
        self.unapplied.lock().unwrap().front().map(|(_, at)| at.elapsed()).unwrap_or_default()
    }

    pub fn set_phase(&self, phase: Phase) {
        let before = std::mem::replace(&mut *self.phase.lock().unwrap(), phase);
        if before != phase {
            self.milestone.notify_one();
        }
    }

    /// The full copy is on the target.
    pub fn set_rdb_applied(&self) {
        if !self.rdb_applied.swap(true, Relaxed) {
            self.milestone.notify_one();
        }
    }

    /// Records an error (one line) for the status API.
    pub fn set_error(&self, e: impl std::fmt::Display) {
        *self.error.lock().unwrap() = e.to_string().replace('\n', " ");
    }

    pub fn clear_error(&self) {
        self.error.lock().unwrap().clear();
    }

    pub fn count_error(&self, kind: &str) {
        *self.errors_by_kind.lock().unwrap().entry(kind.to_string()).or_default() += 1;
    }

    pub(crate) fn report(&self, pipeline_id: &str, role: &str, instance: &str) -> StatusReport {
        StatusReport {
            pipeline_id: pipeline_id.into(),
            role: role.into(),
            instance: instance.into(),
            phase: self.phase.lock().unwrap().as_str().into(),
            source_offset: self.source_offset.load(Relaxed),
            applied_offset: self.applied_offset.load(Relaxed),
            rdb_applied: self.rdb_applied.load(Relaxed),
            rdb_bytes: self.rdb_bytes.load(Relaxed),
            rdb_size: self.rdb_size.load(Relaxed),
            keys_applied: self.keys_applied.load(Relaxed),
            commands_applied: self.commands_applied.load(Relaxed),
            full_syncs: self.full_syncs.load(Relaxed),
            partial_resyncs: self.partial_resyncs.load(Relaxed),
            error: self.error.lock().unwrap().clone(),
            keys_skipped: self.keys_skipped.load(Relaxed),
            errors_by_kind: self.errors_by_kind.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect(),
            entries_decoded: self.entries_decoded.load(Relaxed),
            modules_skipped: self.modules_skipped.load(Relaxed),
            spool_bytes: self.spool_bytes.load(Relaxed),
            keys_filtered: self.filter_stats.get().map(|f| f.keys_filtered.load(Relaxed)).unwrap_or(0),
            commands_filtered: self.filter_stats.get().map(|f| f.commands_filtered.load(Relaxed)).unwrap_or(0),
            filtered_mixed: self.filter_stats.get().map(|f| f.filtered_mixed.load(Relaxed)).unwrap_or(0),
            db_map_collisions: self.filter_stats.get().map(|f| f.db_map_collisions.load(Relaxed)).unwrap_or(0),
            lag_ms: self.lag().as_millis() as u64,
            stale_keys_removed: self.stale_keys_removed.load(Relaxed),
            deployment: crate::grpc::deployment(),
        }
    }
}

/// Reports `stats` to the coordinator every 200 ms and at each milestone until cancelled (and
/// once more at the end).
pub async fn report_loop(
    coordinator: String,
    pipeline_id: String,
    role: &'static str,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let instance = instance_name();
    crate::metrics::register(&pipeline_id, &stats);
    let mut client: Option<CoordinatorClient<tonic::transport::Channel>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = stats.milestone.notified() => false,
            _ = cancel.cancelled() => true,
        };
        if client.is_none() {
            client = grpc_channel(&coordinator).await.ok().map(CoordinatorClient::new);
        }
        if let Some(c) = client.as_mut() {
            let report = stats.report(&pipeline_id, role, &instance);
            let sent = tokio::time::timeout(Duration::from_secs(2), c.report(report)).await;
            if !matches!(sent, Ok(Ok(_))) {
                debug!("status report to the coordinator failed");
                client = None;
            }
        }
        if stop {
            crate::metrics::unregister(&stats);
            return;
        }
    }
}

/// The pipelines a stage (decoder or writer) serves at once: each has its own statistics,
/// reported to the coordinator, and at most one running session — a new session of the
/// same pipeline (its reader reconnected) cancels the old one.
pub struct Sessions {
    role: &'static str,
    coordinator: String,
    tasks: tokio_util::task::TaskTracker,
    cancel: CancellationToken,
    inner: Mutex<std::collections::HashMap<String, Entry>>,
    forget_idle: Duration,
}

impl Sessions {
    pub fn new(
        role: &'static str,
        coordinator: String,
        tasks: tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Sessions {
            role,
            coordinator,
            tasks,
            cancel,
            inner: Mutex::new(std::collections::HashMap::new()),
            forget_idle: FORGET_IDLE,
        }
    }

    /// The statistics of every pipeline seen.
    pub fn all(&self) -> Vec<Arc<Stats>> {
        self.inner.lock().unwrap().values().map(|e| e.stats.clone()).collect()
    }

    /// Runs one session of `pipeline_id` ([`Sessions::begin`]): its statistics say running,
    /// then idle; a failure goes to the log, to the statistics (unless a newer session of
    /// the pipeline superseded this one: they are the newer one's now) and upstream as a
    /// gRPC status on `upstream`.
    pub async fn run<Fut>(
        &self,
        pipeline_id: &str,
        process: &str,
        upstream: &tokio::sync::mpsc::Sender<Result<ferry_proto::Ack, tonic::Status>>,
        session: impl FnOnce(Arc<Stats>, CancellationToken) -> Fut,
    ) where
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let (stats, cancel) = self.begin(pipeline_id);
        stats.set_phase(Phase::Running);
        let res = session(stats.clone(), cancel.clone()).await;
        let superseded = cancel.is_cancelled();
        cancel.cancel();
        if !superseded {
            self.ended(pipeline_id);
        }
        if let Err(e) = res {
            let msg = format!("{e:#}");
            error!(error = %msg, pipeline = %pipeline_id, "{process} session failed");
            if !superseded {
                stats.set_error(&msg);
            }
            let _ = upstream.send(Err(crate::grpc::to_status(&msg))).await;
        }
        if !superseded {
            stats.set_phase(Phase::Idle);
        }
    }

    /// Starts a session of `pipeline_id`: its statistics and a cancellation token.
    pub fn begin(&self, pipeline_id: &str) -> (Arc<Stats>, CancellationToken) {
        let token = self.cancel.child_token();
        let mut inner = self.inner.lock().unwrap();
        // Pipelines without a session for a long while (gone from the plan, or never real)
        // are forgotten, their report task ended: what a stage holds stays bounded.
        inner.retain(|_, e| {
            let keep = !e.session.is_cancelled() || e.ended.lock().unwrap().elapsed() < self.forget_idle;
            if !keep {
                e.reports.cancel();
            }
            keep
        });
        match inner.get_mut(pipeline_id) {
            Some(e) => {
                e.session.cancel();
                e.session = token.clone();
                (e.stats.clone(), token)
            }
            None => {
                let stats = Stats::new(Phase::Idle);
                let reports = self.cancel.child_token();
                self.tasks.spawn(report_loop(
                    self.coordinator.clone(),
                    pipeline_id.to_string(),
                    self.role,
                    stats.clone(),
                    reports.clone(),
                ));
                let ended = Mutex::new(std::time::Instant::now());
                inner.insert(
                    pipeline_id.to_string(),
                    Entry { stats: stats.clone(), session: token.clone(), reports, ended },
                );
                (stats, token)
            }
        }
    }

    /// A session of `pipeline_id` ended now (see [`FORGET_IDLE`]).
    fn ended(&self, pipeline_id: &str) {
        if let Some(e) = self.inner.lock().unwrap().get(pipeline_id) {
            *e.ended.lock().unwrap() = std::time::Instant::now();
        }
    }
}

/// How long a stage keeps a pipeline with no session (its statistics and report task).
pub const FORGET_IDLE: Duration = Duration::from_secs(600);

/// One pipeline a stage serves.
struct Entry {
    stats: Arc<Stats>,
    /// The running session's token (cancelled: no session runs).
    session: CancellationToken,
    /// Ends the pipeline's report task.
    reports: CancellationToken,
    /// When its last session ended.
    ended: Mutex<std::time::Instant>,
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipelines_without_a_session_for_long_are_forgotten_with_their_report_task() {
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = CancellationToken::new();
        let mut sessions = Sessions::new("writer", "http://127.0.0.1:1".into(), tasks.clone(), cancel.clone());
        sessions.forget_idle = Duration::from_millis(20);
        let (_, a) = sessions.begin("never-real");
        a.cancel();
        sessions.ended("never-real");
        let (_, b) = sessions.begin("live");
        assert_eq!(sessions.all().len(), 2, "a pipeline idle for less than the limit is kept");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (_, _c) = sessions.begin("another");
        assert_eq!(sessions.all().len(), 2, "the idle one is forgotten, the running one kept");
        assert!(sessions.inner.lock().unwrap().contains_key("live"));
        b.cancel();
        cancel.cancel();
        tasks.close();
        // Every report task ends (the forgotten one's already had).
        tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.unwrap();
    }

    #[test]
    fn lag_in_time_is_the_age_of_the_oldest_write_not_applied() {
        let s = Stats::new(Phase::Incremental);
        assert_eq!(s.lag(), Duration::ZERO);
        s.received(100);
        std::thread::sleep(Duration::from_millis(30));
        s.received(200);
        s.applied(50);
        assert!(s.lag() >= Duration::from_millis(30), "{:?}", s.lag());
        s.applied(150);
        assert!(s.lag() < Duration::from_millis(30), "{:?}", s.lag());
        s.applied(200);
        assert_eq!(s.lag(), Duration::ZERO);
        assert_eq!(s.applied_offset.load(Relaxed), 200);
    }
}
