//! Truncated and bit-flipped fixtures: the parser must return Ok or Err,
//! never panic, and finish quickly.

mod common;

use common::*;
use ferry_rdb::{Event, Parser, ParserOptions};
use std::time::{Duration, Instant};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Parse to the end or the first error; returns whether it ended with an error.
fn run(data: &[u8], opts: &ParserOptions) -> bool {
    let mut p = Parser::new(data, opts.clone());
    let mut events = 0u64;
    loop {
        match p.next_event() {
            Ok(Some(ev)) => {
                events += 1;
                if let Event::Eof { .. } = ev {
                    // next call must be None
                    assert!(matches!(p.next_event(), Ok(None)));
                    return false;
                }
                assert!(events < 50_000_000, "runaway event stream");
            }
            Ok(None) => return false,
            Err(e) => {
                let s = e.to_string();
                assert!(s.starts_with("rdb: ") && !s.contains('\n'), "bad message {s:?}");
                assert!(e.offset <= data.len() as u64);
                return true;
            }
        }
    }
}

fn small_opts() -> ParserOptions {
    ParserOptions { chunk_bytes: 256, raw_limit: 1024, ..ParserOptions::default() }
}

#[test]
fn truncation_never_panics() {
    let slow = Duration::from_secs(10);
    for fx in fixtures() {
        let n = fx.bytes.len();
        let big = n > 512 * 1024;
        let spaced = if big { 50 } else { 200 };
        let mut cuts: Vec<usize> = (0..spaced).map(|i| i * n / spaced).collect();
        cuts.extend(0..n.min(64));
        let tail = if big { 24 } else { 64 };
        cuts.extend(n.saturating_sub(tail)..n);
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts {
            let t = Instant::now();
            let opts = if cut % 2 == 0 { ParserOptions::default() } else { small_opts() };
            let failed = run(&fx.bytes[..cut], &opts);
            // A cut inside the RDB part must be reported (the preamble AOF and
            // files with trailing junk end earlier than the file).
            // A v5+ file cut exactly after the EOF opcode has no trailer:
            // accepted as "checksum absent" (Eof { checksum: None }).
            let trailer_absent = cut + 8 == n && fx.bytes[5..9] >= b"0005"[..];
            if cut < n && !trailer_absent && fx.special.iter().all(|s| s != "trailing-bytes-after-eof") {
                assert!(failed, "{}: truncation at {cut} of {n} not reported", fx.file);
            }
            assert!(t.elapsed() < slow, "{}: cut {cut} too slow", fx.file);
        }
    }
}

#[test]
fn bit_flips_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let slow = Duration::from_secs(10);
    for fx in fixtures() {
        let n = fx.bytes.len();
        if n == 0 {
            continue;
        }
        let rounds = if n > 512 * 1024 { 6 } else { 100 };
        for round in 0..rounds {
            let mut data = fx.bytes.clone();
            let flips = 1 + (rng.next() % 4) as usize;
            for _ in 0..flips {
                let pos = (rng.next() % n as u64) as usize;
                data[pos] ^= 1 << (rng.next() % 8);
            }
            let t = Instant::now();
            let mut opts = if round % 2 == 0 { ParserOptions::default() } else { small_opts() };
            opts.verify_checksum = round % 3 != 0;
            run(&data, &opts);
            assert!(t.elapsed() < slow, "{}: flip round {round} too slow", fx.file);
        }
    }
}

#[test]
fn absurd_lengths_are_errors_not_allocations() {
    // REDIS0009, then a string key of declared length 2^62 (64-bit length).
    let mut data = b"REDIS0009".to_vec();
    data.push(0); // type string
    data.push(0x81);
    data.extend_from_slice(&(1u64 << 62).to_be_bytes());
    data.extend_from_slice(b"abc");
    let mut p = Parser::new(&data[..], ParserOptions::default());
    assert!(matches!(p.next_event(), Ok(Some(Event::Header { .. }))));
    let e = p.next_event().unwrap_err();
    assert!(matches!(e.kind, ferry_rdb::ErrorKind::Truncated), "{e}");

    // A list claiming 2^60 elements, LZF string claiming 2^40 output bytes.
    let mut data = b"REDIS0009".to_vec();
    data.extend_from_slice(&[1, 1, b'k', 0x81]);
    data.extend_from_slice(&(1u64 << 60).to_be_bytes());
    data.extend_from_slice(&[0xC3, 0x02, 0x81]);
    data.extend_from_slice(&(1u64 << 40).to_be_bytes());
    data.extend_from_slice(&[0x00, b'a']);
    let mut p = Parser::new(&data[..], ParserOptions::default());
    p.next_event().unwrap();
    let e = p.next_event().unwrap_err();
    assert_eq!(e.key.as_deref(), Some(&b"k"[..]));
    assert!(e.to_string().contains("while reading key \"k\""), "{e}");
}

