//! From decoded data to RESP batches for the target.
//!
//! [`BatchBuilder`] accumulates commands for one [`Batch`]: every batch starts with a
//! `SELECT` of the db its first command applies to, so the writer needs no state about
//! the target connection. [`RdbConverter`] turns RDB entries into commands: a `RESTORE`
//! of the raw RDB encoding when the value is small enough (exact, one round trip), or,
//! for values too big for one `RESTORE`, commands in chunks written into a temporary key
//! that is renamed into place at the end (so the key appears whole, and the existing-key
//! policy applies with `RENAME` / `RENAMENX`).

use bytes::{Bytes, BytesMut};
use ferry_config::ExistingKey;
use ferry_proto::Batch;
use ferry_rdb::{Entry, Flavor, Part, Value};
use ferry_resp::encode_command_into;
use tracing::warn;

/// Accumulates commands for one batch.
pub struct BatchBuilder {
    resp: BytesMut,
    count: u32,
    keys: u32,
    commands: u32,
    /// db of the last command added (what the target connection has selected).
    db: u64,
    renamenx: Vec<u32>,
    module_restores: Vec<u32>,
    /// Source offset at the end of each command (incremental batches only).
    offsets: Vec<i64>,
    /// Offset given to commands added without one (the start of the current frame).
    base_offset: Option<i64>,
    max_bytes: usize,
    max_count: u32,
}

impl BatchBuilder {
    pub fn new(max_bytes: usize, max_count: u32) -> Self {
        BatchBuilder {
            resp: BytesMut::with_capacity(max_bytes.min(1 << 20) + 4096),
            count: 0,
            keys: 0,
            commands: 0,
            db: 0,
            renamenx: Vec::new(),
            module_restores: Vec::new(),
            offsets: Vec::new(),
            base_offset: None,
            max_bytes,
            max_count,
        }
    }

    /// Makes sure the next command applies to `db`.
    pub fn select(&mut self, db: u64) {
        if self.count == 0 || self.db != db {
            let n = db.to_string();
            encode_command_into(&mut self.resp, &[&b"SELECT"[..], n.as_bytes()]);
            self.count += 1;
            self.db = db;
            if let Some(o) = self.base_offset {
                self.offsets.push(o);
            }
        }
    }

    /// Commands added from now on carry source offsets; `base` is given to the ones that do
    /// not come from the stream (the SELECTs the builder inserts).
    pub fn set_base_offset(&mut self, base: i64) {
        self.base_offset = Some(base);
    }

    /// Adds a command given as arguments, applied to `db`.
    pub fn push<A: AsRef<[u8]>>(&mut self, db: u64, args: &[A]) {
        self.select(db);
        encode_command_into(&mut self.resp, args);
        self.count += 1;
        self.commands += 1;
    }

    /// Adds a command that is already RESP. `data` says whether it counts as a data command.
    pub fn push_raw(&mut self, db: u64, cmd: &[u8], data: bool, end_offset: i64) {
        self.select(db);
        self.resp.extend_from_slice(cmd);
        self.count += 1;
        if self.base_offset.is_some() {
            self.offsets.push(end_offset);
        }
        if data {
            self.commands += 1;
        }
    }

    /// Records that the db changed through a replicated `SELECT` that was added with `push_raw`.
    pub fn set_db(&mut self, db: u64) {
        self.db = db;
    }

    pub fn add_key(&mut self) {
        self.keys += 1;
    }

    pub fn mark_renamenx(&mut self) {
        self.renamenx.push(self.count - 1);
    }

    /// Adds `RESTORE key ttl <payload> [ABSTTL] [REPLACE]`, the payload being `raw` followed
    /// by the DUMP footer (RDB version, CRC-64), written straight into the batch: a big
    /// value is copied once, not once into a payload and again into the batch.
    pub fn push_restore(&mut self, db: u64, key: &[u8], ttl: &[u8], raw: &[u8], version: u16, flags: &[&[u8]]) {
        use ferry_resp::put_header;
        self.select(db);
        let footer_version = version.to_le_bytes();
        let crc = ferry_rdb::crc64(ferry_rdb::crc64(0, raw), &footer_version);
        self.resp.reserve(raw.len() + key.len() + 128);
        put_header(&mut self.resp, b'*', 4 + flags.len());
        self.resp.extend_from_slice(b"$7\r\nRESTORE\r\n");
        for arg in [key, ttl] {
            put_header(&mut self.resp, b'$', arg.len());
            self.resp.extend_from_slice(arg);
            self.resp.extend_from_slice(b"\r\n");
        }
        put_header(&mut self.resp, b'$', raw.len() + 10);
        self.resp.extend_from_slice(raw);
        self.resp.extend_from_slice(&footer_version);
        self.resp.extend_from_slice(&crc.to_le_bytes());
        self.resp.extend_from_slice(b"\r\n");
        for f in flags {
            put_header(&mut self.resp, b'$', f.len());
            self.resp.extend_from_slice(f);
            self.resp.extend_from_slice(b"\r\n");
        }
        self.count += 1;
        self.commands += 1;
    }

