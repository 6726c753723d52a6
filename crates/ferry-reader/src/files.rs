//! File sources (`source.type = "file"`): an RDB file, an AOF file (with or without an RDB
//! preamble), or a Redis 7 multi-part AOF (its directory or its manifest: one base file,
//! RDB or AOF, then the incr files in order; history files are skipped).
//!
//! They go through the same pipeline as a replica: the RDB part as the full copy, the
//! commands as the stream, whose offsets are byte positions in the concatenated command
//! files. A checkpoint in the target records how far they were applied, so a restart
//! resumes after the last command applied (commands such as `INCR` must not run twice)
//! and a finished copy is not repeated.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use tracing::warn;

/// What a file source holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSource {
    /// The RDB part: a file and how many of its bytes are RDB (the rest are commands).
    pub rdb: Option<(PathBuf, u64)>,
    /// The files of commands, each with the byte where its commands start.
    pub commands: Vec<(PathBuf, u64)>,
    /// Names this copy in the checkpoint (in place of a replication id).
    pub identity: String,
}

impl FileSource {
    /// Bytes of commands, the offset of the stream's end.
    pub fn command_bytes(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for (p, start) in &self.commands {
            total += file_len(p)?.saturating_sub(*start);
        }
        Ok(total)
    }

    /// Bytes of the RDB part.
    pub fn rdb_bytes(&self) -> u64 {
        self.rdb.as_ref().map(|(_, n)| *n).unwrap_or(0)
    }
}

fn file_len(p: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?.len())
}

/// Opens `path`: a directory or a `.manifest` (multi-part AOF), a `.rdb` file, or a file
/// that starts with `REDIS` (an RDB, or an AOF with an RDB preamble) or with `*` (an AOF).
pub fn open(path: &Path) -> anyhow::Result<FileSource> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read the source file {}", path.display()))?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let id = |parts: &[&[u8]]| {
        let mut crc = ferry_rdb::crc64(0, canonical.to_string_lossy().as_bytes());
        for p in parts {
            crc = ferry_rdb::crc64(crc, p);
        }
        format!("file-{crc:016x}")
    };
    if meta.is_dir() || path.extension().is_some_and(|e| e == "manifest") {
        let manifest = if meta.is_dir() { find_manifest(path)? } else { path.to_path_buf() };
        let dir = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("cannot read the AOF manifest {}", manifest.display()))?;
        let (base, incr) = parse_manifest(&text).with_context(|| format!("AOF manifest {}", manifest.display()))?;
        let mut src = FileSource { rdb: None, commands: Vec::new(), identity: String::new() };
        let mut first = String::new();
        if let Some(base) = base {
            let p = dir.join(&base);
            first = format!("{base} {}", file_len(&p)?);
            match sniff(&p)? {
                Kind::Rdb => src.rdb = Some((p.clone(), file_len(&p)?)),
                Kind::Aof => src.commands.push((p, 0)),
            }
        }
        for name in incr {
            if first.is_empty() {
                first = name.clone();
            }
            src.commands.push((dir.join(name), 0));
        }
        src.identity = id(&[first.as_bytes()]);
        return Ok(src);
    }
    let len = meta.len();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let mtime = mtime.map(|d| d.as_nanos()).unwrap_or(0).to_le_bytes();
    let rdb_only = path.extension().is_some_and(|e| e == "rdb");
    match sniff(path)? {
        Kind::Rdb if rdb_only => {
            Ok(FileSource { rdb: Some((path.to_path_buf(), len)), commands: Vec::new(), identity: id(&[&mtime]) })
        }
        Kind::Rdb => {
            // An RDB, or the RDB preamble of an AOF: where the RDB ends, commands may follow.
            let end = rdb_end(path)?;
            let commands = if end < len { vec![(path.to_path_buf(), end)] } else { Vec::new() };
            let identity = if commands.is_empty() { id(&[&mtime]) } else { id(&[&end.to_le_bytes()]) };
            Ok(FileSource { rdb: Some((path.to_path_buf(), end)), commands, identity })
        }
        Kind::Aof => Ok(FileSource { rdb: None, commands: vec![(path.to_path_buf(), 0)], identity: id(&[]) }),
    }
}

enum Kind {
    Rdb,
    Aof,
}

