//! Parts, raw capture and DUMP payloads.

mod common;

use common::*;
use ferry_rdb::{Bytes, Event, Parser, ParserOptions, Part, Value, crc64, dump_payload, entry_to_json};

fn elem_bytes(v: &Value) -> usize {
    match v {
        Value::String(b) => b.len(),
        Value::List(x) | Value::Set(x) => x.iter().map(|b| b.len()).sum(),
        Value::ZSet(x) => x.iter().map(|(m, _)| m.len() + 8).sum(),
        Value::Hash(x) => {
            x.iter().map(|h| h.field.len() + h.value.len() + if h.expire_ms.is_some() { 8 } else { 0 }).sum()
        }
        Value::Stream(s) => {
            s.entries.iter().map(|e| 16 + e.fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>()).sum()
        }
        Value::Module { .. } => 0,
    }
}

#[test]
fn parts_concatenate_to_whole_values() {
    let mut total_parts = 0;
    let mut split_values = 0;
    for fx in fixtures() {
        let whole = parse_all(&fx.bytes, ParserOptions::default());
        for chunk in [64usize, 1] {
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