    /// The command just added is a `RESTORE` of a module value.
    pub fn mark_module_restore(&mut self) {
        self.module_restores.push(self.count - 1);
    }

    /// Bytes of RESP added so far.
    pub fn len(&self) -> usize {
        self.resp.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.resp.len() >= self.max_bytes || self.count >= self.max_count
    }

    /// Room for a whole batch at once (a full copy fills every batch), rather than a buffer
    /// grown, and copied, by doublings.
    pub fn reserve_batch(&mut self) {
        self.resp.reserve(self.max_bytes.min(1 << 20) + 4096);
    }

    /// Takes the batch built so far.
    pub fn take(&mut self, offset: i64, rdb_end: bool) -> Batch {
        let batch = Batch {
            resp: self.resp.split().freeze(),
            count: self.count,
            keys: self.keys,
            commands: self.commands,
            offset,
            rdb_end,
            busykey_is_skip: false,
            pipeline_id: String::new(),
            renamenx: std::mem::take(&mut self.renamenx),
            existing_is_fatal: false,
            hello: false,
            begin: None,
            resume_offset: offset,
            resume_db: 0,
            cmd_offsets: std::mem::take(&mut self.offsets),
            module_restores: std::mem::take(&mut self.module_restores),
            reverse: false,
            traceparent: String::new(),
            deployment: String::new(),
        };
        self.count = 0;
        self.keys = 0;
        self.commands = 0;
        batch
    }
}

/// Elements per command when a value is sent as commands.
const ELEMENTS_PER_COMMAND: usize = 512;

/// Turns RDB entries into commands.
pub struct RdbConverter {
    pub policy: ExistingKey,
    /// Version and flavor of the RDB being converted (from its header).
    pub rdb_version: u16,
    pub flavor: Flavor,
    /// The RDB version the target loads; 0 = unknown (taken to be the source's).
    pub target_rdb_version: u32,
    pub modules_skipped: u64,
    /// Keys whose TTL had already passed when they were decoded (not created, as RESTORE would).
    pub expired_skipped: u64,
    /// The parts of the current key are dropped (it had expired).
    skipping: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `ferry:tmp:{<tag>}:<key>`: the tag puts the temporary key in the key's cluster slot, so it
/// can be renamed into place on a cluster too.
fn tmp_key(key: &[u8]) -> Vec<u8> {
    let tag = &ferry_resp::cluster::slot_tags()[ferry_resp::cluster::key_slot(key) as usize];
    let mut k = Vec::with_capacity(ferry_checkpoint::TMP_PREFIX.len() + tag.len() + 3 + key.len());
    k.extend_from_slice(ferry_checkpoint::TMP_PREFIX);
    k.push(b'{');
    k.extend_from_slice(tag.as_bytes());
    k.extend_from_slice(b"}:");
    k.extend_from_slice(key);
    k
}

/// Shortest text that parses back to exactly `f` (Redis reads scores with `strtod`).
pub fn format_score(f: f64) -> String {
    if f == f64::INFINITY {
        "inf".into()
    } else if f == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{f:?}")
    }
}

impl RdbConverter {
    pub fn new(policy: ExistingKey, rdb_version: u16) -> Self {
        RdbConverter {
            policy,
            rdb_version,
            flavor: Flavor::Redis,
            target_rdb_version: 0,
            modules_skipped: 0,
            expired_skipped: 0,
            skipping: false,
        }
    }

