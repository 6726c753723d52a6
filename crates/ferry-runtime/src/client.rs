//! The stages' side of the coordinator: asking which pipelines to serve.

use ferry_proto::coordinator_client::CoordinatorClient;
use ferry_proto::{AssignRequest, Assignment};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::grpc::grpc_channel;
use crate::lifecycle::{Backoff, instance_name, sleep_or_cancel};

/// Asks the coordinator for this stage's assignment (the first pipeline of its plan: the
/// decoder and writer serve every pipeline and only need where the next stage listens),
/// retrying until it answers or `cancel` fires.
pub async fn assignment(
    coordinator: &str,
    role: &str,
    pipeline: Option<&str>,
    cancel: &CancellationToken,
) -> Option<Assignment> {
    plan(coordinator, role, pipeline, cancel).await.and_then(|p| p.into_iter().next())
}

/// The answer to a plan request that is not a plan.
#[derive(Debug)]
pub struct PlanError {
    pub message: String,
    /// The coordinator has no plan yet (it is discovering the source, or is not listening
    /// yet: started at the same moment): it will have one in a moment, so asking again soon
    /// is right (for [`NOT_READY_FAST_FOR`] at most).
    pub not_ready: bool,
}

impl PlanError {
    /// How soon to ask again, for a stage that started asking at `since`: at once-ish while
    /// a coordinator that just started has no plan yet; `None` for the caller's own pace.
    pub fn retry_soon(&self, since: std::time::Instant) -> Option<std::time::Duration> {
        (self.not_ready && since.elapsed() < NOT_READY_FAST_FOR).then_some(NOT_READY_RETRY)
    }
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How soon to ask again a coordinator that has no plan yet, during the first
/// [`NOT_READY_FAST_FOR`] of waiting (a coordinator just started); later, the usual backoff
/// (its planning keeps failing: a side is down).
pub const NOT_READY_RETRY: std::time::Duration = std::time::Duration::from_millis(50);
pub const NOT_READY_FAST_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// Asks the coordinator for every pipeline this stage should serve (or only `pipeline`),
/// retrying until it answers or `cancel` fires.
pub async fn plan(
    coordinator: &str,
    role: &str,
    pipeline: Option<&str>,
    cancel: &CancellationToken,
) -> Option<Vec<Assignment>> {
    let mut backoff = Backoff::new();
    let mut warned = false;
    let waiting_since = std::time::Instant::now();
    loop {
        let mut delay = None;
        // The coordinator may hold the request while it discovers the source.
        let answer = tokio::select! {
            a = plan_once(coordinator, role, pipeline) => a,
            _ = cancel.cancelled() => return None,
        };
        match answer {
            Ok(p) if !p.is_empty() => {
                for a in &p {
                    info!(pipeline = %a.pipeline_id, leader = %a.source_address, downstream = %a.downstream_address, "assigned");
                }
                return Some(p);
            }
            Ok(_) => {
                if !warned {
                    warn!(coordinator, pipeline = pipeline.unwrap_or(""), "the coordinator has no such pipeline");
                    warned = true;
                }
            }
            Err(e) => {
                if !warned {
                    warn!(coordinator, error = %e, "waiting for the coordinator");
                    warned = true;
                }
                delay = e.retry_soon(waiting_since);
            }
        }
        if !sleep_or_cancel(delay.unwrap_or_else(|| backoff.next_delay()), cancel).await {
            return None;
        }
    }
}

/// Asks the coordinator once for the pipelines this stage should serve now (or only
/// `pipeline`); empty when the current role runs none (fenced, switching back).
pub async fn plan_once(coordinator: &str, role: &str, pipeline: Option<&str>) -> Result<Vec<Assignment>, PlanError> {
    let req = AssignRequest {
        role: role.into(),
        instance: instance_name(),
        pipeline_id: pipeline.unwrap_or_default().into(),
        deployment: crate::grpc::deployment(),
    };
    // Nothing listens yet: a coordinator started at the same moment as this stage.
    let channel = grpc_channel(coordinator)
        .await
        .map_err(|e| PlanError { message: format!("{e:#}"), not_ready: crate::grpc::is_connection_refused(&e) })?;
    CoordinatorClient::new(channel)
        .plan(req)
        .await
        .map(|r| r.into_inner().pipelines)
        .map_err(|s| PlanError { message: s.message().to_string(), not_ready: s.code() == tonic::Code::Unavailable })
}
