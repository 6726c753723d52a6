//! `ferry-rdb`: a streaming parser of Redis RDB files with bounded memory.
//!
//! Module map:
//! - [`parser`]: the [`Parser`] state machine (header, opcodes, values; big
//!   values emitted in parts of about [`ParserOptions::chunk_bytes`]).
//! - `reader`: buffered byte source counting the offset, feeding the running
//!   CRC-64 and capturing raw value bytes for RESTORE payloads.
//! - `encodings`: listpack, ziplist, intset and zipmap blob decoders.
//! - `lzf`: bounds-checked LZF decompressor.
//! - `crc`: [`crc64`] and [`dump_payload`].
//! - `json`: [`entry_to_json`], [`value_to_json`], [`type_name`] (fixture schema rendering).
//! - `error`: [`RdbError`] / [`ErrorKind`].
//! - [`inspect`](mod@inspect): an RDB file as JSON lines (`ferry-decoder inspect`).
//!
//! The crate knows nothing of networking: it reads any [`std::io::Read`].

mod crc;
mod encodings;
mod error;
pub mod inspect;
mod json;
mod lzf;
pub mod parser;
mod reader;
pub mod write;

pub use bytes::Bytes;
pub use crc::{crc64, dump_payload};
pub use error::{ErrorKind, RdbError};
pub use inspect::{InspectError, inspect};
pub use json::{bytes_to_json, bytes_to_json_key, entry_to_json, score_to_json, type_name, value_to_json};
pub use parser::{ELEM_OVERHEAD, Parser};
pub use write::{DumpError, RdbWriter};

/// Newest Redis RDB version this parser knows.
pub const MAX_REDIS_RDB_VERSION: u32 = 12;
/// Newest Valkey RDB version this parser knows ("VALKEY080").
pub const MAX_VALKEY_RDB_VERSION: u32 = 80;

/// Parser settings.
#[derive(Debug, Clone)]
pub struct ParserOptions {
    /// Keep the raw RDB encoding of a value (type byte + body) when it is at most this many bytes, so it can be sent as a RESTORE payload. 0 = never.
    pub raw_limit: usize,
    /// A value whose decoded elements exceed this many bytes (sum of element lengths, plus
    /// a fixed overhead per element) is emitted in parts instead of whole.
    pub chunk_bytes: usize,
    /// Verify the CRC-64 trailer when present and non-zero (mismatch = error).
    pub verify_checksum: bool,
    /// Accept RDB versions newer than the newest this parser knows.
    pub allow_newer_version: bool,
}

impl Default for ParserOptions {
    fn default() -> Self {
        ParserOptions { raw_limit: 16 << 20, chunk_bytes: 1 << 20, verify_checksum: true, allow_newer_version: false }
    }
}

/// Which server family wrote the file (from the magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// "REDIS" + 4 digits.
    Redis,
    /// "VALKEY" + 3 digits.
    Valkey,
}

/// One parse event.
#[derive(Debug, Clone)]
pub enum Event {
    /// The file header.
    Header { version: u32, flavor: Flavor },
    /// An AUX field (int-encoded values rendered as decimal text).
    Aux { key: Bytes, value: Bytes },
    /// SELECTDB.
    SelectDb(u64),
    /// RESIZEDB hint.
    ResizeDb { db_size: u64, expires_size: u64 },
    /// SLOT_INFO hint.
    SlotInfo { slot: u64, slot_size: u64, expires_slot_size: u64 },
    /// MODULE_AUX record (payload skipped).
    ModuleAux { module_id: u64, module_name: String },
    /// FUNCTION2 (opcode 245): the library code. Pre-GA FUNCTION (246): name/engine/desc/code.
    Function { code: Bytes, name: Option<Bytes>, engine: Option<Bytes>, desc: Option<Bytes> },
    /// A key, or a part of a key's value.
    Entry(Entry),
    /// End of the file. `checksum` is the stored trailer (None for version < 5 or when absent).
    Eof { checksum: Option<u64> },
}

/// A key (or part of one).
#[derive(Debug, Clone)]
pub struct Entry {
    pub db: u64,
    pub key: Bytes,
    /// Absolute unix ms; seconds opcodes ×1000.
    pub expire_ms: Option<i64>,
    pub rdb_type: u8,
    pub lru_idle: Option<u64>,
    pub lfu_freq: Option<u8>,
    pub part: Part,
    pub value: Value,
    /// Raw RDB encoding (type byte followed by the value body) when part == Whole and its size <= raw_limit.
    pub raw: Option<Bytes>,
}

