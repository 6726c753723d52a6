//! Parts, raw capture and DUMP payloads.

mod common;

use common::*;
use ferry_rdb::{Bytes, Event, Parser, ParserOptions, Part, Value, crc64, dump_payload, entry_to_json};

/// What a part costs by the parser's measure: element bytes plus `ELEM_OVERHEAD` each
/// (strings are cut in slices of bytes).
fn elem_bytes(v: &Value) -> usize {
    const O: usize = ferry_rdb::ELEM_OVERHEAD;
    match v {
        Value::String(b) => b.len(),
        Value::List(x) | Value::Set(x) => x.iter().map(|b| O + b.len()).sum(),
        Value::ZSet(x) => x.iter().map(|(m, _)| O + m.len() + 8).sum(),
        Value::Hash(x) => {
            x.iter().map(|h| O + h.field.len() + h.value.len() + if h.expire_ms.is_some() { 8 } else { 0 }).sum()
        }
        Value::Stream(s) => {
            s.entries.iter().map(|e| O + 16 + e.fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>()).sum()
        }
        Value::Module { .. } | Value::Opaque => 0,
    }
}

#[test]
fn parts_concatenate_to_whole_values() {
    let mut total_parts = 0;
    let mut split_values = 0;
    for fx in fixtures() {
        let whole = parse_all(&fx.bytes, ParserOptions::default());
        // chunk 1 (every element its own part) only on the smaller files.
        let chunks: &[usize] = if fx.bytes.len() < 512 * 1024 { &[300, 64, 1] } else { &[300] };
        for &chunk in chunks {
            let opts = ParserOptions { chunk_bytes: chunk, ..ParserOptions::default() };
            // Check part sizes on the raw event stream.
            let mut p = Parser::new(&fx.bytes[..], opts.clone());
            loop {
                match p.next_event() {
                    Ok(Some(Event::Entry(e))) => {
                        if matches!(e.part, Part::First | Part::Middle) {
                            assert!(elem_bytes(&e.value) >= chunk, "{}: part smaller than chunk_bytes", fx.file);
                        }
                        if e.part == Part::First {
                            split_values += 1;
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let parts = parse_all(&fx.bytes, opts);
            total_parts += parts.parts;
            assert_eq!(
                whole.error.as_ref().map(|e| e.to_string()),
                parts.error.as_ref().map(|e| e.to_string()),
                "{}: error differs with chunk {chunk}",
                fx.file
            );
            assert_eq!(whole.entries.len(), parts.entries.len(), "{}", fx.file);
            for (a, b) in whole.entries.iter().zip(&parts.entries) {
                assert_eq!(a.key, b.key, "{}", fx.file);
                assert!(
                    json_eq(&entry_to_json(a), &entry_to_json(b)),
                    "{}: key {:?} differs when chunked at {chunk}",
                    fx.file,
                    a.key
                );
            }
        }
    }
    assert!(split_values > 100, "chunking was never exercised");
    assert!(total_parts > 0);
}

#[test]
fn dump_payload_matches_redis() {
    // Redis documentation: DUMP of the integer string 10 (RDB version 9) is
    // "\x00\xc0\n\t\x00\xbem\x06\x89Z(\x00\n".
    let p = dump_payload(&[0x00, 0xc0, 0x0a], 9);
    assert_eq!(&p[..], b"\x00\xc0\n\t\x00\xbem\x06\x89Z(\x00\n".as_slice());
    assert_eq!(crc64(0, b"123456789"), 0xe9c6d914c4b8d9ca);
    // hand-built: string "bar", version 10
    let p = dump_payload(b"\x00\x03bar", 10);
    let body = b"\x00\x03bar\x0a\x00";
    assert_eq!(&p[..7], body);
    assert_eq!(&p[7..], crc64(0, body).to_le_bytes());
}

fn encode_len(n: usize, out: &mut Vec<u8>) {
    if n < 64 {
        out.push(n as u8);
    } else if n < 16384 {
        out.push(0x40 | (n >> 8) as u8);
        out.push(n as u8);
    } else {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

#[test]
fn raw_capture_is_exact() {
    let fx = fixtures()
        .into_iter()
        .find(|f| f.file == "generated/redis-7.0.15-all-types.rdb")
        .expect("fixture generated/redis-7.0.15-all-types.rdb");
    let parsed = parse_all(&fx.bytes, ParserOptions::default());
    assert!(parsed.error.is_none());
    let mut checked = 0;
    for e in &parsed.entries {
        let raw = e.raw.as_ref().expect("Whole entry under the limit has raw");
        assert_eq!(raw[0], e.rdb_type, "raw starts with the type byte");
        // Re-embed the raw value into a minimal RDB and parse it back.
        let mut file = b"REDIS0010".to_vec();
        file.push(raw[0]);
        encode_len(e.key.len(), &mut file);
        file.extend_from_slice(&e.key);
        file.extend_from_slice(&raw[1..]);
        file.push(0xff);
        file.extend_from_slice(&[0u8; 8]);
        let back = parse_all(&file, ParserOptions::default());
        assert!(back.error.is_none(), "{:?}: {:?}", e.key, back.error);
        assert_eq!(back.entries.len(), 1);
        let mut orig = entry_to_json(e);
        orig.as_object_mut().unwrap().remove("expire_ms");
        orig["db"] = 0.into();
        assert!(json_eq(&orig, &entry_to_json(&back.entries[0])), "{:?}", e.key);
        assert_eq!(back.entries[0].raw.as_ref(), Some(raw));
        // And the payload is well formed.
        let p = dump_payload(raw, 10);
        let n = p.len();
        assert_eq!(&p[n - 8..], crc64(0, &p[..n - 8]).to_le_bytes());
        checked += 1;
    }
    assert_eq!(checked, 85);

    // A small raw_limit: raw only when it fits.
    let limit = 100;
    let small = parse_all(&fx.bytes, ParserOptions { raw_limit: limit, ..ParserOptions::default() });
    for (a, b) in parsed.entries.iter().zip(&small.entries) {
        let full: &Bytes = a.raw.as_ref().unwrap();
        if full.len() <= limit {
            assert_eq!(b.raw.as_ref(), Some(full));
        } else {
            assert!(b.raw.is_none());
        }
    }
    // raw_limit 0: never.
    let none = parse_all(&fx.bytes, ParserOptions { raw_limit: 0, ..ParserOptions::default() });
    assert!(none.entries.iter().all(|e| e.raw.is_none()));
}

/// A reader yielding `pat` repeated until `left` bytes have been produced.
struct Cycle {
    pat: Vec<u8>,
    pos: usize,
    left: u64,
}

impl std::io::Read for Cycle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.left > 0 {
            buf[n] = self.pat[self.pos];
            self.pos = (self.pos + 1) % self.pat.len();
            self.left -= 1;
            n += 1;
        }
        Ok(n)
    }
}

fn synthetic(prefix: Vec<u8>, pat: Vec<u8>, body_len: u64) -> impl std::io::Read {
    let trailer: Vec<u8> = [0xffu8, 0, 0, 0, 0, 0, 0, 0, 0].to_vec();
    std::io::Read::chain(
        std::io::Read::chain(std::io::Cursor::new(prefix), Cycle { pat, pos: 0, left: body_len }),
        std::io::Cursor::new(trailer),
    )
}

#[test]
fn huge_values_stream_in_bounded_parts() {
    let chunk = 1 << 20;
    let opts = ParserOptions { chunk_bytes: chunk, raw_limit: 4 << 20, ..ParserOptions::default() };

    // A linked list of 300k elements of 64 bytes (~19 MiB), read lazily.
    let n: u32 = 300_000;
    let mut prefix = b"REDIS0009\x01\x07biglist\x80".to_vec();
    prefix.extend_from_slice(&n.to_be_bytes());
    let mut pat = vec![0x40u8, 64];
    pat.extend(std::iter::repeat_n(b'x', 64));
    let len = pat.len() as u64 * n as u64;
    let mut p = Parser::new(synthetic(prefix, pat, len), opts.clone());
    let mut elems = 0usize;
    let mut parts = Vec::new();
    while let Some(ev) = p.next_event().unwrap() {
        if let Event::Entry(e) = ev {
            let size = elem_bytes(&e.value);
            assert!(size <= chunk + 64, "part of {size} bytes");
            assert!(e.raw.is_none());
            if let Value::List(l) = &e.value {
                elems += l.len();
            }
            parts.push(e.part);
        }
    }
    assert_eq!(elems, n as usize);
    assert_eq!(parts.first(), Some(&Part::First));
    assert_eq!(parts.last(), Some(&Part::Last));
    assert!(parts.len() >= 18, "{} parts", parts.len());

    // A 10 MB plain string.
    let slen: u32 = 10_000_000;
    let mut prefix = b"REDIS0009\x00\x03big\x80".to_vec();
    prefix.extend_from_slice(&slen.to_be_bytes());
    let mut p = Parser::new(synthetic(prefix, b"abc".to_vec(), slen as u64), opts);
    let mut total = 0usize;
    let mut count = 0;
    while let Some(ev) = p.next_event().unwrap() {
        if let Event::Entry(e) = ev {
            let Value::String(s) = &e.value else { panic!("not a string") };
            assert!(s.len() <= chunk);
            total += s.len();
            count += 1;
        }
    }
    assert_eq!(total, slen as usize);
    assert_eq!(count, 10);
}