    /// Adds a function library (`FUNCTION LOAD REPLACE`). Pre-GA (7.0 RC) records carry the
    /// name and engine apart; 7.0 GA wants them in a shebang line.
    pub fn function(&mut self, code: &Bytes, name: Option<&Bytes>, engine: Option<&Bytes>, b: &mut BatchBuilder) {
        let code = match (name, engine) {
            (Some(name), Some(engine)) if !code.starts_with(b"#!") => {
                let mut c = format!("#!{} name={}\n", String::from_utf8_lossy(engine), String::from_utf8_lossy(name))
                    .into_bytes();
                c.extend_from_slice(code);
                Bytes::from(c)
            }
            _ => code.clone(),
        };
        b.push(0, &[&b"FUNCTION"[..], b"LOAD", b"REPLACE", &code]);
    }

    /// Takes the version and flavor from the RDB header.
    pub fn header(&mut self, version: u32, flavor: Flavor) {
        self.rdb_version = version as u16;
        self.flavor = flavor;
    }

    /// The version to label a `RESTORE` payload of type `rdb_type` with, or `None` when the
    /// target cannot load that type (it gets commands instead). Redis checks only that the
    /// label is not newer than itself; the body must use encodings it knows.
    fn payload_version(&self, rdb_type: u8) -> Option<u16> {
        let source = u32::from(self.rdb_version);
        let target = self.target_rdb_version;
        // A target of the source's family and at least its version reads its payloads as
        // they are labelled.
        if target == 0 || ((source >= 80) == (target >= 80) && target >= source) {
            return Some(self.rdb_version);
        }
        let needed = ferry_rdb::min_rdb_version(rdb_type, self.flavor, source);
        ferry_rdb::restore_label(needed, self.target_rdb_version).map(|v| v as u16)
    }

    /// Why the target cannot hold `e` as the source has it (a feature newer than the target's
    /// RDB version: converting it to commands would lose it), or `None`. Checked on every part.
    pub fn refusal(&self, e: &Entry) -> Option<String> {
        let target = self.target_rdb_version;
        if target == 0 || target >= 12 {
            return None;
        }
        let Value::Hash(fields) = &e.value else { return None };
        fields.iter().any(|f| f.expire_ms.is_some()).then(|| {
            format!(
                "key {:?} (db {}) is a hash with field TTLs (RDB type {}, Redis 7.4+), which the target (RDB {target}) \
                 cannot hold: copy into Redis 7.4+ or Valkey 9+, or leave the key out ([filter] block_keys)",
                String::from_utf8_lossy(&e.key),
                e.db,
                e.rdb_type
            )
        })
    }

    /// Whether values of type `rdb_type` go to the target as their RDB encoding (`RESTORE`)
    /// when small enough: the parser then need not decode them.
    pub fn sends_raw(&self, rdb_type: u8) -> bool {
        self.payload_version(rdb_type).is_some()
    }

    /// Adds the commands for one entry (or part of one) to `b`.
    pub fn entry(&mut self, e: &Entry, b: &mut BatchBuilder) {
        if let Value::Module { module_name, .. } = &e.value {
            // A module value is opaque: the target's copy of the module is the only thing that
            // can load it. The writer counts and logs it when the target refuses.
            match (&e.raw, self.payload_version(e.rdb_type)) {
                (Some(raw), Some(version)) => {
                    self.restore(e, raw, version, b);
                    b.mark_module_restore();
                }
                _ => {
                    self.modules_skipped += 1;
                    warn!(key = %String::from_utf8_lossy(&e.key), module = %module_name, "skipping a module value: too big for one RESTORE (decoder.restore_max_bytes) or the target is too old");
                }
            }
            return;
        }
        // An opaque value (not decoded) is of a type `sends_raw` accepted.
        if let (Part::Whole, Some(raw)) = (&e.part, &e.raw)
            && let Some(version) = self
                .payload_version(e.rdb_type)
                .or_else(|| matches!(e.value, Value::Opaque).then_some(self.rdb_version))
        {
            self.restore(e, raw, version, b);
            return;
        }
        self.as_commands(e, b);
    }

    fn restore(&self, e: &Entry, raw: &[u8], version: u16, b: &mut BatchBuilder) {
        // No allocation per key: most keys have no TTL and take the same flags.
        let ttl = e.expire_ms.map(|t| t.max(0).to_string());
        let mut flags: [&[u8]; 2] = [b"", b""];
        let mut n = 0;
        if e.expire_ms.is_some() {
            flags[n] = b"ABSTTL";
            n += 1;
        }
        if self.policy == ExistingKey::Rewrite {
            flags[n] = b"REPLACE";
            n += 1;
        }
        let ttl = ttl.as_deref().map_or(&b"0"[..], str::as_bytes);
        b.push_restore(e.db, &e.key, ttl, raw, version, &flags[..n]);
        b.add_key();
    }

