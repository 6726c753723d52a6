//! JSON rendering in the fixture schema (`rdb-fixture-expected/v1`).

use crate::{Entry, Stream, StreamId, Value};
use serde_json::{Map, Value as J, json};

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for c in b {
        s.push_str(&format!("{c:02x}"));
    }
    s
}

/// Bytes as a JSON string if valid UTF-8, else `{"hex": "..."}`.
pub fn bytes_to_json(b: &[u8]) -> J {
    match std::str::from_utf8(b) {
        Ok(s) => J::String(s.to_owned()),
        Err(_) => json!({ "hex": hex(b) }),
    }
}

/// Bytes as a JSON object key: UTF-8 unless invalid or starting with "hex:".
pub fn bytes_to_json_key(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.starts_with("hex:") => s.to_owned(),
        _ => format!("hex:{}", hex(b)),
    }
}

/// A score as JSON: integral values as integers, infinities as strings.
pub fn score_to_json(s: f64) -> J {
    if s.is_nan() {
        J::String("nan".into())
    } else if s == f64::INFINITY {
        J::String("inf".into())
    } else if s == f64::NEG_INFINITY {
        J::String("-inf".into())
    } else if s.fract() == 0.0 && s.abs() < 9.0e15 && !(s == 0.0 && s.is_sign_negative()) {
        J::from(s as i64)
    } else {
        serde_json::Number::from_f64(s).map_or(J::Null, J::Number)
    }
}

fn id(i: &StreamId) -> J {
    J::String(i.to_string())
}

fn stream_to_json(s: &Stream) -> J {
    let entries: Vec<J> = s
        .entries
        .iter()
        .map(|e| {
            let fields: Vec<J> = e.fields.iter().map(|(f, v)| json!([bytes_to_json(f), bytes_to_json(v)])).collect();
            json!([id(&e.id), fields])
        })
        .collect();
    let mut m = Map::new();
    m.insert("entries".into(), J::Array(entries));
    m.insert("length".into(), J::from(s.length));
    m.insert("last_id".into(), id(&s.last_id));
    if let Some(x) = &s.max_deleted_id {
        m.insert("max_deleted_entry_id".into(), id(x));
    }
    if let Some(x) = s.entries_added {
        m.insert("entries_added".into(), J::from(x));
    }
    if let Some(x) = &s.first_id {
        m.insert("first_entry_id".into(), id(x));
    }
    let groups: Vec<J> = s
        .groups
        .iter()
        .map(|g| {
            let mut gm = Map::new();
            gm.insert("name".into(), bytes_to_json(&g.name));
            gm.insert("last_delivered_id".into(), id(&g.last_delivered));
            if let Some(er) = g.entries_read {
                gm.insert("entries_read".into(), J::from(er));
            }
            let pel: Vec<J> = g
                .pel
                .iter()
                .map(|p| json!([id(&p.id), bytes_to_json(&p.consumer), p.delivery_time_ms as i64, p.delivery_count]))
                .collect();
            gm.insert("pel".into(), J::Array(pel));
            let consumers: Vec<J> = g
                .consumers
                .iter()
                .map(|c| {
                    let mut cm = Map::new();
                    cm.insert("name".into(), bytes_to_json(&c.name));
                    cm.insert("seen_time_ms".into(), J::from(c.seen_time_ms as i64));
                    if let Some(a) = c.active_time_ms {
                        cm.insert("active_time_ms".into(), J::from(a as i64));
                    }
                    cm.insert("pel".into(), J::Array(c.pel.iter().map(id).collect()));
                    J::Object(cm)
                })
                .collect();
            gm.insert("consumers".into(), J::Array(consumers));
            J::Object(gm)
        })
        .collect();
    m.insert("groups".into(), J::Array(groups));
    J::Object(m)
}

/// JSON rendering of a value in the fixture schema.
pub fn value_to_json(value: &Value) -> J {
    match value {
        Value::String(b) => bytes_to_json(b),
        Value::List(v) => J::Array(v.iter().map(|b| bytes_to_json(b)).collect()),
        Value::Set(v) => {
            let mut s: Vec<&[u8]> = v.iter().map(|b| &b[..]).collect();
            s.sort();
            J::Array(s.into_iter().map(bytes_to_json).collect())
        }
        Value::ZSet(v) => {
            let mut s: Vec<&(crate::Bytes, f64)> = v.iter().collect();
            s.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.0.cmp(&b.0)));
            J::Array(s.into_iter().map(|(m, sc)| json!([bytes_to_json(m), score_to_json(*sc)])).collect())
        }
        Value::Hash(v) => {
            let mut m = Map::new();
            for f in v {
                m.insert(bytes_to_json_key(&f.field), bytes_to_json(&f.value));
            }
            J::Object(m)
        }
        Value::Stream(s) => stream_to_json(s),
        Value::Module { module_name, encver, .. } => json!({ "module": module_name, "module_encver": encver }),
        Value::Opaque => json!({ "not_decoded": true }),
    }
}

/// Redis type name of a value.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::List(_) => "list",
        Value::Set(_) => "set",
        Value::ZSet(_) => "zset",
        Value::Hash(_) => "hash",
        Value::Stream(_) => "stream",
        Value::Module { .. } => "module",
        Value::Opaque => "not decoded",
    }
}

/// JSON line of one whole entry: `{"db","key","type","value","expire_ms"?,"field_expire_ms"?}`.
pub fn entry_to_json(entry: &Entry) -> J {
    let mut m = Map::new();
    m.insert("db".into(), J::from(entry.db));
    m.insert("key".into(), bytes_to_json(&entry.key));
    m.insert("type".into(), J::String(type_name(&entry.value).into()));
    m.insert("value".into(), value_to_json(&entry.value));
    if let Some(e) = entry.expire_ms {
        m.insert("expire_ms".into(), J::from(e));
    }
    if let Value::Hash(fields) = &entry.value {
        let mut fe = Map::new();
        for f in fields {
            if let Some(e) = f.expire_ms {
                fe.insert(bytes_to_json_key(&f.field), J::from(e));
            }
        }
        if !fe.is_empty() {
            m.insert("field_expire_ms".into(), J::Object(fe));
        }
    }
    J::Object(m)
}
