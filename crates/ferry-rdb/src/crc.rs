//! CRC-64 (Jones, as used by Redis) and DUMP payload construction.

use bytes::Bytes;
use crc::{CRC_64_REDIS, Crc, Table};

/// Slicing-by-16 tables (32 KiB): several times the speed of the byte-wise table, and every
/// byte of an RDB (the file's checksum) and of each `RESTORE` payload goes through it.
pub(crate) type Crc64Impl = Table<16>;

pub(crate) static CRC64: Crc<u64, Crc64Impl> = Crc::<u64, Crc64Impl>::new(&CRC_64_REDIS);

/// Redis CRC-64 of `data`, continuing from `init` (0 to start; pass a
/// previous result to continue it).
pub fn crc64(init: u64, data: &[u8]) -> u64 {
    // The crc crate bit-reverses the initial value of reflected algorithms;
    // undo it so `init` is a previous result.
    let mut d = CRC64.digest_with_initial(init.reverse_bits());
    d.update(data);
    d.finalize()
}

/// Build a DUMP/RESTORE payload: `raw` (type byte + value body), the RDB
/// version (2 bytes LE) and the CRC-64 (8 bytes LE) of everything before it.
pub fn dump_payload(raw: &[u8], rdb_version: u16) -> Bytes {
    let mut v = Vec::with_capacity(raw.len() + 10);
    v.extend_from_slice(raw);
    v.extend_from_slice(&rdb_version.to_le_bytes());
    let c = crc64(0, &v);
    v.extend_from_slice(&c.to_le_bytes());
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(crc64(0, b"123456789"), 0xe9c6d914c4b8d9ca);
        let a = crc64(0, b"1234");
        assert_eq!(crc64(a, b"56789"), 0xe9c6d914c4b8d9ca);
    }
}
