//! Error type: every failure carries the byte offset and, when known, the key.

use bytes::Bytes;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// An I/O error of the underlying reader (UnexpectedEof means truncated input).
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    /// The input ended in the middle of the file.
    #[error("unexpected end of input (truncated file)")]
    Truncated,
    /// The file does not start with "REDIS" or "VALKEY" and a version number.
    #[error("bad magic (not an RDB file)")]
    BadMagic,
    /// RDB version not supported (newer than known, or 0).
    #[error("unsupported RDB version {v}{hint}", v = .0, hint = newer_hint(*.0))]
    UnsupportedVersion(u32),
    /// Unknown value type byte.
    #[error("unknown value type {0}")]
    UnknownType(u8),
    /// Unknown opcode.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// A value type or opcode of a newer server, known by name but not read by this ferry.
    #[error(
        "{what} is not supported by this ferry: leave the key out ([filter] block_keys or a prefix), or copy it with the server's own replication"
    )]
    Newer {
        /// The type or opcode, named with the server version that writes it.
        what: String,
    },
    /// Structurally invalid data.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The CRC-64 trailer does not match the content.
    #[error("checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    ChecksumMismatch {
        /// Trailer value.
        stored: u64,
        /// CRC-64 of the content.
        computed: u64,
    },
    /// A module value that cannot be skipped without the module.
    #[error("unsupported module value: {0}")]
    UnsupportedModule(String),
}

/// A parse error with its position (bytes consumed) and key context.
#[derive(Debug, thiserror::Error)]
#[error("rdb: {kind} at byte {offset}{}", key_suffix(.key))]
pub struct RdbError {
    /// Bytes consumed when the error was detected.
    pub offset: u64,
    /// Key being read, if any.
    pub key: Option<Bytes>,
    /// What went wrong.
    pub kind: ErrorKind,
}

fn newer_hint(version: u32) -> &'static str {
    if version == 0 {
        ""
    } else {
        " (newer than this ferry knows: [decoder] allow_newer_rdb = true reads it anyway, and stops at the first value type it does not know)"
    }
}

fn key_suffix(key: &Option<Bytes>) -> String {
    match key {
        None => String::new(),
        Some(k) => format!(" while reading key \"{}\"", escape(k)),
    }
}

/// Escape bytes for one-line display (printable ASCII kept, the rest as \xNN).
pub(crate) fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len().min(256));
    for &c in b.iter().take(200) {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    if b.len() > 200 {
        s.push_str("...");
    }
    s
}

impl From<std::io::Error> for ErrorKind {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof { ErrorKind::Truncated } else { ErrorKind::Io(e) }
    }
}

pub(crate) fn corrupt<T>(msg: impl Into<String>) -> Result<T, ErrorKind> {
    Err(ErrorKind::Corrupt(msg.into()))
}
