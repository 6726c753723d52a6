//! The vocabulary the processes share: the role of a deployment pair, the phase of a
//! pipeline, as types (their names are what `/status`, `/metrics` and the gRPC reports say),
//! and the ids of pipelines, which carry the role's epoch and direction.

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// The role of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The configured source serves; source → target runs.
    Forward,
    /// The source was lost: nothing runs (a stale source that comes back can never
    /// overwrite the target, which now serves writes).
    Fenced,
    /// The source is back: target → source runs, the target keeps serving.
    Recovering,
    /// The reverse pipelines stop; then forward starts again.
    Switchback,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Forward => "forward",
            Role::Fenced => "fenced",
            Role::Recovering => "recovering",
            Role::Switchback => "switchback",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Role> {
        Ok(match s {
            "forward" => Role::Forward,
            "fenced" => Role::Fenced,
            "recovering" => Role::Recovering,
            "switchback" => Role::Switchback,
            other => bail!("unknown role {other:?}: expected forward, fenced, recovering or switchback"),
        })
    }

    /// Whether pipelines run in this role, and in which direction (`Some(true)`: reverse).
    pub fn direction(self) -> Option<bool> {
        match self {
            Role::Forward => Some(false),
            Role::Recovering => Some(true),
            Role::Fenced | Role::Switchback => None,
        }
    }

    /// Whether `self → to` is a step of the machine. Fencing is always allowed (it is the
    /// safe state); anything else off the cycle needs `force`.
    pub fn allows(self, to: Role) -> bool {
        matches!(
            (self, to),
            (_, Role::Fenced)
                | (Role::Fenced, Role::Recovering)
                | (Role::Recovering, Role::Switchback)
                | (Role::Switchback, Role::Forward)
        )
    }
}

/// The stream holds something it cannot carry to the target as it is (a cluster source
/// master's `FLUSHALL`, a command bigger than a message): the session ends and the reader's
/// next session makes a full copy instead. Travels from the decoder to the reader as
/// `Ack.full_copy_needed`.
#[derive(Debug)]
pub struct FullCopyNeeded(pub String);

impl std::fmt::Display for FullCopyNeeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a full copy is needed: {}", self.0)
    }
}

impl std::error::Error for FullCopyNeeded {}

/// The phase of a pipeline (in `/status`) or of one stage's part of it (in its reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A stage is not up or not reporting yet; the reader is connecting to the source.
    #[default]
    Connecting,
    /// The RDB is being transferred or applied.
    FullSync,
    /// The full copy is on the target and writes follow.
    Incremental,
    /// A file or scan copy that the target holds all of.
    Done,
    /// The pipeline was stopped (shutdown, or the role runs no pipeline).
    Stopped,
    /// The last session failed; ferry retries with backoff.
    Failed,
    /// Decoder and writer: a session of the pipeline runs.
    Running,
    /// Decoder and writer: no session runs now.
    Idle,
}

impl Phase {
    /// Every phase, in the order `/metrics` lists them.
    pub const ALL: [Phase; 8] = [
        Phase::Connecting,
        Phase::FullSync,
        Phase::Incremental,
        Phase::Done,
        Phase::Stopped,
        Phase::Failed,
        Phase::Running,
        Phase::Idle,
    ];

    /// The phases a pipeline as a whole can be in (`/status`, the coordinator's `/metrics`).
    pub const PIPELINE: [Phase; 6] =
        [Phase::Connecting, Phase::FullSync, Phase::Incremental, Phase::Done, Phase::Stopped, Phase::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::FullSync => "full_sync",
            Phase::Incremental => "incremental",
            Phase::Done => "done",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
            Phase::Running => "running",
            Phase::Idle => "idle",
        }
    }

    /// The phase a report names (`None`: not one ferry sets).
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of a pipeline: its base name (`standalone address`, `sentinel-<name>`,
/// `shard-<slot>`), `reverse-` in front for the reverse direction, `@<epoch>` after it from
/// the first swap on (epoch 0 keeps the plain names of a deployment that never swapped).
pub fn pipeline_id(base: &str, epoch: u64, reverse: bool) -> String {
    let dir = if reverse { "reverse-" } else { "" };
    if epoch == 0 { format!("{dir}{base}") } else { format!("{dir}{base}@{epoch}") }
}

/// The base name of `id` when it is a pipeline id of `epoch` and direction `reverse`.
pub fn base_in_epoch(id: &str, epoch: u64, reverse: bool) -> Option<&str> {
    let rest = if reverse { id.strip_prefix("reverse-")? } else { id };
    if rest.starts_with("reverse-") {
        return None;
    }
    let base = if epoch == 0 { rest } else { rest.strip_suffix(&format!("@{epoch}") as &str)? };
    (pipeline_id(base, epoch, reverse) == id && !base.contains('@')).then_some(base)
}

/// The id without its epoch (what a sidecar reader names with `--pipeline`).
pub fn base_of(id: &str) -> &str {
    id.rsplit_once('@').map(|(b, _)| b).unwrap_or(id)
}

/// The epoch a pipeline id carries ([`pipeline_id`]: `@<epoch>` from the first swap on; none
/// is epoch 0), and whether it is a reverse pipeline.
pub fn epoch_of(id: &str) -> (u64, bool) {
    let epoch = id.rsplit_once('@').and_then(|(_, e)| e.parse().ok()).unwrap_or(0);
    (epoch, id.starts_with("reverse-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_through_their_names() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{}\"", p.as_str()));
        }
        assert_eq!(Phase::parse("draining"), None);
    }

    #[test]
    fn pipeline_ids_carry_their_epoch_and_direction() {
        assert_eq!(epoch_of(&pipeline_id("127.0.0.1:6379", 0, false)), (0, false));
        assert_eq!(epoch_of(&pipeline_id("shard-0", 3, false)), (3, false));
        assert_eq!(epoch_of(&pipeline_id("sentinel-b", 1, true)), (1, true));
    }
}