/// Which part of a value an [`Entry`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    First,
    Middle,
    Last,
}

/// A decoded value (or the elements of one part of it).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(Bytes),
    List(Vec<Bytes>),
    Set(Vec<Bytes>),
    ZSet(Vec<(Bytes, f64)>),
    Hash(Vec<HashField>),
    Stream(Box<Stream>),
    Module {
        module_id: u64,
        module_name: String,
        encver: u64,
    },
    /// Not decoded: the value's RDB encoding is in [`Entry::raw`] (a type the caller asked
    /// not to decode, [`Parser::set_opaque_types`], whose encoding fits `raw_limit`).
    Opaque,
}

/// One hash field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashField {
    pub field: Bytes,
    pub value: Bytes,
    /// Absolute unix ms of the field TTL (RDB 12 hash field expiration).
    pub expire_ms: Option<i64>,
}

/// A stream value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    /// Live entries only, ID order.
    pub entries: Vec<StreamEntry>,
    pub length: u64,
    pub last_id: StreamId,
    pub first_id: Option<StreamId>,
    pub max_deleted_id: Option<StreamId>,
    pub entries_added: Option<u64>,
    pub groups: Vec<StreamGroup>,
}

/// A stream ID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: StreamId,
    pub fields: Vec<(Bytes, Bytes)>,
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGroup {
    pub name: Bytes,
    pub last_delivered: StreamId,
    pub entries_read: Option<i64>,
    pub pel: Vec<PendingEntry>,
    pub consumers: Vec<Consumer>,
}

/// A group PEL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub id: StreamId,
    pub consumer: Bytes,
    pub delivery_time_ms: u64,
    pub delivery_count: u64,
}

/// A consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: Bytes,
    pub seen_time_ms: u64,
    pub active_time_ms: Option<u64>,
    pub pel: Vec<StreamId>,
}

/// Decode the 9-character module name and encoding version from a module id.
pub fn module_name_from_id(module_id: u64) -> (String, u64) {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut name = String::with_capacity(9);
    let mut id = module_id >> 10;
    let mut chars = [0u8; 9];
    for c in chars.iter_mut().rev() {
        *c = CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    for c in chars {
        name.push(c as char);
    }
    (name, module_id & 1023)
}

/// The lowest RDB version whose loader knows value type `rdb_type` of a file of `flavor`
/// (Redis's numbering; Valkey 9 gives 22/23 meanings of its own). A `RESTORE` payload of this
/// type can be labelled with any version from this one up to the target's own.
pub fn min_rdb_version(rdb_type: u8, flavor: Flavor, file_version: u32) -> u32 {
    match rdb_type {
        0..=4 | 9..=13 => 1,
        5..=7 => 8,
        14 => 7,
        15 => 9,
        16..=19 => 10,
        20 | 21 => 11,
        22 | 23 if flavor == Flavor::Valkey => file_version,
        22..=25 => 12,
        _ => file_version,
    }
}

/// The version to label a `RESTORE` payload with for a target that loads RDB `target`, when
/// its body needs a loader of version `needed` ([`min_rdb_version`]); `None` when the target
/// cannot load it. Redis numbers its versions 1, 2, ... 15; Valkey 9 goes on at 80 and loads
/// Redis's versions only up to 11 (12–79 are Redis's own types, foreign to it), so a label
/// must be one the target's family reads with the same meaning.
pub fn restore_label(needed: u32, target: u32) -> Option<u32> {
    const VALKEY_FIRST: u32 = 80;
    // The lowest label that describes the body: a server checks only that a label is not
    // newer than itself, so this one holds even if the target's version was misjudged.
    if target >= VALKEY_FIRST {
        (needed <= 11 || (VALKEY_FIRST..=target).contains(&needed)).then_some(needed)
    } else {
        (needed <= target).then_some(needed)
    }
}

/// The version ferry announces as a replica (`REPLCONF version`) to the primary whose
/// `INFO server` is `info`, or `None` to announce none. Valkey 9.1+ picks the RDB it sends by
/// the replica's version: nothing (or < 9.0.0) gets RDB 11, and such a full sync is aborted
/// when a hash has field TTLs; `9.0.0` gets RDB 80, which this parser reads (not 9.2.0: RDB
/// 81). Nothing is announced elsewhere: Valkey 8.x and 9.0 send the same RDB whatever is
/// announced, a Valkey cluster primary then waits for the replica's acknowledgement on
/// `CLUSTER SETSLOT` (a lagging target would slow slot migrations), and Redis refuses the
/// option.
pub fn announced_replica_version(info: &str) -> Option<&'static str> {
    // A cluster primary would then wait for ferry on every `CLUSTER SETSLOT`: slot
    // migrations of the source must not depend on how far the target is.
    if info.lines().any(|l| matches!(l.trim(), "server_mode:cluster" | "redis_mode:cluster")) {
        return None;
    }
    let v = info.lines().find_map(|l| l.strip_prefix("valkey_version:"))?.trim();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next()?, parts.next().unwrap_or(0));
    ((major, minor) >= (9, 1)).then_some("9.0.0")
}

