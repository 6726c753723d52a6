//! Shared test helpers: fixture location, whole-file parsing with part
//! merging, tolerant-exact JSON comparison and a tiny SHA-256.
#![allow(dead_code)]

use ferry_rdb::{Bytes, Entry, Event, Parser, ParserOptions, Part, RdbError, Value};
use serde_json::Value as J;
use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    let dir = match std::env::var_os("FERRY_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/rdb")),
    };
    assert!(
        dir.join("index.json").is_file(),
        "RDB fixtures not found at {} (set FERRY_FIXTURES to the fixtures/rdb directory)",
        dir.display()
    );
    dir
}

pub struct Fixture {
    pub file: String,
    pub expected: String,
    pub special: Vec<String>,
    pub bytes: Vec<u8>,
}

pub fn fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let idx: J = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let list = idx.as_array().expect("index.json is an array");
    assert!(!list.is_empty(), "index.json lists no fixtures");
    list.iter()
        .map(|e| {
            let file = e["file"].as_str().unwrap().to_string();
            let bytes =
                std::fs::read(dir.join(&file)).unwrap_or_else(|err| panic!("cannot read fixture {file}: {err}"));
            Fixture {
                expected: e["expected"].as_str().unwrap().to_string(),
                special: e["special"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
                file,
                bytes,
            }
        })
        .collect()
}

pub fn load_expected(path: &str) -> J {
    let dir = fixtures_dir();
    let p = dir.join(path);
    let gz = if path.ends_with(".gz") {
        Some(p.clone())
    } else if p.is_file() {
        None
    } else {
        Some(dir.join(format!("{path}.gz")))
    };
    let data = match gz {
        None => std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display())),
        Some(gz) => {
            let out = std::process::Command::new("gzip")
                .arg("-dc")
                .arg(&gz)
                .output()
                .unwrap_or_else(|e| panic!("cannot run gzip for {}: {e}", gz.display()));
            assert!(out.status.success(), "gzip -dc {} failed", gz.display());
            out.stdout
        }
    };
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("bad JSON {path}: {e}"))
}

/// (code, name, engine, desc) of a function record.
pub type FunctionRecord = (Bytes, Option<Bytes>, Option<Bytes>, Option<Bytes>);

#[derive(Default)]
pub struct Parsed {
    pub version: u32,
    pub aux: Vec<(Bytes, Bytes)>,
    pub functions: Vec<FunctionRecord>,
    pub slot_info: Vec<[u64; 3]>,
    pub module_aux: Vec<String>,
    pub entries: Vec<Entry>,
    pub parts: usize,
    pub eof: Option<Option<u64>>,
    pub error: Option<RdbError>,
}

/// Append the elements of `part` to `into`.
pub fn merge(into: &mut Value, part: Value) {
    match (into, part) {
        (Value::String(a), Value::String(b)) => {
            // Vec::from(Bytes) reuses the allocation when unique: amortized O(n).
            let mut v: Vec<u8> = std::mem::take(a).into();
            v.extend_from_slice(&b);
            *a = Bytes::from(v);
        }
        (Value::List(a), Value::List(b)) | (Value::Set(a), Value::Set(b)) => a.extend(b),
        (Value::ZSet(a), Value::ZSet(b)) => a.extend(b),
        (Value::Hash(a), Value::Hash(b)) => a.extend(b),
        (Value::Stream(a), Value::Stream(b)) => {
            let mut b = *b;
            let mut entries = std::mem::take(&mut a.entries);
            entries.append(&mut b.entries);
            b.entries = entries;
            **a = b;
        }
        (a, b) => panic!("part kind mismatch: {a:?} vs {b:?}"),
    }
}

pub fn parse_all(bytes: &[u8], opts: ParserOptions) -> Parsed {
    let mut p = Parser::new(bytes, opts);
    let mut out = Parsed::default();
    let mut cur: Option<Entry> = None;
    loop {
        match p.next_event() {
            Ok(None) => break,
            Ok(Some(ev)) => match ev {
                Event::Header { version, .. } => out.version = version,
                Event::Aux { key, value } => out.aux.push((key, value)),
                Event::Function { code, name, engine, desc } => out.functions.push((code, name, engine, desc)),
                Event::SlotInfo { slot, slot_size, expires_slot_size } => {
                    out.slot_info.push([slot, slot_size, expires_slot_size])
                }
                Event::ModuleAux { module_name, .. } => out.module_aux.push(module_name),
                Event::Entry(e) => {
                    out.parts += 1;
                    match e.part {
                        Part::Whole => {
                            assert!(cur.is_none(), "Whole entry while a value was in parts");
                            out.entries.push(e)
                        }
                        Part::First => {
                            assert!(cur.is_none(), "First part while a value was in parts");
                            assert!(e.raw.is_none(), "raw on a First part");
                            cur = Some(e)
                        }
                        Part::Middle | Part::Last => {
                            let c = cur.as_mut().expect("Middle/Last without First");
                            assert_eq!(c.key, e.key, "part of another key");
                            assert!(e.raw.is_none(), "raw on a non-Whole part");
                            merge(&mut c.value, e.value);
                            if e.part == Part::Last {
                                let mut done = cur.take().unwrap();
                                done.part = Part::Whole;
                                out.entries.push(done);
                            }
                        }
                    }
                }
                Event::Eof { checksum } => out.eof = Some(checksum),
                Event::SelectDb(_) | Event::ResizeDb { .. } => {}
            },
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

pub fn json_bytes(j: &J) -> Option<Vec<u8>> {
    match j {
        J::String(s) => Some(s.as_bytes().to_vec()),
        J::Object(m) if m.len() == 1 => m.get("hex").and_then(|h| h.as_str()).map(hex_decode),
        _ => None,
    }
}

/// Exact comparison: integers exactly, other numbers by f64 bit pattern,
/// `{"len","sha256"}` placeholders against the actual bytes.
pub fn json_eq(expected: &J, actual: &J) -> bool {
    match (expected, actual) {
        (J::Number(a), J::Number(b)) => {
            if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                return x == y;
            }
            match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x.to_bits() == y.to_bits(),
                _ => false,
            }
        }
        (J::Array(a), J::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_eq(x, y)),
        (J::Object(a), _) if a.contains_key("sha256") && a.contains_key("len") => {
            let Some(bytes) = json_bytes(actual) else {
                return false;
            };
            a["len"].as_u64() == Some(bytes.len() as u64) && a["sha256"].as_str() == Some(sha256_hex(&bytes).as_str())
        }
        (J::Object(a), J::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => expected == actual,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    let bitlen = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bitlen.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_known() {
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