fn sniff(path: &Path) -> anyhow::Result<Kind> {
    let mut head = [0u8; 5];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("cannot read the source file {}", path.display()))?;
    match &head[..n] {
        b"REDIS" => Ok(Kind::Rdb),
        [b'*', ..] | [b'#', ..] | [] => Ok(Kind::Aof),
        other => bail!(
            "{} is neither an RDB file (it would start with REDIS) nor an AOF (with *): it starts with {:?}",
            path.display(),
            String::from_utf8_lossy(other)
        ),
    }
}

/// Where the RDB at the start of `path` ends (its checksum included).
fn rdb_end(path: &Path) -> anyhow::Result<u64> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let opts = ferry_rdb::ParserOptions { raw_limit: 0, verify_checksum: false, ..Default::default() };
    let mut p = ferry_rdb::Parser::new(std::io::BufReader::new(f), opts);
    while p.next_event().with_context(|| format!("{}: the RDB part is unreadable", path.display()))?.is_some() {}
    Ok(p.offset())
}

fn find_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "manifest"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            bail!("{} holds no AOF manifest (*.manifest): give an RDB or AOF file, or an appenddirname", dir.display())
        }
        _ => bail!("{} holds several AOF manifests: give the one to read", dir.display()),
    }
}

/// The base file and the incr files of a Redis 7 AOF manifest, in order. Lines are
/// `file <name> seq <n> type <b|h|i>` (keys in any order; names quoted when they hold
/// spaces or special characters); history files (`h`) are skipped.
pub fn parse_manifest(text: &str) -> anyhow::Result<(Option<String>, Vec<String>)> {
    let mut base = None;
    let mut incr: Vec<(u64, String)> = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = split_words(line).ok_or_else(|| anyhow!("line {n}: unbalanced quotes"))?;
        if words.len() % 2 != 0 {
            bail!("line {n}: expected key value pairs, got {line:?}");
        }
        let get = |k: &str| words.chunks(2).find(|kv| kv[0] == k).map(|kv| kv[1].clone());
        let name = get("file").ok_or_else(|| anyhow!("line {n}: no file name"))?;
        let seq = get("seq").and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| anyhow!("line {n}: no valid seq"))?;
        match get("type").as_deref() {
            Some("b") if base.is_some() => bail!("line {n}: a second base file"),
            Some("b") => base = Some(name),
            Some("h") => {}
            Some("i") => incr.push((seq, name)),
            other => bail!("line {n}: unknown file type {other:?}"),
        }
    }
    if base.is_none() && incr.is_empty() {
        bail!("no base and no incr file");
    }
    incr.sort_by_key(|(seq, _)| *seq);
    Ok((base, incr.into_iter().map(|(_, n)| n).collect()))
}

/// Words of a manifest line; a word may be double-quoted with `\"`, `\\`, `\n`, `\xHH` escapes.
fn split_words(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { return Some(out) };
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        'n' => w.push('\n'),
                        'r' => w.push('\r'),
                        't' => w.push('\t'),
                        'x' => {
                            let h: String = [chars.next()?, chars.next()?].iter().collect();
                            w.push(u8::from_str_radix(&h, 16).ok()? as char);
                        }
                        other => w.push(other),
                    },
                    other => w.push(other),
                }
            }
        } else {
            while let Some(&c) = chars.peek().filter(|c| !c.is_whitespace()) {
                w.push(c);
                chars.next();
            }
        }
        out.push(w);
    }
}

/// Reads the RDB part in chunks.
pub struct RdbChunks {
    file: File,
    left: u64,
}

impl RdbChunks {
    pub fn open(path: &Path, len: u64) -> anyhow::Result<Self> {
        Ok(RdbChunks { file: File::open(path).with_context(|| format!("cannot read {}", path.display()))?, left: len })
    }

    pub fn next_chunk(&mut self, max: usize) -> anyhow::Result<Option<Bytes>> {
        if self.left == 0 {
            return Ok(None);
        }
        let n = (self.left as usize).min(max);
        let mut buf = vec![0u8; n];
        self.file.read_exact(&mut buf).context("the RDB file ended early (it changed while being read?)")?;
        self.left -= n as u64;
        Ok(Some(Bytes::from(buf)))
    }
}

/// A frame of whole commands: their bytes, the length of each, and the stream offset after them.
pub type CommandFrame = (Bytes, Vec<u32>, i64);

