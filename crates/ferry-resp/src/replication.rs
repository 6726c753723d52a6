//! The replica side of Redis replication.
//!
//! [`handshake`] makes a [`Connection`] a replica (`PING`, `REPLCONF listening-port`,
//! `REPLCONF capa eof capa psync2`, `PSYNC`), and [`ReplStream`] then yields the RDB
//! transfer as chunks (disk `$<len>` or diskless `$EOF:<mark>`, with the bare `\n`
//! keep-alives a master sends while it prepares the payload) followed by the command
//! stream framed into whole commands with their end offsets.
//!
//! Offsets follow Redis: the offset of a replica is the offset of the last byte it
//! processed. After `+FULLRESYNC <id> <off>` the first command byte is `off + 1`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::conn::{Connection, ReplyReader, RequestWriter, RespError, printable};
use crate::encode::encode_command;
use crate::frame::{FrameError, Reply, scan_command};

/// Length of the random delimiter of a diskless transfer (`CONFIG_RUN_ID_SIZE`).
pub const EOF_MARK_LEN: usize = 40;

/// Settings of the handshake.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// Sent as `REPLCONF listening-port`. 0 tells the master (and Sentinel, which reads the
    /// master's `INFO`) that there is no port to reach this replica on.
    pub listening_port: u16,
    /// Largest bulk string accepted in the command stream (`proto-max-bulk-len`).
    pub max_bulk: usize,
    /// Time limit for each handshake reply.
    pub timeout: Duration,
    /// `REPLCONF version <v>` before `PSYNC` (Valkey picks the RDB it sends by it); a primary
    /// that refuses the option is answered without it.
    pub version: Option<String>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            listening_port: 0,
            max_bulk: crate::frame::DEFAULT_MAX_BULK_LEN,
            timeout: Duration::from_secs(30),
            version: None,
        }
    }
}

/// What the master answered to `PSYNC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PsyncReply {
    /// A full copy follows; commands after it start at `offset + 1`.
    FullResync { replid: String, offset: i64 },
    /// The master continues from the offset asked for. `replid` is set when the master has a new id.
    Continue { replid: Option<String> },
}