    fn as_commands(&mut self, e: &Entry, b: &mut BatchBuilder) {
        let db = e.db;
        let tmp = tmp_key(&e.key);
        let first = matches!(e.part, Part::Whole | Part::First);
        let last = matches!(e.part, Part::Whole | Part::Last);
        if first {
            // Like RESTORE with a TTL in the past: the key is not created (and replaced by nothing).
            self.skipping = e.expire_ms.is_some_and(|t| t <= now_ms());
            if self.skipping {
                self.expired_skipped += 1;
                if self.policy == ExistingKey::Rewrite {
                    b.push(db, &[&b"DEL"[..], &e.key]);
                }
            }
        }
        if self.skipping {
            if last {
                self.skipping = false;
                b.add_key();
            }
            return;
        }
        if first {
            b.push(db, &[&b"DEL"[..], &tmp]);
        }
        match &e.value {
            Value::String(s) => {
                let cmd: &[u8] = if first { b"SET" } else { b"APPEND" };
                if first || !s.is_empty() {
                    b.push(db, &[cmd, &tmp, s]);
                }
            }
            Value::List(items) => push_chunks(b, db, b"RPUSH", &tmp, items.iter().map(|i| [i.clone()])),
            Value::Set(items) => push_chunks(b, db, b"SADD", &tmp, items.iter().map(|i| [i.clone()])),
            Value::ZSet(items) => {
                push_chunks(b, db, b"ZADD", &tmp, items.iter().map(|(m, s)| [Bytes::from(format_score(*s)), m.clone()]))
            }
            Value::Hash(fields) => {
                push_chunks(b, db, b"HSET", &tmp, fields.iter().map(|f| [f.field.clone(), f.value.clone()]));
                for f in fields {
                    if let Some(ms) = f.expire_ms {
                        let ms = ms.to_string();
                        b.push(db, &[&b"HPEXPIREAT"[..], &tmp, ms.as_bytes(), b"FIELDS", b"1", &f.field]);
                    }
                }
            }
            Value::Stream(s) => {
                if first && s.entries.is_empty() {
                    // XADD creates the key; an empty stream is created and trimmed at once.
                    b.push(db, &[&b"XADD"[..], &tmp, b"MAXLEN", b"0", b"0-1", b"f", b"v"]);
                }
                for entry in &s.entries {
                    let id = format!("{}-{}", entry.id.ms, entry.id.seq);
                    let mut args: Vec<&[u8]> = vec![b"XADD", &tmp, id.as_bytes()];
                    for (f, v) in &entry.fields {
                        args.push(f);
                        args.push(v);
                    }
                    b.push(db, &args);
                }
                if last {
                    stream_metadata(b, db, &tmp, s);
                }
            }
            // Never here: an opaque value is restored whole (see `entry`).
            Value::Module { .. } | Value::Opaque => {}
        }
        if last {
            if let Some(ms) = e.expire_ms {
                let ms = ms.to_string();
                b.push(db, &[&b"PEXPIREAT"[..], &tmp, ms.as_bytes()]);
            }
            match self.policy {
                ExistingKey::Rewrite => {
                    b.push(db, &[&b"RENAME"[..], &tmp, &e.key]);
                    b.mark_renamenx();
                }
                ExistingKey::Skip | ExistingKey::Panic => {
                    b.push(db, &[&b"RENAMENX"[..], &tmp, &e.key]);
                    b.mark_renamenx();
                    // Left over when the key existed.
                    b.push(db, &[&b"DEL"[..], &tmp]);
                }
            }
            b.add_key();
        }
    }
}