#[test]
fn header_errors() {
    let e = Parser::new(&b"RODIS0009\xff"[..], ParserOptions::default()).next_event().unwrap_err();
    assert!(matches!(e.kind, ferry_rdb::ErrorKind::BadMagic));
    let e = Parser::new(&b"REDIS0013\xff"[..], ParserOptions::default()).next_event().unwrap_err();
    assert!(matches!(e.kind, ferry_rdb::ErrorKind::UnsupportedVersion(13)));
    let mut p =
        Parser::new(&b"REDIS0013\xff"[..], ParserOptions { allow_newer_version: true, ..ParserOptions::default() });
    assert!(matches!(p.next_event(), Ok(Some(Event::Header { version: 13, .. }))));
    assert!(matches!(p.next_event(), Ok(Some(Event::Eof { checksum: None }))));
    let mut p =
        Parser::new(&b"VALKEY081\x17\x01p"[..], ParserOptions { allow_newer_version: true, ..Default::default() });
    assert!(matches!(p.next_event(), Ok(Some(Event::Header { version: 81, flavor: ferry_rdb::Flavor::Valkey }))));
    let e = p.next_event().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("PATH_HASH") && msg.contains("Valkey 9.2") && msg.contains("key \"p\""), "{msg}");
    let e = Parser::new(&b"REDIS"[..], ParserOptions::default()).next_event().unwrap_err();
    assert!(matches!(e.kind, ferry_rdb::ErrorKind::Truncated));
}

#[test]
fn checksum_mismatch_detected() {
    let fx = fixtures().into_iter().find(|f| f.file == "redis/hash-ziplist.rdb").unwrap();
    let mut data = fx.bytes.clone();
    let n = data.len();
    data[n - 1] ^= 0x40;
    let parsed = parse_all(&data, ParserOptions::default());
    let e = parsed.error.expect("checksum mismatch must fail");
    assert!(matches!(e.kind, ferry_rdb::ErrorKind::ChecksumMismatch { .. }), "{e}");
    let parsed = parse_all(&data, ParserOptions { verify_checksum: false, ..ParserOptions::default() });
    assert!(parsed.error.is_none());
}

/// Newer servers' formats: Valkey 9's HASH_2 is read (a file built by hand from the layout
/// of valkey `src/rdb.c` `rdbSaveObject`: no Valkey 9 server here to write one); types and
/// opcodes of Redis 8.6+ are named in the error with their key and offset, by the magic
/// (243 is KEY_META in a Redis file, SLOT_IMPORT in a Valkey one).
#[test]
fn newer_formats_are_read_or_named() {
    // Hand-built: VALKEY080, HASH_2 "h" {a: "1" no TTL, b: "2" TTL 1800000000000 ms}, EOF.
    let mut f = b"VALKEY080\x16\x01h\x02\x01a\x011".to_vec();
    f.extend_from_slice(&(-1i64).to_le_bytes());
    f.extend_from_slice(b"\x01b\x012");
    f.extend_from_slice(&1_800_000_000_000i64.to_le_bytes());
    f.push(0xff);
    let mut p = Parser::new(&f[..], ParserOptions::default());
    p.next_event().unwrap();
    let Some(Event::Entry(e)) = p.next_event().unwrap() else { panic!("no entry") };
    assert_eq!(&e.key[..], b"h");
    let ferry_rdb::Value::Hash(fields) = &e.value else { panic!("{:?}", e.value) };
    let got: Vec<(&[u8], &[u8], Option<i64>)> =
        fields.iter().map(|f| (&f.field[..], &f.value[..], f.expire_ms)).collect();
    assert_eq!(got, vec![(&b"a"[..], &b"1"[..], None), (&b"b"[..], &b"2"[..], Some(1_800_000_000_000))]);
    assert_eq!(e.raw.as_deref().map(|r| r[0]), Some(22));
    assert!(matches!(p.next_event(), Ok(Some(Event::Eof { .. }))));

    let newer = ParserOptions { allow_newer_version: true, ..Default::default() };
    let e = Parser::new(&b"REDIS0014\x1c\x03arr\x00"[..], newer.clone()).skip_header_then_error();
    let msg = e.to_string();
    assert!(
        msg.contains("an array (RDB 14, Redis 8.8+)") && msg.contains("key \"arr\"") && msg.contains("at byte"),
        "{msg}"
    );
    assert!(msg.contains("block_keys") && !msg.contains('\n'), "{msg}");
    let e = Parser::new(&b"REDIS0013\xf3\x00"[..], newer.clone()).skip_header_then_error();
    assert!(e.to_string().contains("KEY_META"), "{e}");
    let e = Parser::new(&b"VALKEY080\xf3"[..], newer).skip_header_then_error();
    assert!(e.to_string().contains("SLOT_IMPORT"), "{e}");
    let e = Parser::new(&b"REDIS0013\xff"[..], ParserOptions::default()).next_event().unwrap_err();
    assert!(e.to_string().contains("allow_newer_rdb"), "{e}");
}

trait HeaderThenError {
    fn skip_header_then_error(self) -> ferry_rdb::RdbError;
}

impl<R: std::io::Read> HeaderThenError for Parser<R> {
    fn skip_header_then_error(mut self) -> ferry_rdb::RdbError {
        assert!(matches!(self.next_event(), Ok(Some(Event::Header { .. }))));
        self.next_event().unwrap_err()
    }
}
