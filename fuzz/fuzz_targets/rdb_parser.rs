//! Arbitrary bytes into the streaming RDB parser (`ferry_rdb::Parser`).
//!
//! The whole input is the RDB file (so real dumps are valid seeds). The parser
//! settings and the way the bytes are handed to it come from the LAST two bytes
//! of the input: in a real dump those are the tail of the CRC-64 trailer, so
//! the fuzzer can vary them and still parse every key (only the final checksum
//! check notices).
//!
//! Every input is parsed twice in lock-step with the same settings: once from a
//! plain `&[u8]` (64 KiB reads) and once through a reader that splits the input
//! at a position taken from the selector and then hands it out in small,
//! irregular pieces (with `Interrupted` errors mixed in). Both must produce the
//! same events and the same error at the same offset. Each event is checked
//! (part sequences, `raw` = the value's bytes, offsets), whole entries are
//! rendered with `entry_to_json`, and `inspect` must count the same keys.
//! With one bit of the input, both run in the decoder's mode (`set_opaque_types`):
//! values are delimited, not decoded, and their `raw` must still be their bytes
//! (chosen by the lowest bit of the second-to-last byte).
//! Errors are fine; panics, hangs, huge allocations and differences between
//! the two runs are bugs.

#![no_main]

use std::io::{self, Read};

use ferry_rdb::{Event, Parser, ParserOptions, Part, Value};
use libfuzzer_sys::fuzz_target;

/// Hands out `data` in pieces: first `first` bytes, then sizes cycling through `sizes`;
/// when `interrupt` is set, every fourth call fails with `Interrupted` (the parser must retry).
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    first: usize,
    sizes: &'static [usize],
    calls: usize,
    interrupt: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt && self.calls.is_multiple_of(4) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let want = if self.pos == 0 && self.first > 0 { self.first } else { self.sizes[self.calls % self.sizes.len()] };
        let n = want.max(1).min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn options(sel: u8, input_len: usize) -> ParserOptions {
    ParserOptions {
        allow_newer_version: sel & 1 != 0,
        verify_checksum: sel & 2 != 0,
        // 0 = never capture; tiny limits make most captures overflow and be dropped.
        raw_limit: [0, 1, 40, 64 << 20][usize::from((sel >> 2) & 3)],
        // Small part sizes split most values into First/Middle/Last parts. Scaled
        // with the input so a 1 MiB dump is not cut into a million 1-byte events
        // (that is linear, but too slow to fuzz).
        chunk_bytes: [1, 7, 100, 4 << 20][usize::from((sel >> 4) & 3)].max(input_len / 4096),
    }
}

/// Event equality; scores compare by bits (NaN is a valid score).
fn same_event(a: &Event, b: &Event) -> bool {
    match (a, b) {
        (Event::Entry(x), Event::Entry(y)) => {
            x.db == y.db
                && x.key == y.key
                && x.expire_ms == y.expire_ms
                && x.rdb_type == y.rdb_type
                && x.lru_idle == y.lru_idle
                && x.lfu_freq == y.lfu_freq
                && x.part == y.part
                && x.raw == y.raw
                && same_value(&x.value, &y.value)
        }
        (Event::Header { version: v1, flavor: f1 }, Event::Header { version: v2, flavor: f2 }) => v1 == v2 && f1 == f2,
        (Event::Aux { key: k1, value: v1 }, Event::Aux { key: k2, value: v2 }) => k1 == k2 && v1 == v2,
        (Event::SelectDb(a), Event::SelectDb(b)) => a == b,
        (Event::ResizeDb { db_size: a1, expires_size: a2 }, Event::ResizeDb { db_size: b1, expires_size: b2 }) => {
            a1 == b1 && a2 == b2
        }
        (
            Event::SlotInfo { slot: a1, slot_size: a2, expires_slot_size: a3 },
            Event::SlotInfo { slot: b1, slot_size: b2, expires_slot_size: b3 },
        ) => a1 == b1 && a2 == b2 && a3 == b3,
        (Event::ModuleAux { module_id: a1, module_name: a2 }, Event::ModuleAux { module_id: b1, module_name: b2 }) => {
            a1 == b1 && a2 == b2
        }
        (
            Event::Function { code: a1, name: a2, engine: a3, desc: a4 },
            Event::Function { code: b1, name: b2, engine: b3, desc: b4 },
        ) => a1 == b1 && a2 == b2 && a3 == b3 && a4 == b4,
        (Event::Eof { checksum: a }, Event::Eof { checksum: b }) => a == b,
        _ => false,
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::ZSet(x), Value::ZSet(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((m1, s1), (m2, s2))| m1 == m2 && s1.to_bits() == s2.to_bits())
        }
        _ => a == b,
    }
}

fn chunked(data: &[u8], sel: u8, cut: u8) -> Chunked<'_> {
    const SIZES: [&[usize]; 4] = [&[usize::MAX], &[1], &[1, 2, 13, 64, 7, 4096, 3], &[5, 1, 9000, 2]];
    Chunked {
        data,
        pos: 0,
        // Split the input at a position proportional to `cut` (0 = no special first read).
        first: data.len() * usize::from(cut) / 256,
        sizes: SIZES[usize::from(sel >> 6)],
        calls: 0,
        interrupt: sel >> 6 == 3,
    }
}

