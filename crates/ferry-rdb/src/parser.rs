//! The streaming RDB parser: [`Parser::next_event`] yields one [`Event`] at a
//! time; big values are emitted in parts so memory stays bounded.
//!
//! Parts: elements are accumulated until their decoded size (their bytes plus
//! [`ELEM_OVERHEAD`] each, what an element costs in memory beyond its bytes) reaches
//! `chunk_bytes`; if more elements remain, the accumulated ones are emitted as
//! a `First`/`Middle` part (so every non-final part holds at least
//! `chunk_bytes`, at most `chunk_bytes` + one element). A value that ends
//! within its first part is `Whole` and carries `raw` when it fit in
//! `raw_limit`. Strings longer than `chunk_bytes` arrive in slices of
//! `chunk_bytes`. Stream metadata and groups are in the `Whole`/`Last` part.
//!
//! After an error the parser is finished: further calls return `Ok(None)`.
//! A v5+ file that ends right after the EOF opcode yields `Eof { checksum: None }`.
//! Reader end-of-file in the middle of an item is `ErrorKind::Truncated`.

use crate::encodings::{self, Item};
use crate::error::{ErrorKind, RdbError, corrupt};
use crate::reader::Src;
use crate::{
    Bytes, Consumer, Entry, Event, Flavor, HashField, MAX_REDIS_RDB_VERSION, MAX_VALKEY_RDB_VERSION, ParserOptions,
    Part, PendingEntry, Stream, StreamEntry, StreamGroup, StreamId, Value, module_name_from_id,
};
use std::collections::{HashMap, VecDeque};
use std::io::Read;

const OP_SLOT_INFO: u8 = 244;
const OP_FUNCTION2: u8 = 245;
const OP_FUNCTION_PRE_GA: u8 = 246;
const OP_MODULE_AUX: u8 = 247;
const OP_IDLE: u8 = 248;
const OP_FREQ: u8 = 249;
const OP_AUX: u8 = 250;
const OP_RESIZEDB: u8 = 251;
const OP_EXPIRETIME_MS: u8 = 252;
const OP_EXPIRETIME: u8 = 253;
const OP_SELECTDB: u8 = 254;
const OP_EOF: u8 = 255;

/// Cap for preallocations sized by counts read from the file.
const PREALLOC_CAP: usize = 4096;

enum Len {
    Len(u64),
    Enc(u8),
}

#[derive(Clone)]
struct KeyCtx {
    db: u64,
    key: Bytes,
    expire_ms: Option<i64>,
    rdb_type: u8,
    lru_idle: Option<u64>,
    lfu_freq: Option<u8>,
}

impl KeyCtx {
    /// The whole value's entry, the key moved into it.
    fn into_entry(self, value: Value, raw: Option<Bytes>) -> Entry {
        Entry {
            db: self.db,
            key: self.key,
            expire_ms: self.expire_ms,
            rdb_type: self.rdb_type,
            lru_idle: self.lru_idle,
            lfu_freq: self.lfu_freq,
            part: Part::Whole,
            value,
            raw,
        }
    }

    fn entry(&self, part: Part, value: Value, raw: Option<Bytes>) -> Entry {
        Entry {
            db: self.db,
            key: self.key.clone(),
            expire_ms: self.expire_ms,
            rdb_type: self.rdb_type,
            lru_idle: self.lru_idle,
            lfu_freq: self.lfu_freq,
            part,
            value,
            raw,
        }
    }
}

enum Elem {
    B(Bytes),
    Z(Bytes, f64),
    H(HashField),
    S(StreamEntry),
}

impl Elem {
    /// Memory an element takes: its bytes plus [`ELEM_OVERHEAD`] (a value of ten million
    /// tiny hash fields must be cut into parts by what it costs, not by its few bytes).
    fn size(&self) -> usize {
        ELEM_OVERHEAD
            + match self {
                Elem::B(b) => b.len(),
                Elem::Z(m, _) => m.len() + 8,
                Elem::H(h) => h.field.len() + h.value.len() + if h.expire_ms.is_some() { 8 } else { 0 },
                Elem::S(e) => 16 + e.fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>(),
            }
    }
}

/// Bytes an element of a part costs beyond its own (`Bytes` handles, allocation headers).
pub const ELEM_OVERHEAD: usize = 64;

enum Kind {
    /// Plain string still in the file: bytes left.
    StrRaw(u64),
    /// String already in memory (int/LZF/short), position of the next chunk.
    Buf(Bytes, usize),
    /// LZF string bigger than a chunk, decompressed a chunk at a time.
    Lzf(Box<crate::lzf::LzfStream>),
    /// List/set of length-prefixed strings.
    Strings(u64),
    ZSet {
        left: u64,
        binary: bool,
    },
    Hash(u64),
    /// Hash with field TTLs (24: min expire given; 22 pre-GA: absolute TTLs).
    HashMeta {
        left: u64,
        min_expire: Option<u64>,
    },
    Hash2 {
        left: u64,
    },
    Quicklist {
        left: u64,
        v2: bool,
    },
    Stream(u64),
    /// All elements already decoded into `pending`.
    Blob,
}

#[derive(Clone, Copy, PartialEq)]
enum AccKind {
    Str,
    List,
    Set,
    ZSet,
    Hash,
    Stream,
}

struct ValueState {
    ctx: KeyCtx,
    kind: Kind,
    acc_kind: AccKind,
    pending: VecDeque<Elem>,
    acc: Vec<Elem>,
    acc_bytes: usize,
    emitted: bool,
}