fn stream_metadata(b: &mut BatchBuilder, db: u64, tmp: &[u8], s: &ferry_rdb::Stream) {
    let id = |i: &ferry_rdb::StreamId| format!("{}-{}", i.ms, i.seq);
    let last = id(&s.last_id);
    // Streams from before RDB 10 do not store these; Redis then takes the length and 0-0.
    let added = s.entries_added.unwrap_or(s.length);
    let maxdel = s.max_deleted_id.as_ref().map(id).unwrap_or_else(|| "0-0".into());
    let added = added.to_string();
    b.push(
        db,
        &[&b"XSETID"[..], tmp, last.as_bytes(), b"ENTRIESADDED", added.as_bytes(), b"MAXDELETEDID", maxdel.as_bytes()],
    );
    for g in &s.groups {
        let gid = id(&g.last_delivered);
        let mut args: Vec<Vec<u8>> =
            vec![b"XGROUP".to_vec(), b"CREATE".to_vec(), tmp.to_vec(), g.name.to_vec(), gid.into_bytes()];
        // Before RDB 10 the count is not stored; Redis estimates it on load when it can:
        // a group that has read everything has read every entry ever added.
        let estimated = (s.entries_added.is_none() && g.last_delivered == s.last_id).then_some(s.length as i64);
        if let Some(read) = g.entries_read.filter(|r| *r >= 0).or(estimated) {
            args.push(b"ENTRIESREAD".to_vec());
            args.push(read.to_string().into_bytes());
        }
        b.push(db, &args);
        for c in &g.consumers {
            b.push(db, &[&b"XGROUP"[..], b"CREATECONSUMER", tmp, &g.name, &c.name]);
        }
        for p in &g.pel {
            let pid = id(&p.id);
            let time = p.delivery_time_ms.to_string();
            let count = p.delivery_count.to_string();
            b.push(
                db,
                &[
                    &b"XCLAIM"[..],
                    tmp,
                    &g.name,
                    &p.consumer,
                    b"0",
                    pid.as_bytes(),
                    b"TIME",
                    time.as_bytes(),
                    b"RETRYCOUNT",
                    count.as_bytes(),
                    b"FORCE",
                    b"JUSTID",
                ],
            );
        }
    }
}

/// Adds `cmd tmp <elements...>` commands of at most [`ELEMENTS_PER_COMMAND`] elements each.
fn push_chunks<const N: usize>(
    b: &mut BatchBuilder,
    db: u64,
    cmd: &[u8],
    tmp: &[u8],
    items: impl Iterator<Item = [Bytes; N]>,
) {
    let mut args: Vec<Bytes> = Vec::with_capacity(2 + ELEMENTS_PER_COMMAND * N);
    let mut n = 0;
    for item in items {
        if n == 0 {
            args.clear();
            args.push(Bytes::copy_from_slice(cmd));
            args.push(Bytes::copy_from_slice(tmp));
        }
        args.extend(item);
        n += 1;
        if n == ELEMENTS_PER_COMMAND {
            b.push(db, &args);
            n = 0;
        }
    }
    if n > 0 {
        b.push(db, &args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_written_in_place_is_the_encoded_command() {
        let raw = b"\x00\x05hello";
        let mut a = BatchBuilder::new(1 << 20, 100);
        a.push_restore(2, b"key", b"0", raw, 10, &[b"ABSTTL", b"REPLACE"]);
        let payload = ferry_rdb::dump_payload(raw, 10);
        let mut b = BatchBuilder::new(1 << 20, 100);
        b.push(2, &[&b"RESTORE"[..], b"key", b"0", &payload, b"ABSTTL", b"REPLACE"]);
        let (a, b) = (a.take(-1, false), b.take(-1, false));
        assert_eq!(a.resp, b.resp);
        assert_eq!((a.count, a.commands), (b.count, b.commands));
    }

    #[test]
    fn scores_round_trip() {
        for f in [0.1, -0.0, 1e-300, f64::MAX, 2.5e-5, 3.0, f64::INFINITY, f64::NEG_INFINITY] {
            let s = format_score(f);
            let back: f64 = s.parse().unwrap();
            assert_eq!(back.to_bits(), f.to_bits(), "{s}");
        }
    }

    #[test]
    fn batches_start_with_select() {
        let mut b = BatchBuilder::new(1 << 20, 100);
        b.push(3, &[&b"SET"[..], b"k", b"v"]);
        b.push(3, &[&b"SET"[..], b"k2", b"v"]);
        b.push(0, &[&b"SET"[..], b"k", b"v"]);
        let batch = b.take(7, false);
        assert_eq!(batch.count, 5);
        assert_eq!(batch.commands, 3);
        assert!(batch.resp.starts_with(b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"));
        b.push(3, &[&b"SET"[..], b"k", b"v"]);
        assert!(b.take(8, false).resp.starts_with(b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"));
    }
}
