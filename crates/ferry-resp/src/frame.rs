//! RESP2 values and bounded parsing.
//!
//! "Need more bytes" is `Ok(None)`; malformed input is a [`FrameError`].
//! No allocation is ever sized by a length read from the wire: bulk strings
//! are only sliced once all their bytes are present, and arrays grow as their
//! elements are parsed.

use bytes::Bytes;

/// Redis's default `proto-max-bulk-len` (512 MiB).
pub const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Deepest nesting of arrays accepted in a reply.
const MAX_DEPTH: usize = 32;
/// Most elements accepted in one array (Redis's own limit for multibulk is 1M+, replies can be larger).
const MAX_ARRAY_LEN: i64 = 1 << 32;

/// A reply (or any RESP2 value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The error text if this is an error reply.
    pub fn as_error(&self) -> Option<&[u8]> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    /// Simple or bulk string bytes.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Reply::Simple(b) | Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// Whether this reply, or any reply nested in it (as in an `EXEC` result), is an error.
    pub fn first_error(&self) -> Option<&[u8]> {
        match self {
            Reply::Error(e) => Some(e),
            Reply::Array(Some(items)) => items.iter().find_map(Reply::first_error),
            _ => None,
        }
    }
}

/// Malformed RESP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("malformed RESP: unexpected byte 0x{0:02x} where a type marker was expected")]
    BadType(u8),
    #[error("malformed RESP: invalid length or integer")]
    BadInteger,
    #[error("malformed RESP: bulk length {0} exceeds the limit of {1} bytes (proto-max-bulk-len)")]
    TooLarge(i64, usize),
    /// A command of the replication stream with an argument bigger than the reader takes.
    #[error(
        "the source's command {command} on key {key} has an argument of {len} bytes, more than the {limit} bytes \
         ferry takes in one command (reader.proto_max_bulk_len, at most the size of a message between ferry's \
         processes): it cannot be copied"
    )]
    CommandTooLarge { command: String, key: String, len: i64, limit: usize },
    #[error("malformed RESP: missing CRLF after a bulk string")]
    MissingCrlf,
    #[error("malformed RESP: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("malformed RESP: a replicated command must be an array of bulk strings")]
    NotACommand,
}

/// Finds the end of the line starting at `pos`: returns the index of `\r`.
fn find_crlf(buf: &[u8], pos: usize) -> Option<usize> {
    let rest = buf.get(pos..)?;
    let mut i = 0;
    while let Some(off) = memchr_cr(&rest[i..]) {
        let at = i + off;
        if at + 1 < rest.len() {
            if rest[at + 1] == b'\n' {
                return Some(pos + at);
            }
            i = at + 1;
        } else {
            return None;
        }
    }
    None
}

#[inline]
fn memchr_cr(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\r')
}

fn parse_int(s: &[u8]) -> Result<i64, FrameError> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(FrameError::BadInteger);
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(FrameError::BadInteger);
        }
        v = v.checked_mul(10).and_then(|v| v.checked_add((d - b'0') as i64)).ok_or(FrameError::BadInteger)?;
    }
    Ok(if neg { -v } else { v })
}

/// Reads a `<marker><int>\r\n` header at `pos`: returns (value, position after CRLF).
fn read_len_line(buf: &[u8], pos: usize) -> Result<Option<(i64, usize)>, FrameError> {
    match find_crlf(buf, pos + 1) {
        None => {
            // Bound the wait: a length line longer than 32 bytes is malformed.
            if buf.len().saturating_sub(pos) > 32 {
                return Err(FrameError::BadInteger);
            }
            Ok(None)
        }
        Some(cr) => Ok(Some((parse_int(&buf[pos + 1..cr])?, cr + 2))),
    }
}

/// Parses one reply from the start of `buf`. Returns the reply and the number of bytes it used.
pub fn parse_reply(buf: &Bytes, max_bulk: usize) -> Result<Option<(Reply, usize)>, FrameError> {
    parse_at(buf, 0, max_bulk, 0)
}