impl ValueState {
    fn exhausted(&self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        match &self.kind {
            Kind::StrRaw(n) | Kind::Strings(n) | Kind::Hash(n) | Kind::Stream(n) => *n == 0,
            Kind::Buf(b, p) => *p >= b.len(),
            Kind::Lzf(s) => s.done(),
            Kind::ZSet { left, .. }
            | Kind::HashMeta { left, .. }
            | Kind::Hash2 { left }
            | Kind::Quicklist { left, .. } => *left == 0,
            Kind::Blob => true,
        }
    }
}

/// How the bytes of an RDB string follow its header.
#[derive(Clone, Copy)]
enum StrHead {
    Plain(u64),
    /// An integer of 1, 2 or 4 bytes (encodings 0, 1, 2).
    Int(u8),
    Lzf {
        clen: u64,
        len: u64,
    },
}

#[derive(PartialEq)]
enum State {
    Start,
    Body,
    Done,
    Failed,
}

/// Streaming RDB parser over any reader.
pub struct Parser<R: Read> {
    src: Src<R>,
    opts: ParserOptions,
    /// Value types not to decode when their encoding fits `raw_limit` (a bit per type).
    opaque: [u64; 4],
    version: u32,
    flavor: Flavor,
    state: State,
    db: u64,
    expire: Option<i64>,
    lru: Option<u64>,
    lfu: Option<u8>,
    cur: Option<ValueState>,
    err_key: Option<Bytes>,
    computed: Option<u64>,
    stored: Option<u64>,
}

impl<R: Read> Parser<R> {
    /// A parser reading from `reader`.
    pub fn new(reader: R, opts: ParserOptions) -> Self {
        Parser {
            src: Src::new(reader, opts.verify_checksum),
            opts,
            opaque: [0; 4],
            version: 0,
            flavor: Flavor::Redis,
            state: State::Start,
            db: 0,
            expire: None,
            lru: None,
            lfu: None,
            cur: None,
            err_key: None,
            computed: None,
            stored: None,
        }
    }

    /// Values of the types for which `opaque` holds are not decoded when their encoding is
    /// one string (plain and LZF strings, ziplists, listpacks, intsets, zipmaps) that fits
    /// `raw_limit`: their entry is [`Value::Opaque`] with the bytes in [`Entry::raw`], found
    /// by their length alone (for a caller that sends them on as `RESTORE` payloads: the
    /// decoding would be thrown away). Set after the header, when its version is known.
    pub fn set_opaque_types(&mut self, opaque: impl Fn(u8) -> bool) {
        self.opaque = [0; 4];
        for t in 0..=255u8 {
            if opaque(t) && matches!(t, 0 | 9..=13 | 16 | 17 | 20) {
                self.opaque[usize::from(t / 64)] |= 1 << (t % 64);
            }
        }
    }

    fn is_opaque(&self, t: u8) -> bool {
        self.opaque[usize::from(t / 64)] & (1 << (t % 64)) != 0
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.src.offset()
    }

    /// RDB version from the header (0 before the header is read).
    pub fn rdb_version(&self) -> u32 {
        self.version
    }

    /// Flavor from the header (Redis before the header is read).
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// After EOF: `false` only when the trailer was compared and differs
    /// (which with `verify_checksum` is also an error); `true` when equal or
    /// not verified (verification off, version < 5, trailer absent or zero).
    pub fn checksum_ok(&self) -> bool {
        !matches!((self.stored, self.computed), (Some(s), Some(c)) if s != 0 && s != c)
    }

    /// After EOF: whether the trailer was actually compared with the content.
    pub fn checksum_verified(&self) -> bool {
        matches!((self.stored, self.computed), (Some(s), Some(_)) if s != 0)
    }

    /// After EOF: CRC-64 of the content (None when `verify_checksum` is off).
    pub fn computed_checksum(&self) -> Option<u64> {
        self.computed
    }

    /// The next event; Ok(None) after the EOF opcode (and checksum) have been read. Never panics on any input.
    pub fn next_event(&mut self) -> Result<Option<Event>, RdbError> {
        let r = match self.state {
            State::Done | State::Failed => return Ok(None),
            State::Start => self.read_header().map(Some),
            State::Body => {
                if self.cur.is_some() {
                    self.produce().map(Some)
                } else {
                    self.read_body()
                }
            }
        };
        match r {
            Ok(ev) => Ok(ev),
            Err(kind) => {
                self.state = State::Failed;
                self.cur = None;
                Err(RdbError { offset: self.src.offset(), key: self.err_key.take(), kind })
            }
        }
    }

    fn read_header(&mut self) -> Result<Event, ErrorKind> {
        let mut h = [0u8; 9];
        self.src.read_exact(&mut h)?;
        let (flavor, digits) = if &h[..5] == b"REDIS" {
            (Flavor::Redis, &h[5..9])
        } else if &h[..6] == b"VALKEY" {
            (Flavor::Valkey, &h[6..9])
        } else {
            return Err(ErrorKind::BadMagic);
        };
        if !digits.iter().all(|c| c.is_ascii_digit()) {
            return Err(ErrorKind::BadMagic);
        }
        let version = digits.iter().fold(0u32, |a, &c| a * 10 + (c - b'0') as u32);
        let max = match flavor {
            Flavor::Redis => MAX_REDIS_RDB_VERSION,
            Flavor::Valkey => MAX_VALKEY_RDB_VERSION,
        };
        if version == 0 || (version > max && !self.opts.allow_newer_version) {
            return Err(ErrorKind::UnsupportedVersion(version));
        }
        self.version = version;
        self.flavor = flavor;
        self.state = State::Body;
        Ok(Event::Header { version, flavor })
    }

