//! The format of ferry's own keys on the side it writes into, in one place:
//!
//! - `ferry:checkpoint:<pipeline>`: a standalone target's checkpoint (db 0), whose value is
//!   `"<replid> <offset> <resume_offset> <resume_db>"` ([`value`], [`parse`]), or
//!   [`RECOPY_MARKER`] while a re-copy runs;
//! - `ferry:checkpoint:{<tag>}:<pipeline>`: a cluster target's checkpoint of one slot, and
//!   `ferry:checkpoint:floor:{<tag>}:<pipeline>`: the floor of one master;
//! - `ferry:checkpoint:stop:<pipeline>`: why a pipeline must not go on (a command the
//!   target rejected inside the `EXEC` that also moved the checkpoint past it);
//! - `ferry:checkpoint:fence` (a cluster: `ferry:checkpoint:fence:{<tag>}`, one per slot):
//!   which writers may write into this side — the role's direction and epoch
//!   ([`fence_value`], [`parse_fence`]);
//! - `ferry:checkpoint:counters`: the coordinator's `/status` counters;
//! - `ferry:checkpoint:coordinator`: the lease of the coordinator that acts on the pair;
//! - `ferry:tmp:{<tag>}:<key>`: a big value being built before it is renamed into place.
//!
//! Every key under these prefixes is ferry's own ([`is_own_key`]): never copied to another
//! side, skipped by `ferry-verify`. Nothing else in ferry spells these names.

use ferry_proto::Checkpoint;

/// The prefix of every checkpoint key (and of the counters).
pub const PREFIX: &str = "ferry:checkpoint:";

/// The prefix of the temporary keys big values are built in.
pub const TMP_PREFIX: &[u8] = b"ferry:tmp:";

/// Prefixes of ferry's own keys: they describe a pipeline into the side that holds them, so
/// they never travel to another side.
pub const OWN_KEY_PREFIXES: [&[u8]; 2] = [PREFIX.as_bytes(), TMP_PREFIX];

/// `SCAN MATCH` pattern of every checkpoint key.
pub const SCAN_PATTERN: &str = "ferry:checkpoint:*";

/// Where the coordinator keeps the pipelines' `/status` counters.
pub const COUNTERS_KEY: &str = "ferry:checkpoint:counters";

/// The lease of the coordinator that acts on the pair (its instance name, with a TTL).
pub const COORDINATOR_LEASE_KEY: &str = "ferry:checkpoint:coordinator";

/// The value a checkpoint key holds while a re-copy of its pipeline runs.
pub const RECOPY_MARKER: &str = "recopy";

const FLOOR: &str = "floor:";
const STOP: &str = "stop:";
const FENCE: &str = "fence";

/// The fence of a standalone or Sentinel-managed side (db 0).
pub fn fence_key() -> String {
    format!("{PREFIX}{FENCE}")
}

/// A cluster side's fence on the master serving the slot of `tag`.
pub fn fence_slot_key(tag: &str) -> String {
    format!("{PREFIX}{FENCE}:{{{tag}}}")
}

/// Which writers a side accepts: those of `epoch` writing in direction `writer`
/// (`Some(false)`: forward, `Some(true)`: reverse), or none (`None`: fenced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub writer: Option<bool>,
    pub epoch: u64,
}

impl Fence {
    /// Whether this fence was set after `other`: a later epoch, or within one epoch the
    /// fencing (`none`) that ends the epoch's writing.
    pub fn supersedes(&self, other: Fence) -> bool {
        (self.epoch, self.writer.is_none()) > (other.epoch, other.writer.is_none())
    }

    /// Whether a writer of a pipeline of `epoch` and direction `reverse` may write.
    pub fn admits(&self, epoch: u64, reverse: bool) -> bool {
        epoch > self.epoch || (epoch == self.epoch && self.writer == Some(reverse))
    }
}

/// The value of a fence key: `"forward <epoch>"`, `"reverse <epoch>"` or `"none <epoch>"`.
pub fn fence_value(f: Fence) -> String {
    let who = match f.writer {
        Some(false) => "forward",
        Some(true) => "reverse",
        None => "none",
    };
    format!("{who} {}", f.epoch)
}

/// Parses a [`fence_value`]; `None` when malformed.
pub fn parse_fence(v: &[u8]) -> Option<Fence> {
    let text = std::str::from_utf8(v).ok()?;
    let (who, epoch) = text.split_once(' ')?;
    let writer = match who {
        "forward" => Some(false),
        "reverse" => Some(true),
        "none" => None,
        _ => return None,
    };
    Some(Fence { writer, epoch: epoch.parse().ok()? })
}