fn parse_at(buf: &Bytes, pos: usize, max_bulk: usize, depth: usize) -> Result<Option<(Reply, usize)>, FrameError> {
    if depth > MAX_DEPTH {
        return Err(FrameError::TooDeep);
    }
    let Some(&marker) = buf.get(pos) else {
        return Ok(None);
    };
    match marker {
        b'+' | b'-' => {
            let Some(cr) = find_crlf(buf, pos + 1) else {
                return Ok(None);
            };
            let s = buf.slice(pos + 1..cr);
            let r = if marker == b'+' { Reply::Simple(s) } else { Reply::Error(s) };
            Ok(Some((r, cr + 2)))
        }
        b':' => match read_len_line(buf, pos)? {
            None => Ok(None),
            Some((v, next)) => Ok(Some((Reply::Integer(v), next))),
        },
        b'$' => match read_len_line(buf, pos)? {
            None => Ok(None),
            Some((-1, next)) => Ok(Some((Reply::Bulk(None), next))),
            Some((len, next)) => {
                if len < 0 {
                    return Err(FrameError::BadInteger);
                }
                if len as u64 > max_bulk as u64 {
                    return Err(FrameError::TooLarge(len, max_bulk));
                }
                let end = next + len as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(FrameError::MissingCrlf);
                }
                Ok(Some((Reply::Bulk(Some(buf.slice(next..end))), end + 2)))
            }
        },
        b'*' => match read_len_line(buf, pos)? {
            None => Ok(None),
            Some((-1, next)) => Ok(Some((Reply::Array(None), next))),
            Some((n, mut next)) => {
                if !(0..=MAX_ARRAY_LEN).contains(&n) {
                    return Err(FrameError::BadInteger);
                }
                let mut items = Vec::with_capacity((n as usize).min(64));
                for _ in 0..n {
                    match parse_at(buf, next, max_bulk, depth + 1)? {
                        None => return Ok(None),
                        Some((item, after)) => {
                            items.push(item);
                            next = after;
                        }
                    }
                }
                Ok(Some((Reply::Array(Some(items)), next)))
            }
        },
        other => Err(FrameError::BadType(other)),
    }
}

/// Finds the length of the whole reply at the start of `buf` without allocating.
pub fn scan_reply(buf: &[u8], max_bulk: usize) -> Result<Option<usize>, FrameError> {
    scan_at(buf, 0, max_bulk, 0)
}

fn scan_at(buf: &[u8], pos: usize, max_bulk: usize, depth: usize) -> Result<Option<usize>, FrameError> {
    if depth > MAX_DEPTH {
        return Err(FrameError::TooDeep);
    }
    let Some(&marker) = buf.get(pos) else {
        return Ok(None);
    };
    match marker {
        b'+' | b'-' => Ok(find_crlf(buf, pos + 1).map(|cr| cr + 2)),
        b':' => Ok(read_len_line(buf, pos)?.map(|(_, next)| next)),
        b'$' => match read_len_line(buf, pos)? {
            None => Ok(None),
            Some((-1, next)) => Ok(Some(next)),
            Some((len, next)) => {
                if len < 0 {
                    return Err(FrameError::BadInteger);
                }
                if len as u64 > max_bulk as u64 {
                    return Err(FrameError::TooLarge(len, max_bulk));
                }
                let end = next + len as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(FrameError::MissingCrlf);
                }
                Ok(Some(end + 2))
            }
        },
        b'*' => match read_len_line(buf, pos)? {
            None => Ok(None),
            Some((-1, next)) => Ok(Some(next)),
            Some((n, mut next)) => {
                if !(0..=MAX_ARRAY_LEN).contains(&n) {
                    return Err(FrameError::BadInteger);
                }
                for _ in 0..n {
                    match scan_at(buf, next, max_bulk, depth + 1)? {
                        None => return Ok(None),
                        Some(after) => next = after,
                    }
                }
                Ok(Some(next))
            }
        },
        other => Err(FrameError::BadType(other)),
    }
}

/// Finds the length of the whole command (an array of bulk strings) at the start of `buf`,
/// without allocating. `Ok(None)` when more bytes are needed.
pub fn scan_command(buf: &[u8], max_bulk: usize) -> Result<Option<usize>, FrameError> {
    let Some(&marker) = buf.first() else {
        return Ok(None);
    };
    if marker != b'*' {
        return Err(if marker == b'$' || marker == b'+' || marker == b'-' || marker == b':' {
            FrameError::NotACommand
        } else {
            FrameError::BadType(marker)
        });
    }
    let Some((n, mut pos)) = read_len_line(buf, 0)? else {
        return Ok(None);
    };
    if !(1..=MAX_ARRAY_LEN).contains(&n) {
        return Err(FrameError::NotACommand);
    }
    for _ in 0..n {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(_) => return Err(FrameError::NotACommand),
        }
        let Some((len, next)) = read_len_line(buf, pos)? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(FrameError::NotACommand);
        }
        if len as u64 > max_bulk as u64 {
            return Err(FrameError::TooLarge(len, max_bulk));
        }
        let end = next + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(FrameError::MissingCrlf);
        }
        pos = end + 2;
    }
    Ok(Some(pos))
}

