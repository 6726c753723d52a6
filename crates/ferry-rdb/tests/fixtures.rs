//! Every fixture parsed and compared with its `<name>.expected.json`.

mod common;

use common::*;
use ferry_rdb::{ErrorKind, Event, Parser, ParserOptions, Value, bytes_to_json, bytes_to_json_key, entry_to_json};
use serde_json::Value as J;
use std::collections::BTreeSet;

fn opt_bytes_json(b: &Option<ferry_rdb::Bytes>) -> J {
    b.as_ref().map_or(J::Null, |x| bytes_to_json(x))
}

/// Compare one fixture; returns the list of problems.
fn check(fx: &Fixture, keys_compared: &mut usize) -> Vec<String> {
    let mut errs = Vec::new();
    let exp = load_expected(&fx.expected);
    let parsed = parse_all(&fx.bytes, ParserOptions::default());
    let name = fx.file.as_str();

    // Expected failures.
    let expect_error = match name {
        "redis/corrupt_ziplist.rdb" => Some(("key:000000000091", "corrupt")),
        "replicator/module.rdb" => Some(("key", "hellotype")),
        _ => None,
    };
    match (&parsed.error, expect_error) {
        (None, None) => {}
        (Some(e), None) => errs.push(format!("unexpected error: {e}")),
        (None, Some(_)) => errs.push("expected a parse error, parsed fine".into()),
        (Some(e), Some((key, what))) => {
            let msg = e.to_string();
            if e.key.as_deref() != Some(key.as_bytes()) {
                errs.push(format!("error should name key {key:?}: {msg}"));
            }
            if !msg.contains(what) {
                errs.push(format!("error should mention {what:?}: {msg}"));
            }
            if name == "replicator/module.rdb" && !matches!(e.kind, ErrorKind::UnsupportedModule(_)) {
                errs.push(format!("expected UnsupportedModule: {msg}"));
            }
            if msg.contains('\n') {
                errs.push("error Display is not one line".into());
            }
        }
    }
    let complete = parsed.error.is_none();

    if exp["rdb_version"].as_u64() != Some(parsed.version as u64) {
        errs.push(format!("rdb_version {} != expected {}", parsed.version, exp["rdb_version"]));
    }

    // aux
    let aux: Vec<J> = parsed.aux.iter().map(|(k, v)| J::Array(vec![bytes_to_json(k), bytes_to_json(v)])).collect();
    if J::Array(aux.clone()) != exp["aux"] {
        errs.push(format!("aux mismatch: got {aux:?}, expected {}", exp["aux"]));
    }

    // functions_raw
    let exp_funcs = exp.get("functions_raw").cloned().unwrap_or(J::Array(vec![]));
    let got_funcs: Vec<J> = parsed
        .functions
        .iter()
        .map(|(code, n, e, d)| {
            if n.is_none() {
                serde_json::json!({"opcode": "FUNCTION2", "code": bytes_to_json(code)})
            } else {
                serde_json::json!({"opcode": "FUNCTION_PRE_GA", "name": opt_bytes_json(n),
                    "engine": opt_bytes_json(e), "desc": opt_bytes_json(d), "code": bytes_to_json(code)})
            }
        })
        .collect();
    if complete && J::Array(got_funcs.clone()) != exp_funcs {
        errs.push(format!("functions_raw mismatch: got {got_funcs:?}"));
    }

    // slot info
    let exp_slots = exp.get("slot_info").cloned().unwrap_or(J::Array(vec![]));
    let got_slots = serde_json::to_value(&parsed.slot_info).unwrap();
    if complete && got_slots != exp_slots {
        errs.push(format!("slot_info mismatch: got {got_slots}, expected {exp_slots}"));
    }

    // module aux
    let exp_maux: Vec<String> = exp
        .get("module_aux")
        .and_then(|m| m.as_array())
        .map(|a| a.iter().map(|x| x["module"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    if complete && parsed.module_aux != exp_maux {
        errs.push(format!("module_aux mismatch: got {:?}, expected {exp_maux:?}", parsed.module_aux));
    }

    // checksum
    if complete {
        match (&exp["checksum"], parsed.eof) {
            (J::Null, Some(None)) => {}
            (J::Object(c), Some(Some(stored))) => {
                let hex = format!("{stored:016x}");
                if c["stored"].as_str() != Some(hex.as_str()) {
                    errs.push(format!("checksum {hex} != expected {}", c["stored"]));
                }
            }
            (e, g) => errs.push(format!("checksum: expected {e}, got {g:?}")),
        }
    }

    // keys
    let dbs = if name == "redis/corrupt_empty_keys.rdb" { &exp["keys_in_file"] } else { &exp["databases"] };
    let mut expected_keys: BTreeSet<(String, String)> = BTreeSet::new();
    if let Some(m) = dbs.as_object() {
        for (db, keys) in m {
            for k in keys.as_object().unwrap().keys() {
                expected_keys.insert((db.clone(), k.clone()));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for e in &parsed.entries {
        let db = e.db.to_string();
        let k = bytes_to_json_key(&e.key);
        if !seen.insert((db.clone(), k.clone())) {
            errs.push(format!("duplicate key db {db} {k:?}"));
        }
        let Some(x) = dbs.get(&db).and_then(|d| d.get(&k)) else {
            errs.push(format!("unexpected key db {db} {k:?}"));
            continue;
        };
        *keys_compared += 1;
        let got = entry_to_json(e);
        let ctx = format!("db {db} key {k:?}");
        if x["type"] != got["type"] {
            errs.push(format!("{ctx}: type {} != {}", got["type"], x["type"]));
            continue;
        }
        if let Value::Module { module_name, encver, .. } = &e.value {
            if x["module"].as_str() != Some(module_name.as_str()) || x["module_encver"].as_u64() != Some(*encver) {
                errs.push(format!("{ctx}: module {module_name}/{encver} != {}/{}", x["module"], x["module_encver"]));
            }
        } else if !json_eq(&x["value"], &got["value"]) {
            let g = got["value"].to_string();
            let w = x["value"].to_string();
            errs.push(format!(
                "{ctx}: value mismatch\n   got {}\n  want {}",
                &g[..g.len().min(600)],
                &w[..w.len().min(600)]
            ));
        }
        let exp_exp = x.get("expire_ms").cloned().unwrap_or(J::Null);
        let got_exp = got.get("expire_ms").cloned().unwrap_or(J::Null);
        if exp_exp != got_exp {
            errs.push(format!("{ctx}: expire_ms {got_exp} != {exp_exp}"));
        }
        let exp_fe = x.get("field_expire_ms").cloned().unwrap_or(J::Null);
        let got_fe = got.get("field_expire_ms").cloned().unwrap_or(J::Null);
        if exp_fe != got_fe {
            errs.push(format!("{ctx}: field_expire_ms {got_fe} != {exp_fe}"));
        }
        let rdb = &x["rdb"];
        if rdb["type"].as_u64() != Some(e.rdb_type as u64) {
            errs.push(format!("{ctx}: rdb type {} != {}", e.rdb_type, rdb["type"]));
        }
        if rdb.get("lru_idle").and_then(|v| v.as_u64()) != e.lru_idle {
            errs.push(format!("{ctx}: lru_idle {:?} != {}", e.lru_idle, rdb["lru_idle"]));
        }
        if rdb.get("lfu_freq").and_then(|v| v.as_u64()) != e.lfu_freq.map(u64::from) {
            errs.push(format!("{ctx}: lfu_freq {:?} != {}", e.lfu_freq, rdb["lfu_freq"]));
        }
    }
    if complete {
        let missing: Vec<_> = expected_keys.difference(&seen).take(10).collect();
        if !missing.is_empty() {
            errs.push(format!(
                "{} expected keys not parsed, e.g. {missing:?}",
                expected_keys.difference(&seen).count()
            ));
        }
    } else if seen.is_empty() && !expected_keys.is_empty() {
        errs.push("no key parsed before the expected error".into());
    }
    errs
}

#[test]
fn all_fixtures_match_expectations() {
    let fixtures = fixtures();
    let mut failures = Vec::new();
    let mut keys_compared = 0usize;
    for fx in &fixtures {
        let errs = check(fx, &mut keys_compared);
        if !errs.is_empty() {
            let shown: Vec<_> = errs.iter().take(8).cloned().collect();
            failures.push(format!("{} ({} problems):\n  {}", fx.file, errs.len(), shown.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures mismatch:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
    assert_eq!(fixtures.len(), 60, "index.json should list 60 fixtures");
    assert!(keys_compared > 93_000, "only {keys_compared} keys compared");
}

#[test]
fn preamble_aof_stops_at_eof() {
    let fx = fixtures().into_iter().find(|f| f.file == "redis/rdb-preamble.aof").expect("rdb-preamble.aof in index");
    let mut p = ferry_rdb::Parser::new(&fx.bytes[..], ParserOptions::default());
    while p.next_event().unwrap().is_some() {}
    assert_eq!(p.offset(), 117);
    assert!(p.checksum_ok() && p.checksum_verified());
}

/// The decoder's mode (`set_opaque_types`): over every fixture, a value of an opaque type is
/// delimited exactly where decoding ends (its raw bytes are those a decoding parse
/// captures), and every other event is the same as without it.
#[test]
fn opaque_values_are_delimited_as_decoding_would() {
    let mut opaque_seen = 0;
    for fx in fixtures().iter().filter(|f| !f.special.iter().any(|s| s.starts_with("corrupt"))) {
        let events = |opaque: bool| -> Vec<Result<Event, String>> {
            let mut p = Parser::new(&fx.bytes[..], ParserOptions::default());
            let mut out = Vec::new();
            loop {
                match p.next_event() {
                    Ok(Some(ev)) => {
                        if opaque && matches!(ev, Event::Header { .. }) {
                            p.set_opaque_types(|_| true);
                        }
                        out.push(Ok(ev));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e.to_string()));
                        break;
                    }
                }
            }
            out
        };
        let (plain, opaque) = (events(false), events(true));
        assert_eq!(plain.len(), opaque.len(), "{}: event counts differ", fx.file);
        for (a, b) in plain.iter().zip(&opaque) {
            match (a, b) {
                (Ok(Event::Entry(a)), Ok(Event::Entry(b))) if b.value == ferry_rdb::Value::Opaque => {
                    opaque_seen += 1;
                    assert_eq!((&a.key, a.db, a.expire_ms, a.part), (&b.key, b.db, b.expire_ms, b.part), "{}", fx.file);
                    assert!(a.raw.is_some() && a.raw == b.raw, "{}: key {:?}: raw bytes differ", fx.file, a.key);
                }
                (a, b) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{}", fx.file),
            }
        }
    }
    assert!(opaque_seen > 1000, "only {opaque_seen} opaque values");
}