/// Whether `key` is one of ferry's own keys.
pub fn is_own_key(key: &[u8]) -> bool {
    OWN_KEY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The key holding a pipeline's checkpoint on a standalone target (db 0).
pub fn key(pipeline_id: &str) -> String {
    format!("{PREFIX}{pipeline_id}")
}

/// A cluster target's checkpoint of the slot whose hash tag is `tag`.
pub fn slot_key(tag: &str, pipeline_id: &str) -> String {
    format!("{PREFIX}{{{tag}}}:{pipeline_id}")
}

/// A cluster target's floor on the master serving the slot of `tag`.
pub fn floor_key(tag: &str, pipeline_id: &str) -> String {
    format!("{PREFIX}{FLOOR}{{{tag}}}:{pipeline_id}")
}

/// Where a pipeline that must not go on records why (see the crate documentation). The
/// writer refuses every session of the pipeline while the key exists; the operator deletes
/// it once the cause is dealt with.
pub fn stop_key(pipeline_id: &str) -> String {
    format!("{PREFIX}{STOP}{pipeline_id}")
}

/// Whether `key` is a floor key.
pub fn is_floor_key(key: &[u8]) -> bool {
    key.strip_prefix(PREFIX.as_bytes()).is_some_and(|r| r.starts_with(FLOOR.as_bytes()))
}

/// The pipeline a checkpoint key belongs to: `ferry:checkpoint:<id>` (a standalone target)
/// or, on a cluster target, `ferry:checkpoint:{<tag>}:<id>` and
/// `ferry:checkpoint:floor:{<tag>}:<id>`.
pub fn pipeline_of_key(key: &[u8]) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX.as_bytes())?;
    if rest.starts_with(FENCE.as_bytes()) || key == COUNTERS_KEY.as_bytes() || key == COORDINATOR_LEASE_KEY.as_bytes() {
        return None;
    }
    let rest = rest.strip_prefix(FLOOR.as_bytes()).or_else(|| rest.strip_prefix(STOP.as_bytes())).unwrap_or(rest);
    let rest = match rest.strip_prefix(b"{") {
        Some(tagged) => {
            let end = tagged.iter().position(|&c| c == b'}')?;
            tagged[end + 1..].strip_prefix(b":")?
        }
        None => rest,
    };
    std::str::from_utf8(rest).ok().filter(|id| !id.is_empty())
}

/// The value of a checkpoint key: `"<replid> <offset> <resume_offset> <resume_db>"`.
pub fn value(replid: &str, offset: i64, resume_offset: i64, resume_db: i64) -> String {
    format!("{replid} {offset} {resume_offset} {resume_db}")
}

/// Whether a checkpoint key's value is the marker of an unfinished re-copy.
pub fn is_recopy_marker(v: &[u8]) -> bool {
    v == RECOPY_MARKER.as_bytes()
}

/// Parses a [`value`]; `None` when malformed (or the re-copy marker).
pub fn parse(v: &[u8]) -> Option<Checkpoint> {
    let text = String::from_utf8_lossy(v);
    let parts: Vec<&str> = text.split(' ').collect();
    let num = |i: usize| parts.get(i).and_then(|p| p.parse::<i64>().ok());
    Some(Checkpoint {
        present: true,
        replid: parts.first()?.to_string(),
        offset: num(1)?,
        resume_offset: num(2)?,
        resume_db: num(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_keys_name_their_pipeline() {
        assert_eq!(pipeline_of_key(key("127.0.0.1:6379").as_bytes()), Some("127.0.0.1:6379"));
        assert_eq!(pipeline_of_key(slot_key("a1", "shard-0").as_bytes()), Some("shard-0"));
        assert_eq!(pipeline_of_key(floor_key("a1", "shard-0@2").as_bytes()), Some("shard-0@2"));
        assert_eq!(pipeline_of_key(b"ferry:checkpoint:{a1}"), None);
        assert_eq!(pipeline_of_key(b"ferry:checkpoint:"), None);
        assert_eq!(pipeline_of_key(b"user:1"), None);
        assert!(is_floor_key(floor_key("a1", "p").as_bytes()) && !is_floor_key(slot_key("a1", "p").as_bytes()));
        assert_eq!(pipeline_of_key(stop_key("127.0.0.1:6379").as_bytes()), Some("127.0.0.1:6379"));
        assert_eq!(pipeline_of_key(fence_key().as_bytes()), None);
        assert_eq!(pipeline_of_key(fence_slot_key("a1").as_bytes()), None);
        assert_eq!(pipeline_of_key(COUNTERS_KEY.as_bytes()), None);
    }

    #[test]
    fn fences_admit_their_epoch_and_direction_and_later_epochs() {
        let fenced = Fence { writer: None, epoch: 2 };
        assert_eq!(parse_fence(fence_value(fenced).as_bytes()), Some(fenced));
        assert!(!fenced.admits(2, false) && !fenced.admits(1, false) && fenced.admits(3, true));
        let reverse = Fence { writer: Some(true), epoch: 3 };
        assert_eq!(parse_fence(b"reverse 3"), Some(reverse));
        assert!(reverse.admits(3, true) && !reverse.admits(3, false) && !reverse.admits(2, true));
        assert_eq!(parse_fence(b"garbage"), None);
        let forward = Fence { writer: Some(false), epoch: 2 };
        assert!(fenced.supersedes(forward) && !forward.supersedes(fenced) && reverse.supersedes(fenced));
    }

    #[test]
    fn values_round_trip() {
        let c = parse(value("abc", 12, 10, 3).as_bytes()).unwrap();
        assert_eq!((c.replid.as_str(), c.offset, c.resume_offset, c.resume_db), ("abc", 12, 10, 3));
        assert!(parse(RECOPY_MARKER.as_bytes()).is_none());
        assert!(is_own_key(COUNTERS_KEY.as_bytes()) && is_own_key(b"ferry:tmp:{1}:k") && !is_own_key(b"user:1"));
    }
}
