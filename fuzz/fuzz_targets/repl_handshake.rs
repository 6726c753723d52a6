//! The replica side of replication (`ferry_resp::replication`), as far as it is
//! reachable without a socket.
//!
//! - the master's reply to `PSYNC` (`parse_psync_reply`: `+FULLRESYNC <id> <off>` /
//!   `+CONTINUE [<id>]` / an error): never a panic, never a negative or huge offset
//!   (the stream adds to it);
//!
//! The status-line reader and the RDB payload header parser (`$<len>` /
//! `$EOF:<40-byte mark>`, in `ReplStream::try_event`) only run inside `handshake()` /
//! `ReplStream::next_event()`, which need a `Connection` (a TCP connect); the
//! integration tests drive those against real servers. The other pure pieces:
//!
//! - the command stream after the RDB: bytes arrive in chunks of any size (taken
//!   from the selector) and are framed into whole commands exactly as
//!   `ReplStream` does in its `Commands` state (`scan_command` in batches of at
//!   most 1 MiB, `REPLCONF GETACK` detection via `command_name` +
//!   `parse_command`); the commands delivered must not depend on how the bytes
//!   were split (except that on a framing error the batch in progress is
//!   dropped, so only a prefix of the commands before the error arrives);
//! - `info_field`, which reads `master_repl_offset` & co. from a master's `INFO`.
//!
//! Input: first byte = selector (max bulk length, chunking), the rest = the stream.

#![no_main]

use bytes::{Bytes, BytesMut};
use ferry_resp::frame::{FrameError, Reply, command_name, parse_command, scan_command};
use ferry_resp::replication::info_field;
use libfuzzer_sys::fuzz_target;

/// `MAX_CHUNK` of replication.rs: most bytes in one batch of commands.
const MAX_CHUNK: usize = 1024 * 1024;

#[derive(Debug, PartialEq)]
struct Batch {
    data: Bytes,
    lens: Vec<u32>,
    getack: bool,
}