    fn read_body(&mut self) -> Result<Option<Event>, ErrorKind> {
        loop {
            let t = self.src.u8()?;
            match t {
                OP_AUX => {
                    let key = self.read_string()?;
                    let value = self.read_string()?;
                    return Ok(Some(Event::Aux { key, value }));
                }
                OP_RESIZEDB => {
                    let db_size = self.read_length()?;
                    let expires_size = self.read_length()?;
                    return Ok(Some(Event::ResizeDb { db_size, expires_size }));
                }
                OP_EXPIRETIME_MS => {
                    self.expire = Some(i64::from_le_bytes(self.src.array()?));
                }
                OP_EXPIRETIME => {
                    self.expire = Some(i32::from_le_bytes(self.src.array()?) as i64 * 1000);
                }
                OP_SELECTDB => {
                    let db = self.read_length()?;
                    self.db = db;
                    return Ok(Some(Event::SelectDb(db)));
                }
                OP_IDLE => {
                    self.lru = Some(self.read_length()?);
                }
                OP_FREQ => {
                    self.lfu = Some(self.src.u8()?);
                }
                OP_EOF => {
                    let computed = self.src.crc();
                    let mut checksum = None;
                    if self.version >= 5 {
                        let mut b = [0u8; 8];
                        if self.src.read_exact_or_eof(&mut b)? {
                            checksum = Some(u64::from_le_bytes(b));
                        }
                    }
                    self.computed = computed;
                    self.stored = checksum;
                    if let (Some(stored), Some(computed)) = (checksum, computed)
                        && stored != 0
                        && stored != computed
                    {
                        return Err(ErrorKind::ChecksumMismatch { stored, computed });
                    }
                    self.state = State::Done;
                    return Ok(Some(Event::Eof { checksum }));
                }
                OP_MODULE_AUX => {
                    let module_id = self.read_length()?;
                    let (module_name, _) = module_name_from_id(module_id);
                    let when_opcode = self.read_length()?;
                    if when_opcode != 2 {
                        return corrupt(format!("module aux for {module_name}: bad when opcode {when_opcode}"));
                    }
                    let _when = self.read_length()?;
                    self.skip_module_payload()?;
                    return Ok(Some(Event::ModuleAux { module_id, module_name }));
                }
                OP_FUNCTION2 => {
                    let code = self.read_string()?;
                    return Ok(Some(Event::Function { code, name: None, engine: None, desc: None }));
                }
                OP_FUNCTION_PRE_GA => {
                    let name = self.read_string()?;
                    let engine = self.read_string()?;
                    let has_desc = self.read_length()?;
                    let desc = if has_desc != 0 { Some(self.read_string()?) } else { None };
                    let code = self.read_string()?;
                    return Ok(Some(Event::Function { code, name: Some(name), engine: Some(engine), desc }));
                }
                OP_SLOT_INFO => {
                    let slot = self.read_length()?;
                    let slot_size = self.read_length()?;
                    let expires_slot_size = self.read_length()?;
                    return Ok(Some(Event::SlotInfo { slot, slot_size, expires_slot_size }));
                }
                23 if self.flavor == Flavor::Valkey => return self.newer_type(t),
                0..=7 | 9..=25 => {
                    return self.start_value(t).map(Some);
                }
                240..=255 => {
                    return Err(match newer_name(t, true, self.flavor) {
                        Some(name) => ErrorKind::Newer { what: format!("opcode {t}, {name}") },
                        None => ErrorKind::UnknownOpcode(t),
                    });
                }
                _ => return self.newer_type(t),
            }
        }
    }

    /// A value type this parser does not read: the error names it (when a newer server's)
    /// and its key, which follows the type byte.
    fn newer_type(&mut self, t: u8) -> Result<Option<Event>, ErrorKind> {
        let Some(name) = newer_name(t, false, self.flavor) else { return Err(ErrorKind::UnknownType(t)) };
        if let Ok(key) = self.read_string() {
            self.err_key = Some(key);
        }
        Err(ErrorKind::Newer { what: format!("value type {t}, {name},") })
    }

    // ---- primitive readers ----

    fn read_len(&mut self) -> Result<Len, ErrorKind> {
        let b = self.src.u8()?;
        Ok(match b >> 6 {
            0 => Len::Len((b & 0x3f) as u64),
            1 => Len::Len((((b & 0x3f) as u64) << 8) | self.src.u8()? as u64),
            2 => match b {
                0x80 => Len::Len(u32::from_be_bytes(self.src.array()?) as u64),
                0x81 => Len::Len(u64::from_be_bytes(self.src.array()?)),
                _ => return corrupt(format!("unknown length encoding 0x{b:02x}")),
            },
            _ => Len::Enc(b & 0x3f),
        })
    }

    fn read_length(&mut self) -> Result<u64, ErrorKind> {
        match self.read_len()? {
            Len::Len(n) => Ok(n),
            Len::Enc(e) => corrupt(format!("encoded value {e} where a length was expected")),
        }
    }

    fn read_string(&mut self) -> Result<Bytes, ErrorKind> {
        let head = self.read_str_head()?;
        self.read_str_body(head)
    }

