//! `inspect`: the keys of an RDB file as JSON lines.

use std::io::{Read, Write};

use serde_json::{Value as J, json};

use crate::{Event, Parser, ParserOptions, Part, RdbError, entry_to_json};

/// Errors of [`inspect`]: the file, or the output.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Rdb(#[from] RdbError),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

/// Writes one JSON line per key of the RDB read from `input`
/// (`{"db","key","type","value","expire_ms"?,"field_expire_ms"?}`), plus one line per
/// function library (`{"function": code}`). A value bigger than `opts.chunk_bytes` is
/// written as several lines carrying `"part": "first" | "middle" | "last"`, so memory
/// stays bounded. Returns the number of keys.
pub fn inspect<R: Read, W: Write>(input: R, out: &mut W, opts: ParserOptions) -> Result<u64, InspectError> {
    let mut parser = Parser::new(input, ParserOptions { raw_limit: 0, ..opts });
    let mut keys = 0;
    let mut line = |v: J| -> Result<(), InspectError> {
        serde_json::to_writer(&mut *out, &v).map_err(|e| InspectError::Output(e.into()))?;
        out.write_all(b"\n").map_err(InspectError::Output)
    };
    while let Some(ev) = parser.next_event()? {
        match ev {
            Event::Entry(e) => {
                let mut v = entry_to_json(&e);
                let part = match e.part {
                    Part::Whole => None,
                    Part::First => Some("first"),
                    Part::Middle => Some("middle"),
                    Part::Last => Some("last"),
                };
                if let (Some(p), J::Object(m)) = (part, &mut v) {
                    m.insert("part".into(), J::String(p.into()));
                }
                if matches!(e.part, Part::Whole | Part::Last) {
                    keys += 1;
                }
                line(v)?;
            }
            Event::Function { code, .. } => line(json!({ "function": crate::bytes_to_json(&code) }))?,
            _ => {}
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_json_lines() {
        // A minimal RDB v9: one string key "k" = "v", EOF, checksum 0 (not verified).
        let mut rdb = b"REDIS0009".to_vec();
        rdb.extend_from_slice(&[0xFE, 0x00, 0x00, 0x01, b'k', 0x01, b'v', 0xFF]);
        rdb.extend_from_slice(&[0; 8]);
        let mut out = Vec::new();
        let n = inspect(&rdb[..], &mut out, ParserOptions::default()).unwrap();
        assert_eq!(n, 1);
        assert_eq!(String::from_utf8(out).unwrap(), "{\"db\":0,\"key\":\"k\",\"type\":\"string\",\"value\":\"v\"}\n");
    }
}