/// Reads the command files as one stream of whole commands, from a stream offset.
pub struct Commands {
    files: Vec<(PathBuf, u64)>,
    next_file: usize,
    current: Option<(File, PathBuf)>,
    buf: BytesMut,
    /// Stream offset of the first byte of `buf`.
    offset: i64,
    max_bulk: usize,
}

impl Commands {
    /// Starts reading at stream offset `from` (0, or where a checkpoint resumes).
    pub fn open(src: &FileSource, from: u64, max_bulk: usize) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        let mut skip = from;
        for (p, start) in &src.commands {
            let len = file_len(p)?.saturating_sub(*start);
            if skip >= len && files.is_empty() {
                skip -= len;
                continue;
            }
            let start = if files.is_empty() { start + skip } else { *start };
            files.push((p.clone(), start));
        }
        if files.is_empty() && skip > 0 {
            bail!("the checkpoint is {from} bytes into the commands, past their end: the files changed");
        }
        Ok(Commands { files, next_file: 0, current: None, buf: BytesMut::new(), offset: from as i64, max_bulk })
    }

    /// The next frame of up to about `max` bytes; `None` at the end.
    pub fn next_frame(&mut self, max: usize) -> anyhow::Result<Option<CommandFrame>> {
        let mut data = BytesMut::new();
        let mut lens = Vec::new();
        loop {
            // Whole commands from the buffer; `#` lines are annotations (timestamps).
            while !self.buf.is_empty() && data.len() < max {
                if self.buf[0] == b'#' {
                    if !data.is_empty() {
                        // A frame's offsets cover exactly its bytes: end it before the annotation.
                        return Ok(Some((data.freeze(), lens, self.offset)));
                    }
                    let Some(nl) = self.buf.iter().position(|&c| c == b'\n') else { break };
                    let _ = self.buf.split_to(nl + 1);
                    self.offset += nl as i64 + 1;
                    continue;
                }
                match ferry_resp::scan_command(&self.buf, self.max_bulk) {
                    Ok(Some(n)) => {
                        data.extend_from_slice(&self.buf.split_to(n));
                        lens.push(n as u32);
                        self.offset += n as i64;
                    }
                    Ok(None) => break,
                    Err(e) => bail!("{}: not a command at stream offset {}: {e}", self.file_name(), self.offset),
                }
            }
            if data.len() >= max {
                return Ok(Some((data.freeze(), lens, self.offset)));
            }
            if !self.fill()? {
                if !self.buf.is_empty() {
                    warn!(file = %self.file_name(), bytes = self.buf.len(), offset = self.offset, "the AOF ends with an incomplete command: ignored, as Redis does with aof-load-truncated yes");
                    self.buf.clear();
                }
                return Ok((!data.is_empty()).then(|| (data.freeze(), lens, self.offset)));
            }
        }
    }

    fn file_name(&self) -> String {
        self.current
            .as_ref()
            .map(|(_, p)| p.display().to_string())
            .or_else(|| self.files.last().map(|(p, _)| p.display().to_string()))
            .unwrap_or_default()
    }

    /// Reads more bytes; `false` at the end of the last file.
    fn fill(&mut self) -> anyhow::Result<bool> {
        loop {
            if self.current.is_none() {
                let Some((p, start)) = self.files.get(self.next_file).cloned() else { return Ok(false) };
                if !self.buf.is_empty() {
                    bail!(
                        "{}: the file ends in the middle of a command ({} bytes), and more files follow",
                        self.files[self.next_file - 1].0.display(),
                        self.buf.len()
                    );
                }
                let mut f = File::open(&p).with_context(|| format!("cannot read {}", p.display()))?;
                f.seek(SeekFrom::Start(start)).with_context(|| format!("cannot seek in {}", p.display()))?;
                self.current = Some((f, p));
                self.next_file += 1;
            }
            let (f, p) = self.current.as_mut().expect("opened above");
            let mut chunk = vec![0u8; 1 << 20];
            let n = f.read(&mut chunk).with_context(|| format!("cannot read {}", p.display()))?;
            if n == 0 {
                self.current = None;
                continue;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Vec<u8> {
        ferry_resp::encode_command(args).to_vec()
    }

    fn all(c: &mut Commands, max: usize) -> (Vec<u8>, usize, i64) {
        let (mut bytes, mut n, mut end) = (Vec::new(), 0, 0);
        while let Some((d, lens, e)) = c.next_frame(max).unwrap() {
            assert_eq!(lens.iter().map(|&l| l as usize).sum::<usize>(), d.len());
            assert!(e > end);
            bytes.extend_from_slice(&d);
            n += lens.len();
            end = e;
        }
        (bytes, n, end)
    }

    #[test]
    fn manifests_name_the_base_and_incr_files_in_order() {
        let text = "file appendonly.aof.1.base.rdb seq 1 type b\n\
                    file appendonly.aof.3.incr.aof seq 3 type i\n\
                    file \"odd name.aof\" seq 2 type i\n\
                    file appendonly.aof.0.base.aof seq 0 type h\n";
        let (base, incr) = parse_manifest(text).unwrap();
        assert_eq!(base.as_deref(), Some("appendonly.aof.1.base.rdb"));
        assert_eq!(incr, vec!["odd name.aof".to_string(), "appendonly.aof.3.incr.aof".to_string()]);
        assert!(
            parse_manifest("file a seq 1 type b\nfile b seq 2 type b\n").unwrap_err().to_string().contains("line 2")
        );
        assert!(parse_manifest("file a seq x type i\n").unwrap_err().to_string().contains("seq"));
        assert!(parse_manifest("file a seq 1 type z\n").unwrap_err().to_string().contains("type"));
        assert!(parse_manifest("").is_err());
    }

    #[test]
    fn command_files_read_as_one_stream_with_annotations_and_a_truncated_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.aof"), dir.path().join("b.aof"));
        let mut first = cmd(&["SELECT", "0"]);
        first.extend(b"#TS:1700000000\r\n");
        first.extend(cmd(&["SET", "k", "v"]));
        let mut second = cmd(&["INCR", "n"]);
        second.extend(cmd(&["RPUSH", "l", "x", "y"]));
        let cut = b"*2\r\n$4\r\nINCR"; // cut short, as a crash leaves it
        second.extend(cut);
        std::fs::write(&a, &first).unwrap();
        std::fs::write(&b, &second).unwrap();
        let src = FileSource { rdb: None, commands: vec![(a.clone(), 0), (b.clone(), 0)], identity: "x".into() };
        let total = (first.len() + second.len() - cut.len()) as i64;
        for max in [1, 40, 1 << 20] {
            let (bytes, n, end) = all(&mut Commands::open(&src, 0, 1 << 20).unwrap(), max);
            assert_eq!(n, 4, "max {max}");
            assert_eq!(end, total, "max {max}");
            assert!(!bytes.windows(3).any(|w| w == b"#TS"));
        }
        // Resuming in the second file reads what follows only.
        let from = first.len() as u64 + cmd(&["INCR", "n"]).len() as u64;
        let (bytes, n, end) = all(&mut Commands::open(&src, from, 1 << 20).unwrap(), 1 << 20);
        assert_eq!((bytes, n, end), (cmd(&["RPUSH", "l", "x", "y"]), 1, total));
        // A truncated command in a file that is not the last is an error.
        let src = FileSource { rdb: None, commands: vec![(b.clone(), 0), (a.clone(), 0)], identity: "x".into() };
        let mut c = Commands::open(&src, 0, 1 << 20).unwrap();
        let err = loop {
            match c.next_frame(1 << 20) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(err.contains("middle of a command"), "{err}");
        // Garbage is named with its offset.
        std::fs::write(&a, b"*1\r\n$4\r\nPING\r\nhello").unwrap();
        let src = FileSource { rdb: None, commands: vec![(a, 0)], identity: "x".into() };
        let err = Commands::open(&src, 0, 1 << 20).unwrap().next_frame(1 << 20).unwrap_err().to_string();
        assert!(err.contains("offset 14"), "{err}");
    }

    #[test]
    fn files_are_told_apart_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dat");
        std::fs::write(&p, b"hello").unwrap();
        assert!(open(&p).unwrap_err().to_string().contains("neither an RDB"));
        std::fs::write(&p, cmd(&["SET", "a", "b"])).unwrap();
        let s = open(&p).unwrap();
        assert_eq!((s.rdb, s.commands.len()), (None, 1));
        assert!(open(dir.path()).unwrap_err().to_string().contains("no AOF manifest"));
    }
}