/// Checks that hold for any event sequence of one parser.
struct Invariants<'a> {
    data: &'a [u8],
    opts: ParserOptions,
    events: u64,
    last_offset: u64,
    /// Key of a value emitted in parts and not finished yet.
    open: Option<ferry_rdb::Bytes>,
    version: u32,
    /// Whole/Last entries seen (what `inspect` counts as keys).
    keys: u64,
    /// The parse ended with an error.
    failed: bool,
}

impl Invariants<'_> {
    fn event(&mut self, ev: &Event, offset: u64) {
        assert!(offset >= self.last_offset, "offset went back: {} -> {offset}", self.last_offset);
        assert!(offset <= self.data.len() as u64, "offset {offset} past the input ({})", self.data.len());
        self.last_offset = offset;
        if let Event::Header { version, .. } = ev {
            assert_eq!(self.events, 0, "Header is not the first event");
            self.version = *version;
        } else {
            assert!(self.events > 0, "first event is not Header: {ev:?}");
        }
        self.events += 1;
        match ev {
            Event::Entry(e) => {
                if let Some(open) = &self.open {
                    assert_eq!(&e.key, open, "parts of one value interleaved with another key");
                    assert!(matches!(e.part, Part::Middle | Part::Last), "expected Middle/Last, got {:?}", e.part);
                } else {
                    assert!(matches!(e.part, Part::Whole | Part::First), "expected Whole/First, got {:?}", e.part);
                }
                if matches!(e.part, Part::Whole | Part::Last) {
                    self.keys += 1;
                }
                self.open = match e.part {
                    Part::First | Part::Middle => Some(e.key.clone()),
                    Part::Whole | Part::Last => None,
                };
                if let (Part::First | Part::Middle, Value::String(s)) = (e.part, &e.value) {
                    assert!(s.len() >= self.opts.chunk_bytes.max(1), "short non-final string part");
                }
                if let Some(raw) = &e.raw {
                    assert_eq!(e.part, Part::Whole, "raw on a partial value");
                    assert!(raw.len() <= self.opts.raw_limit, "raw longer than raw_limit");
                    assert_eq!(raw.first(), Some(&e.rdb_type), "raw does not start with the type byte");
                    // The body is exactly the bytes just consumed.
                    let end = offset as usize;
                    let body = raw.len() - 1;
                    assert!(body <= end, "raw longer than the input consumed");
                    assert_eq!(&raw[1..], &self.data[end - body..end], "raw is not the value's bytes");
                    let payload = ferry_rdb::dump_payload(raw, self.version as u16);
                    assert_eq!(payload.len(), raw.len() + 10);
                }
                if matches!(e.part, Part::Whole) {
                    let _ = ferry_rdb::entry_to_json(e);
                }
            }
            _ => assert!(self.open.is_none(), "value in parts not finished before {ev:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let n = data.len();
    let sel = if n >= 1 { data[n - 1] } else { 0 };
    let cut = if n >= 2 { data[n - 2] } else { 0 };
    let opts = options(sel, n);
    let opaque = cut & 1 != 0;

    let mut a = Parser::new(data, opts.clone());
    let mut b = Parser::new(chunked(data, sel, cut), opts.clone());
    let mut inv = Invariants { data, opts, events: 0, last_offset: 0, open: None, version: 0, keys: 0, failed: false };
    loop {
        let ra = a.next_event();
        let rb = b.next_event();
        assert_eq!(a.offset(), b.offset(), "offsets differ between slice and chunked reader");
        match (ra, rb) {
            (Ok(Some(ea)), Ok(Some(eb))) => {
                // The decoder's mode (values of the types it would send raw are delimited, not
                // decoded) on both readers when the split byte says so.
                if opaque && matches!(ea, Event::Header { .. }) {
                    a.set_opaque_types(|_| true);
                    b.set_opaque_types(|_| true);
                }
                inv.event(&ea, a.offset());
                assert!(same_event(&ea, &eb), "events differ between slice and chunked reader:\n{ea:?}\n{eb:?}");
            }
            (Ok(None), Ok(None)) => {
                assert!(inv.open.is_none(), "input ended with a value in parts unfinished");
                break;
            }
            (Err(ea), Err(eb)) => {
                assert_eq!(format!("{ea:?}"), format!("{eb:?}"), "errors differ between slice and chunked reader");
                let _ = ea.to_string();
                inv.failed = true;
                break;
            }
            (ra, rb) => panic!("results differ between slice and chunked reader:\n{ra:?}\n{rb:?}"),
        }
    }
    // Finished (EOF or error): the parser must stay finished.
    assert!(matches!(a.next_event(), Ok(None)), "parser produced more after finishing");
    let _ = (a.checksum_ok(), a.checksum_verified(), a.computed_checksum(), a.rdb_version(), a.flavor());

    // `inspect` (ferry-decoder inspect): the same parse rendered as JSON lines.
    let chunked_input = chunked(data, sel, cut);
    match ferry_rdb::inspect(chunked_input, &mut io::sink(), inv.opts.clone()) {
        Ok(keys) => assert_eq!(keys, inv.keys, "inspect counted a different number of keys"),
        Err(e) => {
            // A blob the decoder's mode only delimited may hold what decoding refuses.
            assert!(inv.failed || opaque, "inspect failed where the parser did not: {e}");
            let _ = e.to_string();
        }
    }
});
