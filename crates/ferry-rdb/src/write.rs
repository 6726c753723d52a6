//! Writing an RDB stream from `DUMP` payloads.
//!
//! A `DUMP` payload is a value as RDB encodes it (type byte and body), followed by the RDB
//! version (2 bytes, little-endian) and a CRC-64 of what precedes it (8 bytes). An RDB file
//! holds the same encoding after the key, so a scan of a live server (`SCAN`, `DUMP`,
//! `PTTL`) becomes an RDB stream that the [`Parser`](crate::Parser) reads like any other:
//! `REDIS<version>`, then per db a `SELECTDB`, per key an optional `EXPIRETIME_MS`, the type
//! byte, the key and the body, and at the end `EOF` with the CRC-64 of the whole stream.

use crate::crc::crc64;

const OP_EXPIRETIME_MS: u8 = 0xFC;
const OP_SELECTDB: u8 = 0xFE;
const OP_EOF: u8 = 0xFF;

/// Why a `DUMP` payload cannot go into an RDB stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    #[error("DUMP payload of {0} bytes is too short")]
    TooShort(usize),
    #[error("DUMP payload checksum mismatch")]
    Checksum,
    #[error("DUMP payload has RDB version {payload}, newer than the stream's {stream}")]
    Newer { payload: u16, stream: u32 },
}

/// Builds an RDB stream piece by piece; every piece is returned as bytes to send.
pub struct RdbWriter {
    version: u32,
    crc: u64,
}

/// The RDB length encoding of `n`.
fn put_len(out: &mut Vec<u8>, n: u64) {
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
    } else if n <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

impl RdbWriter {
    /// A stream of RDB `version` (the source's: payloads of that version or older fit),
    /// and its header.
    pub fn new(version: u32) -> (RdbWriter, Vec<u8>) {
        let mut w = RdbWriter { version, crc: 0 };
        let header = format!("REDIS{version:04}").into_bytes();
        w.crc = crc64(w.crc, &header);
        (w, header)
    }

    /// `SELECTDB db`.
    pub fn select_db(&mut self, out: &mut Vec<u8>, db: u64) {
        let start = out.len();
        out.push(OP_SELECTDB);
        put_len(out, db);
        self.crc = crc64(self.crc, &out[start..]);
    }

    /// One key with the value of its `DUMP` payload, expiring at `expire_at_ms` (Unix ms).
    pub fn entry(
        &mut self,
        out: &mut Vec<u8>,
        key: &[u8],
        dump: &[u8],
        expire_at_ms: Option<u64>,
    ) -> Result<(), DumpError> {
        let n = dump.len();
        if n < 11 {
            return Err(DumpError::TooShort(n));
        }
        let (body, trailer) = dump.split_at(n - 10);
        let payload = u16::from_le_bytes([trailer[0], trailer[1]]);
        let stored = u64::from_le_bytes(trailer[2..].try_into().expect("8 bytes"));
        if stored != 0 && crc64(0, &dump[..n - 8]) != stored {
            return Err(DumpError::Checksum);
        }
        if u32::from(payload) > self.version {
            return Err(DumpError::Newer { payload, stream: self.version });
        }
        let start = out.len();
        if let Some(at) = expire_at_ms {
            out.push(OP_EXPIRETIME_MS);
            out.extend_from_slice(&at.to_le_bytes());
        }
        out.push(body[0]);
        put_len(out, key.len() as u64);
        out.extend_from_slice(key);
        self.crc = crc64(self.crc, &out[start..]);
        // The body is not copied twice: checksummed where it lies, then appended.
        self.crc = crc64(self.crc, &body[1..]);
        out.extend_from_slice(&body[1..]);
        Ok(())
    }

    /// `EOF` and the stream's checksum.
    pub fn finish(self, out: &mut Vec<u8>) {
        out.push(OP_EOF);
        let crc = crc64(self.crc, &[OP_EOF]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Parser, ParserOptions, dump_payload};

    #[test]
    fn lengths_use_the_shortest_encoding() {
        let enc = |n| {
            let mut v = Vec::new();
            put_len(&mut v, n);
            v
        };
        assert_eq!(enc(5), vec![5]);
        assert_eq!(enc(300), vec![0x41, 0x2c]);
        assert_eq!(enc(70000), vec![0x80, 0, 1, 0x11, 0x70]);
        assert_eq!(enc(1 << 40), vec![0x81, 0, 0, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn dumps_become_a_stream_the_parser_reads_with_its_checksum() {
        // A string value: type 0, then the string "hello".
        let hello = dump_payload(b"\x00\x05hello", 10);
        let long_key = vec![b'k'; 20000];
        let (mut w, mut out) = RdbWriter::new(11);
        w.select_db(&mut out, 0);
        w.entry(&mut out, b"a", &hello, None).unwrap();
        w.select_db(&mut out, 300);
        w.entry(&mut out, &long_key, &hello, Some(4_102_444_800_000)).unwrap();
        assert_eq!(w.entry(&mut out, b"x", b"short", None), Err(DumpError::TooShort(5)));
        let mut bad = hello.to_vec();
        bad[3] ^= 1;
        assert_eq!(w.entry(&mut out, b"x", &bad, None), Err(DumpError::Checksum));
        let newer = dump_payload(b"\x00\x01x", 12);
        assert_eq!(w.entry(&mut out, b"x", &newer, None), Err(DumpError::Newer { payload: 12, stream: 11 }));
        w.finish(&mut out);

        let opts = ParserOptions { verify_checksum: true, ..Default::default() };
        let mut p = Parser::new(&out[..], opts);
        let mut entries = Vec::new();
        while let Some(ev) = p.next_event().unwrap() {
            if let Event::Entry(e) = ev {
                entries.push((e.db, e.key.len(), e.expire_ms));
            }
        }
        assert!(p.checksum_verified() && p.checksum_ok());
        assert_eq!(entries, vec![(0, 1, None), (300, 20000, Some(4_102_444_800_000))]);
    }
}
