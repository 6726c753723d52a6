//! The role-swap state machine of a deployment pair (seed 000):
//!
//! ```text
//! FORWARD ──source lost──▶ FENCED ──source back──▶ RECOVERING ──caught up──▶ SWITCHBACK ──▶ FORWARD
//!  A→B runs               nothing runs             B→A runs                  nothing runs
//! ```
//!
//! The coordinator holds the role and plans pipelines for it; the watcher (or an operator
//! through `ferry-watcher fence | recover | switchback`) moves it. Each transition is
//! persisted in `coordinator.state_file`. Every transition into a role that runs pipelines
//! starts a new epoch; pipeline ids carry it, so the pipelines of each period have their own
//! checkpoints and always begin with a full copy: a checkpoint from before a swap never lets a
//! pipeline continue a stream the other direction has written into since.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use ferry_runtime::Role;
pub use ferry_runtime::model::{base_in_epoch, base_of, pipeline_id};

/// What is persisted: the role, its epoch, why and when it began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub role: Role,
    pub epoch: u64,
    pub reason: String,
    pub since_ms: i64,
    /// Side A was lost (fenced) and, in this epoch, the reverse pipelines caught up with B
    /// (or the operator accepted overwriting B with A's stale data): A may be the source again.
    #[serde(default)]
    pub recovered: bool,
}

impl Default for RoleRecord {
    fn default() -> Self {
        RoleRecord { role: Role::Forward, epoch: 0, reason: "start".into(), since_ms: now_ms(), recovered: false }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl RoleRecord {
    /// The record in `path`, or the default (forward, epoch 0) when the file does not exist.
    pub fn load(path: &Path) -> anyhow::Result<RoleRecord> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a ferry role state (delete it to start forward)", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RoleRecord::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the record to `path` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The record after moving to `to`: a new epoch when `to` runs pipelines. `recovered`
    /// holds until A is the source again, and starts over with each recovery.
    pub fn next(&self, to: Role, reason: &str) -> RoleRecord {
        let epoch = if to.direction().is_some() { self.epoch + 1 } else { self.epoch };
        let recovered = self.recovered && !matches!(to, Role::Forward | Role::Recovering | Role::Fenced);
        RoleRecord { role: to, epoch, reason: reason.to_string(), since_ms: now_ms(), recovered }
    }

    /// Whether moving to `to` makes side A the source again while it was lost and has not
    /// been recovered: fenced or recovering (or a switch back not caught up) → switchback or
    /// forward.
    pub fn would_overwrite_with_stale_source(&self, to: Role) -> bool {
        matches!(to, Role::Switchback | Role::Forward) && self.role != Role::Forward && !self.recovered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_and_fencing_are_allowed_nothing_else() {
        use Role::*;
        for (from, to) in [(Forward, Fenced), (Fenced, Recovering), (Recovering, Switchback), (Switchback, Forward)] {
            assert!(from.allows(to), "{from:?} -> {to:?}");
        }
        for from in [Forward, Fenced, Recovering, Switchback] {
            assert!(from.allows(Fenced));
        }
        for (from, to) in [(Forward, Recovering), (Fenced, Forward), (Recovering, Forward), (Forward, Switchback)] {
            assert!(!from.allows(to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn a_lost_source_is_the_source_again_only_once_recovered() {
        let fenced = RoleRecord::default().next(Role::Fenced, "source lost");
        assert!(fenced.would_overwrite_with_stale_source(Role::Switchback));
        assert!(fenced.would_overwrite_with_stale_source(Role::Forward));
        assert!(!fenced.would_overwrite_with_stale_source(Role::Recovering));
        let mut rec = fenced.next(Role::Recovering, "source back");
        assert!(!rec.recovered && rec.would_overwrite_with_stale_source(Role::Switchback));
        rec.recovered = true;
        let back = rec.next(Role::Switchback, "caught up");
        assert!(back.recovered && !back.would_overwrite_with_stale_source(Role::Forward));
        let fwd = back.next(Role::Forward, "reverse stopped");
        assert!(!fwd.recovered && !fwd.would_overwrite_with_stale_source(Role::Forward));
        assert!(!RoleRecord::default().would_overwrite_with_stale_source(Role::Switchback));
    }

    #[test]
    fn epochs_and_ids() {
        let r = RoleRecord::default();
        let fenced = r.next(Role::Fenced, "source lost");
        assert_eq!(fenced.epoch, 0);
        let rec = fenced.next(Role::Recovering, "source back");
        assert_eq!(rec.epoch, 1);
        let fwd = rec.next(Role::Switchback, "operator").next(Role::Forward, "reverse stopped");
        assert_eq!(fwd.epoch, 2);
        assert_eq!(pipeline_id("shard-0", 0, false), "shard-0");
        assert_eq!(pipeline_id("sentinel-b", 1, true), "reverse-sentinel-b@1");
        assert_eq!(base_of("reverse-sentinel-b@1"), "reverse-sentinel-b");
        assert_eq!(base_of("127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(base_in_epoch("shard-0", 0, false), Some("shard-0"));
        assert_eq!(base_in_epoch("shard-0@2", 2, false), Some("shard-0"));
        assert_eq!(base_in_epoch("reverse-shard-7@1", 1, true), Some("shard-7"));
        assert_eq!(base_in_epoch("shard-0@2", 0, false), None);
        assert_eq!(base_in_epoch("shard-0@1", 2, false), None);
        assert_eq!(base_in_epoch("reverse-shard-7@1", 1, false), None);
        assert_eq!(base_in_epoch("shard-7@1", 1, true), None);
    }

    #[test]
    fn the_record_survives_a_restart() {
        let dir = tempfile_dir();
        let path = dir.join("role.json");
        assert_eq!(RoleRecord::load(&path).unwrap().role, Role::Forward);
        let r = RoleRecord::default().next(Role::Fenced, "source lost: connection refused");
        r.save(&path).unwrap();
        assert_eq!(RoleRecord::load(&path).unwrap(), r);
        std::fs::write(&path, "garbage").unwrap();
        let e = RoleRecord::load(&path).unwrap_err();
        assert!(format!("{e:#}").contains("not a ferry role state"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-role-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