    /// The header of an RDB string: how its bytes follow.
    fn read_str_head(&mut self) -> Result<StrHead, ErrorKind> {
        Ok(match self.read_len()? {
            Len::Len(n) => StrHead::Plain(n),
            Len::Enc(3) => {
                let clen = self.read_length()?;
                let len = self.read_length()?;
                StrHead::Lzf { clen, len }
            }
            Len::Enc(e @ 0..=2) => StrHead::Int(e),
            Len::Enc(e) => return corrupt(format!("unknown string encoding {e}")),
        })
    }

    fn read_str_body(&mut self, head: StrHead) -> Result<Bytes, ErrorKind> {
        match head {
            StrHead::Plain(n) => Ok(Bytes::from(self.src.read_vec(n)?)),
            StrHead::Int(e) => self.read_encoded_string(e),
            StrHead::Lzf { clen, len } => {
                let data = self.src.read_vec(clen)?;
                let len = usize::try_from(len).map_err(|_| ErrorKind::Corrupt("LZF length too large".into()))?;
                crate::lzf::decompress(&data, len).map(Bytes::from).map_err(ErrorKind::Corrupt)
            }
        }
    }

    fn read_encoded_string(&mut self, e: u8) -> Result<Bytes, ErrorKind> {
        let v: i64 = match e {
            0 => i8::from_le_bytes(self.src.array()?) as i64,
            1 => i16::from_le_bytes(self.src.array()?) as i64,
            2 => i32::from_le_bytes(self.src.array()?) as i64,
            3 => {
                let clen = self.read_length()?;
                let len = self.read_length()?;
                let data = self.src.read_vec(clen)?;
                let len = usize::try_from(len).map_err(|_| ErrorKind::Corrupt("LZF length too large".into()))?;
                return crate::lzf::decompress(&data, len).map(Bytes::from).map_err(ErrorKind::Corrupt);
            }
            _ => return corrupt(format!("unknown string encoding {e}")),
        };
        Ok(Bytes::from(v.to_string()))
    }

    fn skip_string(&mut self) -> Result<(), ErrorKind> {
        match self.read_len()? {
            Len::Len(n) => self.src.skip(n),
            Len::Enc(0) => self.src.skip(1),
            Len::Enc(1) => self.src.skip(2),
            Len::Enc(2) => self.src.skip(4),
            Len::Enc(3) => {
                let clen = self.read_length()?;
                let _len = self.read_length()?;
                self.src.skip(clen)
            }
            Len::Enc(e) => corrupt(format!("unknown string encoding {e}")),
        }
    }

    /// A string's header: `head` when read already, else the next one.
    fn str_head(&mut self, head: Option<StrHead>) -> Result<StrHead, ErrorKind> {
        match head {
            Some(h) => Ok(h),
            None => self.read_str_head(),
        }
    }

    /// The one string of a blob-encoded value (its header read already, or not).
    fn blob(&mut self, head: Option<StrHead>) -> Result<Bytes, ErrorKind> {
        let head = self.str_head(head)?;
        self.read_str_body(head)
    }

    fn read_ms(&mut self) -> Result<u64, ErrorKind> {
        Ok(u64::from_le_bytes(self.src.array()?))
    }

    fn read_text_double(&mut self) -> Result<f64, ErrorKind> {
        let l = self.src.u8()?;
        Ok(match l {
            255 => f64::NEG_INFINITY,
            254 => f64::INFINITY,
            253 => f64::NAN,
            _ => {
                let b = self.src.read_vec(l as u64)?;
                parse_double(&b)?
            }
        })
    }

    fn read_stream_id(&mut self) -> Result<StreamId, ErrorKind> {
        let ms = self.read_length()?;
        let seq = self.read_length()?;
        Ok(StreamId { ms, seq })
    }

    fn read_raw_stream_id(&mut self) -> Result<StreamId, ErrorKind> {
        let b: [u8; 16] = self.src.array()?;
        Ok(raw_id(&b))
    }

    /// Walk the self-describing module v2 opcodes until EOF.
    fn skip_module_payload(&mut self) -> Result<(), ErrorKind> {
        loop {
            match self.read_length()? {
                0 => return Ok(()),
                1 | 2 => {
                    self.read_length()?;
                }
                3 => self.src.skip(4)?,
                4 => self.src.skip(8)?,
                5 => self.skip_string()?,
                op => return corrupt(format!("unknown module opcode {op}")),
            }
        }
    }

    // ---- values ----

    fn start_value(&mut self, t: u8) -> Result<Event, ErrorKind> {
        self.err_key = None;
        let key = self.read_string()?;
        let ctx = KeyCtx {
            db: self.db,
            key,
            expire_ms: self.expire.take(),
            rdb_type: t,
            lru_idle: self.lru.take(),
            lfu_freq: self.lfu.take(),
        };
        self.src.start_capture(self.opts.raw_limit, &[t]);
        if !self.is_opaque(t) {
            self.err_key = Some(ctx.key.clone());
            return self.start_decoded(ctx, None);
        }
        // A value of an opaque type: its one string is skipped (captured) when it fits
        // `raw_limit`; otherwise it is decoded after all, from the header already read. The
        // key moves into the entry (no copy): an error names it from there.
        match self.skip_opaque() {
            Ok(raw) => Ok(Event::Entry(ctx.into_entry(Value::Opaque, raw))),
            Err(Ok(head)) => {
                self.err_key = Some(ctx.key.clone());
                self.start_decoded(ctx, Some(head))
            }
            Err(Err(e)) => {
                self.err_key = Some(ctx.key);
                Err(e)
            }
        }
    }