/// Performs the replica handshake and sends `PSYNC <replid> <offset>` (`PSYNC ? -1` when `replid` is `None`).
/// `offset` is the next byte wanted (the last applied offset + 1).
pub async fn handshake(
    mut conn: Connection,
    psync: Option<(&str, i64)>,
    opts: &ReplicaOptions,
) -> Result<(ReplStream, AckSender, PsyncReply), RespError> {
    let t = opts.timeout;
    conn.call_timeout(&[&b"PING"[..]], t).await?;
    let port = opts.listening_port.to_string();
    conn.call_timeout(&[&b"REPLCONF"[..], b"listening-port", port.as_bytes()], t).await?;
    conn.call_timeout(&[&b"REPLCONF"[..], b"capa", b"eof", b"capa", b"psync2"], t).await?;
    if let Some(v) = &opts.version {
        // Its own command: a refusal (`Unrecognized REPLCONF option`) leaves the others applied.
        match conn.call_timeout(&[&b"REPLCONF"[..], b"version", v.as_bytes()], t).await {
            Ok(_) | Err(RespError::Server { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let (replid, offset) = match psync {
        Some((id, off)) => (id.to_string(), off.to_string()),
        None => ("?".to_string(), "-1".to_string()),
    };
    conn.send(&[&b"PSYNC"[..], replid.as_bytes(), offset.as_bytes()]).await?;
    let addr = conn.addr().to_string();
    let (mut rd, wr) = conn.into_split();
    let line = match tokio::time::timeout(t, read_status_line(&mut rd)).await {
        Err(_) => return Err(RespError::Timeout { addr, command: "PSYNC".into() }),
        Ok(r) => r?,
    };
    let reply = parse_psync_reply(&addr, &line)?;
    let start = match (&reply, psync) {
        (PsyncReply::FullResync { offset, .. }, _) => *offset,
        (PsyncReply::Continue { .. }, Some((_, off))) => off - 1,
        (PsyncReply::Continue { .. }, None) => {
            return Err(RespError::Unexpected { addr, command: "PSYNC".into(), reply: line });
        }
    };
    let state = match reply {
        PsyncReply::FullResync { .. } => State::AwaitPayload,
        PsyncReply::Continue { .. } => State::Commands,
    };
    let stream = ReplStream { rd, state, offset: start, max_bulk: opts.max_bulk };
    Ok((stream, AckSender { wr }, reply))
}

/// Reads one `+...` / `-...` line, skipping the bare `\n` keep-alives before it.
async fn read_status_line(rd: &mut ReplyReader) -> Result<String, RespError> {
    loop {
        let buf = rd.buffer();
        while buf.first() == Some(&b'\n') {
            let _ = buf.split_to(1);
        }
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(pos + 1);
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            return Ok(text);
        }
        if buf.len() > 4096 {
            return Err(RespError::Unexpected {
                addr: rd.addr().to_string(),
                command: "PSYNC".into(),
                reply: "overlong line".into(),
            });
        }
        rd.fill().await?;
    }
}

/// The largest offset ferry accepts from a master: far beyond any real stream, and far
/// enough from `i64::MAX` that adding the bytes that follow cannot overflow.
const MAX_OFFSET: i64 = 1 << 62;

/// Parses the master's reply to `PSYNC` (`+FULLRESYNC <replid> <offset>`, `+CONTINUE
/// [<replid>]`, or an error). Public for the fuzz target.
pub fn parse_psync_reply(addr: &str, line: &str) -> Result<PsyncReply, RespError> {
    let unexpected =
        || RespError::Unexpected { addr: addr.to_string(), command: "PSYNC".into(), reply: printable(line.as_bytes()) };
    if let Some(rest) = line.strip_prefix("+FULLRESYNC ") {
        let mut parts = rest.split_whitespace();
        let replid = parts.next().ok_or_else(unexpected)?.to_string();
        let offset = parts
            .next()
            .and_then(|o| o.parse::<i64>().ok())
            .filter(|o| (0..=MAX_OFFSET).contains(o))
            .ok_or_else(unexpected)?;
        Ok(PsyncReply::FullResync { replid, offset })
    } else if let Some(rest) = line.strip_prefix("+CONTINUE") {
        let id = rest.trim();
        Ok(PsyncReply::Continue { replid: (!id.is_empty()).then(|| id.to_string()) })
    } else if let Some(err) = line.strip_prefix('-') {
        Err(RespError::Server { addr: addr.to_string(), command: "PSYNC".into(), reply: printable(err.as_bytes()) })
    } else {
        Err(unexpected())
    }
}

/// Sends `REPLCONF ACK <offset>` on the replication connection.
pub struct AckSender {
    wr: RequestWriter,
}

impl AckSender {
    pub async fn ack(&mut self, offset: i64) -> Result<(), RespError> {
        let off = offset.to_string();
        self.wr.write_all(&encode_command(&[&b"REPLCONF"[..], b"ACK", off.as_bytes()])).await
    }
}

enum State {
    AwaitPayload,
    Rdb { remaining: u64 },
    RdbEof { mark: [u8; EOF_MARK_LEN] },
    Commands,
}

/// What the replication connection delivers.
#[derive(Debug)]
pub enum ReplEvent {
    /// The RDB transfer starts; `size` is `None` for a diskless (EOF-marked) transfer.
    RdbStart { size: Option<u64> },
    /// Bytes of the RDB file, in order.
    RdbChunk(Bytes),
    /// The RDB transfer is complete. For a diskless transfer the master waits for a `REPLCONF ACK`
    /// before it streams commands: send one now.
    RdbEnd,
    /// Whole commands: `data` is their RESP bytes, `lens[i]` the size of command i, and
    /// `end_offset` the replication offset after the last one. `getack` is set when one of
    /// them was `REPLCONF GETACK` (answer with an ACK).
    Commands { data: Bytes, lens: Vec<u32>, end_offset: i64, getack: bool },
}

/// The read side of a replication link.
pub struct ReplStream {
    rd: ReplyReader,
    state: State,
    offset: i64,
    max_bulk: usize,
}

/// Most bytes handed out in one RDB chunk or one batch of commands.
const MAX_CHUNK: usize = 1024 * 1024;

impl ReplStream {
    /// Offset of the last command byte delivered (the replica's replication offset).
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The next event. Cancel-safe only between events (drop the stream to stop).
    pub async fn next_event(&mut self) -> Result<ReplEvent, RespError> {
        loop {
            if let Some(ev) = self.try_event()? {
                return Ok(ev);
            }
            self.rd.fill().await?;
        }
    }

    fn frame_err(&self, source: FrameError) -> RespError {
        RespError::Frame { addr: self.rd.addr().to_string(), source }
    }

    fn try_event(&mut self) -> Result<Option<ReplEvent>, RespError> {
        let addr = self.rd.addr().to_string();
        match &mut self.state {
            State::AwaitPayload => {
                let buf = self.rd.buffer();
                while buf.first() == Some(&b'\n') {
                    let _ = buf.split_to(1);
                }
                let Some(pos) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > 256 {
                        return Err(RespError::Unexpected {
                            addr,
                            command: "PSYNC".into(),
                            reply: "no RDB payload header".into(),
                        });
                    }
                    return Ok(None);
                };
                let line = buf.split_to(pos + 1);
                let line = line.strip_suffix(b"\r\n").unwrap_or(&line[..pos]);
                if let Some(err) = line.strip_prefix(b"-") {
                    return Err(RespError::Server { addr, command: "PSYNC".into(), reply: printable(err) });
                }
                let Some(hdr) = line.strip_prefix(b"$") else {
                    return Err(RespError::Unexpected { addr, command: "PSYNC".into(), reply: printable(line) });
                };
                if let Some(mark) = hdr.strip_prefix(b"EOF:") {
                    let mark: [u8; EOF_MARK_LEN] = mark.try_into().map_err(|_| RespError::Unexpected {
                        addr: addr.clone(),
                        command: "PSYNC".into(),
                        reply: "EOF mark is not 40 bytes".into(),
                    })?;
                    self.state = State::RdbEof { mark };
                    Ok(Some(ReplEvent::RdbStart { size: None }))
                } else {
                    let size: u64 = std::str::from_utf8(hdr).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
                        RespError::Unexpected { addr: addr.clone(), command: "PSYNC".into(), reply: printable(line) }
                    })?;
                    self.state = State::Rdb { remaining: size };
                    Ok(Some(ReplEvent::RdbStart { size: Some(size) }))
                }
            }
            State::Rdb { remaining } => {
                if *remaining == 0 {
                    self.state = State::Commands;
                    return Ok(Some(ReplEvent::RdbEnd));
                }
                let buf = self.rd.buffer();
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (buf.len() as u64).min(*remaining).min(MAX_CHUNK as u64) as usize;
                *remaining -= take as u64;
                Ok(Some(ReplEvent::RdbChunk(buf.split_to(take).freeze())))
            }
            State::RdbEof { mark } => {
                let mark = *mark;
                let ev = rdb_until_mark(self.rd.buffer(), &mark);
                if matches!(ev, Some(ReplEvent::RdbEnd)) {
                    self.state = State::Commands;
                }
                Ok(ev)
            }
            State::Commands => {
                let max_bulk = self.max_bulk;
                let buf = self.rd.buffer();
                let mut pos = 0usize;
                let mut lens = Vec::new();
                let mut getack = false;
                while pos < buf.len() && pos < MAX_CHUNK {
                    match scan_command(&buf[pos..], max_bulk) {
                        Ok(Some(n)) => {
                            if is_getack(&buf[pos..pos + n]) {
                                getack = true;
                            }
                            lens.push(n as u32);
                            pos += n;
                        }
                        Ok(None) => break,
                        Err(FrameError::TooLarge(len, limit)) => {
                            let (name, key) = crate::frame::command_head(&buf[pos..]);
                            let show = |b: Option<&[u8]>| b.map(crate::conn::printable).unwrap_or_else(|| "?".into());
                            let e = FrameError::CommandTooLarge {
                                command: show(name).to_uppercase(),
                                key: format!("{:?}", show(key)),
                                len,
                                limit,
                            };
                            return Err(self.frame_err(e));
                        }
                        Err(e) => return Err(self.frame_err(e)),
                    }
                }
                if lens.is_empty() {
                    return Ok(None);
                }
                let data = self.rd.buffer().split_to(pos).freeze();
                self.offset = self.offset.saturating_add(pos as i64);
                Ok(Some(ReplEvent::Commands { data, lens, end_offset: self.offset, getack }))
            }
        }
    }
}