/// Splits a whole command (as found by [`scan_command`]) into its arguments, zero-copy.
pub fn parse_command(cmd: &Bytes) -> Result<Vec<Bytes>, FrameError> {
    match parse_reply(cmd, usize::MAX)? {
        Some((Reply::Array(Some(items)), _)) => items
            .into_iter()
            .map(|r| match r {
                Reply::Bulk(Some(b)) => Ok(b),
                _ => Err(FrameError::NotACommand),
            })
            .collect(),
        _ => Err(FrameError::NotACommand),
    }
}

/// The first argument (the command name) of a whole command, without parsing the rest.
/// The name and the first argument (the key, for most commands) of the command at the start
/// of `buf`, as far as they are there: to name a command that cannot be read whole.
pub fn command_head(buf: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let name = command_name(buf);
    let key = name.and_then(|n| {
        // After `$<len>\r\n<name>\r\n`.
        let start = n.as_ptr() as usize - buf.as_ptr() as usize + n.len() + 2;
        if buf.get(start) != Some(&b'$') {
            return None;
        }
        let cr = find_crlf(buf, start + 1)?;
        let len = usize::try_from(parse_int(&buf[start + 1..cr]).ok()?).ok()?;
        buf.get(cr + 2..cr + 2 + len)
    });
    (name, key)
}

pub fn command_name(cmd: &[u8]) -> Option<&[u8]> {
    command_arg(cmd, 0)
}

/// Argument `n` of a RESP command array (0: its name), without parsing the others into
/// values: the cheap way to a command's key where its position is known.
pub fn command_arg(cmd: &[u8], n: usize) -> Option<&[u8]> {
    let cr = find_crlf(cmd, 0)?;
    let count = usize::try_from(parse_int(cmd.get(1..cr)?).ok()?).ok()?;
    if n >= count {
        return None;
    }
    let mut pos = cr + 2;
    for i in 0..=n {
        if cmd.get(pos) != Some(&b'$') {
            return None;
        }
        let cr2 = find_crlf(cmd, pos + 1)?;
        let len = usize::try_from(parse_int(&cmd[pos + 1..cr2]).ok()?).ok()?;
        let start = cr2 + 2;
        if i == n {
            return cmd.get(start..start.checked_add(len)?);
        }
        pos = start.checked_add(len)?.checked_add(2)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_whole_commands_only() {
        let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for cut in 0..full.len() {
            assert_eq!(scan_command(&full[..cut], 100), Ok(None), "cut at {cut}");
        }
        assert_eq!(scan_command(full, 100), Ok(Some(full.len())));
        assert_eq!(command_name(full), Some(&b"GET"[..]));
        assert_eq!(command_head(full), (Some(&b"GET"[..]), Some(&b"k"[..])));
        assert_eq!(command_head(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999\r\nxx"), (Some(&b"SET"[..]), Some(&b"k"[..])));
        assert_eq!(command_head(b"*3\r\n$3\r\nSET\r\n$5\r\nk"), (Some(&b"SET"[..]), None));
        let args = parse_command(&Bytes::from_static(full)).unwrap();
        assert_eq!(args, vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")]);
    }

    #[test]
    fn rejects_oversized_and_malformed() {
        assert!(matches!(scan_command(b"*1\r\n$999\r\n", 10), Err(FrameError::TooLarge(999, 10))));
        assert_eq!(scan_command(b"*1\r\n$1\r\nab\r\n", 10), Err(FrameError::MissingCrlf));
        assert_eq!(scan_command(b"+OK\r\n", 10), Err(FrameError::NotACommand));
        assert!(scan_command(b"*1\r\n$-5\r\n", 10).is_err());
        assert!(scan_command(b"*abc\r\n", 10).is_err());
    }

    #[test]
    fn parses_nested_replies() {
        let b = Bytes::from_static(b"*3\r\n+OK\r\n-ERR x\r\n*1\r\n:5\r\n");
        let (r, n) = parse_reply(&b, 100).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(r.first_error(), Some(&b"ERR x"[..]));
        for cut in 0..b.len() {
            assert_eq!(parse_reply(&b.slice(..cut), 100), Ok(None));
        }
    }
}