fn is_getack(cmd: &[u8]) -> bool {
    match command_name(cmd) {
        Some(name) if name.eq_ignore_ascii_case(b"REPLCONF") => {
            let b = Bytes::copy_from_slice(cmd);
            matches!(parse_command(&b), Ok(args) if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK")))
        }
        _ => false,
    }
}

/// One step of the `Commands` state of `ReplStream::try_event`.
fn try_commands(buf: &mut BytesMut, max_bulk: usize, offset: &mut i64) -> Result<Option<Batch>, FrameError> {
    let mut pos = 0usize;
    let mut lens = Vec::new();
    let mut getack = false;
    while pos < buf.len() && pos < MAX_CHUNK {
        match scan_command(&buf[pos..], max_bulk)? {
            Some(n) => {
                assert!(n > 0, "scan_command returned an empty command");
                if is_getack(&buf[pos..pos + n]) {
                    getack = true;
                }
                lens.push(u32::try_from(n).expect("command longer than u32"));
                pos += n;
            }
            None => break,
        }
    }
    if lens.is_empty() {
        return Ok(None);
    }
    let data = buf.split_to(pos).freeze();
    assert_eq!(data.len() as u64, lens.iter().map(|&l| u64::from(l)).sum::<u64>());
    *offset += pos as i64;
    Ok(Some(Batch { data, lens, getack }))
}

/// Outcome of a whole stream: every command length, which commands are `REPLCONF GETACK`, the error.
#[derive(Debug, PartialEq)]
struct Outcome {
    lens: Vec<u32>,
    getacks: Vec<bool>,
    offset: i64,
    error: Option<FrameError>,
}

/// Feeds `data` in pieces of `sizes` (cycled), framing after every piece like `next_event` does.
fn run(data: &[u8], sizes: &[usize], max_bulk: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut out = Outcome { lens: Vec::new(), getacks: Vec::new(), offset: 0, error: None };
    let mut fed = 0;
    let mut i = 0;
    while fed < data.len() {
        let n = sizes[i % sizes.len()].max(1).min(data.len() - fed);
        i += 1;
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            match try_commands(&mut buf, max_bulk, &mut out.offset) {
                Ok(Some(b)) => {
                    // Batches differ with the split; per command, GETACK detection must not.
                    let mut at = 0;
                    let mut any = false;
                    for &l in &b.lens {
                        let cmd = &b.data[at..at + l as usize];
                        let g = is_getack(cmd);
                        any |= g;
                        out.getacks.push(g);
                        at += l as usize;
                    }
                    assert_eq!(b.getack, any);
                    out.lens.extend(b.lens);
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out
}

fn max_bulk(sel: u8) -> usize {
    match sel & 3 {
        0 => usize::from(sel >> 2), // 0..=63
        1 => 4096,
        2 => ferry_resp::DEFAULT_MAX_BULK_LEN,
        _ => usize::MAX,
    }
}

fn check_info(text: &[u8]) {
    let info = Reply::Bulk(Some(Bytes::copy_from_slice(text)));
    for field in ["master_repl_offset", "master_replid", "role", "run_id", "connected_slaves", ""] {
        if let Some(v) = info_field(&info, field) {
            assert!(!v.contains('\n'), "a field value spans lines");
        }
    }
    // The field named by the first line must be found, with that line's value.
    let Ok(s) = std::str::from_utf8(text) else { return };
    let Some(first) = s.lines().next() else { return };
    if let Some((name, value)) = first.split_once(':') {
        assert_eq!(info_field(&info, name), Some(value.trim()), "first line {first:?}");
    }
    let simple = Reply::Simple(Bytes::copy_from_slice(text));
    let _ = info_field(&simple, "role");
    assert_eq!(info_field(&Reply::Integer(1), "role"), None);
}

fn check_psync_reply(text: &[u8]) {
    let Ok(line) = std::str::from_utf8(text) else { return };
    match ferry_resp::replication::parse_psync_reply("fuzz", line) {
        Ok(ferry_resp::replication::PsyncReply::FullResync { replid, offset }) => {
            assert!(line.starts_with("+FULLRESYNC "));
            assert!(!replid.is_empty());
            assert!((0..=1i64 << 62).contains(&offset), "offset {offset} accepted");
        }
        Ok(ferry_resp::replication::PsyncReply::Continue { .. }) => assert!(line.starts_with("+CONTINUE")),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n') || line.contains('\n'), "a multi-line error for a one-line reply");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    check_info(rest);
    check_psync_reply(rest);

    let max = max_bulk(sel);
    const PATTERNS: [&[usize]; 4] = [&[1], &[2, 5, 1, 17], &[7, 64, 3], &[40, 1, 300]];
    let all = ideal(rest, max);
    for sizes in [&[usize::MAX][..], PATTERNS[usize::from(sel >> 6)]] {
        let got = run(rest, sizes, max);
        let framed: i64 = got.lens.iter().map(|&l| i64::from(l)).sum();
        assert_eq!(got.offset, framed, "offset is not the sum of the delivered commands");
        assert!(framed as usize <= rest.len());
        assert_eq!(got.error, all.error, "a different error with reads of {sizes:?}");
        if all.error.is_none() {
            assert_eq!(got, all, "framing depends on how the stream was split ({sizes:?})");
        } else {
            // On a framing error the commands already framed in the same batch are not
            // delivered (the link fails, the offset does not include them, a PSYNC
            // resends them), so how many arrive depends on the read sizes: a prefix.
            let k = got.lens.len();
            assert!(k <= all.lens.len(), "more commands than the stream holds");
            assert_eq!(got.lens[..], all.lens[..k], "delivered commands are not a prefix ({sizes:?})");
            assert_eq!(got.getacks[..], all.getacks[..k]);
        }
    }
});

/// Every whole command of `data` in order, and the error after them: what any split must agree with.
fn ideal(data: &[u8], max_bulk: usize) -> Outcome {
    let mut out = Outcome { lens: Vec::new(), getacks: Vec::new(), offset: 0, error: None };
    let mut pos = 0;
    while pos < data.len() {
        match scan_command(&data[pos..], max_bulk) {
            Ok(Some(n)) => {
                out.lens.push(n as u32);
                out.getacks.push(is_getack(&data[pos..pos + n]));
                pos += n;
            }
            Ok(None) => break,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out.offset = pos as i64;
    out
}