/// The RDB version a server writes and loads, from its `INFO server` text: the Valkey or Redis
/// version it reports. `None` when the text names no version ferry knows how to map.
pub fn server_rdb_version(info: &str) -> Option<u32> {
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    let parse = |v: &str| -> Option<(u32, u32)> {
        let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
        Some((it.next()??, it.next()??))
    };
    if let Some(v) = field("valkey_version") {
        let (major, _) = parse(&v)?;
        return Some(if major >= 9 { 80 } else { 11 });
    }
    let (major, minor) = parse(&field("redis_version")?)?;
    Some(match (major, minor) {
        (0..=2, _) | (3, 0..=1) => 6,
        (3, _) => 7,
        (4, _) => 8,
        (5 | 6, _) => 9,
        (7, 0..=1) => 10,
        (7, 2..=3) => 11,
        (7, _) | (8, 0..=4) => 12,
        (8, 5..=6) => 13,
        (8, 7..=8) => 14,
        _ => 15,
    })
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn server_versions_map_to_rdb_versions() {
        let v = |s: &str| server_rdb_version(s);
        assert_eq!(v("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"), Some(10));
        assert_eq!(v("redis_version:7.2.4\r\n"), Some(11));
        assert_eq!(v("redis_version:7.4.1\r\n"), Some(12));
        assert_eq!(v("redis_version:8.0.2\r\n"), Some(12));
        assert_eq!(v("redis_version:8.4.0\r\n"), Some(12));
        assert_eq!(v("redis_version:8.6.1\r\n"), Some(13));
        assert_eq!(v("redis_version:8.8.0\r\n"), Some(14));
        assert_eq!(v("redis_version:8.10.0\r\n"), Some(15));
        assert_eq!(v("redis_version:6.2.14\r\n"), Some(9));
        assert_eq!(v("redis_version:3.2.12\r\n"), Some(7));
        assert_eq!(v("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.0\r\n"), Some(11));
        assert_eq!(v("redis_version:7.2.4\r\nvalkey_version:9.0.0\r\n"), Some(80));
        assert_eq!(v("redis_version:garbage\r\n"), None);
        assert_eq!(v("# Server\r\n"), None);
    }

    #[test]
    fn only_valkey_9_1_and_later_hear_a_replica_version() {
        let v = |s: &str| announced_replica_version(s);
        assert_eq!(v("redis_version:7.4.1\r\n"), None);
        assert_eq!(v("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n"), None);
        assert_eq!(v("valkey_version:9.0.3\r\n"), None);
        assert_eq!(v("valkey_version:9.1.0\r\n"), Some("9.0.0"));
        assert_eq!(v("valkey_version:10.0.0\r\n"), Some("9.0.0"));
        assert_eq!(v("valkey_version:9.1.0\r\nserver_mode:cluster\r\n"), None);
    }

    #[test]
    fn types_need_the_version_that_introduced_them() {
        assert_eq!(min_rdb_version(0, Flavor::Redis, 12), 1);
        assert_eq!(min_rdb_version(16, Flavor::Redis, 12), 10);
        assert_eq!(min_rdb_version(20, Flavor::Redis, 12), 11);
        assert_eq!(min_rdb_version(25, Flavor::Redis, 12), 12);
        assert_eq!(min_rdb_version(22, Flavor::Valkey, 80), 80);
    }

    #[test]
    fn restore_labels_are_read_with_the_same_meaning_by_the_target() {
        // Redis targets: any label up to their own version.
        assert_eq!(restore_label(1, 10), Some(1));
        assert_eq!(restore_label(11, 10), None);
        assert_eq!(restore_label(12, 12), Some(12));
        // Valkey 9 (RDB 80): Redis's shared types as 11, its own as 80, never Redis's 12+.
        assert_eq!(restore_label(10, 80), Some(10));
        assert_eq!(restore_label(12, 80), None);
        assert_eq!(restore_label(80, 80), Some(80));
        assert_eq!(restore_label(81, 80), None);
        // Valkey's own types into Redis: never.
        assert_eq!(restore_label(80, 12), None);
    }
}
