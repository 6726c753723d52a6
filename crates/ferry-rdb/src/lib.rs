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

pub use bytes::Bytes;
pub use crc::{crc64, dump_payload};
pub use error::{ErrorKind, RdbError};
pub use inspect::{InspectError, inspect};
pub use json::{bytes_to_json, bytes_to_json_key, entry_to_json, score_to_json, type_name, value_to_json};
pub use parser::Parser;

/// Newest Redis RDB version this parser knows.
pub const MAX_REDIS_RDB_VERSION: u32 = 12;
/// Newest Valkey RDB version this parser knows ("VALKEY080").
pub const MAX_VALKEY_RDB_VERSION: u32 = 80;

/// Parser settings.
#[derive(Debug, Clone)]
pub struct ParserOptions {
    /// Keep the raw RDB encoding of a value (type byte + body) when it is at most this many bytes, so it can be sent as a RESTORE payload. 0 = never.
    pub raw_limit: usize,
    /// A value whose decoded elements exceed this many bytes (sum of element lengths) is emitted in parts instead of whole.
    pub chunk_bytes: usize,
    /// Verify the CRC-64 trailer when present and non-zero (mismatch = error).
    pub verify_checksum: bool,
    /// Accept RDB versions newer than the newest this parser knows.
    pub allow_newer_version: bool,
}

impl Default for ParserOptions {
    fn default() -> Self {
        ParserOptions { raw_limit: 64 << 20, chunk_bytes: 4 << 20, verify_checksum: true, allow_newer_version: false }
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
    Module { module_id: u64, module_name: String, encver: u64 },
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