fn is_getack(cmd: &[u8]) -> bool {
    match crate::frame::command_name(cmd) {
        Some(name) if name.eq_ignore_ascii_case(b"REPLCONF") => {
            let b = Bytes::copy_from_slice(cmd);
            matches!(crate::frame::parse_command(&b), Ok(args) if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK")))
        }
        _ => false,
    }
}

/// The next event of a diskless (EOF-marked) RDB transfer from the bytes read so far: RDB
/// bytes up to the mark, then `RdbEnd` once the mark is consumed; `None` until more is read.
/// The mark is usually the tail of what has been read, since the master sends nothing more
/// until the replica acknowledges. But an acknowledgement sent during the transfer (the
/// reader's periodic one) lets the master stream commands right behind the mark: it is
/// looked for anywhere, and what follows it stays in `buf` for the command stream.
fn rdb_until_mark(buf: &mut BytesMut, mark: &[u8; EOF_MARK_LEN]) -> Option<ReplEvent> {
    match memchr::memmem::find(buf, mark) {
        Some(0) => {
            let _ = buf.split_to(EOF_MARK_LEN);
            Some(ReplEvent::RdbEnd)
        }
        Some(at) => Some(ReplEvent::RdbChunk(buf.split_to(at.min(MAX_CHUNK)).freeze())),
        // The last bytes may be the start of the mark: held until more is read.
        None if buf.len() > EOF_MARK_LEN => {
            Some(ReplEvent::RdbChunk(buf.split_to((buf.len() - EOF_MARK_LEN).min(MAX_CHUNK)).freeze()))
        }
        None => None,
    }
}

/// Reads a server's `INFO` field (e.g. `master_repl_offset`).
pub fn info_field<'a>(info: &'a Reply, field: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(info.as_bytes()?).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')).map(str::trim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psync_replies() {
        assert_eq!(
            parse_psync_reply("a", "+FULLRESYNC abc 42").unwrap(),
            PsyncReply::FullResync { replid: "abc".into(), offset: 42 }
        );
        assert_eq!(parse_psync_reply("a", "+CONTINUE").unwrap(), PsyncReply::Continue { replid: None });
        assert_eq!(
            parse_psync_reply("a", "+CONTINUE xyz").unwrap(),
            PsyncReply::Continue { replid: Some("xyz".into()) }
        );
        assert!(parse_psync_reply("a", "-NOMASTERLINK Can't SYNC").unwrap_err().to_string().contains("NOMASTERLINK"));
        // Offsets no master sends: refused, so the stream's offset arithmetic cannot overflow.
        assert!(parse_psync_reply("a", "+FULLRESYNC abc -1").is_err());
        assert!(parse_psync_reply("a", "+FULLRESYNC abc 9223372036854775807").is_err());
        assert!(parse_psync_reply("a", "garbage").is_err());
    }

    #[test]
    fn a_diskless_rdb_ends_at_its_mark_even_with_commands_read_behind_it() {
        let mark = [b'm'; EOF_MARK_LEN];
        let mut rdb = b"REDIS0011".to_vec();
        rdb.extend(std::iter::repeat_n(b'x', 80));
        rdb.extend(b"\xff12345678");
        let cmd = b"*1\r\n$4\r\nPING\r\n";
        // Read in one go: the RDB, the mark, and the first command the master streamed
        // because an acknowledgement reached it before the mark was read.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&rdb);
        buf.extend_from_slice(&mark);
        buf.extend_from_slice(cmd);
        let Some(ReplEvent::RdbChunk(chunk)) = rdb_until_mark(&mut buf, &mark) else { panic!("no RDB chunk") };
        assert_eq!(&chunk[..], &rdb[..], "only the RDB's bytes are RDB");
        assert!(matches!(rdb_until_mark(&mut buf, &mark), Some(ReplEvent::RdbEnd)));
        assert_eq!(&buf[..], &cmd[..], "the command is left for the stream");
        // Read in pieces: bytes that may begin the mark are held back until it is whole.
        let mut buf = BytesMut::from(&rdb[..]);
        buf.extend_from_slice(&mark[..10]);
        let Some(ReplEvent::RdbChunk(first)) = rdb_until_mark(&mut buf, &mark) else { panic!("no RDB chunk") };
        assert!(rdb.starts_with(&first) && buf.len() == EOF_MARK_LEN, "{}", buf.len());
        buf.extend_from_slice(&mark[10..]);
        let Some(ReplEvent::RdbChunk(rest)) = rdb_until_mark(&mut buf, &mark) else { panic!("no RDB chunk") };
        assert_eq!([&first[..], &rest[..]].concat(), rdb);
        assert!(matches!(rdb_until_mark(&mut buf, &mark), Some(ReplEvent::RdbEnd)));
        assert!(buf.is_empty() && rdb_until_mark(&mut buf, &mark).is_none());
    }

    #[test]
    fn detects_getack() {
        assert!(is_getack(b"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n"));
        assert!(!is_getack(b"*1\r\n$4\r\nPING\r\n"));
    }
}
