//! Arbitrary bytes into ferry-resp's RESP framing: `scan_reply`, `parse_reply`,
//! `scan_command`, `parse_command`, `command_name`, `encode_command`, plus the
//! consumers of parsed replies that take server-controlled data
//! (`SlotMap::from_cluster_slots`, `Reply` helpers).
//!
//! Input: first byte = selector (max bulk length), the rest = the RESP bytes.
//!
//! Checked besides "no panic": `scan_*` and `parse_*` agree (the connection
//! scans a reply and then parses exactly the scanned bytes, and treats a
//! disagreement as a protocol error); every proper prefix of a whole frame is
//! "need more bytes"; a whole command re-encodes to a command with the same
//! arguments.

#![no_main]

use bytes::Bytes;
use ferry_resp::cluster::SlotMap;
use ferry_resp::frame::{
    DEFAULT_MAX_BULK_LEN, Reply, command_name, parse_command, parse_reply, scan_command, scan_reply,
};
use ferry_resp::{conn::printable, encode_command};
use libfuzzer_sys::fuzz_target;

fn max_bulk(sel: u8) -> usize {
    match sel >> 6 {
        // Small limits: bulk strings over the limit must be rejected, not waited for.
        0 => usize::from(sel & 0x3f),
        1 => 1000,
        2 => DEFAULT_MAX_BULK_LEN,
        _ => usize::MAX,
    }
}

/// Proper prefixes of a whole frame of length `n` that are worth checking (all if short).
fn cuts(n: usize) -> impl Iterator<Item = usize> {
    let step = if n <= 64 { 1 } else { n / 32 };
    (0..n).step_by(step.max(1)).chain(std::iter::once(n.saturating_sub(1))).filter(move |&c| c < n)
}

fn check_reply(r: &Reply, depth: usize) {
    assert!(depth <= 40, "reply nested deeper than the parser allows");
    let _ = (r.as_error(), r.as_bytes(), r.first_error());
    if let Some(e) = r.as_error() {
        let _ = printable(e);
    }
    if let Reply::Array(Some(items)) = r {
        for i in items {
            check_reply(i, depth + 1);
        }
    }
}

/// A top-level reply read as a `CLUSTER SLOTS` answer (server-controlled).
fn check_slot_map(r: &Reply) {
    if let Some(map) = SlotMap::from_cluster_slots(r) {
        let _ = (map.complete(), map.node_of(0), map.node_of(16383), map.node_of(u16::MAX));
        for node in 0..map.masters.len().min(4) {
            if let Some(slot) = map.a_slot_of(node) {
                assert_eq!(map.node_of(slot), Some(node));
            }
        }
    }
}

/// Replies one after another from `buf`, as `ReplyReader::read_reply` takes them.
fn replies(buf: &Bytes, max: usize) {
    let mut pos = 0;
    while pos < buf.len() {
        let rest = buf.slice(pos..);
        let scanned = scan_reply(&rest, max);
        let parsed = parse_reply(&rest, max);
        match (&scanned, &parsed) {
            (Ok(Some(n)), Ok(Some((reply, m)))) => {
                assert_eq!(n, m, "scan_reply and parse_reply disagree on the length");
                assert!(*n > 0 && *n <= rest.len());
                // What the connection does: parse exactly the scanned frame.
                let frame = rest.slice(..*n);
                match parse_reply(&frame, max) {
                    Ok(Some((again, k))) => {
                        assert_eq!(k, *n);
                        assert_eq!(&again, reply);
                    }
                    other => panic!("scanned frame does not parse alone: {other:?}"),
                }
                for c in cuts(*n) {
                    assert_eq!(scan_reply(&frame[..c], max), Ok(None), "prefix {c} of a whole reply");
                    assert_eq!(parse_reply(&frame.slice(..c), max), Ok(None), "prefix {c} of a whole reply");
                }
                check_reply(reply, 0);
                check_slot_map(reply);
                pos += n;
            }
            (Ok(None), Ok(None)) => return,
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "scan_reply and parse_reply report different errors");
                let _ = a.to_string();
                return;
            }
            _ => panic!("scan_reply and parse_reply disagree: {scanned:?} vs {parsed:?}"),
        }
    }
}

/// Whole commands one after another from `buf`, as the replication stream frames them.
fn commands(buf: &Bytes, max: usize) {
    let mut pos = 0;
    while pos < buf.len() {
        match scan_command(&buf[pos..], max) {
            Ok(Some(n)) => {
                assert!(n > 0 && pos + n <= buf.len());
                let cmd = buf.slice(pos..pos + n);
                let args = parse_command(&cmd).expect("a scanned command must parse");
                assert!(!args.is_empty());
                assert_eq!(command_name(&cmd), Some(&args[0][..]), "command_name differs from the first argument");
                // It is also a reply, of the same length.
                assert_eq!(scan_reply(&cmd, max), Ok(Some(n)));
                for c in cuts(n) {
                    assert_eq!(scan_command(&cmd[..c], max), Ok(None), "prefix {c} of a whole command");
                }
                let enc = encode_command(&args);
                assert_eq!(scan_command(&enc, usize::MAX), Ok(Some(enc.len())));
                assert_eq!(parse_command(&enc).expect("encoded command parses"), args);
                pos += n;
            }
            Ok(None) => return,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let max = max_bulk(sel);
    let buf = Bytes::copy_from_slice(rest);
    replies(&buf, max);
    commands(&buf, max);
    // `command_name` is also called on arbitrary data.
    let _ = command_name(rest);
});