    /// Skips (captures) the one string of an opaque value: its raw bytes, or `Err(Ok(head))`
    /// when it does not fit the capture (it is decoded from `head` then).
    #[allow(clippy::type_complexity)]
    fn skip_opaque(&mut self) -> Result<Option<Bytes>, Result<StrHead, ErrorKind>> {
        let head = self.read_str_head().map_err(Err)?;
        let body = match head {
            StrHead::Plain(n) => n,
            StrHead::Int(e) => [1, 2, 4][usize::from(e)],
            StrHead::Lzf { clen, .. } => clen,
        };
        if !self.src.capture_fits(body) {
            return Err(Ok(head));
        }
        self.src.reserve_capture(body);
        self.src.skip(body).map_err(Err)?;
        Ok(self.src.stop_capture().map(Bytes::from))
    }

    /// A value decoded; `head` is its string header when [`Self::start_value`] has read it
    /// already (an opaque type whose value is too big to be captured).
    fn start_decoded(&mut self, ctx: KeyCtx, mut head: Option<StrHead>) -> Result<Event, ErrorKind> {
        let t = ctx.rdb_type;
        let mut pending = VecDeque::new();
        let chunk = self.opts.chunk_bytes.max(1);
        let (kind, acc_kind) = match t {
            0 => {
                let k = match self.str_head(head.take())? {
                    StrHead::Plain(n) if n as u128 <= chunk as u128 => Kind::Buf(Bytes::from(self.src.read_vec(n)?), 0),
                    StrHead::Plain(n) => Kind::StrRaw(n),
                    // A compressed string bigger than a chunk is never whole in memory.
                    StrHead::Lzf { clen, len } => {
                        let len =
                            usize::try_from(len).map_err(|_| ErrorKind::Corrupt("LZF length too large".into()))?;
                        if len <= chunk {
                            let data = self.src.read_vec(clen)?;
                            Kind::Buf(
                                crate::lzf::decompress(&data, len).map(Bytes::from).map_err(ErrorKind::Corrupt)?,
                                0,
                            )
                        } else {
                            Kind::Lzf(Box::new(crate::lzf::LzfStream::new(clen, len)))
                        }
                    }
                    StrHead::Int(e) => Kind::Buf(self.read_encoded_string(e)?, 0),
                };
                (k, AccKind::Str)
            }
            1 => (Kind::Strings(self.read_length()?), AccKind::List),
            2 => (Kind::Strings(self.read_length()?), AccKind::Set),
            3 | 5 => (Kind::ZSet { left: self.read_length()?, binary: t == 5 }, AccKind::ZSet),
            4 => (Kind::Hash(self.read_length()?), AccKind::Hash),
            6 => {
                let id = self.read_length()?;
                let (name, encver) = module_name_from_id(id);
                return Err(ErrorKind::UnsupportedModule(format!(
                    "module \"{name}\" (encver {encver}) stored a pre-GA module value (type 6) that cannot be skipped without the module"
                )));
            }
            7 => {
                let module_id = self.read_length()?;
                let (module_name, encver) = module_name_from_id(module_id);
                self.skip_module_payload()?;
                let raw = self.src.stop_capture().map(Bytes::from);
                self.err_key = None;
                return Ok(Event::Entry(ctx.entry(Part::Whole, Value::Module { module_id, module_name, encver }, raw)));
            }
            9 => {
                let blob = self.blob(head.take())?;
                for (f, v) in encodings::zipmap(&blob)? {
                    pending.push_back(Elem::H(HashField { field: f, value: v, expire_ms: None }));
                }
                (Kind::Blob, AccKind::Hash)
            }
            10 => {
                let blob = self.blob(head.take())?;
                for i in encodings::ziplist(&blob)? {
                    pending.push_back(Elem::B(i.into_bytes()));
                }
                (Kind::Blob, AccKind::List)
            }
            11 => {
                let blob = self.blob(head.take())?;
                for m in encodings::intset(&blob)? {
                    pending.push_back(Elem::B(m));
                }
                (Kind::Blob, AccKind::Set)
            }
            20 => {
                let blob = self.blob(head.take())?;
                for i in encodings::listpack(&blob)? {
                    pending.push_back(Elem::B(i.into_bytes()));
                }
                (Kind::Blob, AccKind::Set)
            }
            12 | 17 => {
                let blob = self.blob(head.take())?;
                let items = if t == 12 { encodings::ziplist(&blob)? } else { encodings::listpack(&blob)? };
                if items.len() % 2 != 0 {
                    return corrupt("zset blob with an odd number of elements");
                }
                let mut it = items.into_iter();
                while let (Some(m), Some(s)) = (it.next(), it.next()) {
                    let score = item_score(&s)?;
                    pending.push_back(Elem::Z(m.into_bytes(), score));
                }
                (Kind::Blob, AccKind::ZSet)
            }
            13 | 16 => {
                let blob = self.blob(head.take())?;
                let items = if t == 13 { encodings::ziplist(&blob)? } else { encodings::listpack(&blob)? };
                if items.len() % 2 != 0 {
                    return corrupt("hash blob with an odd number of elements");
                }
                let mut it = items.into_iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    pending.push_back(Elem::H(HashField {
                        field: f.into_bytes(),
                        value: v.into_bytes(),
                        expire_ms: None,
                    }));
                }
                (Kind::Blob, AccKind::Hash)
            }
            23 | 25 => {
                if t == 25 {
                    let _min_expire = self.read_ms()?;
                }
                let blob = self.blob(head.take())?;
                let items = encodings::listpack(&blob)?;
                if items.len() % 3 != 0 {
                    return corrupt("hash listpack-ex with a partial field triplet");
                }
                let mut it = items.into_iter();
                while let (Some(f), Some(v), Some(ttl)) = (it.next(), it.next(), it.next()) {
                    let ttl = ttl.as_int()?;
                    pending.push_back(Elem::H(HashField {
                        field: f.into_bytes(),
                        value: v.into_bytes(),
                        expire_ms: if ttl == 0 { None } else { Some(ttl) },
                    }));
                }
                (Kind::Blob, AccKind::Hash)
            }
            // Valkey 9's HASH_2 (RDB 80): `len`, then per field its name, its value and its
            // expiry in ms (8 bytes, little-endian; -1: none). Redis's 22 is the 7.4 RC hash.
            22 if self.flavor == Flavor::Valkey => (Kind::Hash2 { left: self.read_length()? }, AccKind::Hash),
            22 | 24 => {
                let min_expire = if t == 24 { Some(self.read_ms()?) } else { None };
                (Kind::HashMeta { left: self.read_length()?, min_expire }, AccKind::Hash)
            }
            14 | 18 => (Kind::Quicklist { left: self.read_length()?, v2: t == 18 }, AccKind::List),
            15 | 19 | 21 => (Kind::Stream(self.read_length()?), AccKind::Stream),
            _ => return Err(ErrorKind::UnknownType(t)),
        };
        self.cur = Some(ValueState { ctx, kind, acc_kind, pending, acc: Vec::new(), acc_bytes: 0, emitted: false });
        self.produce()
    }

    fn next_elem(&mut self, vs: &mut ValueState) -> Result<Option<Elem>, ErrorKind> {
        if let Some(e) = vs.pending.pop_front() {
            return Ok(Some(e));
        }
        let chunk = self.opts.chunk_bytes.max(1);
        match &mut vs.kind {
            Kind::Blob => Ok(None),
            Kind::StrRaw(left) => {
                if *left == 0 {
                    return Ok(None);
                }
                let n = (*left).min(chunk as u64);
                *left -= n;
                Ok(Some(Elem::B(Bytes::from(self.src.read_vec(n)?))))
            }
            Kind::Lzf(s) => {
                let src = &mut self.src;
                let mut failed = None;
                let part = s.next_part(chunk, |n| {
                    src.read_vec(n).map_err(|e| {
                        let msg = e.to_string();
                        failed = Some(e);
                        msg
                    })
                });
                match (part, failed) {
                    (_, Some(e)) => Err(e),
                    (Ok(p), None) => Ok(p.map(|p| Elem::B(Bytes::from(p)))),
                    (Err(e), None) => Err(ErrorKind::Corrupt(e)),
                }
            }
            Kind::Buf(b, pos) => {
                if *pos >= b.len() {
                    return Ok(None);
                }
                let end = b.len().min(pos.saturating_add(chunk));
                let piece = b.slice(*pos..end);
                *pos = end;
                Ok(Some(Elem::B(piece)))
            }
            Kind::Strings(left) => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                Ok(Some(Elem::B(self.read_string()?)))
            }
            Kind::ZSet { left, binary } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                let binary = *binary;
                let m = self.read_string()?;
                let score = if binary { f64::from_le_bytes(self.src.array()?) } else { self.read_text_double()? };
                Ok(Some(Elem::Z(m, score)))
            }
            Kind::Hash(left) => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                let field = self.read_string()?;
                let value = self.read_string()?;
                Ok(Some(Elem::H(HashField { field, value, expire_ms: None })))
            }
            Kind::HashMeta { left, min_expire } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                let min_expire = *min_expire;
                let ttl = self.read_length()?;
                let expire = if ttl == 0 {
                    None
                } else {
                    let abs = match min_expire {
                        Some(m) => ttl
                            .checked_add(m)
                            .and_then(|x| x.checked_sub(1))
                            .ok_or_else(|| ErrorKind::Corrupt("invalid field TTL".into()))?,
                        None => ttl,
                    };
                    Some(i64::try_from(abs).map_err(|_| ErrorKind::Corrupt("invalid field TTL".into()))?)
                };
                let field = self.read_string()?;
                let value = self.read_string()?;
                Ok(Some(Elem::H(HashField { field, value, expire_ms: expire })))
            }
            Kind::Hash2 { left } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                let field = self.read_string()?;
                let value = self.read_string()?;
                let expire = i64::from_le_bytes(self.src.array()?);
                Ok(Some(Elem::H(HashField { field, value, expire_ms: (expire != -1).then_some(expire) })))
            }
            Kind::Quicklist { left, v2 } => {
                let v2 = *v2;
                while *left > 0 {
                    *left -= 1;
                    let container = if v2 { self.read_length()? } else { 2 };
                    let blob = self.read_string()?;
                    if blob.is_empty() {
                        return corrupt("empty quicklist node");
                    }
                    match container {
                        1 => return Ok(Some(Elem::B(blob))),
                        2 => {
                            let items = if v2 { encodings::listpack(&blob)? } else { encodings::ziplist(&blob)? };
                            vs.pending.extend(items.into_iter().map(|i| Elem::B(i.into_bytes())));
                            if let Some(e) = vs.pending.pop_front() {
                                return Ok(Some(e));
                            }
                        }
                        c => return corrupt(format!("unknown quicklist container {c}")),
                    }
                }
                Ok(None)
            }
            Kind::Stream(left) => {
                while *left > 0 {
                    *left -= 1;
                    let nodekey = self.read_string()?;
                    if nodekey.len() != 16 {
                        return corrupt("stream node key is not a 128-bit ID");
                    }
                    let master = raw_id(&nodekey);
                    let blob = self.read_string()?;
                    let items = encodings::listpack(&blob)?;
                    if items.is_empty() {
                        return corrupt("empty listpack inside stream");
                    }
                    decode_stream_node(master, &items, &mut vs.pending)?;
                    if let Some(e) = vs.pending.pop_front() {
                        return Ok(Some(e));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Read elements of the current value until a part is full or the value ends.
    fn produce(&mut self) -> Result<Event, ErrorKind> {
        let Some(mut vs) = self.cur.take() else {
            return corrupt("internal: no value in progress");
        };
        let chunk = self.opts.chunk_bytes.max(1);
        loop {
            if vs.acc_bytes >= chunk && !vs.exhausted() {
                let ev = self.emit(&mut vs, false, None)?;
                self.cur = Some(vs);
                return Ok(ev);
            }
            match self.next_elem(&mut vs)? {
                Some(e) => {
                    vs.acc_bytes = vs.acc_bytes.saturating_add(e.size());
                    vs.acc.push(e);
                }
                None => break,
            }
        }
        let meta = if vs.acc_kind == AccKind::Stream { Some(self.read_stream_meta(vs.ctx.rdb_type)?) } else { None };
        let ev = self.emit(&mut vs, true, meta)?;
        self.err_key = None;
        Ok(ev)
    }

    fn emit(&mut self, vs: &mut ValueState, last: bool, meta: Option<Stream>) -> Result<Event, ErrorKind> {
        let part = match (vs.emitted, last) {
            (false, true) => Part::Whole,
            (false, false) => Part::First,
            (true, false) => Part::Middle,
            (true, true) => Part::Last,
        };
        vs.emitted = true;
        let captured = self.src.stop_capture();
        let raw = if part == Part::Whole { captured.map(Bytes::from) } else { None };
        let elems = std::mem::take(&mut vs.acc);
        vs.acc_bytes = 0;
        let value = build_value(vs.acc_kind, elems, meta)?;
        Ok(Event::Entry(vs.ctx.entry(part, value, raw)))
    }

    fn read_stream_meta(&mut self, t: u8) -> Result<Stream, ErrorKind> {
        let mut s = Stream { length: self.read_length()?, last_id: self.read_stream_id()?, ..Stream::default() };
        if t >= 19 {
            s.first_id = Some(self.read_stream_id()?);
            s.max_deleted_id = Some(self.read_stream_id()?);
            s.entries_added = Some(self.read_length()?);
        }
        let ngroups = self.read_length()?;
        for _ in 0..ngroups {
            let name = self.read_string()?;
            let last_delivered = self.read_stream_id()?;
            let entries_read = if t >= 19 { Some(self.read_length()? as i64) } else { None };
            let npel = self.read_length()?;
            let mut pel = Vec::with_capacity((npel as usize).min(PREALLOC_CAP));
            for _ in 0..npel {
                let id = self.read_raw_stream_id()?;
                let delivery_time_ms = self.read_ms()?;
                let delivery_count = self.read_length()?;
                pel.push(PendingEntry { id, consumer: Bytes::new(), delivery_time_ms, delivery_count });
            }
            let ncons = self.read_length()?;
            let mut consumers = Vec::with_capacity((ncons as usize).min(PREALLOC_CAP));
            let mut owner: HashMap<StreamId, Bytes> = HashMap::new();
            for _ in 0..ncons {
                let cname = self.read_string()?;
                let seen_time_ms = self.read_ms()?;
                let active_time_ms = if t >= 21 { Some(self.read_ms()?) } else { None };
                let n = self.read_length()?;
                let mut cpel = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
                for _ in 0..n {
                    let id = self.read_raw_stream_id()?;
                    owner.insert(id, cname.clone());
                    cpel.push(id);
                }
                consumers.push(Consumer { name: cname, seen_time_ms, active_time_ms, pel: cpel });
            }
            for p in pel.iter_mut() {
                match owner.get(&p.id) {
                    Some(c) => p.consumer = c.clone(),
                    None => {
                        return corrupt(format!("stream group PEL entry {} has no consumer", p.id));
                    }
                }
            }
            s.groups.push(StreamGroup { name, last_delivered, entries_read, pel, consumers });
        }
        Ok(s)
    }
}

fn raw_id(b: &[u8]) -> StreamId {
    let mut ms = [0u8; 8];
    let mut seq = [0u8; 8];
    ms.copy_from_slice(&b[0..8]);
    seq.copy_from_slice(&b[8..16]);
    StreamId { ms: u64::from_be_bytes(ms), seq: u64::from_be_bytes(seq) }
}

fn parse_double(b: &[u8]) -> Result<f64, ErrorKind> {
    let s = std::str::from_utf8(b).map_err(|_| ErrorKind::Corrupt("invalid double text".into()))?;
    let t = s.trim();
    match t {
        "inf" | "+inf" | "infinity" | "+infinity" => return Ok(f64::INFINITY),
        "-inf" | "-infinity" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    t.parse::<f64>().map_err(|_| ErrorKind::Corrupt(format!("invalid double text {t:?}")))
}

fn item_score(i: &Item) -> Result<f64, ErrorKind> {
    match i {
        Item::Int(v) => Ok(*v as f64),
        Item::Str(b) => parse_double(b),
    }
}

fn decode_stream_node(master: StreamId, items: &[Item], out: &mut VecDeque<Elem>) -> Result<(), ErrorKind> {
    let get = |i: usize| -> Result<&Item, ErrorKind> {
        items.get(i).ok_or_else(|| ErrorKind::Corrupt("stream listpack entry truncated".into()))
    };
    let count_arg = |i: usize| -> Result<usize, ErrorKind> {
        let v = get(i)?.as_int()?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= items.len())
            .ok_or_else(|| ErrorKind::Corrupt("bad count in stream listpack".into()))
    };
    let mfc = count_arg(2)?;
    let master_fields: Vec<Bytes> =
        (3..3 + mfc).map(|i| get(i).map(|x| x.clone().into_bytes())).collect::<Result<_, _>>()?;
    // master terminator
    get(3 + mfc)?;
    let mut i = 4 + mfc;
    while i < items.len() {
        let flags = get(i)?.as_int()?;
        let ms_diff = get(i + 1)?.as_int()?;
        let seq_diff = get(i + 2)?.as_int()?;
        i += 3;
        let mut fields = Vec::new();
        if flags & 2 != 0 {
            for f in &master_fields {
                fields.push((f.clone(), get(i)?.clone().into_bytes()));
                i += 1;
            }
        } else {
            let nf = count_arg(i)?;
            i += 1;
            for _ in 0..nf {
                let f = get(i)?.clone().into_bytes();
                let v = get(i + 1)?.clone().into_bytes();
                fields.push((f, v));
                i += 2;
            }
        }
        get(i)?; // lp-count
        i += 1;
        if flags & 1 == 0 {
            out.push_back(Elem::S(StreamEntry {
                id: StreamId {
                    ms: master.ms.wrapping_add(ms_diff as u64),
                    seq: master.seq.wrapping_add(seq_diff as u64),
                },
                fields,
            }));
        }
    }
    Ok(())
}

fn build_value(kind: AccKind, elems: Vec<Elem>, meta: Option<Stream>) -> Result<Value, ErrorKind> {
    fn bytes_of(elems: Vec<Elem>) -> Result<Vec<Bytes>, ErrorKind> {
        elems
            .into_iter()
            .map(|e| match e {
                Elem::B(b) => Ok(b),
                _ => corrupt("internal: element kind mismatch"),
            })
            .collect()
    }
    Ok(match kind {
        AccKind::Str => {
            let mut parts = bytes_of(elems)?;
            if parts.len() == 1 {
                Value::String(parts.pop().unwrap_or_default())
            } else {
                Value::String(Bytes::from(parts.concat()))
            }
        }
        AccKind::List => Value::List(bytes_of(elems)?),
        AccKind::Set => Value::Set(bytes_of(elems)?),
        AccKind::ZSet => Value::ZSet(
            elems
                .into_iter()
                .map(|e| match e {
                    Elem::Z(m, s) => Ok((m, s)),
                    _ => corrupt("internal: element kind mismatch"),
                })
                .collect::<Result<_, _>>()?,
        ),
        AccKind::Hash => Value::Hash(
            elems
                .into_iter()
                .map(|e| match e {
                    Elem::H(h) => Ok(h),
                    _ => corrupt("internal: element kind mismatch"),
                })
                .collect::<Result<_, _>>()?,
        ),
        AccKind::Stream => {
            let mut s = meta.unwrap_or_default();
            s.entries = elems
                .into_iter()
                .map(|e| match e {
                    Elem::S(x) => Ok(x),
                    _ => corrupt("internal: element kind mismatch"),
                })
                .collect::<Result<_, _>>()?;
            Value::Stream(Box::new(s))
        }
    })
}

/// The name of a value type or opcode (`opcode`) a newer server writes, with the RDB and
/// server versions that bring it; `None` for a byte no server is known to write. Valkey 9
/// gives 22, 23 and 243 meanings of its own, so the file's magic decides.
fn newer_name(b: u8, opcode: bool, flavor: Flavor) -> Option<&'static str> {
    Some(match (flavor, opcode, b) {
        (Flavor::Valkey, false, 23) => "PATH_HASH (RDB 81, Valkey 9.2+)",
        (Flavor::Valkey, true, 243) => {
            "SLOT_IMPORT (RDB 80, Valkey 9+: the source cluster was importing slots when it saved; copy after the import ends)"
        }
        (Flavor::Valkey, true, 242) => "UPDATE (Valkey 9+: forkless save)",
        (Flavor::Redis, false, 26) => "a stream with idempotent-producer data (RDB 13, Redis 8.6+)",
        (Flavor::Redis, false, 27) => "a stream with NACKs (RDB 14, Redis 8.8+)",
        (Flavor::Redis, false, 28) => "an array (RDB 14, Redis 8.8+)",
        (Flavor::Redis, false, 29..=32) => "a hash template type (RDB 15, Redis 8.10+)",
        (Flavor::Redis, true, 243) => "KEY_META, module metadata of a key (RDB 13, Redis 8.6+)",
        _ => return None,
    })
}
